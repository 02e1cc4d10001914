package integration

import (
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// TestKustomizeDefaultServerDryRun builds config/default with the kustomize
// the Makefile builds and applies it to the real API server with a
// server-side dry run, then checks that it installs what the Helm chart
// installs with default values.
func TestKustomizeDefaultServerDryRun(t *testing.T) {
	render := runTool(t, nil, kustomizePath(t), "build", "config/default")
	objs := splitYAML(t, render)

	want := []string{
		"Namespace modelguard-system",
		chartCRDProtected,
		chartCRDTraining,
		chartCRDModelKey,
		"ServiceAccount modelguard-system/modelguard-controller-manager",
		"ClusterRole modelguard-manager-role",
		"ClusterRoleBinding modelguard-manager-rolebinding",
		"Role modelguard-system/modelguard-leader-election-role",
		"RoleBinding modelguard-system/modelguard-leader-election-rolebinding",
		"Role modelguard-system/modelguard-manager-namespace-role",
		"RoleBinding modelguard-system/modelguard-manager-namespace-rolebinding",
		"ClusterRole modelguard-metrics-auth-role",
		"ClusterRoleBinding modelguard-metrics-auth-rolebinding",
		"ClusterRole modelguard-metrics-reader",
		"Service modelguard-system/modelguard-controller-manager-metrics-service",
		"Service modelguard-system/modelguard-key-release",
		"Deployment modelguard-system/modelguard-controller-manager",
		"PodDisruptionBudget modelguard-system/modelguard-controller-manager",
		"Service modelguard-system/modelguard-webhook",
		"ValidatingWebhookConfiguration modelguard-admission-guard",
		"ClusterRole modelguard-admission-guard-role",
		"ClusterRoleBinding modelguard-admission-guard-rolebinding",
		"ClusterRole modelguard-viewer",
		"ClusterRole modelguard-editor",
		"ClusterRole modelguard-key-admin",
	}
	got := objectIDs(objs)
	sort.Strings(want)
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kustomize build config/default objects (-want +got):\n%s", diff)
	}

	// The Namespace in the build is only dry-run created, so the namespaced
	// objects need it to exist already.
	ensureNamespace(t, env.Client, "modelguard-system", nil)
	out := serverDryRunApply(t, newKubectl(t), render)
	assertAllApplied(t, objs, out)

	d := fromRendered[appsv1.Deployment](t, findRendered(t, objs, "Deployment", "modelguard-controller-manager"))
	assertManagerAcceptsArgs(t, d.Spec.Template.Spec.Containers[0].Args)
	assertPodPassesRestricted(t, d)
	// kustomize's namePrefix does not rewrite arguments, so this also checks
	// that the names the manager is given are the prefixed ones.
	assertKeyReleaseWiring(t, objs, "modelguard-system")
	assertAdmissionGuardWiring(t, objs, "modelguard-system")
	assertHighAvailability(t, objs, 2, 1)
	assertUserRoles(t, objs, "modelguard-")

	// Every binding names the ServiceAccount the Deployment runs as, in the
	// namespace kustomize moved it to.
	wantSubject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: d.Spec.Template.Spec.ServiceAccountName, Namespace: "modelguard-system"}}
	for _, o := range objs {
		if o.GetKind() != "RoleBinding" && o.GetKind() != "ClusterRoleBinding" {
			continue
		}
		b := fromRendered[rbacv1.RoleBinding](t, o.Unstructured)
		if diff := cmp.Diff(wantSubject, b.Subjects); diff != "" {
			t.Errorf("%s subjects (-want +got):\n%s", objectID(o.Unstructured), diff)
		}
	}

	// The two install methods grant the same permissions: the hand-written
	// roles in config/rbac and in the chart's templates must not drift.
	chart := splitYAML(t, helmTemplate(t, "modelguard-system"))
	for _, role := range []struct{ kind, name string }{
		{"ClusterRole", "modelguard-manager-role"},
		{"ClusterRole", "modelguard-metrics-auth-role"},
		{"ClusterRole", "modelguard-metrics-reader"},
		{"Role", "modelguard-leader-election-role"},
		{"Role", "modelguard-manager-namespace-role"},
		{"ClusterRole", "modelguard-admission-guard-role"},
		{"ClusterRole", "modelguard-viewer"},
		{"ClusterRole", "modelguard-editor"},
		{"ClusterRole", "modelguard-key-admin"},
	} {
		k := fromRendered[rbacv1.ClusterRole](t, findRendered(t, objs, role.kind, role.name))
		h := fromRendered[rbacv1.ClusterRole](t, findRendered(t, chart, role.kind, role.name))
		if diff := cmp.Diff(normalizeRules(k.Rules), normalizeRules(h.Rules)); diff != "" {
			t.Errorf("%s %s rules differ (-kustomize +helm):\n%s", role.kind, role.name, diff)
		}
	}
	// And the manager serves key release and the admission guard under
	// the same names, trusting the same controllers.
	hd := fromRendered[appsv1.Deployment](t, findRendered(t, chart, "Deployment", "modelguard-controller-manager"))
	for _, flag := range []string{"key-release-bind-address", "key-release-service", "serving-cert-secret", "ca-configmap",
		"webhook-service", "webhook-configuration", "admission-trusted-controllers"} {
		k, h := managerFlag(t, d.Spec.Template.Spec.Containers[0].Args, flag), managerFlag(t, hd.Spec.Template.Spec.Containers[0].Args, flag)
		if k != h {
			t.Errorf("--%s is %q with kustomize, %q with Helm", flag, k, h)
		}
	}
	// The two register the same webhook, to the letter.
	kw := fromRendered[admissionregistrationv1.ValidatingWebhookConfiguration](t, findRendered(t, objs, "ValidatingWebhookConfiguration", "modelguard-admission-guard"))
	hw := fromRendered[admissionregistrationv1.ValidatingWebhookConfiguration](t, findRendered(t, chart, "ValidatingWebhookConfiguration", "modelguard-admission-guard"))
	if diff := cmp.Diff(hw.Webhooks, kw.Webhooks); diff != "" {
		t.Errorf("the admission guard's webhooks differ (-helm +kustomize):\n%s", diff)
	}
}

// normalizeRules sorts the lists inside rules and the rules themselves, so
// that equal grants written in a different order compare equal.
func normalizeRules(rules []rbacv1.PolicyRule) []rbacv1.PolicyRule {
	out := make([]rbacv1.PolicyRule, len(rules))
	for i, r := range rules {
		r = *r.DeepCopy()
		for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.NonResourceURLs, r.ResourceNames} {
			slices.Sort(list)
		}
		out[i] = r
	}
	slices.SortFunc(out, func(a, b rbacv1.PolicyRule) int {
		return strings.Compare(a.String(), b.String())
	})
	return out
}
