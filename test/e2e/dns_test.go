//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
)

// A pod resolves a Service by its short name (the namespace search path) and
// by its full name through CoreDNS, gets the Service's ClusterIP, and reaches
// the server behind it by name.
func TestPodResolvesService(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-dns")
	ctx := context.Background()
	server := restrictedContainer("server", "serve", "--dir", "/tmp")
	server.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	createPod(t, restrictedPod(ns, "web", map[string]string{"app": "web"}, server))
	createPod(t, restrictedPod(ns, "client", nil, restrictedContainer("client", "idle")))
	svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	waitForRunning(t, ns, "web")
	waitForRunning(t, ns, "client")

	for _, name := range []string{"web", "web." + ns, "web." + ns + ".svc.cluster.local"} {
		out, err := execIn(ns, "client", "client", "/demo-server", "lookup", "--wait", "20s", name)
		if err != nil {
			t.Fatalf("resolving %s: %v", name, err)
		}
		if got, want := strings.TrimSpace(out), name+" "+svc.Spec.ClusterIP; got != want {
			t.Errorf("lookup %s = %q, want %q (the Service's ClusterIP)", name, got, want)
		}
	}
	if err := eventually(20*time.Second, func() error { return fetchFrom(ns, "client", "http://web/healthz") }); err != nil {
		t.Errorf("fetching http://web/healthz by the Service's name: %v", err)
	}
	// Names outside the cluster are refused, never forwarded off the machine.
	if out, err := execIn(ns, "client", "client", "/demo-server", "lookup", "example.com"); err == nil {
		t.Errorf("example.com resolved to %q; cluster DNS must not forward outside the machine", out)
	}
}

// The pods of an Indexed Job with a subdomain behind a headless Service find
// each other by their stable names, as the ranks of a training job find their
// rendezvous. Each pod resolves every peer itself (the Job succeeds only if
// all do); the test then checks the names give the pods' own IPs.
func TestIndexedJobPodsResolveEachOther(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-dns-job")
	ctx := context.Background()
	const job, subdomain, ranks = "trainer", "ranks", 2
	_, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: subdomain},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Selector:  map[string]string{batchv1.JobNameLabel: job},
			// Peers look each other up before they are Ready.
			PublishNotReadyAddresses: true,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the headless Service: %v", err)
	}
	var peers []string
	for i := range ranks {
		peers = append(peers, fmt.Sprintf("%s-%d.%s", job, i, subdomain))
	}
	pod := restrictedPod(ns, "", nil, restrictedContainer("rank", append([]string{"lookup", "--wait", "60s"}, peers...)...))
	pod.Spec.Subdomain = subdomain
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	_, err = client.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: job},
		Spec: batchv1.JobSpec{
			CompletionMode: ptr.To(batchv1.IndexedCompletion),
			Completions:    ptr.To[int32](ranks),
			Parallelism:    ptr.To[int32](ranks),
			BackoffLimit:   ptr.To[int32](0),
			Template:       corev1.PodTemplateSpec{Spec: pod.Spec},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Indexed Job: %v", err)
	}
	var last *batchv1.Job
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		j, err := client.BatchV1().Jobs(ns).Get(ctx, job, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = j
		if j.Status.Failed > 0 {
			return false, fmt.Errorf("a rank failed to resolve its peers")
		}
		return j.Status.Succeeded == ranks, nil
	})
	pods, lerr := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: batchv1.JobNameLabel + "=" + job})
	if lerr != nil {
		t.Fatal(lerr)
	}
	if err != nil {
		for _, p := range pods.Items {
			out, _ := execLogs(ns, p.Name)
			t.Logf("pod %s: %s; log: %s", p.Name, describeStatus(&p), out)
		}
		t.Fatalf("the Indexed Job did not succeed: %v (status %+v)", err, last.Status)
	}
	// Every rank printed the same table of its peers' addresses; check it
	// against the pods' IPs.
	want := map[string]string{}
	for _, p := range pods.Items {
		want[fmt.Sprintf("%s.%s", p.Spec.Hostname, subdomain)] = p.Status.PodIP
	}
	for _, p := range pods.Items {
		out, err := execLogs(ns, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			name, ip, _ := strings.Cut(line, " ")
			if want[name] == "" || want[name] != ip {
				t.Errorf("pod %s resolved %q to %q, want the pod IPs %v", p.Name, name, ip, want)
			}
		}
	}
}

// execLogs returns a pod's log through kubectl.
func execLogs(ns, pod string) (string, error) {
	out, err := runKubectl("logs", "-n", ns, pod)
	return out, err
}

// An isolated pod resolves names through the DNS egress rule every protected
// workload's NetworkPolicy carries (the builder's rule, port 53 to kube-dns),
// and nothing else gets out. Policies match the destination pod's own port
// after the Service is translated, so this holds only while CoreDNS listens
// on 53 in its pod, as in a real cluster: with CoreDNS on another port,
// every protected pod failed to resolve the key-release Service.
func TestIsolatedPodResolvesThroughItsDNSRule(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-dns-isolated")
	ctx := context.Background()
	w := builder.Workload{Kind: "ProtectedModel", Name: "dns", Namespace: ns, UID: "00000000-0000-0000-0000-0000000000d5", NameLabel: mlv1alpha1.LabelModel}
	desired := builder.NetworkPolicy(w, builder.Isolation{})
	raw, err := json.Marshal(desired)
	if err != nil {
		t.Fatal(err)
	}
	policy := &networkingv1.NetworkPolicy{}
	if err := json.Unmarshal(raw, policy); err != nil {
		t.Fatal(err)
	}
	policy.OwnerReferences = nil // no such owner here; the policy is the subject
	if _, err := client.NetworkingV1().NetworkPolicies(ns).Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the workload's NetworkPolicy: %v", err)
	}
	createPod(t, restrictedPod(ns, "isolated", w.PodSelector(), restrictedContainer("client", "idle")))
	waitForRunning(t, ns, "isolated")
	name := "kubernetes.default.svc.cluster.local"
	out, err := execIn(ns, "isolated", "client", "/demo-server", "lookup", "--wait", "20s", name)
	if err != nil {
		t.Fatalf("an isolated pod could not resolve %s through its DNS rule: %v", name, err)
	}
	if !strings.HasPrefix(strings.TrimSpace(out), name+" ") {
		t.Errorf("lookup %s = %q", name, out)
	}
}
