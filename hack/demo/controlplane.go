// The control-plane demo (DEMO_MODE=control-plane) is the plumbing demo that
// needs no root: etcd and kube-apiserver from bin/k8s on loopback, the CRDs,
// the manager on the host, and config/samples. No pod runs there.

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

func runControlPlane() error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s", "1.37.2")
	}
	manager := filepath.Join(root, "bin", "manager")
	for _, bin := range []string{filepath.Join(assets, "etcd"), filepath.Join(assets, "kube-apiserver"), filepath.Join(assets, "kubectl"), manager} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%s is missing: run `make demo`, which builds it first", bin)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	step("Starting etcd and kube-apiserver v1.37.2 on loopback")
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("starting the control plane (is a port busy? see the message): %w", err)
	}
	defer func() {
		step("Stopping the control plane and removing its temporary directories")
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stopping control plane:", err)
		}
	}()

	workDir, err := os.MkdirTemp("", "modelguard-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(workDir)
	kubeconfig, err := writeKubeconfig(env, workDir)
	if err != nil {
		return err
	}
	kubectl := func(args ...string) error {
		cmd := exec.CommandContext(ctx, filepath.Join(assets, "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("kubectl %v: %w", args, err)
		}
		return nil
	}
	if err := kubectl("version"); err != nil {
		return err
	}

	probePort, err := freePort()
	if err != nil {
		return err
	}
	keyReleasePort, err := freePort()
	if err != nil {
		return err
	}
	// Outside a pod the manager cannot learn its namespace, where ModelKeys'
	// Secrets, the key-release serving certificate and its CA bundle live:
	// name it.
	if err := kubectl("create", "namespace", operatorNS); err != nil {
		return err
	}
	step("Starting the ModelGuard manager (key release on loopback; no pod runs here to ask for a key)")
	mgr := exec.Command(manager,
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", probePort),
		"--operator-namespace", operatorNS,
		"--key-release-bind-address", fmt.Sprintf("127.0.0.1:%d", keyReleasePort),
		// It runs with the admin kubeconfig, not as a ServiceAccount; no
		// webhook configuration points here, and no pod runs to guard.
		"--admission-guard=false")
	mgr.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "POD_NAMESPACE="+operatorNS)
	mgrLog, err := os.Create(filepath.Join(workDir, "manager.log"))
	if err != nil {
		return err
	}
	defer mgrLog.Close()
	mgr.Stdout, mgr.Stderr = mgrLog, mgrLog
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting manager: %w", err)
	}
	defer func() {
		_ = mgr.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = mgr.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = mgr.Process.Kill()
			<-done
		}
	}()
	if err := waitHealthy(ctx, probePort, 30*time.Second); err != nil {
		return fmt.Errorf("manager did not become ready (log: %s): %w", mgrLog.Name(), err)
	}

	step("Applying config/samples")
	if err := kubectl("create", "namespace", "modelguard-demo"); err != nil {
		return err
	}
	if err := kubectl("apply", "-n", "modelguard-demo", "-k", filepath.Join(root, "config", "samples")); err != nil {
		return err
	}

	step("kubectl get modelkeys (the sample's KEK Secret is not in " + operatorNS + ", so it is not Ready and says why)")
	// Shown, not required: the table below says the same.
	_ = kubectl("wait", "--for=condition=Ready=False", "modelkey/nlp-models", "--timeout=30s")
	if err := kubectl("get", "modelkeys", "-o", "wide"); err != nil {
		return err
	}
	step("kubectl get protectedmodels,trainingjobs -A")
	if err := kubectl("get", "protectedmodels,trainingjobs", "-A"); err != nil {
		return err
	}
	step("Objects managed by ModelGuard")
	if err := kubectl("get", "all,networkpolicies,secrets,serviceaccounts", "-n", "modelguard-demo",
		"-l", "app.kubernetes.io/managed-by=modelguard"); err != nil {
		return err
	}

	if os.Getenv("DEMO_EXIT") == "1" {
		return nil
	}
	fmt.Printf("\nThe demo control plane is running. In another shell:\n\n  export KUBECONFIG=%s\n  %s get pm -A\n\nPress Ctrl-C to stop.\n", kubeconfig, filepath.Join(assets, "kubectl"))
	<-ctx.Done()
	return nil
}

func step(msg string) { fmt.Printf("\n==> %s\n", msg) }

func writeKubeconfig(env *envtest.Environment, dir string) (string, error) {
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "demo-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("adding the demo admin user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("rendering kubeconfig: %w", err)
	}
	path := filepath.Join(dir, "kubeconfig")
	return path, os.WriteFile(path, data, 0o600)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitHealthy(ctx context.Context, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("/readyz did not answer 200")
}
