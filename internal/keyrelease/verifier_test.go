package keyrelease

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

func TestUnsealRun(t *testing.T) {
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	waiting := corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}
	status := func(unseal corev1.ContainerState, id string, restarts int32, server corev1.ContainerStatus) corev1.PodStatus {
		return corev1.PodStatus{
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "unseal", State: unseal, ContainerID: id, RestartCount: restarts}},
			ContainerStatuses:     []corev1.ContainerStatus{server},
		}
	}
	serverWaiting := corev1.ContainerStatus{Name: "server", State: waiting, Started: ptr.To(false)}
	tests := []struct {
		name                 string
		status               corev1.PodStatus
		wantRun, wantProblem string
	}{
		{"unseal running, server waiting", status(running, "containerd://abc", 0, serverWaiting), "containerd://abc", ""},
		{"before the kubelet reports an ID", status(running, "", 2, serverWaiting), "restart 2", ""},
		{"unseal waiting", status(waiting, "", 0, serverWaiting), "", "the unseal init container is not running"},
		{"server running", status(running, "containerd://abc", 0, corev1.ContainerStatus{Name: "server", State: running}), "",
			"the server container has already started"},
		{"server started flag", status(running, "containerd://abc", 0, corev1.ContainerStatus{Name: "server", State: waiting, Started: ptr.To(true)}), "",
			"the server container has already started"},
		{"no status yet", corev1.PodStatus{}, "", "the unseal init container has not started"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run, problem := unsealRun(&corev1.Pod{Status: tc.status})
			if diff := cmp.Diff([]string{tc.wantRun, tc.wantProblem}, []string{run, problem}); diff != "" {
				t.Errorf("run, problem (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReleaseLedger(t *testing.T) {
	var l releaseLedger
	type result struct{ First, Restarted bool }
	var got []result
	for _, c := range []struct{ pod, run string }{
		{"a", "run-1"}, {"a", "run-1"}, {"a", "run-2"}, {"a", "run-2"}, {"b", "run-1"},
	} {
		first, restarted := l.claim(k8stypes.UID(c.pod), c.run)
		got = append(got, result{first, restarted})
	}
	want := []result{{true, false}, {false, false}, {true, true}, {false, false}, {true, false}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}

	// A release that failed after the claim (provider unavailable) is
	// forgotten, so that the same run's retry is a first claim again.
	l.forget("b", "run-1")
	if first, restarted := l.claim("b", "run-1"); !first || restarted {
		t.Errorf("after forget: first %v restarted %v, want a first claim", first, restarted)
	}
	l.forget("a", "run-2")
	if first, restarted := l.claim("a", "run-2"); !first || !restarted {
		t.Errorf("a forgotten second run: first %v restarted %v, want a first claim of a restarted container", first, restarted)
	}
}

func TestStalledLetsBundleVerdictsThrough(t *testing.T) {
	model := func(reason string) *mlv1alpha1.ProtectedModel {
		pm := &mlv1alpha1.ProtectedModel{}
		pm.Spec.Weights.Memory = resource.MustParse("1Gi")
		if reason != "" {
			pm.Status.Conditions = []metav1.Condition{{Type: mlv1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: reason, Message: "m"}}
		}
		return pm
	}
	tests := []struct{ reason, want string }{
		{"", ""},
		{mlv1alpha1.ReasonMemoryTooSmall, "MemoryTooSmall: m"},
		{mlv1alpha1.ReasonModelKeyNotFound, "ModelKeyNotFound: m"},
		// The unseal container refuses such a bundle itself; a repaired
		// bundle must be able to get its key and be verified again.
		{mlv1alpha1.ReasonBundleTampered, ""},
		{mlv1alpha1.ReasonDigestMismatch, ""},
	}
	for _, tc := range tests {
		if got := stalled(model(tc.reason)); got != tc.want {
			t.Errorf("stalled(%q) = %q, want %q", tc.reason, got, tc.want)
		}
	}
}

func TestServiceAccountOf(t *testing.T) {
	tests := []struct {
		username, wantNamespace, wantName string
		wantOK                            bool
	}{
		{"system:serviceaccount:team-a:m", "team-a", "m", true},
		{"system:serviceaccount:team-a", "", "", false},
		{"system:serviceaccount::m", "", "", false},
		{"system:serviceaccount:team-a:m:extra", "", "", false},
		{"alice", "", "", false},
		{"system:node:worker-1", "", "", false},
	}
	for _, tc := range tests {
		ns, name, ok := serviceAccountOf(tc.username)
		if diff := cmp.Diff([]any{tc.wantNamespace, tc.wantName, tc.wantOK}, []any{ns, name, ok}); diff != "" {
			t.Errorf("serviceAccountOf(%q) (-want +got):\n%s", tc.username, diff)
		}
	}
}
