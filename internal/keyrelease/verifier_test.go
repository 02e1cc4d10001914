package keyrelease

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
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
