package integration

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/modelguard/modelguard/test/builders"
)

// toUnstructured converts a typed object so that a test can send what the Go
// types cannot express: a missing required field, a zero that omitempty
// would drop, a value of the wrong type.
func toUnstructured(t *testing.T, obj client.Object) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatalf("converting %T to unstructured: %v", obj, err)
	}
	return &unstructured.Unstructured{Object: m}
}

// rawEdit is an edit of an object's JSON form.
type rawEdit func(obj map[string]any) error

// set sets the field at path to value.
func set(value any, path ...string) rawEdit {
	return func(obj map[string]any) error {
		return unstructured.SetNestedField(obj, value, path...)
	}
}

// drop removes the field at path, failing if it was not there, so that a
// case cannot pass by removing a field that was never sent.
func drop(path ...string) rawEdit {
	return func(obj map[string]any) error {
		if _, found, _ := unstructured.NestedFieldNoCopy(obj, path...); !found {
			return fmt.Errorf("field %s is not set, so dropping it tests nothing", strings.Join(path, "."))
		}
		unstructured.RemoveNestedField(obj, path...)
		return nil
	}
}

// rawPM is a minimal valid ProtectedModel, changed first by the typed
// mutation (may be nil) and then by the raw edits.
func rawPM(mutate func(*builders.ProtectedModelWrapper), edits ...rawEdit) func(*testing.T, string) client.Object {
	return func(t *testing.T, ns string) client.Object {
		w := builders.MakeProtectedModel("model", ns)
		if mutate != nil {
			mutate(w)
		}
		return applyEdits(t, w.Obj(), edits)
	}
}

// rawTJ is rawPM for a TrainingJob.
func rawTJ(mutate func(*builders.TrainingJobWrapper), edits ...rawEdit) func(*testing.T, string) client.Object {
	return func(t *testing.T, ns string) client.Object {
		w := builders.MakeTrainingJob("job", ns)
		if mutate != nil {
			mutate(w)
		}
		return applyEdits(t, w.Obj(), edits)
	}
}

func applyEdits(t *testing.T, obj client.Object, edits []rawEdit) client.Object {
	t.Helper()
	if len(edits) == 0 {
		return obj
	}
	u := toUnstructured(t, obj)
	for _, edit := range edits {
		if err := edit(u.Object); err != nil {
			t.Fatalf("building the case: %v", err)
		}
	}
	return u
}

// pm is a minimal valid ProtectedModel changed by mutate.
func pm(mutate func(*builders.ProtectedModelWrapper)) func(*testing.T, string) client.Object {
	return rawPM(mutate)
}

// tj is a minimal valid TrainingJob changed by mutate.
func tj(mutate func(*builders.TrainingJobWrapper)) func(*testing.T, string) client.Object {
	return rawTJ(mutate)
}

// causes returns the field errors of an Invalid error from the API server,
// or fails the test if err is not one.
func causes(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		t.Fatal("the API server accepted the object; want it rejected as invalid")
	}
	var status *apierrors.StatusError
	if !errors.As(err, &status) || !apierrors.IsInvalid(err) {
		t.Fatalf("want an Invalid error from the API server, got %T: %v", err, err)
	}
	var out []string
	if d := status.ErrStatus.Details; d != nil {
		for _, c := range d.Causes {
			out = append(out, c.Field+": "+c.Message)
		}
	}
	return out
}
