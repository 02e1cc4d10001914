// Package v1alpha1 contains the ModelGuard API: ProtectedModel and TrainingJob.
//
// +kubebuilder:object:generate=true
// +kubebuilder:ac:generate=true
// +groupName=ml.modelguard.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of the ModelGuard API.
	GroupVersion = schema.GroupVersion{Group: "ml.modelguard.dev", Version: "v1alpha1"}

	// SchemeGroupVersion is GroupVersion under the name the generated
	// applyconfigurations expect.
	SchemeGroupVersion = GroupVersion

	// SchemeBuilder registers the ModelGuard types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the ModelGuard types to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
