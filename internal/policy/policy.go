// Package policy holds ModelGuard's pure check chains, in the style of
// cert-manager's certificates/policies package: each Check looks at Facts the
// controller gathered and says whether it fails, with the reason and message
// that `kubectl describe` should show. A Chain returns its first failure, so
// that "may this workload run?" has one answer and one name. Nothing here
// does I/O.
package policy

// Check is one small rule. It returns failed=true with a condition reason and
// a human-readable message when the facts break the rule.
type Check func(Facts) (reason, message string, failed bool)

// Chain is an ordered list of checks; order decides which failure is shown
// when several hold.
type Chain []Check

// Evaluate returns the first failing check's reason and message, or
// failed=false when every check passes.
func (c Chain) Evaluate(f Facts) (reason, message string, failed bool) {
	for _, check := range c {
		if reason, message, failed := check(f); failed {
			return reason, message, true
		}
	}
	return "", "", false
}

// Facts are what the checks look at, for either kind. The controllers fill
// them once per reconcile.
type Facts struct {
	// KeyReason and KeyMessage explain why the key is not available.
	KeyReason, KeyMessage string
	// NamespaceEnforcement says why the workload's namespace does not
	// enforce Pod Security baseline or restricted; empty when it does.
	NamespaceEnforcement string
	// KeyReleaseReady is true once the key-release service's endpoint and
	// CA bundle are known, so that the unseal container can get its key.
	KeyReleaseReady bool
	// MemoryCoversWeights is false when the pod's memory limit leaves too
	// little room for the plaintext weights held in tmpfs.
	MemoryCoversWeights bool
	// PolicyApplied is true once the workload's NetworkPolicy exists.
	PolicyApplied bool
	// PodSecurityViolations lists the Pod Security "restricted" failures of
	// the generated pod templates.
	PodSecurityViolations []string
}
