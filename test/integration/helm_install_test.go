package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/modelguard/modelguard/test/testenv"
)

// bareControlPlane is an etcd and kube-apiserver of a test's own, without
// the ModelGuard CRDs, for tests that install them the way users do.
type bareControlPlane struct {
	client     client.Client
	kubeconfig string
}

func startBareControlPlane(t *testing.T) *bareControlPlane {
	t.Helper()
	e := &envtest.Environment{BinaryAssetsDirectory: os.Getenv("KUBEBUILDER_ASSETS")}
	cfg, err := e.Start()
	if err != nil {
		t.Fatalf("starting a bare control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("stopping the bare control plane: %v", err)
		}
	})
	scheme := testenv.NewScheme()
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	user, err := e.ControlPlane.AddUser(envtest.User{Name: "bare-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return &bareControlPlane{client: c, kubeconfig: path}
}

func (cp *bareControlPlane) kubectl(t *testing.T) *kubectlRunner {
	return &kubectlRunner{path: env.KubectlPath(), kubeconfig: cp.kubeconfig, cacheDir: t.TempDir()}
}

// leftovers lists every object of any listable kind that carries the
// release's instance label, so that the check does not depend on knowing
// which kinds the chart renders.
func (cp *bareControlPlane) leftovers(t *testing.T, k *kubectlRunner, release string) []string {
	t.Helper()
	kinds, err := k.run("api-resources", "--verbs=list", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl api-resources: %v\n%s", err, kinds)
	}
	out, err := k.run("get", strings.Join(strings.Fields(kinds), ","), "--all-namespaces",
		"--ignore-not-found", "-o", "name", "-l", "app.kubernetes.io/instance="+release)
	if err != nil {
		t.Fatalf("listing objects of release %s: %v\n%s", release, err, out)
	}
	// Helm's own release records.
	records, err := k.run("get", "secrets", "--all-namespaces", "-o", "name", "-l", "owner=helm,name="+release)
	if err != nil {
		t.Fatalf("listing helm release records: %v\n%s", err, records)
	}
	return append(strings.Fields(out), strings.Fields(records)...)
}

// TestHelmInstallAndUninstall runs `helm install` and `helm uninstall`
// against a control plane of its own, where nothing of ModelGuard exists,
// and asks the API server's RBAC authorizer what the operator's
// ServiceAccount may do. There is no kubelet, so the operator pod does not
// run here; running it in-cluster needs the local cluster (issue 7 leaves
// that test to the local-cluster work).
func TestHelmInstallAndUninstall(t *testing.T) {
	cp := startBareControlPlane(t)
	k := cp.kubectl(t)
	helmEnvVars := helmEnv(t)
	helm := func(t *testing.T, args ...string) string {
		t.Helper()
		return runTool(t, helmEnvVars, helmPath(t), append(args, "--kubeconfig", cp.kubeconfig)...)
	}
	const (
		release   = "modelguard"
		namespace = "modelguard-system"
		sa        = "system:serviceaccount:modelguard-system:modelguard-controller-manager"
	)
	managerRules := readRole(t, filepath.Join(env.RepoRoot, "config/rbac/role.yaml")).Rules
	ensureNamespace(t, cp.client, "team-a", nil)
	ensureNamespace(t, cp.client, "team-b", nil)

	// Not granted by any value: the operator never changes specs, deletes
	// models, reads nodes or edits RBAC.
	neverAllowed := []rbacCheck{
		{Verb: "update", Group: "ml.modelguard.dev", Resource: "protectedmodels", Namespace: "team-a"},
		{Verb: "delete", Group: "ml.modelguard.dev", Resource: "protectedmodels", Namespace: "team-a"},
		{Verb: "get", Resource: "nodes"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "rolebindings", Namespace: "team-a"},
		{Verb: "create", Group: "coordination.k8s.io", Resource: "leases", Namespace: "team-a"},
		{Verb: "exec", Resource: "pods", Namespace: "team-a"},
		// No Secret outside its own namespace, and there only the ones it
		// is named, never a list of them.
		{Verb: "get", Resource: "secrets"},
		{Verb: "get", Resource: "secrets", Namespace: "team-a"},
		{Verb: "list", Resource: "secrets", Namespace: namespace},
		{Verb: "watch", Resource: "secrets", Namespace: namespace},
		{Verb: "update", Resource: "secrets", Namespace: namespace, Name: "a-modelkey-kek"},
		{Verb: "delete", Resource: "secrets", Namespace: namespace, Name: "modelguard-serving-cert"},
		{Verb: "update", Resource: "configmaps", Namespace: namespace, Name: "someone-elses"},
		// Of the webhook configurations, only the admission guard's, and
		// only to keep its caBundle.
		{Verb: "list", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations"},
		{Verb: "create", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations"},
		{Verb: "delete", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "modelguard-admission-guard"},
		{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "someone-elses"},
		{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Name: "modelguard-admission-guard"},
	}
	// In its own namespace the operator reads the Secrets ModelKeys name,
	// and keeps its serving certificate and the CA bundle.
	ownNamespace := []rbacCheck{
		{Verb: "get", Resource: "secrets", Namespace: namespace, Name: "a-modelkey-kek"},
		{Verb: "create", Resource: "secrets", Namespace: namespace},
		{Verb: "get", Resource: "secrets", Namespace: namespace, Name: "modelguard-serving-cert"},
		{Verb: "update", Resource: "secrets", Namespace: namespace, Name: "modelguard-serving-cert"},
		{Verb: "create", Resource: "configmaps", Namespace: namespace},
		{Verb: "get", Resource: "configmaps", Namespace: namespace, Name: "modelguard-ca"},
		{Verb: "patch", Resource: "configmaps", Namespace: namespace, Name: "modelguard-ca"},
		// The admission guard's caBundle, whatever namespaces it watches.
		{Verb: "get", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "modelguard-admission-guard"},
		{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "modelguard-admission-guard"},
		{Verb: "patch", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "modelguard-admission-guard"},
	}

	tests := []struct {
		name    string
		args    []string
		allowed []rbacCheck
		denied  []rbacCheck
	}{
		{
			name: "cluster-wide",
			allowed: slices.Concat(ruleChecks(managerRules, ""), ruleChecks(managerRules, "team-b"), ownNamespace, []rbacCheck{
				{Verb: "create", Group: "coordination.k8s.io", Resource: "leases", Namespace: namespace},
				{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"},
				{Verb: "create", Group: "authorization.k8s.io", Resource: "subjectaccessreviews"},
			}),
			denied: neverAllowed,
		},
		{
			// Cluster-scoped resources cannot be granted by a Role: the
			// chart's manager-cluster-role grants them, and nothing else.
			name: "watching team-a only",
			args: []string{"--set", "watchNamespaces={team-a}"},
			allowed: slices.Concat(checksOfScope(ruleChecks(managerRules, "team-a"), false), checksOfScope(ruleChecks(managerRules, ""), true), ownNamespace,
				[]rbacCheck{
					{Verb: "create", Group: "coordination.k8s.io", Resource: "leases", Namespace: namespace},
					// Events about ModelKeys, which are cluster-scoped, go
					// to the default namespace.
					{Verb: "create", Group: "events.k8s.io", Resource: "events", Namespace: "default"},
				}),
			denied: append(append(checksOfScope(ruleChecks(managerRules, "team-b"), false),
				checksOfScope(ruleChecks(managerRules, ""), false)...), neverAllowed...),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := helm(t, append([]string{"install", release, chartDir, "--namespace", namespace, "--create-namespace"}, tc.args...)...)
			if !strings.Contains(out, "STATUS: deployed") {
				t.Fatalf("helm install output:\n%s", out)
			}
			if out, err := k.run("wait", "--for=condition=Established", "--timeout=60s",
				"crd/protectedmodels.ml.modelguard.dev", "crd/trainingjobs.ml.modelguard.dev", "crd/modelkeys.ml.modelguard.dev"); err != nil {
				t.Fatalf("waiting for the chart's CRDs: %v\n%s", err, out)
			}
			if out, err := k.run("apply", "--server-side", "--namespace", "team-a", "-k", filepath.Join(env.RepoRoot, "config/samples")); err != nil {
				t.Fatalf("creating the samples after helm install: %v\n%s", err, out)
			}
			if got := cp.leftovers(t, k, release); len(got) == 0 {
				t.Fatal("found no objects of the installed release; the leftover check below would prove nothing")
			}

			for _, check := range tc.allowed {
				if !subjectCan(t, cp.client, sa, check) {
					t.Errorf("the operator may not %s", check)
				}
			}
			for _, check := range tc.denied {
				if subjectCan(t, cp.client, sa, check) {
					t.Errorf("the operator may %s, which it does not need", check)
				}
			}

			out = helm(t, "uninstall", release, "--namespace", namespace, "--wait")
			if !strings.Contains(out, fmt.Sprintf("release %q uninstalled", release)) {
				t.Errorf("helm uninstall output:\n%s", out)
			}
			if left := cp.leftovers(t, k, release); len(left) > 0 {
				t.Errorf("helm uninstall left objects behind: %v", left)
			}
			// Helm keeps CRDs, and with them the users' models.
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := cp.client.Get(context.Background(), client.ObjectKey{Name: "protectedmodels.ml.modelguard.dev"}, crd); err != nil {
				t.Errorf("the CRD is gone after helm uninstall: %v", err)
			}
			if out, err := k.run("get", "pm/sentiment-classifier", "--namespace", "team-a"); err != nil {
				t.Errorf("the sample model is gone after helm uninstall: %v\n%s", err, out)
			}
		})
	}
}

// clusterScopedResources are the cluster-scoped resources in the manager's
// rules: ModelKeys, the Namespaces their selectors read, and TokenReviews.
var clusterScopedResources = map[string]bool{"modelkeys": true, "modelkeys/status": true, "namespaces": true, "tokenreviews": true}

// checksOfScope keeps the checks of namespaced resources or, with
// clusterScoped, only those of cluster-scoped ones.
func checksOfScope(checks []rbacCheck, clusterScoped bool) []rbacCheck {
	var out []rbacCheck
	for _, c := range checks {
		if clusterScopedResources[c.Resource] == clusterScoped {
			out = append(out, c)
		}
	}
	return out
}
