//go:build e2e

// Package e2e runs end-to-end tests against the local cluster
// (hack/local-cluster): real pods on containerd, real Services through
// kube-proxy, real NetworkPolicy enforcement by kube-router, and real GPU
// accounting against fake devices. `make test-e2e` brings the cluster up,
// runs them with KUBECONFIG set, and tears it down.
//
// Every connection a test makes goes to a pod IP on the cluster's bridge or
// to a ClusterIP, from inside a pod; nothing leaves the machine.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/modelguard/modelguard/hack/local-cluster/cluster"
	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

var (
	client  *kubernetes.Clientset
	kubectl string
)

func TestMain(m *testing.M) {
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// setup fails, rather than skips, without a cluster: an e2e run that
// silently tests nothing proves nothing.
func setup() error {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		return fmt.Errorf("KUBECONFIG is not set: run the e2e tests through `make test-e2e`, which brings up the local cluster")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	client, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("building a client: %w", err)
	}
	kubectl = filepath.Join(repoRoot(), "bin", "k8s", "1.37.2", "kubectl")
	if assets := os.Getenv("KUBEBUILDER_ASSETS"); assets != "" {
		kubectl = filepath.Join(assets, "kubectl")
	}
	if _, err := os.Stat(kubectl); err != nil {
		return fmt.Errorf("kubectl is missing at %s: run `make envtest-assets`: %w", kubectl, err)
	}
	return nil
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func randomSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newNamespace creates a namespace that enforces Pod Security "restricted",
// so the API server admits only pods that pass it, and deletes it afterwards.
func newNamespace(t testing.TB, prefix string) string {
	t.Helper()
	return newLabelledNamespace(t, prefix, nil)
}

// newLabelledNamespace is newNamespace with extra labels, e.g. the one a
// ModelKey's namespaceSelector selects.
func newLabelledNamespace(t testing.TB, prefix string, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: prefix + "-" + randomSuffix(),
		Labels: map[string]string{
			"pod-security.kubernetes.io/enforce": "restricted",
			"pod-security.kubernetes.io/warn":    "restricted",
		},
	}}
	for k, v := range labels {
		ns.Labels[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	created, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace %s: %v", ns.Name, err)
	}
	// The API server admits a pod only once its ServiceAccount exists, which
	// the controller manager creates shortly after the namespace.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(created.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s got no default ServiceAccount within 20s (is kube-controller-manager running?)", created.Name)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpNamespace(t, created.Name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Namespaces().Delete(ctx, created.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	return created.Name
}

// dumpNamespace logs what a failed test left, for diagnosis.
func dumpNamespace(t testing.TB, ns string) {
	out, _ := exec.Command(kubectl, "get", "pods,services,networkpolicies,events", "-n", ns, "-o", "wide").CombinedOutput()
	t.Logf("namespace %s at failure:\n%s", ns, out)
}

// restrictedContainer returns a container that passes Pod Security
// "restricted", running the demo server image.
func restrictedContainer(name string, args ...string) corev1.Container {
	return corev1.Container{
		Name:                     name,
		Image:                    images.DemoServerRef,
		ImagePullPolicy:          corev1.PullNever,
		Args:                     args,
		SecurityContext:          cluster.RestrictedSecurityContext(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

func restrictedPod(ns, name string, labels map[string]string, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			Containers:                    containers,
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		},
	}
}

func createPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	created, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return created
}

// waitForPod polls a pod until done says so, failing the test with the pod's
// state when timeout passes.
func waitForPod(t testing.TB, ns, name string, timeout time.Duration, what string, done func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = pod
		return done(pod), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s did not become %s within %s; status: %s", ns, name, what, timeout, describeStatus(last))
	}
	return last
}

func waitForRunning(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	return waitForPod(t, ns, name, 90*time.Second, "Ready", func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
}

func describeStatus(p *corev1.Pod) string {
	if p == nil {
		return "(never read)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s", p.Status.Phase)
	for _, c := range p.Status.Conditions {
		fmt.Fprintf(&b, " %s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message)
	}
	for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			fmt.Fprintf(&b, " %s waiting %s: %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			fmt.Fprintf(&b, " %s terminated %s (exit %d): %s", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode, cs.State.Terminated.Message)
		}
	}
	return b.String()
}

// execIn runs a command in a pod's container through the real kubectl exec
// (API server -> kubelet -> containerd).
func execIn(ns, pod, container string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"exec", "-n", ns, pod, "-c", container, "--"}, argv...)
	cmd := exec.CommandContext(ctx, kubectl, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("kubectl exec %s/%s -- %s: %w: %s", ns, pod, strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
