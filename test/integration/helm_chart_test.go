package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

const (
	chartDir          = "charts/modelguard"
	allOptionsValues  = "charts/modelguard/ci/all-options-values.yaml"
	chartReleaseName  = "modelguard"
	chartCRDProtected = "CustomResourceDefinition protectedmodels.ml.modelguard.dev"
	chartCRDTraining  = "CustomResourceDefinition trainingjobs.ml.modelguard.dev"
	chartCRDModelKey  = "CustomResourceDefinition modelkeys.ml.modelguard.dev"
)

// helmTemplate renders the chart as `helm install` would, CRDs included.
func helmTemplate(t *testing.T, namespace string, args ...string) string {
	t.Helper()
	base := []string{"template", chartReleaseName, chartDir, "--namespace", namespace, "--include-crds"}
	return runTool(t, helmEnv(t), helmPath(t), append(base, args...)...)
}

func TestHelmLint(t *testing.T) {
	for _, values := range [][]string{nil, {"--values", allOptionsValues}} {
		t.Run(strings.Join(append([]string{"defaults"}, values...), " "), func(t *testing.T) {
			// --strict turns lint warnings into failures.
			out := runTool(t, helmEnv(t), helmPath(t), append([]string{"lint", "--strict", chartDir}, values...)...)
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Errorf("helm lint output:\n%s", out)
			}
			if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Errorf("helm lint reports problems:\n%s", out)
			}
		})
	}
}

// TestHelmChartInSyncWithConfig checks what `make verify` also checks, so
// that `make test` fails on a chart that `make helm-sync` would change: the
// chart's CRDs are byte-identical to the generated ones, and it grants the
// manager exactly the RBAC rules generated from the controllers' markers.
func TestHelmChartInSyncWithConfig(t *testing.T) {
	generated, err := filepath.Glob(filepath.Join(env.RepoRoot, "config/crd/bases/*.yaml"))
	if err != nil || len(generated) == 0 {
		t.Fatalf("no generated CRDs in config/crd/bases (err %v)", err)
	}
	inChart, err := filepath.Glob(filepath.Join(env.RepoRoot, chartDir, "crds/*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := func(paths []string) []string {
		out := make([]string, len(paths))
		for i, p := range paths {
			out[i] = filepath.Base(p)
		}
		return out
	}
	if diff := cmp.Diff(names(generated), names(inChart)); diff != "" {
		t.Errorf("CRD files differ between config/crd/bases and the chart; run `make helm-sync` (-config +chart):\n%s", diff)
	}
	for _, p := range generated {
		assertSameBytes(t, p, filepath.Join(env.RepoRoot, chartDir, "crds", filepath.Base(p)))
	}
	assertSameBytes(t, filepath.Join(env.RepoRoot, "config/rbac/role.yaml"), filepath.Join(env.RepoRoot, chartDir, "files/manager-role.yaml"))

	// And the render really uses those rules, cluster-wide and per namespace.
	want := readRole(t, filepath.Join(env.RepoRoot, "config/rbac/role.yaml")).Rules
	objs := splitYAML(t, helmTemplate(t, "modelguard-system"))
	role := fromRendered[rbacv1.ClusterRole](t, findRendered(t, objs, "ClusterRole", "modelguard-manager-role"))
	if diff := cmp.Diff(want, role.Rules); diff != "" {
		t.Errorf("chart ClusterRole rules differ from config/rbac/role.yaml (-want +got):\n%s", diff)
	}
	objs = splitYAML(t, helmTemplate(t, "mg-all", "--values", allOptionsValues))
	for _, o := range objs {
		if o.GetKind() == "Role" && o.GetName() == "modelguard-manager-role" {
			if diff := cmp.Diff(want, fromRendered[rbacv1.Role](t, o.Unstructured).Rules); diff != "" {
				t.Errorf("chart Role in %s differs from config/rbac/role.yaml (-want +got):\n%s", o.GetNamespace(), diff)
			}
		}
	}
	// Under watchNamespaces a Role cannot grant the cluster-scoped rules, so
	// they, and only they, go into a ClusterRole.
	var wantCluster []rbacv1.PolicyRule
	for _, r := range want {
		var resources []string
		for _, res := range r.Resources {
			if clusterScopedResources[res] {
				resources = append(resources, res)
			}
		}
		if len(resources) > 0 {
			wantCluster = append(wantCluster, rbacv1.PolicyRule{APIGroups: r.APIGroups, Resources: resources, Verbs: r.Verbs})
		}
	}
	clusterRole := fromRendered[rbacv1.ClusterRole](t, findRendered(t, objs, "ClusterRole", "modelguard-manager-cluster-role"))
	if diff := cmp.Diff(normalizeRules(wantCluster), normalizeRules(clusterRole.Rules)); diff != "" {
		t.Errorf("chart ClusterRole under watchNamespaces differs from the cluster-scoped rules of config/rbac/role.yaml (-want +got):\n%s", diff)
	}
}

// TestManagerClusterRoleGrantsNoSecrets checks the promise of the threat
// model: the operator's cluster-wide rights include nothing on Secrets, so
// that it cannot read a tenant's. It reads only the Secrets of its own
// namespace, through a Role there (see assertKeyReleaseWiring).
func TestManagerClusterRoleGrantsNoSecrets(t *testing.T) {
	for _, r := range readRole(t, filepath.Join(env.RepoRoot, "config/rbac/role.yaml")).Rules {
		if slices.Contains(r.Resources, "secrets") || slices.Contains(r.Resources, "*") {
			t.Errorf("config/rbac/role.yaml grants %v on %v cluster-wide; remove the +kubebuilder:rbac marker that asks for it", r.Verbs, r.Resources)
		}
	}
	for _, values := range [][]string{nil, {"--values", allOptionsValues}} {
		objs := splitYAML(t, helmTemplate(t, "modelguard-system", values...))
		for _, id := range grantsOn(t, objs, "", "secrets") {
			if strings.HasPrefix(id, "ClusterRole ") {
				t.Errorf("chart (%v): %s grants rights on Secrets", values, id)
			}
		}
	}
}

func assertSameBytes(t *testing.T, want, got string) {
	t.Helper()
	a, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatalf("%v: run `make helm-sync`", err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%s is not a copy of %s: run `make helm-sync`", got, want)
	}
}

func readRole(t *testing.T, path string) *rbacv1.ClusterRole {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(bytes.TrimPrefix(data, []byte("---\n")), role); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	return role
}

var monitoringCRDsOnce sync.Once

// installMonitoringCRDs installs prometheus-operator's ServiceMonitor and
// PodMonitor CRDs (from its Go module, fetched by make), so that the chart's
// monitors are validated against their real schemas.
func installMonitoringCRDs(t *testing.T) {
	t.Helper()
	dir := os.Getenv("MONITORING_CRDS")
	if dir == "" {
		t.Fatal("MONITORING_CRDS is not set: run the tests through `make test`, which fetches prometheus-operator's CRDs")
	}
	var failure string
	monitoringCRDsOnce.Do(func() {
		k := newKubectl(t)
		if out, err := k.run("apply", "--server-side", "-f", dir); err != nil {
			failure = "installing monitoring CRDs from " + dir + ": " + err.Error() + "\n" + out
			return
		}
		if out, err := k.run("wait", "--for=condition=Established", "--timeout=60s",
			"crd/servicemonitors.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com"); err != nil {
			failure = "waiting for monitoring CRDs: " + err.Error() + "\n" + out
		}
	})
	if failure != "" {
		t.Fatal(failure)
	}
}

// TestHelmTemplateServerDryRun renders the chart with several value sets and
// applies each render to the real API server with a server-side dry run.
func TestHelmTemplateServerDryRun(t *testing.T) {
	common := []string{chartCRDProtected, chartCRDTraining, chartCRDModelKey}
	tests := []struct {
		name      string
		namespace string
		// release is the release name; empty means chartReleaseName.
		release string
		// watched namespaces that must exist for namespaced Roles.
		watched []string
		args    []string
		want    []string
		// wantArgs are manager arguments the values must produce.
		wantArgs []string
		// replicas of the manager, and the PodDisruptionBudget's
		// minAvailable when there is more than one.
		replicas, minAvailable int32
	}{
		{
			name:      "default values",
			namespace: "modelguard-system",
			want: append(common,
				"ServiceAccount modelguard-system/modelguard-controller-manager",
				"ClusterRole modelguard-manager-role",
				"ClusterRoleBinding modelguard-manager-rolebinding",
				"Role modelguard-system/modelguard-leader-election-role",
				"RoleBinding modelguard-system/modelguard-leader-election-rolebinding",
				"ClusterRole modelguard-metrics-auth-role",
				"ClusterRoleBinding modelguard-metrics-auth-rolebinding",
				"ClusterRole modelguard-metrics-reader",
				"Role modelguard-system/modelguard-manager-namespace-role",
				"RoleBinding modelguard-system/modelguard-manager-namespace-rolebinding",
				"Service modelguard-system/modelguard-controller-manager-metrics-service",
				"Service modelguard-system/modelguard-key-release",
				"Secret modelguard-system/modelguard-serving-cert",
				"ConfigMap modelguard-system/modelguard-ca",
				"Deployment modelguard-system/modelguard-controller-manager",
				"PodDisruptionBudget modelguard-system/modelguard-controller-manager",
				"Service modelguard-system/modelguard-webhook",
				"ValidatingWebhookConfiguration modelguard-admission-guard",
				"ClusterRole modelguard-admission-guard-role",
				"ClusterRoleBinding modelguard-admission-guard-rolebinding",
				"ClusterRole modelguard-viewer",
				"ClusterRole modelguard-editor",
				"ClusterRole modelguard-key-admin",
			),
			wantArgs: []string{
				"--leader-elect=true", "--health-probe-bind-address=:8081", "--metrics-bind-address=:8443",
				"--metrics-secure=true", "--unseal-image=modelguard:0.1.0",
				"--key-release-bind-address=:8444", "--key-release-service=modelguard-key-release",
				"--serving-cert-secret=modelguard-serving-cert", "--ca-configmap=modelguard-ca",
				"--webhook-service=modelguard-webhook", "--webhook-configuration=modelguard-admission-guard",
				"--admission-trusted-controllers=system:serviceaccount:kueue-system:kueue-controller-manager",
				"--zap-log-level=info",
			},
			replicas: 2, minAvailable: 1,
		},
		{
			name:      "every option set",
			namespace: "mg-all",
			watched:   []string{"team-a", "team-b"},
			args:      []string{"--values", allOptionsValues},
			want: append(common,
				"ServiceAccount mg-all/modelguard-controller-manager",
				"Role team-a/modelguard-manager-role",
				"RoleBinding team-a/modelguard-manager-rolebinding",
				"Role team-b/modelguard-manager-role",
				"RoleBinding team-b/modelguard-manager-rolebinding",
				"ClusterRole modelguard-manager-cluster-role",
				"ClusterRoleBinding modelguard-manager-cluster-rolebinding",
				"Role default/modelguard-manager-events-role",
				"RoleBinding default/modelguard-manager-events-rolebinding",
				"Role mg-all/modelguard-leader-election-role",
				"RoleBinding mg-all/modelguard-leader-election-rolebinding",
				"ClusterRole modelguard-metrics-auth-role",
				"ClusterRoleBinding modelguard-metrics-auth-rolebinding",
				"ClusterRole modelguard-metrics-reader",
				"Role mg-all/modelguard-manager-namespace-role",
				"RoleBinding mg-all/modelguard-manager-namespace-rolebinding",
				"Service mg-all/modelguard-controller-manager-metrics-service",
				"Service mg-all/modelguard-key-release",
				"Secret mg-all/modelguard-serving-cert",
				"ConfigMap mg-all/modelguard-ca",
				"Deployment mg-all/modelguard-controller-manager",
				"ServiceMonitor mg-all/modelguard-controller-manager",
				"PodMonitor mg-all/modelguard-models",
				"PodDisruptionBudget mg-all/modelguard-controller-manager",
				"Service mg-all/modelguard-webhook",
				"ValidatingWebhookConfiguration modelguard-admission-guard",
				"ClusterRole modelguard-admission-guard-role",
				"ClusterRoleBinding modelguard-admission-guard-rolebinding",
				"ClusterRole modelguard-viewer",
				"ClusterRole modelguard-editor",
				"ClusterRole modelguard-key-admin",
			),
			wantArgs: []string{
				"--leader-elect=true", "--health-probe-bind-address=:8081", "--metrics-bind-address=:9443",
				"--metrics-secure=true", "--unseal-image=registry.example.com/acme/modelguard-unseal:0.1.0-rc.1",
				"--key-release-bind-address=:8444", "--key-release-service=modelguard-key-release",
				"--serving-cert-secret=modelguard-serving-cert", "--ca-configmap=modelguard-ca",
				"--webhook-service=modelguard-webhook", "--webhook-configuration=modelguard-admission-guard",
				"--admission-trusted-controllers=system:serviceaccount:kueue-system:kueue-controller-manager,system:serviceaccount:batch-system:batch-admitter",
				"--zap-log-level=debug",
				`--default-gpu-tolerations=[{"effect":"NoSchedule","key":"gpu-pool","operator":"Exists"}]`,
				"--watch-namespaces=team-a,team-b",
			},
			replicas: 3, minAvailable: 2,
		},
		{
			// Another release name: the key-release and admission guard
			// objects are named after it, and the manager is told those
			// names. One replica has no PodDisruptionBudget, which would
			// block every drain, and needs no leader election.
			name:      "metrics and leader election off",
			namespace: "mg-plain",
			release:   "ml",
			args: []string{"--set", "metrics.enabled=false", "--set", "leaderElection.enabled=false", "--set", "replicas=1",
				"--set", "image.tag=dev", "--set", "logLevel=5", "--set-json", "admissionGuard.trustedControllers=[]"},
			want: append(common,
				"ServiceAccount mg-plain/ml-modelguard-controller-manager",
				"ClusterRole ml-modelguard-manager-role",
				"ClusterRoleBinding ml-modelguard-manager-rolebinding",
				"Role mg-plain/ml-modelguard-manager-namespace-role",
				"RoleBinding mg-plain/ml-modelguard-manager-namespace-rolebinding",
				"Service mg-plain/ml-modelguard-key-release",
				"Secret mg-plain/ml-modelguard-serving-cert",
				"ConfigMap mg-plain/ml-modelguard-ca",
				"Deployment mg-plain/ml-modelguard-controller-manager",
				"Service mg-plain/ml-modelguard-webhook",
				"ValidatingWebhookConfiguration ml-modelguard-admission-guard",
				"ClusterRole ml-modelguard-admission-guard-role",
				"ClusterRoleBinding ml-modelguard-admission-guard-rolebinding",
				"ClusterRole ml-modelguard-viewer",
				"ClusterRole ml-modelguard-editor",
				"ClusterRole ml-modelguard-key-admin",
			),
			wantArgs: []string{
				"--leader-elect=false", "--health-probe-bind-address=:8081", "--metrics-bind-address=0",
				"--unseal-image=modelguard:dev",
				"--key-release-bind-address=:8444", "--key-release-service=ml-modelguard-key-release",
				"--serving-cert-secret=ml-modelguard-serving-cert", "--ca-configmap=ml-modelguard-ca",
				"--webhook-service=ml-modelguard-webhook", "--webhook-configuration=ml-modelguard-admission-guard",
				// No trusted controllers: the flag is passed empty, not
				// left to its default.
				"--admission-trusted-controllers=",
				"--zap-log-level=5",
			},
			replicas: 1,
		},
	}
	installMonitoringCRDs(t)
	k := newKubectl(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, ns := range append([]string{tc.namespace}, tc.watched...) {
				ensureNamespace(t, env.Client, ns, nil)
			}
			release := tc.release
			if release == "" {
				release = chartReleaseName
			}
			render := runTool(t, helmEnv(t), helmPath(t), append([]string{"template", release, chartDir,
				"--namespace", tc.namespace, "--include-crds"}, tc.args...)...)
			objs := splitYAML(t, render)
			got, want := objectIDs(objs), slices.Clone(tc.want)
			sort.Strings(got)
			sort.Strings(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("rendered objects (-want +got):\n%s", diff)
			}

			out := serverDryRunApply(t, k, render)
			assertAllApplied(t, objs, out)

			fullname := release
			if !strings.Contains(release, "modelguard") {
				fullname += "-modelguard"
			}
			d := fromRendered[appsv1.Deployment](t, findRendered(t, objs, "Deployment", fullname+"-controller-manager"))
			if diff := cmp.Diff(tc.wantArgs, d.Spec.Template.Spec.Containers[0].Args); diff != "" {
				t.Errorf("manager args (-want +got):\n%s", diff)
			}
			assertManagerAcceptsArgs(t, d.Spec.Template.Spec.Containers[0].Args)
			assertPodPassesRestricted(t, d)
			assertKeyReleaseWiring(t, objs, tc.namespace)
			assertAdmissionGuardWiring(t, objs, tc.namespace)
			assertUserRoles(t, objs, fullname+"-")
			if tc.replicas > 1 {
				assertHighAvailability(t, objs, tc.replicas, tc.minAvailable)
			} else if got := ptr.Deref(d.Spec.Replicas, 1); got != tc.replicas {
				t.Errorf("the manager runs %d replicas, want %d", got, tc.replicas)
			}
		})
	}
}

var managerFlagPattern = regexp.MustCompile(`(?m)^\s+-(-?[a-z][a-z0-9-]*)`)

// assertManagerAcceptsArgs checks every flag the chart passes against the
// manager binary's own --help, so a renamed or missing flag fails here
// rather than in a crash-looping pod.
func assertManagerAcceptsArgs(t *testing.T, args []string) {
	t.Helper()
	bin := filepath.Join(binariesFromDockerfile(t), "manager")
	_, help, _ := runToolErr(nil, bin, "--help")
	known := map[string]bool{}
	for _, m := range managerFlagPattern.FindAllStringSubmatch(help, -1) {
		known[strings.TrimPrefix(m[1], "-")] = true
	}
	if !known["metrics-bind-address"] {
		t.Fatalf("could not read the manager's flags from --help:\n%s", help)
	}
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !known[name] {
			t.Errorf("the chart passes %s, which the manager does not accept", a)
		}
	}
}

// TestHelmValuesRejected checks that bad values fail the render with a
// message naming the problem, instead of installing a broken operator.
func TestHelmValuesRejected(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"replicas of the wrong type", []string{"--set", "replicas=two"}, []string{"/replicas", "want integer"}},
		{"unknown value", []string{"--set", "metrics.prot=8443"}, []string{"/metrics", "additional properties 'prot' not allowed"}},
		{"unknown log level", []string{"--set", "logLevel=verbose"}, []string{"/logLevel"}},
		{"namespace that is not a DNS label", []string{"--set", "watchNamespaces={Team_A}"}, []string{"/watchNamespaces/0"}},
		{"pull policy typo", []string{"--set", "image.pullPolicy=Sometimes"}, []string{"/image/pullPolicy"}},
		{"toleration with an unknown effect", []string{"--set-json", `tolerations=[{"key":"a","operator":"Exists","effect":"NoWay"}]`}, []string{"/tolerations/0/effect"}},
		{"several replicas without leader election", []string{"--set", "replicas=2", "--set", "leaderElection.enabled=false"},
			[]string{"replicas > 1 needs leaderElection.enabled=true"}},
		{"ServiceMonitor without metrics", []string{"--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"},
			[]string{"metrics.serviceMonitor.enabled needs metrics.enabled=true"}},
		{"a budget no drain could meet", []string{"--set", "podDisruptionBudget.minAvailable=2"},
			[]string{"podDisruptionBudget.minAvailable must be less than replicas"}},
		{"a budget of no pods", []string{"--set", "podDisruptionBudget.minAvailable=0"}, []string{"/podDisruptionBudget/minAvailable"}},
		{"trusted controllers in one string", []string{"--set-json", `admissionGuard.trustedControllers=["a,b"]`},
			[]string{"/admissionGuard/trustedControllers/0"}},
		{"default GPU toleration with an unknown effect",
			[]string{"--set-json", `gpu.defaultTolerations=[{"key":"gpu-pool","operator":"Exists","effect":"NoWay"}]`},
			[]string{"/gpu/defaultTolerations/0/effect"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"template", chartReleaseName, chartDir}, tc.args...)
			out, errOut, err := runToolErr(helmEnv(t), helmPath(t), args...)
			if err == nil {
				t.Fatalf("helm template %s succeeded, want an error; output:\n%s", strings.Join(tc.args, " "), out)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(errOut, want) {
					t.Errorf("error does not mention %q:\n%s", want, errOut)
				}
			}
		})
	}
}

// TestHelmCRDsServeSamples installs the chart's CRDs (as `helm template
// --include-crds` renders them) into a control plane of their own, where no
// CRD exists yet, and creates the samples from config/samples.
func TestHelmCRDsServeSamples(t *testing.T) {
	cp := startBareControlPlane(t)
	k := cp.kubectl(t)

	var crds []string
	for _, o := range splitYAML(t, helmTemplate(t, "modelguard-system")) {
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, "---\n"+string(o.raw))
		}
	}
	if len(crds) != 3 {
		t.Fatalf("render has %d CRDs, want 3", len(crds))
	}
	path := filepath.Join(t.TempDir(), "crds.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(crds, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := k.run("apply", "--server-side", "-f", path); err != nil {
		t.Fatalf("installing the chart's CRDs: %v\n%s", err, out)
	}
	if out, err := k.run("wait", "--for=condition=Established", "--timeout=60s",
		"crd/protectedmodels.ml.modelguard.dev", "crd/trainingjobs.ml.modelguard.dev", "crd/modelkeys.ml.modelguard.dev"); err != nil {
		t.Fatalf("waiting for the CRDs: %v\n%s", err, out)
	}
	ensureNamespace(t, cp.client, "samples", nil)
	out, err := k.run("apply", "--server-side", "--namespace", "samples", "-k", filepath.Join(env.RepoRoot, "config/samples"))
	if err != nil {
		t.Fatalf("creating the samples: %v\n%s", err, out)
	}
	for _, want := range []string{"protectedmodel.ml.modelguard.dev/sentiment-classifier serverside-applied", "trainingjob.ml.modelguard.dev/sentiment-finetune serverside-applied", "modelkey.ml.modelguard.dev/nlp-models serverside-applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply output lacks %q:\n%s", want, out)
		}
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := cp.client.Get(context.Background(), client.ObjectKey{Name: "protectedmodels.ml.modelguard.dev"}, crd); err != nil {
		t.Fatal(err)
	}
	if got := crd.Spec.Versions[0].Name; got != "v1alpha1" || !crd.Spec.Versions[0].Served || crd.Spec.Versions[0].Subresources == nil {
		t.Errorf("protectedmodels CRD version %s served=%v subresources=%v", got, crd.Spec.Versions[0].Served, crd.Spec.Versions[0].Subresources)
	}
}
