package protectedmodel

import (
	"context"
	"fmt"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/builders"
)

// TestEachTransitionHasItsOwnEvent: conditions that change together with the
// same reason (an unseal failure turns WeightsVerified False and Stalled
// True, both BundleTampered) each get an event, neither folded into the
// other's series, and no transition is announced twice.
func TestEachTransitionHasItsOwnEvent(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("announced", ns))
	d := getDeployment(t, pm)
	const reason = "chunk 2 of model.safetensors failed authentication"
	createServerPod(t, d, pm.Name+"-bad", unsealedPodStatus(1, reason))
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonBundleTampered)

	want := []string{
		"WeightsVerified=False: " + reason,
		"Stalled=True: " + reason,
	}
	eventually(t, "an event for each transition", func() error {
		events := &eventsv1.EventList{}
		if err := k8s.List(context.Background(), events, client.InNamespace(ns)); err != nil {
			return err
		}
		count := map[string]int32{}
		for _, ev := range events.Items {
			if ev.Regarding.Name != pm.Name {
				continue
			}
			n := int32(1)
			if ev.Series != nil {
				n = ev.Series.Count
			}
			count[ev.Note] += n
		}
		for _, note := range want {
			if count[note] == 0 {
				return fmt.Errorf("no event %q among %v", note, count)
			}
		}
		for note, n := range count {
			if n > 1 {
				return fmt.Errorf("event %q emitted %d times", note, n)
			}
		}
		return nil
	})
}
