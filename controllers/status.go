package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// statusOf gives a kind's status and the conditions inside it.
type statusOf[O client.Object, S any] struct {
	status     func(O) *S
	conditions func(*S) []metav1.Condition
}

// writeStatusIfChanged writes obj's status once, only when desired differs
// from it, and then emits an event for each condition that changed status.
// The optimistic lock makes a status computed from a stale copy fail (a
// Conflict the caller treats as "reconcile again") instead of repeating
// transitions, and their events, already written.
func writeStatusIfChanged[O client.Object, S any](ctx context.Context, c client.Client, recorder events.EventRecorder, obj O, of statusOf[O, S], desired S) error {
	current := of.status(obj)
	if equality.Semantic.DeepEqual(*current, desired) {
		return nil
	}
	before := obj.DeepCopyObject().(O)
	*current = desired
	if err := c.Status().Patch(ctx, obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("writing status: %w", err)
	}
	logf.FromContext(ctx).V(1).Info("Status updated")
	emitTransitions(recorder, obj, of.conditions(of.status(before)), of.conditions(current))
	return nil
}

// emitTransitions emits one event for each condition whose status changed to
// True or False: a Warning when the news is bad.
func emitTransitions(recorder events.EventRecorder, obj client.Object, before, after []metav1.Condition) {
	for _, c := range after {
		old := meta.FindStatusCondition(before, c.Type)
		if (old != nil && old.Status == c.Status) || c.Status == metav1.ConditionUnknown {
			continue
		}
		eventType := corev1.EventTypeNormal
		if (c.Status == metav1.ConditionFalse && c.Type != mlv1alpha1.ConditionReconciling) ||
			(c.Type == mlv1alpha1.ConditionStalled && c.Status == metav1.ConditionTrue) {
			eventType = corev1.EventTypeWarning
		}
		// The condition type is the action: the events library folds events
		// with the same reason and action into one series showing only the
		// latest note, and conditions often share a reason (e.g.
		// WeightsVerified, Ready and Stalled all say BundleTampered).
		recorder.Eventf(obj, nil, eventType, c.Reason, c.Type, "%s=%s: %s", c.Type, c.Status, c.Message)
	}
}

// protectedModelStatus reaches a ProtectedModel's status.
var protectedModelStatus = statusOf[*mlv1alpha1.ProtectedModel, mlv1alpha1.ProtectedModelStatus]{
	status:     func(pm *mlv1alpha1.ProtectedModel) *mlv1alpha1.ProtectedModelStatus { return &pm.Status },
	conditions: func(s *mlv1alpha1.ProtectedModelStatus) []metav1.Condition { return s.Conditions },
}

// trainingJobStatus reaches a TrainingJob's status, for its controller.
var trainingJobStatus = statusOf[*mlv1alpha1.TrainingJob, mlv1alpha1.TrainingJobStatus]{
	status:     func(tj *mlv1alpha1.TrainingJob) *mlv1alpha1.TrainingJobStatus { return &tj.Status },
	conditions: func(s *mlv1alpha1.TrainingJobStatus) []metav1.Condition { return s.Conditions },
}
