// Package controllers holds the ModelGuard reconcilers.
package controllers

import (
	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configure the reconcilers registered by SetupWithManager.
type Options struct {
	// UnsealImage is the image that runs `modelguard unseal` in protected pods.
	UnsealImage string
}

// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=protectedmodels;trainingjobs,verbs=get;list;watch
// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=protectedmodels/status;trainingjobs/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=core,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers every ModelGuard reconciler with mgr.
func SetupWithManager(mgr ctrl.Manager, opts Options) error {
	_ = mgr
	_ = opts
	return nil
}
