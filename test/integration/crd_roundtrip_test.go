package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// newNamespace creates a namespace with a generated name and removes it when
// the test ends.
// newNamespace makes a namespace that enforces Pod Security baseline, as a
// namespace must before a model is served in it.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "it-",
		Labels: map[string]string{mlv1alpha1.LabelPodSecurityEnforce: "baseline"}}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), ns) })
	return ns.Name
}

// sampleObjects reads every object in config/samples.
func sampleObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	dir := filepath.Join(env.RepoRoot, "config", "samples")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("reading samples: %v", err)
	}
	var objs []*unstructured.Unstructured
	for _, e := range entries {
		if e.Name() == "kustomization.yaml" || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatalf("reading %s: %v", e.Name(), err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("parsing %s: %v", e.Name(), err)
			}
			objs = append(objs, u)
		}
	}
	return objs
}

// TestSamplesRoundTrip creates every sample through the real API server and
// reads it back, checking that no field the sample sets was pruned or changed.
func TestSamplesRoundTrip(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	kinds := map[string]bool{}
	for _, sample := range sampleObjects(t) {
		if sample.GetAPIVersion() != "ml.modelguard.dev/v1alpha1" {
			continue
		}
		kinds[sample.GetKind()] = true
		t.Run(sample.GetKind()+"/"+sample.GetName(), func(t *testing.T) {
			sample.SetNamespace(ns)
			want := sample.DeepCopy()
			if err := env.Client.Create(ctx, sample); err != nil {
				t.Fatalf("API server rejected the sample: %v", err)
			}
			// Cluster-scoped samples (ModelKey) outlive the namespace.
			t.Cleanup(func() { _ = env.Client.Delete(ctx, sample) })
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(want.GroupVersionKind())
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: want.GetName()}, got); err != nil {
				t.Fatalf("reading back: %v", err)
			}
			if path, ok := subset(want.Object["spec"], got.Object["spec"], "spec"); !ok {
				wantJSON, _ := json.Marshal(want.Object["spec"])
				gotJSON, _ := json.Marshal(got.Object["spec"])
				t.Fatalf("%s was lost or changed in the round trip\nsent: %s\ngot:  %s", path, wantJSON, gotJSON)
			}
		})
	}
	for _, kind := range []string{"ProtectedModel", "TrainingJob", "ModelKey"} {
		if !kinds[kind] {
			t.Errorf("config/samples has no %s", kind)
		}
	}
}

// subset reports whether every value in want is present and equal in got;
// got may have more (defaults). It returns the first differing path.
func subset(want, got any, path string) (string, bool) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return path, false
		}
		for k, v := range w {
			if p, ok := subset(v, g[k], path+"."+k); !ok {
				return p, false
			}
		}
		return "", true
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return path, false
		}
		for i := range w {
			if p, ok := subset(w[i], g[i], path+"["+strconv.Itoa(i)+"]"); !ok {
				return p, false
			}
		}
		return "", true
	default:
		// JSON numbers decode as int64 from YAML and float64 or int64 from
		// the server; compare their JSON forms.
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(got)
		return path, reflect.DeepEqual(wj, gj)
	}
}

// TestSamplesNameTheirModelKey checks that every key reference in the samples
// (weights.key, baseWeights.key, output.seal.key) names a ModelKey the
// samples define, so that applying config/samples gives models whose key
// exists.
func TestSamplesNameTheirModelKey(t *testing.T) {
	defined := map[string]bool{}
	for _, obj := range sampleObjects(t) {
		if obj.GetKind() == "ModelKey" {
			defined[obj.GetName()] = true
		}
	}
	refs := map[string][][]string{
		"ProtectedModel": {{"spec", "weights", "key", "modelKey"}},
		"TrainingJob":    {{"spec", "baseWeights", "key", "modelKey"}, {"spec", "output", "seal", "key", "modelKey"}},
	}
	seen := 0
	for _, obj := range sampleObjects(t) {
		for _, path := range refs[obj.GetKind()] {
			name, found, err := unstructured.NestedString(obj.Object, path...)
			if err != nil || !found {
				continue
			}
			seen++
			if !defined[name] {
				t.Errorf("%s %s: %s names ModelKey %q, which config/samples does not define", obj.GetKind(), obj.GetName(), strings.Join(path, "."), name)
			}
		}
	}
	if seen == 0 {
		t.Error("no sample names a ModelKey")
	}
}
