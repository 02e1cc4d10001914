// Package controllers holds the ModelGuard reconcilers.
package controllers

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
)

// Options configure the reconcilers registered by SetupWithManager.
type Options struct {
	// UnsealImage is the image that runs `modelguard unseal` in protected pods.
	UnsealImage string
	// DefaultGPUTolerations are added to every pod that asks for a GPU, e.g.
	// for a cluster whose GPU nodes carry a taint of its own.
	DefaultGPUTolerations []corev1.Toleration
	// OperatorNamespace is the operator's own namespace, where the Secrets
	// that ModelKeys name live. Empty makes every secret ModelKey not Ready
	// (fail closed).
	OperatorNamespace string
	// KeyRelease returns the key-release endpoint the unseal containers
	// call, with the current CA bundle.
	KeyRelease func() builder.KeyRelease
}

// protectedModelReconciler is the ProtectedModel controller these options
// configure.
func (o Options) protectedModelReconciler(mgr ctrl.Manager) *ProtectedModelReconciler {
	r := &ProtectedModelReconciler{UnsealImage: o.UnsealImage, DefaultGPUTolerations: o.DefaultGPUTolerations, KeyRelease: o.KeyRelease}
	if mgr != nil {
		r.Client, r.Recorder = mgr.GetClient(), mgr.GetEventRecorder("modelguard")
	}
	return r
}

// ProtectedModelFacts are the builders' inputs of the ProtectedModel
// controller these options configure. The key-release verifier builds with
// the same, so that it compares a pod with exactly the template the
// controller applies.
func (o Options) ProtectedModelFacts() builder.ProtectedModelFacts {
	return o.protectedModelReconciler(nil).Facts()
}

// +kubebuilder:rbac:groups=core,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers every ModelGuard reconciler with mgr.
func SetupWithManager(mgr ctrl.Manager, opts Options) error {
	if opts.UnsealImage == "" {
		return fmt.Errorf("the unseal image is not set (--unseal-image)")
	}
	if err := opts.protectedModelReconciler(mgr).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the ProtectedModel controller: %w", err)
	}
	mk := &ModelKeyReconciler{
		Client:            mgr.GetClient(),
		APIReader:         mgr.GetAPIReader(),
		Recorder:          mgr.GetEventRecorder("modelguard"),
		OperatorNamespace: opts.OperatorNamespace,
	}
	if err := mk.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the ModelKey controller: %w", err)
	}
	return nil
}

// CacheOptions scope the manager's cache to what ModelGuard manages, and the
// NetworkPolicies that may affect it. It holds no Secret at all: the only
// Secrets the operator reads (ModelKeys' KEKs and its serving certificate,
// in its own namespace) are read directly when needed; see
// UncachedObjects.
func CacheOptions() cache.Options {
	managed := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue})}
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:            managed,
			&corev1.Service{}:        managed,
			&corev1.ServiceAccount{}: managed,
			&appsv1.Deployment{}:     managed,
			&appsv1.ReplicaSet{}:     managed,
			// Every NetworkPolicy, not only ModelGuard's: another one that
			// selects a workload's pods can break its isolation. They hold
			// no secrets.
			&networkingv1.NetworkPolicy{}: {},
		},
	}
}

// UncachedObjects are the kinds the manager's client must always read from
// the API server: a cached read of a Secret would start an informer over
// every Secret the operator may read.
func UncachedObjects() []client.Object {
	return []client.Object{&corev1.Secret{}}
}
