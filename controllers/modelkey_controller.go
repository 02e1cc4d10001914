package controllers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
)

// modelKeyRecheckInterval is how often a ModelKey's self-test runs again:
// the manager does not watch the Secrets ModelKeys name (it caches no key
// Secret), and a KMS key can be disabled behind its back.
const modelKeyRecheckInterval = 5 * time.Minute

// selfTestDigest is the model digest the self-test binds its wrapping to. No
// bundle has it (it is not the digest of any model, but of this string), so
// a self-test wrapping can never open a real bundle's key.
var selfTestDigest = func() string {
	sum := sha256.Sum256([]byte("modelguard ModelKey self-test"))
	return "sha256:" + hex.EncodeToString(sum[:])
}()

// ModelKeyReconciler reports whether each ModelKey's key-encryption key
// works, by a wrap-then-unwrap self-test against its provider.
type ModelKeyReconciler struct {
	client.Client
	// APIReader reads the KEK Secret without caching it.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// OperatorNamespace is the operator's own namespace (POD_NAMESPACE, from
	// the downward API), the only one whose Secrets a ModelKey can name.
	OperatorNamespace string
}

// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=modelkeys,verbs=get;list;watch
// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=modelkeys/status,verbs=get;update;patch

// Reconcile loads the ModelKey's provider, runs the self-test and writes the
// status once, when it changed.
func (r *ModelKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mk := &mlv1alpha1.ModelKey{}
	if err := r.Get(ctx, req.NamespacedName, mk); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	logf.FromContext(ctx).V(1).Info("Reconciling", "generation", mk.Generation)
	if !mk.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	provider, err := keys.ModelKeyProvider(ctx, mk, r.OperatorNamespace, keys.SecretsFrom(r.APIReader))
	if err == nil {
		err = selfTest(ctx, provider)
	}
	if err := writeStatusIfChanged(ctx, r.Client, r.Recorder, mk, modelKeyStatus, computeModelKeyStatus(mk, provider, err)); err != nil {
		if apierrors.IsConflict(err) {
			logf.FromContext(ctx).V(1).Info("ModelKey changed since it was read; reconciling again on its update")
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: modelKeyRecheckInterval}, nil
}

// selfTest wraps a random data key, bound as a format v2 bundle with a random
// id and selfTestDigest, and checks that unwrapping gives it back. Its
// errors name the key ID, never key bytes.
func selfTest(ctx context.Context, p keys.Provider) error {
	dek := make([]byte, keys.DEKSize)
	bundleID := make([]byte, 16)
	if _, err := rand.Read(dek); err != nil {
		return fmt.Errorf("reading random bytes: %w", err)
	}
	defer clear(dek)
	if _, err := rand.Read(bundleID); err != nil {
		return fmt.Errorf("reading random bytes: %w", err)
	}
	binding := keys.Binding{Version: 2, BundleID: hex.EncodeToString(bundleID), ModelDigest: selfTestDigest}
	wrapped, err := p.Wrap(ctx, dek, binding)
	if err != nil {
		return &selfTestError{fmt.Errorf("wrapping a test data key with %s: %w", p.ID(), err)}
	}
	back, err := p.Unwrap(ctx, wrapped, binding)
	if err != nil {
		return &selfTestError{fmt.Errorf("unwrapping the test data key with %s: %w", p.ID(), err)}
	}
	defer clear(back)
	if subtle.ConstantTimeCompare(dek, back) != 1 {
		return &selfTestError{fmt.Errorf("%s unwrapped the test data key to different bytes", p.ID())}
	}
	return nil
}

// selfTestError means the provider was loaded but the self-test failed.
type selfTestError struct{ err error }

func (e *selfTestError) Error() string { return e.err.Error() }
func (e *selfTestError) Unwrap() error { return e.err }

// computeModelKeyStatus is the status for the outcome of loading the
// provider and testing it: provider is nil when it could not be loaded, and
// err is what went wrong (nil when the self-test passed).
func computeModelKeyStatus(mk *mlv1alpha1.ModelKey, provider keys.Provider, err error) mlv1alpha1.ModelKeyStatus {
	status := *mk.Status.DeepCopy()
	status.Provider = mk.Spec.Provider.Kind()
	status.KeyID = ""
	if provider != nil {
		status.KeyID = provider.ID()
	}
	setModelKeyReadyCondition(&status.Conditions, mk.Generation, err)
	return status
}

// setModelKeyReadyCondition sets Ready from the self-test's outcome.
func setModelKeyReadyCondition(conditions *[]metav1.Condition, gen int64, err error) {
	var failure *keys.ProviderError
	var testFailure *selfTestError
	switch {
	case err == nil:
		set(conditions, gen, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed,
			"a fresh data key was wrapped and unwrapped with the key-encryption key")
	case errors.As(err, &failure):
		set(conditions, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, failure.Reason, failure.Message)
	case errors.As(err, &testFailure):
		set(conditions, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonSelfTestFailed, err.Error())
	default:
		set(conditions, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonKeyProviderUnavailable, err.Error())
	}
}

// modelKeyStatus reaches a ModelKey's status.
var modelKeyStatus = statusOf[*mlv1alpha1.ModelKey, mlv1alpha1.ModelKeyStatus]{
	status:     func(mk *mlv1alpha1.ModelKey) *mlv1alpha1.ModelKeyStatus { return &mk.Status },
	conditions: func(s *mlv1alpha1.ModelKeyStatus) []metav1.Condition { return s.Conditions },
}

// SetupWithManager watches ModelKeys. Their Secrets are not watched (the
// cache holds no key Secret); Reconcile requeues instead.
func (r *ModelKeyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&mlv1alpha1.ModelKey{}).
		Named("modelkey").
		Complete(r)
}
