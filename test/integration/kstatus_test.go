package integration

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/builders"
)

// TestKstatus writes ModelGuard's kstatus conditions through the real API
// server's status subresource and computes the status kstatus-based tools
// (kubectl wait, Flux, cli-utils appliers) see, from the object as the API
// server returns it. test/integration/protectedmodel checks the same with
// the conditions the controller itself writes.
func TestKstatus(t *testing.T) {
	cond := builders.Condition
	const notPermitted = "ModelKey models does not select namespace tenant-a (spec.namespaceSelector: team=nlp)"
	tests := []struct {
		name string
		kind string
		// bumpGeneration changes the spec after the status is written, so
		// that the status describes an older generation.
		bumpGeneration bool
		conditions     []metav1.Condition
		want           status.Result
	}{
		{
			name: "ready model is Current",
			kind: "ProtectedModel",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable, "2 of 2 pods serving", 1),
				cond(mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, mlv1alpha1.ReasonReconciled, "the spec is applied", 1),
			},
			want: status.Result{Status: status.CurrentStatus, Message: "Resource is Ready"},
		},
		{
			name: "reconciling model is InProgress with the Reconciling message",
			kind: "ProtectedModel",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonRollingOut, "1 of 2 pods updated", 1),
				cond(mlv1alpha1.ConditionReconciling, metav1.ConditionTrue, mlv1alpha1.ReasonRollingOut, "1 of 2 pods updated", 1),
			},
			want: status.Result{Status: status.InProgressStatus, Message: "1 of 2 pods updated"},
		},
		{
			name: "model whose ModelKey does not exist is Failed with the Stalled message",
			kind: "ProtectedModel",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, mlv1alpha1.ReasonModelKeyNotFound, "ModelKey models does not exist", 1),
				cond(mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonModelKeyNotFound, "ModelKey models does not exist", 1),
				cond(mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, mlv1alpha1.ReasonModelKeyNotFound, "waiting for the spec or the key to be fixed", 1),
				cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonFailClosed, "not serving, failed closed: ModelKey models does not exist", 1),
			},
			want: status.Result{Status: status.FailedStatus, Message: "ModelKey models does not exist"},
		},
		{
			name: "model whose ModelKey does not select its namespace is Failed",
			kind: "ProtectedModel",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, mlv1alpha1.ReasonKeyNotPermitted, notPermitted, 1),
				cond(mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonKeyNotPermitted, notPermitted, 1),
				cond(mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, mlv1alpha1.ReasonKeyNotPermitted, "waiting for the spec or the key to be fixed", 1),
				cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonFailClosed, "not serving, failed closed: "+notPermitted, 1),
			},
			want: status.Result{Status: status.FailedStatus, Message: notPermitted},
		},
		{
			name: "model waiting for key release is InProgress",
			kind: "ProtectedModel",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionTrue, mlv1alpha1.ReasonKeyReleasable, "ModelKey models is Ready for this namespace", 1),
				cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonProgressing, "waiting for the key-release service's certificate", 1),
				cond(mlv1alpha1.ConditionReconciling, metav1.ConditionTrue, mlv1alpha1.ReasonProgressing, "waiting for the key-release service's certificate", 1),
			},
			want: status.Result{Status: status.InProgressStatus, Message: "waiting for the key-release service's certificate"},
		},
		{
			name:           "ready model whose spec changed since is InProgress",
			kind:           "ProtectedModel",
			bumpGeneration: true,
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable, "2 of 2 pods serving", 1),
			},
			want: status.Result{Status: status.InProgressStatus, Message: "ProtectedModel generation is 2, but latest observed generation is 1"},
		},
		{
			name: "succeeded training job is Current",
			kind: "TrainingJob",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonSucceeded, "training succeeded and the output is sealed", 1),
				cond(mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, mlv1alpha1.ReasonSucceeded, "done", 1),
			},
			want: status.Result{Status: status.CurrentStatus, Message: "Resource is Ready"},
		},
		{
			name: "queued training job is InProgress",
			kind: "TrainingJob",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionReconciling, metav1.ConditionTrue, mlv1alpha1.ReasonQueued, "waiting for admission by gpu-training", 1),
			},
			want: status.Result{Status: status.InProgressStatus, Message: "waiting for admission by gpu-training"},
		},
		{
			name: "training job over its backoff limit is Failed",
			kind: "TrainingJob",
			conditions: []metav1.Condition{
				cond(mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonBackoffLimitExceeded, "the job failed 2 times", 1),
			},
			want: status.Result{Status: status.FailedStatus, Message: "the job failed 2 times"},
		},
	}
	ctx := context.Background()
	ns := newNamespace(t)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var obj client.Object
			name := "k" + string(rune('a'+i))
			switch tc.kind {
			case "ProtectedModel":
				obj = builders.MakeProtectedModel(name, ns).Obj()
			case "TrainingJob":
				obj = builders.MakeTrainingJob(name, ns).Obj()
			}
			if err := env.Client.Create(ctx, obj); err != nil {
				t.Fatalf("creating %s: %v", tc.kind, err)
			}
			switch o := obj.(type) {
			case *mlv1alpha1.ProtectedModel:
				o.Status.ObservedGeneration, o.Status.Conditions = 1, tc.conditions
			case *mlv1alpha1.TrainingJob:
				o.Status.ObservedGeneration, o.Status.Conditions = 1, tc.conditions
			}
			if err := env.Client.Status().Update(ctx, obj); err != nil {
				t.Fatalf("writing status: %v", err)
			}
			if tc.bumpGeneration {
				pm := obj.(*mlv1alpha1.ProtectedModel)
				replicas := int32(3)
				pm.Spec.Server.Replicas = &replicas
				if err := env.Client.Update(ctx, obj); err != nil {
					t.Fatalf("changing the spec: %v", err)
				}
			}

			// kstatus reads unstructured objects: read it back as one.
			u := &unstructured.Unstructured{}
			u.SetGroupVersionKind(mlv1alpha1.GroupVersion.WithKind(tc.kind))
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), u); err != nil {
				t.Fatal(err)
			}
			got, err := status.Compute(u)
			if err != nil {
				t.Fatalf("status.Compute: %v", err)
			}
			if diff := cmp.Diff(tc.want, *got, cmpResult); diff != "" {
				t.Errorf("kstatus (-want +got):\n%s", diff)
			}
		})
	}
}

// cmpResult compares kstatus results by status and message; the conditions
// kstatus synthesizes repeat them.
var cmpResult = cmp.Comparer(func(a, b status.Result) bool {
	return a.Status == b.Status && a.Message == b.Message
})
