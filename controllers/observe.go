package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/policy"
)

// workloadFacts are what the status of either kind is computed from, beyond
// its own progress: gathered once per reconcile by observeWorkload, so that
// computing the conditions is pure.
type workloadFacts struct {
	// PolicyApplied is true once the workload's NetworkPolicy exists.
	PolicyApplied bool
	// IsolationReason and IsolationMessage say how the NetworkPolicies in
	// force, read back from the cluster, fail to isolate the pods
	// (policy.IsolationProblem); empty while they isolate them.
	IsolationReason, IsolationMessage string
	// BundleHostProblem explains why the https bundle host is not covered by
	// the egress policy; empty when it is, or when the source is a volume.
	BundleHostProblem string
	// PodSecurityViolations lists the Pod Security "restricted" failures of
	// the generated pod templates.
	PodSecurityViolations []string
	// NamespaceEnforcement says why the namespace does not enforce Pod
	// Security baseline or restricted; empty when it does.
	NamespaceEnforcement string
	// PodDrift lists how live pods differ from the generated template, each
	// entry naming the pod and the container or volume.
	PodDrift []string
	// ObjectsMissingOwnership names managed objects, and pods with the
	// workload's labels, without the ownership annotations.
	ObjectsMissingOwnership []string
	// Pods are the workload's own pods: those of its managed ReplicaSet or
	// Job. A pod that only copies its labels is not among them.
	Pods     []corev1.Pod
	GPUCount int32
}

// policyFacts are the facts the policy chains read.
func (f workloadFacts) policyFacts() policy.Facts {
	return policy.Facts{PolicyApplied: f.PolicyApplied, PodSecurityViolations: f.PodSecurityViolations, NamespaceEnforcement: f.NamespaceEnforcement}
}

// workloadChildren are a workload's applied children as observeWorkload needs
// them.
type workloadChildren struct {
	Workload builder.Workload
	// Policy is the live NetworkPolicy as applyIfChanged observed it (nil
	// when it does not exist); DesiredPolicy is the one built.
	Policy        *networkingv1.NetworkPolicy
	DesiredPolicy *networkingv1.NetworkPolicy
	// Templates are the generated pod templates by component; Component is
	// the one whose pods Controller runs.
	Templates map[string]*corev1.PodTemplateSpec
	Component string
	// Controller is the live Deployment or Job that runs the pods; nil while
	// it does not exist.
	Controller client.Object
	// Managed are the other live children, for the ownership sweep.
	Managed []client.Object
}

// observeWorkload reads back what is in force for a workload: the
// NetworkPolicies that select its pods (its own and any other in the
// namespace), its own pods compared with the generated template, and the
// ownership annotations on every managed object and every pod that carries
// its labels.
func observeWorkload(ctx context.Context, c client.Reader, ch workloadChildren) (workloadFacts, error) {
	w := ch.Workload
	facts := workloadFacts{PolicyApplied: ch.Policy != nil}
	if w.GPU != nil {
		facts.GPUCount = w.GPU.Count
	}

	policies := &networkingv1.NetworkPolicyList{}
	if err := c.List(ctx, policies, client.InNamespace(w.Namespace)); err != nil {
		return facts, fmt.Errorf("listing NetworkPolicies: %w", err)
	}
	podLabels := map[string]map[string]string{}
	for component, t := range ch.Templates {
		podLabels[component] = t.Labels
	}
	facts.IsolationReason, facts.IsolationMessage = policy.IsolationProblem(ch.DesiredPolicy, ch.Policy, policies.Items, podLabels)

	labelled := &corev1.PodList{}
	if err := c.List(ctx, labelled, client.InNamespace(w.Namespace), client.MatchingLabels(w.ComponentSelector(ch.Component))); err != nil {
		return facts, fmt.Errorf("listing pods: %w", err)
	}
	owners, err := podControllers(ctx, c, ch.Controller, w)
	if err != nil {
		return facts, err
	}
	template := ch.Templates[ch.Component]
	for i := range labelled.Items {
		pod := &labelled.Items[i]
		if ref := metav1.GetControllerOf(pod); ref == nil || !owners[ref.UID] {
			continue
		}
		facts.Pods = append(facts.Pods, *pod)
		for _, d := range policy.PodSpecDrift(&template.Spec, &pod.Spec) {
			facts.PodDrift = append(facts.PodDrift, fmt.Sprintf("pod %s: %s", pod.Name, d))
		}
	}

	managed := append([]client.Object{}, ch.Managed...)
	if ch.Policy != nil {
		managed = append(managed, ch.Policy)
	}
	if ch.Controller != nil {
		managed = append(managed, ch.Controller)
	}
	for i := range labelled.Items {
		managed = append(managed, &labelled.Items[i])
	}
	facts.ObjectsMissingOwnership = missingOwnership(managed)
	return facts, nil
}

// podControllers are the UIDs of the objects that may own the workload's
// pods: the ReplicaSets the managed Deployment controls, or the managed Job
// itself.
func podControllers(ctx context.Context, c client.Reader, controller client.Object, w builder.Workload) (map[types.UID]bool, error) {
	owners := map[types.UID]bool{}
	deployment, ok := controller.(*appsv1.Deployment)
	if !ok {
		if controller != nil {
			owners[controller.GetUID()] = true
		}
		return owners, nil
	}
	sets := &appsv1.ReplicaSetList{}
	if err := c.List(ctx, sets, client.InNamespace(w.Namespace), client.MatchingLabels(w.PodSelector())); err != nil {
		return nil, fmt.Errorf("listing ReplicaSets: %w", err)
	}
	for i := range sets.Items {
		if ref := metav1.GetControllerOf(&sets.Items[i]); ref != nil && ref.UID == deployment.UID {
			owners[sets.Items[i].UID] = true
		}
	}
	return owners, nil
}

// missingOwnership names the objects that lack an ownership annotation.
func missingOwnership(objects []client.Object) []string {
	var missing []string
	for _, obj := range objects {
		if obj.GetName() == "" {
			continue
		}
		annotations := obj.GetAnnotations()
		for _, key := range mlv1alpha1.OwnershipAnnotationKeys() {
			if _, ok := annotations[key]; !ok {
				missing = append(missing, fmt.Sprintf("%T %s", obj, obj.GetName()))
				break
			}
		}
	}
	return missing
}

// typed converts an applyconfiguration into the API type it configures,
// through the JSON both share.
func typed[T any](applyConfiguration any) (*T, error) {
	data, err := json.Marshal(applyConfiguration)
	if err != nil {
		return nil, fmt.Errorf("encoding %T: %w", applyConfiguration, err)
	}
	out := new(T)
	if err := json.Unmarshal(data, out); err != nil {
		return nil, fmt.Errorf("decoding %T into %T: %w", applyConfiguration, out, err)
	}
	return out, nil
}

// bundleHostProblem explains why the egress policy would block the download
// of an https bundle, or returns "" when it would not (or src is nil, for a
// bundle on a volume). The host is resolved by the operator, so the answer
// can differ from a pod's view only where cluster DNS differs from the
// operator's.
func bundleHostProblem(ctx context.Context, src *mlv1alpha1.HTTPSource, egress []mlv1alpha1.EgressRule) string {
	if src == nil {
		return ""
	}
	u, err := url.Parse(src.URL)
	if err != nil {
		return fmt.Sprintf("spec.weights.source.http.url cannot be parsed: %v", err)
	}
	port := 443
	if p := u.Port(); p != "" {
		fmt.Sscanf(p, "%d", &port)
	}
	addrs, err := resolveHost(ctx, u.Hostname())
	if err != nil {
		return fmt.Sprintf("cannot resolve the bundle host %s to check it against spec.network.allowedEgress: %v", u.Hostname(), err)
	}
	var blocked []string
	for _, addr := range addrs {
		if !policy.EgressAllows(egress, addr, port) {
			blocked = append(blocked, addr.String())
		}
	}
	if len(blocked) > 0 {
		return fmt.Sprintf("the bundle host %s (%s) port %d is not covered by spec.network.allowedEgress, so the download would be blocked; add a CIDR that covers it",
			u.Hostname(), strings.Join(blocked, ", "), port)
	}
	return ""
}

func resolveHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if addr, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{addr}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}
