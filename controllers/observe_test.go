package controllers

import (
	"context"
	"strings"
	"testing"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
)

// TestBundleHostProblem uses address literals only, so that nothing is
// looked up.
func TestBundleHostProblem(t *testing.T) {
	tests := []struct {
		name string
		edit func(*builders.ProtectedModelWrapper)
		// mentions lists what the problem must name; nil means no problem.
		mentions []string
	}{
		{"volume source: nothing to download", func(w *builders.ProtectedModelWrapper) {}, nil},
		{"covered host", func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://203.0.113.10/models/v3/").AllowEgress("203.0.113.0/24", 443)
		}, nil},
		{"no network block", func(w *builders.ProtectedModelWrapper) { w.HTTPSource("https://203.0.113.10/models/v3/") },
			[]string{"203.0.113.10", "port 443", "spec.network.allowedEgress"}},
		{"host outside every range", func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://198.51.100.7/v3/").AllowEgress("203.0.113.0/24", 443)
		}, []string{"198.51.100.7", "port 443"}},
		{"explicit port not allowed", func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://203.0.113.10:8443/v3/").AllowEgress("203.0.113.0/24", 443)
		}, []string{"203.0.113.10", "port 8443"}},
		{"explicit port allowed", func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://203.0.113.10:8443/v3/").AllowEgress("203.0.113.0/24", 8443)
		}, nil},
		{"IPv6 host covered", func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://[2001:db8::10]/v3/").AllowEgress("2001:db8::/32")
		}, nil},
		{"IPv6 host excepted", func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://[2001:db8::10]/v3/").EgressRule(mlv1alpha1.EgressRule{CIDR: "2001:db8::/32", Except: []mlv1alpha1.CIDR{"2001:db8::/64"}})
		}, []string{"2001:db8::10"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pm := testModel(tc.edit)
			problem := bundleHostProblem(context.Background(), pm.Spec.Weights.Source.HTTP, builder.ForProtectedModel(pm).Network.AllowedEgress)
			if tc.mentions == nil {
				if problem != "" {
					t.Errorf("problem = %q, want none", problem)
				}
				return
			}
			if problem == "" {
				t.Fatal("no problem reported")
			}
			for _, m := range tc.mentions {
				if !strings.Contains(problem, m) {
					t.Errorf("problem %q does not mention %q", problem, m)
				}
			}
		})
	}
}
