package cluster

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster drives one local cluster.
type Cluster struct {
	cfg  Config
	p    Paths
	logf func(format string, args ...any)

	mu      sync.Mutex
	rec     *Records
	started map[string]*startedProcess
}

// New checks the config and returns a Cluster. logf receives progress lines.
func New(cfg Config, logf func(format string, args ...any)) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid local-cluster config: %w", err)
	}
	return &Cluster{cfg: cfg, p: cfg.paths(), logf: logf, started: map[string]*startedProcess{}}, nil
}

// Config returns the cluster's configuration.
func (c *Cluster) Config() Config { return c.cfg }

// requiredTools are the host programs the node needs, with the Debian
// package that provides each.
var requiredTools = map[string]string{
	"containerd":                    "containerd",
	"containerd-shim-runc-v2":       "containerd",
	"ctr":                           "containerd",
	"runc":                          "runc",
	"iptables":                      "iptables",
	"iptables-save":                 "iptables",
	"iptables-restore":              "iptables",
	"ipset":                         "ipset",
	"conntrack":                     "conntrack",
	"ip":                            "iproute2",
	"mkfs.ext4":                     "e2fsprogs",
	"losetup":                       "mount",
	"mount":                         "mount",
	DebianCNIBinDir + "/bridge":     "containernetworking-plugins",
	DebianCNIBinDir + "/host-local": "containernetworking-plugins",
	DebianCNIBinDir + "/portmap":    "containernetworking-plugins",
}

// checkHost fails clearly when this is not a machine the cluster can run on.
func (c *Cluster) checkHost() error {
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root: it runs containerd and the kubelet and changes iptables and sysctls (CI runs as root)")
	}
	if _, err := os.Stat("/etc/debian_version"); err != nil {
		return errors.New("the local cluster needs a Debian-like system (no /etc/debian_version): its node runs Debian's containerd, runc and CNI plugins")
	}
	var missing []string
	for tool, pkg := range requiredTools {
		if filepath.IsAbs(tool) {
			if _, err := os.Stat(tool); err != nil {
				missing = append(missing, tool+" (Debian package "+pkg+")")
			}
		} else if _, err := lookPath(tool); err != nil {
			missing = append(missing, tool+" (Debian package "+pkg+")")
		}
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		if _, err := os.Stat(c.cfg.bin(bin)); err != nil {
			missing = append(missing, c.cfg.bin(bin)+" (make cluster-binaries)")
		}
	}
	for _, bin := range []string{c.cfg.KubeRouter, c.cfg.FakeGPUPlugin, c.cfg.Provisioner} {
		if _, err := os.Stat(bin); err != nil {
			missing = append(missing, bin+" (make cluster-binaries)")
		}
	}
	for _, img := range c.cfg.Images {
		if _, err := os.Stat(img); err != nil {
			missing = append(missing, img+" (make cluster-images)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing: %s; `make cluster-up` installs and builds them all", strings.Join(missing, ", "))
	}
	return nil
}

func lookPath(tool string) (string, error) {
	for _, dir := range append(filepath.SplitList(os.Getenv("PATH")), "/usr/sbin", "/sbin") {
		p := filepath.Join(dir, tool)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", tool)
}

// lock serializes Up and Down on this machine (one cluster per machine: it
// owns cni0 and its ports).
func (c *Cluster) lock() (func(), error) {
	return flockWait(context.Background(), c.p.Lock, fmt.Sprintf("up/down (pid %d)", os.Getpid()), 2*time.Minute, nil)
}

// ErrAlreadyUp is returned by Up when a healthy cluster from an earlier Up is
// running; it is left as it is.
var ErrAlreadyUp = errors.New("the local cluster is already up")

// UpOptions tune Up.
type UpOptions struct {
	// Fresh tears down a cluster that is already up, healthy or not, instead
	// of reusing it: the tests get a cluster of this clone's binaries and
	// images, with no objects left from before.
	Fresh bool
}

// Up brings the cluster up and returns once pods can run: the node is Ready
// with its fake GPUs, and every component answers its health check. A
// healthy cluster that is already up is kept (ErrAlreadyUp) unless
// opts.Fresh; the remains of a run that died are cleaned up first, from its
// records. On failure Up tears down what it started, so that the host is left
// as found.
func (c *Cluster) Up(ctx context.Context, opts UpOptions) error {
	if err := c.checkHost(); err != nil {
		return err
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()

	prev, err := loadRecords(c.p.Records)
	if err != nil {
		return err
	}
	if prev != nil {
		healthy := c.healthy(ctx, prev) == nil
		switch {
		case healthy && !opts.Fresh:
			return ErrAlreadyUp
		case healthy:
			c.logf("A cluster is already up (started %s); tearing it down for a fresh one", prev.Started.Format(time.RFC3339))
		default:
			c.logf("Found the records of an earlier run (started %s) that was not torn down; cleaning up from them", prev.Started.Format(time.RFC3339))
		}
		if err := c.teardown(ctx, prev); err != nil {
			return fmt.Errorf("cleaning up the earlier run: %w", err)
		}
	}
	if err := c.checkPorts(); err != nil {
		return err
	}

	began := time.Now()
	if err := c.up(ctx); err != nil {
		c.logf("Bring-up failed: %v", err)
		if os.Getenv("LOCAL_CLUSTER_KEEP_ON_FAILURE") != "" {
			c.logf("LOCAL_CLUSTER_KEEP_ON_FAILURE is set: leaving the cluster as it is for inspection; `make cluster-down` removes it")
			return err
		}
		c.logf("Tearing down what was started")
		if terr := c.teardown(context.WithoutCancel(ctx), c.rec); terr != nil {
			return errors.Join(err, fmt.Errorf("tearing down after the failure: %w", terr))
		}
		return err
	}
	c.logf("Cluster up in %.1fs", time.Since(began).Seconds())
	return nil
}

type portUse struct {
	addr      string
	component string
}

func (c *Cluster) ports() []portUse {
	return []portUse{
		{":" + strconv.Itoa(c.cfg.APIServerPort), "kube-apiserver"},
		{"127.0.0.1:" + strconv.Itoa(c.cfg.EtcdPort), "etcd (client)"},
		{"127.0.0.1:" + strconv.Itoa(c.cfg.EtcdPeerPort), "etcd (peer)"},
		{":10250", "kubelet"},
		{"127.0.0.1:10248", "kubelet (healthz)"},
		{"127.0.0.1:10257", "kube-controller-manager"},
		{"127.0.0.1:10259", "kube-scheduler"},
		{"127.0.0.1:10256", "kube-proxy (healthz)"},
		{"127.0.0.1:10249", "kube-proxy (metrics)"},
		{":" + strconv.Itoa(KubeRouterHealthPort), "kube-router (health)"},
	}
}

func (c *Cluster) checkPorts() error {
	var busy []string
	for _, pu := range c.ports() {
		l, err := net.Listen("tcp", pu.addr)
		if err != nil {
			busy = append(busy, fmt.Sprintf("%s for %s (%v)", pu.addr, pu.component, err))
			continue
		}
		l.Close()
	}
	if len(busy) > 0 {
		return fmt.Errorf("ports the local cluster needs are in use: %s; stop what holds them (e.g. `ss -ltnp`)", strings.Join(busy, "; "))
	}
	return nil
}

func (c *Cluster) saveRecords() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.save(c.p.Records)
}

func (c *Cluster) recordProcess(pr ProcessRecord) error {
	c.mu.Lock()
	c.rec.Processes = append(c.rec.Processes, pr)
	c.mu.Unlock()
	return c.saveRecords()
}

// hostDirsComponentsCreate are directories outside the work dir that the
// node's components create whatever their configuration says: the kubelet's
// container log symlinks and device-plugin socket (its path is hard-coded,
// not under --root-dir), containerd's shim sockets, libcni's cache and
// util-linux's mount state (the kubelet runs mount(8)).
var hostDirsComponentsCreate = []string{"/var/log/containers", "/var/lib/kubelet", "/run/containerd", "/var/lib/cni", "/run/mount"}

// DevicePluginDir is where the kubelet serves device-plugin registration;
// the kubelet hard-codes it.
const DevicePluginDir = "/var/lib/kubelet/device-plugins"

// ownFiles are files the components leave in hostDirsComponentsCreate that
// Down may remove with them (the device manager's checkpoint).
var ownFiles = map[string]bool{"kubelet_internal_checkpoint": true, "utab": true, "utab.lock": true}

func (c *Cluster) recordBaseline(ctx context.Context) error {
	rec := &Records{
		Started: time.Now(),
		Sysctls: snapshotSysctls(),
		Chains:  snapshotChains(ctx),
	}
	sets, err := listIPSets(ctx)
	if err != nil {
		return fmt.Errorf("listing ipsets before Up: %w", err)
	}
	rec.IPSets = sets
	if rec.NFTables, err = listNFTables(ctx); err != nil {
		return fmt.Errorf("listing nftables tables before Up: %w", err)
	}
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hierarchies {
		dir := filepath.Join(h, kubeletCgroupName)
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			rec.Cgroups = append(rec.Cgroups, dir)
		}
	}
	for _, d := range hostDirsComponentsCreate {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			rec.CreatedDirs = append(rec.CreatedDirs, d)
		}
	}
	c.rec = rec
	return c.saveRecords()
}

func (c *Cluster) writeFiles() error {
	p := c.p
	if err := os.RemoveAll(c.cfg.runDir()); err != nil {
		return fmt.Errorf("clearing %s: %w", c.cfg.runDir(), err)
	}
	// Keep one generation of logs: a failed Up tears down, and the next Up
	// must not overwrite what explains the failure.
	if fileExists(p.Logs) {
		previous := p.Logs + ".previous"
		if err := os.RemoveAll(previous); err != nil {
			return fmt.Errorf("clearing %s: %w", previous, err)
		}
		if err := os.Rename(p.Logs, previous); err != nil {
			return fmt.Errorf("keeping the previous logs: %w", err)
		}
	}
	for _, d := range []string{p.Logs, p.Configs, p.Kubeconfigs, p.EtcdData, p.ContainerdRoot, p.ContainerdState, p.RuncRoot, p.KubeletDir, p.PodLogs, p.VolumePlugins, p.CNIConfDir, p.CNIIPAMDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	if err := os.Chmod(p.EtcdData, 0o700); err != nil {
		return fmt.Errorf("restricting %s: %w", p.EtcdData, err)
	}
	if err := c.cfg.generatePKI(p.PKI); err != nil {
		return err
	}
	for _, name := range []string{"admin", "kubelet", "kube-scheduler", "kube-controller-manager", "kube-proxy", "kube-router", "local-volume-provisioner"} {
		data, err := c.cfg.renderKubeconfig(name)
		if err != nil {
			return err
		}
		path := c.cfg.kubeconfigFor(name)
		if name == "admin" {
			path = p.AdminKubeconfig
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	files := map[string]func() ([]byte, error){
		filepath.Join(p.Configs, "containerd.toml"):           c.cfg.renderContainerdConfig,
		filepath.Join(p.Configs, "kubelet.yaml"):              c.cfg.renderKubeletConfig,
		filepath.Join(p.Configs, "kube-proxy.yaml"):           c.cfg.renderKubeProxyConfig,
		filepath.Join(p.CNIConfDir, "10-modelguard.conflist"): c.cfg.renderCNIConfig,
		p.ResolvConf:       func() ([]byte, error) { return renderResolvConf(), nil },
		p.AuditPolicy:      renderAuditPolicy,
		p.EncryptionConfig: renderEncryptionConfig,
	}
	for path, render := range files {
		data, err := render()
		if err != nil {
			return err
		}
		// The encryption config holds a key: readable by root only.
		mode := os.FileMode(0o644)
		if path == p.EncryptionConfig {
			mode = 0o600
		}
		if err := os.WriteFile(path, data, mode); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	return nil
}

// createBridge creates the pod bridge with the host's address on it before
// any component starts: the API server advertises that address and the
// kubelet uses it as the node IP, so it must exist first. The bridge CNI
// plugin then adopts the existing bridge.
func (c *Cluster) createBridge(ctx context.Context) error {
	if linkExists(c.cfg.BridgeName) {
		return fmt.Errorf("a network interface named %s already exists and is not ours (no record of creating it); remove it or pick another bridge name", c.cfg.BridgeName)
	}
	c.mu.Lock()
	c.rec.CreatedBridge = true
	c.mu.Unlock()
	if err := c.saveRecords(); err != nil {
		return err
	}
	ones := prefixLength(c.cfg.PodCIDR)
	steps := [][]string{
		{"link", "add", c.cfg.BridgeName, "type", "bridge"},
		{"addr", "add", c.cfg.BridgeIP + "/" + strconv.Itoa(ones), "dev", c.cfg.BridgeName},
		{"link", "set", c.cfg.BridgeName, "up"},
	}
	for _, args := range steps {
		if _, err := run(ctx, 10*time.Second, nil, "ip", args...); err != nil {
			return fmt.Errorf("creating the pod bridge: %w", err)
		}
	}
	return nil
}

// prefixLength returns a CIDR's prefix length; Validate has parsed it.
func prefixLength(cidr string) int {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return 0
	}
	ones, _ := n.Mask.Size()
	return ones
}

func (c *Cluster) start(name, path string, args ...string) (*startedProcess, error) {
	sp, err := startProcess(name, path, args, c.p.Logs, nil, c.recordProcess)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.started[name] = sp
	c.mu.Unlock()
	return sp, nil
}

func (c *Cluster) up(ctx context.Context) error {
	if err := c.recordBaseline(ctx); err != nil {
		return err
	}
	if err := c.writeFiles(); err != nil {
		return err
	}
	if err := c.createBridge(ctx); err != nil {
		return err
	}
	if err := c.setupVolumes(ctx); err != nil {
		return err
	}
	timeout := c.cfg.StartTimeout

	etcd, err := c.start("etcd", c.cfg.bin("etcd"), c.cfg.etcdArgs()...)
	if err != nil {
		return err
	}
	containerd, err := c.start("containerd", "/usr/bin/containerd", "--config", filepath.Join(c.p.Configs, "containerd.toml"))
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, etcd, timeout, c.etcdHealthy); err != nil {
		return err
	}
	apiserver, err := c.start("kube-apiserver", c.cfg.bin("kube-apiserver"), c.cfg.apiserverArgs()...)
	if err != nil {
		return err
	}

	// Importing images takes a few seconds; it overlaps the API server's
	// start.
	importDone := make(chan error, 1)
	go func() {
		if err := c.waitFor(ctx, containerd, timeout, func(ctx context.Context) error { return criReady(ctx, c.p.ContainerdSocket) }); err != nil {
			importDone <- err
			return
		}
		importDone <- c.importImages(ctx)
	}()

	if err := c.waitFor(ctx, apiserver, timeout, c.apiserverReady); err != nil {
		return err
	}
	client, err := c.client()
	if err != nil {
		return err
	}
	if err := c.grantKubeRouter(ctx, client); err != nil {
		return err
	}
	// CoreDNS's pod waits in the scheduler until the node is Ready.
	if err := c.createAddons(ctx, client); err != nil {
		return err
	}
	provisioner, err := c.start("local-volume-provisioner", c.cfg.Provisioner, c.cfg.provisionerArgs()...)
	if err != nil {
		return err
	}
	scheduler, err := c.start("kube-scheduler", c.cfg.bin("kube-scheduler"), c.cfg.schedulerArgs()...)
	if err != nil {
		return err
	}
	controllerManager, err := c.start("kube-controller-manager", c.cfg.bin("kube-controller-manager"), c.cfg.controllerManagerArgs()...)
	if err != nil {
		return err
	}
	proxy, err := c.start("kube-proxy", c.cfg.bin("kube-proxy"), c.cfg.kubeProxyArgs()...)
	if err != nil {
		return err
	}
	if err := <-importDone; err != nil {
		return err
	}
	kubelet, err := c.start("kubelet", c.cfg.bin("kubelet"), c.cfg.kubeletArgs()...)
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, kubelet, timeout, func(ctx context.Context) error { return c.nodeRegistered(ctx, client) }); err != nil {
		return err
	}
	if err := c.waitFor(ctx, kubelet, timeout, c.devicePluginSocketReady); err != nil {
		return err
	}
	// kube-router reads the Node object at start, and the device plugin
	// registers on the kubelet's socket, so both wait for the kubelet.
	// kube-router also waits for kube-proxy's first sync: both rewrite
	// iptables, and a restore that races another can fail and wait for the
	// next sync period.
	if err := c.waitFor(ctx, proxy, timeout, httpHealthy("http://127.0.0.1:10256/healthz")); err != nil {
		return err
	}
	if err := c.waitFor(ctx, proxy, timeout, c.apiServiceProgrammed); err != nil {
		return err
	}
	router, err := c.start("kube-router", c.cfg.KubeRouter, c.cfg.kubeRouterArgs()...)
	if err != nil {
		return err
	}
	plugin, err := c.start("fake-gpu-plugin", c.cfg.FakeGPUPlugin, c.cfg.fakeGPUPluginArgs()...)
	if err != nil {
		return err
	}

	checks := []struct {
		proc  *startedProcess
		check func(context.Context) error
	}{
		{scheduler, httpHealthy("https://127.0.0.1:10259/healthz")},
		{controllerManager, httpHealthy("https://127.0.0.1:10257/healthz")},
		{router, httpHealthy(fmt.Sprintf("http://127.0.0.1:%d/healthz", KubeRouterHealthPort))},
		{kubelet, func(ctx context.Context) error { return c.nodeReady(ctx, client) }},
		{plugin, func(ctx context.Context) error { return c.gpusAdvertised(ctx, client) }},
		{controllerManager, func(ctx context.Context) error { return c.serviceAccountsReady(ctx, client) }},
		{provisioner, func(context.Context) error { return logSays(provisioner.Log, "Serving volumes") }},
		{kubelet, func(ctx context.Context) error { return c.coreDNSReady(ctx, client) }},
	}
	for _, ch := range checks {
		if err := c.waitFor(ctx, ch.proc, timeout, ch.check); err != nil {
			return err
		}
	}
	return nil
}

// waitFor polls check until it passes, the process exits, or timeout passes;
// its errors name the component and its log.
func (c *Cluster) waitFor(ctx context.Context, sp *startedProcess, timeout time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		select {
		case <-sp.exited:
			return fmt.Errorf("%s exited during start-up (%v); log: %s\n%s", sp.Name, sp.err, sp.Log, indent(tailFile(sp.Log, 15)))
		default:
		}
		checkCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(checkCtx)
		cancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: %w", sp.Name, ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not become ready within %s: %v; log: %s\n%s", sp.Name, timeout, last, sp.Log, indent(tailFile(sp.Log, 15)))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func indent(s string) string {
	if s == "" {
		return "  (log is empty)"
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

var insecureLocalClient = &http.Client{
	Timeout: 3 * time.Second,
	// The scheduler and controller manager serve /healthz with a self-signed
	// certificate they generate in memory; the probe goes to loopback only.
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec
}

func httpGetOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := insecureLocalClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func httpHealthy(url string) func(context.Context) error {
	return func(ctx context.Context) error { return httpGetOK(ctx, url) }
}

func (c *Cluster) etcdHealthy(ctx context.Context) error {
	return httpGetOK(ctx, fmt.Sprintf("http://127.0.0.1:%d/health", c.cfg.EtcdPort))
}

func (c *Cluster) client() (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.p.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", c.p.AdminKubeconfig, err)
	}
	cfg.Timeout = 5 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building a client from %s: %w", c.p.AdminKubeconfig, err)
	}
	return client, nil
}

func (c *Cluster) apiserverReady(ctx context.Context) error {
	client, err := c.client()
	if err != nil {
		return err
	}
	body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("/readyz: %w: %s", err, strings.TrimSpace(string(body)))
	}
	return nil
}

// grantKubeRouter lets kube-router read what its NetworkPolicy controller
// watches, and nothing more.
func (c *Cluster) grantKubeRouter(ctx context.Context, client *kubernetes.Clientset) error {
	read := []string{"get", "list", "watch"}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: KubeRouterUser},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "nodes", "services", "endpoints"}, Verbs: read},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: read},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: KubeRouterUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: KubeRouterUser},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: KubeRouterUser}},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("granting kube-router its reads: %w", err)
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("binding kube-router's role: %w", err)
	}
	return nil
}

func (c *Cluster) nodeRegistered(ctx context.Context, client *kubernetes.Clientset) error {
	_, err := client.CoreV1().Nodes().Get(ctx, c.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("node %s is not registered: %w", c.cfg.NodeName, err)
	}
	return nil
}

// devicePluginSocketReady waits for the kubelet's device-plugin registration
// socket, which the fake GPU plugin dials.
func (c *Cluster) devicePluginSocketReady(context.Context) error {
	sock := filepath.Join(DevicePluginDir, "kubelet.sock")
	if _, err := os.Stat(sock); err != nil {
		return fmt.Errorf("the kubelet's device-plugin socket is not there yet: %w", err)
	}
	return nil
}

func (c *Cluster) nodeReady(ctx context.Context, client *kubernetes.Clientset) error {
	node, err := client.CoreV1().Nodes().Get(ctx, c.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %s: %w", c.cfg.NodeName, err)
	}
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status == corev1.ConditionTrue {
				return nil
			}
			return fmt.Errorf("node %s is not Ready: %s: %s", c.cfg.NodeName, cond.Reason, cond.Message)
		}
	}
	return fmt.Errorf("node %s has no Ready condition yet", c.cfg.NodeName)
}

func (c *Cluster) gpusAdvertised(ctx context.Context, client *kubernetes.Clientset) error {
	node, err := client.CoreV1().Nodes().Get(ctx, c.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %s: %w", c.cfg.NodeName, err)
	}
	got := node.Status.Allocatable[corev1.ResourceName(c.cfg.GPUResource)]
	if got.Value() != int64(c.cfg.GPUCount) {
		return fmt.Errorf("node %s has %s allocatable %s=%d, want %d", c.cfg.NodeName, got.String(), c.cfg.GPUResource, got.Value(), c.cfg.GPUCount)
	}
	return nil
}

// serviceAccountsReady waits for what every pod needs from the controller
// manager: the default ServiceAccount and the cluster CA ConfigMap that
// projected tokens mount.
func (c *Cluster) serviceAccountsReady(ctx context.Context, client *kubernetes.Clientset) error {
	if _, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
		return fmt.Errorf("default/default ServiceAccount: %w", err)
	}
	if _, err := client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
		return fmt.Errorf("default/kube-root-ca.crt ConfigMap: %w", err)
	}
	return nil
}

// apiServiceProgrammed waits until kube-proxy has written the rule that sends
// the default/kubernetes ClusterIP to the API server, which is how pods reach
// it.
func (c *Cluster) apiServiceProgrammed(ctx context.Context) error {
	save, err := iptablesSave(ctx, "iptables", "nat")
	if err != nil {
		return err
	}
	if !strings.Contains(save, "-d "+c.cfg.APIServiceIP+"/32") {
		return fmt.Errorf("kube-proxy has not yet programmed the ClusterIP %s of default/kubernetes", c.cfg.APIServiceIP)
	}
	return nil
}

// importedStamp maps image references to the SHA-256 of the tarball that
// containerd's root (kept between runs) holds them from, so that a warm Up
// skips re-importing them.
type importedStamp map[string]string

func (c *Cluster) importImages(ctx context.Context) error {
	stampPath := filepath.Join(c.p.ContainerdRoot, "modelguard-imported.json")
	stamp := importedStamp{}
	if data, err := os.ReadFile(stampPath); err == nil {
		_ = json.Unmarshal(data, &stamp)
	}
	listed, err := run(ctx, 30*time.Second, nil, "ctr", "--address", c.p.ContainerdSocket, "-n", "k8s.io", "images", "ls", "-q")
	if err != nil {
		return fmt.Errorf("listing containerd's images: %w", err)
	}
	present := map[string]bool{}
	for _, ref := range strings.Fields(string(listed)) {
		present[ref] = true
	}
	for _, img := range c.cfg.Images {
		sum, refs, err := tarballIdentity(img)
		if err != nil {
			return err
		}
		allPresent := len(refs) > 0
		for _, r := range refs {
			allPresent = allPresent && present[r]
		}
		// Keyed by the references, not the path: another clone's identical
		// tarball needs no import either.
		key := strings.Join(refs, ",")
		if stamp[key] == sum && allPresent {
			continue
		}
		began := time.Now()
		if _, err := run(ctx, 2*time.Minute, nil, "ctr", "--address", c.p.ContainerdSocket, "-n", "k8s.io", "images", "import", img); err != nil {
			return fmt.Errorf("importing %s into containerd: %w", img, err)
		}
		c.logf("Imported %s (%s) in %.1fs", filepath.Base(img), strings.Join(refs, ", "), time.Since(began).Seconds())
		stamp[key] = sum
	}
	data, err := json.MarshalIndent(stamp, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", stampPath, err)
	}
	if err := os.WriteFile(stampPath, data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", stampPath, err)
	}
	return nil
}

// tarballIdentity returns a tarball's SHA-256 and the image references its
// manifest.json names.
func tarballIdentity(path string) (string, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, fmt.Errorf("opening image %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", nil, fmt.Errorf("reading image %s: %w", path, err)
	}
	refs, err := tarballRefs(path)
	if err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(h.Sum(nil)), refs, nil
}
