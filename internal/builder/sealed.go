package builder

import (
	"crypto/sha256"
	"encoding/hex"
	"path"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// Paths and names inside generated pods. The unseal container runs the
// modelguard binary of the operator's image.
const (
	ModelguardBinary = "/modelguard"

	bundleMountPath = "/var/run/modelguard/bundle"
	plaintextMount  = "/var/run/modelguard/model"

	volumePlaintext = "model"
	volumeBundle    = "bundle"
	volumeTmp       = "tmp"
)

// KeyRelease is how the unseal container reaches the operator's key-release
// service. The controller resolves it (the CA bundle rotates) and the
// key-release verifier builds with the same value, so that a pod it checks
// is compared with exactly what the controller applied.
type KeyRelease struct {
	// URL is the service's https URL, e.g.
	// "https://modelguard-key-release.modelguard-system.svc".
	URL string
	// CABundle is the PEM bundle of the CAs the unseal container trusts. It
	// is in the pod spec (env), not in a ConfigMap a tenant could edit to
	// point the pod, and its token, at a server of their own.
	CABundle string
	// Namespace is the operator's namespace: the NetworkPolicy lets the
	// workload's pods reach the manager pods there on the key-release port.
	Namespace string
}

// Ready reports whether the endpoint is known, CA bundle included; until it
// is, no pod is started (fail closed).
func (k KeyRelease) Ready() bool {
	return k.URL != "" && k.CABundle != "" && k.Namespace != ""
}

// unsealOverhead is the memory the unseal process itself needs beside the
// plaintext it writes into tmpfs (which is charged to its cgroup).
var unsealOverhead = resource.MustParse("128Mi")

// BundleLocation is where the unseal container reads the sealed bundle: a path in the mounted claim, or the https URL.
func BundleLocation(weights *mlv1alpha1.SealedWeights) string {
	src := weights.Source
	switch {
	case src.Volume != nil:
		return path.Join(bundleMountPath, path.Clean("/"+src.Volume.Path))
	case src.HTTP != nil:
		return src.HTTP.URL
	}
	return ""
}

// bundleVolume mounts the claim holding the bundle read-only; an https
// bundle needs none.
func bundleVolume(weights *mlv1alpha1.SealedWeights) *corev1ac.VolumeApplyConfiguration {
	if weights.Source.Volume == nil {
		return nil
	}
	return corev1ac.Volume().WithName(volumeBundle).WithPersistentVolumeClaim(
		corev1ac.PersistentVolumeClaimVolumeSource().
			WithClaimName(weights.Source.Volume.ClaimName).
			WithReadOnly(true))
}

func bundleMounts(weights *mlv1alpha1.SealedWeights) []*corev1ac.VolumeMountApplyConfiguration {
	if weights.Source.Volume == nil {
		return nil
	}
	return []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName(volumeBundle).WithMountPath(bundleMountPath).WithReadOnly(true),
	}
}

// plaintextVolume is the memory-backed volume the weights are decrypted
// into: plaintext never touches disk.
func plaintextVolume(weights *mlv1alpha1.SealedWeights) *corev1ac.VolumeApplyConfiguration {
	return corev1ac.Volume().WithName(volumePlaintext).WithEmptyDir(corev1ac.EmptyDirVolumeSource().
		WithMedium(corev1.StorageMediumMemory).
		WithSizeLimit(weights.Memory))
}

// keyReleaseTokenVolume is the projected ServiceAccount token that the
// unseal container alone mounts: its audience is the key-release service
// only, so it opens nothing at the API server, and it expires quickly.
func keyReleaseTokenVolume() *corev1ac.VolumeApplyConfiguration {
	return corev1ac.Volume().WithName(mlv1alpha1.KeyReleaseTokenVolume).WithProjected(corev1ac.ProjectedVolumeSource().
		WithDefaultMode(0o400).
		WithSources(corev1ac.VolumeProjection().WithServiceAccountToken(corev1ac.ServiceAccountTokenProjection().
			WithAudience(mlv1alpha1.KeyReleaseAudience).
			WithExpirationSeconds(mlv1alpha1.KeyReleaseTokenSeconds).
			WithPath(mlv1alpha1.KeyReleaseTokenFile))))
}

// ModelRef names a workload as the key-release protocol does:
// "Kind/namespace/name".
func ModelRef(w Workload) string {
	return w.Kind + "/" + w.Namespace + "/" + w.Name
}

// unsealContainer asks the key-release service for the bundle's data key,
// decrypts the bundle into the plaintext volume and checks the digest. It
// alone mounts the key-release token; it never sees a key-encryption key.
func unsealContainer(w Workload, weights *mlv1alpha1.SealedWeights, image string, kr KeyRelease) *corev1ac.ContainerApplyConfiguration {
	// tmpfs pages are charged to the cgroup of the process that writes them,
	// so the unseal container must be allowed the whole plaintext.
	memory := weights.Memory.DeepCopy()
	memory.Add(unsealOverhead)
	return corev1ac.Container().
		WithName(mlv1alpha1.ContainerUnseal).
		WithImage(image).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithCommand(ModelguardBinary, "unseal",
			"--key-release", kr.URL,
			"--model", ModelRef(w),
			"--token-file", path.Join(mlv1alpha1.KeyReleaseTokenDir, mlv1alpha1.KeyReleaseTokenFile),
			"--expect-digest", weights.Digest,
			"--progress", "log",
			BundleLocation(weights), plaintextMount).
		WithEnv(
			// Converted like the spec's env, so that an empty bundle is left
			// out as the API server leaves it out, and reads back unchanged.
			envVar(corev1.EnvVar{Name: mlv1alpha1.EnvKeyReleaseCA, Value: kr.CABundle}),
			corev1ac.EnvVar().WithName(mlv1alpha1.EnvPodUID).WithValueFrom(corev1ac.EnvVarSource().
				WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").WithFieldPath("metadata.uid"))),
		).
		WithSecurityContext(hardenedContainerSecurityContext()).
		WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: memory}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: memory})).
		WithVolumeMounts(append([]*corev1ac.VolumeMountApplyConfiguration{
			corev1ac.VolumeMount().WithName(volumePlaintext).WithMountPath(plaintextMount),
			corev1ac.VolumeMount().WithName(mlv1alpha1.KeyReleaseTokenVolume).WithMountPath(mlv1alpha1.KeyReleaseTokenDir).WithReadOnly(true),
		}, bundleMounts(weights)...)...)
}

// sealedConfigHash changes when the ModelKey, digest or bundle changes, which
// rolls the pods: a pod unsealed under the old key reference must not keep
// serving as if it had been verified under the new one.
func sealedConfigHash(weights *mlv1alpha1.SealedWeights) string {
	return fingerprint(8, weights.Digest, weights.Key.ModelKey, BundleLocation(weights))
}

// fingerprint hashes NUL-separated parts into size bytes of hex.
func fingerprint(size int, parts ...string) string {
	h := sha256.New()
	for _, part := range parts {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:size])
}
