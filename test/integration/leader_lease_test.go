package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestManagerDeletesItsLeaseOnExit runs the real manager binary with leader
// election, stops it with SIGTERM as the kubelet would, and checks that the
// Lease it created is gone, so that uninstalling the operator leaves none.
func TestManagerDeletesItsLeaseOnExit(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	bin := filepath.Join(binariesFromDockerfile(t), "manager")
	kubeconfig, err := env.Kubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig,
		"--leader-elect", "--leader-election-namespace", ns,
		"--metrics-bind-address=0", "--health-probe-bind-address", freeLoopbackAddr(t),
		"--watch-namespaces", ns, "--unseal-image=modelguard:lease-test",
		// Every replica serves key release, leader or not; it must not
		// keep the manager from stopping.
		"--operator-namespace", ns, "--key-release-bind-address", freeLoopbackAddr(t),
		// It runs as the envtest admin, not a ServiceAccount, which the
		// admission guard needs to know who the operator is.
		"--admission-guard=false")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the manager: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	key := client.ObjectKey{Namespace: ns, Name: "modelguard.ml.modelguard.dev"}
	lease := &coordinationv1.Lease{}
	eventuallyNoError(t, "the manager holds its Lease", func() error {
		if err := env.Client.Get(ctx, key, lease); err != nil {
			return err
		}
		if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
			return fmt.Errorf("no holder yet")
		}
		return nil
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the manager did not stop cleanly on SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the manager did not stop within 30s of SIGTERM\n%s", logs.String())
	}
	if err := env.Client.Get(ctx, key, lease); !apierrors.IsNotFound(err) {
		t.Errorf("Lease after the manager exited: err = %v, want NotFound; holder %v\nmanager log:\n%s", err, lease.Spec.HolderIdentity, logs.String())
	}
}
