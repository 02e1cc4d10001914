package policy

import (
	"strings"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// Stalled are the failures that need a person to act: the workload is held
// at zero pods until the spec or the key is fixed.
var Stalled = Chain{KeyFailed, NamespaceNotEnforced, MemoryTooSmall}

// Serving decides whether a ProtectedModel may serve: nothing stalls it, its
// ModelKey may be used, key release is ready, its NetworkPolicy is in place
// and its pods pass Pod Security "restricted". Anything else fails closed.
// Whether the bundle opens and holds the pinned model is found by the unseal
// container and reported in WeightsVerified.
var Serving = append(Stalled[:len(Stalled):len(Stalled)], KeyPending, PolicyMissing, PodSecurityViolated)

// KeyFailed fails when the workload's ModelKey is missing, not Ready, or does
// not select its namespace.
func KeyFailed(f Facts) (string, string, bool) {
	return f.KeyReason, f.KeyMessage, f.KeyReason != ""
}

// NamespaceNotEnforced fails when the namespace lets privileged or hostPath
// pods run beside the workload's (see NamespaceEnforcement).
func NamespaceNotEnforced(f Facts) (string, string, bool) {
	return mlv1alpha1.ReasonNamespaceNotEnforced, f.NamespaceEnforcement, f.NamespaceEnforcement != ""
}

// MemoryTooSmall fails when the plaintext weights would not fit the pod's
// memory limit.
func MemoryTooSmall(f Facts) (string, string, bool) {
	return mlv1alpha1.ReasonMemoryTooSmall,
		"spec.server.resources.limits.memory does not exceed spec.weights.memory: the plaintext weights in tmpfs would not fit, so no pod is started",
		!f.MemoryCoversWeights
}

// KeyPending fails until the key-release service is ready to be called: no
// pod starts that could not get its key.
func KeyPending(f Facts) (string, string, bool) {
	return mlv1alpha1.ReasonProgressing, "the key-release service's endpoint and CA bundle are not known yet", !f.KeyReleaseReady
}

// PolicyMissing fails until the default-deny NetworkPolicy exists, so that no
// pod ever runs unisolated.
func PolicyMissing(f Facts) (string, string, bool) {
	return mlv1alpha1.ReasonPolicyNotApplied, "the default-deny NetworkPolicy is not in force yet", !f.PolicyApplied
}

// PodSecurityViolated fails when a generated pod template would not pass Pod
// Security "restricted".
func PodSecurityViolated(f Facts) (string, string, bool) {
	return mlv1alpha1.ReasonNotRestricted,
		"pods violate Pod Security \"restricted\": " + strings.Join(f.PodSecurityViolations, "; "),
		len(f.PodSecurityViolations) > 0
}
