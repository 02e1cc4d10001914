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

// SetupWithManager registers every ModelGuard reconciler with mgr.
func SetupWithManager(mgr ctrl.Manager, opts Options) error {
	_ = mgr
	_ = opts
	return nil
}
