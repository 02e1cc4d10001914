package webhook

import (
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
)

// Rules are the requests the ValidatingWebhookConfiguration must send the
// guard, in the namespaces it selects. Status subresources are left out on
// purpose: edit and admin cannot write them, and the kubelet and the
// controllers write them all the time.
func Rules() []admissionregistrationv1.RuleWithOperations {
	rule := func(ops []admissionregistrationv1.OperationType, group string, resources ...string) admissionregistrationv1.RuleWithOperations {
		scope := admissionregistrationv1.NamespacedScope
		return admissionregistrationv1.RuleWithOperations{
			Operations: ops,
			Rule: admissionregistrationv1.Rule{
				APIGroups: []string{group}, APIVersions: []string{"v1"}, Resources: resources, Scope: &scope,
			},
		}
	}
	var (
		connect = []admissionregistrationv1.OperationType{admissionregistrationv1.Connect}
		create  = []admissionregistrationv1.OperationType{admissionregistrationv1.Create}
		update  = []admissionregistrationv1.OperationType{admissionregistrationv1.Update}
		// Kinds ModelGuard manages: every change, deletion included.
		all = []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update, admissionregistrationv1.Delete}
		// Kinds it never manages, whose pod templates or labels could
		// still pass for a protected workload's.
		write = []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update}
	)
	return []admissionregistrationv1.RuleWithOperations{
		// Sessions into protected pods and proxying to them.
		rule(connect, "", "pods/exec", "pods/attach", "pods/portforward", "pods/proxy", "services/proxy"),
		// kubectl debug.
		rule(update, "", "pods/ephemeralcontainers"),
		// Tokens for protected ServiceAccounts, and evictions of
		// protected pods (a delete by another name).
		rule(create, "", "serviceaccounts/token", "pods/eviction"),
		// Managed objects, look-alike pods, ModelGuard's labels.
		rule(all, "", "pods", "services", "serviceaccounts", "persistentvolumeclaims"),
		rule(all, "apps", "deployments", "replicasets"),
		rule(update, "apps", "deployments/scale", "replicasets/scale"),
		rule(write, "apps", "statefulsets", "daemonsets"),
		rule(all, "batch", "jobs"),
		rule(write, "batch", "cronjobs"),
		// Managed NetworkPolicies, and tenants' ones that select
		// protected pods.
		rule(all, "networking.k8s.io", "networkpolicies"),
	}
}
