package controllers

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	children "github.com/modelguard/modelguard/internal/builder"
)

// keyRetryInterval is how often a model whose key Secret is missing or wrong
// is looked at again: the manager does not watch Secrets it does not own.
const keyRetryInterval = 30 * time.Second

// ProtectedModelReconciler turns a ProtectedModel into a hardened, isolated,
// GPU-scheduled Deployment that decrypts sealed weights into memory.
type ProtectedModelReconciler struct {
	client.Client
	// APIReader reads key Secrets without caching them.
	APIReader   client.Reader
	Recorder    events.EventRecorder
	UnsealImage string
	// DefaultGPUTolerations are added to every pod that asks for a GPU.
	DefaultGPUTolerations []corev1.Toleration
}

// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=protectedmodels,verbs=get;list;watch
// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=protectedmodels/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=core,resources=services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=core,resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=core,resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete

// Reconcile resolves the data key, applies the children, and writes the
// status once.
func (r *ProtectedModelReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pm := &mlv1alpha1.ProtectedModel{}
	if err := r.Get(ctx, req.NamespacedName, pm); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	logf.FromContext(ctx).V(1).Info("Reconciling", "generation", pm.Generation)
	if !pm.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // Owner references garbage-collect the children.
	}

	// The key-resolve Job's pod runs as the model's ServiceAccount and is
	// selected by its NetworkPolicy: both exist before the Job, so that its
	// pod is neither rejected for a missing account nor ever unisolated.
	if err := r.applyIdentityAndIsolation(ctx, pm); err != nil {
		return ctrl.Result{}, err
	}
	key, err := r.resolveKey(ctx, pm)
	if err != nil {
		return ctrl.Result{}, err
	}
	obs, err := r.applyChildren(ctx, pm, key)
	// Zero the key as soon as the Secret is applied; obs keeps only the fact
	// that one was unwrapped.
	clear(key.DEK)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.observe(ctx, pm, &obs); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.updateStatusIfChanged(ctx, pm, computeStatus(pm, obs)); err != nil {
		if apierrors.IsConflict(err) {
			// The model changed since the cache gave it to us, often our own
			// status write not yet seen; the watch event of the newer version
			// reconciles it again.
			logf.FromContext(ctx).V(1).Info("Model changed since it was read; reconciling again on its update")
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if obs.Key.KeyReason != "" {
		return ctrl.Result{RequeueAfter: keyRetryInterval}, nil
	}
	return ctrl.Result{}, nil
}

// applyIdentityAndIsolation applies the ServiceAccount and the
// NetworkPolicy, which every pod of the model needs before it starts.
func (r *ProtectedModelReconciler) applyIdentityAndIsolation(ctx context.Context, pm *mlv1alpha1.ProtectedModel) error {
	if _, err := applyIfChanged(ctx, r.Client, &corev1.ServiceAccount{ObjectMeta: objectMeta(pm, pm.Name)},
		children.ServiceAccount(pm), corev1ac.ExtractServiceAccount); err != nil {
		return err
	}
	_, err := applyIfChanged(ctx, r.Client, &networkingv1.NetworkPolicy{ObjectMeta: objectMeta(pm, pm.Name)},
		children.NetworkPolicy(pm), networkingv1ac.ExtractNetworkPolicy)
	return err
}

// applyChildren applies the rest of the children, once the ServiceAccount
// and the NetworkPolicy are in place (applyIdentityAndIsolation) so that no
// pod ever runs without them; the Deployment is scaled to zero unless every
// protection prerequisite holds (fail closed).
func (r *ProtectedModelReconciler) applyChildren(ctx context.Context, pm *mlv1alpha1.ProtectedModel, key keyState) (observation, error) {
	obs := observation{
		Key:                 key,
		MemoryCoversWeights: children.MemoryCoversWeights(pm),
		DesiredReplicas:     children.Replicas(pm),
		BundleLocation:      children.BundleLocation(pm),
		KeyProvider:         pm.Spec.Weights.Key.Provider(),
		BundleHostProblem:   bundleHostProblem(ctx, pm),
		// Reconcile applied it, with the ServiceAccount, before anything else.
		PolicyApplied: true,
	}
	if pm.Spec.GPU != nil {
		obs.GPUCount = pm.Spec.GPU.Count
	}

	if _, err := applyIfChanged(ctx, r.Client, &corev1.Service{ObjectMeta: objectMeta(pm, pm.Name)},
		children.Service(pm), corev1ac.ExtractService); err != nil {
		return obs, err
	}

	facts := r.facts()
	// The data key goes out only while the model may serve: a stalled model
	// (e.g. too little memory for the plaintext) has none (fail closed).
	if reason, _ := stallReason(obs); key.DEK != nil && reason == "" {
		facts.DataKeyHash = children.DataKeyHash(key.DEK)
		if _, err := applyIfChanged(ctx, r.Client, &corev1.Secret{ObjectMeta: objectMeta(pm, children.DataKeySecretName(pm))},
			children.DataKeySecret(pm, key.DEK, key.KEKID), corev1ac.ExtractSecret); err != nil {
			return obs, err
		}
	} else if err := r.revokeDataKey(ctx, pm); err != nil {
		return obs, err
	}

	deployment := children.Deployment(pm, facts)
	obs.PodSecurityViolations = podSecurityViolations(deployment.Spec.Template)
	if canServe(obs) {
		facts.Replicas = obs.DesiredReplicas
		deployment = children.Deployment(pm, facts)
	}
	if _, err := applyIfChanged(ctx, r.Client, &appsv1.Deployment{ObjectMeta: objectMeta(pm, pm.Name)},
		deployment, appsv1ac.ExtractDeployment); err != nil {
		return obs, err
	}
	return obs, nil
}

// facts are the manager-wide inputs of every builder.
func (r *ProtectedModelReconciler) facts() children.ProtectedModelFacts {
	return children.ProtectedModelFacts{UnsealImage: r.UnsealImage, DefaultGPUTolerations: r.DefaultGPUTolerations}
}

// revokeDataKey deletes the data-key Secret when the key is no longer
// available, so that no new pod can start with it.
func (r *ProtectedModelReconciler) revokeDataKey(ctx context.Context, pm *mlv1alpha1.ProtectedModel) error {
	secret := &corev1.Secret{ObjectMeta: objectMeta(pm, children.DataKeySecretName(pm))}
	if err := r.Get(ctx, client.ObjectKeyFromObject(secret), secret); err != nil {
		return client.IgnoreNotFound(err)
	}
	if err := r.Delete(ctx, secret); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("revoking the data key: %w", err)
	}
	return nil
}

// observe reads back the children the status is computed from.
func (r *ProtectedModelReconciler) observe(ctx context.Context, pm *mlv1alpha1.ProtectedModel, obs *observation) error {
	deployment := &appsv1.Deployment{}
	switch err := r.Get(ctx, client.ObjectKey{Namespace: pm.Namespace, Name: pm.Name}, deployment); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("reading Deployment: %w", err)
	default:
		obs.Deployment = deployment
	}
	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.InNamespace(pm.Namespace), client.MatchingLabels{
		mlv1alpha1.LabelModel: pm.Name, children.LabelComponent: children.ComponentServer,
	}); err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	obs.Pods = pods.Items

	managed := []client.Object{deployment, &corev1.Service{}, &networkingv1.NetworkPolicy{}, &corev1.ServiceAccount{}}
	for _, obj := range managed[1:] {
		if err := r.Get(ctx, client.ObjectKey{Namespace: pm.Namespace, Name: pm.Name}, obj); err != nil {
			return fmt.Errorf("reading %T: %w", obj, err)
		}
	}
	for i := range pods.Items {
		managed = append(managed, &pods.Items[i])
	}
	for _, obj := range managed {
		if obj.GetName() != "" && !hasOwnershipAnnotations(obj) {
			obs.ObjectsMissingOwnership = append(obs.ObjectsMissingOwnership, fmt.Sprintf("%T %s", obj, obj.GetName()))
		}
	}
	return nil
}

func hasOwnershipAnnotations(obj client.Object) bool {
	annotations := obj.GetAnnotations()
	for _, key := range []string{mlv1alpha1.AnnotationOwner, mlv1alpha1.AnnotationLicense, mlv1alpha1.AnnotationCopyright,
		mlv1alpha1.AnnotationClassification, mlv1alpha1.AnnotationPatents, mlv1alpha1.AnnotationWeightsDigest} {
		if _, ok := annotations[key]; !ok {
			return false
		}
	}
	return true
}

// updateStatusIfChanged writes the status once, only when it changed, and
// emits an event for each condition that changed status.
func (r *ProtectedModelReconciler) updateStatusIfChanged(ctx context.Context, pm *mlv1alpha1.ProtectedModel, status mlv1alpha1.ProtectedModelStatus) error {
	if equality.Semantic.DeepEqual(pm.Status, status) {
		return nil
	}
	before := pm.DeepCopy()
	pm.Status = status
	// The optimistic lock makes a status computed from a stale copy fail
	// instead of repeating transitions (and their events) already written.
	if err := r.Status().Patch(ctx, pm, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("writing status: %w", err)
	}
	logf.FromContext(ctx).V(1).Info("Status updated", "phase", status.Phase)
	for _, c := range status.Conditions {
		old := findCondition(before.Status.Conditions, c.Type)
		if old != nil && old.Status == c.Status {
			continue
		}
		eventType := corev1.EventTypeNormal
		if (c.Status == metav1.ConditionFalse && c.Type != mlv1alpha1.ConditionReconciling) ||
			(c.Type == mlv1alpha1.ConditionStalled && c.Status == metav1.ConditionTrue) {
			eventType = corev1.EventTypeWarning
		}
		if c.Status == metav1.ConditionUnknown {
			continue
		}
		// The condition type is the action: the events library folds events
		// with the same reason and action into one series showing only the
		// latest note, and conditions often share a reason (e.g.
		// WeightsVerified, Ready and Stalled all say BundleTampered).
		r.Recorder.Eventf(pm, nil, eventType, c.Reason, c.Type, "%s=%s: %s", c.Type, c.Status, c.Message)
	}
	return nil
}

func findCondition(conditions []metav1.Condition, t string) *metav1.Condition {
	for i := range conditions {
		if conditions[i].Type == t {
			return &conditions[i]
		}
	}
	return nil
}

func objectMeta(pm *mlv1alpha1.ProtectedModel, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: pm.Namespace, Name: name}
}

// SetupWithManager watches ProtectedModels, every child kind, and the pods
// of models (for scheduling and unseal results).
func (r *ProtectedModelReconciler) SetupWithManager(mgr ctrl.Manager) error {
	podToModel := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		name, ok := obj.GetLabels()[mlv1alpha1.LabelModel]
		if !ok {
			return nil
		}
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: obj.GetNamespace(), Name: name}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&mlv1alpha1.ProtectedModel{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&corev1.Secret{}).
		Owns(&networkingv1.NetworkPolicy{}).
		Owns(&batchv1.Job{}).
		Watches(&corev1.Pod{}, podToModel).
		Named("protectedmodel").
		Complete(r)
}
