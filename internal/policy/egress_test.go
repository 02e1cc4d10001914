package policy_test

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
)

func TestEgressAllows(t *testing.T) {
	rule := func(cidr string, except []mlv1alpha1.CIDR, ports ...mlv1alpha1.NetworkPort) mlv1alpha1.EgressRule {
		return mlv1alpha1.EgressRule{CIDR: mlv1alpha1.CIDR(cidr), Except: except, Ports: ports}
	}
	tcp := func(port int32) mlv1alpha1.NetworkPort {
		return mlv1alpha1.NetworkPort{Protocol: corev1.ProtocolTCP, Port: port}
	}
	tests := []struct {
		name  string
		rules []mlv1alpha1.EgressRule
		addr  string
		port  int
		want  bool
	}{
		{"no rules", nil, "10.1.2.3", 443, false},
		{"inside the range, every port", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil)}, "10.1.2.3", 443, true},
		{"outside the range", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil)}, "11.0.0.1", 443, false},
		{"range bounds", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil)}, "10.255.255.255", 443, true},
		{"single address", []mlv1alpha1.EgressRule{rule("203.0.113.10/32", nil)}, "203.0.113.10", 443, true},
		{"next to a single address", []mlv1alpha1.EgressRule{rule("203.0.113.10/32", nil)}, "203.0.113.11", 443, false},
		{"non-canonical range", []mlv1alpha1.EgressRule{rule("10.9.9.9/8", nil)}, "10.1.2.3", 443, true},
		{"in an except", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", []mlv1alpha1.CIDR{"10.1.0.0/16"})}, "10.1.2.3", 443, false},
		{"beside the except", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", []mlv1alpha1.CIDR{"10.1.0.0/16"})}, "10.2.0.1", 443, true},
		{"excepted by one rule, allowed by another", []mlv1alpha1.EgressRule{
			rule("10.0.0.0/8", []mlv1alpha1.CIDR{"10.1.0.0/16"}), rule("10.1.2.0/24", nil, tcp(443))}, "10.1.2.3", 443, true},
		{"listed port", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil, tcp(80), tcp(443))}, "10.1.2.3", 443, true},
		{"unlisted port", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil, tcp(80), tcp(8443))}, "10.1.2.3", 443, false},
		{"start of a port range", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil,
			mlv1alpha1.NetworkPort{Protocol: corev1.ProtocolTCP, Port: 443, EndPort: ptr.To[int32](450)})}, "10.1.2.3", 443, true},
		{"end of a port range", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil,
			mlv1alpha1.NetworkPort{Protocol: corev1.ProtocolTCP, Port: 400, EndPort: ptr.To[int32](443)})}, "10.1.2.3", 443, true},
		{"past a port range", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil,
			mlv1alpha1.NetworkPort{Protocol: corev1.ProtocolTCP, Port: 400, EndPort: ptr.To[int32](442)})}, "10.1.2.3", 443, false},
		{"UDP does not carry https", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil,
			mlv1alpha1.NetworkPort{Protocol: corev1.ProtocolUDP, Port: 443})}, "10.1.2.3", 443, false},
		{"SCTP does not either", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil,
			mlv1alpha1.NetworkPort{Protocol: corev1.ProtocolSCTP, Port: 443})}, "10.1.2.3", 443, false},
		{"protocol left to its TCP default", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil, mlv1alpha1.NetworkPort{Port: 443})}, "10.1.2.3", 443, true},
		{"IPv4-mapped IPv6 address in an IPv4 range", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil)}, "::ffff:10.1.2.3", 443, true},
		{"IPv4-mapped IPv6 address outside it", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", nil)}, "::ffff:11.1.2.3", 443, false},
		{"IPv4-mapped address excepted", []mlv1alpha1.EgressRule{rule("10.0.0.0/8", []mlv1alpha1.CIDR{"10.1.0.0/16"})}, "::ffff:10.1.2.3", 443, false},
		{"IPv6 range", []mlv1alpha1.EgressRule{rule("2001:db8::/32", nil)}, "2001:db8:1::5", 443, true},
		{"IPv6 outside", []mlv1alpha1.EgressRule{rule("2001:db8::/32", nil)}, "2001:db9::5", 443, false},
		{"IPv4 address, IPv6 range", []mlv1alpha1.EgressRule{rule("::/0", nil)}, "10.1.2.3", 443, false},
		{"IPv6 address, IPv4 range", []mlv1alpha1.EgressRule{rule("0.0.0.0/0", nil)}, "2001:db8::5", 443, false},
		{"unparsable range is skipped", []mlv1alpha1.EgressRule{rule("not-a-cidr", nil), rule("10.0.0.0/8", nil)}, "10.1.2.3", 443, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := policy.EgressAllows(tc.rules, netip.MustParseAddr(tc.addr), tc.port); got != tc.want {
				t.Errorf("policy.EgressAllows(%s:%d) = %v, want %v", tc.addr, tc.port, got, tc.want)
			}
		})
	}
}
