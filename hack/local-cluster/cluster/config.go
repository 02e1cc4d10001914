// Package cluster runs a real single-node Kubernetes on this machine for the
// demo and the e2e tests: etcd, kube-apiserver, kube-scheduler,
// kube-controller-manager, a kubelet on containerd, kube-proxy (iptables),
// kube-router (NetworkPolicy only) and a fake GPU device plugin.
//
// Everything it changes on the host is recorded first in the work dir
// (records.json): the processes it starts (by PID and start time), the
// sysctls, iptables chains and ipsets that existed before, the cni0 bridge.
// Down, and an Up that finds the records of a run that died, undo exactly
// that, and then verify that nothing of theirs is left.
package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// Config describes one local cluster. Zero fields take the defaults of
// DefaultConfig.
type Config struct {
	// WorkDir holds the cluster's state, certificates, logs, records and the
	// kubeconfig. It is outside the repository so that any clone (CI clones
	// into a new folder each run) finds the records of a run that died.
	WorkDir string
	// K8sBinDir holds etcd, kube-apiserver, kube-controller-manager,
	// kube-scheduler, kubelet, kube-proxy and kubectl.
	K8sBinDir string
	// KubeRouter is the kube-router binary.
	KubeRouter string
	// FakeGPUPlugin is the fake GPU device plugin binary.
	FakeGPUPlugin string
	// Provisioner is the local-volume-provisioner binary (a host process).
	Provisioner string
	// Images are OCI image tarballs imported into containerd at Up.
	Images []string

	// NodeName is the machine's hostname: the API server reaches the kubelet
	// for logs and exec by a name that must resolve.
	NodeName string
	// PodCIDR is the bridge's subnet; BridgeIP, its first address, is the
	// host's address on the bridge, the pods' gateway, the node IP and the
	// address the API server advertises to pods.
	PodCIDR     string
	BridgeIP    string
	ServiceCIDR string
	// APIServiceIP is the ClusterIP of the default/kubernetes Service.
	APIServiceIP string
	// ClusterDNS is the kube-dns Service's ClusterIP, where CoreDNS answers.
	ClusterDNS string
	BridgeName string

	APIServerPort int
	EtcdPort      int
	EtcdPeerPort  int

	GPUCount      int
	GPUResource   string
	GPUProduct    string
	GPUMemoryMiB  int
	PauseImage    string
	StartTimeout  time.Duration
	StopTimeout   time.Duration
	KubernetesVer string
}

// Default values. Pods and Services live in ranges local to the harness; pods
// get no default route, only routes to these two ranges, so that nothing they
// send can leave the machine.
const (
	DefaultWorkDir     = "/var/lib/modelguard-cluster"
	DefaultPodCIDR     = "10.88.0.0/16"
	DefaultBridgeIP    = "10.88.0.1"
	DefaultServiceCIDR = "10.96.0.0/16"
	DefaultAPIService  = "10.96.0.1"
	DefaultBridgeName  = "cni0"
	DefaultPauseImage  = "modelguard.local/pause:1"
	// CNINetworkName names our CNI network; libcni's cache files carry it.
	CNINetworkName = "modelguard"
)

// DefaultConfig returns the defaults for a repository at repoRoot: binaries
// under its bin/, images from bin/images (`local-cluster images`), and the
// work dir from MODELGUARD_CLUSTER_DIR or DefaultWorkDir.
func DefaultConfig(repoRoot string) Config {
	host, _ := os.Hostname()
	return Config{
		WorkDir:       workDirFromEnv(),
		K8sBinDir:     filepath.Join(repoRoot, "bin", "k8s", "1.37.2"),
		KubeRouter:    filepath.Join(repoRoot, "bin", "kube-router", "v2.1.0", "kube-router"),
		FakeGPUPlugin: filepath.Join(repoRoot, "bin", "images", images.FakeGPUPluginBinary),
		Provisioner:   filepath.Join(repoRoot, "bin", "images", images.ProvisionerBinary),
		Images:        images.Tarballs(filepath.Join(repoRoot, "bin", "images")),
		NodeName:      host,
		PodCIDR:       DefaultPodCIDR,
		BridgeIP:      DefaultBridgeIP,
		ServiceCIDR:   DefaultServiceCIDR,
		APIServiceIP:  DefaultAPIService,
		ClusterDNS:    DefaultClusterDNS,
		BridgeName:    DefaultBridgeName,
		APIServerPort: 6443,
		EtcdPort:      12379,
		EtcdPeerPort:  12380,
		GPUCount:      2,
		GPUResource:   "nvidia.com/gpu",
		GPUProduct:    "NVIDIA-A100-SXM4-80GB",
		GPUMemoryMiB:  81920,
		PauseImage:    DefaultPauseImage,
		StartTimeout:  90 * time.Second,
		StopTimeout:   20 * time.Second,
		KubernetesVer: "v1.37.2",
	}
}

func workDirFromEnv() string {
	if d := os.Getenv("MODELGUARD_CLUSTER_DIR"); d != "" {
		return d
	}
	return DefaultWorkDir
}

// Validate checks what can be checked without touching the host.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.WorkDir) {
		return fmt.Errorf("work dir %q must be an absolute path", c.WorkDir)
	}
	if c.NodeName == "" {
		return fmt.Errorf("node name is empty: the machine has no hostname")
	}
	_, pods, err := net.ParseCIDR(c.PodCIDR)
	if err != nil {
		return fmt.Errorf("pod CIDR %q: %w", c.PodCIDR, err)
	}
	if ip := net.ParseIP(c.BridgeIP); ip == nil || !pods.Contains(ip) {
		return fmt.Errorf("bridge IP %q must be an address inside the pod CIDR %s", c.BridgeIP, c.PodCIDR)
	}
	_, svcs, err := net.ParseCIDR(c.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("service CIDR %q: %w", c.ServiceCIDR, err)
	}
	if ip := net.ParseIP(c.APIServiceIP); ip == nil || !svcs.Contains(ip) {
		return fmt.Errorf("API service IP %q must be inside the service CIDR %s", c.APIServiceIP, c.ServiceCIDR)
	}
	if pods.Contains(svcs.IP) || svcs.Contains(pods.IP) {
		return fmt.Errorf("pod CIDR %s and service CIDR %s overlap", c.PodCIDR, c.ServiceCIDR)
	}
	if ip := net.ParseIP(c.ClusterDNS); ip == nil || !svcs.Contains(ip) || c.ClusterDNS == c.APIServiceIP {
		return fmt.Errorf("cluster DNS IP %q must be inside the service CIDR %s and differ from the API service IP", c.ClusterDNS, c.ServiceCIDR)
	}
	if c.GPUCount < 0 {
		return fmt.Errorf("GPU count %d is negative", c.GPUCount)
	}
	// Unix socket paths are limited to 107 bytes; the longest we create is
	// containerd's ttrpc socket.
	if sock := c.paths().ContainerdSocket + ".ttrpc"; len(sock) > 100 {
		return fmt.Errorf("work dir %q is too long: the containerd socket %s exceeds the unix socket path limit", c.WorkDir, sock)
	}
	return nil
}

// Paths are the files and directories of a cluster under its work dir.
type Paths struct {
	Records          string
	Lock             string
	PKI              string
	Logs             string
	Configs          string
	Kubeconfigs      string
	AdminKubeconfig  string
	EtcdData         string
	ContainerdRoot   string // kept between runs: it caches the imported images
	ContainerdState  string
	ContainerdSocket string
	RuncRoot         string
	KubeletDir       string
	PodLogs          string
	VolumePlugins    string
	CNIConfDir       string
	CNIIPAMDir       string
	ResolvConf       string
	// EncryptionConfig holds the key that encrypts Secrets in etcd.
	EncryptionConfig string
	AuditPolicy      string
	// AuditLog is the API server's audit log.
	AuditLog string
}

func (c Config) paths() Paths {
	w := c.WorkDir
	return Paths{
		Records:          filepath.Join(w, "records.json"),
		Lock:             filepath.Join(w, "lock"),
		PKI:              filepath.Join(w, "pki"),
		Logs:             filepath.Join(w, "logs"),
		Configs:          filepath.Join(w, "config"),
		Kubeconfigs:      filepath.Join(w, "kubeconfigs"),
		AdminKubeconfig:  filepath.Join(w, "kubeconfig"),
		EtcdData:         filepath.Join(w, "run", "etcd"),
		ContainerdRoot:   filepath.Join(w, "containerd-root"),
		ContainerdState:  filepath.Join(w, "run", "containerd"),
		ContainerdSocket: filepath.Join(w, "run", "containerd.sock"),
		RuncRoot:         filepath.Join(w, "run", "runc"),
		KubeletDir:       filepath.Join(w, "run", "kubelet"),
		PodLogs:          filepath.Join(w, "run", "pod-logs"),
		VolumePlugins:    filepath.Join(w, "run", "volume-plugins"),
		CNIConfDir:       filepath.Join(w, "run", "cni", "net.d"),
		CNIIPAMDir:       filepath.Join(w, "run", "cni", "ipam"),
		ResolvConf:       filepath.Join(w, "run", "resolv.conf"),
		EncryptionConfig: filepath.Join(w, "config", "encryption-config.yaml"),
		AuditPolicy:      filepath.Join(w, "config", "audit-policy.yaml"),
		AuditLog:         filepath.Join(w, "logs", "kube-apiserver-audit.log"),
	}
}

// Paths returns the cluster's paths.
func (c Config) Paths() Paths { return c.paths() }

// ScratchDir is a directory for a demo's or a test's files on the node
// (e.g. a hostPath PersistentVolume). Down removes it with the rest of the
// run.
func (c Config) ScratchDir() string { return filepath.Join(c.runDir(), "scratch") }

// runDir holds everything a run creates and Down removes.
func (c Config) runDir() string { return filepath.Join(c.WorkDir, "run") }

// KubeconfigPath is the admin kubeconfig for kubectl and the tests.
func (c Config) KubeconfigPath() string { return c.paths().AdminKubeconfig }

// APIServerURL is the API server's address for clients on the host.
func (c Config) APIServerURL() string {
	return fmt.Sprintf("https://127.0.0.1:%d", c.APIServerPort)
}

func (c Config) bin(name string) string { return filepath.Join(c.K8sBinDir, name) }
