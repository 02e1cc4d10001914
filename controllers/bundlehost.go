package controllers

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// bundleHostProblem explains why the egress policy would block the download
// of an https bundle, or returns "" when it would not (or the bundle is on a
// volume). The host is resolved by the operator, so the answer can differ
// from a pod's view only where cluster DNS differs from the operator's.
func bundleHostProblem(ctx context.Context, pm *mlv1alpha1.ProtectedModel) string {
	src := pm.Spec.Weights.Source.HTTP
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
	var rules []mlv1alpha1.EgressRule
	if pm.Spec.Network != nil {
		rules = pm.Spec.Network.AllowedEgress
	}
	var blocked []string
	for _, addr := range addrs {
		if !egressAllows(rules, addr, port) {
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
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	return ips, nil
}

// egressAllows reports whether any rule lets TCP traffic reach addr:port.
func egressAllows(rules []mlv1alpha1.EgressRule, addr netip.Addr, port int) bool {
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
