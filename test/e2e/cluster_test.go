//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// report mirrors the demo server's JSON report.
type report struct {
	Dir   string `json:"dir"`
	Tmpfs bool   `json:"tmpfs"`
	Files []struct {
		Path   string `json:"path"`
		Size   int64  `json:"size"`
		SHA256 string `json:"sha256"`
	} `json:"files"`
}

// An init container writes into a memory-backed emptyDir; the main container
// mounts it read-only and sees exactly those bytes, on tmpfs. This is the
// shape of ModelGuard's unseal step.
func TestInitContainerFillsMemoryVolume(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-memvol")
	content := "weights-" + randomSuffix() + randomSuffix()

	init := restrictedContainer("unseal", "write", "/models/weights.bin", content)
	init.VolumeMounts = []corev1.VolumeMount{{Name: "plaintext", MountPath: "/models"}}
	server := restrictedContainer("server", "serve", "--dir", "/models")
	server.VolumeMounts = []corev1.VolumeMount{{Name: "plaintext", MountPath: "/models", ReadOnly: true}}
	server.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
	pod := restrictedPod(ns, "model", nil, server)
	pod.Spec.InitContainers = []corev1.Container{init}
	pod.Spec.Volumes = []corev1.Volume{{Name: "plaintext", VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("16Mi"))},
	}}}
	createPod(t, pod)
	waitForRunning(t, ns, "model")

	out, err := execIn(ns, "model", "server", "/demo-server", "report", "--dir", "/models")
	if err != nil {
		t.Fatal(err)
	}
	var got report
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("parsing the server's report %q: %v", out, err)
	}
	sum := sha256.Sum256([]byte(content))
	if len(got.Files) != 1 || got.Files[0].Path != "weights.bin" || got.Files[0].Size != int64(len(content)) || got.Files[0].SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("server sees %+v, want one file weights.bin of %d bytes with sha256 %x", got.Files, len(content), sum)
	}
	if !got.Tmpfs {
		t.Errorf("the model volume is not tmpfs in the server container: %+v", got)
	}
	// The server's mount is read-only: it cannot alter the plaintext.
	if _, err := execIn(ns, "model", "server", "/demo-server", "write", "/models/tampered", "x"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("writing to the server's model mount: err = %v, want a read-only file system error", err)
	}
}

// fetchFrom GETs url from inside a client pod with a short timeout and
// reports whether an answer came back.
func fetchFrom(ns, pod, url string) error {
	_, err := execIn(ns, pod, "client", "/demo-server", "fetch", "--timeout", "2s", url)
	return err
}

// blocked checks that a client gets no answer from url, and that this is the
// network's doing: the client ran and reported no answer, rather than exec or
// the client itself failing.
func blocked(ns, pod, url string) error {
	err := fetchFrom(ns, pod, url)
	switch {
	case err == nil:
		return fmt.Errorf("%s got an answer from %s", pod, url)
	case !strings.Contains(err.Error(), "no answer"):
		return fmt.Errorf("%s could not try %s: %w", pod, url, err)
	}
	return nil
}

// A NetworkPolicy lets the selected client reach the server and drops the
// other client's packets, checked with real connections from both pods, to
// the pod IP and through the Service's ClusterIP. An egress policy keeps the
// allowed client from reaching a second server of ours.
func TestNetworkPolicyAllowsOnlySelectedClients(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-netpol")
	ctx := context.Background()

	for _, name := range []string{"server", "other-server"} {
		c := restrictedContainer("server", "serve", "--dir", "/tmp")
		c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
		createPod(t, restrictedPod(ns, name, map[string]string{"app": name}, c))
	}
	for _, role := range []string{"allowed", "denied"} {
		createPod(t, restrictedPod(ns, role, map[string]string{"role": role}, restrictedContainer("client", "idle")))
	}
	svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "server"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	serverIP := waitForRunning(t, ns, "server").Status.PodIP
	otherIP := waitForRunning(t, ns, "other-server").Status.PodIP
	waitForRunning(t, ns, "allowed")
	waitForRunning(t, ns, "denied")
	server := fmt.Sprintf("http://%s:8080/healthz", serverIP)
	viaService := fmt.Sprintf("http://%s:80/healthz", svc.Spec.ClusterIP)
	other := fmt.Sprintf("http://%s:8080/healthz", otherIP)

	// Before any policy both clients get through, so a later failure is the
	// policy's doing and not a broken network.
	for _, client := range []string{"allowed", "denied"} {
		for _, url := range []string{server, viaService, other} {
			if err := eventually(30*time.Second, func() error { return fetchFrom(ns, client, url) }); err != nil {
				t.Fatalf("without a policy, %s cannot reach %s: %v", client, url, err)
			}
		}
	}

	_, err = client.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "server-allows-allowed"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromInt32(8080))}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the ingress policy: %v", err)
	}
	// kube-router applies a policy within a second or two of seeing it.
	if err := eventually(30*time.Second, func() error { return blocked(ns, "denied", server) }); err != nil {
		t.Fatalf("the ingress policy was not enforced: %v", err)
	}
	for _, url := range []string{server, viaService} {
		if err := fetchFrom(ns, "allowed", url); err != nil {
			t.Errorf("allowed client, %s: %v; want an answer", url, err)
		}
		if err := blocked(ns, "denied", url); err != nil {
			t.Errorf("denied client: %v; want no answer", err)
		}
	}

	_, err = client.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allowed-egress-only-to-server"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the egress policy: %v", err)
	}
	if err := eventually(30*time.Second, func() error { return blocked(ns, "allowed", other) }); err != nil {
		t.Fatalf("the egress policy was not enforced: %v", err)
	}
	if err := fetchFrom(ns, "allowed", server); err != nil {
		t.Errorf("with egress limited to the server, the allowed client lost the server: %v", err)
	}
	if err := fetchFrom(ns, "denied", other); err != nil {
		t.Errorf("the denied client, which no egress policy selects, cannot reach other-server: %v", err)
	}
}

// eventually retries f until it succeeds or timeout passes.
func eventually(timeout time.Duration, f func() error) error {
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = f()
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %v)", err, last)
	}
	return nil
}

// The fake device plugin's GPUs go through the real scheduler and kubelet: a
// pod asking for one runs and gets a device; a pod asking for more than the
// node has stays Pending with the scheduler's own message.
func TestFakeGPUScheduling(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-gpu")
	ctx := context.Background()
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("listing nodes: %d nodes, %v; want the single local node", len(nodes.Items), err)
	}
	node := nodes.Items[0]
	gpu := corev1.ResourceName("nvidia.com/gpu")
	capacity := node.Status.Allocatable[gpu]
	have := capacity.Value()
	if have < 1 {
		t.Fatalf("node %s advertises %d nvidia.com/gpu; the fake device plugin should advertise at least 1", node.Name, have)
	}
	if node.Labels["nvidia.com/gpu.product"] == "" || node.Labels["nvidia.com/gpu.memory"] == "" {
		t.Errorf("node %s lacks the GPU Feature Discovery labels: %v", node.Name, node.Labels)
	}

	gpuPod := func(name string, count int64) *corev1.Pod {
		c := restrictedContainer("main", "idle")
		c.Resources.Limits = corev1.ResourceList{gpu: *resource.NewQuantity(count, resource.DecimalSI)}
		return restrictedPod(ns, name, nil, c)
	}
	createPod(t, gpuPod("one-gpu", 1))
	createPod(t, gpuPod("too-many-gpus", have+1))

	running := waitForRunning(t, ns, "one-gpu")
	if running.Spec.NodeName != node.Name {
		t.Errorf("one-gpu runs on %q, want %q", running.Spec.NodeName, node.Name)
	}
	visible, err := execIn(ns, "one-gpu", "main", "/demo-server", "env", "NVIDIA_VISIBLE_DEVICES")
	if err != nil {
		t.Fatalf("reading the device the plugin allocated: %v", err)
	}
	if !regexp.MustCompile(`^fake-gpu-\d+$`).MatchString(strings.TrimSpace(visible)) {
		t.Errorf("NVIDIA_VISIBLE_DEVICES = %q, want one fake-gpu-N device", visible)
	}

	pending := waitForPod(t, ns, "too-many-gpus", 60*time.Second, "Unschedulable", func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				return true
			}
		}
		return false
	})
	if pending.Status.Phase != corev1.PodPending || pending.Spec.NodeName != "" {
		t.Errorf("too-many-gpus: phase %s on node %q, want Pending and unscheduled", pending.Status.Phase, pending.Spec.NodeName)
	}
	var message string
	for _, c := range pending.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			message = c.Message
		}
	}
	want := "0/1 nodes are available: 1 Insufficient nvidia.com/gpu"
	if !strings.Contains(message, want) {
		t.Errorf("scheduler's message = %q, want it to contain %q (asked for %d, node has %d)", message, want, have+1, have)
	}
	t.Logf("scheduler: %s", message)
}

// Pods reach the API server the way in-cluster clients do: the
// KUBERNETES_SERVICE_HOST ClusterIP, the projected token and the cluster CA.
func TestPodsReachTheAPIServer(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-apiserver")
	pod := restrictedPod(ns, "in-cluster", nil, restrictedContainer("client", "idle"))
	pod.Spec.AutomountServiceAccountToken = ptr.To(true)
	pod.Spec.EnableServiceLinks = ptr.To(true)
	createPod(t, pod)
	waitForRunning(t, ns, "in-cluster")
	var out string
	err := eventually(20*time.Second, func() error {
		var err error
		out, err = execIn(ns, "in-cluster", "client", "/demo-server", "apicheck")
		return err
	})
	if err != nil {
		t.Fatalf("the pod cannot reach the API server: %v", err)
	}
	if diff := cmp.Diff("status 200", strings.TrimSpace(out)); diff != "" {
		t.Errorf("apicheck (-want +got):\n%s", diff)
	}
	host, err := execIn(ns, "in-cluster", "client", "/demo-server", "env", "KUBERNETES_SERVICE_HOST")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := client.CoreV1().Services("default").Get(context.Background(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(host) != svc.Spec.ClusterIP {
		t.Errorf("KUBERNETES_SERVICE_HOST = %q, want the kubernetes Service's ClusterIP %s", host, svc.Spec.ClusterIP)
	}
}
