package controllers

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
	"github.com/modelguard/modelguard/internal/seal"
)

// keyState is what the controller learned about the model's key: whether
// its ModelKey may be used from the model's namespace, and whether the
// key-release service is ready to be called. The controller never holds a
// key: the data key is released by the key-release service, to verified
// unseal containers only.
type keyState struct {
	// ModelKey is the ModelKey the weights name.
	ModelKey string
	// Provider is the ModelKey's provider kind, e.g. Secret; empty when the
	// ModelKey does not exist.
	Provider string
	// KeyReason and KeyMessage say why the ModelKey may not be used; empty
	// when it may.
	KeyReason, KeyMessage string
	// KeyReleaseReady is true when the key-release endpoint and its CA
	// bundle are known.
	KeyReleaseReady bool
}

// modelKeyState reads the model's ModelKey from the cache and checks it for
// the model's namespace ns with the same policy the key-release verifier
// applies.
func (r *ProtectedModelReconciler) modelKeyState(ctx context.Context, pm *mlv1alpha1.ProtectedModel, ns *corev1.Namespace, release bool) (keyState, error) {
	name := pm.Spec.Weights.Key.ModelKey
	k := keyState{ModelKey: name, KeyReleaseReady: release}
	var mk *mlv1alpha1.ModelKey
	found := &mlv1alpha1.ModelKey{}
	switch err := r.Get(ctx, client.ObjectKey{Name: name}, found); {
	case err == nil:
		mk, k.Provider = found, string(found.Spec.Provider.Kind())
	case !apierrors.IsNotFound(err):
		return k, fmt.Errorf("reading ModelKey %s: %w", name, err)
	}
	k.KeyReason, k.KeyMessage = policy.ModelKeyUsable(name, mk, ns)
	return k, nil
}

// terminated returns the termination message and exit code of the named
// container's latest termination, current or last.
func terminated(statuses []corev1.ContainerStatus, name string) (message string, exitCode int32, done bool) {
	for _, s := range statuses {
		if s.Name != name {
			continue
		}
		if t := s.State.Terminated; t != nil {
			return strings.TrimSpace(t.Message), t.ExitCode, true
		}
		if t := s.LastTerminationState.Terminated; t != nil {
			return strings.TrimSpace(t.Message), t.ExitCode, true
		}
	}
	return "", 0, false
}

// classifyUnsealError maps a failed unseal's termination message to a
// condition reason. The message is parsed by internal/seal, which wrote it,
// so the classification lives with the errors it names.
func classifyUnsealError(message string) string {
	report, err := seal.ParseReport(message)
	if err != nil {
		return mlv1alpha1.ReasonUnsealFailed
	}
	switch report.Reason {
	case seal.ReasonDigestMismatch:
		return mlv1alpha1.ReasonDigestMismatch
	case seal.ReasonTampered:
		return mlv1alpha1.ReasonBundleTampered
	case seal.ReasonKeyDenied:
		return mlv1alpha1.ReasonKeyReleaseDenied
	}
	return mlv1alpha1.ReasonUnsealFailed
}
