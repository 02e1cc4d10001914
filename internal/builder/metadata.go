// Package builder turns ModelGuard custom resources into the Kubernetes
// objects that protect them. Every function here is pure: it takes the CR and
// facts the controller has already resolved, and returns applyconfigurations
// for server-side apply. No client, no I/O, so table tests can cover every
// field.
package builder

import (
	"encoding/json"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// LabelComponent tells the server pods from the key-resolve pods of the same
// model, so that the Service and Deployment select only the former.
const LabelComponent = "modelguard.dev/component"

// Component values.
const (
	ComponentServer     = "server"
	ComponentKeyResolve = "key-resolve"
)

// CommonLabels are the labels every object managed for the model carries.
func CommonLabels(pm *mlv1alpha1.ProtectedModel) map[string]string {
	return map[string]string{
		mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue,
		mlv1alpha1.LabelName:      pm.Name,
		mlv1alpha1.LabelModel:     pm.Name,
		mlv1alpha1.LabelProtected: "true",
	}
}

// OwnershipAnnotations are the intellectual-property annotations every object
// managed for the model carries, pods included. Empty optional fields are
// still recorded (as empty strings) so that a sweep can tell "not given" from
// "forgotten by a builder".
func OwnershipAnnotations(pm *mlv1alpha1.ProtectedModel) map[string]string {
	o := pm.Spec.Ownership
	return map[string]string{
		mlv1alpha1.AnnotationOwner:          o.Owner,
		mlv1alpha1.AnnotationLicense:        o.License,
		mlv1alpha1.AnnotationCopyright:      o.Copyright,
		mlv1alpha1.AnnotationClassification: string(o.Classification),
		// Patent numbers contain commas ("US 11,123,456 B2"), so the list
		// is joined with semicolons.
		mlv1alpha1.AnnotationPatents:       strings.Join(o.Patents, "; "),
		mlv1alpha1.AnnotationWeightsDigest: pm.Spec.Weights.Digest,
	}
}

// ownerReference makes the ProtectedModel the controller of a child, so that
// children are garbage-collected with it and their changes wake the
// reconciler.
func ownerReference(pm *mlv1alpha1.ProtectedModel) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(mlv1alpha1.GroupVersion.String()).
		WithKind("ProtectedModel").
		WithName(pm.Name).
		WithUID(pm.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
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

// selectorFor selects the pods of one component of a model.
func selectorFor(pm *mlv1alpha1.ProtectedModel, component string) map[string]string {
	return map[string]string{mlv1alpha1.LabelModel: pm.Name, LabelComponent: component}
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
