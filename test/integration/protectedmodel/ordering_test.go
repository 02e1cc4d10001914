package protectedmodel

import (
	"strings"
	"testing"

	"github.com/modelguard/modelguard/test/builders"
)

// TestDeploymentComesAfterItsAccountAndPolicy: the model's pods run as its
// ServiceAccount and are selected by its NetworkPolicy, so both are written
// before the Deployment. On a real cluster the ReplicaSet controller
// otherwise fails to create the pods (no such ServiceAccount), and a pod
// could run before its NetworkPolicy exists.
func TestDeploymentComesAfterItsAccountAndPolicy(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("ordered", ns))

	first := map[string]int{}
	for i, w := range writes.inNamespace(ns) {
		for _, kind := range []string{"/serviceaccounts/" + pm.Name, "/networkpolicies/" + pm.Name, "/deployments/" + pm.Name} {
			if _, seen := first[kind]; !seen && strings.Contains(w, kind) {
				first[kind] = i
			}
		}
	}
	deployment, ok := first["/deployments/"+pm.Name]
	if !ok {
		t.Fatalf("the controller never wrote the Deployment: %v", writes.inNamespace(ns))
	}
	for _, kind := range []string{"/serviceaccounts/" + pm.Name, "/networkpolicies/" + pm.Name} {
		if i, ok := first[kind]; !ok || i > deployment {
			t.Errorf("%s first written at %d (present: %v), after the Deployment at %d; writes: %v", kind, i, ok, deployment, writes.inNamespace(ns))
		}
	}
}
