package builder

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// This file composes the kind-neutral builders into a ProtectedModel's
// children. Only the parts that exist for serving alone (the server
// container, the Service, replicas) are built here.

// AnnotationConfigHash is set on the pod template; it changes when the
// ModelKey, the digest or the bundle changes, which rolls the pods.
const AnnotationConfigHash = "modelguard.dev/config-hash"

var (
	// defaultServerMemory is added to the plaintext size for the server's
	// memory limit when spec.server.resources sets none.
	defaultServerMemory = resource.MustParse("512Mi")
	serverTmpSize       = resource.MustParse("64Mi")
)

// ProtectedModelFacts are what the controller resolved before building: they
// keep the builders pure.
type ProtectedModelFacts struct {
	// UnsealImage runs `modelguard unseal`.
	UnsealImage string
	// Replicas is the Deployment's replica count: spec.server.replicas, or 0
	// when the model cannot be protected (fail closed).
	Replicas int32
	// KeyRelease is the key-release service the unseal container calls.
	KeyRelease KeyRelease
	// DefaultGPUTolerations are the cluster's tolerations for GPU nodes (the
	// manager's --default-gpu-tolerations), added to every pod that asks for
	// a GPU, after the resource toleration and before the spec's own.
	DefaultGPUTolerations []corev1.Toleration
}

// ForProtectedModel is the workload of a ProtectedModel.
func ForProtectedModel(pm *mlv1alpha1.ProtectedModel) Workload {
	return Workload{
		Kind: "ProtectedModel", Name: pm.Name, Namespace: pm.Namespace, UID: pm.UID,
		NameLabel:        mlv1alpha1.LabelModel,
		Ownership:        pm.Spec.Ownership,
		WeightsDigest:    pm.Spec.Weights.Digest,
		GPU:              pm.Spec.GPU,
		Network:          derefOrZero(pm.Spec.Network),
		Access:           derefOrZero(pm.Spec.Access),
		RuntimeClassName: pm.Spec.RuntimeClassName,
	}
}

// ModelIsolation is a model's NetworkPolicy shape: the allowed clients reach
// its serving port, and its pods reach the key-release service in the
// operator's namespace.
func ModelIsolation(pm *mlv1alpha1.ProtectedModel, operatorNamespace string) Isolation {
	return Isolation{ServingPort: ptr.To(serverPort(pm)), KeyReleaseNamespace: operatorNamespace}
}

// ModelNetworkPolicy is the model's NetworkPolicy.
func ModelNetworkPolicy(pm *mlv1alpha1.ProtectedModel, operatorNamespace string) *networkingv1ac.NetworkPolicyApplyConfiguration {
	return NetworkPolicy(ForProtectedModel(pm), ModelIsolation(pm, operatorNamespace))
}

// Service exposes the model's port inside the cluster; the NetworkPolicy
// decides who may reach it.
func Service(pm *mlv1alpha1.ProtectedModel) *corev1ac.ServiceApplyConfiguration {
	w := ForProtectedModel(pm)
	return managed(corev1ac.Service(pm.Name, pm.Namespace), w).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithSelector(w.ComponentSelector(mlv1alpha1.ComponentServer)).
			WithPorts(corev1ac.ServicePort().
				WithName("http").
				WithProtocol(corev1.ProtocolTCP).
				WithPort(serverPort(pm)).
				WithTargetPort(intstr.FromString("http"))))
}

// Deployment runs the model server behind an unseal init container that
// gets the data key from the key-release service and decrypts the sealed
// bundle into a memory-backed volume. Only the init container sees the data
// key and the key-release token; the server sees plaintext weights read-only
// and no Secret or token.
func Deployment(pm *mlv1alpha1.ProtectedModel, facts ProtectedModelFacts) *appsv1ac.DeploymentApplyConfiguration {
	w := ForProtectedModel(pm)
	weights := &pm.Spec.Weights
	volumes := []*corev1ac.VolumeApplyConfiguration{
		plaintextVolume(weights),
		keyReleaseTokenVolume(),
		corev1ac.Volume().WithName(volumeTmp).WithEmptyDir(corev1ac.EmptyDirVolumeSource().
			WithMedium(corev1.StorageMediumMemory).
			WithSizeLimit(serverTmpSize)),
	}
	if v := bundleVolume(weights); v != nil {
		volumes = append(volumes, v)
	}

	podSpec := withGPUScheduling(hardenedPodSpec(w), w.GPU, facts.DefaultGPUTolerations).
		WithInitContainers(unsealContainer(w, weights, facts.UnsealImage, facts.KeyRelease)).
		WithContainers(serverContainer(pm)).
		WithVolumes(volumes...)
	server := w.ComponentSelector(mlv1alpha1.ComponentServer)
	if facts.Replicas > 1 {
		podSpec.WithTopologySpreadConstraints(corev1ac.TopologySpreadConstraint().
			WithMaxSkew(1).
			WithTopologyKey(corev1.LabelHostname).
			WithWhenUnsatisfiable(corev1.ScheduleAnyway).
			WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(server)))
	}

	return managed(appsv1ac.Deployment(pm.Name, pm.Namespace), w).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(facts.Replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(server)).
			WithStrategy(appsv1ac.DeploymentStrategy().WithType(appsv1.RollingUpdateDeploymentStrategyType)).
			WithTemplate(podTemplate(w, mlv1alpha1.ComponentServer,
				map[string]string{AnnotationConfigHash: sealedConfigHash(weights)}, podSpec)))
}

func serverContainer(pm *mlv1alpha1.ProtectedModel) *corev1ac.ContainerApplyConfiguration {
	s := pm.Spec.Server
	c := corev1ac.Container().
		WithName(mlv1alpha1.ContainerServer).
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
	withGPULimit(pm.Spec.GPU, requests, limits)
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

// Replicas is spec.server.replicas with the API default applied.
func Replicas(pm *mlv1alpha1.ProtectedModel) int32 {
	return ptr.Deref(pm.Spec.Server.Replicas, 1)
}
