package integration

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/builders"
)

// kubectlRunner runs the kubectl built into bin/k8s against the test API
// server, with its own kubeconfig and discovery cache.
type kubectlRunner struct {
	path, kubeconfig, cacheDir string
}

func newKubectl(t *testing.T) *kubectlRunner {
	t.Helper()
	dir := t.TempDir()
	kubeconfig, err := env.Kubeconfig(dir)
	if err != nil {
		t.Fatalf("writing kubeconfig: %v", err)
	}
	return &kubectlRunner{path: env.KubectlPath(), kubeconfig: kubeconfig, cacheDir: t.TempDir()}
}

func (k *kubectlRunner) run(args ...string) (string, error) {
	args = append([]string{"--kubeconfig", k.kubeconfig, "--cache-dir", k.cacheDir}, args...)
	cmd := exec.Command(k.path, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		return out.String() + errOut.String(), err
	}
	return out.String(), nil
}

// eventually runs kubectl until check accepts its output, because the API
// server publishes a new CRD's OpenAPI document a moment after the CRD is
// established.
func (k *kubectlRunner) eventually(t *testing.T, check func(string) string, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := k.run(args...)
		problem := ""
		if err != nil {
			problem = "kubectl failed: " + err.Error()
		} else {
			problem = check(out)
		}
		if problem == "" {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl %s: %s\noutput:\n%s", strings.Join(args, " "), problem, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// containsAll returns a complaint naming the first of wants missing in out.
func containsAll(wants ...string) func(string) string {
	return func(out string) string {
		for _, w := range wants {
			if !strings.Contains(out, w) {
				return "output lacks " + `"` + w + `"`
			}
		}
		return ""
	}
}

// TestKubectlExplain checks that the field documentation reaches
// `kubectl explain`, which is where people read an API.
func TestKubectlExplain(t *testing.T) {
	k := newKubectl(t)
	cases := []struct {
		path  string
		wants []string
		// absent are words that must not appear, e.g. removed fields.
		absent []string
	}{
		{"protectedmodel.spec.weights", []string{
			"KIND:       ProtectedModel",
			"FIELD: weights <Object>",
			"weights says where the sealed weights are, which model digest they",
			"digest\t<string> -required-",
			"sha256:",
			"key\t<Object> -required-",
			"key names the ModelKey whose key-encryption key wrapped the bundle's",
			"memory\t<Object> -required-",
			"source\t<Object> -required-",
			"exactly one of volume",
		}, nil},
		{"protectedmodel.spec.weights.key", []string{
			"FIELD: key <Object>",
			"the operator releases it only to",
			"modelKey\t<string> -required-",
		}, []string{"secretRef", "awsKms", "vaultTransit"}},
		{"protectedmodel.spec.weights.key.modelKey", []string{
			"FIELD: modelKey <string>",
			`modelKey is the name of the ModelKey, e.g. "models-prod".`,
		}, nil},
		{"trainingjob.spec.baseWeights.key.modelKey", []string{
			"KIND:       TrainingJob",
			"FIELD: modelKey <string>",
		}, nil},
		{"tj.spec.output.seal.key", []string{
			"key names the ModelKey that wraps the sealed output's data key",
			"the KEK never reaches the pod",
			"modelKey\t<string> -required-",
		}, []string{"secretRef", "awsKms", "vaultTransit"}},
		{"modelkey.spec.provider", []string{
			"KIND:       ModelKey",
			"FIELD: provider <Object>",
			"exactly one of",
			"secret, awsKms or vaultTransit",
			"awsKms\t<Object>",
			"secret\t<Object>",
			"vaultTransit\t<Object>",
		}, nil},
		{"protectedmodel.spec.server.port", []string{
			"It defaults to 8080.",
		}, nil},
		{"pm.spec.ownership", []string{
			"owner\t<string> -required-",
			"cannot be changed once set",
			"classification\t<string>",
			"enum: Public, Internal, Confidential, TradeSecret",
		}, nil},
		{"protectedmodel.status.conditions", []string{
			"WeightsEncrypted, WeightsVerified, KeyAvailable",
		}, nil},
		{"trainingjob.spec.output", []string{
			"KIND:       TrainingJob",
			"allowUnencryptedStorage\t<boolean>",
			"seal\t<Object> -required-",
			"promoteTo\t<string>",
		}, nil},
		{"tj.spec.gpu", []string{
			"for each of the job's pods",
			"resourceName\t<string>",
			"nvidia.com/mig-1g.10gb",
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			out := k.eventually(t, containsAll(tc.wants...), "explain", tc.path)
			for _, a := range tc.absent {
				if strings.Contains(out, a) {
					t.Errorf("kubectl explain %s still mentions %q", tc.path, a)
				}
			}
			t.Logf("kubectl explain %s:\n%s", tc.path, out)
		})
	}
}

// TestKubectlGetColumns checks the printer columns with real status values,
// which proves their JSONPath filters pick the right conditions, and the
// short names and the modelguard category.
func TestKubectlGetColumns(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	k := newKubectl(t)

	model := builders.MakeProtectedModel("sentiment", ns).GPUs(2).Obj()
	job := builders.MakeTrainingJob("finetune", ns).Nodes(4).GPUs(8).Obj()
	if err := env.Client.Create(ctx, model); err != nil {
		t.Fatalf("creating model: %v", err)
	}
	if err := env.Client.Create(ctx, job); err != nil {
		t.Fatalf("creating job: %v", err)
	}
	// Different values for each condition, so that a column reading the
	// wrong condition shows the wrong value.
	status := func(condType string, s metav1.ConditionStatus) metav1.Condition {
		return builders.Condition(condType, s, "Test", "set by the test", 1)
	}
	model.Status = mlv1alpha1.ProtectedModelStatus{
		ObservedGeneration: 1,
		Phase:              mlv1alpha1.ModelPhaseDegraded,
		Conditions: []metav1.Condition{
			status(mlv1alpha1.ConditionWeightsEncrypted, metav1.ConditionTrue),
			status(mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse),
			status(mlv1alpha1.ConditionReady, metav1.ConditionUnknown),
			status(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse),
		},
	}
	if err := env.Client.Status().Update(ctx, model); err != nil {
		t.Fatalf("updating model status: %v", err)
	}
	job.Status = mlv1alpha1.TrainingJobStatus{
		Phase: mlv1alpha1.TrainingPhaseSucceeded,
		Conditions: []metav1.Condition{
			status(mlv1alpha1.ConditionWeightsEncrypted, metav1.ConditionFalse),
			status(mlv1alpha1.ConditionOutputSealed, metav1.ConditionTrue),
		},
	}
	if err := env.Client.Status().Update(ctx, job); err != nil {
		t.Fatalf("updating job status: %v", err)
	}

	cases := []struct {
		resource string
		want     map[string]string // column -> value in the object's row
		columns  []string
	}{
		{
			resource: "pm",
			columns:  []string{"NAME", "OWNER", "CLASS", "ENCRYPTED", "ISOLATED", "GPUS", "READY", "PHASE", "AGE"},
			want: map[string]string{
				"NAME": "sentiment", "OWNER": "Acme Corp", "CLASS": "TradeSecret", "ENCRYPTED": "True",
				"ISOLATED": "False", "GPUS": "2", "READY": "Unknown", "PHASE": "Degraded",
			},
		},
		{
			resource: "tj",
			columns:  []string{"NAME", "OWNER", "NODES", "GPUS", "PHASE", "SEALED", "AGE"},
			want: map[string]string{
				"NAME": "finetune", "OWNER": "Acme Corp", "NODES": "4", "GPUS": "8", "PHASE": "Succeeded", "SEALED": "True",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.resource, func(t *testing.T) {
			out, err := k.run("get", tc.resource, "-n", ns)
			if err != nil {
				t.Fatalf("kubectl get %s: %v\n%s", tc.resource, err, out)
			}
			header, rows := parseTable(out)
			if diff := cmp.Diff(tc.columns, header); diff != "" {
				t.Errorf("columns (-want +got):\n%s\noutput:\n%s", diff, out)
			}
			if len(rows) != 1 {
				t.Fatalf("want 1 row, got %d:\n%s", len(rows), out)
			}
			got := rows[0]
			delete(got, "AGE")
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("row (-want +got):\n%s\noutput:\n%s", diff, out)
			}
		})
	}

	t.Run("category modelguard lists both namespaced kinds", func(t *testing.T) {
		out, err := k.run("get", "modelguard", "-n", ns, "-o", "name")
		if err != nil {
			t.Fatalf("kubectl get modelguard: %v\n%s", err, out)
		}
		// ModelKeys are in the category too, but cluster-scoped: -n does
		// not narrow them, so any that other tests created are left out.
		var got []string
		for _, name := range strings.Fields(out) {
			if !strings.HasPrefix(name, "modelkey.ml.modelguard.dev/") {
				got = append(got, name)
			}
		}
		want := []string{"protectedmodel.ml.modelguard.dev/sentiment", "trainingjob.ml.modelguard.dev/finetune"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("kubectl get modelguard -o name (-want +got):\n%s", diff)
		}
	})
}

// parseTable splits kubectl's table output into the header and one map per
// row. Columns are found from the header's word starts, because values such
// as "Acme Corp" contain spaces.
func parseTable(out string) ([]string, []map[string]string) {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		return nil, nil
	}
	head := lines[0]
	var names []string
	var starts []int
	for i := 0; i < len(head); i++ {
		if head[i] != ' ' && (i == 0 || head[i-1] == ' ') {
			starts = append(starts, i)
		}
	}
	for j, s := range starts {
		end := len(head)
		if j+1 < len(starts) {
			end = starts[j+1]
		}
		names = append(names, strings.TrimSpace(head[s:end]))
	}
	var rows []map[string]string
	for _, line := range lines[1:] {
		row := map[string]string{}
		for j, s := range starts {
			end := len(line)
			if j+1 < len(starts) && starts[j+1] < len(line) {
				end = starts[j+1]
			}
			if s < len(line) {
				row[names[j]] = strings.TrimSpace(line[s:end])
			}
		}
		rows = append(rows, row)
	}
	return names, rows
}
