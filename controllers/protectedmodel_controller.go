package controllers

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
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
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	children "github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/policy"
)

// ProtectedModelReconciler turns a ProtectedModel into a hardened, isolated,
// GPU-scheduled Deployment whose unseal init container gets the data key from
// the key-release service and decrypts sealed weights into memory. It never
// reads a Secret or holds a key.
type ProtectedModelReconciler struct {
	client.Client
	Recorder    events.EventRecorder
	UnsealImage string
	// DefaultGPUTolerations are added to every pod that asks for a GPU.
	DefaultGPUTolerations []corev1.Toleration
	// KeyRelease returns the key-release endpoint with the current CA
	// bundle. Until it is Ready, models are held at zero pods.
	KeyRelease func() children.KeyRelease
}

// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=protectedmodels,verbs=get;list;watch
// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=protectedmodels/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=core,resources=services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=core,resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=core,resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=modelkeys,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete

// Reconcile checks the model's ModelKey, applies the children, reads back
// what is in force, and writes the status once.
func (r *ProtectedModelReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pm := &mlv1alpha1.ProtectedModel{}
	if err := r.Get(ctx, req.NamespacedName, pm); err != nil {
		if apierrors.IsNotFound(err) {
			// The last model of a namespace takes the guard's label with it.
			return ctrl.Result{}, unguardNamespaceIfEmpty(ctx, r.Client, req.Namespace)
		}
		return ctrl.Result{}, err
	}
	logf.FromContext(ctx).V(1).Info("Reconciling", "generation", pm.Generation)
	if !pm.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // Owner references garbage-collect the children.
	}

	facts := r.Facts()
	if !facts.KeyRelease.Ready() {
		// A manager that has just started may not have loaded its serving
		// certificate yet. Applying now would rebuild a model's pods without
		// the CA bundle and scale it to zero, so a model that has a
		// Deployment is left alone until the certificate is known. A new
		// model goes on: it gets its status and a Deployment held at zero.
		if exists, err := r.exists(ctx, &appsv1.Deployment{ObjectMeta: objectMeta(pm.Namespace, pm.Name)}); err != nil || exists {
			logf.FromContext(ctx).V(1).Info("Waiting for the key-release certificate")
			return ctrl.Result{RequeueAfter: keyReleaseRetryInterval}, err
		}
	}
	ns := &corev1.Namespace{}
	if err := r.Get(ctx, client.ObjectKey{Name: pm.Namespace}, ns); err != nil {
		return ctrl.Result{}, fmt.Errorf("reading namespace %s: %w", pm.Namespace, err)
	}
	// The admission guard covers the namespace before any child exists.
	if err := guardNamespace(ctx, r.Client, ns); err != nil {
		return ctrl.Result{}, err
	}
	live := newModelChildren(pm, facts)
	// The ServiceAccount and the NetworkPolicy exist before any pod, so that
	// no pod is ever rejected for a missing account or runs unisolated.
	if err := r.applyIdentityAndIsolation(ctx, pm, live); err != nil {
		return ctrl.Result{}, err
	}
	key, err := r.modelKeyState(ctx, pm, ns, facts.KeyRelease.Ready())
	if err != nil {
		return ctrl.Result{}, err
	}
	obs, err := r.applyChildren(ctx, pm, ns, key, facts, live)
	if err != nil {
		return ctrl.Result{}, err
	}
	observed, err := observeWorkload(ctx, r.Client, live.workloadChildren(pm))
	if err != nil {
		return ctrl.Result{}, err
	}
	observed.PodSecurityViolations, observed.BundleHostProblem = obs.PodSecurityViolations, obs.BundleHostProblem
	observed.NamespaceEnforcement = obs.NamespaceEnforcement
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
	return ctrl.Result{}, nil
}

// keyReleaseRetryInterval is how often a model looks again for the
// key-release certificate, which a runnable of this manager loads and no
// watch reports.
const keyReleaseRetryInterval = time.Second

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

func newModelChildren(pm *mlv1alpha1.ProtectedModel, facts children.ProtectedModelFacts) *modelChildren {
	meta := objectMeta(pm.Namespace, pm.Name)
	return &modelChildren{
		serviceAccount: &corev1.ServiceAccount{ObjectMeta: meta},
		policy:         &networkingv1.NetworkPolicy{ObjectMeta: meta},
		desiredPolicy:  children.ModelNetworkPolicy(pm, facts.KeyRelease.Namespace),
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
	return workloadChildren{
		Workload:      children.ForProtectedModel(pm),
		Policy:        m.policy,
		DesiredPolicy: desiredPolicy,
		Templates:     map[string]*corev1.PodTemplateSpec{mlv1alpha1.ComponentServer: server},
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
func (r *ProtectedModelReconciler) applyChildren(ctx context.Context, pm *mlv1alpha1.ProtectedModel, ns *corev1.Namespace, key keyState, facts children.ProtectedModelFacts, live *modelChildren) (observation, error) {
	obs := observation{
		Key: key,
		// applyIdentityAndIsolation applied the policy before anything else.
		workloadFacts:       workloadFacts{PolicyApplied: true, NamespaceEnforcement: policy.NamespaceEnforcement(ns)},
		MemoryCoversWeights: children.MemoryCoversWeights(pm),
		DesiredReplicas:     children.Replicas(pm),
		BundleLocation:      children.BundleLocation(&pm.Spec.Weights),
	}
	obs.BundleHostProblem = bundleHostProblem(ctx, pm.Spec.Weights.Source.HTTP, children.ForProtectedModel(pm).Network.AllowedEgress)

	if _, err := applyIfChanged(ctx, r.Client, live.service, children.Service(pm), corev1ac.ExtractService, enforce); err != nil {
		return obs, err
	}

	// The pod template is built once; only the replica count depends on
	// whether the model may serve.
	facts.Replicas = obs.DesiredReplicas
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

// Facts are the manager-wide inputs of every builder. The key-release
// verifier builds with the same, so that it compares a pod with exactly the
// template this controller applies.
func (r *ProtectedModelReconciler) Facts() children.ProtectedModelFacts {
	f := children.ProtectedModelFacts{UnsealImage: r.UnsealImage, DefaultGPUTolerations: r.DefaultGPUTolerations}
	if r.KeyRelease != nil {
		f.KeyRelease = r.KeyRelease()
	}
	return f
}

// exists reports whether obj (namespace and name set) is in the cache.
func (r *ProtectedModelReconciler) exists(ctx context.Context, obj client.Object) (bool, error) {
	if err := r.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("reading %T %s: %w", obj, obj.GetName(), err)
	}
	return true, nil
}

func objectMeta(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// SetupWithManager watches ProtectedModels, every child kind, the pods of
// models (for scheduling and unseal results), every NetworkPolicy in their
// namespaces (another policy that selects a model's pods can break its
// isolation), ModelKeys and Namespaces (whether a model may use its key).
func (r *ProtectedModelReconciler) SetupWithManager(mgr ctrl.Manager) error {
	podToModel := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		name, ok := obj.GetLabels()[mlv1alpha1.LabelModel]
		if !ok {
			return nil
		}
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: obj.GetNamespace(), Name: name}}}
	})
	b := ctrl.NewControllerManagedBy(mgr)
	if r.KeyRelease != nil {
		watch := &keyReleaseWatch{endpoint: r.KeyRelease, events: make(chan event.GenericEvent), interval: keyReleaseCheckInterval,
			models: func(ctx context.Context) ([]mlv1alpha1.ProtectedModel, error) {
				models := &mlv1alpha1.ProtectedModelList{}
				err := r.List(ctx, models)
				return models.Items, err
			}}
		if err := mgr.Add(watch); err != nil {
			return fmt.Errorf("watching the key-release endpoint: %w", err)
		}
		b = b.WatchesRawSource(source.Channel(watch.events, &handler.EnqueueRequestForObject{}))
	}
	return b.
		For(&mlv1alpha1.ProtectedModel{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Watches(&networkingv1.NetworkPolicy{}, handler.EnqueueRequestsFromMapFunc(r.modelsInNamespace)).
		Watches(&mlv1alpha1.ModelKey{}, handler.EnqueueRequestsFromMapFunc(r.modelsOfModelKey)).
		// Only namespaces that hold models (the guard's label marks them):
		// their labels decide which ModelKeys their models may use and
		// whether they enforce Pod Security.
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.modelsInNamespaceNamed),
			builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
				return o.GetLabels()[mlv1alpha1.LabelProtectedNamespace] == "true"
			}))).
		Watches(&corev1.Pod{}, podToModel).
		Watches(&appsv1.ReplicaSet{}, podToModel).
		Named("protectedmodel").
		Complete(r)
}

// modelsInNamespace wakes every model in the object's namespace.
func (r *ProtectedModelReconciler) modelsInNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.modelRequests(ctx, "in the namespace of "+obj.GetName(), func(*mlv1alpha1.ProtectedModel) bool { return true }, client.InNamespace(obj.GetNamespace()))
}

// modelsInNamespaceNamed wakes every model in the Namespace obj: its labels
// decide which ModelKeys its models may use.
func (r *ProtectedModelReconciler) modelsInNamespaceNamed(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.modelRequests(ctx, "in namespace "+obj.GetName(), func(*mlv1alpha1.ProtectedModel) bool { return true }, client.InNamespace(obj.GetName()))
}

// modelsOfModelKey wakes every model whose weights name the ModelKey obj.
func (r *ProtectedModelReconciler) modelsOfModelKey(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.modelRequests(ctx, "of ModelKey "+obj.GetName(), func(pm *mlv1alpha1.ProtectedModel) bool {
		return pm.Spec.Weights.Key.ModelKey == obj.GetName()
	})
}

// modelRequests lists the models that opts select and keep accepts, as
// reconcile requests; what names them for the log.
func (r *ProtectedModelReconciler) modelRequests(ctx context.Context, what string, keep func(*mlv1alpha1.ProtectedModel) bool, opts ...client.ListOption) []reconcile.Request {
	models := &mlv1alpha1.ProtectedModelList{}
	if err := r.List(ctx, models, opts...); err != nil {
		logf.FromContext(ctx).Error(err, "Listing the models to reconcile", "models", what)
		return nil
	}
	var requests []reconcile.Request
	for i := range models.Items {
		if keep(&models.Items[i]) {
			requests = append(requests, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&models.Items[i])})
		}
	}
	return requests
}
