// Command local-cluster runs a real single-node Kubernetes on this machine,
// for `make demo` and the e2e tests: pods really run (containerd + runc),
// Services really route (kube-proxy, iptables), NetworkPolicies really drop
// packets (kube-router) and the scheduler does real GPU accounting against a
// fake device plugin.
//
//	local-cluster up        bring the cluster up (idempotent; cleans up a run that died)
//	local-cluster down      tear it down and verify nothing of it is left
//	local-cluster status    show components, node, GPUs and the kubeconfig path
//	local-cluster env       print the export KUBECONFIG=... line
//	local-cluster run -- CMD ARGS...
//	                        bring up a fresh cluster (tearing down one that is
//	                        up), run CMD with KUBECONFIG set, and tear it down,
//	                        whether CMD passes, fails or is interrupted
//	local-cluster images    build the node's binaries and image tarballs
//	local-cluster kueue     install Kueue (built by `make kueue`) into the
//	                        running cluster, with a ClusterQueue of the fake
//	                        GPUs; idempotent
//
// It needs root on a Debian-like machine; `make cluster-up` installs the
// Debian packages and builds everything first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelguard/modelguard/hack/local-cluster/cluster"
	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "local-cluster:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `Usage: local-cluster [flags] up|down|status|env|images|kueue|run -- CMD...

A real single-node Kubernetes for the demo and the e2e tests (needs root).

Flags:
`)
	flag.PrintDefaults()
}

func run(args []string) error {
	fl := flag.NewFlagSet("local-cluster", flag.ContinueOnError)
	flag.CommandLine = fl
	fl.Usage = usage
	repo := fl.String("repo", ".", "the repository's root (binaries are under its bin/)")
	workDir := fl.String("work-dir", envOr("MODELGUARD_CLUSTER_DIR", cluster.DefaultWorkDir), "the cluster's state, logs, records and kubeconfig (env MODELGUARD_CLUSTER_DIR)")
	gpus := fl.Int("gpus", envInt("MODELGUARD_FAKE_GPUS", 2), "number of fake nvidia.com/gpu devices the node advertises (env MODELGUARD_FAKE_GPUS)")
	imagesOut := fl.String("images-dir", "", "where `images` writes, and `up` imports, the image tarballs (default <repo>/bin/images)")
	ldflags := fl.String("ldflags", "", "`images`: -ldflags for the ModelGuard binaries (version stamp)")
	fresh := fl.Bool("fresh", false, "`up`: tear down a cluster that is already up instead of reusing it (`run` always starts fresh)")
	withModelGuard := fl.Bool("modelguard-image", true, "`images`: also build the ModelGuard image (manager + modelguard)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() == 0 {
		usage()
		return errors.New("name a verb: up, down, status, env, images, kueue or run")
	}
	root, err := filepath.Abs(*repo)
	if err != nil {
		return fmt.Errorf("resolving the repository root: %w", err)
	}
	if *imagesOut == "" {
		*imagesOut = filepath.Join(root, "bin", "images")
	}
	cfg := cluster.DefaultConfig(root)
	cfg.WorkDir = *workDir
	cfg.GPUCount = *gpus
	cfg.FakeGPUPlugin = filepath.Join(*imagesOut, images.FakeGPUPluginBinary)
	cfg.Provisioner = filepath.Join(*imagesOut, images.ProvisionerBinary)
	cfg.Images = images.Tarballs(*imagesOut)

	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "local-cluster: "+format+"\n", a...)
	}
	verb, rest := fl.Arg(0), fl.Args()[1:]
	if verb == "images" {
		return buildImages(context.Background(), root, *imagesOut, *ldflags, *withModelGuard, logf)
	}
	c, err := cluster.New(cfg, logf)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch verb {
	case "up":
		err := c.Up(ctx, cluster.UpOptions{Fresh: *fresh})
		if errors.Is(err, cluster.ErrAlreadyUp) {
			logf("Already up")
			err = nil
		}
		if err == nil {
			fmt.Printf("export KUBECONFIG=%s\n", c.Config().KubeconfigPath())
		}
		return err
	case "down":
		return c.Down(context.WithoutCancel(ctx))
	case "status":
		return c.Status(ctx, os.Stdout)
	case "env":
		fmt.Printf("export KUBECONFIG=%s\n", c.Config().KubeconfigPath())
		return nil
	case "run":
		return runWithCluster(ctx, c, rest, logf)
	case "kueue":
		return c.InstallKueue(ctx, filepath.Join(root, "bin", "kueue", images.KueueVersion, "kueue.yaml"), filepath.Join(*imagesOut, images.KueueTarball))
	default:
		usage()
		return fmt.Errorf("unknown verb %q", verb)
	}
}

// runWithCluster runs a command against a fresh cluster and tears it down
// even when the command fails or the run is interrupted.
func runWithCluster(ctx context.Context, c *cluster.Cluster, argv []string, logf func(string, ...any)) (err error) {
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		return errors.New("run needs a command: local-cluster run -- go test ./test/e2e/...")
	}
	began := time.Now()
	release, err := c.Reserve(ctx, "local-cluster run "+strings.Join(argv, " "), 30*time.Minute)
	if err != nil {
		return err
	}
	defer release()
	// Always a fresh cluster: the command sees this clone's binaries and
	// images and no objects from before, and the cluster is gone afterwards.
	if err := c.Up(ctx, cluster.UpOptions{Fresh: true}); err != nil {
		return err
	}
	defer func() {
		if derr := c.Down(context.WithoutCancel(ctx)); derr != nil {
			err = errors.Join(err, fmt.Errorf("tearing down: %w", derr))
		}
	}()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Config().KubeconfigPath())
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", argv[0], err)
	}
	// The command shares our process group, so a terminal's Ctrl-C reaches it
	// directly; a SIGTERM to us alone is passed on.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			err = <-done
		}
		err = errors.Join(errors.New("interrupted"), err)
	}
	logf("%s finished after %.1fs (cluster included)", filepath.Base(argv[0]), time.Since(began).Seconds())
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(argv[0]), err)
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return v
	}
	return def
}
