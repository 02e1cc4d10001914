package builders

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// ProtectedModelWrapper builds a ProtectedModel.
type ProtectedModelWrapper struct{ mlv1alpha1.ProtectedModel }

// MakeProtectedModel returns the smallest ProtectedModel the API server
// accepts: owner and license, a sealed bundle on a PVC with its key in the
// ModelKey DefaultModelKey, and a server image. Everything else is left to
// the CRD defaults.
func MakeProtectedModel(name, namespace string) *ProtectedModelWrapper {
	return &ProtectedModelWrapper{mlv1alpha1.ProtectedModel{
		TypeMeta: metav1.TypeMeta{
			APIVersion: mlv1alpha1.GroupVersion.String(),
			Kind:       "ProtectedModel",
		},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: mlv1alpha1.ProtectedModelSpec{
			Ownership: minimalOwnership(),
			Weights:   *MakeWeights(DefaultModelKey).Obj(),
			Server:    mlv1alpha1.ModelServer{Image: DefaultServerImage},
		},
	}}
}

// Obj returns the ProtectedModel.
func (w *ProtectedModelWrapper) Obj() *mlv1alpha1.ProtectedModel { return &w.ProtectedModel }

// Clone returns an independent copy of the wrapper.
func (w *ProtectedModelWrapper) Clone() *ProtectedModelWrapper {
	return &ProtectedModelWrapper{*w.DeepCopy()}
}

// Defaulted fills in what the CRD schema defaults, so that pure-function
// tests see the object as the API server would return it. The integration
// tests check that it agrees with the real API server.
func (w *ProtectedModelWrapper) Defaulted() *ProtectedModelWrapper {
	s := &w.Spec
	defaultOwnership(&s.Ownership)
	defaultShared(s.GPU, s.Network)
	if s.Server.Port == 0 {
		s.Server.Port = 8080
	}
	if s.Server.Replicas == nil {
		s.Server.Replicas = ptr.To[int32](1)
	}
	if s.Server.ModelMountPath == "" {
		s.Server.ModelMountPath = "/models"
	}
	return w
}

// Metadata.

// Label sets a label.
func (w *ProtectedModelWrapper) Label(k, v string) *ProtectedModelWrapper {
	metav1.SetMetaDataLabel(&w.ObjectMeta, k, v)
	return w
}

// Annotation sets an annotation.
func (w *ProtectedModelWrapper) Annotation(k, v string) *ProtectedModelWrapper {
	metav1.SetMetaDataAnnotation(&w.ObjectMeta, k, v)
	return w
}

// Generation sets metadata.generation, for pure-function tests.
func (w *ProtectedModelWrapper) Generation(g int64) *ProtectedModelWrapper {
	w.ObjectMeta.Generation = g
	return w
}

// UID sets metadata.uid, for pure-function tests of owner references.
func (w *ProtectedModelWrapper) UID(uid string) *ProtectedModelWrapper {
	w.ObjectMeta.UID = types.UID(uid)
	return w
}

// Ownership.

// Owner sets ownership.owner.
func (w *ProtectedModelWrapper) Owner(o string) *ProtectedModelWrapper {
	w.Spec.Ownership.Owner = o
	return w
}

// Ownership replaces the whole ownership block.
func (w *ProtectedModelWrapper) Ownership(o mlv1alpha1.Ownership) *ProtectedModelWrapper {
	w.Spec.Ownership = o
	return w
}

// License sets ownership.license.
func (w *ProtectedModelWrapper) License(l string) *ProtectedModelWrapper {
	w.Spec.Ownership.License = l
	return w
}

// Contact sets ownership.contact.
func (w *ProtectedModelWrapper) Contact(c string) *ProtectedModelWrapper {
	w.Spec.Ownership.Contact = c
	return w
}

// Copyright sets ownership.copyright.
func (w *ProtectedModelWrapper) Copyright(c string) *ProtectedModelWrapper {
	w.Spec.Ownership.Copyright = c
	return w
}

// Classification sets ownership.classification.
func (w *ProtectedModelWrapper) Classification(c mlv1alpha1.Classification) *ProtectedModelWrapper {
	w.Spec.Ownership.Classification = c
	return w
}

// Patents sets ownership.patents.
func (w *ProtectedModelWrapper) Patents(p ...string) *ProtectedModelWrapper {
	w.Spec.Ownership.Patents = p
	return w
}

// Weights.

// Weights replaces the whole weights block.
func (w *ProtectedModelWrapper) Weights(sw mlv1alpha1.SealedWeights) *ProtectedModelWrapper {
	w.Spec.Weights = sw
	return w
}

// VolumeSource reads the bundle from path on PVC claim.
func (w *ProtectedModelWrapper) VolumeSource(claim, path string) *ProtectedModelWrapper {
	w.Spec.Weights.Source = volumeSource(claim, path)
	return w
}

// HTTPSource downloads the bundle from url.
func (w *ProtectedModelWrapper) HTTPSource(url string) *ProtectedModelWrapper {
	w.Spec.Weights.Source = httpSource(url)
	return w
}

// Digest sets weights.digest.
func (w *ProtectedModelWrapper) Digest(d string) *ProtectedModelWrapper {
	w.Spec.Weights.Digest = d
	return w
}

// ModelKey sets weights.key.modelKey.
func (w *ProtectedModelWrapper) ModelKey(name string) *ProtectedModelWrapper {
	w.Spec.Weights.Key = ModelKeyRef(name)
	return w
}

// Memory sets weights.memory, e.g. "16Gi".
func (w *ProtectedModelWrapper) Memory(q string) *ProtectedModelWrapper {
	w.Spec.Weights.Memory = resource.MustParse(q)
	return w
}

// Server.

// Image sets server.image.
func (w *ProtectedModelWrapper) Image(i string) *ProtectedModelWrapper {
	w.Spec.Server.Image = i
	return w
}

// Command sets server.command.
func (w *ProtectedModelWrapper) Command(c ...string) *ProtectedModelWrapper {
	w.Spec.Server.Command = c
	return w
}

// Args sets server.args.
func (w *ProtectedModelWrapper) Args(a ...string) *ProtectedModelWrapper {
	w.Spec.Server.Args = a
	return w
}

// Env adds an environment variable to the server.
func (w *ProtectedModelWrapper) Env(name, value string) *ProtectedModelWrapper {
	w.Spec.Server.Env = append(w.Spec.Server.Env, corev1.EnvVar{Name: name, Value: value})
	return w
}

// Port sets server.port.
func (w *ProtectedModelWrapper) Port(p int32) *ProtectedModelWrapper {
	w.Spec.Server.Port = p
	return w
}

// Replicas sets server.replicas.
func (w *ProtectedModelWrapper) Replicas(r int32) *ProtectedModelWrapper {
	w.Spec.Server.Replicas = ptr.To(r)
	return w
}

// Resources sets server.resources.
func (w *ProtectedModelWrapper) Resources(r corev1.ResourceRequirements) *ProtectedModelWrapper {
	w.Spec.Server.Resources = r
	return w
}

// MemoryLimit sets the server's memory limit, e.g. "8Gi".
func (w *ProtectedModelWrapper) MemoryLimit(q string) *ProtectedModelWrapper {
	if w.Spec.Server.Resources.Limits == nil {
		w.Spec.Server.Resources.Limits = corev1.ResourceList{}
	}
	w.Spec.Server.Resources.Limits[corev1.ResourceMemory] = resource.MustParse(q)
	return w
}

// ReadinessPath sets server.readinessPath.
func (w *ProtectedModelWrapper) ReadinessPath(p string) *ProtectedModelWrapper {
	w.Spec.Server.ReadinessPath = p
	return w
}

// ModelMountPath sets server.modelMountPath.
func (w *ProtectedModelWrapper) ModelMountPath(p string) *ProtectedModelWrapper {
	w.Spec.Server.ModelMountPath = p
	return w
}

// GPU.

// GPUs sets gpu.count.
func (w *ProtectedModelWrapper) GPUs(n int32) *ProtectedModelWrapper {
	gpuOf(&w.Spec.GPU).Count = n
	return w
}

// GPUResourceName sets gpu.resourceName, e.g. "nvidia.com/mig-1g.10gb".
func (w *ProtectedModelWrapper) GPUResourceName(r string) *ProtectedModelWrapper {
	gpuOf(&w.Spec.GPU).ResourceName = r
	return w
}

// GPUProducts sets gpu.products.
func (w *ProtectedModelWrapper) GPUProducts(p ...string) *ProtectedModelWrapper {
	gpuOf(&w.Spec.GPU).Products = p
	return w
}

// GPUMinMemoryMiB sets gpu.minMemoryMiB.
func (w *ProtectedModelWrapper) GPUMinMemoryMiB(m int64) *ProtectedModelWrapper {
	gpuOf(&w.Spec.GPU).MinMemoryMiB = m
	return w
}

// Toleration adds a toleration to gpu.tolerations.
func (w *ProtectedModelWrapper) Toleration(t corev1.Toleration) *ProtectedModelWrapper {
	g := gpuOf(&w.Spec.GPU)
	g.Tolerations = append(g.Tolerations, t)
	return w
}

// PriorityClass sets gpu.priorityClassName.
func (w *ProtectedModelWrapper) PriorityClass(p string) *ProtectedModelWrapper {
	gpuOf(&w.Spec.GPU).PriorityClassName = p
	return w
}

// Network, access and runtime.

// AllowClient adds an allowedClients entry.
func (w *ProtectedModelWrapper) AllowClient(namespaceSelector, podSelector *metav1.LabelSelector) *ProtectedModelWrapper {
	n := networkOf(&w.Spec.Network)
	n.AllowedClients = append(n.AllowedClients, mlv1alpha1.NetworkClient{NamespaceSelector: namespaceSelector, PodSelector: podSelector})
	return w
}

// AllowClientPods allows pods with labels in the model's namespace.
func (w *ProtectedModelWrapper) AllowClientPods(labels map[string]string) *ProtectedModelWrapper {
	return w.AllowClient(nil, Selector(labels))
}

// AllowEgress adds an allowedEgress entry to cidr on TCP ports (every port
// if none).
func (w *ProtectedModelWrapper) AllowEgress(cidr string, ports ...int32) *ProtectedModelWrapper {
	n := networkOf(&w.Spec.Network)
	n.AllowedEgress = append(n.AllowedEgress, egressRule(cidr, ports))
	return w
}

// EgressRule adds a fully specified allowedEgress entry.
func (w *ProtectedModelWrapper) EgressRule(r mlv1alpha1.EgressRule) *ProtectedModelWrapper {
	n := networkOf(&w.Spec.Network)
	n.AllowedEgress = append(n.AllowedEgress, r)
	return w
}

// BreakGlassGroups sets access.breakGlassGroups.
func (w *ProtectedModelWrapper) BreakGlassGroups(g ...string) *ProtectedModelWrapper {
	w.Spec.Access = &mlv1alpha1.Access{BreakGlassGroups: g}
	return w
}

// RuntimeClass sets runtimeClassName.
func (w *ProtectedModelWrapper) RuntimeClass(r string) *ProtectedModelWrapper {
	w.Spec.RuntimeClassName = r
	return w
}

// Status.

// Condition sets a status condition, replacing one of the same type.
func (w *ProtectedModelWrapper) Condition(c metav1.Condition) *ProtectedModelWrapper {
	meta.SetStatusCondition(&w.Status.Conditions, c)
	return w
}

// Phase sets status.phase.
func (w *ProtectedModelWrapper) Phase(p mlv1alpha1.ProtectedModelPhase) *ProtectedModelWrapper {
	w.Status.Phase = p
	return w
}

// ObservedGeneration sets status.observedGeneration.
func (w *ProtectedModelWrapper) ObservedGeneration(g int64) *ProtectedModelWrapper {
	w.Status.ObservedGeneration = g
	return w
}

// ReadyReplicas sets status.replicas and status.readyReplicas.
func (w *ProtectedModelWrapper) ReadyReplicas(replicas, ready int32) *ProtectedModelWrapper {
	w.Status.Replicas, w.Status.ReadyReplicas = replicas, ready
	return w
}

// Protection sets status.protection.
func (w *ProtectedModelWrapper) Protection(p mlv1alpha1.ProtectionSummary) *ProtectedModelWrapper {
	w.Status.Protection = &p
	return w
}
