package cluster

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

func TestKubeletUsesClusterDNS(t *testing.T) {
	cfg := testConfig(t)
	data, err := cfg.renderKubeletConfig()
	if err != nil {
		t.Fatal(err)
	}
	var kc kubeletv1beta1.KubeletConfiguration
	if err := yaml.Unmarshal(data, &kc); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{DefaultClusterDNS}, kc.ClusterDNS); diff != "" {
		t.Errorf("clusterDNS (-want +got):\n%s", diff)
	}
	if kc.ClusterDomain != "cluster.local" {
		t.Errorf("clusterDomain = %q, want cluster.local", kc.ClusterDomain)
	}
	_, _, _, _, _, svc := cfg.coreDNSObjects()
	if svc.Spec.ClusterIP != kc.ClusterDNS[0] || svc.Name != "kube-dns" {
		t.Errorf("the kube-dns Service is %s at %s, want kube-dns at the kubelet's clusterDNS %s", svc.Name, svc.Spec.ClusterIP, kc.ClusterDNS[0])
	}
}

func TestCorefileHasNoUpstream(t *testing.T) {
	corefile := coreDNSCorefile()
	for _, want := range []string{"kubernetes cluster.local in-addr.arpa ip6.arpa", "ready :8181", ".:53"} {
		if !strings.Contains(corefile, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, corefile)
		}
	}
	// Pods must never send a query off the machine.
	if strings.Contains(corefile, "forward") {
		t.Errorf("Corefile forwards to an upstream resolver:\n%s", corefile)
	}
}

func TestStorageClasses(t *testing.T) {
	classes, _, _ := storageObjects()
	got := map[string]string{}
	for _, sc := range classes {
		if sc.Provisioner != ProvisionerName {
			t.Errorf("StorageClass %s: provisioner %q, want %q", sc.Name, sc.Provisioner, ProvisionerName)
		}
		got[sc.Name] = sc.Annotations[EncryptedAnnotation]
	}
	if diff := cmp.Diff(map[string]string{"encrypted": "true", "standard": ""}, got); diff != "" {
		t.Errorf("classes and their %s annotation (-want +got):\n%s", EncryptedAnnotation, diff)
	}
}

func TestEncryptionConfigHasAFreshKey(t *testing.T) {
	a, err := renderEncryptionConfig()
	if err != nil {
		t.Fatal(err)
	}
	b, err := renderEncryptionConfig()
	if err != nil {
		t.Fatal(err)
	}
	if string(a) == string(b) {
		t.Error("two renders share a key")
	}
	var conf struct {
		Resources []struct {
			Resources []string         `json:"resources"`
			Providers []map[string]any `json:"providers"`
		} `json:"resources"`
	}
	if err := yaml.Unmarshal(a, &conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Resources) != 1 || cmp.Diff([]string{"secrets"}, conf.Resources[0].Resources) != "" || len(conf.Resources[0].Providers) != 1 || conf.Resources[0].Providers[0]["secretbox"] == nil {
		t.Errorf("encryption config = %s, want secrets under secretbox alone (no identity fallback)", a)
	}
}

func TestAuditPolicy(t *testing.T) {
	policy := AuditPolicy([]string{"models"})
	rules := policy["rules"].([]any)
	first := rules[0].(map[string]any)
	if first["level"] != "Metadata" || !strings.Contains(toYAML(t, first), "pods/exec") || !strings.Contains(toYAML(t, first), "pods/portforward") {
		t.Errorf("first rule = %s, want Metadata for exec, attach, port-forward, proxy", toYAML(t, first))
	}
	if !strings.Contains(toYAML(t, rules[1]), "secrets") {
		t.Errorf("second rule = %s, want Secret reads", toYAML(t, rules[1]))
	}
	if writes := rules[len(rules)-2].(map[string]any); cmp.Diff([]string{"models"}, writes["namespaces"]) != "" {
		t.Errorf("writes rule = %s, want it scoped to the protected namespaces", toYAML(t, writes))
	}
	for _, r := range rules {
		if rm := r.(map[string]any); rm["users"] != nil && rm["userGroups"] != nil {
			t.Errorf("rule %s has both users and userGroups: it would match only users in those groups", toYAML(t, rm))
		}
		if lvl := r.(map[string]any)["level"]; lvl != "Metadata" && lvl != "None" {
			t.Errorf("rule at level %v: only Metadata keeps bodies (Secret values) out of the log", lvl)
		}
	}
}

func toYAML(t *testing.T, v any) string {
	t.Helper()
	out, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestParseLoopList(t *testing.T) {
	out := "/dev/loop0 /var/lib/mg/run/volumes.img\n/dev/loop1 /other.img\n/dev/loop2 /var/lib/mg/run/volumes.img (deleted)\n"
	if diff := cmp.Diff([]string{"/dev/loop0", "/dev/loop2"}, parseLoopList(out, "/var/lib/mg/run/volumes.img")); diff != "" {
		t.Errorf("parseLoopList (-want +got):\n%s", diff)
	}
}

func TestRenderKueue(t *testing.T) {
	in := `apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta2.visibility.kueue.x-k8s.io
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kueue-manager-config
data:
  controller_manager_config.yaml: upstream
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kueue-controller-manager
spec:
  template:
    spec:
      containers:
      - name: manager
        image: upstream:main
        imagePullPolicy: Always
        securityContext: {readOnlyRootFilesystem: true}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: kueue-mutating-webhook-configuration
webhooks:
- name: mpod.kb.io
- name: mjob.kb.io
`
	out, err := renderKueue([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	got := string(out)
	for _, want := range []string{"image: " + images.KueueRef, "imagePullPolicy: Never", "leaderElect: false", "batch/job", "name: mjob.kb.io", "type: RuntimeDefault"} {
		if !strings.Contains(got, want) {
			t.Errorf("rendered Kueue lacks %q:\n%s", want, got)
		}
	}
	for _, unwanted := range []string{"APIService", "upstream", "mpod.kb.io"} {
		if strings.Contains(got, unwanted) {
			t.Errorf("rendered Kueue still has %q:\n%s", unwanted, got)
		}
	}
}
