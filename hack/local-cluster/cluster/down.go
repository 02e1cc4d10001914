package cluster

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Down stops the cluster and undoes every change its records show, then
// verifies that nothing of it is left. Without records it has nothing to do.
func (c *Cluster) Down(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("tearing down the local cluster needs root, as bringing it up did")
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := loadRecords(c.p.Records)
	if err != nil {
		return err
	}
	if rec == nil {
		c.logf("No local cluster is recorded in %s; nothing to tear down", c.cfg.WorkDir)
		return nil
	}
	return c.teardown(ctx, rec)
}

// stopOrder lists the components in the order Down stops them: first what
// starts pods (the kubelet, so that it restarts nothing), then the pods
// themselves through containerd, then the rest in reverse start order.
var stopOrder = []string{"kubelet", "fake-gpu-plugin", "local-volume-provisioner"}

var stopOrderAfterPods = []string{"containerd", "containerd-cleanup", "kube-router", "kube-proxy", "kube-controller-manager", "kube-scheduler", "kube-apiserver", "etcd"}

func (c *Cluster) teardown(ctx context.Context, rec *Records) error {
	if rec == nil {
		return nil
	}
	c.rec = rec
	began := time.Now()
	var errs []error
	stop := func(name string) {
		for _, p := range rec.Processes {
			if p.Name == name {
				if err := p.stop(c.cfg.StopTimeout); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	for _, name := range stopOrder {
		stop(name)
	}
	if err := c.removePods(ctx, rec); err != nil {
		errs = append(errs, err)
	}
	for _, name := range stopOrderAfterPods {
		stop(name)
	}
	// Anything recorded but not named above (a component added later).
	for _, p := range rec.Processes {
		if err := p.stop(c.cfg.StopTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	// Shims are containerd's children, not ours directly; they carry our
	// socket path. After the CRI removed their containers they have exited;
	// any left (containerd died first) are ended here.
	for _, shim := range c.ourShims() {
		if err := shim.stop(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}

	if proxy := c.cfg.bin("kube-proxy"); fileExists(proxy) {
		// kube-proxy removes its own rules; our pass below then removes any
		// chain of ours it left (and those of the kubelet, kube-router and
		// the CNI plugins).
		if out, err := run(ctx, time.Minute, nil, proxy, "--cleanup", "--v=0"); err != nil {
			c.logf("kube-proxy --cleanup reported: %v %s", err, strings.TrimSpace(string(out)))
		}
	}
	// kube-router's own --cleanup-config panics on kernels without ip_vs, as
	// here, so its chains and ipsets are removed by hand.
	if _, err := cleanupChains(ctx, rec.Chains); err != nil {
		errs = append(errs, err)
	}
	if _, err := cleanupIPSets(ctx, rec.IPSets); err != nil {
		errs = append(errs, err)
	}
	if _, err := cleanupNFTables(ctx, rec.NFTables); err != nil {
		errs = append(errs, err)
	}
	// Unmounting the volumes filesystem also wipes the fscrypt keys still in
	// its keyring; then its loop device can go.
	if _, err := unmountAll(c.cfg.WorkDir); err != nil {
		errs = append(errs, err)
	}
	if err := c.detachLoops(ctx, rec); err != nil {
		errs = append(errs, err)
	}
	if rec.CreatedBridge && linkExists(c.cfg.BridgeName) {
		for _, veth := range linksOnBridge(c.cfg.BridgeName) {
			if _, err := run(ctx, 10*time.Second, nil, "ip", "link", "delete", veth); err != nil {
				errs = append(errs, err)
			}
		}
		if _, err := run(ctx, 10*time.Second, nil, "ip", "link", "delete", c.cfg.BridgeName); err != nil {
			errs = append(errs, fmt.Errorf("deleting the pod bridge: %w", err))
		}
	}
	for _, cg := range rec.Cgroups {
		if err := removeCgroupTree(cg); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.removeHostDirs(rec); err != nil {
		errs = append(errs, err)
	}
	if err := restoreSysctls(rec.Sysctls); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.cfg.runDir()); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", c.cfg.runDir(), err))
	}

	left := c.leftovers(ctx, rec)
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("after teardown these remain (records kept in %s for another try): %s", c.p.Records, strings.Join(left, "; ")))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.Remove(c.p.Records); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the records: %w", err)
	}
	c.logf("Torn down in %.1fs; verified: no process (the provisioner included), mount (the volumes filesystem included, so no volume key is left in the kernel), loop device, volume, bridge, iptables chain or table, ipset, cgroup or host directory of the cluster is left, and the sysctls are restored", time.Since(began).Seconds())
	return nil
}

// removePods removes every pod through the CRI so that each sandbox's network
// namespace, veth, address and mounts are released the proper way. If the
// recorded containerd is gone (a run that died) but its state is there, a
// temporary containerd on the same state does the job.
func (c *Cluster) removePods(ctx context.Context, rec *Records) error {
	cd, ok := rec.process("containerd")
	if !ok || !fileExists(c.p.ContainerdState) || !fileExists(filepath.Join(c.p.Configs, "containerd.toml")) {
		return nil // containerd never ran: there are no pods
	}
	if !cd.alive() {
		sp, err := startProcess("containerd-cleanup", "/usr/bin/containerd", []string{"--config", filepath.Join(c.p.Configs, "containerd.toml")}, c.p.Logs, nil, func(pr ProcessRecord) error {
			rec.Processes = append(rec.Processes, pr)
			return rec.save(c.p.Records)
		})
		if err != nil {
			return fmt.Errorf("starting containerd to remove the pods of the earlier run: %w", err)
		}
		if err := c.waitFor(ctx, sp, 30*time.Second, func(ctx context.Context) error { return criReady(ctx, c.p.ContainerdSocket) }); err != nil {
			return fmt.Errorf("removing pods: %w", err)
		}
	}
	n, err := removeAllPods(ctx, c.p.ContainerdSocket)
	if err != nil {
		return fmt.Errorf("removing pods through containerd: %w", err)
	}
	if n > 0 {
		c.logf("Removed %d pod sandboxes", n)
	}
	return nil
}

// ourShims are the containerd shims serving our containerd: their command
// line names our socket. Only processes that are shims are considered.
func (c *Cluster) ourShims() []ProcessRecord {
	var out []ProcessRecord
	for _, p := range processesMentioning(c.p.ContainerdSocket) {
		if strings.HasPrefix(p.Name, "containerd-shim") {
			out = append(out, p)
		}
	}
	return out
}

// removeHostDirs removes what the components left outside the work dir: the
// kubelet's log symlinks into our pod log dir, libcni's cache entries for our
// network, and the directories that did not exist before Up.
func (c *Cluster) removeHostDirs(rec *Records) error {
	var errs []error
	if entries, err := os.ReadDir("/var/log/containers"); err == nil {
		for _, e := range entries {
			path := filepath.Join("/var/log/containers", e.Name())
			if target, err := os.Readlink(path); err == nil && strings.HasPrefix(target, c.p.PodLogs+"/") {
				if err := os.Remove(path); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	for _, sub := range []string{"results"} {
		matches, _ := filepath.Glob(filepath.Join("/var/lib/cni", sub, CNINetworkName+"-*"))
		for _, m := range matches {
			if err := os.Remove(m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, d := range rec.CreatedDirs {
		if len(c.ourShims()) > 0 && d == "/run/containerd" {
			errs = append(errs, errors.New("/run/containerd still serves a shim of ours; not removed"))
			continue
		}
		if err := removeIfOnlyDirs(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeIfOnlyDirs removes a directory tree that the components created,
// refusing if it holds any file other than sockets (which die with their
// servers): a regular file there would be someone else's.
func removeIfOnlyDirs(dir string) error {
	if !fileExists(dir) {
		return nil
	}
	var foreign []string
	_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && info.Mode()&os.ModeSocket == 0 && !ownFiles[info.Name()] {
			foreign = append(foreign, path)
		}
		return nil
	})
	if len(foreign) > 0 {
		return fmt.Errorf("not removing %s (created during the run) because it holds files that are not ours: %v", dir, foreign)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// leftovers lists what of the cluster is still on the host.
func (c *Cluster) leftovers(ctx context.Context, rec *Records) []string {
	var left []string
	for _, p := range rec.Processes {
		if p.alive() {
			left = append(left, fmt.Sprintf("process %s (pid %d)", p.Name, p.PID))
		}
	}
	for _, p := range c.ourShims() {
		left = append(left, fmt.Sprintf("process %s (pid %d)", p.Name, p.PID))
	}
	if mounts, err := mountsUnder(c.cfg.WorkDir); err == nil && len(mounts) > 0 {
		left = append(left, fmt.Sprintf("mounts %v", mounts))
	}
	if rec.CreatedBridge && linkExists(c.cfg.BridgeName) {
		left = append(left, "bridge "+c.cfg.BridgeName)
	}
	left = append(left, leftoverLoops(ctx, rec)...)
	left = append(left, c.cfg.volumeLeftovers()...)
	if chains := leftoverChains(ctx, rec.Chains); len(chains) > 0 {
		left = append(left, fmt.Sprintf("iptables chains %v", chains))
	}
	if tables, err := listNFTables(ctx); err == nil {
		existed := map[string]bool{}
		for _, t := range rec.NFTables {
			existed[t] = true
		}
		for _, t := range tables {
			if !existed[t] {
				left = append(left, "nftables table "+t)
			}
		}
	}
	if sets, err := listIPSets(ctx); err == nil {
		if ours := ourNewIPSets(sets, rec.IPSets); len(ours) > 0 {
			left = append(left, fmt.Sprintf("ipsets %v", ours))
		}
	}
	for _, cg := range rec.Cgroups {
		if fileExists(cg) {
			left = append(left, "cgroup "+cg)
		}
	}
	if changed := changedSysctls(rec.Sysctls); len(changed) > 0 {
		left = append(left, fmt.Sprintf("sysctls %v", changed))
	}
	for _, d := range rec.CreatedDirs {
		if fileExists(d) {
			left = append(left, "directory "+d)
		}
	}
	return left
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// tarballRefs reads the image references from a docker-save style tarball's
// manifest.json.
func tarballRefs(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening image %s: %w", path, err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("image %s has no manifest.json", path)
		}
		if err != nil {
			return nil, fmt.Errorf("reading image %s: %w", path, err)
		}
		if hdr.Name != "manifest.json" {
			continue
		}
		var manifest []struct {
			RepoTags []string `json:"RepoTags"`
		}
		if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
			return nil, fmt.Errorf("parsing manifest.json of %s: %w", path, err)
		}
		var refs []string
		for _, m := range manifest {
			refs = append(refs, m.RepoTags...)
		}
		return refs, nil
	}
}
