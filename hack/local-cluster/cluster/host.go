package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// trackedSysctls are the kernel settings the node's components change: the
// kubelet sets the panic and overcommit ones, the bridge CNI plugin turns on
// forwarding, kube-proxy needs bridged traffic to pass through iptables.
// Each is recorded before Up and restored by Down.
var trackedSysctls = []string{
	"kernel/panic",
	"kernel/panic_on_oops",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	"net/ipv4/ip_forward",
	"net/ipv4/conf/all/forwarding",
	"net/ipv4/conf/default/forwarding",
	"net/ipv6/conf/all/forwarding",
	"net/ipv6/conf/default/forwarding",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/ipv4/conf/all/route_localnet",
	"net/netfilter/nf_conntrack_max",
	"net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
	"net/netfilter/nf_conntrack_tcp_be_liberal",
}

const procSys = "/proc/sys"

func readSysctl(key string) (string, bool) {
	data, err := os.ReadFile(filepath.Join(procSys, key))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(data)), true
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join(procSys, key), []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

func snapshotSysctls() map[string]string {
	out := make(map[string]string, len(trackedSysctls))
	for _, key := range trackedSysctls {
		if v, ok := readSysctl(key); ok {
			out[key] = v
		}
	}
	return out
}

// restoreSysctls puts back the recorded values, in reverse order so that a
// global switch (ip_forward, which resets per-interface forwarding) goes
// before the finer settings it would overwrite.
func restoreSysctls(saved map[string]string) error {
	var errs []error
	for i := len(trackedSysctls) - 1; i >= 0; i-- {
		key := trackedSysctls[i]
		want, ok := saved[key]
		if !ok {
			continue
		}
		if got, _ := readSysctl(key); got == want {
			continue
		}
		if err := writeSysctl(key, want); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func changedSysctls(saved map[string]string) []string {
	var out []string
	for key, want := range saved {
		if got, _ := readSysctl(key); got != want {
			out = append(out, fmt.Sprintf("%s=%s (was %s)", strings.ReplaceAll(key, "/", "."), got, want))
		}
	}
	sort.Strings(out)
	return out
}

// run executes a host tool with a bound on its run time.
func run(ctx context.Context, timeout time.Duration, stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// iptablesTables are the tables the node's components write to.
var iptablesTables = []string{"filter", "nat", "mangle", "raw"}

// iptablesTools are the families we clean. A family whose tool is missing or
// unsupported by the kernel has nothing of ours.
var iptablesTools = []string{"iptables", "ip6tables"}

// ourChain matches the chains of kube-proxy and the kubelet (KUBE-...),
// kube-router (KUBE-ROUTER-, KUBE-NWPLCY-, KUBE-POD-FW-) and the CNI plugins
// (CNI-...). Only such chains that did not exist before Up are deleted.
var ourChain = regexp.MustCompile(`^(KUBE-|CNI-)`)

// ourIPSet matches kube-router's sets.
var ourIPSet = regexp.MustCompile(`^(inet6:)?(KUBE-|TMP-|kube-router)`)

func iptablesSave(ctx context.Context, tool, table string) (string, error) {
	out, err := run(ctx, 30*time.Second, nil, tool+"-save", "-t", table)
	return string(out), err
}

// parseChains lists the chains of one table in iptables-save output.
func parseChains(save string) []string {
	var chains []string
	sc := bufio.NewScanner(strings.NewReader(save))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ":") {
			if f := strings.Fields(line[1:]); len(f) > 0 {
				chains = append(chains, f[0])
			}
		}
	}
	return chains
}

func snapshotChains(ctx context.Context) map[string][]string {
	out := map[string][]string{}
	for _, tool := range iptablesTools {
		for _, table := range iptablesTables {
			save, err := iptablesSave(ctx, tool, table)
			if err != nil {
				continue
			}
			out[tool+"/"+table] = parseChains(save)
		}
	}
	return out
}

// planChainCleanup returns an iptables-restore --noflush script that removes
// our chains from one table (see ourChain; chains in baseline existed before
// Up and are kept): first the rules elsewhere that jump to them, then their
// rules, then the chains. It returns "" when there is nothing to remove.
func planChainCleanup(table, save string, baseline []string) (script string, removed []string) {
	existed := make(map[string]bool, len(baseline))
	for _, c := range baseline {
		existed[c] = true
	}
	ours := map[string]bool{}
	for _, c := range parseChains(save) {
		if ourChain.MatchString(c) && !existed[c] {
			ours[c] = true
			removed = append(removed, c)
		}
	}
	if len(removed) == 0 {
		return "", nil
	}
	sort.Strings(removed)
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || ours[fields[1]] {
			continue // rules inside our chains go with the flush below
		}
		for i := 2; i+1 < len(fields); i++ {
			if (fields[i] == "-j" || fields[i] == "-g") && ours[fields[i+1]] {
				b.WriteString("-D " + strings.TrimPrefix(line, "-A ") + "\n")
				break
			}
		}
	}
	for _, c := range removed {
		fmt.Fprintf(&b, "-F %s\n", c)
	}
	for _, c := range removed {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String(), removed
}

// cleanupChains removes our chains from every table and family, and returns
// what it removed.
func cleanupChains(ctx context.Context, baseline map[string][]string) ([]string, error) {
	var removed []string
	var errs []error
	for _, tool := range iptablesTools {
		for _, table := range iptablesTables {
			save, err := iptablesSave(ctx, tool, table)
			if err != nil {
				continue
			}
			script, chains := planChainCleanup(table, save, baseline[tool+"/"+table])
			if script == "" {
				continue
			}
			if _, err := run(ctx, 30*time.Second, []byte(script), tool+"-restore", "--noflush"); err != nil {
				errs = append(errs, fmt.Errorf("removing %s chains %v from table %s: %w", tool, chains, table, err))
				continue
			}
			for _, c := range chains {
				removed = append(removed, tool+"/"+table+"/"+c)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// leftoverChains lists our chains still present.
func leftoverChains(ctx context.Context, baseline map[string][]string) []string {
	var left []string
	for _, tool := range iptablesTools {
		for _, table := range iptablesTables {
			save, err := iptablesSave(ctx, tool, table)
			if err != nil {
				continue
			}
			_, chains := planChainCleanup(table, save, baseline[tool+"/"+table])
			for _, c := range chains {
				left = append(left, tool+"/"+table+"/"+c)
			}
		}
	}
	return left
}

// listNFTables lists the nftables tables as "family name" (iptables-nft
// creates "ip filter", "ip6 nat" and so on the first time a rule goes in).
func listNFTables(ctx context.Context) ([]string, error) {
	out, err := run(ctx, 30*time.Second, nil, "nft", "list", "tables")
	if err != nil {
		return nil, err
	}
	var tables []string
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "table "); ok {
			tables = append(tables, rest)
		}
	}
	return tables, nil
}

// nftTableIsBare reports whether an nftables table holds nothing but base
// chains without rules, which is all that is left of a table iptables-nft
// created once our chains are gone.
func nftTableIsBare(listJSON []byte) (bool, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(listJSON, &doc); err != nil {
		return false, fmt.Errorf("parsing nft's JSON: %w", err)
	}
	for _, obj := range doc.Nftables {
		if _, ok := obj["rule"]; ok {
			return false, nil
		}
		if _, ok := obj["set"]; ok {
			return false, nil
		}
		if _, ok := obj["map"]; ok {
			return false, nil
		}
		if raw, ok := obj["chain"]; ok {
			var chain struct {
				Hook string `json:"hook"`
			}
			if err := json.Unmarshal(raw, &chain); err != nil {
				return false, fmt.Errorf("parsing a chain in nft's JSON: %w", err)
			}
			if chain.Hook == "" {
				return false, nil // a regular chain: someone's
			}
		}
	}
	return true, nil
}

// cleanupNFTables deletes the tables that did not exist before Up and are
// now bare, so that iptables-save prints what it printed before.
func cleanupNFTables(ctx context.Context, baseline []string) ([]string, error) {
	tables, err := listNFTables(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing nftables tables: %w", err)
	}
	existed := map[string]bool{}
	for _, t := range baseline {
		existed[t] = true
	}
	var removed []string
	var errs []error
	for _, t := range tables {
		if existed[t] {
			continue
		}
		f := strings.Fields(t)
		if len(f) != 2 {
			continue
		}
		out, err := run(ctx, 30*time.Second, nil, "nft", "-j", "list", "table", f[0], f[1])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		bare, err := nftTableIsBare(out)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !bare {
			continue
		}
		if _, err := run(ctx, 30*time.Second, nil, "nft", "delete", "table", f[0], f[1]); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, t)
	}
	return removed, errors.Join(errs...)
}

func listIPSets(ctx context.Context) ([]string, error) {
	out, err := run(ctx, 30*time.Second, nil, "ipset", "list", "-n")
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// ourNewIPSets lists kube-router's sets that did not exist before Up.
func ourNewIPSets(current, baseline []string) []string {
	existed := make(map[string]bool, len(baseline))
	for _, s := range baseline {
		existed[s] = true
	}
	var ours []string
	for _, s := range current {
		if ourIPSet.MatchString(s) && !existed[s] {
			ours = append(ours, s)
		}
	}
	return ours
}

// cleanupIPSets destroys our sets. A set still referenced by another (list:set)
// cannot go first, so it takes a few passes.
func cleanupIPSets(ctx context.Context, baseline []string) ([]string, error) {
	var destroyed []string
	var lastErr error
	for pass := 0; pass < 3; pass++ {
		current, err := listIPSets(ctx)
		if err != nil {
			return destroyed, fmt.Errorf("listing ipsets: %w", err)
		}
		ours := ourNewIPSets(current, baseline)
		if len(ours) == 0 {
			return destroyed, nil
		}
		lastErr = nil
		for _, s := range ours {
			if _, err := run(ctx, 10*time.Second, nil, "ipset", "destroy", s); err != nil {
				lastErr = err
				continue
			}
			destroyed = append(destroyed, s)
		}
	}
	if lastErr != nil {
		return destroyed, fmt.Errorf("destroying ipsets: %w", lastErr)
	}
	return destroyed, nil
}

// mountsUnder lists the mount points at or below dir, deepest first, from
// the mount table.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	return parseMountsUnder(string(data), dir), nil
}

// parseMountsUnder picks the mount points at or below dir from
// /proc/self/mountinfo content, deepest (and, at equal depth, most recent)
// first, which is the order they can be unmounted in.
func parseMountsUnder(mountinfo, dir string) []string {
	dir = filepath.Clean(dir)
	type mount struct {
		path  string
		order int
	}
	var found []mount
	for i, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mount{mp, i})
		}
	}
	sort.SliceStable(found, func(a, b int) bool {
		da, db := strings.Count(found[a].path, "/"), strings.Count(found[b].path, "/")
		if da != db {
			return da > db
		}
		return found[a].order > found[b].order
	})
	out := make([]string, len(found))
	for i, m := range found {
		out[i] = m.path
	}
	return out
}

// unescapeMountPath undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll unmounts everything under dir; a mount still busy is detached
// lazily, so that the directory can be removed.
func unmountAll(dir string) ([]string, error) {
	var done []string
	for pass := 0; pass < 5; pass++ {
		mounts, err := mountsUnder(dir)
		if err != nil {
			return done, err
		}
		if len(mounts) == 0 {
			return done, nil
		}
		for _, mp := range mounts {
			if err := unix.Unmount(mp, 0); err != nil {
				if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
					return done, fmt.Errorf("unmounting %s: %w", mp, err)
				}
			}
			done = append(done, mp)
		}
	}
	left, _ := mountsUnder(dir)
	if len(left) > 0 {
		return done, fmt.Errorf("mounts remain under %s after 5 passes: %v", dir, left)
	}
	return done, nil
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// linksOnBridge lists the interfaces (pod veths) enslaved to a bridge.
func linksOnBridge(bridge string) []string {
	entries, err := os.ReadDir(filepath.Join("/sys/class/net", bridge, "brif"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// cgroupHierarchies lists the mount points of the cgroup hierarchies (one per
// v1 controller group, plus the unified v2 one).
func cgroupHierarchies() ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		// Fields after " - " are: fstype source superoptions.
		i := strings.Index(line, " - ")
		if i < 0 {
			continue
		}
		post := strings.Fields(line[i+3:])
		pre := strings.Fields(line[:i])
		if len(post) < 1 || len(pre) < 5 {
			continue
		}
		if post[0] == "cgroup" || post[0] == "cgroup2" {
			out = append(out, unescapeMountPath(pre[4]))
		}
	}
	sort.Strings(out)
	return out, nil
}

// kubeletCgroupName is the cgroup the kubelet creates for pods under the
// root (cgroupRoot "/", cgroupfs driver).
const kubeletCgroupName = "kubepods"

// removeCgroupTree removes a cgroup directory and its children, deepest
// first. A cgroup with processes left cannot be removed; those processes are
// pods' (the tree is the kubelet's, created by this run), so they are killed
// first.
func removeCgroupTree(root string) error {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var errs []error
	for _, dir := range dirs {
		var err error
		for attempt := 0; attempt < 20; attempt++ {
			killCgroupProcs(dir)
			if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

func killCgroupProcs(dir string) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}
