package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// IsolationProblem reads the NetworkPolicies in force back and says how they
// fail to isolate a workload, or returns reason "" when they do not.
//
//   - own is the live copy of ModelGuard's policy (nil when it is missing); it
//     must select every pod in pods (labels of each component), for ingress
//     and egress, with exactly the generated rules.
//   - others are the namespace's other NetworkPolicies. Policies add up, so
//     one that selects the pods and allows any traffic the generated policy
//     does not (a tenant's allow-all with an empty podSelector, say) breaks
//     the isolation; it is named.
func IsolationProblem(desired, own *networkingv1.NetworkPolicy, others []networkingv1.NetworkPolicy, pods map[string]map[string]string) (reason, message string) {
	if own == nil {
		return mlv1alpha1.ReasonPolicyNotApplied, "the default-deny NetworkPolicy is not in force yet"
	}
	var unselected []string
	for _, component := range sortedKeys(pods) {
		if !selects(own.Spec.PodSelector, pods[component]) {
			unselected = append(unselected, component)
		}
	}
	if len(unselected) > 0 {
		return mlv1alpha1.ReasonPolicyNotApplied,
			fmt.Sprintf("NetworkPolicy %s does not select the %s pods: its podSelector was changed", own.Name, strings.Join(unselected, " and "))
	}
	for _, t := range []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress} {
		if !slices.Contains(own.Spec.PolicyTypes, t) {
			return mlv1alpha1.ReasonPolicyNotApplied, fmt.Sprintf("NetworkPolicy %s does not isolate %s", own.Name, t)
		}
	}
	if !equality.Semantic.DeepEqual(own.Spec.Ingress, desired.Spec.Ingress) || !equality.Semantic.DeepEqual(own.Spec.Egress, desired.Spec.Egress) {
		return mlv1alpha1.ReasonPolicyNotApplied,
			fmt.Sprintf("NetworkPolicy %s has rules other than the generated ones", own.Name)
	}
	var widening []string
	for i := range others {
		p := &others[i]
		if p.Name == own.Name || !selectsAny(p.Spec.PodSelector, pods) {
			continue
		}
		if direction := widens(p, desired); direction != "" {
			widening = append(widening, fmt.Sprintf("%s (%s)", p.Name, direction))
		}
	}
	if len(widening) > 0 {
		sort.Strings(widening)
		return mlv1alpha1.ReasonForeignPolicyAllows,
			fmt.Sprintf("NetworkPolicy %s also selects the pods and allows traffic the generated policy does not",
				strings.Join(widening, ", "))
	}
	return "", ""
}

// widens names the directions in which a policy allows traffic that desired
// does not: a rule that is not one of desired's rules.
func widens(p, desired *networkingv1.NetworkPolicy) string {
	var out string
	if slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		for _, rule := range p.Spec.Ingress {
			if !slices.ContainsFunc(desired.Spec.Ingress, func(r networkingv1.NetworkPolicyIngressRule) bool {
				return equality.Semantic.DeepEqual(r, rule)
			}) {
				out = "ingress"
				break
			}
		}
	}
	if slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		for _, rule := range p.Spec.Egress {
			if !slices.ContainsFunc(desired.Spec.Egress, func(r networkingv1.NetworkPolicyEgressRule) bool {
				return equality.Semantic.DeepEqual(r, rule)
			}) {
				if out != "" {
					return out + " and egress"
				}
				return "egress"
			}
		}
	}
	return out
}

func selects(selector metav1.LabelSelector, set map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(&selector)
	if err != nil {
		return false // the API server refuses invalid selectors; fail closed
	}
	return s.Matches(labels.Set(set))
}

func selectsAny(selector metav1.LabelSelector, pods map[string]map[string]string) bool {
	for _, set := range pods {
		if selects(selector, set) {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
