package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// certManagerValues turns on certManager.enabled: cert-manager issues the
// key-release serving certificate.
const certManagerValues = "charts/modelguard/ci/cert-manager-values.yaml"

var certManagerCRDsOnce sync.Once

// installCertManagerCRDs installs cert-manager's Certificate and Issuer CRDs
// (from its Go module, fetched by make into $CERT_MANAGER_CRDS), so that
// the chart's cert-manager objects are validated against their real
// schemas.
func installCertManagerCRDs(t *testing.T) {
	t.Helper()
	dir := os.Getenv("CERT_MANAGER_CRDS")
	if dir == "" {
		t.Fatal("CERT_MANAGER_CRDS is not set: run the tests through `make test`, which fetches cert-manager's CRDs")
	}
	if _, err := os.Stat(filepath.Join(dir, "cert-manager.io_certificates.yaml")); err != nil {
		t.Fatalf("CERT_MANAGER_CRDS=%s holds no Certificate CRD: run `make %s`: %v", dir, dir, err)
	}
	var failure string
	certManagerCRDsOnce.Do(func() {
		k := newKubectl(t)
		if out, err := k.run("apply", "--server-side", "-f", dir); err != nil {
			failure = "installing cert-manager CRDs from " + dir + ": " + err.Error() + "\n" + out
			return
		}
		if out, err := k.run("wait", "--for=condition=Established", "--timeout=60s",
			"crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io"); err != nil {
			failure = "waiting for cert-manager CRDs: " + err.Error() + "\n" + out
		}
	})
	if failure != "" {
		t.Fatal(failure)
	}
}

func TestHelmLintCertManager(t *testing.T) {
	out := runTool(t, helmEnv(t), helmPath(t), "lint", "--strict", chartDir, "--values", certManagerValues)
	if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
		t.Errorf("helm lint --strict with %s:\n%s", certManagerValues, out)
	}
}

// certManagerObjects are the objects certManager.enabled adds, for a
// release whose names start with fullname.
func certManagerObjects(namespace, fullname string) []string {
	return []string{
		"Issuer " + namespace + "/" + fullname + "-selfsigned",
		"Certificate " + namespace + "/" + fullname + "-root-ca",
		"Issuer " + namespace + "/" + fullname + "-ca-issuer",
		"Certificate " + namespace + "/" + fullname + "-serving-cert",
	}
}

// TestHelmCertManagerServerDryRun renders the chart with certManager.enabled
// and applies the render, with a server-side dry run, to the real API
// server with cert-manager's real CRDs, which validate the Issuers and
// Certificates. It checks that the render is the one without cert-manager
// plus the four cert-manager objects; that the serving Certificate names
// the Secret the manager is told to read and the key-release Service's
// names; that its issuer chain is self-signed CA, then CA issuer; that the
// manager is told --cert-source=cert-manager; and that the manager's Role
// keeps only get on Secrets.
func TestHelmCertManagerServerDryRun(t *testing.T) {
	tests := []struct {
		name      string
		namespace string
		release   string
		watched   []string
		// args are the helm arguments without cert-manager.
		args []string
	}{
		{name: "defaults", namespace: "modelguard-system", release: chartReleaseName},
		{name: "another release name", namespace: "mg-cm", release: "ml"},
		{name: "every option set", namespace: "mg-cm-all", release: chartReleaseName,
			watched: []string{"team-a", "team-b"}, args: []string{"--values", allOptionsValues}},
	}
	installMonitoringCRDs(t)
	installCertManagerCRDs(t)
	k := newKubectl(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, ns := range append([]string{tc.namespace}, tc.watched...) {
				ensureNamespace(t, env.Client, ns, nil)
			}
			render := func(extra ...string) string {
				return runTool(t, helmEnv(t), helmPath(t), append(append([]string{"template", tc.release, chartDir,
					"--namespace", tc.namespace, "--include-crds"}, tc.args...), extra...)...)
			}
			withoutCM := splitYAML(t, render())
			manifests := render("--values", certManagerValues)
			objs := splitYAML(t, manifests)

			fullname := tc.release
			if !strings.Contains(fullname, "modelguard") {
				fullname += "-modelguard"
			}
			// cert-manager writes the serving certificate's Secret, so the
			// chart must not own one: Helm and cert-manager would fight.
			servingSecret := "Secret " + tc.namespace + "/" + fullname + "-serving-cert"
			want := slices.DeleteFunc(objectIDs(withoutCM), func(id string) bool { return id == servingSecret })
			want = append(want, certManagerObjects(tc.namespace, fullname)...)
			got := objectIDs(objs)
			for _, id := range got {
				if strings.HasPrefix(id, "Secret ") {
					t.Errorf("the render with cert-manager holds %s", id)
				}
			}
			sort.Strings(want)
			sort.Strings(got)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("rendered objects (-the render without cert-manager plus its objects +got):\n%s", diff)
			}

			out := serverDryRunApply(t, k, manifests)
			assertAllApplied(t, objs, out)

			// The manager's arguments are those without cert-manager,
			// plus --cert-source=cert-manager.
			d := fromRendered[appsv1.Deployment](t, findRendered(t, objs, "Deployment", fullname+"-controller-manager"))
			args := d.Spec.Template.Spec.Containers[0].Args
			plain := fromRendered[appsv1.Deployment](t, findRendered(t, withoutCM, "Deployment", fullname+"-controller-manager")).
				Spec.Template.Spec.Containers[0].Args
			i := slices.IndexFunc(plain, func(a string) bool { return strings.HasPrefix(a, "--ca-configmap=") })
			wantArgs := slices.Insert(slices.Clone(plain), i+1, "--cert-source=cert-manager")
			if diff := cmp.Diff(wantArgs, args); diff != "" {
				t.Errorf("manager args (-want +got):\n%s", diff)
			}
			assertManagerAcceptsArgs(t, args)

			// What the API server would store, after pruning and
			// defaulting: a field its schema dropped would be missing here.
			stored := dryRunStored(t, k, objs, "cert-manager.io/v1")
			service := managerFlag(t, args, "key-release-service")
			webhookService := managerFlag(t, args, "webhook-service")
			secret := managerFlag(t, args, "serving-cert-secret")
			serving := stored["Certificate/"+secret]
			if serving == nil {
				t.Fatalf("no Certificate named like --serving-cert-secret=%s; the API server returned %v", secret, mapsKeys(stored))
			}
			type certView struct {
				SecretName, IssuerKind, IssuerName, IssuerGroup string
				IsCA                                            bool
				DNSNames, Usages                                []string
				KeyAlgorithm, KeyEncoding, Rotation             string
				KeySize                                         int64
			}
			view := func(o *unstructured.Unstructured) certView {
				var v certView
				v.SecretName, _, _ = unstructured.NestedString(o.Object, "spec", "secretName")
				v.IssuerKind, _, _ = unstructured.NestedString(o.Object, "spec", "issuerRef", "kind")
				v.IssuerName, _, _ = unstructured.NestedString(o.Object, "spec", "issuerRef", "name")
				v.IssuerGroup, _, _ = unstructured.NestedString(o.Object, "spec", "issuerRef", "group")
				v.IsCA, _, _ = unstructured.NestedBool(o.Object, "spec", "isCA")
				v.DNSNames, _, _ = unstructured.NestedStringSlice(o.Object, "spec", "dnsNames")
				v.Usages, _, _ = unstructured.NestedStringSlice(o.Object, "spec", "usages")
				v.KeyAlgorithm, _, _ = unstructured.NestedString(o.Object, "spec", "privateKey", "algorithm")
				v.KeyEncoding, _, _ = unstructured.NestedString(o.Object, "spec", "privateKey", "encoding")
				v.Rotation, _, _ = unstructured.NestedString(o.Object, "spec", "privateKey", "rotationPolicy")
				// JSON numbers decode as float64.
				if size, ok, _ := unstructured.NestedFieldNoCopy(o.Object, "spec", "privateKey", "size"); ok {
					if f, ok := size.(float64); ok {
						v.KeySize = int64(f)
					}
				}
				return v
			}
			wantServing := certView{
				SecretName: secret, IssuerKind: "Issuer", IssuerName: fullname + "-ca-issuer", IssuerGroup: "cert-manager.io",
				DNSNames: []string{service + "." + tc.namespace + ".svc", service + "." + tc.namespace + ".svc.cluster.local",
					webhookService + "." + tc.namespace + ".svc", webhookService + "." + tc.namespace + ".svc.cluster.local"},
				Usages:       []string{"server auth", "digital signature"},
				KeyAlgorithm: "ECDSA", KeyEncoding: "PKCS8", Rotation: "Always", KeySize: 256,
			}
			if diff := cmp.Diff(wantServing, view(serving)); diff != "" {
				t.Errorf("serving Certificate as the API server stores it (-want +got):\n%s", diff)
			}

			// The chain: the CA issuer signs with the CA Certificate's
			// Secret, which the self-signed issuer issued.
			caIssuer := stored["Issuer/"+fullname+"-ca-issuer"]
			caSecret, _, _ := unstructured.NestedString(caIssuer.Object, "spec", "ca", "secretName")
			rootCA := stored["Certificate/"+fullname+"-root-ca"]
			wantRoot := certView{SecretName: caSecret, IssuerKind: "Issuer", IssuerName: fullname + "-selfsigned", IssuerGroup: "cert-manager.io",
				IsCA: true, KeyAlgorithm: "ECDSA", Rotation: "Always", KeySize: 256}
			if diff := cmp.Diff(wantRoot, view(rootCA)); diff != "" {
				t.Errorf("CA Certificate (-want +got):\n%s", diff)
			}
			if caSecret == secret {
				t.Errorf("the CA's Secret %s is the serving certificate's", caSecret)
			}
			if _, ok, _ := unstructured.NestedMap(stored["Issuer/"+fullname+"-selfsigned"].Object, "spec", "selfSigned"); !ok {
				t.Errorf("Issuer %s-selfsigned is not self-signed: %v", fullname, stored["Issuer/"+fullname+"-selfsigned"].Object["spec"])
			}

			assertCertManagerRBAC(t, objs, tc.namespace, d.Spec.Template.Spec.ServiceAccountName, secret, managerFlag(t, args, "ca-configmap"))
			assertPodPassesRestricted(t, d)
		})
	}
}

// dryRunStored applies the objects of apiVersion with a server-side dry run
// and returns what the API server would store, by "Kind/name".
func dryRunStored(t *testing.T, k *kubectlRunner, objs []renderedObject, apiVersion string) map[string]*unstructured.Unstructured {
	t.Helper()
	var docs []string
	for _, o := range objs {
		if o.GetAPIVersion() == apiVersion {
			docs = append(docs, "---\n"+string(o.raw))
		}
	}
	path := filepath.Join(t.TempDir(), "objects.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(docs, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := k.run("apply", "--server-side", "--dry-run=server", "--field-manager=packaging-test", "-o", "json", "-f", path)
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server -o json: %v\n%s", err, out)
	}
	var list struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) == 0 {
		// One object comes back on its own, not in a List.
		var one map[string]any
		if err := json.Unmarshal([]byte(out), &one); err != nil {
			t.Fatalf("decoding kubectl output: %v\n%s", err, out)
		}
		list.Items = []map[string]any{one}
	}
	stored := map[string]*unstructured.Unstructured{}
	for _, item := range list.Items {
		u := &unstructured.Unstructured{Object: item}
		stored[u.GetKind()+"/"+u.GetName()] = u
	}
	if len(stored) != len(docs) {
		t.Errorf("the API server returned %d objects for %d applied: %v", len(stored), len(docs), mapsKeys(stored))
	}
	return stored
}

func mapsKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// assertCertManagerRBAC checks the manager's rights in its namespace when
// cert-manager writes the serving certificate: get on Secrets (ModelKeys'
// and the serving certificate's) and nothing else on them; the CA
// ConfigMap as before; nothing on Secrets outside the namespace.
func assertCertManagerRBAC(t *testing.T, objs []renderedObject, namespace, serviceAccount, secret, configMap string) {
	t.Helper()
	var rules []rbacv1.PolicyRule
	for _, o := range objs {
		if o.GetKind() != "RoleBinding" || o.GetNamespace() != namespace {
			continue
		}
		b := fromRendered[rbacv1.RoleBinding](t, o.Unstructured)
		if b.RoleRef.Kind != "Role" || !slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == serviceAccount && s.Namespace == namespace
		}) {
			continue
		}
		rules = append(rules, fromRendered[rbacv1.Role](t, findRendered(t, objs, "Role", b.RoleRef.Name)).Rules...)
	}
	for _, c := range []struct {
		check rbacCheck
		want  bool
	}{
		{rbacCheck{Verb: "get", Resource: "secrets", Name: secret}, true},
		{rbacCheck{Verb: "get", Resource: "secrets", Name: "a-modelkey-kek"}, true},
		{rbacCheck{Verb: "create", Resource: "secrets"}, false},
		{rbacCheck{Verb: "update", Resource: "secrets", Name: secret}, false},
		{rbacCheck{Verb: "patch", Resource: "secrets", Name: secret}, false},
		{rbacCheck{Verb: "delete", Resource: "secrets", Name: secret}, false},
		{rbacCheck{Verb: "list", Resource: "secrets"}, false},
		{rbacCheck{Verb: "watch", Resource: "secrets"}, false},
		{rbacCheck{Verb: "get", Resource: "configmaps", Name: configMap}, true},
		{rbacCheck{Verb: "create", Resource: "configmaps"}, true},
		{rbacCheck{Verb: "patch", Resource: "configmaps", Name: configMap}, true},
		{rbacCheck{Verb: "update", Resource: "configmaps", Name: configMap}, true},
		{rbacCheck{Verb: "get", Resource: "configmaps", Name: "someone-elses"}, false},
		// cert-manager's objects are the chart's; the manager needs none.
		{rbacCheck{Verb: "get", Group: "cert-manager.io", Resource: "certificates", Name: secret}, false},
	} {
		c.check.Namespace = namespace
		if got := rulesAllow(rules, c.check); got != c.want {
			t.Errorf("the manager's Roles in %s allow %s: %v, want %v", namespace, c.check, got, c.want)
		}
	}
	var secretRules []rbacv1.PolicyRule
	for _, r := range rules {
		if slices.Contains(r.Resources, "secrets") {
			secretRules = append(secretRules, r)
		}
	}
	if diff := cmp.Diff([]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}}}, secretRules); diff != "" {
		t.Errorf("the manager's rules on Secrets in %s (-want +got):\n%s", namespace, diff)
	}
	for _, id := range grantsOn(t, objs, "", "secrets") {
		if !strings.HasPrefix(id, "Role "+namespace+"/") {
			t.Errorf("%s grants rights on Secrets outside the operator's namespace", id)
		}
	}
}

// TestHelmCertManagerObjectsValidated shows that the dry run really
// validates the chart's cert-manager objects against cert-manager's CRDs:
// the render with one mistake in the serving Certificate is refused,
// naming the field.
func TestHelmCertManagerObjectsValidated(t *testing.T) {
	installCertManagerCRDs(t)
	ensureNamespace(t, env.Client, "modelguard-system", nil)
	objs := splitYAML(t, helmTemplate(t, "modelguard-system", "--values", certManagerValues))
	serving := findRendered(t, objs, "Certificate", "modelguard-serving-cert")
	k := newKubectl(t)
	tests := []struct {
		name    string
		mutate  func(map[string]any)
		wantErr string
	}{
		{"a misspelt field", func(spec map[string]any) { spec["dnsName"] = spec["dnsNames"]; delete(spec, "dnsNames") }, "dnsName"},
		{"an unknown key algorithm", func(spec map[string]any) { spec["privateKey"].(map[string]any)["algorithm"] = "DSA" }, "spec.privateKey.algorithm"},
		{"no issuer", func(spec map[string]any) { delete(spec, "issuerRef") }, "spec.issuerRef"},
		{"a duration that is not one", func(spec map[string]any) { spec["duration"] = 90 }, "spec.duration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := serving.DeepCopy()
			tc.mutate(bad.Object["spec"].(map[string]any))
			data, err := yaml.Marshal(bad.Object)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "certificate.yaml")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := k.run("apply", "--server-side", "--dry-run=server", "--field-manager=packaging-test", "-f", path)
			if err == nil {
				t.Fatalf("the API server accepted the Certificate with %s:\n%s", tc.name, out)
			}
			if !strings.Contains(out, tc.wantErr) {
				t.Errorf("the refusal does not name %s:\n%s", tc.wantErr, out)
			}
		})
	}
}

// TestHelmCertManagerValuesRejected: certManager takes only a boolean
// enabled.
func TestHelmCertManagerValuesRejected(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--set", "certManager.enabled=yes"}, "/certManager/enabled"},
		{[]string{"--set", "certManager.issuer=letsencrypt"}, "additional properties 'issuer' not allowed"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errOut, err := runToolErr(helmEnv(t), helmPath(t), append([]string{"template", chartReleaseName, chartDir}, tc.args...)...)
			if err == nil {
				t.Fatalf("helm template %v succeeded:\n%s", tc.args, out)
			}
			if !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("error does not mention %q:\n%s", tc.wantErr, errOut)
			}
		})
	}
}
