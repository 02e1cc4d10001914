package builder

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// Isolation is the shape of a workload's NetworkPolicy beyond default deny,
// DNS and spec.network.allowedEgress.
type Isolation struct {
	// ServingPort, when set, is the TCP port that spec.network.allowedClients
	// may reach. Without it no client reaches the workload at all.
	ServingPort *int32
	// SameWorkloadPeers lets the workload's pods reach one another on every
	// port, in both directions, e.g. the nodes of a multi-node training job.
	SameWorkloadPeers bool
	// KeyReleaseNamespace, when set, lets the pods reach the manager pods in
	// that namespace (the operator's) on the key-release port, and nothing
	// else of the operator.
	KeyReleaseNamespace string
}

// NetworkPolicy denies everything the spec does not allow, in both
// directions, for every pod of the workload (all of its components).
func NetworkPolicy(w Workload, isolation Isolation) *networkingv1ac.NetworkPolicyApplyConfiguration {
	spec := networkingv1ac.NetworkPolicySpec().
		WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(w.PodSelector())).
		WithPolicyTypes(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)

	if isolation.ServingPort != nil && len(w.Network.AllowedClients) > 0 {
		rule := networkingv1ac.NetworkPolicyIngressRule().
			WithPorts(networkingv1ac.NetworkPolicyPort().
				WithProtocol(corev1.ProtocolTCP).
				WithPort(intstr.FromInt32(*isolation.ServingPort)))
		for _, c := range w.Network.AllowedClients {
			peer := networkingv1ac.NetworkPolicyPeer()
			if c.NamespaceSelector != nil {
				peer.WithNamespaceSelector(labelSelector(c.NamespaceSelector))
			}
			if c.PodSelector != nil {
				peer.WithPodSelector(labelSelector(c.PodSelector))
			}
			rule.WithFrom(peer)
		}
		spec.WithIngress(rule)
	}
	if isolation.SameWorkloadPeers {
		spec.WithIngress(networkingv1ac.NetworkPolicyIngressRule().WithFrom(samePods(w)))
	}

	spec.WithEgress(dnsEgressRule())
	if isolation.KeyReleaseNamespace != "" {
		spec.WithEgress(keyReleaseEgressRule(isolation.KeyReleaseNamespace))
	}
	for _, e := range w.Network.AllowedEgress {
		block := networkingv1ac.IPBlock().WithCIDR(string(e.CIDR))
		for _, ex := range e.Except {
			block.WithExcept(string(ex))
		}
		rule := networkingv1ac.NetworkPolicyEgressRule().WithTo(networkingv1ac.NetworkPolicyPeer().WithIPBlock(block))
		for _, p := range e.Ports {
			port := networkingv1ac.NetworkPolicyPort().WithPort(intstr.FromInt32(p.Port))
			protocol := p.Protocol
			if protocol == "" {
				protocol = corev1.ProtocolTCP
			}
			port.WithProtocol(protocol)
			if p.EndPort != nil {
				port.WithEndPort(*p.EndPort)
			}
			rule.WithPorts(port)
		}
		spec.WithEgress(rule)
	}
	if isolation.SameWorkloadPeers {
		spec.WithEgress(networkingv1ac.NetworkPolicyEgressRule().WithTo(samePods(w)))
	}

	return managed(networkingv1ac.NetworkPolicy(w.Name, w.Namespace), w).WithSpec(spec)
}

// samePods is a peer of the workload's own pods in its namespace.
func samePods(w Workload) *networkingv1ac.NetworkPolicyPeerApplyConfiguration {
	return networkingv1ac.NetworkPolicyPeer().
		WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(w.PodSelector()))
}

// dnsEgressRule lets pods resolve names through the cluster DNS and nothing
// else in kube-system.
func dnsEgressRule() *networkingv1ac.NetworkPolicyEgressRuleApplyConfiguration {
	return networkingv1ac.NetworkPolicyEgressRule().
		WithTo(networkingv1ac.NetworkPolicyPeer().
			WithNamespaceSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"kubernetes.io/metadata.name": "kube-system"})).
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"k8s-app": "kube-dns"}))).
		WithPorts(
			networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolUDP).WithPort(intstr.FromInt32(53)),
			networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(53)),
		)
}

// keyReleaseEgressRule lets pods reach the key-release endpoint of the
// manager pods in the operator's namespace. Policies match after the Service
// is translated, so the rule names the pods' own port, not the Service's.
func keyReleaseEgressRule(operatorNamespace string) *networkingv1ac.NetworkPolicyEgressRuleApplyConfiguration {
	return networkingv1ac.NetworkPolicyEgressRule().
		WithTo(networkingv1ac.NetworkPolicyPeer().
			WithNamespaceSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"kubernetes.io/metadata.name": operatorNamespace})).
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(mlv1alpha1.OperatorPodLabels()))).
		WithPorts(networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(mlv1alpha1.KeyReleasePort)))
}
