package policy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
)

func TestIsolationProblem(t *testing.T) {
	both := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	clients := networkingv1.NetworkPolicyIngressRule{
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(8080))}},
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
	}
	dns := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}}}}}
	desired := networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "m"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/model": "m"}},
			PolicyTypes: both, Ingress: []networkingv1.NetworkPolicyIngressRule{clients}, Egress: []networkingv1.NetworkPolicyEgressRule{dns},
		},
	}
	pods := map[string]map[string]string{
		"server":      {"modelguard.dev/model": "m", "modelguard.dev/component": "server"},
		"key-resolve": {"modelguard.dev/model": "m", "modelguard.dev/component": "key-resolve"},
	}
	edited := func(edit func(*networkingv1.NetworkPolicy)) *networkingv1.NetworkPolicy {
		p := desired.DeepCopy()
		edit(p)
		return p
	}
	foreign := func(name string, selector metav1.LabelSelector, types []networkingv1.PolicyType, ingress []networkingv1.NetworkPolicyIngressRule, egress []networkingv1.NetworkPolicyEgressRule) networkingv1.NetworkPolicy {
		return networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: selector, PolicyTypes: types, Ingress: ingress, Egress: egress}}
	}
	allowAllIn := []networkingv1.NetworkPolicyIngressRule{{}}
	allowAllOut := []networkingv1.NetworkPolicyEgressRule{{}}
	ingressOnly := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}

	type problem struct{ Reason, Message string }
	tests := []struct {
		name   string
		own    *networkingv1.NetworkPolicy
		others []networkingv1.NetworkPolicy
		want   problem
	}{{
		name: "the generated policy alone",
		own:  desired.DeepCopy(), others: []networkingv1.NetworkPolicy{desired},
	}, {
		name: "missing",
		want: problem{mlv1alpha1.ReasonPolicyNotApplied, "the default-deny NetworkPolicy is not in force yet"},
	}, {
		name: "selector no longer matches the pods",
		own:  edited(func(p *networkingv1.NetworkPolicy) { p.Spec.PodSelector.MatchLabels["tampered"] = "yes" }),
		want: problem{mlv1alpha1.ReasonPolicyNotApplied, "NetworkPolicy m does not select the key-resolve and server pods: its podSelector was changed"},
	}, {
		name: "selector narrowed to one component",
		own: edited(func(p *networkingv1.NetworkPolicy) {
			p.Spec.PodSelector.MatchLabels["modelguard.dev/component"] = "key-resolve"
		}),
		want: problem{mlv1alpha1.ReasonPolicyNotApplied, "NetworkPolicy m does not select the server pods: its podSelector was changed"},
	}, {
		name: "egress no longer isolated",
		own:  edited(func(p *networkingv1.NetworkPolicy) { p.Spec.PolicyTypes = ingressOnly }),
		want: problem{mlv1alpha1.ReasonPolicyNotApplied, "NetworkPolicy m does not isolate Egress"},
	}, {
		name: "a rule widened",
		own: edited(func(p *networkingv1.NetworkPolicy) {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{})
		}),
		want: problem{mlv1alpha1.ReasonPolicyNotApplied, "NetworkPolicy m has rules other than the generated ones"},
	}, {
		name:   "a tenant's allow-all with an empty selector",
		own:    desired.DeepCopy(),
		others: []networkingv1.NetworkPolicy{foreign("allow-all", metav1.LabelSelector{}, ingressOnly, allowAllIn, nil)},
		want:   problem{mlv1alpha1.ReasonForeignPolicyAllows, "NetworkPolicy allow-all (ingress) also selects the pods and allows traffic the generated policy does not"},
	}, {
		name: "two foreign policies, both directions, named in order",
		own:  desired.DeepCopy(),
		others: []networkingv1.NetworkPolicy{
			foreign("z-open", metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/model": "m"}}, both, allowAllIn, allowAllOut),
			foreign("a-out", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "modelguard.dev/component", Operator: metav1.LabelSelectorOpExists}}},
				[]networkingv1.PolicyType{networkingv1.PolicyTypeEgress}, nil, allowAllOut),
		},
		want: problem{mlv1alpha1.ReasonForeignPolicyAllows, "NetworkPolicy a-out (egress), z-open (ingress and egress) also selects the pods and allows traffic the generated policy does not"},
	}, {
		name: "foreign policies that do not widen",
		own:  desired.DeepCopy(),
		others: []networkingv1.NetworkPolicy{
			foreign("other-pods", metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, ingressOnly, allowAllIn, nil),
			foreign("deny-all", metav1.LabelSelector{}, both, nil, nil),
			foreign("same-rules", metav1.LabelSelector{}, both, []networkingv1.NetworkPolicyIngressRule{clients}, []networkingv1.NetworkPolicyEgressRule{dns}),
			foreign("egress-rules-but-ingress-only", metav1.LabelSelector{}, ingressOnly, nil, allowAllOut),
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reason, message := policy.IsolationProblem(&desired, tc.own, tc.others, pods)
			if diff := cmp.Diff(tc.want, problem{reason, message}); diff != "" {
				t.Errorf("IsolationProblem (-want +got):\n%s", diff)
			}
		})
	}
}
