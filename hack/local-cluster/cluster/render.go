package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// This file renders every configuration file and command line the cluster
// uses, as pure functions of the Config, so that they can be unit-tested.

// renderKubeconfig returns a kubeconfig that authenticates as the client
// certificate <pki>/<certName>.crt.
func (c Config) renderKubeconfig(certName string) ([]byte, error) {
	pki := c.paths().PKI
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["modelguard-local"] = &clientcmdapi.Cluster{
		Server:               c.APIServerURL(),
		CertificateAuthority: filepath.Join(pki, "ca.crt"),
	}
	cfg.AuthInfos[certName] = &clientcmdapi.AuthInfo{
		ClientCertificate: filepath.Join(pki, certName+".crt"),
		ClientKey:         filepath.Join(pki, certName+".key"),
	}
	cfg.Contexts["modelguard-local"] = &clientcmdapi.Context{Cluster: "modelguard-local", AuthInfo: certName, Namespace: "default"}
	cfg.CurrentContext = "modelguard-local"
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("rendering the %s kubeconfig: %w", certName, err)
	}
	return out, nil
}

func (c Config) kubeconfigFor(component string) string {
	return filepath.Join(c.paths().Kubeconfigs, component+".kubeconfig")
}

// containerdTemplate is containerd 1.6's config (version 2). Each setting
// below was needed on this kind of machine; see the comments.
var containerdTemplate = template.Must(template.New("containerd").Parse(`version = 2
root = "{{.Root}}"
state = "{{.State}}"
# Plugins that would touch paths outside the work dir or need what the VM
# lacks.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  # The upstream pause image cannot be pulled here; ours is imported at Up.
  sandbox_image = "{{.PauseImage}}"
  # The VM lacks CAP_SYS_RESOURCE: without this runc fails with "can't get
  # final child's PID from pipe" when it lowers a container's OOM score.
  restrict_oom_score_adj = true
  # Network namespaces live under our state dir, so Down finds their mounts.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # The kubelet runs with the cgroupfs driver (no systemd here).
        SystemdCgroup = false
        Root = "{{.RuncRoot}}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.CNIBinDir}}"
    conf_dir = "{{.CNIConfDir}}"
    max_conf_num = 1
`))

// DebianCNIBinDir is where Debian's containernetworking-plugins installs the
// bridge, host-local and portmap plugins.
const DebianCNIBinDir = "/usr/lib/cni"

func (c Config) renderContainerdConfig() ([]byte, error) {
	p := c.paths()
	var buf bytes.Buffer
	err := containerdTemplate.Execute(&buf, map[string]string{
		"Root": p.ContainerdRoot, "State": p.ContainerdState, "Socket": p.ContainerdSocket,
		"PauseImage": c.PauseImage, "RuncRoot": p.RuncRoot, "CNIBinDir": DebianCNIBinDir, "CNIConfDir": p.CNIConfDir,
	})
	if err != nil {
		return nil, fmt.Errorf("rendering the containerd config: %w", err)
	}
	return buf.Bytes(), nil
}

// renderCNIConfig returns the pod network: one bridge with host-local IPAM.
// Pods get routes only to the pod and Service ranges, no default route, so
// nothing they send can leave the machine, and no masquerading is needed.
func (c Config) renderCNIConfig() ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       CNINetworkName,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      c.BridgeName,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": c.paths().CNIIPAMDir,
					"ranges":  [][]map[string]string{{{"subnet": c.PodCIDR, "gateway": c.BridgeIP}}},
					"routes":  []map[string]string{{"dst": c.ServiceCIDR}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("rendering the CNI config: %w", err)
	}
	return out, nil
}

// renderKubeletConfig returns the KubeletConfiguration. The settings that
// depart from the defaults are the ones this VM needs: cgroup v1 with the
// cgroupfs driver, swap allowed, eviction thresholds low enough for a shared
// 2-core machine, and no image garbage collection (images are imported, not
// pulled, so a collected image could not come back).
func (c Config) renderKubeletConfig() ([]byte, error) {
	p := c.paths()
	kc := kubeletv1beta1.KubeletConfiguration{
		TypeMeta:           metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1beta1", Kind: "KubeletConfiguration"},
		Address:            "0.0.0.0",
		Port:               10250,
		ReadOnlyPort:       0,
		HealthzBindAddress: "127.0.0.1",
		HealthzPort:        ptr.To[int32](10248),
		TLSCertFile:        filepath.Join(p.PKI, "kubelet-serving.crt"),
		TLSPrivateKeyFile:  filepath.Join(p.PKI, "kubelet-serving.key"),
		Authentication: kubeletv1beta1.KubeletAuthentication{
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: filepath.Join(p.PKI, "ca.crt")},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
		},
		Authorization:               kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		CgroupDriver:                "cgroupfs",
		FailCgroupV1:                ptr.To(false),
		FailSwapOn:                  ptr.To(false),
		ContainerRuntimeEndpoint:    "unix://" + p.ContainerdSocket,
		PodLogsDir:                  p.PodLogs,
		VolumePluginDir:             p.VolumePlugins,
		ResolverConfig:              ptr.To(p.ResolvConf),
		ImageGCHighThresholdPercent: ptr.To[int32](100),
		ImageGCLowThresholdPercent:  ptr.To[int32](99),
		EvictionHard: map[string]string{
			"memory.available":  "100Mi",
			"nodefs.available":  "1%",
			"nodefs.inodesFree": "1%",
			"imagefs.available": "1%",
		},
		SerializeImagePulls: ptr.To(false),
		// Pods resolve through CoreDNS (the kube-dns Service); CoreDNS itself
		// (dnsPolicy Default) gets ResolverConfig, where nothing answers.
		ClusterDNS:         []string{c.ClusterDNS},
		ClusterDomain:      ClusterDomain,
		RotateCertificates: false,
		MaxPods:            110,
	}
	out, err := yaml.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("rendering the kubelet config: %w", err)
	}
	return out, nil
}

// renderKubeProxyConfig returns kube-proxy's configuration in iptables mode.
// It leaves the conntrack sysctls alone (zero means "do not change") and does
// not route NodePorts on localhost, which would set route_localnet; NodePorts
// answer only on the bridge address.
func (c Config) renderKubeProxyConfig() ([]byte, error) {
	conf := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"mode":               "iptables",
		"clusterCIDR":        c.PodCIDR,
		"hostnameOverride":   c.NodeName,
		"healthzBindAddress": "127.0.0.1:10256",
		"metricsBindAddress": "127.0.0.1:10249",
		"nodePortAddresses":  []string{c.BridgeIP + "/32"},
		"clientConnection":   map[string]any{"kubeconfig": c.kubeconfigFor("kube-proxy")},
		"conntrack": map[string]any{
			"maxPerCore":            0,
			"min":                   0,
			"tcpEstablishedTimeout": "0s",
			"tcpCloseWaitTimeout":   "0s",
		},
		"iptables": map[string]any{"localhostNodePorts": false, "masqueradeAll": false, "syncPeriod": "30s"},
	}
	out, err := yaml.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("rendering the kube-proxy config: %w", err)
	}
	return out, nil
}

// renderResolvConf is the upstream resolver of pods with dnsPolicy Default
// (CoreDNS among them): their own loopback, where nothing listens. A pod must
// never send a DNS query to the host's upstream resolver, an address outside
// the machine; pods with the default dnsPolicy ClusterFirst use CoreDNS.
func renderResolvConf() []byte {
	return []byte("# ModelGuard local cluster: no upstream DNS; lookups of outside names fail fast inside the pod.\nnameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n")
}

func (c Config) etcdArgs() []string {
	client := "http://127.0.0.1:" + strconv.Itoa(c.EtcdPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(c.EtcdPeerPort)
	return []string{
		"--name=default",
		"--data-dir=" + c.paths().EtcdData,
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=default=" + peer,
		// A throwaway test cluster: durability is not worth the fsync cost on
		// a disk other engineers are compiling on.
		"--unsafe-no-fsync=true",
		"--quota-backend-bytes=2147483648",
		"--log-level=warn",
	}
}

func (c Config) apiserverArgs() []string {
	p := c.paths()
	pki := func(name string) string { return filepath.Join(p.PKI, name) }
	return []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(c.EtcdPort),
		// Listening beyond loopback lets pods reach the API server: the
		// default/kubernetes Service (APIServiceIP) points at the advertise
		// address, the host's address on the pod bridge.
		"--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(c.APIServerPort),
		"--advertise-address=" + c.BridgeIP,
		"--service-cluster-ip-range=" + c.ServiceCIDR,
		"--tls-cert-file=" + pki("kube-apiserver.crt"),
		"--tls-private-key-file=" + pki("kube-apiserver.key"),
		"--client-ca-file=" + pki("ca.crt"),
		"--kubelet-client-certificate=" + pki("kube-apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + pki("kube-apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + pki("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki("sa.pub"),
		"--service-account-signing-key-file=" + pki("sa.key"),
		"--authorization-mode=Node,RBAC",
		// ServiceAccount (pods get tokens) and PodSecurity are on by default.
		"--enable-admission-plugins=NodeRestriction",
		// Secrets are encrypted before they reach etcd.
		"--encryption-provider-config=" + p.EncryptionConfig,
		"--audit-policy-file=" + p.AuditPolicy,
		"--audit-log-path=" + p.AuditLog,
		"--audit-log-format=json",
		"--audit-log-maxsize=100",
		"--audit-log-maxbackup=1",
		"--allow-privileged=false",
		"--profiling=false",
		"--v=0",
	}
}

func (c Config) controllerManagerArgs() []string {
	p := c.paths()
	kc := c.kubeconfigFor("kube-controller-manager")
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		// Node IPAM would hand out pod CIDRs; the bridge's host-local IPAM
		// owns the single node's addresses instead.
		"--controllers=*,-nodeipam",
		"--service-cluster-ip-range=" + c.ServiceCIDR,
		"--service-account-private-key-file=" + filepath.Join(p.PKI, "sa.key"),
		"--root-ca-file=" + filepath.Join(p.PKI, "ca.crt"),
		"--cluster-signing-cert-file=" + filepath.Join(p.PKI, "ca.crt"),
		"--cluster-signing-key-file=" + filepath.Join(p.PKI, "ca.key"),
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--profiling=false",
		"--v=0",
	}
}

func (c Config) schedulerArgs() []string {
	kc := c.kubeconfigFor("kube-scheduler")
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--profiling=false",
		"--v=0",
	}
}

func (c Config) kubeletArgs() []string {
	p := c.paths()
	return []string{
		"--config=" + filepath.Join(p.Configs, "kubelet.yaml"),
		"--kubeconfig=" + c.kubeconfigFor("kubelet"),
		"--root-dir=" + p.KubeletDir,
		"--hostname-override=" + c.NodeName,
		// The host's address on the pod bridge: the API server reaches the
		// kubelet there (InternalIP), never on an outside interface.
		"--node-ip=" + c.BridgeIP,
		"--node-labels=" + strings.Join(c.nodeLabels(), ","),
		"--v=0",
	}
}

// nodeLabels are the labels GPU Feature Discovery would set on a GPU node.
func (c Config) nodeLabels() []string {
	return []string{
		"nvidia.com/gpu.present=true",
		"nvidia.com/gpu.product=" + c.GPUProduct,
		"nvidia.com/gpu.memory=" + strconv.Itoa(c.GPUMemoryMiB),
		"nvidia.com/gpu.count=" + strconv.Itoa(c.GPUCount),
	}
}

func (c Config) kubeProxyArgs() []string {
	return []string{"--config=" + filepath.Join(c.paths().Configs, "kube-proxy.yaml"), "--v=0"}
}

// KubeRouterHealthPort is kube-router's health endpoint.
const KubeRouterHealthPort = 20244

func (c Config) kubeRouterArgs() []string {
	return []string{
		"--kubeconfig=" + c.kubeconfigFor("kube-router"),
		"--hostname-override=" + c.NodeName,
		// Firewall only: kube-proxy proxies Services and the bridge CNI wires
		// pods; kube-router only enforces NetworkPolicies.
		"--run-firewall=true",
		"--run-router=false",
		"--run-service-proxy=false",
		"--enable-cni=false",
		"--service-cluster-ip-range=" + c.ServiceCIDR,
		"--health-port=" + strconv.Itoa(KubeRouterHealthPort),
		"--metrics-port=0",
		"--iptables-sync-period=1m",
		"--v=1",
	}
}

func (c Config) fakeGPUPluginArgs() []string {
	return []string{
		"--count=" + strconv.Itoa(c.GPUCount),
		"--resource-name=" + c.GPUResource,
		"--plugin-dir=" + DevicePluginDir,
	}
}
