package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ProtectedModelSpec describes a model served from sealed (encrypted) weights.
type ProtectedModelSpec struct {
	// Owner is the legal owner of the model's weights, e.g. "Acme Corp".
	// +kubebuilder:validation:MinLength=1
	Owner string `json:"owner"`
}

// ProtectedModelStatus is the observed protection state of a ProtectedModel.
type ProtectedModelStatus struct {
	// ObservedGeneration is the generation the status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions report each protection guarantee and overall readiness.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ProtectedModel serves a model from sealed weights with encryption at rest,
// network isolation, GPU scheduling and ownership annotations.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=pm,categories=modelguard
type ProtectedModel struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ProtectedModelSpec   `json:"spec"`
	Status ProtectedModelStatus `json:"status,omitempty"`
}

// ProtectedModelList is a list of ProtectedModels.
//
// +kubebuilder:object:root=true
type ProtectedModelList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProtectedModel `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ProtectedModel{}, &ProtectedModelList{})
}
