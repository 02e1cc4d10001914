package cluster

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"
)

func testConfig(t *testing.T) Config {
	t.Helper()
	cfg := DefaultConfig("/repo")
	cfg.WorkDir = "/var/lib/mg-test"
	cfg.NodeName = "node-a"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("default config is invalid: %v", err)
	}
	return cfg
}

func TestValidateRejectsBadConfigs(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"relative work dir", func(c *Config) { c.WorkDir = "work" }, "absolute"},
		{"no hostname", func(c *Config) { c.NodeName = "" }, "node name"},
		{"bridge outside pods", func(c *Config) { c.BridgeIP = "10.99.0.1" }, "inside the pod CIDR"},
		{"API service outside services", func(c *Config) { c.APIServiceIP = "10.88.0.10" }, "inside the service CIDR"},
		{"overlapping ranges", func(c *Config) { c.ServiceCIDR = "10.88.128.0/17"; c.APIServiceIP = "10.88.128.1" }, "overlap"},
		{"negative GPUs", func(c *Config) { c.GPUCount = -1 }, "negative"},
		{"socket path too long", func(c *Config) { c.WorkDir = "/" + strings.Repeat("d", 80) }, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			tt.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// The containerd settings below each fixed a failure on this kind of VM; a
// refactor must not drop them.
func TestContainerdConfigCarriesTheFixesThisVMNeeds(t *testing.T) {
	cfg := testConfig(t)
	out, err := cfg.renderContainerdConfig()
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, want := range []string{
		"restrict_oom_score_adj = true",
		"SystemdCgroup = false",
		`sandbox_image = "modelguard.local/pause:1"`,
		`root = "/var/lib/mg-test/containerd-root"`,
		`state = "/var/lib/mg-test/run/containerd"`,
		`address = "/var/lib/mg-test/run/containerd.sock"`,
		`Root = "/var/lib/mg-test/run/runc"`,
		`conf_dir = "/var/lib/mg-test/run/cni/net.d"`,
		`bin_dir = "/usr/lib/cni"`,
		"netns_mounts_under_state_dir = true",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("containerd config lacks %q:\n%s", want, text)
		}
	}
}

func TestCNIConfigKeepsPodsOnTheMachine(t *testing.T) {
	cfg := testConfig(t)
	out, err := cfg.renderCNIConfig()
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type   string `json:"type"`
			Bridge string `json:"bridge"`
			IPMasq bool   `json:"ipMasq"`
			IPAM   struct {
				DataDir string                `json:"dataDir"`
				Ranges  [][]map[string]string `json:"ranges"`
				Routes  []map[string]string   `json:"routes"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(out, &conf); err != nil {
		t.Fatalf("CNI config is not JSON: %v\n%s", err, out)
	}
	if conf.Name != CNINetworkName || len(conf.Plugins) != 2 || conf.Plugins[0].Type != "bridge" || conf.Plugins[1].Type != "portmap" {
		t.Fatalf("unexpected plugin chain: %s", out)
	}
	bridge := conf.Plugins[0]
	if bridge.Bridge != "cni0" || bridge.IPMasq {
		t.Errorf("bridge = %q ipMasq = %v, want cni0 without masquerading", bridge.Bridge, bridge.IPMasq)
	}
	if diff := cmp.Diff([][]map[string]string{{{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}}}, bridge.IPAM.Ranges); diff != "" {
		t.Errorf("ranges (-want +got):\n%s", diff)
	}
	// No default route: a pod can reach the pod and Service ranges only.
	if diff := cmp.Diff([]map[string]string{{"dst": "10.96.0.0/16"}}, bridge.IPAM.Routes); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(bridge.IPAM.DataDir, "/var/lib/mg-test/") {
		t.Errorf("IPAM state %q is outside the work dir", bridge.IPAM.DataDir)
	}
}

func TestKubeletConfig(t *testing.T) {
	cfg := testConfig(t)
	out, err := cfg.renderKubeletConfig()
	if err != nil {
		t.Fatal(err)
	}
	var kc kubeletv1beta1.KubeletConfiguration
	if err := yaml.UnmarshalStrict(out, &kc); err != nil {
		t.Fatalf("kubelet config does not parse strictly: %v\n%s", err, out)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"kind", kc.Kind, "KubeletConfiguration"},
		{"cgroupDriver", kc.CgroupDriver, "cgroupfs"},
		{"failCgroupV1", *kc.FailCgroupV1, false},
		{"failSwapOn", *kc.FailSwapOn, false},
		{"imageGCHighThresholdPercent", *kc.ImageGCHighThresholdPercent, int32(100)},
		{"address", kc.Address, "0.0.0.0"},
		{"anonymous auth", *kc.Authentication.Anonymous.Enabled, false},
		{"webhook authn", *kc.Authentication.Webhook.Enabled, true},
		{"client CA", kc.Authentication.X509.ClientCAFile, "/var/lib/mg-test/pki/ca.crt"},
		{"authz mode", string(kc.Authorization.Mode), "Webhook"},
		{"runtime endpoint", kc.ContainerRuntimeEndpoint, "unix:///var/lib/mg-test/run/containerd.sock"},
		{"resolvConf", *kc.ResolverConfig, "/var/lib/mg-test/run/resolv.conf"},
		{"podLogsDir", kc.PodLogsDir, "/var/lib/mg-test/run/pod-logs"},
		{"memory eviction", kc.EvictionHard["memory.available"], "100Mi"},
	}
	for _, c := range checks {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.what, diff)
		}
	}
}

func TestKubeProxyConfigLeavesConntrackSysctlsAlone(t *testing.T) {
	cfg := testConfig(t)
	out, err := cfg.renderKubeProxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := yaml.Unmarshal(out, &conf); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"maxPerCore": float64(0), "min": float64(0), "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}
	if diff := cmp.Diff(want, conf["conntrack"]); diff != "" {
		t.Errorf("conntrack (-want +got):\n%s", diff)
	}
	if conf["mode"] != "iptables" || conf["clusterCIDR"] != "10.88.0.0/16" {
		t.Errorf("mode/clusterCIDR = %v/%v", conf["mode"], conf["clusterCIDR"])
	}
	if ipt := conf["iptables"].(map[string]any); ipt["localhostNodePorts"] != false {
		t.Errorf("localhostNodePorts = %v, want false (it would set route_localnet)", ipt["localhostNodePorts"])
	}
}

func TestComponentArgs(t *testing.T) {
	cfg := testConfig(t)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"kube-apiserver", cfg.apiserverArgs(), []string{
			"--bind-address=0.0.0.0", "--advertise-address=10.88.0.1", "--service-cluster-ip-range=10.96.0.0/16",
			"--etcd-servers=http://127.0.0.1:12379", "--authorization-mode=Node,RBAC",
			"--service-account-signing-key-file=/var/lib/mg-test/pki/sa.key",
			"--encryption-provider-config=/var/lib/mg-test/config/encryption-config.yaml",
			"--audit-policy-file=/var/lib/mg-test/config/audit-policy.yaml", "--audit-log-path=/var/lib/mg-test/logs/kube-apiserver-audit.log",
		}},
		{"local-volume-provisioner", cfg.provisionerArgs(), []string{"--root=/var/lib/mg-test/run/volumes", "--node=node-a", "--provisioner-name=modelguard.dev/local-volume"}},
		{"kube-controller-manager", cfg.controllerManagerArgs(), []string{"--controllers=*,-nodeipam", "--leader-elect=false", "--root-ca-file=/var/lib/mg-test/pki/ca.crt"}},
		{"kubelet", cfg.kubeletArgs(), []string{"--node-ip=10.88.0.1", "--hostname-override=node-a", "--root-dir=/var/lib/mg-test/run/kubelet",
			"--node-labels=nvidia.com/gpu.present=true,nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB,nvidia.com/gpu.memory=81920,nvidia.com/gpu.count=2"}},
		{"kube-router", cfg.kubeRouterArgs(), []string{"--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false", "--hostname-override=node-a"}},
		{"fake-gpu-plugin", cfg.fakeGPUPluginArgs(), []string{"--count=2", "--resource-name=nvidia.com/gpu", "--plugin-dir=/var/lib/kubelet/device-plugins"}},
		{"etcd", cfg.etcdArgs(), []string{"--listen-client-urls=http://127.0.0.1:12379", "--data-dir=/var/lib/mg-test/run/etcd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			have := map[string]bool{}
			for _, a := range tt.args {
				have[a] = true
			}
			for _, w := range tt.want {
				if !have[w] {
					t.Errorf("missing %s in %v", w, tt.args)
				}
			}
		})
	}
}

func TestPKIAndKubeconfigs(t *testing.T) {
	cfg := testConfig(t)
	cfg.WorkDir = t.TempDir()
	p := cfg.paths()
	if err := cfg.generatePKI(p.PKI); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(p.PKI, "ca.crt")))

	for _, spec := range cfg.certSpecs() {
		t.Run(spec.Name, func(t *testing.T) {
			cert := readCert(t, filepath.Join(p.PKI, spec.Name+".crt"))
			if cert.Subject.CommonName != spec.CommonName {
				t.Errorf("CN = %q, want %q", cert.Subject.CommonName, spec.CommonName)
			}
			if diff := cmp.Diff(spec.Organizations, cert.Subject.Organization); diff != "" && len(spec.Organizations) > 0 {
				t.Errorf("O (-want +got):\n%s", diff)
			}
			usage := x509.ExtKeyUsageClientAuth
			if spec.Server {
				usage = x509.ExtKeyUsageServerAuth
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("does not verify against the CA for %v: %v", usage, err)
			}
			if _, err := os.Stat(filepath.Join(p.PKI, spec.Name+".key")); err != nil {
				t.Errorf("key missing: %v", err)
			}
		})
	}

	// Pods reach the API server through the kubernetes Service's ClusterIP
	// and the bridge address; both must be in its certificate.
	apiserver := readCert(t, filepath.Join(p.PKI, "kube-apiserver.crt"))
	for _, ip := range []string{"127.0.0.1", "10.88.0.1", "10.96.0.1"} {
		if err := apiserver.VerifyHostname(ip); err != nil {
			t.Errorf("API server certificate does not cover %s: %v", ip, err)
		}
	}
	if err := apiserver.VerifyHostname("kubernetes.default.svc"); err != nil {
		t.Errorf("API server certificate does not cover kubernetes.default.svc: %v", err)
	}
	kubelet := readCert(t, filepath.Join(p.PKI, "kubelet-serving.crt"))
	for _, host := range []string{"node-a", "10.88.0.1"} {
		if err := kubelet.VerifyHostname(host); err != nil {
			t.Errorf("kubelet serving certificate does not cover %s: %v", host, err)
		}
	}

	data, err := cfg.renderKubeconfig("admin")
	if err != nil {
		t.Fatal(err)
	}
	kc, err := clientcmd.Load(data)
	if err != nil {
		t.Fatalf("admin kubeconfig does not load: %v", err)
	}
	restCfg, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		t.Fatalf("admin kubeconfig is unusable: %v", err)
	}
	if restCfg.Host != "https://127.0.0.1:6443" || restCfg.CertFile != filepath.Join(p.PKI, "admin.crt") {
		t.Errorf("admin kubeconfig host/cert = %s/%s", restCfg.Host, restCfg.CertFile)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
