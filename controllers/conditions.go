package controllers

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
	"github.com/modelguard/modelguard/internal/seal"
)

// The condition setters work on the conditions of either kind. Each is pure,
// stamps observedGeneration, and keeps the transition time of a condition
// whose status does not change (meta.SetStatusCondition).

func set(conditions *[]metav1.Condition, gen int64, conditionType string, s metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(conditions, metav1.Condition{
		Type: conditionType, Status: s, Reason: reason, Message: message, ObservedGeneration: gen,
	})
}

func setKeyAvailableCondition(conditions *[]metav1.Condition, gen int64, k keyState) {
	if k.KeyReason != "" {
		set(conditions, gen, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, k.KeyReason, k.KeyMessage)
		return
	}
	set(conditions, gen, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionTrue, mlv1alpha1.ReasonKeyReleasable,
		fmt.Sprintf("ModelKey %s is Ready for this namespace; the data key is released only to the verified unseal containers of this model's pods", k.ModelKey))
}

func setWeightsEncryptedCondition(conditions *[]metav1.Condition, gen int64, bundleLocation string) {
	set(conditions, gen, mlv1alpha1.ConditionWeightsEncrypted, metav1.ConditionTrue, mlv1alpha1.ReasonSealedBundle,
		fmt.Sprintf("weights are read only from the sealed bundle %s and decrypted into memory", bundleLocation))
}

// setWeightsVerifiedCondition reports what the unseal init containers of the
// workload's own pods said.
//
// A key-release refusal says nothing about the bundle, so it does not replace
// a verdict on it: after BundleTampered the model is stalled, the next unseal
// run is refused (ModelStalled), and letting that refusal replace the verdict
// would un-stall the model, release the key again and fail again, forever.
func setWeightsVerifiedCondition(conditions *[]metav1.Condition, gen int64, k keyState, pods []corev1.Pod) {
	if c := meta.FindStatusCondition(*conditions, mlv1alpha1.ConditionWeightsVerified); c != nil && c.Status == metav1.ConditionFalse &&
		isBundleVerdict(c.Reason) && onlyKeyDenials(pods) {
		c.ObservedGeneration = gen
		return
	}
	verified, format := false, 0
	for i := range pods {
		message, code, done := terminated(pods[i].Status.InitContainerStatuses, mlv1alpha1.ContainerUnseal)
		if !done {
			continue
		}
		if code != 0 {
			if message == "" {
				message = fmt.Sprintf("the unseal init container exited with code %d", code)
			}
			set(conditions, gen, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, classifyUnsealError(message), message)
			return
		}
		verified = true
		if report, err := seal.ParseReport(message); err == nil && report.FormatVersion > 0 {
			format = report.FormatVersion
		}
	}
	if verified {
		message := "every chunk authenticated and the model digest matched spec.weights.digest"
		// A v1 bundle's key wrap is not bound to it: say so where platform
		// teams look, so that they reseal (docs/sealed-format.md).
		if format > 0 {
			message += "; bundle " + seal.FormatDescription(format)
		}
		set(conditions, gen, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionTrue, mlv1alpha1.ReasonDigestVerified, message)
		return
	}
	if c := meta.FindStatusCondition(*conditions, mlv1alpha1.ConditionWeightsVerified); c != nil &&
		c.Status == metav1.ConditionTrue && len(pods) == 0 && k.KeyReason == "" {
		// Verified pods were scaled away; the bundle and digest are unchanged.
		c.ObservedGeneration = gen
		return
	}
	set(conditions, gen, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionUnknown, mlv1alpha1.ReasonVerificationPending,
		"no unseal init container has finished yet")
}

func setNetworkIsolatedCondition(conditions *[]metav1.Condition, gen int64, f workloadFacts) {
	switch {
	case !f.PolicyApplied:
		set(conditions, gen, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, mlv1alpha1.ReasonPolicyNotApplied,
			"the default-deny NetworkPolicy is not in force yet")
	case f.IsolationReason != "":
		set(conditions, gen, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, f.IsolationReason, f.IsolationMessage)
	case f.BundleHostProblem != "":
		set(conditions, gen, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, mlv1alpha1.ReasonBundleHostNotAllowed, f.BundleHostProblem)
	default:
		set(conditions, gen, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionTrue, mlv1alpha1.ReasonPolicyApplied,
			"default-deny NetworkPolicy in force for ingress and egress")
	}
}

func setHardenedCondition(conditions *[]metav1.Condition, gen int64, f workloadFacts) {
	if reason, message, failed := policy.NamespaceNotEnforced(f.policyFacts()); failed {
		set(conditions, gen, mlv1alpha1.ConditionHardened, metav1.ConditionFalse, reason, message)
		return
	}
	if reason, message, failed := policy.PodSecurityViolated(f.policyFacts()); failed {
		set(conditions, gen, mlv1alpha1.ConditionHardened, metav1.ConditionFalse, reason, message)
		return
	}
	if len(f.PodDrift) > 0 {
		set(conditions, gen, mlv1alpha1.ConditionHardened, metav1.ConditionFalse, mlv1alpha1.ReasonPodSpecDrift,
			"pods differ from the generated template: "+strings.Join(f.PodDrift, "; "))
		return
	}
	set(conditions, gen, mlv1alpha1.ConditionHardened, metav1.ConditionTrue, mlv1alpha1.ReasonRestricted,
		"every generated pod passes Pod Security \"restricted\", runs with a read-only root and no API token")
}

// setGPUScheduledCondition counts only the workload's own pods (those of its
// managed ReplicaSet or Job), never a pod that merely carries its labels.
func setGPUScheduledCondition(conditions *[]metav1.Condition, gen int64, f workloadFacts) {
	var unschedulable, pending int
	var message string
	for i := range f.Pods {
		// A pod counts as scheduled only once it is bound or the scheduler
		// says so; a new pod has no PodScheduled condition yet.
		scheduled := f.Pods[i].Spec.NodeName != ""
		for _, c := range f.Pods[i].Status.Conditions {
			if c.Type != corev1.PodScheduled {
				continue
			}
			switch {
			case c.Status == corev1.ConditionTrue:
				scheduled = true
			case c.Reason == corev1.PodReasonUnschedulable:
				unschedulable++
				message = c.Message
			}
		}
		if !scheduled {
			pending++
		}
	}
	switch {
	case unschedulable > 0:
		set(conditions, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionFalse, mlv1alpha1.ReasonUnschedulable, message)
	case f.GPUCount == 0:
		set(conditions, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonNoGPURequested,
			"spec.gpu asks for no GPU")
	case pending > 0 || len(f.Pods) == 0:
		set(conditions, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionUnknown, mlv1alpha1.ReasonSchedulingPending,
			"no pod has been scheduled yet")
	default:
		set(conditions, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonScheduled,
			fmt.Sprintf("%d pod(s) scheduled with %d GPU(s) each", len(f.Pods), f.GPUCount))
	}
}

func setOwnershipRecordedCondition(conditions *[]metav1.Condition, gen int64, f workloadFacts) {
	if len(f.ObjectsMissingOwnership) > 0 {
		missing := append([]string(nil), f.ObjectsMissingOwnership...)
		sort.Strings(missing)
		set(conditions, gen, mlv1alpha1.ConditionOwnershipRecorded, metav1.ConditionFalse, mlv1alpha1.ReasonProgressing,
			"ownership annotations missing on "+strings.Join(missing, ", "))
		return
	}
	set(conditions, gen, mlv1alpha1.ConditionOwnershipRecorded, metav1.ConditionTrue, mlv1alpha1.ReasonOwnershipAnnotated,
		"every managed object, pods included, carries the owner, license, copyright, classification and digest annotations")
}

// readiness is a workload's kstatus verdict: stalled (a person must act), or
// ready, or still reconciling.
type readiness struct {
	// StallReason and StallMessage are set when the workload is stalled;
	// ReadyReason then says whether it failed closed or failed.
	StallReason, StallMessage string
	// Waiting says what a stalled workload waits for, for Reconciling.
	Waiting string
	// Ready, Reason and Message are the Ready condition otherwise.
	Ready           bool
	Reason, Message string
	// ReadyMessage is Ready's message while stalled.
	ReadyReason, ReadyMessage string
}

// setReadinessConditions sets Ready, Reconciling and Stalled (kstatus), the
// same way for both kinds.
func setReadinessConditions(conditions *[]metav1.Condition, gen int64, r readiness) {
	if r.StallReason != "" {
		set(conditions, gen, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, r.StallReason, r.StallMessage)
		set(conditions, gen, mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, r.StallReason, r.Waiting)
		set(conditions, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, r.ReadyReason, r.ReadyMessage)
		return
	}
	meta.RemoveStatusCondition(conditions, mlv1alpha1.ConditionStalled)
	if r.Ready {
		set(conditions, gen, mlv1alpha1.ConditionReady, metav1.ConditionTrue, r.Reason, r.Message)
		set(conditions, gen, mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, mlv1alpha1.ReasonReconciled, "the spec is applied")
		return
	}
	set(conditions, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, r.Reason, r.Message)
	set(conditions, gen, mlv1alpha1.ConditionReconciling, metav1.ConditionTrue, r.Reason, r.Message)
}

// allProtectionsHold reports whether every protection condition is True.
func allProtectionsHold(conditions []metav1.Condition) bool {
	for _, t := range mlv1alpha1.ProtectionConditionTypes() {
		if !meta.IsStatusConditionTrue(conditions, t) {
			return false
		}
	}
	return true
}

// failedCondition is the condition of type t when it is False.
func failedCondition(conditions []metav1.Condition, t string) *metav1.Condition {
	c := meta.FindStatusCondition(conditions, t)
	if c != nil && c.Status == metav1.ConditionFalse {
		return c
	}
	return nil
}

// isolationSummary describes the network isolation for status.protection.
func isolationSummary(f workloadFacts) string {
	if !f.PolicyApplied {
		return "none"
	}
	return "default-deny NetworkPolicy (ingress and egress)"
}

// execGuardSummary describes who may exec, for status.protection.
func execGuardSummary(access mlv1alpha1.Access) string {
	if len(access.BreakGlassGroups) == 0 {
		return "no break-glass groups"
	}
	return "break-glass groups: " + strings.Join(access.BreakGlassGroups, ", ")
}

// isBundleVerdict reports whether reason says the bundle itself is wrong.
func isBundleVerdict(reason string) bool {
	return reason == mlv1alpha1.ReasonBundleTampered || reason == mlv1alpha1.ReasonDigestMismatch
}

// onlyKeyDenials reports whether every finished unseal run among pods was
// refused its key, so that none of them read the bundle.
func onlyKeyDenials(pods []corev1.Pod) bool {
	for i := range pods {
		message, code, done := terminated(pods[i].Status.InitContainerStatuses, mlv1alpha1.ContainerUnseal)
		if done && (code == 0 || classifyUnsealError(message) != mlv1alpha1.ReasonKeyReleaseDenied) {
			return false
		}
	}
	return true
}
