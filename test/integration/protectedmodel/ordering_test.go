package protectedmodel

import (
	"strings"
	"testing"

	"github.com/modelguard/modelguard/test/builders"
)

// TestKeyResolveJobComesAfterItsAccountAndPolicy: the key-resolve Job's pod
// runs as the model's ServiceAccount and is selected by the model's
// NetworkPolicy, so both are written before the Job. On a real cluster the
// Job controller otherwise fails to create the pod (no such ServiceAccount)
// and the pod could run before its NetworkPolicy exists.
func TestKeyResolveJobComesAfterItsAccountAndPolicy(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("ordered", ns))

	first := map[string]int{}
	for i, w := range writes.inNamespace(ns) {
		for _, kind := range []string{"/serviceaccounts/" + pm.Name, "/networkpolicies/" + pm.Name, "/jobs/" + pm.Name + "-kr-"} {
			if _, seen := first[kind]; !seen && strings.Contains(w, kind) {
				first[kind] = i
			}
		}
	}
	job, ok := first["/jobs/"+pm.Name+"-kr-"]
	if !ok {
		t.Fatalf("the controller never wrote the key-resolve Job: %v", writes.inNamespace(ns))
	}
	for _, kind := range []string{"/serviceaccounts/" + pm.Name, "/networkpolicies/" + pm.Name} {
		if i, ok := first[kind]; !ok || i > job {
			t.Errorf("%s first written at %d (present: %v), after the key-resolve Job at %d; writes: %v", kind, i, ok, job, writes.inNamespace(ns))
		}
	}
}
