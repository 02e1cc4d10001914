package policy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
)

type verdict struct {
	Reason, Message string
	Failed          bool
}

func evaluate(c policy.Chain, f policy.Facts) verdict {
	reason, message, failed := c.Evaluate(f)
	return verdict{reason, message, failed}
}

func TestChainReturnsTheFirstFailure(t *testing.T) {
	pass := func(policy.Facts) (string, string, bool) { return "Unused", "unused", false }
	fail := func(reason string) policy.Check {
		return func(policy.Facts) (string, string, bool) { return reason, "because " + reason, true }
	}
	tests := []struct {
		name  string
		chain policy.Chain
		want  verdict
	}{
		{"empty chain passes", nil, verdict{}},
		{"every check passes", policy.Chain{pass, pass}, verdict{}},
		{"first failure wins", policy.Chain{pass, fail("A"), fail("B")}, verdict{"A", "because A", true}},
		{"a passing check's reason is not reported", policy.Chain{pass, fail("B")}, verdict{"B", "because B", true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, evaluate(tc.chain, policy.Facts{})); diff != "" {
				t.Errorf("Evaluate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestServingAndStalledChains(t *testing.T) {
	serving := policy.Facts{KeyReleaseReady: true, MemoryCoversWeights: true, PolicyApplied: true}
	with := func(edit func(*policy.Facts)) policy.Facts {
		f := serving
		edit(&f)
		return f
	}
	memory := "spec.server.resources.limits.memory does not exceed spec.weights.memory: the plaintext weights in tmpfs would not fit, so no pod is started"
	tests := []struct {
		name           string
		facts          policy.Facts
		stalled, serve verdict
	}{{
		name:  "everything holds",
		facts: serving,
	}, {
		name: "key failure before memory",
		facts: with(func(f *policy.Facts) {
			f.KeyReason, f.KeyMessage, f.MemoryCoversWeights = "KeyNotPermitted", "ModelKey models does not select namespace nlp", false
		}),
		stalled: verdict{"KeyNotPermitted", "ModelKey models does not select namespace nlp", true},
		serve:   verdict{"KeyNotPermitted", "ModelKey models does not select namespace nlp", true},
	}, {
		name: "namespace not enforcing Pod Security, before memory",
		facts: with(func(f *policy.Facts) {
			f.NamespaceEnforcement, f.MemoryCoversWeights = "namespace nlp does not enforce Pod Security", false
		}),
		stalled: verdict{mlv1alpha1.ReasonNamespaceNotEnforced, "namespace nlp does not enforce Pod Security", true},
		serve:   verdict{mlv1alpha1.ReasonNamespaceNotEnforced, "namespace nlp does not enforce Pod Security", true},
	}, {
		name:    "memory too small",
		facts:   with(func(f *policy.Facts) { f.MemoryCoversWeights = false }),
		stalled: verdict{mlv1alpha1.ReasonMemoryTooSmall, memory, true},
		serve:   verdict{mlv1alpha1.ReasonMemoryTooSmall, memory, true},
	}, {
		name:  "key release not ready yet: not stalled, not serving",
		facts: with(func(f *policy.Facts) { f.KeyReleaseReady = false }),
		serve: verdict{mlv1alpha1.ReasonProgressing, "the key-release service's endpoint and CA bundle are not known yet", true},
	}, {
		name:  "no NetworkPolicy yet",
		facts: with(func(f *policy.Facts) { f.PolicyApplied = false }),
		serve: verdict{mlv1alpha1.ReasonPolicyNotApplied, "the default-deny NetworkPolicy is not in force yet", true},
	}, {
		name:  "pods not restricted",
		facts: with(func(f *policy.Facts) { f.PodSecurityViolations = []string{"privileged: x", "host namespaces: y"} }),
		serve: verdict{mlv1alpha1.ReasonNotRestricted, `pods violate Pod Security "restricted": privileged: x; host namespaces: y`, true},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.stalled, evaluate(policy.Stalled, tc.facts)); diff != "" {
				t.Errorf("Stalled (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.serve, evaluate(policy.Serving, tc.facts)); diff != "" {
				t.Errorf("Serving (-want +got):\n%s", diff)
			}
		})
	}
	if len(policy.Stalled) != 3 {
		t.Errorf("building Serving changed Stalled: %d checks", len(policy.Stalled))
	}
}
