package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	batchv1ac "k8s.io/client-go/applyconfigurations/batch/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
	"github.com/modelguard/modelguard/test/testenv"
)

func TestPruneFields(t *testing.T) {
	decode := func(s string) map[string]any {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	tests := []struct {
		name              string
		owned, live, want string
		wantLive          string
		wantRemoved       []string
	}{{
		name:     "a sidecar in a keyed list",
		owned:    `{"f:spec":{"f:containers":{"k:{\"name\":\"sidecar\"}":{".":{},"f:name":{},"f:image":{}}}}}`,
		live:     `{"spec":{"containers":[{"name":"server","image":"s"},{"name":"sidecar","image":"x"}]}}`,
		want:     `{"spec":{"containers":[{"name":"server","image":"s"}]}}`,
		wantLive: `{"spec":{"containers":[{"name":"server","image":"s"}]}}`, wantRemoved: []string{`.spec.containers[k:{"name":"sidecar"}]`},
	}, {
		name:     "a field added inside an item ModelGuard owns, an env var, a map key",
		owned:    `{"f:spec":{"f:containers":{"k:{\"name\":\"server\"}":{"f:command":{},"f:env":{"k:{\"name\":\"DUMP\"}":{".":{},"f:name":{},"f:value":{}}}}},"f:selector":{"f:matchLabels":{"f:tampered":{}}}}}`,
		live:     `{"spec":{"containers":[{"name":"server","image":"s","command":["sh"],"env":[{"name":"DUMP","value":"1"}]}],"selector":{"matchLabels":{"m":"a","tampered":"yes"}}}}`,
		want:     `{"spec":{"containers":[{"name":"server","image":"s"}],"selector":{"matchLabels":{"m":"a"}}}}`,
		wantLive: `{"spec":{"containers":[{"name":"server","image":"s"}],"selector":{"matchLabels":{"m":"a"}}}}`,
		wantRemoved: []string{`.spec.containers[k:{"name":"server"}].command`, `.spec.containers[k:{"name":"server"}].env`,
			".spec.selector.matchLabels.tampered"},
	}, {
		name:     "an env var added beside the desired ones",
		owned:    `{"f:spec":{"f:env":{"k:{\"name\":\"DUMP\"}":{".":{},"f:name":{},"f:value":{}}}}}`,
		live:     `{"spec":{"env":[{"name":"A","value":"a"},{"name":"DUMP","value":"1"}]}}`,
		want:     `{"spec":{"env":[{"name":"A","value":"a"}]}}`,
		wantLive: `{"spec":{"env":[{"name":"A","value":"a"}]}}`, wantRemoved: []string{`.spec.env[k:{"name":"DUMP"}]`},
	}, {
		name:     "fields another manager owns with the desired value stay",
		owned:    `{"f:spec":{"f:containers":{"k:{\"name\":\"server\"}":{"f:image":{}}},"f:ports":{"k:{\"port\":8080,\"protocol\":\"TCP\"}":{".":{}}}}}`,
		live:     `{"spec":{"containers":[{"name":"server","image":"evil"}],"ports":[{"port":8080,"protocol":"TCP"}]}}`,
		want:     `{"spec":{"containers":[{"name":"server","image":"s"}],"ports":[{"port":8080,"protocol":"TCP"}]}}`,
		wantLive: `{"spec":{"containers":[{"name":"server","image":"evil"}],"ports":[{"port":8080,"protocol":"TCP"}]}}`,
	}, {
		name:     "set values",
		owned:    `{"f:spec":{"f:finalizers":{"v:\"tenant\"":{}}}}`,
		live:     `{"spec":{"finalizers":["ours","tenant"]}}`,
		want:     `{"spec":{"finalizers":["ours"]}}`,
		wantLive: `{"spec":{"finalizers":["ours"]}}`, wantRemoved: []string{`.spec.finalizers[v:"tenant"]`},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			live := decode(tc.live)
			got, removed := pruneFields(decode(tc.owned), live, decode(tc.want), "")
			if diff := cmp.Diff(decode(tc.wantLive), got); diff != "" {
				t.Errorf("pruned object (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantRemoved, removed, sortStrings); diff != "" {
				t.Errorf("removed (-want +got):\n%s", diff)
			}
		})
	}
}

var sortStrings = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

// The tests below run applyIfChanged and writeStatusIfChanged against a real
// kube-apiserver and etcd (test/testenv), because what they rely on (field
// ownership, managedFields, optimistic locks) is the API server's.

var (
	envOnce sync.Once
	env     *testenv.Env
	envErr  error
)

func apiServer(t *testing.T) (client.Client, string) {
	t.Helper()
	envOnce.Do(func() { env, envErr = testenv.Start() })
	if envErr != nil {
		t.Fatalf("starting the API server: %v", envErr)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "apply-"}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return env.Client, ns.Name
}

func TestEnforceRemovesWhatOthersAdded(t *testing.T) {
	ctx := context.Background()
	c, ns := apiServer(t)
	pm := builders.MakeProtectedModel("m", ns).UID("6f1c1f0e-3a55-4c1b-9a57-2b1d8d7e0c11").Defaulted().Obj()
	desired := builder.Deployment(pm, builder.ProtectedModelFacts{UnsealImage: "modelguard:test", Replicas: 1})
	enforceDeployment := func() bool {
		t.Helper()
		written, err := applyIfChanged(ctx, c, &appsv1.Deployment{ObjectMeta: objectMeta(ns, "m")}, desired, appsv1ac.ExtractDeployment, enforce)
		if err != nil {
			t.Fatal(err)
		}
		return written
	}
	if !enforceDeployment() {
		t.Fatal("the first apply wrote nothing")
	}
	if enforceDeployment() {
		t.Error("an unchanged Deployment was written again")
	}

	// A tenant with edit adds a sidecar, an env var, a volume, a command
	// and a label of their own, and swaps the image.
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "m"}, d); err != nil {
		t.Fatal(err)
	}
	spec := &d.Spec.Template.Spec
	spec.Containers = append(spec.Containers, corev1.Container{Name: "sidecar", Image: "tenant/x"})
	spec.Containers[0].Env = append(spec.Containers[0].Env, corev1.EnvVar{Name: "DUMP", Value: "1"})
	spec.Containers[0].Command = []string{"sh", "-c", "cat /models/*"}
	spec.Containers[0].Image = "tenant/server:evil"
	spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	d.Labels["team"] = "tenant"
	if err := c.Update(ctx, d, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	if !enforceDeployment() {
		t.Fatal("the tenant's edit was not repaired")
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "m"}, d); err != nil {
		t.Fatal(err)
	}
	want, err := typed[appsv1.Deployment](desired)
	if err != nil {
		t.Fatal(err)
	}
	got := d.Spec.Template.Spec
	var names []string
	for _, c := range got.Containers {
		names = append(names, c.Name)
	}
	if diff := cmp.Diff([]string{"server"}, names); diff != "" {
		t.Errorf("containers (-want +got):\n%s", diff)
	}
	server := got.Containers[0]
	if server.Image != want.Spec.Template.Spec.Containers[0].Image || len(server.Command) != 0 || len(server.Env) != 0 {
		t.Errorf("server container kept the tenant's edits: image %s command %v env %v", server.Image, server.Command, server.Env)
	}
	if len(got.Volumes) != len(want.Spec.Template.Spec.Volumes) {
		t.Errorf("volumes %d, want %d: %+v", len(got.Volumes), len(want.Spec.Template.Spec.Volumes), got.Volumes)
	}
	if d.Labels["team"] != "tenant" {
		t.Error("a label another manager set on the object's metadata was removed")
	}
	if enforceDeployment() {
		t.Error("the repaired Deployment was written again")
	}

	// An update under ModelGuard's own manager name is an edit all the same.
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "m"}, d); err != nil {
		t.Fatal(err)
	}
	d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: "disguised", Image: "tenant/x"})
	if err := c.Update(ctx, d, client.FieldOwner(mlv1alpha1.FieldManager)); err != nil {
		t.Fatal(err)
	}
	if !enforceDeployment() {
		t.Fatal("an edit under ModelGuard's manager name was not repaired")
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "m"}, d); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Spec.Template.Spec.Containers); n != 1 {
		t.Errorf("%d containers after the repair, want 1", n)
	}
}

func TestCreateOnceLeavesTheObjectAlone(t *testing.T) {
	ctx := context.Background()
	c, ns := apiServer(t)
	desired := batchv1ac.Job("train", ns).WithSpec(batchv1ac.JobSpec().
		WithSuspend(true).
		WithTemplate(corev1ac.PodTemplateSpec().WithSpec(corev1ac.PodSpec().
			WithRestartPolicy(corev1.RestartPolicyNever).
			WithContainers(corev1ac.Container().WithName("trainer").WithImage("trainer:1")))))
	createJob := func(mode applyMode) bool {
		t.Helper()
		written, err := applyIfChanged(ctx, c, &batchv1.Job{ObjectMeta: objectMeta(ns, "train")}, desired, batchv1ac.ExtractJob, mode)
		if err != nil {
			t.Fatal(err)
		}
		return written
	}
	if !createJob(createOnce) {
		t.Fatal("the Job was not created")
	}

	// Kueue admits it: unsuspends it and writes the flavor's node selector.
	job := &batchv1.Job{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "train"}, job); err != nil {
		t.Fatal(err)
	}
	job.Spec.Suspend = new(bool)
	job.Spec.Template.Spec.NodeSelector = map[string]string{"cloud.example.com/flavor": "a100"}
	if err := c.Update(ctx, job, client.FieldOwner("kueue")); err != nil {
		t.Fatalf("admitting the Job as Kueue does: %v", err)
	}
	if createJob(createOnce) {
		t.Error("create-once wrote an existing Job")
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "train"}, job); err != nil {
		t.Fatal(err)
	}
	if *job.Spec.Suspend || job.Spec.Template.Spec.NodeSelector["cloud.example.com/flavor"] != "a100" {
		t.Errorf("Kueue's admission was undone: suspend %v, nodeSelector %v", *job.Spec.Suspend, job.Spec.Template.Spec.NodeSelector)
	}
}

func TestStatusIsWrittenOnceForEitherKind(t *testing.T) {
	ctx := context.Background()
	c, ns := apiServer(t)
	recorder := events.NewFakeRecorder(10)
	tj := builders.MakeTrainingJob("t", ns).Obj()
	if err := c.Create(ctx, tj); err != nil {
		t.Fatal(err)
	}
	status := *tj.Status.DeepCopy()
	setOwnershipRecordedCondition(&status.Conditions, tj.Generation, workloadFacts{ObjectsMissingOwnership: []string{"*v1.Pod impostor"}})
	setNetworkIsolatedCondition(&status.Conditions, tj.Generation, workloadFacts{PolicyApplied: true})
	if err := writeStatusIfChanged(ctx, c, recorder, tj, trainingJobStatus, status); err != nil {
		t.Fatal(err)
	}
	written := tj.ResourceVersion
	if err := writeStatusIfChanged(ctx, c, recorder, tj, trainingJobStatus, *tj.Status.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	if tj.ResourceVersion != written {
		t.Error("an unchanged status was written again")
	}
	close(recorder.Events)
	var got []string
	for e := range recorder.Events {
		got = append(got, e)
	}
	want := []string{
		"Warning Progressing OwnershipRecorded=False: ownership annotations missing on *v1.Pod impostor",
		"Normal " + mlv1alpha1.ReasonPolicyApplied + " NetworkIsolated=True: default-deny NetworkPolicy in force for ingress and egress",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}

	// A status computed from a stale copy fails on the optimistic lock.
	stale := tj.DeepCopy()
	stale.ResourceVersion = "1"
	fresh := *stale.Status.DeepCopy()
	setHardenedCondition(&fresh.Conditions, 1, workloadFacts{})
	err := writeStatusIfChanged(ctx, c, events.NewFakeRecorder(10), stale, trainingJobStatus, fresh)
	if err == nil || !strings.Contains(err.Error(), "writing status") {
		t.Errorf("stale write: %v, want a conflict", err)
	}
}

// TestMain stops the API server the envtest-backed tests started, so that
// no etcd or kube-apiserver outlives the test binary.
func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the API server:", err)
		}
	}
	os.Exit(code)
}
