package keyrelease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/policy"
)

// The extra keys that the API server's ServiceAccount authenticator puts in
// a TokenReview's user for a token bound to a pod.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// The verifier reviews tokens and reads what it checks.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=core,resources=namespaces,verbs=get
// +kubebuilder:rbac:groups=ml.modelguard.dev,resources=modelkeys,verbs=get

// ProtectedModelVerifier decides key releases for the pods of ProtectedModels,
// with the checks of docs/security.md, in this order: the token
// (TokenReview, audience Audience, bound to a pod); the pod, by name and UID,
// in the model's namespace; its owner chain by UID (pod, ReplicaSet,
// the model's Deployment, the model); no ephemeral containers; its spec
// against the one the builders generate; the unseal init container running
// and the server not started; the digest against spec.weights.digest; the
// model not stalled; the ModelKey Ready and selecting the namespace; and
// once per run of the pod's unseal container.
//
// The owner chain alone proves little: a tenant with `edit` can create a
// ReplicaSet whose controller reference names the managed Deployment, and
// the Deployment controller's ReplicaSets carry nothing a tenant cannot
// copy (labels, pod-template-hash, field managers). What stops a tenant's
// pod is the spec comparison: a pod that runs what the builders generate,
// with the volumes they generate and no sidecar, hands the key only to the
// operator's own unseal code, whoever created it.
type ProtectedModelVerifier struct {
	// Reader reads pods, ReplicaSets, Deployments, models, ModelKeys and
	// Namespaces. Pass the manager's uncached API reader: the cache holds
	// only ModelGuard's labelled pods, and may lag behind a pod that was just
	// created or deleted.
	Reader client.Reader
	// TokenReviews creates TokenReviews (authentication.k8s.io/v1).
	TokenReviews client.Writer
	// Facts returns the manager-wide inputs of the builders (unseal image,
	// GPU tolerations, key-release endpoint), so that the generated pod spec
	// is the one the ProtectedModel controller applies. It is a function
	// because the key-release CA bundle in the pod spec rotates.
	Facts func() builder.ProtectedModelFacts
	// ModelKeyFor names the ModelKey a model's weights are sealed under. An
	// error denies with ReasonModelKeyNotFound.
	ModelKeyFor func(*mlv1alpha1.ProtectedModel) (string, error)

	// ReportWait bounds how long a request waits for the kubelet to report
	// the asking unseal container as running; zero means 10 s. See
	// awaitUnsealRunning.
	ReportWait time.Duration

	// released records the unseal runs that received a key. It is in
	// memory, per manager replica; see docs/security.md.
	released releaseLedger
}

var _ Verifier = (*ProtectedModelVerifier)(nil)

// Verify makes the decision. Errors are for checks that could not be made
// (the API server did not answer); every refusal is a Decision.
func (v *ProtectedModelVerifier) Verify(ctx context.Context, claim Claim) (Decision, error) {
	if claim.Model.Kind != KindProtectedModel || claim.Operation != OperationRelease {
		return deny(Decision{}, mlv1alpha1.ReasonBadRequest,
			fmt.Sprintf("%s: only key releases for ProtectedModels are verified by this operator version, not %s", claim.Model, claim.Operation)), nil
	}
	d, pod, err := v.verifyToken(ctx, claim)
	if err != nil || pod == nil {
		return d, err
	}
	pm := &mlv1alpha1.ProtectedModel{}
	if err := v.Reader.Get(ctx, types.NamespacedName{Namespace: claim.Model.Namespace, Name: claim.Model.Name}, pm); err != nil {
		if apierrors.IsNotFound(err) {
			return deny(d, mlv1alpha1.ReasonOwnerChainBroken, fmt.Sprintf("pod %s: %s does not exist", d.Pod, claim.Model)), nil
		}
		return d, fmt.Errorf("reading %s: %w", claim.Model, err)
	}
	about := fmt.Sprintf("pod %s of %s", d.Pod, claim.Model)
	if reason, msg, err := v.ownerChain(ctx, pod, pm); err != nil || reason != "" {
		return deny(d, reason, about+": "+msg), err
	}
	if len(pod.Spec.EphemeralContainers) > 0 {
		names := make([]string, 0, len(pod.Spec.EphemeralContainers))
		for _, c := range pod.Spec.EphemeralContainers {
			names = append(names, fmt.Sprintf("%q", c.Name))
		}
		return deny(d, mlv1alpha1.ReasonEphemeralContainers, fmt.Sprintf("%s: the pod has ephemeral containers %s", about, strings.Join(names, ", "))), nil
	}
	want, err := v.generatedPodSpec(pm)
	if err != nil {
		return d, err
	}
	if drift := policy.PodSpecDrift(want, &pod.Spec); len(drift) > 0 {
		return deny(d, mlv1alpha1.ReasonPodSpecMismatch, fmt.Sprintf("%s: pod spec differs from the generated template: %s", about, strings.Join(drift, "; "))), nil
	}
	run, msg, err := v.awaitUnsealRunning(ctx, pod)
	if err != nil {
		return d, err
	}
	if msg != "" {
		return deny(d, mlv1alpha1.ReasonUnsealNotRunning, about+": "+msg), nil
	}
	if claim.ModelDigest != pm.Spec.Weights.Digest {
		return deny(d, mlv1alpha1.ReasonDigestMismatch,
			fmt.Sprintf("%s: the bundle's digest %s is not spec.weights.digest %s", about, claim.ModelDigest, pm.Spec.Weights.Digest)), nil
	}
	if msg := stalled(pm); msg != "" {
		return deny(d, mlv1alpha1.ReasonModelStalled, about+": the model is stalled: "+msg), nil
	}
	modelKey, reason, msg, err := v.modelKey(ctx, pm)
	if err != nil || reason != "" {
		return deny(d, reason, about+": "+msg), err
	}
	d.ModelKey = modelKey
	if first, restarted := v.released.claim(pod.UID, run); !first {
		return deny(d, mlv1alpha1.ReasonAlreadyReleased,
			fmt.Sprintf("%s: the data key was already released to this run of the unseal container (%s)", about, run)), nil
	} else if restarted {
		logf.FromContext(ctx).Info("Releasing the data key again to a restarted unseal container", "pod", d.Pod.String(), "model", claim.Model.String(), "run", run)
	}
	d.Undo = func() { v.released.forget(pod.UID, run) }
	d.Allowed, d.Reason, d.Message = true, mlv1alpha1.ReasonKeyReleased, about+": every check passed"
	return d, nil
}

func deny(d Decision, reason, message string) Decision {
	d.Allowed, d.Reason, d.Message = false, reason, message
	return d
}

// verifyToken reviews the token and finds the live pod it is bound to. A nil
// pod with a nil error is a refusal, in the Decision.
func (v *ProtectedModelVerifier) verifyToken(ctx context.Context, claim Claim) (Decision, *corev1.Pod, error) {
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: string(claim.Token), Audiences: []string{Audience}}}
	if err := v.TokenReviews.Create(ctx, review); err != nil {
		return Decision{}, nil, fmt.Errorf("TokenReview: %w", err)
	}
	st := review.Status
	if !st.Authenticated {
		msg := "the token was not accepted for audience " + Audience
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return deny(Decision{}, mlv1alpha1.ReasonTokenRejected, fmt.Sprintf("%s: %s", claim.Model, msg)), nil, nil
	}
	if !slices.Contains(st.Audiences, Audience) {
		return deny(Decision{}, mlv1alpha1.ReasonTokenRejected, fmt.Sprintf("%s: the token is not for audience %s", claim.Model, Audience)), nil, nil
	}
	namespace, account, ok := serviceAccountOf(st.User.Username)
	if !ok {
		return deny(Decision{}, mlv1alpha1.ReasonTokenRejected,
			fmt.Sprintf("%s: the token is not a ServiceAccount's (user %q)", claim.Model, st.User.Username)), nil, nil
	}
	names, uids := st.User.Extra[extraPodName], st.User.Extra[extraPodUID]
	if len(names) != 1 || len(uids) != 1 {
		return deny(Decision{}, mlv1alpha1.ReasonTokenRejected,
			fmt.Sprintf("%s: the token of ServiceAccount %s/%s is not bound to a pod", claim.Model, namespace, account)), nil, nil
	}
	d := Decision{Pod: types.NamespacedName{Namespace: namespace, Name: names[0]}, PodUID: uids[0]}
	if namespace != claim.Model.Namespace {
		return deny(d, mlv1alpha1.ReasonTokenRejected, fmt.Sprintf("pod %s: the token is not from the namespace of %s", d.Pod, claim.Model)), nil, nil
	}
	if claim.PodUID != d.PodUID {
		return deny(d, mlv1alpha1.ReasonTokenRejected,
			fmt.Sprintf("pod %s: the request's pod UID %s is not the token's %s (%s)", d.Pod, claim.PodUID, d.PodUID, claim.Model)), nil, nil
	}
	pod := &corev1.Pod{}
	if err := v.Reader.Get(ctx, d.Pod, pod); err != nil {
		if apierrors.IsNotFound(err) {
			return deny(d, mlv1alpha1.ReasonPodNotFound, fmt.Sprintf("pod %s named by the token does not exist (%s)", d.Pod, claim.Model)), nil, nil
		}
		return d, nil, fmt.Errorf("reading pod %s: %w", d.Pod, err)
	}
	if string(pod.UID) != d.PodUID || pod.DeletionTimestamp != nil {
		return deny(d, mlv1alpha1.ReasonPodNotFound,
			fmt.Sprintf("pod %s with UID %s named by the token no longer exists (%s)", d.Pod, d.PodUID, claim.Model)), nil, nil
	}
	if pod.Spec.ServiceAccountName != account {
		return deny(d, mlv1alpha1.ReasonTokenRejected,
			fmt.Sprintf("pod %s runs as ServiceAccount %s, not the token's %s (%s)", d.Pod, pod.Spec.ServiceAccountName, account, claim.Model)), nil, nil
	}
	return d, pod, nil
}

// serviceAccountOf splits a ServiceAccount's user name,
// "system:serviceaccount:<namespace>:<name>".
func serviceAccountOf(username string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ":") {
		return "", "", false
	}
	return namespace, name, true
}

// ownerChain checks, by UID, that the pod's controller is a ReplicaSet whose
// controller is the model's managed Deployment, whose controller is the
// model. It returns a reason and message when the chain breaks.
func (v *ProtectedModelVerifier) ownerChain(ctx context.Context, pod *corev1.Pod, pm *mlv1alpha1.ProtectedModel) (string, string, error) {
	broken := func(format string, args ...any) (string, string, error) {
		return mlv1alpha1.ReasonOwnerChainBroken, fmt.Sprintf(format, args...), nil
	}
	rsRef := metav1.GetControllerOf(pod)
	if rsRef == nil || rsRef.Kind != "ReplicaSet" || rsRef.APIVersion != appsv1.SchemeGroupVersion.String() {
		return broken("the pod is not controlled by a ReplicaSet")
	}
	rs := &appsv1.ReplicaSet{}
	if err := v.Reader.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: rsRef.Name}, rs); err != nil {
		if apierrors.IsNotFound(err) {
			return broken("its ReplicaSet %s does not exist", rsRef.Name)
		}
		return "", "", fmt.Errorf("reading ReplicaSet %s/%s: %w", pod.Namespace, rsRef.Name, err)
	}
	if rs.UID != rsRef.UID {
		return broken("its ReplicaSet %s has UID %s, not the pod's owner UID %s", rs.Name, rs.UID, rsRef.UID)
	}
	deployRef := metav1.GetControllerOf(rs)
	if deployRef == nil || deployRef.Kind != "Deployment" || deployRef.APIVersion != appsv1.SchemeGroupVersion.String() || deployRef.Name != pm.Name {
		return broken("its ReplicaSet %s is not controlled by the model's Deployment %s", rs.Name, pm.Name)
	}
	deployment := &appsv1.Deployment{}
	if err := v.Reader.Get(ctx, types.NamespacedName{Namespace: pm.Namespace, Name: pm.Name}, deployment); err != nil {
		if apierrors.IsNotFound(err) {
			return broken("the model's Deployment %s does not exist", pm.Name)
		}
		return "", "", fmt.Errorf("reading Deployment %s/%s: %w", pm.Namespace, pm.Name, err)
	}
	if deployment.UID != deployRef.UID {
		return broken("its ReplicaSet %s names Deployment UID %s, not the model's Deployment %s (%s)", rs.Name, deployRef.UID, deployment.Name, deployment.UID)
	}
	modelRef := metav1.GetControllerOf(deployment)
	if modelRef == nil || modelRef.UID != pm.UID || modelRef.Kind != KindProtectedModel || modelRef.APIVersion != mlv1alpha1.GroupVersion.String() {
		return broken("Deployment %s is not controlled by the model (UID %s)", deployment.Name, pm.UID)
	}
	return "", "", nil
}

// generatedPodSpec is the pod spec the ProtectedModel controller applies
// for pm: builder.Deployment's template, in the API's types.
func (v *ProtectedModelVerifier) generatedPodSpec(pm *mlv1alpha1.ProtectedModel) (*corev1.PodSpec, error) {
	if v.Facts == nil {
		return nil, errors.New("the verifier has no Facts to generate the pod spec from")
	}
	facts := v.Facts()
	facts.Replicas = builder.Replicas(pm)
	data, err := json.Marshal(builder.Deployment(pm, facts).Spec.Template.Spec)
	if err != nil {
		return nil, fmt.Errorf("encoding the generated pod spec: %w", err)
	}
	spec := &corev1.PodSpec{}
	if err := json.Unmarshal(data, spec); err != nil {
		return nil, fmt.Errorf("decoding the generated pod spec: %w", err)
	}
	return spec, nil
}

// awaitUnsealRunning returns the run of the pod's unseal container, waiting
// for the kubelet to report it running. The container asks for its key as
// soon as it starts, usually before the kubelet has written that to the
// pod's status (a restarted one still shows its last termination), so a
// report that only lags is waited out, for at most ReportWait, instead of
// refused. A pod whose server has started is refused at once: its unseal
// container is done.
func (v *ProtectedModelVerifier) awaitUnsealRunning(ctx context.Context, pod *corev1.Pod) (run, problem string, err error) {
	wait := v.ReportWait
	if wait == 0 {
		wait = 10 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		run, problem = unsealRun(pod)
		if problem == "" || serverStarted(pod) || !time.Now().Before(deadline) {
			return run, problem, nil
		}
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		fresh := &corev1.Pod{}
		if err := v.Reader.Get(ctx, client.ObjectKeyFromObject(pod), fresh); err != nil {
			if apierrors.IsNotFound(err) {
				return "", "the pod was deleted while it asked for its key", nil
			}
			return "", "", fmt.Errorf("reading pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		if fresh.UID != pod.UID {
			return "", "the pod was replaced while it asked for its key", nil
		}
		pod = fresh
	}
}

// serverStarted reports whether the pod's server container has started.
func serverStarted(pod *corev1.Pod) bool {
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == mlv1alpha1.ContainerServer && (s.State.Running != nil || s.State.Terminated != nil || ptrTrue(s.Started)) {
			return true
		}
	}
	return false
}

// unsealRun identifies the running unseal container's run (its container
// ID, or its restart count before the kubelet reports an ID), or says why
// the pod is not at that point: the key is released only while the unseal
// container runs and the server has not started.
func unsealRun(pod *corev1.Pod) (run, problem string) {
	if serverStarted(pod) {
		return "", fmt.Sprintf("the %s container has already started", mlv1alpha1.ContainerServer)
	}
	for _, s := range pod.Status.InitContainerStatuses {
		if s.Name != mlv1alpha1.ContainerUnseal {
			continue
		}
		if s.State.Running == nil {
			return "", fmt.Sprintf("the %s init container is not running", s.Name)
		}
		if s.ContainerID != "" {
			return s.ContainerID, ""
		}
		return fmt.Sprintf("restart %d", s.RestartCount), ""
	}
	return "", fmt.Sprintf("the %s init container has not started", mlv1alpha1.ContainerUnseal)
}

func ptrTrue(b *bool) bool { return b != nil && *b }

// stalled says why the model is stalled, or "" when it is not: the Stalled
// condition the controller wrote, and the spec-only checks of the
// policy.Stalled chain, which hold even before the controller has looked.
//
// A model stalled on its bundle (BundleTampered, DigestMismatch) still gets
// its key: the unseal container authenticates every chunk and refuses such
// a bundle itself, and refusing the key would keep a repaired bundle from
// ever being verified, so the model could not recover.
func stalled(pm *mlv1alpha1.ProtectedModel) string {
	if c := meta.FindStatusCondition(pm.Status.Conditions, mlv1alpha1.ConditionStalled); c != nil && c.Status == metav1.ConditionTrue &&
		c.Reason != mlv1alpha1.ReasonBundleTampered && c.Reason != mlv1alpha1.ReasonDigestMismatch {
		return fmt.Sprintf("%s: %s", c.Reason, c.Message)
	}
	if reason, msg, failed := policy.Stalled.Evaluate(policy.Facts{MemoryCoversWeights: builder.MemoryCoversWeights(pm)}); failed {
		return fmt.Sprintf("%s: %s", reason, msg)
	}
	return ""
}

// modelKey finds the model's ModelKey and checks, with the controllers' own
// policy, that it is Ready for its generation and selects the model's
// namespace.
func (v *ProtectedModelVerifier) modelKey(ctx context.Context, pm *mlv1alpha1.ProtectedModel) (name, reason, message string, err error) {
	if v.ModelKeyFor == nil {
		return "", mlv1alpha1.ReasonModelKeyNotFound, "the operator names no ModelKey for the model", nil
	}
	name, err = v.ModelKeyFor(pm)
	if err != nil {
		return "", mlv1alpha1.ReasonModelKeyNotFound, err.Error(), nil
	}
	var mk *mlv1alpha1.ModelKey
	found := &mlv1alpha1.ModelKey{}
	switch err := v.Reader.Get(ctx, types.NamespacedName{Name: name}, found); {
	case err == nil:
		mk = found
	case !apierrors.IsNotFound(err):
		return name, "", "", fmt.Errorf("reading ModelKey %s: %w", name, err)
	}
	ns := &corev1.Namespace{}
	if err := v.Reader.Get(ctx, types.NamespacedName{Name: pm.Namespace}, ns); err != nil {
		return name, "", "", fmt.Errorf("reading namespace %s: %w", pm.Namespace, err)
	}
	reason, message = policy.ModelKeyUsable(name, mk, ns)
	return name, reason, message, nil
}

// releaseLedger remembers which unseal runs received a key: once per pod
// UID, except that a restarted unseal container of the same pod (another
// container ID) may ask again, and that is logged. It lives in one
// manager's memory: another replica, or this one after a restart, does not
// know what was released before, so a pod can receive its key up to once
// per replica and restart. Every such release still goes to the same
// verified pod's unseal container, sealed to its own ephemeral key.
type releaseLedger struct {
	mu   sync.Mutex
	runs map[types.UID][]string
}

// forget removes run of pod, claimed for a release that did not happen.
func (l *releaseLedger) forget(pod types.UID, run string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.runs[pod] = slices.DeleteFunc(l.runs[pod], func(r string) bool { return r == run })
	if len(l.runs[pod]) == 0 {
		delete(l.runs, pod)
	}
}

// claim records run for pod; first is false when it was recorded before,
// restarted is true when another run of the pod was.
func (l *releaseLedger) claim(pod types.UID, run string) (first, restarted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs == nil {
		l.runs = map[types.UID][]string{}
	}
	if slices.Contains(l.runs[pod], run) {
		return false, false
	}
	restarted = len(l.runs[pod]) > 0
	l.runs[pod] = append(l.runs[pod], run)
	return true, restarted
}
