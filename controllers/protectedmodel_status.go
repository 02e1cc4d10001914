package controllers

import (
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
)

// observation is everything the status is computed from. Computing the
// status from it is pure, so every condition has a table test.
type observation struct {
	Key keyState
	// MemoryCoversWeights is false when server.resources leaves too little
	// memory for the plaintext held in tmpfs.
	MemoryCoversWeights bool
	// DesiredReplicas is what the spec asks for; the Deployment may run
	// fewer when the model is held closed.
	DesiredReplicas int32
	// PolicyApplied is true when the live NetworkPolicy selects the model's
	// pods in both directions.
	PolicyApplied bool
	// BundleHostProblem explains why the https bundle host is not covered by
	// the egress policy; empty when it is, or when the source is a volume.
	BundleHostProblem string
	// PodSecurityViolations lists the Pod Security "restricted" failures of
	// the generated pod templates.
	PodSecurityViolations []string
	// ObjectsMissingOwnership names managed objects without the ownership
	// annotations.
	ObjectsMissingOwnership []string
	Deployment              *appsv1.Deployment
	Pods                    []corev1.Pod
	GPUCount                int32
	BundleLocation          string
	KeyProvider             string
}

// protectionConditions are the guarantees a Protected model must hold.
var protectionConditions = []string{
	mlv1alpha1.ConditionKeyAvailable,
	mlv1alpha1.ConditionWeightsEncrypted,
	mlv1alpha1.ConditionWeightsVerified,
	mlv1alpha1.ConditionNetworkIsolated,
	mlv1alpha1.ConditionHardened,
	mlv1alpha1.ConditionGPUScheduled,
	mlv1alpha1.ConditionOwnershipRecorded,
}

// computeStatus returns the status for pm given what was observed. It starts
// from the current status so that unchanged conditions keep their transition
// times.
func computeStatus(pm *mlv1alpha1.ProtectedModel, obs observation) mlv1alpha1.ProtectedModelStatus {
	status := *pm.Status.DeepCopy()
	gen := pm.Generation
	status.ObservedGeneration = gen

	setKeyAvailableCondition(&status, gen, obs)
	setWeightsEncryptedCondition(&status, gen, obs)
	setWeightsVerifiedCondition(&status, gen, obs)
	setNetworkIsolatedCondition(&status, gen, obs)
	setHardenedCondition(&status, gen, obs)
	setGPUScheduledCondition(&status, gen, obs)
	setOwnershipRecordedCondition(&status, gen, obs)
	setReadinessConditions(&status, gen, obs)

	if d := obs.Deployment; d != nil {
		status.Replicas, status.ReadyReplicas = d.Status.Replicas, d.Status.ReadyReplicas
	} else {
		status.Replicas, status.ReadyReplicas = 0, 0
	}
	status.Protection = &mlv1alpha1.ProtectionSummary{
		Cipher:      "AES-256-GCM (chunked, HKDF-SHA256 per-file keys)",
		KeyProvider: obs.KeyProvider,
		Digest:      pm.Spec.Weights.Digest,
		Isolation:   isolationSummary(obs),
		ExecGuard:   execGuardSummary(pm),
	}
	return status
}

func set(status *mlv1alpha1.ProtectedModelStatus, gen int64, conditionType string, s metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: conditionType, Status: s, Reason: reason, Message: message, ObservedGeneration: gen,
	})
}

func setKeyAvailableCondition(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	switch k := obs.Key; {
	case k.KeyReason != "":
		set(status, gen, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, k.KeyReason, k.KeyMessage)
	case k.DEK != nil:
		set(status, gen, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionTrue, mlv1alpha1.ReasonKeyUnwrapped,
			"the key-encryption key unwrapped the bundle's data key; only the unseal init container receives it")
	case k.BundleReason != "":
		set(status, gen, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionUnknown, mlv1alpha1.ReasonProgressing,
			"the data key cannot be unwrapped until the bundle's manifest is read: see WeightsVerified")
	default:
		set(status, gen, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionUnknown, mlv1alpha1.ReasonProgressing,
			"reading the bundle's manifest with a key-resolve Job")
	}
}

func setWeightsEncryptedCondition(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	set(status, gen, mlv1alpha1.ConditionWeightsEncrypted, metav1.ConditionTrue, mlv1alpha1.ReasonSealedBundle,
		fmt.Sprintf("weights are read only from the sealed bundle %s and decrypted into memory", obs.BundleLocation))
}

func setWeightsVerifiedCondition(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	if obs.Key.BundleReason != "" {
		set(status, gen, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, obs.Key.BundleReason, obs.Key.BundleMessage)
		return
	}
	verified := false
	for i := range obs.Pods {
		message, code, done := terminated(obs.Pods[i].Status.InitContainerStatuses, builder.UnsealContainerName)
		if !done {
			continue
		}
		if code != 0 {
			if message == "" {
				message = fmt.Sprintf("the unseal init container exited with code %d", code)
			}
			set(status, gen, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, classifyUnsealError(message), message)
			return
		}
		verified = true
	}
	if verified {
		set(status, gen, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionTrue, mlv1alpha1.ReasonDigestVerified,
			"every chunk authenticated and the model digest matched spec.weights.digest")
		return
	}
	if c := meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionWeightsVerified); c != nil &&
		c.Status == metav1.ConditionTrue && len(obs.Pods) == 0 && obs.Key.DEK != nil {
		// Verified pods were scaled away; the bundle and digest are unchanged.
		c.ObservedGeneration = gen
		return
	}
	set(status, gen, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionUnknown, mlv1alpha1.ReasonVerificationPending,
		"no unseal init container has finished yet")
}

func setNetworkIsolatedCondition(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	switch {
	case !obs.PolicyApplied:
		set(status, gen, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, mlv1alpha1.ReasonPolicyNotApplied,
			"the default-deny NetworkPolicy is not in force yet")
	case obs.BundleHostProblem != "":
		set(status, gen, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, mlv1alpha1.ReasonBundleHostNotAllowed, obs.BundleHostProblem)
	default:
		set(status, gen, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionTrue, mlv1alpha1.ReasonPolicyApplied,
			"default-deny NetworkPolicy in force for ingress and egress")
	}
}

func setHardenedCondition(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	if len(obs.PodSecurityViolations) > 0 {
		set(status, gen, mlv1alpha1.ConditionHardened, metav1.ConditionFalse, mlv1alpha1.ReasonNotRestricted,
			"pods violate Pod Security \"restricted\": "+strings.Join(obs.PodSecurityViolations, "; "))
		return
	}
	set(status, gen, mlv1alpha1.ConditionHardened, metav1.ConditionTrue, mlv1alpha1.ReasonRestricted,
		"every generated pod passes Pod Security \"restricted\", runs with a read-only root and no API token")
}

func setGPUScheduledCondition(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	var unschedulable, pending int
	var message string
	for i := range obs.Pods {
		// A pod counts as scheduled only once it is bound or the scheduler
		// says so; a new pod has no PodScheduled condition yet.
		scheduled := obs.Pods[i].Spec.NodeName != ""
		for _, c := range obs.Pods[i].Status.Conditions {
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
		set(status, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionFalse, mlv1alpha1.ReasonUnschedulable, message)
	case obs.GPUCount == 0:
		set(status, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonNoGPURequested,
			"spec.gpu asks for no GPU")
	case pending > 0 || len(obs.Pods) == 0:
		set(status, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionUnknown, mlv1alpha1.ReasonSchedulingPending,
			"no pod has been scheduled yet")
	default:
		set(status, gen, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonScheduled,
			fmt.Sprintf("%d pod(s) scheduled with %d GPU(s) each", len(obs.Pods), obs.GPUCount))
	}
}

func setOwnershipRecordedCondition(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	if len(obs.ObjectsMissingOwnership) > 0 {
		missing := append([]string(nil), obs.ObjectsMissingOwnership...)
		sort.Strings(missing)
		set(status, gen, mlv1alpha1.ConditionOwnershipRecorded, metav1.ConditionFalse, mlv1alpha1.ReasonProgressing,
			"ownership annotations missing on "+strings.Join(missing, ", "))
		return
	}
	set(status, gen, mlv1alpha1.ConditionOwnershipRecorded, metav1.ConditionTrue, mlv1alpha1.ReasonOwnershipAnnotated,
		"every managed object, pods included, carries the owner, license, copyright, classification and digest annotations")
}

// stallReason returns the first protection failure that needs a person to
// act: the model is held at zero replicas until it is fixed.
func stallReason(obs observation) (reason, message string) {
	switch {
	case obs.Key.KeyReason != "":
		return obs.Key.KeyReason, obs.Key.KeyMessage
	case obs.Key.BundleReason != "":
		return obs.Key.BundleReason, obs.Key.BundleMessage
	case !obs.MemoryCoversWeights:
		return mlv1alpha1.ReasonMemoryTooSmall,
			"spec.server.resources.limits.memory does not exceed spec.weights.memory: the plaintext weights in tmpfs would not fit, so no pod is started"
	}
	return "", ""
}

// canServe reports whether every prerequisite of protected serving holds, so
// that pods may start. Anything else fails closed.
func canServe(obs observation) bool {
	reason, _ := stallReason(obs)
	return reason == "" && obs.Key.DEK != nil && obs.PolicyApplied && len(obs.PodSecurityViolations) == 0
}

func setReadinessConditions(status *mlv1alpha1.ProtectedModelStatus, gen int64, obs observation) {
	if reason, message := stallReason(obs); reason != "" {
		set(status, gen, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, reason, message)
		set(status, gen, mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, reason, "waiting for the spec or the key to be fixed")
		set(status, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonFailClosed,
			"not serving, failed closed: "+message)
		status.Phase = mlv1alpha1.ModelPhaseFailed
		return
	}
	if c := unsealFailure(status); c != nil {
		set(status, gen, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, c.Reason, c.Message)
		set(status, gen, mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, c.Reason, "waiting for the bundle or digest to be fixed")
		set(status, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, c.Reason, "not serving: "+c.Message)
		status.Phase = mlv1alpha1.ModelPhaseFailed
		return
	}
	meta.RemoveStatusCondition(&status.Conditions, mlv1alpha1.ConditionStalled)

	ready, reason, message := deploymentReady(obs)
	if ready {
		set(status, gen, mlv1alpha1.ConditionReady, metav1.ConditionTrue, reason, message)
		set(status, gen, mlv1alpha1.ConditionReconciling, metav1.ConditionFalse, mlv1alpha1.ReasonReconciled, "the spec is applied")
		status.Phase = mlv1alpha1.ModelPhaseProtected
		for _, t := range protectionConditions {
			if !meta.IsStatusConditionTrue(status.Conditions, t) {
				status.Phase = mlv1alpha1.ModelPhaseDegraded
			}
		}
		return
	}
	set(status, gen, mlv1alpha1.ConditionReady, metav1.ConditionFalse, reason, message)
	set(status, gen, mlv1alpha1.ConditionReconciling, metav1.ConditionTrue, reason, message)
	status.Phase = mlv1alpha1.ModelPhasePending
	if d := obs.Deployment; d != nil && d.Status.ReadyReplicas > 0 {
		status.Phase = mlv1alpha1.ModelPhaseDegraded
	}
}

// unsealFailure is the WeightsVerified condition when an unseal init
// container reported a failure.
func unsealFailure(status *mlv1alpha1.ProtectedModelStatus) *metav1.Condition {
	c := meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionWeightsVerified)
	if c != nil && c.Status == metav1.ConditionFalse {
		return c
	}
	return nil
}

func deploymentReady(obs observation) (ready bool, reason, message string) {
	d := obs.Deployment
	switch {
	case obs.Key.Resolving || (obs.Key.DEK == nil && obs.Key.KeyReason == "" && obs.Key.BundleReason == ""):
		return false, mlv1alpha1.ReasonProgressing, "reading the bundle's manifest with a key-resolve Job"
	case d == nil:
		return false, mlv1alpha1.ReasonProgressing, "creating the Deployment"
	case d.Status.ObservedGeneration < d.Generation:
		return false, mlv1alpha1.ReasonRollingOut, "the Deployment controller has not seen the latest spec yet"
	case obs.DesiredReplicas == 0:
		return true, mlv1alpha1.ReasonScaledToZero, "spec.server.replicas is 0: nothing serves"
	case d.Status.UpdatedReplicas < obs.DesiredReplicas:
		return false, mlv1alpha1.ReasonRollingOut,
			fmt.Sprintf("%d of %d pods updated", d.Status.UpdatedReplicas, obs.DesiredReplicas)
	case d.Status.AvailableReplicas < obs.DesiredReplicas:
		return false, mlv1alpha1.ReasonUnavailable,
			fmt.Sprintf("%d of %d pods available", d.Status.AvailableReplicas, obs.DesiredReplicas)
	}
	return true, mlv1alpha1.ReasonAvailable, fmt.Sprintf("%d of %d pods serving", d.Status.AvailableReplicas, obs.DesiredReplicas)
}

func isolationSummary(obs observation) string {
	if !obs.PolicyApplied {
		return "none"
	}
	return "default-deny NetworkPolicy (ingress and egress)"
}

func execGuardSummary(pm *mlv1alpha1.ProtectedModel) string {
	if pm.Spec.Access == nil || len(pm.Spec.Access.BreakGlassGroups) == 0 {
		return "no break-glass groups"
	}
	return "break-glass groups: " + strings.Join(pm.Spec.Access.BreakGlassGroups, ", ")
}
