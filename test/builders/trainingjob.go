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

// TrainingJobWrapper builds a TrainingJob.
type TrainingJobWrapper struct{ mlv1alpha1.TrainingJob }

// MakeTrainingJob returns the smallest TrainingJob the API server accepts:
// owner and license, an image, and an output volume of DefaultOutputSize
// sealed under ModelKey DefaultModelKey. Everything else is left
// to the CRD defaults.
func MakeTrainingJob(name, namespace string) *TrainingJobWrapper {
	return &TrainingJobWrapper{mlv1alpha1.TrainingJob{
		TypeMeta: metav1.TypeMeta{
			APIVersion: mlv1alpha1.GroupVersion.String(),
			Kind:       "TrainingJob",
		},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: mlv1alpha1.TrainingJobSpec{
			Ownership: minimalOwnership(),
			Image:     DefaultTrainImage,
			Output: mlv1alpha1.TrainingOutput{
				Size: resource.MustParse(DefaultOutputSize),
				Seal: mlv1alpha1.SealSpec{Key: ModelKeyRef(DefaultModelKey)},
			},
		},
	}}
}

// Obj returns the TrainingJob.
func (w *TrainingJobWrapper) Obj() *mlv1alpha1.TrainingJob { return &w.TrainingJob }

// Clone returns an independent copy of the wrapper.
func (w *TrainingJobWrapper) Clone() *TrainingJobWrapper {
	return &TrainingJobWrapper{*w.DeepCopy()}
}

// Defaulted fills in what the CRD schema defaults, so that pure-function
// tests see the object as the API server would return it. The integration
// tests check that it agrees with the real API server.
func (w *TrainingJobWrapper) Defaulted() *TrainingJobWrapper {
	s := &w.Spec
	defaultOwnership(&s.Ownership)
	defaultShared(s.GPU, s.Network)
	if s.Nodes == 0 {
		s.Nodes = 1
	}
	if s.BackoffLimit == nil {
		s.BackoffLimit = ptr.To[int32](0)
	}
	return w
}

// Metadata.

// Label sets a label.
func (w *TrainingJobWrapper) Label(k, v string) *TrainingJobWrapper {
	metav1.SetMetaDataLabel(&w.ObjectMeta, k, v)
	return w
}

// Annotation sets an annotation.
func (w *TrainingJobWrapper) Annotation(k, v string) *TrainingJobWrapper {
	metav1.SetMetaDataAnnotation(&w.ObjectMeta, k, v)
	return w
}

// Generation sets metadata.generation, for pure-function tests.
func (w *TrainingJobWrapper) Generation(g int64) *TrainingJobWrapper {
	w.ObjectMeta.Generation = g
	return w
}

// UID sets metadata.uid, for pure-function tests of owner references.
func (w *TrainingJobWrapper) UID(uid string) *TrainingJobWrapper {
	w.ObjectMeta.UID = types.UID(uid)
	return w
}

// Ownership.

// Owner sets ownership.owner.
func (w *TrainingJobWrapper) Owner(o string) *TrainingJobWrapper {
	w.Spec.Ownership.Owner = o
	return w
}

// Ownership replaces the whole ownership block.
func (w *TrainingJobWrapper) Ownership(o mlv1alpha1.Ownership) *TrainingJobWrapper {
	w.Spec.Ownership = o
	return w
}

// License sets ownership.license.
func (w *TrainingJobWrapper) License(l string) *TrainingJobWrapper {
	w.Spec.Ownership.License = l
	return w
}

// Classification sets ownership.classification.
func (w *TrainingJobWrapper) Classification(c mlv1alpha1.Classification) *TrainingJobWrapper {
	w.Spec.Ownership.Classification = c
	return w
}

// Container.

// Image sets image.
func (w *TrainingJobWrapper) Image(i string) *TrainingJobWrapper {
	w.Spec.Image = i
	return w
}

// Command sets command.
func (w *TrainingJobWrapper) Command(c ...string) *TrainingJobWrapper {
	w.Spec.Command = c
	return w
}

// Args sets args.
func (w *TrainingJobWrapper) Args(a ...string) *TrainingJobWrapper {
	w.Spec.Args = a
	return w
}

// Env adds an environment variable.
func (w *TrainingJobWrapper) Env(name, value string) *TrainingJobWrapper {
	w.Spec.Env = append(w.Spec.Env, corev1.EnvVar{Name: name, Value: value})
	return w
}

// Nodes sets nodes.
func (w *TrainingJobWrapper) Nodes(n int32) *TrainingJobWrapper {
	w.Spec.Nodes = n
	return w
}

// Resources sets resources.
func (w *TrainingJobWrapper) Resources(r corev1.ResourceRequirements) *TrainingJobWrapper {
	w.Spec.Resources = r
	return w
}

// GPU.

// GPUs sets gpu.count, per node.
func (w *TrainingJobWrapper) GPUs(n int32) *TrainingJobWrapper {
	gpuOf(&w.Spec.GPU).Count = n
	return w
}

// GPUResourceName sets gpu.resourceName.
func (w *TrainingJobWrapper) GPUResourceName(r string) *TrainingJobWrapper {
	gpuOf(&w.Spec.GPU).ResourceName = r
	return w
}

// GPUProducts sets gpu.products.
func (w *TrainingJobWrapper) GPUProducts(p ...string) *TrainingJobWrapper {
	gpuOf(&w.Spec.GPU).Products = p
	return w
}

// GPUMinMemoryMiB sets gpu.minMemoryMiB.
func (w *TrainingJobWrapper) GPUMinMemoryMiB(m int64) *TrainingJobWrapper {
	gpuOf(&w.Spec.GPU).MinMemoryMiB = m
	return w
}

// Toleration adds a toleration to gpu.tolerations.
func (w *TrainingJobWrapper) Toleration(t corev1.Toleration) *TrainingJobWrapper {
	g := gpuOf(&w.Spec.GPU)
	g.Tolerations = append(g.Tolerations, t)
	return w
}

// PriorityClass sets gpu.priorityClassName.
func (w *TrainingJobWrapper) PriorityClass(p string) *TrainingJobWrapper {
	gpuOf(&w.Spec.GPU).PriorityClassName = p
	return w
}

// Inputs.

// BaseWeights sets baseWeights, e.g. from MakeWeights(...).Obj().
func (w *TrainingJobWrapper) BaseWeights(sw *mlv1alpha1.SealedWeights) *TrainingJobWrapper {
	w.Spec.BaseWeights = sw
	return w
}

// DataFromClaim adds a data set read from PVC claim.
func (w *TrainingJobWrapper) DataFromClaim(name, claim string, readOnly bool) *TrainingJobWrapper {
	w.Spec.Data = append(w.Spec.Data, mlv1alpha1.TrainingData{Name: name, ClaimName: claim, ReadOnly: readOnly})
	return w
}

// DataFromURL adds a data set downloaded from an https url.
func (w *TrainingJobWrapper) DataFromURL(name, url string) *TrainingJobWrapper {
	w.Spec.Data = append(w.Spec.Data, mlv1alpha1.TrainingData{Name: name, HTTP: &mlv1alpha1.HTTPSource{URL: url}})
	return w
}

// Output.

// OutputSize sets output.size, e.g. "200Gi".
func (w *TrainingJobWrapper) OutputSize(q string) *TrainingJobWrapper {
	w.Spec.Output.Size = resource.MustParse(q)
	return w
}

// StorageClass sets output.storageClassName.
func (w *TrainingJobWrapper) StorageClass(sc string) *TrainingJobWrapper {
	w.Spec.Output.StorageClassName = sc
	return w
}

// AllowUnencryptedStorage sets output.allowUnencryptedStorage.
func (w *TrainingJobWrapper) AllowUnencryptedStorage(allow bool) *TrainingJobWrapper {
	w.Spec.Output.AllowUnencryptedStorage = allow
	return w
}

// SealKey sets output.seal.key.modelKey.
func (w *TrainingJobWrapper) SealKey(modelKey string) *TrainingJobWrapper {
	w.Spec.Output.Seal.Key = ModelKeyRef(modelKey)
	return w
}

// PromoteTo sets output.promoteTo.
func (w *TrainingJobWrapper) PromoteTo(name string) *TrainingJobWrapper {
	w.Spec.Output.PromoteTo = name
	return w
}

// Scheduling.

// QueueName sets queueName.
func (w *TrainingJobWrapper) QueueName(q string) *TrainingJobWrapper {
	w.Spec.QueueName = q
	return w
}

// BackoffLimit sets backoffLimit.
func (w *TrainingJobWrapper) BackoffLimit(n int32) *TrainingJobWrapper {
	w.Spec.BackoffLimit = ptr.To(n)
	return w
}

// ActiveDeadlineSeconds sets activeDeadlineSeconds.
func (w *TrainingJobWrapper) ActiveDeadlineSeconds(s int64) *TrainingJobWrapper {
	w.Spec.ActiveDeadlineSeconds = ptr.To(s)
	return w
}

// Network, access and runtime.

// AllowClient adds an allowedClients entry.
func (w *TrainingJobWrapper) AllowClient(namespaceSelector, podSelector *metav1.LabelSelector) *TrainingJobWrapper {
	n := networkOf(&w.Spec.Network)
	n.AllowedClients = append(n.AllowedClients, mlv1alpha1.NetworkClient{NamespaceSelector: namespaceSelector, PodSelector: podSelector})
	return w
}

// AllowEgress adds an allowedEgress entry to cidr on TCP ports (every port
// if none).
func (w *TrainingJobWrapper) AllowEgress(cidr string, ports ...int32) *TrainingJobWrapper {
	n := networkOf(&w.Spec.Network)
	n.AllowedEgress = append(n.AllowedEgress, egressRule(cidr, ports))
	return w
}

// BreakGlassGroups sets access.breakGlassGroups.
func (w *TrainingJobWrapper) BreakGlassGroups(g ...string) *TrainingJobWrapper {
	w.Spec.Access = &mlv1alpha1.Access{BreakGlassGroups: g}
	return w
}

// RuntimeClass sets runtimeClassName.
func (w *TrainingJobWrapper) RuntimeClass(r string) *TrainingJobWrapper {
	w.Spec.RuntimeClassName = r
	return w
}

// Status.

// Condition sets a status condition, replacing one of the same type.
func (w *TrainingJobWrapper) Condition(c metav1.Condition) *TrainingJobWrapper {
	meta.SetStatusCondition(&w.Status.Conditions, c)
	return w
}

// Phase sets status.phase.
func (w *TrainingJobWrapper) Phase(p mlv1alpha1.TrainingJobPhase) *TrainingJobWrapper {
	w.Status.Phase = p
	return w
}

// ObservedGeneration sets status.observedGeneration.
func (w *TrainingJobWrapper) ObservedGeneration(g int64) *TrainingJobWrapper {
	w.Status.ObservedGeneration = g
	return w
}

// OutputStatus sets status.output.
func (w *TrainingJobWrapper) OutputStatus(claim, path, digest string) *TrainingJobWrapper {
	w.Status.Output = &mlv1alpha1.TrainingOutputStatus{ClaimName: claim, Path: path, SealedDigest: digest}
	return w
}
