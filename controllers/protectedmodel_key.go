package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	batchv1ac "k8s.io/client-go/applyconfigurations/batch/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// keyState is what the controller learned about the model's data key. At
// most one of DEK and a failure is set; neither means "still resolving".
type keyState struct {
	// DEK is the unwrapped data key. It is never logged or put in status.
	DEK []byte

	// KeyReason and KeyMessage explain why the key is not available.
	KeyReason, KeyMessage string
	// BundleReason and BundleMessage explain why the bundle could not be
	// read or does not match the spec.
	BundleReason, BundleMessage string
	// Resolving is true while the key-resolve Job runs.
	Resolving bool
	// KEKID identifies the key-encryption key that unwrapped DEK.
	KEKID string
}

// resolvedKey is what `modelguard resolve-key` writes to its termination
// message: the manifest's key record and model digest, neither of them
// secret.
type resolvedKey = seal.ResolvedKey

// resolveKey turns the spec's key reference and the bundle's manifest into
// the data key. The manifest comes from a short-lived, hardened key-resolve
// Job because the operator cannot mount the claim that holds the bundle; the
// KEK is read directly from the API (never cached) and never leaves the
// operator.
func (r *ProtectedModelReconciler) resolveKey(ctx context.Context, pm *mlv1alpha1.ProtectedModel) (keyState, error) {
	provider, state := r.keyProvider(ctx, pm)
	if provider == nil {
		return state, nil
	}

	manifestKey, state, err := r.manifestKey(ctx, pm)
	if err == nil && state.Resolving {
		if dek := r.currentDataKey(ctx, pm, provider.ID()); dek != nil {
			return keyState{DEK: dek, KEKID: provider.ID()}, nil
		}
	}
	if err != nil || state.Resolving || state.BundleReason != "" {
		return state, err
	}
	if manifestKey.ModelDigest != pm.Spec.Weights.Digest {
		return keyState{
			BundleReason: mlv1alpha1.ReasonDigestMismatch,
			BundleMessage: fmt.Sprintf("the bundle holds model %s, but spec.weights.digest is %s",
				manifestKey.ModelDigest, pm.Spec.Weights.Digest),
		}, nil
	}
	dek, err := seal.UnwrapDEK(ctx, manifestKey.Key, manifestKey.Binding(pm.Spec.Weights.Digest), provider)
	if err != nil {
		return keyState{KeyReason: mlv1alpha1.ReasonKeyUnwrapFailed, KeyMessage: err.Error()}, nil
	}
	return keyState{DEK: dek, KEKID: provider.ID()}, nil
}

// currentDataKey returns the data key already in the model's data-key Secret
// when it was unwrapped for the same bundle, digest and KEK, so that a
// re-resolution that changes nothing of those does not stop the model.
func (r *ProtectedModelReconciler) currentDataKey(ctx context.Context, pm *mlv1alpha1.ProtectedModel, kekID string) []byte {
	secret := &corev1.Secret{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: pm.Namespace, Name: builder.DataKeySecretName(pm)}, secret); err != nil {
		return nil
	}
	if secret.Annotations[builder.AnnotationBundleFingerprint] != builder.BundleFingerprint(&pm.Spec.Weights, kekID) {
		return nil
	}
	dek, err := keys.ParseDEK(secret.Data[builder.DataKeySecretKey])
	if err != nil {
		return nil
	}
	return dek
}

// keyProvider loads the key-encryption key named by the spec. A nil provider
// comes with the reason in the returned state.
func (r *ProtectedModelReconciler) keyProvider(ctx context.Context, pm *mlv1alpha1.ProtectedModel) (keys.Provider, keyState) {
	provider, err := keys.ProviderFor(ctx, pm.Spec.Weights.Key, pm.Namespace, "spec.weights.key", r.getSecret)
	if err != nil {
		var failure *keys.ProviderError
		if errors.As(err, &failure) {
			return nil, keyState{KeyReason: failure.Reason, KeyMessage: failure.Message}
		}
		return nil, keyState{KeyReason: mlv1alpha1.ReasonKeyProviderUnavailable, KeyMessage: err.Error()}
	}
	return provider, keyState{}
}

// getSecret reads a key Secret through the uncached reader, so that the
// manager never watches or caches Secrets it does not own.
func (r *ProtectedModelReconciler) getSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	return uncachedSecrets(r.APIReader)(ctx, namespace, name)
}

// uncachedSecrets reads Secrets through reader, the manager's uncached API
// reader, so that key Secrets are never watched or cached.
func uncachedSecrets(reader client.Reader) keys.SecretGetter {
	return func(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
		secret := &corev1.Secret{}
		if err := reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, secret); err != nil {
			return nil, err
		}
		return secret, nil
	}
}

// manifestKey returns the bundle's key record, starting the key-resolve Job
// when it has not run yet.
func (r *ProtectedModelReconciler) manifestKey(ctx context.Context, pm *mlv1alpha1.ProtectedModel) (*resolvedKey, keyState, error) {
	// The Job's name covers its whole template, which the API server never
	// lets change: it is created once and then only read.
	desired := builder.KeyResolveJob(pm, r.facts())
	job := &batchv1.Job{ObjectMeta: objectMeta(pm.Namespace, *desired.Name)}
	if _, err := applyIfChanged(ctx, r.Client, job, desired, batchv1ac.ExtractJob, createOnce); err != nil {
		return nil, keyState{}, err
	}
	if err := r.deleteStaleKeyResolveJobs(ctx, pm, job.Name); err != nil {
		return nil, keyState{}, err
	}

	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.InNamespace(pm.Namespace), client.MatchingLabels{batchv1.JobNameLabel: job.Name}); err != nil {
		return nil, keyState{}, fmt.Errorf("listing key-resolve pods: %w", err)
	}
	for i := range pods.Items {
		message, exitCode, done := terminated(pods.Items[i].Status.ContainerStatuses, mlv1alpha1.ContainerKeyResolve)
		if !done || exitCode != 0 {
			continue
		}
		var key resolvedKey
		if err := json.Unmarshal([]byte(message), &key); err != nil || len(key.Key.WrappedDEK) == 0 {
			return nil, keyState{BundleReason: mlv1alpha1.ReasonUnsealFailed,
				BundleMessage: "the key-resolve pod reported no readable key record"}, nil
		}
		return &key, keyState{}, nil
	}
	if jobFailed(job) {
		reason, message := mlv1alpha1.ReasonUnsealFailed, "the key-resolve Job failed to read the bundle's manifest"
		for i := range pods.Items {
			if m, code, done := terminated(pods.Items[i].Status.ContainerStatuses, mlv1alpha1.ContainerKeyResolve); done && code != 0 && m != "" {
				reason, message = classifyUnsealError(m), m
			}
		}
		return nil, keyState{BundleReason: reason, BundleMessage: message}, nil
	}
	return nil, keyState{Resolving: true}, nil
}

func (r *ProtectedModelReconciler) deleteStaleKeyResolveJobs(ctx context.Context, pm *mlv1alpha1.ProtectedModel, current string) error {
	jobs := &batchv1.JobList{}
	if err := r.List(ctx, jobs, client.InNamespace(pm.Namespace), client.MatchingLabels{
		mlv1alpha1.LabelModel: pm.Name, mlv1alpha1.LabelComponent: mlv1alpha1.ComponentKeyResolve,
	}); err != nil {
		return fmt.Errorf("listing key-resolve Jobs: %w", err)
	}
	for i := range jobs.Items {
		if jobs.Items[i].Name == current {
			continue
		}
		if err := r.Delete(ctx, &jobs.Items[i], client.PropagationPolicy("Background")); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting stale key-resolve Job %s: %w", jobs.Items[i].Name, err)
		}
	}
	return nil
}

func jobFailed(job *batchv1.Job) bool {
	for _, c := range job.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
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
	}
	return mlv1alpha1.ReasonUnsealFailed
}
