package builder_test

import (
	"fmt"
	"testing"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
)

// The truth table evaluates the NetworkPolicy that builder.NetworkPolicy
// makes with cyclonus's matcher, an implementation of the NetworkPolicy
// semantics used to check CNI plugins. The addresses are data only: nothing
// here sends traffic.

// namespaceLabels are the labels the API server puts on every namespace.
func namespaceLabels(ns string, extra map[string]string) map[string]string {
	out := map[string]string{"kubernetes.io/metadata.name": ns}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

func pod(ns string, nsLabels, podLabels map[string]string, ip string) *matcher.TrafficPeer {
	return &matcher.TrafficPeer{
		IP:       ip,
		Internal: &matcher.InternalPeer{Namespace: ns, NamespaceLabels: namespaceLabels(ns, nsLabels), PodLabels: podLabels},
	}
}

func external(ip string) *matcher.TrafficPeer { return &matcher.TrafficPeer{IP: ip} }

type flow struct {
	name     string
	from, to *matcher.TrafficPeer
	port     int
	portName string
	protocol corev1.Protocol
	allowed  bool
}

func evaluate(t *testing.T, policy *networkingv1.NetworkPolicy, flows []flow) {
	t.Helper()
	evaluator := matcher.BuildNetworkPolicies(false, []*networkingv1.NetworkPolicy{policy})
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			result := evaluator.IsTrafficAllowed(&matcher.Traffic{
				Source: f.from, Destination: f.to,
				ResolvedPort: f.port, ResolvedPortName: f.portName, Protocol: f.protocol,
			})
			if got := result.IsAllowed(); got != f.allowed {
				t.Errorf("allowed = %v, want %v\n%s", got, f.allowed, result.Table())
			}
		})
	}
}

func TestNetworkPolicyTruthTable(t *testing.T) {
	pm := model(func(w *builders.ProtectedModelWrapper) {
		w.Port(8080).
			AllowClientPods(map[string]string{"app": "web"}).
			AllowClient(builders.Selector(map[string]string{"team": "frontend"}), builders.Selector(map[string]string{"role": "gateway"})).
			AllowEgress("10.20.0.0/16", 443).
			EgressRule(mlv1alpha1.EgressRule{CIDR: "198.51.100.0/24", Except: []mlv1alpha1.CIDR{"198.51.100.128/25"}})
	})
	policy := asAPI[networkingv1.NetworkPolicy](t, builder.ModelNetworkPolicy(pm, testOperatorNamespace))

	serverLabels := deployment(t, pm, servingFacts(1)).Spec.Template.Labels
	modelPod := pod(testNamespace, nil, serverLabels, "10.244.1.10")
	operatorPods := map[string]string{"app.kubernetes.io/name": "modelguard", "app.kubernetes.io/component": "manager"}
	keyRelease := pod(testOperatorNamespace, nil, operatorPods, "10.244.0.40")
	managerElsewhere := pod("other-operator", nil, operatorPods, "10.244.0.41")
	otherOperatorPod := pod(testOperatorNamespace, nil, map[string]string{"app.kubernetes.io/name": "webhook-helper"}, "10.244.0.42")
	web := pod(testNamespace, nil, map[string]string{"app": "web"}, "10.244.2.20")
	batch := pod(testNamespace, nil, map[string]string{"app": "batch"}, "10.244.2.21")
	webElsewhere := pod("sandbox", nil, map[string]string{"app": "web"}, "10.244.3.30")
	gateway := pod("edge", map[string]string{"team": "frontend"}, map[string]string{"role": "gateway"}, "10.244.4.40")
	gatewayOtherTeam := pod("edge-2", map[string]string{"team": "research"}, map[string]string{"role": "gateway"}, "10.244.4.41")
	dns := pod("kube-system", nil, map[string]string{"k8s-app": "kube-dns"}, "10.244.0.2")
	metricsServer := pod("kube-system", nil, map[string]string{"k8s-app": "metrics-server"}, "10.244.0.3")
	fakeDNS := pod(testNamespace, nil, map[string]string{"k8s-app": "kube-dns"}, "10.244.2.53")
	internet := external("203.0.113.10")
	allowedRange := external("10.20.3.4")

	evaluate(t, policy, []flow{
		// Ingress.
		{"allowed client reaches the model port", web, modelPod, 8080, "http", corev1.ProtocolTCP, true},
		{"allowed client, another port", web, modelPod, 9090, "", corev1.ProtocolTCP, false},
		{"allowed client, model port over UDP", web, modelPod, 8080, "", corev1.ProtocolUDP, false},
		{"another pod of the namespace", batch, modelPod, 8080, "http", corev1.ProtocolTCP, false},
		{"client labels in another namespace", webElsewhere, modelPod, 8080, "http", corev1.ProtocolTCP, false},
		{"gateway of an allowed namespace", gateway, modelPod, 8080, "http", corev1.ProtocolTCP, true},
		{"gateway of another namespace", gatewayOtherTeam, modelPod, 8080, "http", corev1.ProtocolTCP, false},
		{"outside address to the model", internet, modelPod, 8080, "http", corev1.ProtocolTCP, false},
		// Egress.
		{"model to the internet", modelPod, internet, 443, "", corev1.ProtocolTCP, false},
		{"model to a public resolver", modelPod, external("8.8.8.8"), 53, "", corev1.ProtocolUDP, false},
		{"model to cluster DNS over UDP", modelPod, dns, 53, "", corev1.ProtocolUDP, true},
		{"model to cluster DNS over TCP", modelPod, dns, 53, "", corev1.ProtocolTCP, true},
		{"model to cluster DNS, another port", modelPod, dns, 9153, "", corev1.ProtocolTCP, false},
		{"model to another kube-system pod on 53", modelPod, metricsServer, 53, "", corev1.ProtocolUDP, false},
		{"model to a kube-dns look-alike outside kube-system", modelPod, fakeDNS, 53, "", corev1.ProtocolUDP, false},
		{"model to the allowed range on its port", modelPod, allowedRange, 443, "", corev1.ProtocolTCP, true},
		{"model to the allowed range, another port", modelPod, allowedRange, 80, "", corev1.ProtocolTCP, false},
		{"model to a range allowed on every port", modelPod, external("198.51.100.7"), 8443, "", corev1.ProtocolTCP, true},
		{"model to an excepted part of that range", modelPod, external("198.51.100.200"), 8443, "", corev1.ProtocolTCP, false},
		{"model to its allowed client", modelPod, web, 8080, "http", corev1.ProtocolTCP, false},
		{"model to the key-release port of the manager pods", modelPod, keyRelease, 8444, "", corev1.ProtocolTCP, true},
		{"model to another port of the manager pods", modelPod, keyRelease, 8443, "", corev1.ProtocolTCP, false},
		{"model to manager look-alikes in another namespace", modelPod, managerElsewhere, 8444, "", corev1.ProtocolTCP, false},
		{"model to another pod of the operator namespace", modelPod, otherOperatorPod, 8444, "", corev1.ProtocolTCP, false},
		// Pods that are not the model's are not governed by its policy.
		{"unrelated pod to the internet", batch, internet, 443, "", corev1.ProtocolTCP, true},
	})
}

func TestNetworkPolicyTruthTableWithoutNetworkBlock(t *testing.T) {
	pm := model()
	policy := asAPI[networkingv1.NetworkPolicy](t, builder.ModelNetworkPolicy(pm, testOperatorNamespace))
	modelPod := pod(testNamespace, nil, deployment(t, pm, servingFacts(1)).Spec.Template.Labels, "10.244.1.10")
	sameNamespace := pod(testNamespace, nil, map[string]string{"app": "web"}, "10.244.2.20")
	dns := pod("kube-system", nil, map[string]string{"k8s-app": "kube-dns"}, "10.244.0.2")

	evaluate(t, policy, []flow{
		{"nobody reaches the model", sameNamespace, modelPod, 8080, "http", corev1.ProtocolTCP, false},
		{"not even the kube-system DNS pod", dns, modelPod, 8080, "http", corev1.ProtocolTCP, false},
		{"model resolves names", modelPod, dns, 53, "", corev1.ProtocolUDP, true},
		{"model reaches nothing else in the cluster", modelPod, sameNamespace, 8080, "http", corev1.ProtocolTCP, false},
		{"model reaches nothing outside", modelPod, external("203.0.113.10"), 443, "", corev1.ProtocolTCP, false},
	})
}

// TestNetworkPolicyTruthTableIPv6AndPortRanges covers the rule shapes the
// main table does not: IPv6 ranges, UDP and endPort.
func TestNetworkPolicyTruthTableIPv6AndPortRanges(t *testing.T) {
	pm := model(func(w *builders.ProtectedModelWrapper) {
		w.EgressRule(mlv1alpha1.EgressRule{
			CIDR: "2001:db8::/32",
			Ports: []mlv1alpha1.NetworkPort{
				{Protocol: corev1.ProtocolTCP, Port: 8000, EndPort: ptr.To[int32](8100)},
				{Protocol: corev1.ProtocolUDP, Port: 4789},
			},
		})
	})
	policy := asAPI[networkingv1.NetworkPolicy](t, builder.ModelNetworkPolicy(pm, testOperatorNamespace))
	modelPod := pod(testNamespace, nil, deployment(t, pm, servingFacts(1)).Spec.Template.Labels, "fd00::10")
	var flows []flow
	for _, tc := range []struct {
		ip       string
		port     int
		protocol corev1.Protocol
		allowed  bool
	}{
		{"2001:db8::1", 8000, corev1.ProtocolTCP, true},
		{"2001:db8::1", 8050, corev1.ProtocolTCP, true},
		{"2001:db8::1", 8100, corev1.ProtocolTCP, true},
		{"2001:db8::1", 8101, corev1.ProtocolTCP, false},
		{"2001:db8::1", 8050, corev1.ProtocolUDP, false},
		{"2001:db8::1", 4789, corev1.ProtocolUDP, true},
		{"2001:db8::1", 4789, corev1.ProtocolTCP, false},
		{"2001:db9::1", 8050, corev1.ProtocolTCP, false},
		{"203.0.113.10", 8050, corev1.ProtocolTCP, false},
	} {
		flows = append(flows, flow{
			name: fmt.Sprintf("model to %s port %d %s", tc.ip, tc.port, tc.protocol),
			from: modelPod, to: external(tc.ip), port: tc.port, protocol: tc.protocol, allowed: tc.allowed,
		})
	}
	evaluate(t, policy, flows)
}
