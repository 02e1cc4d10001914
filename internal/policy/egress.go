package policy

import (
	"net/netip"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// EgressAllows reports whether any rule of spec.network.allowedEgress lets
// TCP traffic reach addr:port.
func EgressAllows(rules []mlv1alpha1.EgressRule, addr netip.Addr, port int) bool {
	addr = addr.Unmap()
	for _, rule := range rules {
		prefix, err := netip.ParsePrefix(string(rule.CIDR))
		if err != nil || !prefix.Contains(addr) {
			continue
		}
		excluded := false
		for _, ex := range rule.Except {
			if p, err := netip.ParsePrefix(string(ex)); err == nil && p.Contains(addr) {
				excluded = true
			}
		}
		if excluded {
			continue
		}
		if len(rule.Ports) == 0 {
			return true
		}
		for _, p := range rule.Ports {
			if p.Protocol != "" && p.Protocol != "TCP" {
				continue
			}
			end := p.Port
			if p.EndPort != nil {
				end = *p.EndPort
			}
			if int32(port) >= p.Port && int32(port) <= end {
				return true
			}
		}
	}
	return false
}
