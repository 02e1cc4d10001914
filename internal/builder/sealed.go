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

// Paths and names inside generated pods. The unseal container and the
// key-resolve container run the modelguard binary of the operator's image.
const (
	ModelguardBinary = "/modelguard"

	DataKeySecretKey = "dek"
	dataKeyMountPath = "/var/run/modelguard/data-key"
	bundleMountPath  = "/var/run/modelguard/bundle"
	plaintextMount   = "/var/run/modelguard/model"

	volumePlaintext = "model"
	volumeDataKey   = "data-key"
	volumeBundle    = "bundle"
	volumeTmp       = "tmp"
)

// unsealOverhead is the memory the unseal process itself needs beside the
// plaintext it writes into tmpfs (which is charged to its cgroup).
var unsealOverhead = resource.MustParse("128Mi")

// BundleLocation is where the unseal and key-resolve containers read the
// sealed bundle: a path in the mounted claim, or the https URL.
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

// dataKeyVolume holds the unwrapped data key, for the unseal container only.
func dataKeyVolume(secretName string) *corev1ac.VolumeApplyConfiguration {
	return corev1ac.Volume().WithName(volumeDataKey).WithSecret(corev1ac.SecretVolumeSource().
		WithSecretName(secretName).
		WithDefaultMode(0o400))
}

// unsealContainer decrypts the bundle into the plaintext volume and checks
// the digest; it alone mounts the data key.
func unsealContainer(weights *mlv1alpha1.SealedWeights, image string) *corev1ac.ContainerApplyConfiguration {
	// tmpfs pages are charged to the cgroup of the process that writes them,
	// so the unseal container must be allowed the whole plaintext.
	memory := weights.Memory.DeepCopy()
	memory.Add(unsealOverhead)
	return corev1ac.Container().
		WithName(mlv1alpha1.ContainerUnseal).
		WithImage(image).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithCommand(ModelguardBinary, "unseal",
			"--dek-file", path.Join(dataKeyMountPath, DataKeySecretKey),
			"--expect-digest", weights.Digest,
			"--progress", "log",
			BundleLocation(weights), plaintextMount).
		WithSecurityContext(hardenedContainerSecurityContext()).
		WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: memory}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: memory})).
		WithVolumeMounts(append([]*corev1ac.VolumeMountApplyConfiguration{
			corev1ac.VolumeMount().WithName(volumePlaintext).WithMountPath(plaintextMount),
			corev1ac.VolumeMount().WithName(volumeDataKey).WithMountPath(dataKeyMountPath).WithReadOnly(true),
		}, bundleMounts(weights)...)...)
}

// keyResolveContainer reads the bundle's manifest, which is not secret, and
// reports its wrapped data key and model digest in its termination message.
func keyResolveContainer(weights *mlv1alpha1.SealedWeights, image string) *corev1ac.ContainerApplyConfiguration {
	return corev1ac.Container().
		WithName(mlv1alpha1.ContainerKeyResolve).
		WithImage(image).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithCommand(ModelguardBinary, "resolve-key", BundleLocation(weights)).
		WithSecurityContext(hardenedContainerSecurityContext()).
		WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")})).
		WithVolumeMounts(bundleMounts(weights)...)
}

// BundleFingerprint identifies a data key's provenance: the bundle location,
// the expected digest, the key reference and the KEK's ID (a fingerprint, not
// key material). While any of them is unchanged, a data key unwrapped before
// stays valid, so the workload keeps running while a new key-resolve Job
// runs, e.g. after an ownership edit or an operator upgrade.
func BundleFingerprint(weights *mlv1alpha1.SealedWeights, kekID string) string {
	return fingerprint(16, BundleLocation(weights), weights.Digest, keyReference(weights.Key), kekID)
}

// DataKeyHash fingerprints a data key for the pod template, so that a new key
// rolls the pods without putting key bytes in the template.
func DataKeyHash(dek []byte) string {
	sum := sha256.Sum256(append([]byte("modelguard data-key fingerprint\x00"), dek...))
	return hex.EncodeToString(sum[:8])
}

// sealedConfigHash changes when the key reference, data key, digest or bundle
// changes, which rolls the pods.
func sealedConfigHash(weights *mlv1alpha1.SealedWeights, dataKeyHash string) string {
	return fingerprint(8, weights.Digest, dataKeyHash, keyReference(weights.Key), BundleLocation(weights))
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

func keyReference(k mlv1alpha1.KeySource) string {
	switch {
	case k.SecretRef != nil:
		return "secret/" + k.SecretRef.Name + "/" + k.SecretRef.Key
	case k.AWSKMS != nil:
		return "awskms/" + k.AWSKMS.KeyID
	case k.VaultTransit != nil:
		return "vault/" + k.VaultTransit.Address + "/" + k.VaultTransit.KeyName
	}
	return ""
}
