package metrics

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
)

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(mlv1alpha1.AddToScheme(s))
	return s
}

func model(ns, name string, phase mlv1alpha1.ProtectedModelPhase, conditions ...metav1.Condition) *mlv1alpha1.ProtectedModel {
	return &mlv1alpha1.ProtectedModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Status:     mlv1alpha1.ProtectedModelStatus{Phase: phase, Conditions: conditions},
	}
}

func condition(t string, s metav1.ConditionStatus) metav1.Condition {
	return metav1.Condition{Type: t, Status: s, Reason: "Test"}
}

func trainingJob(ns, name string, phase mlv1alpha1.TrainingJobPhase) *mlv1alpha1.TrainingJob {
	return &mlv1alpha1.TrainingJob{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Status:     mlv1alpha1.TrainingJobStatus{Phase: phase},
	}
}

// serverPod is a model server pod as the kubelet reports it once the unseal
// init container has exited.
func serverPod(ns, name, model string, exitCode int32, message string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue,
			mlv1alpha1.LabelModel:     model,
			builder.LabelComponent:    builder.ComponentServer,
		}},
		Status: corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{{
			Name:  builder.UnsealContainerName,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Message: message}},
		}}},
	}
}

// conditionLines is the expected modelguard_protection_condition family,
// zeros included, for counts by condition type and status.
func conditionLines(counts map[string]map[metav1.ConditionStatus]int) string {
	var b strings.Builder
	b.WriteString("# HELP modelguard_protection_condition Number of ProtectedModels by protection condition type and status; a model without the condition counts as Unknown.\n")
	b.WriteString("# TYPE modelguard_protection_condition gauge\n")
	for _, t := range mlv1alpha1.ProtectionConditionTypes() {
		for _, s := range conditionStatuses {
			b.WriteString("modelguard_protection_condition{status=\"" + string(s) + "\",type=\"" + t + "\"} " +
				strconv.Itoa(counts[t][s]) + "\n")
		}
	}
	return b.String()
}

func TestCollector(t *testing.T) {
	allUnknown := func(n int) map[string]map[metav1.ConditionStatus]int {
		out := map[string]map[metav1.ConditionStatus]int{}
		for _, ct := range mlv1alpha1.ProtectionConditionTypes() {
			out[ct] = map[metav1.ConditionStatus]int{metav1.ConditionUnknown: n}
		}
		return out
	}
	// Two models: one reports three protection conditions, the other none.
	twoModels := allUnknown(2)
	twoModels[mlv1alpha1.ConditionKeyAvailable] = map[metav1.ConditionStatus]int{metav1.ConditionFalse: 1, metav1.ConditionUnknown: 1}
	twoModels[mlv1alpha1.ConditionWeightsEncrypted] = map[metav1.ConditionStatus]int{metav1.ConditionTrue: 1, metav1.ConditionUnknown: 1}
	twoModels[mlv1alpha1.ConditionNetworkIsolated] = map[metav1.ConditionStatus]int{metav1.ConditionTrue: 1, metav1.ConditionUnknown: 1}

	tests := []struct {
		name    string
		objects []client.Object
		metrics []string
		want    string
	}{
		{
			name:    "no objects: trainingjob phases are zero, no model or unseal series",
			metrics: []string{"modelguard_models", "modelguard_trainingjobs", "modelguard_unseal_seconds", "modelguard_protection_condition"},
			want: conditionLines(allUnknown(0)) + `
# HELP modelguard_trainingjobs Number of TrainingJobs by status.phase (Unknown: no status yet).
# TYPE modelguard_trainingjobs gauge
modelguard_trainingjobs{phase="Admitted"} 0
modelguard_trainingjobs{phase="Failed"} 0
modelguard_trainingjobs{phase="Pending"} 0
modelguard_trainingjobs{phase="Running"} 0
modelguard_trainingjobs{phase="Sealing"} 0
modelguard_trainingjobs{phase="Succeeded"} 0
modelguard_trainingjobs{phase="Unknown"} 0
`,
		},
		{
			name: "models by namespace and phase, every phase reported",
			objects: []client.Object{
				model("team-a", "llm", mlv1alpha1.ModelPhaseProtected),
				model("team-a", "ranker", mlv1alpha1.ModelPhaseProtected),
				model("team-a", "broken", mlv1alpha1.ModelPhaseFailed),
				model("team-b", "new", ""),
			},
			metrics: []string{"modelguard_models"},
			want: `
# HELP modelguard_models Number of ProtectedModels by namespace and status.phase (Unknown: no status yet).
# TYPE modelguard_models gauge
modelguard_models{namespace="team-a",phase="Degraded"} 0
modelguard_models{namespace="team-a",phase="Failed"} 1
modelguard_models{namespace="team-a",phase="Pending"} 0
modelguard_models{namespace="team-a",phase="Protected"} 2
modelguard_models{namespace="team-a",phase="Unknown"} 0
modelguard_models{namespace="team-b",phase="Degraded"} 0
modelguard_models{namespace="team-b",phase="Failed"} 0
modelguard_models{namespace="team-b",phase="Pending"} 0
modelguard_models{namespace="team-b",phase="Protected"} 0
modelguard_models{namespace="team-b",phase="Unknown"} 1
`,
		},
		{
			name: "protection conditions counted by type and status, missing ones as Unknown",
			objects: []client.Object{
				model("team-a", "llm", mlv1alpha1.ModelPhaseFailed,
					condition(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse),
					condition(mlv1alpha1.ConditionWeightsEncrypted, metav1.ConditionTrue),
					condition(mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionTrue),
					// Not a protection condition: not counted.
					condition(mlv1alpha1.ConditionReady, metav1.ConditionFalse)),
				model("team-a", "new", ""),
			},
			metrics: []string{"modelguard_protection_condition"},
			want:    conditionLines(twoModels),
		},
		{
			name: "training jobs by phase",
			objects: []client.Object{
				trainingJob("team-a", "a", mlv1alpha1.TrainingPhaseRunning),
				trainingJob("team-b", "b", mlv1alpha1.TrainingPhaseRunning),
				trainingJob("team-b", "c", mlv1alpha1.TrainingPhasePending),
				trainingJob("team-b", "d", ""),
			},
			metrics: []string{"modelguard_trainingjobs"},
			want: `
# HELP modelguard_trainingjobs Number of TrainingJobs by status.phase (Unknown: no status yet).
# TYPE modelguard_trainingjobs gauge
modelguard_trainingjobs{phase="Admitted"} 0
modelguard_trainingjobs{phase="Failed"} 0
modelguard_trainingjobs{phase="Pending"} 1
modelguard_trainingjobs{phase="Running"} 2
modelguard_trainingjobs{phase="Sealing"} 0
modelguard_trainingjobs{phase="Succeeded"} 0
modelguard_trainingjobs{phase="Unknown"} 1
`,
		},
		{
			name: "unseal measurements only from successful unseal reports of server pods",
			objects: []client.Object{
				serverPod("team-a", "llm-1", "llm", 0, "ok digest=sha256:ab files=3 bytes=2147483648 seconds=12.500\n"),
				serverPod("team-a", "llm-2", "llm", 1, "chunk 37 of model.safetensors failed authentication"),
				serverPod("team-a", "llm-3", "llm", 0, ""),
				func() client.Object {
					p := serverPod("team-a", "not-ours", "llm", 0, "ok digest=sha256:ab files=1 bytes=1 seconds=1")
					delete(p.Labels, mlv1alpha1.LabelManagedBy)
					return p
				}(),
			},
			metrics: []string{"modelguard_unseal_seconds", "modelguard_unseal_bytes"},
			want: `
# HELP modelguard_unseal_bytes Plaintext bytes the unseal init container of a model server pod decrypted into memory, from its termination message.
# TYPE modelguard_unseal_bytes gauge
modelguard_unseal_bytes{model="llm",namespace="team-a",pod="llm-1"} 2.147483648e+09
# HELP modelguard_unseal_seconds Seconds the unseal init container of a model server pod took to verify and decrypt the weights, from its termination message.
# TYPE modelguard_unseal_seconds gauge
modelguard_unseal_seconds{model="llm",namespace="team-a",pod="llm-1"} 12.5
`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reader := fake.NewClientBuilder().WithScheme(scheme()).WithObjects(tc.objects...).Build()
			c := NewCollector(reader)
			if err := testutil.CollectAndCompare(c, strings.NewReader(tc.want), tc.metrics...); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestCollectorListFailureKeepsOtherMetrics(t *testing.T) {
	reader := fake.NewClientBuilder().WithScheme(scheme()).
		WithObjects(trainingJob("team-a", "a", mlv1alpha1.TrainingPhaseRunning)).
		WithInterceptorFuncs(interceptor.Funcs{List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*mlv1alpha1.ProtectedModelList); ok {
				return errors.New("protectedmodels is forbidden")
			}
			return c.List(ctx, list, opts...)
		}}).Build()
	c := NewCollector(reader)

	// The registry reports no error: an invalid metric would fail the whole
	// scrape, controller-runtime's metrics included.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	for range 2 {
		if _, err := reg.Gather(); err != nil {
			t.Fatalf("Gather() = %v, want no error when one List fails", err)
		}
	}
	want := `
# HELP modelguard_metrics_list_errors_total Scrapes whose metrics for a resource were left out because listing it from the cache failed.
# TYPE modelguard_metrics_list_errors_total counter
modelguard_metrics_list_errors_total{resource="protectedmodels"} 3
`
	// Two Gathers above and the one in GatherAndCompare.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "modelguard_metrics_list_errors_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "modelguard_models", "modelguard_protection_condition"); err != nil || n != 0 {
		t.Errorf("model metrics = %d series (err %v), want none after a failed List", n, err)
	}
	if n, err := testutil.GatherAndCount(reg, "modelguard_trainingjobs"); err != nil || n == 0 {
		t.Errorf("trainingjob metrics = %d series (err %v), want them despite the failed model List", n, err)
	}
}

func TestMetricNamesFollowPrometheusConventions(t *testing.T) {
	reader := fake.NewClientBuilder().WithScheme(scheme()).WithObjects(
		model("team-a", "llm", mlv1alpha1.ModelPhaseProtected),
		trainingJob("team-a", "a", mlv1alpha1.TrainingPhaseRunning),
		serverPod("team-a", "llm-1", "llm", 0, "ok digest=sha256:ab files=3 bytes=10 seconds=1"),
	).Build()
	problems, err := testutil.CollectAndLint(NewCollector(reader))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]promlint.Problem(nil), problems); diff != "" {
		t.Errorf("promlint problems (-want +got):\n%s", diff)
	}
}
