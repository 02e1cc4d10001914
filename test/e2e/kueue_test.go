//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/modelguard/modelguard/hack/local-cluster/cluster"
)

var (
	localQueues = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "localqueues"}
	workloads   = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "workloads"}
)

// The real Kueue, installed on demand, admits a suspended Job labelled with a
// LocalQueue whose ClusterQueue has the node's 2 fake GPUs: the Job is
// unsuspended and its pod runs. A second Job that needs 2 GPUs while 1 is in
// use waits, suspended, with Kueue's reason; once the first is deleted it is
// admitted, so what held it was the quota.
//
// Not parallel: installing Kueue adds webhooks for every Job, so it runs
// before the parallel tests start, and it waits for its pods to be gone so
// that they do not hold GPUs other tests count on.
func TestKueueAdmitsJobsWithinGPUQuota(t *testing.T) {
	workDir, err := clusterWorkDir()
	if err != nil {
		t.Fatal(err)
	}
	install := exec.Command(filepath.Join(repoRoot(), "bin", "local-cluster"), "-repo", repoRoot(), "-work-dir", workDir, "kueue")
	install.Env = os.Environ()
	began := time.Now()
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("installing Kueue (local-cluster kueue): %v\n%s", err, out)
	}
	t.Logf("Kueue installed and serving after %.1fs", time.Since(began).Seconds())

	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, "e2e-kueue")
	ctx := context.Background()
	lq := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
		"metadata": map[string]any{"name": "training", "namespace": ns},
		"spec":     map[string]any{"clusterQueue": cluster.KueueClusterQueue},
	}}
	if _, err := dyn.Resource(localQueues).Namespace(ns).Create(ctx, lq, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the LocalQueue: %v", err)
	}

	gpuJob := func(name string, gpus int64) *batchv1.Job {
		c := restrictedContainer("main", "idle")
		c.Resources.Limits = corev1.ResourceList{corev1.ResourceName("nvidia.com/gpu"): *resource.NewQuantity(gpus, resource.DecimalSI)}
		pod := restrictedPod(ns, "", nil, c)
		pod.Spec.RestartPolicy = corev1.RestartPolicyNever
		return &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{cluster.KueueQueueLabel: "training"}},
			Spec: batchv1.JobSpec{
				Suspend:      ptr.To(true),
				BackoffLimit: ptr.To[int32](0),
				Template:     corev1.PodTemplateSpec{Spec: pod.Spec},
			},
		}
	}
	t.Cleanup(func() {
		// Foreground deletion: the pods are gone, and their GPUs free, before
		// the parallel tests start.
		for _, name := range []string{"first", "second"} {
			_ = client.BatchV1().Jobs(ns).Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground), GracePeriodSeconds: ptr.To[int64](0)})
		}
		_ = wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
			pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil && len(pods.Items) == 0, nil
		})
	})
	if _, err := client.BatchV1().Jobs(ns).Create(ctx, gpuJob("first", 1), metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the first Job: %v", err)
	}
	waitAdmittedAndRunning(t, ns, "first")

	if _, err := client.BatchV1().Jobs(ns).Create(ctx, gpuJob("second", 2), metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the second Job: %v", err)
	}
	// Kueue evaluates the second Job's Workload and leaves it without quota.
	var message string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		message = pendingMessage(ctx, dyn, ns, "second")
		return strings.Contains(message, "insufficient"), nil
	})
	if err != nil {
		t.Fatalf("the second Job's Workload has no 'insufficient quota' condition after 60s; last message %q", message)
	}
	t.Logf("Kueue holds the second Job: %s", message)
	if j, err := client.BatchV1().Jobs(ns).Get(ctx, "second", metav1.GetOptions{}); err != nil || !ptr.Deref(j.Spec.Suspend, false) {
		t.Fatalf("the second Job should stay suspended while 1 of 2 GPUs is in use: %v, suspend=%v", err, j.Spec.Suspend)
	}
	if pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: batchv1.JobNameLabel + "=second"}); err != nil || len(pods.Items) != 0 {
		t.Errorf("the waiting Job has %d pods (%v), want none", len(pods.Items), err)
	}

	if err := client.BatchV1().Jobs(ns).Delete(ctx, "first", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground), GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	waitAdmittedAndRunning(t, ns, "second")
}

// waitAdmittedAndRunning waits until Kueue has unsuspended the Job and its
// pod runs.
func waitAdmittedAndRunning(t *testing.T, ns, job string) {
	t.Helper()
	var state string
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		j, err := client.BatchV1().Jobs(ns).Get(ctx, job, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if ptr.Deref(j.Spec.Suspend, false) {
			state = "still suspended"
			return false, nil
		}
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: batchv1.JobNameLabel + "=" + job})
		if err != nil || len(pods.Items) == 0 {
			state = "admitted, no pod yet"
			return false, nil
		}
		state = describeStatus(&pods.Items[0])
		return pods.Items[0].Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("Job %s/%s was not admitted and running within 90s: %s", ns, job, state)
	}
}

// pendingMessage returns the message of the QuotaReserved condition of the
// Job's Workload.
func pendingMessage(ctx context.Context, dyn dynamic.Interface, ns, job string) string {
	list, err := dyn.Resource(workloads).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	for _, wl := range list.Items {
		owners := wl.GetOwnerReferences()
		if len(owners) == 0 || owners[0].Name != job {
			continue
		}
		conds, _, _ := unstructured.NestedSlice(wl.Object, "status", "conditions")
		for _, c := range conds {
			cm, _ := c.(map[string]any)
			if cm["type"] == "QuotaReserved" {
				return fmt.Sprintf("%v: %v", cm["reason"], cm["message"])
			}
		}
		return "workload has no QuotaReserved condition yet"
	}
	return "no workload yet"
}
