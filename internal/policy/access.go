package policy

// Access decisions of the admission guard: who is a tenant, and which of a
// tenant's requests would reach a protected workload's weights, its key or
// what protects them. The webhook gathers the facts once per request (the
// pod, its ServiceAccount, the model's break-glass groups) and asks the
// functions here; nothing here does I/O. Every denial names the workload and
// the legitimate way in, because the message is all a refused user sees.

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// Requester is who sends a request, as far as the admission guard cares.
type Requester int

const (
	// Tenant is anyone the rules apply to: users and ServiceAccounts bound
	// to edit or admin in the namespace, break-glass members included.
	Tenant Requester = iota
	// Operator is ModelGuard's own ServiceAccount.
	Operator
	// SystemController is one of Kubernetes' own controllers that write
	// the objects ModelGuard manages (see SystemControllers).
	SystemController
	// Node is a kubelet: user system:node:<name> in group system:nodes.
	Node
	// TrustedController is a controller the cluster's operators trust to
	// change managed objects, such as Kueue admitting a Job.
	TrustedController
	// ClusterAdmin is a member of system:masters. Such a user bypasses RBAC
	// and can delete the webhook configuration itself, so refusing them
	// would protect nothing; it would only break node drains and repairs.
	// Their sessions into protected pods are still recorded.
	ClusterAdmin
)

func (r Requester) String() string {
	switch r {
	case Operator:
		return "the ModelGuard operator"
	case SystemController:
		return "a Kubernetes controller"
	case Node:
		return "a node"
	case TrustedController:
		return "a trusted controller"
	case ClusterAdmin:
		return "a cluster administrator (system:masters)"
	default:
		return "a tenant"
	}
}

// Well-known identities.
const (
	groupNodes   = "system:nodes"
	groupMasters = "system:masters"
	nodePrefix   = "system:node:"
)

// SystemControllers are the user names of the Kubernetes components that
// legitimately create, change or delete objects ModelGuard manages:
//
//   - replicaset-controller creates, adopts and deletes the model's pods;
//   - deployment-controller creates and scales the model's ReplicaSets and
//     annotates its Deployment;
//   - job-controller creates the training pods and removes their tracking
//     finalizers;
//   - generic-garbage-collector deletes children with their owner and edits
//     owner references;
//   - namespace-controller empties a namespace being deleted;
//   - node-controller, taint-eviction-controller and
//     device-taint-eviction-controller delete pods on failed or tainted
//     nodes, pod-garbage-collector deletes orphaned pods;
//   - persistent-volume-binder and pvc-protection-controller update the
//     training output PVC (binding annotations, protection finalizer);
//   - ttl-after-finished-controller deletes finished Jobs;
//   - storage-version-migrator-controller rewrites every object unchanged
//     when the storage version moves;
//   - kube-controller-manager and kube-scheduler under their own names,
//     for clusters that run the controllers without per-controller
//     ServiceAccounts, and for preemption.
//
// Not listed, on purpose: horizontal-pod-autoscaler (a tenant's HPA must not
// scale a model), cronjob-controller, statefulset-controller and
// daemon-set-controller (they act only on a tenant's objects), and the
// EndpointSlice and Endpoints controllers (they write objects the guard
// does not watch).
func SystemControllers() []string {
	names := []string{
		"replicaset-controller",
		"deployment-controller",
		"job-controller",
		"generic-garbage-collector",
		"namespace-controller",
		"node-controller",
		"taint-eviction-controller",
		"device-taint-eviction-controller",
		"pod-garbage-collector",
		"persistent-volume-binder",
		"pvc-protection-controller",
		"ttl-after-finished-controller",
		"storage-version-migrator-controller",
	}
	out := make([]string, 0, len(names)+2)
	for _, n := range names {
		out = append(out, "system:serviceaccount:kube-system:"+n)
	}
	return append(out, "system:kube-controller-manager", "system:kube-scheduler")
}

var systemControllers = SystemControllers()

// Identities name the requesters that are not tenants beyond the fixed
// system ones.
type Identities struct {
	// OperatorServiceAccount is the operator's user name, e.g.
	// "system:serviceaccount:modelguard-system:modelguard".
	OperatorServiceAccount string
	// TrustedControllers are user names of controllers that may change
	// managed objects, e.g. Kueue's ServiceAccount.
	TrustedControllers []string
}

// ClassifyRequester says who sent a request. User names cannot be forged by
// a tenant: impersonating a kube-system ServiceAccount, a node or a group
// needs rights that edit and admin in a namespace do not grant.
func ClassifyRequester(user authenticationv1.UserInfo, ids Identities) Requester {
	switch {
	case ids.OperatorServiceAccount != "" && user.Username == ids.OperatorServiceAccount:
		return Operator
	case strings.HasPrefix(user.Username, nodePrefix) && slices.Contains(user.Groups, groupNodes):
		return Node
	case slices.Contains(systemControllers, user.Username):
		return SystemController
	case slices.Contains(ids.TrustedControllers, user.Username):
		return TrustedController
	case slices.Contains(user.Groups, groupMasters):
		return ClusterAdmin
	}
	return Tenant
}

// IsTenant reports whether the rules apply to user.
func IsTenant(user authenticationv1.UserInfo, ids Identities) bool {
	return ClassifyRequester(user, ids) == Tenant
}

// BreakGlassGroup returns the first of groups that the workload's
// spec.access.breakGlassGroups names.
func BreakGlassGroup(groups, breakGlassGroups []string) (string, bool) {
	for _, g := range groups {
		if slices.Contains(breakGlassGroups, g) {
			return g, true
		}
	}
	return "", false
}

// Workload is the protected workload a request touches.
type Workload struct {
	// Kind is "ProtectedModel" or "TrainingJob"; empty when the object
	// names no workload (e.g. only app.kubernetes.io/managed-by=modelguard).
	Kind      string
	Namespace string
	Name      string
	// BreakGlassGroups are the workload's spec.access.breakGlassGroups, as
	// found; empty when it names none or no longer exists.
	BreakGlassGroups []string
}

// WorkloadFromLabels names the workload an object's labels tie it to.
func WorkloadFromLabels(namespace string, labels map[string]string) Workload {
	switch {
	case labels[mlv1alpha1.LabelModel] != "":
		return Workload{Kind: "ProtectedModel", Namespace: namespace, Name: labels[mlv1alpha1.LabelModel]}
	case labels[mlv1alpha1.LabelTrainingJob] != "":
		return Workload{Kind: "TrainingJob", Namespace: namespace, Name: labels[mlv1alpha1.LabelTrainingJob]}
	}
	return Workload{Namespace: namespace}
}

// Known reports whether the workload is named.
func (w Workload) Known() bool { return w.Kind != "" && w.Name != "" }

func (w Workload) String() string {
	if !w.Known() {
		return "a ModelGuard-protected workload in namespace " + w.Namespace
	}
	return fmt.Sprintf("%s %s/%s", w.Kind, w.Namespace, w.Name)
}

// holds says what is worth protecting in the workload.
func (w Workload) holds() string {
	if w.Kind == "TrainingJob" {
		return "it holds trade-secret weights"
	}
	return "it serves trade-secret weights"
}

// breakGlass says who may do verb instead.
func (w Workload) breakGlass(verb string) string {
	if len(w.BreakGlassGroups) == 0 {
		return fmt.Sprintf("its spec.access.breakGlassGroups is empty, so nobody may %s; the platform team can name an on-call group there", verb)
	}
	return fmt.Sprintf("members of spec.access.breakGlassGroups %v may %s", w.BreakGlassGroups, verb)
}

// ObjectRef names the object a request is about.
type ObjectRef struct {
	Kind      string
	Namespace string
	Name      string
}

func (o ObjectRef) String() string {
	if o.Name == "" {
		return fmt.Sprintf("a new %s in namespace %s", o.Kind, o.Namespace)
	}
	return fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name)
}

// Rules, as counted in modelguard_admission_denials_total{rule}.
const (
	RuleExec                = "exec"
	RuleAttach              = "attach"
	RulePortForward         = "portforward"
	RulePodProxy            = "pod-proxy"
	RuleServiceProxy        = "service-proxy"
	RuleEphemeralContainers = "ephemeral-containers"
	RuleManagedObject       = "managed-object"
	RuleLookAlikePod        = "look-alike-pod"
	RuleServiceAccountToken = "serviceaccount-token"
	RuleNetworkPolicy       = "network-policy"
	RuleLabels              = "labels"
	RuleFailClosed          = "fail-closed"
)

// Decision is the answer to one request.
type Decision struct {
	Allowed bool
	// Rule and Message say why a request is denied.
	Rule    string
	Message string
	// Workload is the protected workload the request touched, for the
	// Event; zero when it touched none.
	Workload Workload
	// Session is set when a CONNECT into a protected pod is allowed: on
	// what grounds, for the Event that records it.
	Session string
}

// Allowed is the decision to let a request through.
func Allowed() Decision { return Decision{Allowed: true} }

func deny(rule string, w Workload, format string, args ...any) Decision {
	return Decision{Rule: rule, Message: fmt.Sprintf(format, args...), Workload: w}
}

// FailClosed denies a request the guard could not decide, e.g. because the
// API server did not answer a read: a guard that allowed what it could not
// check would be off whenever the API server is slow.
func FailClosed(what string, err error) Decision {
	return deny(RuleFailClosed, Workload{},
		"ModelGuard's admission guard could not decide on %s and denies it to fail closed: %v; retry shortly, and if it persists ask the platform team to check the operator", what, err)
}

// Subresources of CONNECT requests.
const (
	SubresourceExec        = "exec"
	SubresourceAttach      = "attach"
	SubresourcePortForward = "portforward"
	SubresourceProxy       = "proxy"
)

// Connect decides a CONNECT to a protected pod (exec, attach, portforward,
// proxy) or Service (proxy), for target, a "Pod" or "Service". Members of
// the workload's break-glass groups may exec, attach and port-forward; proxy
// is for nobody, since allowed clients call the Service and break-glass
// members can port-forward. Non-tenants pass. Every allowed session carries
// Session, so that it is recorded.
func Connect(r Requester, groups []string, target ObjectRef, subresource string, w Workload) Decision {
	if r != Tenant {
		return Decision{Allowed: true, Workload: w, Session: "as " + r.String()}
	}
	interactive := target.Kind == "Pod" && subresource != SubresourceProxy
	if interactive {
		if g, ok := BreakGlassGroup(groups, w.BreakGlassGroups); ok {
			return Decision{Allowed: true, Workload: w, Session: "as a member of break-glass group " + g}
		}
	}
	switch {
	case target.Kind == "Service":
		return deny(RuleServiceProxy, w,
			"proxying to Service %s/%s of %s through the API server is denied: %s; clients that spec.network.allowedClients admits call the Service directly, and %s",
			target.Namespace, target.Name, w, w.holds(), w.breakGlass("port-forward to its pods"))
	case subresource == SubresourceProxy:
		return deny(RulePodProxy, w,
			"proxying to pods of %s through the API server is denied: %s; clients that spec.network.allowedClients admits call its Service, and %s",
			w, w.holds(), w.breakGlass("port-forward"))
	case subresource == SubresourceAttach:
		return deny(RuleAttach, w, "attaching to pods of %s is denied: %s; %s", w, w.holds(), w.breakGlass("attach"))
	case subresource == SubresourcePortForward:
		return deny(RulePortForward, w,
			"port-forwarding to pods of %s is denied: it goes around the model's NetworkPolicy, and %s; %s", w, w.holds(), w.breakGlass("port-forward"))
	default:
		return deny(RuleExec, w, "exec into pods of %s is denied: %s; %s", w, w.holds(), w.breakGlass("exec"))
	}
}

// EphemeralContainers decides adding ephemeral containers (kubectl debug) to
// a protected pod. Nobody but non-tenants may, break-glass members included:
// an added container reads the pod's memory-backed weights and outlives the
// session, and key release refuses pods with ephemeral containers anyway.
func EphemeralContainers(r Requester, pod ObjectRef, w Workload) Decision {
	if r != Tenant {
		return Allowed()
	}
	return deny(RuleEphemeralContainers, w,
		"adding debug containers to pod %s/%s of %s is denied: a container added to the pod reads its memory-backed weights; %s",
		pod.Namespace, pod.Name, w, w.breakGlass("exec into it"))
}

// Change is what a request does to an object.
type Change string

// Changes.
const (
	Create Change = "create"
	Update Change = "update"
	Delete Change = "delete"
	Scale  Change = "scale"
	Evict  Change = "evict"
)

func (c Change) gerund() string {
	switch c {
	case Create:
		return "creating"
	case Delete:
		return "deleting"
	case Scale:
		return "scaling"
	case Evict:
		return "evicting"
	default:
		return "changing"
	}
}

// IsManaged reports whether labels mark an object as managed by ModelGuard.
func IsManaged(labels map[string]string) bool {
	return labels[mlv1alpha1.LabelManagedBy] == mlv1alpha1.ManagedByValue
}

// ManagedChange decides a change to an object ModelGuard manages. Only
// non-tenants may make one: the operator applies the workload's spec, and
// Kubernetes' controllers run it.
//
// Deleting or evicting a managed pod is a change too, and is denied: the
// replacement pod runs the unseal container again, and the key is released
// to an unseal run; a tenant who may delete pods chooses when that happens
// (and how often), which widens the window that key release defends, and
// takes the model down at will. Drains by cluster administrators and the
// node controllers' evictions are not tenants' and pass.
func ManagedChange(r Requester, change Change, obj ObjectRef, w Workload) Decision {
	if r != Tenant {
		return Allowed()
	}
	why := fmt.Sprintf("ModelGuard manages it for %s and only the operator changes it", w)
	if obj.Kind == "Pod" && (change == Delete || change == Evict) {
		why = fmt.Sprintf("it is a pod of %s, and a replacement would unseal the weights again whenever a tenant chose", w)
	}
	return deny(RuleManagedObject, w, "%s %s is denied: %s; %s",
		change.gerund(), obj, why, platformTeamWay(w))
}

func platformTeamWay(w Workload) string {
	if !w.Known() {
		return "the platform team changes protected workloads through their ModelGuard resources"
	}
	return fmt.Sprintf("the platform team changes it through the %s's spec, and the operator applies it", w.Kind)
}

// ModelGuardLabel reports whether key=value is one of ModelGuard's labels:
// every modelguard.dev/ key, and app.kubernetes.io/managed-by=modelguard.
func ModelGuardLabel(key, value string) bool {
	return strings.HasPrefix(key, "modelguard.dev/") || (key == mlv1alpha1.LabelManagedBy && value == mlv1alpha1.ManagedByValue)
}

// ModelGuardLabels returns the ModelGuard labels in labels, sorted, as key
// (or key=value for managed-by).
func ModelGuardLabels(labels map[string]string) []string {
	var out []string
	for k, v := range labels {
		if ModelGuardLabel(k, v) {
			out = append(out, labelName(k, v))
		}
	}
	sort.Strings(out)
	return out
}

func labelName(k, v string) string {
	if k == mlv1alpha1.LabelManagedBy {
		return k + "=" + v
	}
	return k
}

// LabelChanges are the ModelGuard labels a change adds, removes or gives
// another value, each sorted.
type LabelChanges struct {
	Added, Removed, Changed []string
}

// Any reports whether there is a change.
func (c LabelChanges) Any() bool { return len(c.Added)+len(c.Removed)+len(c.Changed) > 0 }

func (c LabelChanges) String() string {
	var parts []string
	add := func(verb string, keys []string) {
		if len(keys) > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", verb, strings.Join(keys, ", ")))
		}
	}
	add("adding", c.Added)
	add("removing", c.Removed)
	add("changing", c.Changed)
	return strings.Join(parts, " and ")
}

// ModelGuardLabelChanges compares the labels of an object before and after
// a change (nil before a create).
func ModelGuardLabelChanges(old, new map[string]string) LabelChanges {
	var c LabelChanges
	for k, v := range new {
		ov, had := old[k]
		switch {
		case ModelGuardLabel(k, v) && !had:
			c.Added = append(c.Added, labelName(k, v))
		case ModelGuardLabel(k, v) && !ModelGuardLabel(k, ov):
			// managed-by changed to modelguard from another manager.
			c.Added = append(c.Added, labelName(k, v))
		case ModelGuardLabel(k, v) && ov != v:
			c.Changed = append(c.Changed, labelName(k, v))
		}
	}
	for k, ov := range old {
		if !ModelGuardLabel(k, ov) {
			continue
		}
		if v, has := new[k]; !has || !ModelGuardLabel(k, v) {
			c.Removed = append(c.Removed, labelName(k, ov))
		}
	}
	sort.Strings(c.Added)
	sort.Strings(c.Removed)
	sort.Strings(c.Changed)
	return c
}

// Labels decides a change of ModelGuard's labels on any object: they decide
// which pods are protected, which receive a model's traffic, which
// NetworkPolicy isolates them and which objects only the operator may
// change, so only non-tenants set or remove them.
func Labels(r Requester, obj ObjectRef, old, new map[string]string) Decision {
	changes := ModelGuardLabelChanges(old, new)
	if r != Tenant || !changes.Any() {
		return Allowed()
	}
	w := WorkloadFromLabels(obj.Namespace, new)
	if !w.Known() {
		w = WorkloadFromLabels(obj.Namespace, old)
	}
	return deny(RuleLabels, w,
		"%s on %s is denied: ModelGuard's labels decide which pods belong to %s, receive its traffic and fall under its NetworkPolicy, so only the operator sets them; %s",
		labelsPhrase(changes), obj, w, platformTeamWay(w))
}

func labelsPhrase(c LabelChanges) string {
	n := len(c.Added) + len(c.Removed) + len(c.Changed)
	if n == 1 {
		return strings.Replace(c.String(), "ing ", "ing label ", 1)
	}
	return strings.Replace(c.String(), "ing ", "ing labels ", 1)
}

// ProtectedClaim is a PersistentVolumeClaim that holds a protected
// workload's data, such as a training job's checkpoints.
type ProtectedClaim struct {
	Name string
	Of   Workload
}

// PodTraits are what makes a pod, or a pod template, pass for one of a
// protected workload's pods.
type PodTraits struct {
	// Labels are the ModelGuard labels it carries (ModelGuardLabels).
	Labels []string
	// LabelsOf is the workload the labels name.
	LabelsOf Workload
	// ServiceAccount is the protected ServiceAccount it runs as, if any.
	ServiceAccount   string
	ServiceAccountOf Workload
	// Claims are the protected PersistentVolumeClaims it mounts.
	Claims []ProtectedClaim
}

// Protected reports whether the pod would pass for a protected one.
func (t PodTraits) Protected() bool {
	return len(t.Labels) > 0 || t.ServiceAccount != "" || len(t.Claims) > 0
}

// Workload is the protected workload the pod would pass for.
func (t PodTraits) Workload() Workload {
	switch {
	case t.ServiceAccount != "" && t.ServiceAccountOf.Known():
		return t.ServiceAccountOf
	case len(t.Claims) > 0 && t.Claims[0].Of.Known():
		return t.Claims[0].Of
	}
	return t.LabelsOf
}

func (t PodTraits) String() string {
	var parts []string
	if t.ServiceAccount != "" {
		parts = append(parts, fmt.Sprintf("runs as ServiceAccount %s of %s", t.ServiceAccount, t.ServiceAccountOf))
	}
	for _, c := range t.Claims {
		parts = append(parts, fmt.Sprintf("mounts PersistentVolumeClaim %s, which holds data of %s", c.Name, c.Of))
	}
	if len(t.Labels) == 1 {
		parts = append(parts, "carries ModelGuard's label "+t.Labels[0])
	} else if len(t.Labels) > 1 {
		parts = append(parts, "carries ModelGuard's labels "+strings.Join(t.Labels, ", "))
	}
	return strings.Join(parts, ", ")
}

// LookAlike decides the creation of a pod, or of a workload whose pod
// template (template=true), that would pass for a protected workload's pod:
// it runs as its ServiceAccount, mounts its protected volume or carries its
// labels. Such a pod becomes a Service endpoint, falls under the model's
// NetworkPolicy, reruns the unseal container (kubectl debug --copy-to) or
// reads a training job's checkpoints. Only the operator creates such
// workloads, and only the workload's own controllers create such pods:
// managedOwner says whether the object's controller is a managed
// ReplicaSet, Job or Deployment, and the requester must then be one of
// Kubernetes' controllers or a trusted one. The rule binds the system
// controllers too, since a tenant's ReplicaSet would have them create the
// pod.
//
// w is t.Workload() with its break-glass groups, for the message.
func LookAlike(r Requester, change Change, obj ObjectRef, template bool, t PodTraits, w Workload, managedOwner bool) Decision {
	switch {
	case !t.Protected(), r == Operator, r == ClusterAdmin:
		return Allowed()
	case managedOwner && (r == SystemController || r == TrustedController):
		return Allowed()
	}
	what := "it " + t.String()
	creator := fmt.Sprintf("only the ReplicaSet or Job that ModelGuard manages for %s may create such pods", w)
	if template {
		what = "its pod template " + t.String()
		creator = fmt.Sprintf("only ModelGuard creates workloads whose pods pass for those of %s", w)
	}
	return deny(RuleLookAlikePod, w, "%s %s is denied: %s; %s; to debug it, %s",
		change.gerund(), obj, what, creator, w.breakGlass("exec into its pods"))
}

// TokenRequest decides a request for a token of a protected ServiceAccount.
// Only nodes may ask, for the pods they run: with a token bound to a model's
// pod, a tenant's program could present itself to key release as that pod.
// The operator asks for none; it reviews tokens.
func TokenRequest(r Requester, sa ObjectRef, w Workload) Decision {
	if r == Node {
		return Allowed()
	}
	return deny(RuleServiceAccountToken, w,
		"creating a token for ServiceAccount %s/%s is denied: it is the identity of the pods of %s, and with its token a program could ask for their key; only the kubelets that run those pods get its tokens",
		sa.Namespace, sa.Name, w)
}

// ProtectedPods are the labels of one protected workload's pods, live or as
// its templates say they will be.
type ProtectedPods struct {
	Workload Workload
	Labels   map[string]string
}

// SelectsProtectedPods returns the workloads whose pods selector selects,
// sorted and without repeats. An empty selector selects every pod. An
// invalid selector (the API server refuses those before admission) selects
// them all: the guard fails closed.
func SelectsProtectedPods(selector metav1.LabelSelector, pods []ProtectedPods) []Workload {
	_, err := metav1.LabelSelectorAsSelector(&selector)
	var out []Workload
	for _, p := range pods {
		if err != nil || selects(selector, p.Labels) {
			out = append(out, p.Workload)
		}
	}
	return uniqueWorkloads(out)
}

// uniqueWorkloads sorts workloads by kind and name and drops repeats.
func uniqueWorkloads(ws []Workload) []Workload {
	sort.SliceStable(ws, func(i, j int) bool {
		if ws[i].Kind != ws[j].Kind {
			return ws[i].Kind < ws[j].Kind
		}
		return ws[i].Name < ws[j].Name
	})
	return slices.CompactFunc(ws, func(a, b Workload) bool { return a.Kind == b.Kind && a.Name == b.Name })
}

// NetworkPolicy decides a NetworkPolicy that ModelGuard did not make.
// NetworkPolicies add up: one that selects a protected workload's pods and
// allows anything (a tenant's allow-all with an empty podSelector) opens
// the model to clients its own policy refuses. So no such policy may select
// protected pods at all, not even a stricter one.
func NetworkPolicy(r Requester, change Change, np ObjectRef, selector metav1.LabelSelector, pods []ProtectedPods) Decision {
	if r == Operator || r == ClusterAdmin {
		return Allowed()
	}
	selected := SelectsProtectedPods(selector, pods)
	if len(selected) == 0 {
		return Allowed()
	}
	names := make([]string, len(selected))
	for i, w := range selected {
		names[i] = w.String()
	}
	empty := ""
	if len(selector.MatchLabels) == 0 && len(selector.MatchExpressions) == 0 {
		empty = " (an empty podSelector selects every pod in the namespace)"
	}
	return deny(RuleNetworkPolicy, selected[0],
		"%s %s is denied: its podSelector selects the pods of %s%s, and NetworkPolicies add up, so it would let in traffic that the model's own policy refuses; the platform team admits clients in spec.network.allowedClients, and a policy of yours can leave protected pods out with the expression %s DoesNotExist",
		change.gerund(), np, strings.Join(names, " and "), empty, mlv1alpha1.LabelProtected)
}
