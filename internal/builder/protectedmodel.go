package builder

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	batchv1ac "k8s.io/client-go/applyconfigurations/batch/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
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

	UnsealContainerName     = "unseal"
	ServerContainerName     = "server"
	KeyResolveContainerName = "key-resolve"

	// nonRootUID is distroless's "nonroot" user; pods run as it whatever the
	// image says, so that Pod Security "restricted" admits them.
	nonRootUID int64 = 65532

	// AnnotationConfigHash is set on the pod template; it changes when the
	// key reference, data key or digest changes, which rolls the pods.
	AnnotationConfigHash = "modelguard.dev/config-hash"
)

var (
	// unsealOverhead is the memory the unseal process itself needs beside the
	// plaintext it writes into tmpfs (which is charged to its cgroup).
	unsealOverhead = resource.MustParse("128Mi")
	// defaultServerMemory is added to the plaintext size for the server's
	// memory limit when spec.server.resources sets none.
	defaultServerMemory = resource.MustParse("512Mi")
	serverTmpSize       = resource.MustParse("64Mi")
)

// ProtectedModelFacts are what the controller resolved before building: they
// keep the builders pure.
type ProtectedModelFacts struct {
	// UnsealImage runs `modelguard unseal` and `modelguard resolve-key`.
	UnsealImage string
	// Replicas is the Deployment's replica count: spec.server.replicas, or 0
	// when the model cannot be protected (fail closed).
	Replicas int32
	// DataKeyHash fingerprints the data key; a change rolls the pods. It is a
	// hash, never the key.
	DataKeyHash string
	// DefaultGPUTolerations are the cluster's tolerations for GPU nodes (the
	// manager's --default-gpu-tolerations), added to every pod that asks for
	// a GPU, after the resource toleration and before the spec's own.
	DefaultGPUTolerations []corev1.Toleration
}

// DataKeySecretName is the Secret holding the unwrapped data key.
func DataKeySecretName(pm *mlv1alpha1.ProtectedModel) string { return pm.Name + "-data-key" }

// ServiceAccount has no token: nothing in a protected pod talks to the API.
func ServiceAccount(pm *mlv1alpha1.ProtectedModel) *corev1ac.ServiceAccountApplyConfiguration {
	return corev1ac.ServiceAccount(pm.Name, pm.Namespace).
		WithLabels(CommonLabels(pm)).
		WithAnnotations(OwnershipAnnotations(pm)).
		WithOwnerReferences(ownerReference(pm)).
		WithAutomountServiceAccountToken(false)
}

// AnnotationBundleFingerprint on the data-key Secret records which bundle,
// digest and key-encryption key the data key was unwrapped for.
const AnnotationBundleFingerprint = "modelguard.dev/bundle-fingerprint"

// BundleFingerprint identifies a data key's provenance: the bundle location,
// the expected digest, the key reference and the KEK's ID (a fingerprint, not
// key material). While any of them is unchanged, a data key unwrapped before
// stays valid, so the model keeps serving while a new key-resolve Job runs,
// e.g. after an ownership edit or an operator upgrade.
func BundleFingerprint(pm *mlv1alpha1.ProtectedModel, kekID string) string {
	h := sha256.New()
	for _, part := range []string{BundleLocation(pm), pm.Spec.Weights.Digest, keyReference(pm), kekID} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// DataKeySecret holds the bundle's data key (never the key-encryption key),
// mounted only by the unseal init container. kekID is the ID of the KEK that
// unwrapped it, recorded through BundleFingerprint.
func DataKeySecret(pm *mlv1alpha1.ProtectedModel, dek []byte, kekID string) *corev1ac.SecretApplyConfiguration {
	return corev1ac.Secret(DataKeySecretName(pm), pm.Namespace).
		WithLabels(merge(CommonLabels(pm), map[string]string{mlv1alpha1.LabelDataKey: "true"})).
		WithAnnotations(merge(OwnershipAnnotations(pm), map[string]string{AnnotationBundleFingerprint: BundleFingerprint(pm, kekID)})).
		WithOwnerReferences(ownerReference(pm)).
		WithType(corev1.SecretTypeOpaque).
		WithImmutable(false).
		WithData(map[string][]byte{DataKeySecretKey: []byte(keys.EncodeDEK(dek))})
}

// DataKeyHash fingerprints a data key for the pod template, so that a new key
// rolls the pods without putting key bytes in the template.
func DataKeyHash(dek []byte) string {
	sum := sha256.Sum256(append([]byte("modelguard data-key fingerprint\x00"), dek...))
	return hex.EncodeToString(sum[:8])
}

// Service exposes the model's port inside the cluster; the NetworkPolicy
// decides who may reach it.
func Service(pm *mlv1alpha1.ProtectedModel) *corev1ac.ServiceApplyConfiguration {
	return corev1ac.Service(pm.Name, pm.Namespace).
		WithLabels(CommonLabels(pm)).
		WithAnnotations(OwnershipAnnotations(pm)).
		WithOwnerReferences(ownerReference(pm)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithSelector(selectorFor(pm, ComponentServer)).
			WithPorts(corev1ac.ServicePort().
				WithName("http").
				WithProtocol(corev1.ProtocolTCP).
				WithPort(serverPort(pm)).
				WithTargetPort(intstr.FromString("http"))))
}

// NetworkPolicy denies everything the spec does not allow, in both
// directions, for every pod of the model (server and key-resolve).
func NetworkPolicy(pm *mlv1alpha1.ProtectedModel) *networkingv1ac.NetworkPolicyApplyConfiguration {
	spec := networkingv1ac.NetworkPolicySpec().
		WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{mlv1alpha1.LabelModel: pm.Name})).
		WithPolicyTypes(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)

	var network mlv1alpha1.Network
	if pm.Spec.Network != nil {
		network = *pm.Spec.Network
	}
	if len(network.AllowedClients) > 0 {
		rule := networkingv1ac.NetworkPolicyIngressRule().
			WithPorts(networkingv1ac.NetworkPolicyPort().
				WithProtocol(corev1.ProtocolTCP).
				WithPort(intstr.FromInt32(serverPort(pm))))
		for _, c := range network.AllowedClients {
			peer := networkingv1ac.NetworkPolicyPeer()
			if c.NamespaceSelector != nil {
				peer.WithNamespaceSelector(labelSelector(c.NamespaceSelector))
			}
			if c.PodSelector != nil {
				peer.WithPodSelector(labelSelector(c.PodSelector))
			}
			rule.WithFrom(peer)
		}
		spec.WithIngress(rule)
	}

	spec.WithEgress(dnsEgressRule())
	for _, e := range network.AllowedEgress {
		block := networkingv1ac.IPBlock().WithCIDR(string(e.CIDR))
		for _, ex := range e.Except {
			block.WithExcept(string(ex))
		}
		rule := networkingv1ac.NetworkPolicyEgressRule().WithTo(networkingv1ac.NetworkPolicyPeer().WithIPBlock(block))
		for _, p := range e.Ports {
			port := networkingv1ac.NetworkPolicyPort().WithPort(intstr.FromInt32(p.Port))
			protocol := p.Protocol
			if protocol == "" {
				protocol = corev1.ProtocolTCP
			}
			port.WithProtocol(protocol)
			if p.EndPort != nil {
				port.WithEndPort(*p.EndPort)
			}
			rule.WithPorts(port)
		}
		spec.WithEgress(rule)
	}

	return networkingv1ac.NetworkPolicy(pm.Name, pm.Namespace).
		WithLabels(CommonLabels(pm)).
		WithAnnotations(OwnershipAnnotations(pm)).
		WithOwnerReferences(ownerReference(pm)).
		WithSpec(spec)
}

// dnsEgressRule lets pods resolve names through the cluster DNS and nothing
// else in kube-system.
func dnsEgressRule() *networkingv1ac.NetworkPolicyEgressRuleApplyConfiguration {
	return networkingv1ac.NetworkPolicyEgressRule().
		WithTo(networkingv1ac.NetworkPolicyPeer().
			WithNamespaceSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"kubernetes.io/metadata.name": "kube-system"})).
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"k8s-app": "kube-dns"}))).
		WithPorts(
			networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolUDP).WithPort(intstr.FromInt32(53)),
			networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(53)),
		)
}

// Deployment runs the model server behind an unseal init container that
// decrypts the sealed bundle into a memory-backed volume. Only the init
// container sees the data key; the server sees plaintext weights read-only
// and no Secret or token.
func Deployment(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) *appsv1ac.DeploymentApplyConfiguration {
	podLabels := merge(CommonLabels(pm), selectorFor(pm, ComponentServer))
	podAnnotations := merge(OwnershipAnnotations(pm), map[string]string{AnnotationConfigHash: configHash(pm, facts)})

	volumes := []*corev1ac.VolumeApplyConfiguration{
		corev1ac.Volume().WithName(volumePlaintext).WithEmptyDir(corev1ac.EmptyDirVolumeSource().
			WithMedium(corev1.StorageMediumMemory).
			WithSizeLimit(pm.Spec.Weights.Memory)),
		corev1ac.Volume().WithName(volumeDataKey).WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(DataKeySecretName(pm)).
			WithDefaultMode(0o400)),
		corev1ac.Volume().WithName(volumeTmp).WithEmptyDir(corev1ac.EmptyDirVolumeSource().
			WithMedium(corev1.StorageMediumMemory).
			WithSizeLimit(serverTmpSize)),
	}
	if v := bundleVolume(pm); v != nil {
		volumes = append(volumes, v)
	}

	podSpec := hardenedPodSpec(pm, facts).
		WithInitContainers(unsealContainer(pm, facts)).
		WithContainers(serverContainer(pm)).
		WithVolumes(volumes...)
	if facts.Replicas > 1 {
		podSpec.WithTopologySpreadConstraints(corev1ac.TopologySpreadConstraint().
			WithMaxSkew(1).
			WithTopologyKey(corev1.LabelHostname).
			WithWhenUnsatisfiable(corev1.ScheduleAnyway).
			WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(selectorFor(pm, ComponentServer))))
	}

	return appsv1ac.Deployment(pm.Name, pm.Namespace).
		WithLabels(CommonLabels(pm)).
		WithAnnotations(OwnershipAnnotations(pm)).
		WithOwnerReferences(ownerReference(pm)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(facts.Replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorFor(pm, ComponentServer))).
			WithStrategy(appsv1ac.DeploymentStrategy().WithType(appsv1.RollingUpdateDeploymentStrategyType)).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(podLabels).
				WithAnnotations(podAnnotations).
				WithSpec(podSpec)))
}

// KeyResolveJobName is unique per pod template (bundle claim and location,
// digest, image, ownership, runtime class), so that a new source gets a fresh
// resolution while the old Job is cleaned up.
func KeyResolveJobName(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) string {
	// A Job's pod template is immutable: the API server rejects any change to
	// it, so all of it goes into the name.
	template, err := json.Marshal(keyResolvePodTemplate(pm, facts))
	if err != nil {
		panic(fmt.Sprintf("builder: marshalling the key-resolve pod template: %v", err))
	}
	sum := sha256.Sum256(template)
	return pm.Name + "-kr-" + hex.EncodeToString(sum[:4])
}

// KeyResolveJob reads the bundle's manifest, which is not secret, and reports
// its wrapped data key and model digest in the termination message. It exists
// because the operator cannot read a PersistentVolumeClaim itself.
func KeyResolveJob(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) *batchv1ac.JobApplyConfiguration {
	return batchv1ac.Job(KeyResolveJobName(pm, facts), pm.Namespace).
		WithLabels(merge(CommonLabels(pm), map[string]string{LabelComponent: ComponentKeyResolve})).
		WithAnnotations(OwnershipAnnotations(pm)).
		WithOwnerReferences(ownerReference(pm)).
		WithSpec(batchv1ac.JobSpec().
			WithBackoffLimit(2).
			WithActiveDeadlineSeconds(300).
			WithTemplate(keyResolvePodTemplate(pm, facts)))
}

func keyResolvePodTemplate(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) *corev1ac.PodTemplateSpecApplyConfiguration {
	podLabels := merge(CommonLabels(pm), selectorFor(pm, ComponentKeyResolve))
	podSpec := hardenedPodSpec(pm, facts).
		WithRestartPolicy(corev1.RestartPolicyNever).
		WithContainers(corev1ac.Container().
			WithName(KeyResolveContainerName).
			WithImage(facts.UnsealImage).
			WithImagePullPolicy(corev1.PullIfNotPresent).
			WithCommand(ModelguardBinary, "resolve-key", BundleLocation(pm)).
			WithSecurityContext(hardenedContainerSecurityContext()).
			WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
			WithResources(corev1ac.ResourceRequirements().
				WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")}).
				WithLimits(corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")})).
			WithVolumeMounts(bundleMounts(pm)...))
	if v := bundleVolume(pm); v != nil {
		podSpec.WithVolumes(v)
	}
	// The key-resolve pod needs no GPU; drop the GPU scheduling constraints.
	podSpec.Affinity = nil
	podSpec.Tolerations = nil
	podSpec.PriorityClassName = nil

	return corev1ac.PodTemplateSpec().
		WithLabels(podLabels).
		WithAnnotations(OwnershipAnnotations(pm)).
		WithSpec(podSpec)
}

// BundleLocation is where the unseal and key-resolve containers read the
// sealed bundle: a path in the mounted claim, or the https URL.
func BundleLocation(pm *mlv1alpha1.ProtectedModel) string {
	src := pm.Spec.Weights.Source
	switch {
	case src.Volume != nil:
		return path.Join(bundleMountPath, path.Clean("/"+src.Volume.Path))
	case src.HTTP != nil:
		return src.HTTP.URL
	}
	return ""
}

func bundleVolume(pm *mlv1alpha1.ProtectedModel) *corev1ac.VolumeApplyConfiguration {
	if pm.Spec.Weights.Source.Volume == nil {
		return nil
	}
	return corev1ac.Volume().WithName(volumeBundle).WithPersistentVolumeClaim(
		corev1ac.PersistentVolumeClaimVolumeSource().
			WithClaimName(pm.Spec.Weights.Source.Volume.ClaimName).
			WithReadOnly(true))
}

func bundleMounts(pm *mlv1alpha1.ProtectedModel) []*corev1ac.VolumeMountApplyConfiguration {
	if pm.Spec.Weights.Source.Volume == nil {
		return nil
	}
	return []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName(volumeBundle).WithMountPath(bundleMountPath).WithReadOnly(true),
	}
}

// hardenedPodSpec is the pod-level part shared by every pod ModelGuard runs:
// no API token, no service links, non-root with the runtime's seccomp
// profile, and the GPU scheduling constraints.
func hardenedPodSpec(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) *corev1ac.PodSpecApplyConfiguration {
	spec := corev1ac.PodSpec().
		WithServiceAccountName(pm.Name).
		WithAutomountServiceAccountToken(false).
		WithEnableServiceLinks(false).
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(nonRootUID).
			WithRunAsGroup(nonRootUID).
			WithFSGroup(nonRootUID).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault)))
	if pm.Spec.RuntimeClassName != "" {
		spec.WithRuntimeClassName(pm.Spec.RuntimeClassName)
	}
	gpu := pm.Spec.GPU
	if gpu == nil {
		return spec
	}
	if gpu.PriorityClassName != "" {
		spec.WithPriorityClassName(gpu.PriorityClassName)
	}
	if gpu.Count > 0 {
		spec.WithTolerations(corev1ac.Toleration().
			WithKey(gpuResourceName(gpu)).
			WithOperator(corev1.TolerationOpExists).
			WithEffect(corev1.TaintEffectNoSchedule))
		for i := range facts.DefaultGPUTolerations {
			spec.WithTolerations(toleration(facts.DefaultGPUTolerations[i]))
		}
	}
	for i := range gpu.Tolerations {
		spec.WithTolerations(toleration(gpu.Tolerations[i]))
	}
	var requirements []*corev1ac.NodeSelectorRequirementApplyConfiguration
	if len(gpu.Products) > 0 {
		requirements = append(requirements, corev1ac.NodeSelectorRequirement().
			WithKey(LabelGPUProduct).
			WithOperator(corev1.NodeSelectorOpIn).
			WithValues(gpu.Products...))
	}
	if gpu.MinMemoryMiB > 0 {
		// Gt is strict; the label is the memory in MiB, and a node with
		// exactly the minimum must qualify.
		requirements = append(requirements, corev1ac.NodeSelectorRequirement().
			WithKey(LabelGPUMemory).
			WithOperator(corev1.NodeSelectorOpGt).
			WithValues(strconv.FormatInt(gpu.MinMemoryMiB-1, 10)))
	}
	if len(requirements) > 0 {
		spec.WithAffinity(corev1ac.Affinity().WithNodeAffinity(corev1ac.NodeAffinity().
			WithRequiredDuringSchedulingIgnoredDuringExecution(corev1ac.NodeSelector().
				WithNodeSelectorTerms(corev1ac.NodeSelectorTerm().WithMatchExpressions(requirements...)))))
	}
	return spec
}

// GPU Feature Discovery's node labels.
const (
	LabelGPUProduct = "nvidia.com/gpu.product"
	LabelGPUMemory  = "nvidia.com/gpu.memory"
)

func hardenedContainerSecurityContext() *corev1ac.SecurityContextApplyConfiguration {
	return corev1ac.SecurityContext().
		WithRunAsNonRoot(true).
		WithAllowPrivilegeEscalation(false).
		WithReadOnlyRootFilesystem(true).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
		WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))
}

func unsealContainer(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) *corev1ac.ContainerApplyConfiguration {
	// tmpfs pages are charged to the cgroup of the process that writes them,
	// so the unseal container must be allowed the whole plaintext.
	memory := pm.Spec.Weights.Memory.DeepCopy()
	memory.Add(unsealOverhead)
	return corev1ac.Container().
		WithName(UnsealContainerName).
		WithImage(facts.UnsealImage).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithCommand(ModelguardBinary, "unseal",
			"--dek-file", path.Join(dataKeyMountPath, DataKeySecretKey),
			"--expect-digest", pm.Spec.Weights.Digest,
			"--progress", "log",
			BundleLocation(pm), plaintextMount).
		WithSecurityContext(hardenedContainerSecurityContext()).
		WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: memory}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: memory})).
		WithVolumeMounts(append([]*corev1ac.VolumeMountApplyConfiguration{
			corev1ac.VolumeMount().WithName(volumePlaintext).WithMountPath(plaintextMount),
			corev1ac.VolumeMount().WithName(volumeDataKey).WithMountPath(dataKeyMountPath).WithReadOnly(true),
		}, bundleMounts(pm)...)...)
}

func serverContainer(pm *mlv1alpha1.ProtectedModel) *corev1ac.ContainerApplyConfiguration {
	s := pm.Spec.Server
	c := corev1ac.Container().
		WithName(ServerContainerName).
		WithImage(s.Image).
		WithPorts(corev1ac.ContainerPort().WithName("http").WithContainerPort(serverPort(pm)).WithProtocol(corev1.ProtocolTCP)).
		WithSecurityContext(hardenedContainerSecurityContext()).
		WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
		WithResources(ServerResources(pm)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName(volumePlaintext).WithMountPath(modelMountPath(pm)).WithReadOnly(true),
			corev1ac.VolumeMount().WithName(volumeTmp).WithMountPath("/tmp"),
		)
	if len(s.Command) > 0 {
		c.WithCommand(s.Command...)
	}
	if len(s.Args) > 0 {
		c.WithArgs(s.Args...)
	}
	for i := range s.Env {
		c.WithEnv(envVar(s.Env[i]))
	}
	if s.ReadinessPath != "" {
		c.WithReadinessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().
			WithPath(s.ReadinessPath).
			WithPort(intstr.FromString("http"))))
	}
	return c
}

// ServerResources are the server's resources with the GPU limit added and,
// when the spec sets no memory limit, one that covers the plaintext weights
// (tmpfs counts against the pod's memory).
func ServerResources(pm *mlv1alpha1.ProtectedModel) *corev1ac.ResourceRequirementsApplyConfiguration {
	requests := pm.Spec.Server.Resources.Requests.DeepCopy()
	limits := pm.Spec.Server.Resources.Limits.DeepCopy()
	if limits == nil {
		limits = corev1.ResourceList{}
	}
	if _, ok := limits[corev1.ResourceMemory]; !ok {
		memory := pm.Spec.Weights.Memory.DeepCopy()
		if req, ok := requests[corev1.ResourceMemory]; ok {
			memory.Add(req)
		} else {
			memory.Add(defaultServerMemory)
		}
		limits[corev1.ResourceMemory] = memory
	}
	if gpu := pm.Spec.GPU; gpu != nil && gpu.Count > 0 {
		name := corev1.ResourceName(gpuResourceName(gpu))
		limits[name] = *resource.NewQuantity(int64(gpu.Count), resource.DecimalSI)
		if requests != nil {
			delete(requests, name)
		}
	}
	r := corev1ac.ResourceRequirements().WithLimits(limits)
	if len(requests) > 0 {
		r.WithRequests(requests)
	}
	return r
}

// MemoryCoversWeights reports whether the server's memory limit (as built)
// leaves room for the plaintext weights held in tmpfs.
func MemoryCoversWeights(pm *mlv1alpha1.ProtectedModel) bool {
	limit, ok := pm.Spec.Server.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		return true // ServerResources derives a limit that covers them.
	}
	return limit.Cmp(pm.Spec.Weights.Memory) > 0
}

func configHash(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) string {
	h := sha256.New()
	for _, part := range []string{pm.Spec.Weights.Digest, facts.DataKeyHash, keyReference(pm), BundleLocation(pm)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func keyReference(pm *mlv1alpha1.ProtectedModel) string {
	k := pm.Spec.Weights.Key
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

func serverPort(pm *mlv1alpha1.ProtectedModel) int32 {
	if pm.Spec.Server.Port == 0 {
		return 8080
	}
	return pm.Spec.Server.Port
}

func modelMountPath(pm *mlv1alpha1.ProtectedModel) string {
	if pm.Spec.Server.ModelMountPath == "" {
		return "/models"
	}
	return pm.Spec.Server.ModelMountPath
}

func gpuResourceName(gpu *mlv1alpha1.GPU) string {
	if gpu.ResourceName == "" {
		return "nvidia.com/gpu"
	}
	return gpu.ResourceName
}

// Replicas is spec.server.replicas with the API default applied.
func Replicas(pm *mlv1alpha1.ProtectedModel) int32 {
	return ptr.Deref(pm.Spec.Server.Replicas, 1)
}
