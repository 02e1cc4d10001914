// Package builder turns ModelGuard custom resources into the Kubernetes
// objects that protect them. Every function here is pure: it takes the CR and
// facts the controller has already resolved, and returns applyconfigurations
// for server-side apply. No client, no I/O, so table tests can cover every
// field.
//
// Most functions work on a Workload, the part that a ProtectedModel and a
// TrainingJob share; protectedmodel.go composes them for a ProtectedModel.
package builder

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// Wire names that callers of the builders used before they moved to the API
// package, where the admission guard and the key service read them too.
const (
	LabelComponent  = mlv1alpha1.LabelComponent
	ComponentServer = mlv1alpha1.ComponentServer

	UnsealContainerName = mlv1alpha1.ContainerUnseal
	ServerContainerName = mlv1alpha1.ContainerServer
)

// Workload is what every builder needs to know of a ProtectedModel or a
// TrainingJob: who it is, whose weights it holds, and the shared API blocks
// that shape its pods and its network.
type Workload struct {
	// Kind is the custom resource's kind, for owner references.
	Kind      string
	Name      string
	Namespace string
	UID       types.UID
	// NameLabel is the label that names the workload on every object and pod
	// managed for it (modelguard.dev/model or modelguard.dev/training-job).
	NameLabel string

	Ownership mlv1alpha1.Ownership
	// WeightsDigest is the digest of the weights the workload holds, recorded
	// in the ownership annotations; empty when it starts from none.
	WeightsDigest string

	GPU              *mlv1alpha1.GPU
	Network          mlv1alpha1.Network
	Access           mlv1alpha1.Access
	RuntimeClassName string
}

func derefOrZero[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// PodSelector selects every pod of the workload, whatever its component.
func (w Workload) PodSelector() map[string]string {
	return map[string]string{w.NameLabel: w.Name}
}

// ComponentSelector selects the pods of one component of the workload.
func (w Workload) ComponentSelector(component string) map[string]string {
	return map[string]string{w.NameLabel: w.Name, mlv1alpha1.LabelComponent: component}
}

// CommonLabels are the labels every object managed for the workload carries.
func CommonLabels(w Workload) map[string]string {
	return map[string]string{
		mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue,
		mlv1alpha1.LabelName:      w.Name,
		w.NameLabel:               w.Name,
		mlv1alpha1.LabelProtected: "true",
	}
}

// OwnershipAnnotations are the intellectual-property annotations every object
// managed for the workload carries, pods included.
func OwnershipAnnotations(w Workload) map[string]string {
	return mlv1alpha1.OwnershipAnnotations(w.Ownership, w.WeightsDigest)
}

// PodLabels are the labels of the workload's pods of one component.
func PodLabels(w Workload, component string) map[string]string {
	return merge(CommonLabels(w), w.ComponentSelector(component))
}

// ownerReference makes the workload the controller of a child, so that
// children are garbage-collected with it and their changes wake the
// reconciler.
func ownerReference(w Workload) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(mlv1alpha1.GroupVersion.String()).
		WithKind(w.Kind).
		WithName(w.Name).
		WithUID(w.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

// objectMeta is what every object applyconfiguration can be given.
type objectMeta[T any] interface {
	WithLabels(map[string]string) T
	WithAnnotations(map[string]string) T
	WithOwnerReferences(...*metav1ac.OwnerReferenceApplyConfiguration) T
}

// managed gives an object the labels, ownership annotations and owner
// reference of every object managed for the workload.
func managed[T objectMeta[T]](obj T, w Workload) T {
	return obj.WithLabels(CommonLabels(w)).WithAnnotations(OwnershipAnnotations(w)).WithOwnerReferences(ownerReference(w))
}

// ServiceAccount has no token: nothing in a protected pod talks to the API.
func ServiceAccount(w Workload) *corev1ac.ServiceAccountApplyConfiguration {
	return managed(corev1ac.ServiceAccount(w.Name, w.Namespace), w).
		WithAutomountServiceAccountToken(false)
}

// merge returns the union of maps; later maps win.
func merge(maps ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// convert copies an API value into its applyconfiguration twin. The two share
// their JSON form, so a JSON round trip copies every field, including ones
// added in later Kubernetes versions, without a hand-written mapping that
// could silently drop them.
func convert[AC any](in any) *AC {
	data, err := json.Marshal(in)
	if err != nil {
		panic(fmt.Sprintf("builder: marshalling %T: %v", in, err))
	}
	out := new(AC)
	if err := json.Unmarshal(data, out); err != nil {
		panic(fmt.Sprintf("builder: %T into %T: %v", in, out, err))
	}
	return out
}

func labelSelector(s *metav1.LabelSelector) *metav1ac.LabelSelectorApplyConfiguration {
	return convert[metav1ac.LabelSelectorApplyConfiguration](s)
}

func toleration(t corev1.Toleration) *corev1ac.TolerationApplyConfiguration {
	return convert[corev1ac.TolerationApplyConfiguration](t)
}

func envVar(e corev1.EnvVar) *corev1ac.EnvVarApplyConfiguration {
	return convert[corev1ac.EnvVarApplyConfiguration](e)
}
