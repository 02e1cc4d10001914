package policy

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// KeyPermits reports whether mk's namespaceSelector selects ns, so that the
// models in ns may use the key; when it does not, message says so, naming
// both (the reason is mlv1alpha1.ReasonKeyNotPermitted). An empty selector
// ({}) selects every namespace. A missing or invalid selector permits
// nothing: the API server requires the field, so only an unvalidated object
// lacks it, and sharing a key must always be a decision (fail closed).
func KeyPermits(mk *mlv1alpha1.ModelKey, ns *corev1.Namespace) (bool, string) {
	if mk.Spec.NamespaceSelector == nil {
		return false, fmt.Sprintf("ModelKey %s has no namespaceSelector, so no namespace may use it", mk.Name)
	}
	selector, err := metav1.LabelSelectorAsSelector(mk.Spec.NamespaceSelector)
	if err != nil {
		return false, fmt.Sprintf("ModelKey %s has an invalid namespaceSelector (%v), so no namespace may use it", mk.Name, err)
	}
	if !selector.Matches(labels.Set(ns.Labels)) {
		return false, fmt.Sprintf("ModelKey %s does not select namespace %s (spec.namespaceSelector: %s)", mk.Name, ns.Name, selector)
	}
	return true, ""
}

// ModelKeyUsable is the one answer to "may a workload in ns use ModelKey
// name now?", shared by the controllers (KeyAvailable) and the key-release
// verifier, so that a model is never shown as able to get its key while key
// release would refuse it, or the reverse. mk is nil when the ModelKey does
// not exist. It returns "" when the key is usable, else the reason
// (ModelKeyNotFound, ModelKeyNotReady or KeyNotPermitted) and a message that
// names the ModelKey.
func ModelKeyUsable(name string, mk *mlv1alpha1.ModelKey, ns *corev1.Namespace) (reason, message string) {
	if mk == nil {
		return mlv1alpha1.ReasonModelKeyNotFound, fmt.Sprintf("ModelKey %s does not exist", name)
	}
	ready := meta.FindStatusCondition(mk.Status.Conditions, mlv1alpha1.ConditionReady)
	if ready == nil || ready.Status != metav1.ConditionTrue || ready.ObservedGeneration != mk.Generation {
		why := "its self-test has not run for its current spec"
		if ready != nil && ready.Status == metav1.ConditionFalse {
			why = ready.Reason + ": " + ready.Message
		}
		return mlv1alpha1.ReasonModelKeyNotReady, fmt.Sprintf("ModelKey %s is not Ready: %s", name, why)
	}
	if ok, msg := KeyPermits(mk, ns); !ok {
		return mlv1alpha1.ReasonKeyNotPermitted, msg
	}
	return "", ""
}
