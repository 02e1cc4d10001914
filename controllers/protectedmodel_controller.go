package controllers

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	children "github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/policy"
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
// +kubebuilder:rbac:groups=apps,resources=replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=core,resources=services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=core,resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=core,resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete

// Reconcile resolves the data key, applies the children, reads back what is
// in force, and writes the status once.
func (r *ProtectedModelReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pm := &mlv1alpha1.ProtectedModel{}
	if err := r.Get(ctx, req.NamespacedName, pm); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	logf.FromContext(ctx).V(1).Info("Reconciling", "generation", pm.Generation)
	if !pm.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // Owner references garbage-collect the children.
	}

	live := newModelChildren(pm)
	// The key-resolve Job's pod runs as the model's ServiceAccount and is
	// selected by its NetworkPolicy: both exist before the Job, so that its
	// pod is neither rejected for a missing account nor ever unisolated.
	if err := r.applyIdentityAndIsolation(ctx, pm, live); err != nil {
		return ctrl.Result{}, err
	}
	key, err := r.resolveKey(ctx, pm)
	if err != nil {
		return ctrl.Result{}, err
	}
	obs, err := r.applyChildren(ctx, pm, key, live)
	// Zero the key as soon as the Secret is applied; obs keeps only the fact
	// that one was unwrapped.
	clear(key.DEK)
	if err != nil {
		return ctrl.Result{}, err
	}
	observed, err := observeWorkload(ctx, r.Client, live.workloadChildren(pm))
	if err != nil {
		return ctrl.Result{}, err
	}
	observed.PodSecurityViolations, observed.BundleHostProblem = obs.PodSecurityViolations, obs.BundleHostProblem
	obs.workloadFacts = observed
	if err := writeStatusIfChanged(ctx, r.Client, r.Recorder, pm, protectedModelStatus, computeStatus(pm, obs)); err != nil {
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

// modelChildren are the live children of a model as the reconcile observed
// them, and what was built for them.
type modelChildren struct {
	serviceAccount    *corev1.ServiceAccount
	policy            *networkingv1.NetworkPolicy
	desiredPolicy     *networkingv1ac.NetworkPolicyApplyConfiguration
	service           *corev1.Service
	deployment        *appsv1.Deployment
	desiredDeployment *appsv1ac.DeploymentApplyConfiguration
}

func newModelChildren(pm *mlv1alpha1.ProtectedModel) *modelChildren {
	meta := objectMeta(pm.Namespace, pm.Name)
	return &modelChildren{
		serviceAccount: &corev1.ServiceAccount{ObjectMeta: meta},
		policy:         &networkingv1.NetworkPolicy{ObjectMeta: meta},
		desiredPolicy:  children.ModelNetworkPolicy(pm),
		service:        &corev1.Service{ObjectMeta: meta},
		deployment:     &appsv1.Deployment{ObjectMeta: meta},
	}
}

// workloadChildren are the children observeWorkload reads back.
func (m *modelChildren) workloadChildren(pm *mlv1alpha1.ProtectedModel) workloadChildren {
	desiredPolicy, err := typed[networkingv1.NetworkPolicy](m.desiredPolicy)
	if err != nil {
		panic(err) // built by our own builder: cannot fail
	}
	server, err := typed[corev1.PodTemplateSpec](m.desiredDeployment.Spec.Template)
	if err != nil {
		panic(err)
	}
	keyResolve := &corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{
		Labels: children.PodLabels(children.ForProtectedModel(pm), mlv1alpha1.ComponentKeyResolve)}}
	return workloadChildren{
		Workload:      children.ForProtectedModel(pm),
		Policy:        m.policy,
		DesiredPolicy: desiredPolicy,
		Templates:     map[string]*corev1.PodTemplateSpec{mlv1alpha1.ComponentServer: server, mlv1alpha1.ComponentKeyResolve: keyResolve},
		Component:     mlv1alpha1.ComponentServer,
		Controller:    m.deployment,
		Managed:       []client.Object{m.service, m.serviceAccount},
	}
}

// applyIdentityAndIsolation applies the ServiceAccount and the
// NetworkPolicy, which every pod of the model needs before it starts.
func (r *ProtectedModelReconciler) applyIdentityAndIsolation(ctx context.Context, pm *mlv1alpha1.ProtectedModel, live *modelChildren) error {
	if _, err := applyIfChanged(ctx, r.Client, live.serviceAccount,
		children.ServiceAccount(children.ForProtectedModel(pm)), corev1ac.ExtractServiceAccount, enforce); err != nil {
		return err
	}
	_, err := applyIfChanged(ctx, r.Client, live.policy, live.desiredPolicy, networkingv1ac.ExtractNetworkPolicy, enforce)
	return err
}

// applyChildren applies the rest of the children, once the ServiceAccount
// and the NetworkPolicy are in place (applyIdentityAndIsolation) so that no
// pod ever runs without them; the Deployment is scaled to zero unless the
// serving chain passes (fail closed).
func (r *ProtectedModelReconciler) applyChildren(ctx context.Context, pm *mlv1alpha1.ProtectedModel, key keyState, live *modelChildren) (observation, error) {
	obs := observation{
		Key:                 key,
		MemoryCoversWeights: children.MemoryCoversWeights(pm),
		DesiredReplicas:     children.Replicas(pm),
		BundleLocation:      children.BundleLocation(&pm.Spec.Weights),
		KeyProvider:         pm.Spec.Weights.Key.Provider(),
		// applyIdentityAndIsolation applied it before anything else.
		workloadFacts: workloadFacts{PolicyApplied: true},
	}
	obs.BundleHostProblem = bundleHostProblem(ctx, pm.Spec.Weights.Source.HTTP, children.ForProtectedModel(pm).Network.AllowedEgress)

	if _, err := applyIfChanged(ctx, r.Client, live.service, children.Service(pm), corev1ac.ExtractService, enforce); err != nil {
		return obs, err
	}

	facts := r.facts()
	facts.Replicas = obs.DesiredReplicas
	// The data key goes out only while the model may serve: a stalled model
	// (e.g. too little memory for the plaintext) has none (fail closed).
	if _, _, stalled := policy.Stalled.Evaluate(obs.policyFacts()); key.DEK != nil && !stalled {
		facts.DataKeyHash = children.DataKeyHash(key.DEK)
		if _, err := applyIfChanged(ctx, r.Client, &corev1.Secret{ObjectMeta: objectMeta(pm.Namespace, children.DataKeySecretName(pm))},
			children.DataKeySecret(pm, key.DEK, key.KEKID), corev1ac.ExtractSecret, enforce); err != nil {
			return obs, err
		}
	} else if err := r.revokeDataKey(ctx, pm); err != nil {
		return obs, err
	}

	// The pod template is built once; only the replica count depends on
	// whether the model may serve.
	live.desiredDeployment = children.Deployment(pm, facts)
	obs.PodSecurityViolations = policy.PodSecurityViolations(live.desiredDeployment.Spec.Template)
	if _, _, failed := policy.Serving.Evaluate(obs.policyFacts()); failed {
		live.desiredDeployment.Spec.Replicas = ptr.To[int32](0)
	}
	if _, err := applyIfChanged(ctx, r.Client, live.deployment, live.desiredDeployment, appsv1ac.ExtractDeployment, enforce); err != nil {
		return obs, err
	}
	obs.Deployment = live.deployment
	return obs, nil
}

// facts are the manager-wide inputs of every builder.
func (r *ProtectedModelReconciler) facts() children.ProtectedModelFacts {
	return children.ProtectedModelFacts{UnsealImage: r.UnsealImage, DefaultGPUTolerations: r.DefaultGPUTolerations}
}

// revokeDataKey deletes the data-key Secret when the key is no longer
// available, so that no new pod can start with it.
func (r *ProtectedModelReconciler) revokeDataKey(ctx context.Context, pm *mlv1alpha1.ProtectedModel) error {
	secret := &corev1.Secret{ObjectMeta: objectMeta(pm.Namespace, children.DataKeySecretName(pm))}
	if err := r.Get(ctx, client.ObjectKeyFromObject(secret), secret); err != nil {
		return client.IgnoreNotFound(err)
	}
	if err := r.Delete(ctx, secret); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("revoking the data key: %w", err)
	}
	return nil
}

func objectMeta(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// SetupWithManager watches ProtectedModels, every child kind, the pods of
// models (for scheduling and unseal results), and every NetworkPolicy in
// their namespaces: another policy that selects a model's pods can break its
// isolation.
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
		Owns(&batchv1.Job{}).
		Watches(&networkingv1.NetworkPolicy{}, handler.EnqueueRequestsFromMapFunc(r.modelsInNamespace)).
		Watches(&corev1.Pod{}, podToModel).
		Watches(&appsv1.ReplicaSet{}, podToModel).
		Named("protectedmodel").
		Complete(r)
}

// modelsInNamespace wakes every model in the object's namespace.
func (r *ProtectedModelReconciler) modelsInNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	models := &mlv1alpha1.ProtectedModelList{}
	if err := r.List(ctx, models, client.InNamespace(obj.GetNamespace())); err != nil {
		logf.FromContext(ctx).Error(err, "Listing the models a NetworkPolicy may affect")
		return nil
	}
	requests := make([]reconcile.Request, 0, len(models.Items))
	for i := range models.Items {
		requests = append(requests, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&models.Items[i])})
	}
	return requests
}
