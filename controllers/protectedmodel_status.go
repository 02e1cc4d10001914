package controllers

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
)

// observation is everything a ProtectedModel's status is computed from.
// Computing the status from it is pure, so every condition has a table test.
type observation struct {
	Key keyState
	// MemoryCoversWeights is false when server.resources leaves too little
	// memory for the plaintext held in tmpfs.
	MemoryCoversWeights bool
	// DesiredReplicas is what the spec asks for; the Deployment may run
	// fewer when the model is held closed.
	DesiredReplicas int32
	Deployment      *appsv1.Deployment
	BundleLocation  string

	workloadFacts
}

// policyFacts are the facts the serving chain reads.
func (obs observation) policyFacts() policy.Facts {
	f := obs.workloadFacts.policyFacts()
	f.KeyReason, f.KeyMessage = obs.Key.KeyReason, obs.Key.KeyMessage
	f.KeyReleaseReady = obs.Key.KeyReleaseReady
	f.MemoryCoversWeights = obs.MemoryCoversWeights
	return f
}

// computeStatus returns the status for pm given what was observed. It starts
// from the current status so that unchanged conditions keep their transition
// times.
func computeStatus(pm *mlv1alpha1.ProtectedModel, obs observation) mlv1alpha1.ProtectedModelStatus {
	status := *pm.Status.DeepCopy()
	gen := pm.Generation
	status.ObservedGeneration = gen
	conditions := &status.Conditions

	setKeyAvailableCondition(conditions, gen, obs.Key)
	setWeightsEncryptedCondition(conditions, gen, obs.BundleLocation)
	setWeightsVerifiedCondition(conditions, gen, obs.Key, obs.Pods)
	setNetworkIsolatedCondition(conditions, gen, obs.workloadFacts)
	setHardenedCondition(conditions, gen, obs.workloadFacts)
	setGPUScheduledCondition(conditions, gen, obs.workloadFacts)
	setOwnershipRecordedCondition(conditions, gen, obs.workloadFacts)
	r := modelReadiness(status, obs)
	setReadinessConditions(conditions, gen, r)
	status.Phase = modelPhase(status, r, obs)

	if d := obs.Deployment; d != nil {
		status.Replicas, status.ReadyReplicas = d.Status.Replicas, d.Status.ReadyReplicas
	} else {
		status.Replicas, status.ReadyReplicas = 0, 0
	}
	var access mlv1alpha1.Access
	if pm.Spec.Access != nil {
		access = *pm.Spec.Access
	}
	status.Protection = &mlv1alpha1.ProtectionSummary{
		Cipher:      "AES-256-GCM (chunked, HKDF-SHA256 per-file keys)",
		KeyProvider: obs.Key.Provider,
		Digest:      pm.Spec.Weights.Digest,
		Isolation:   isolationSummary(obs.workloadFacts),
		ExecGuard:   execGuardSummary(access),
	}
	return status
}

// modelReadiness is the kstatus verdict of a model: stalled by the serving
// chain's stall checks or by a bundle that does not hold the pinned model,
// else ready once the Deployment serves.
//
// Other unseal failures (the key-release service refused or could not be
// reached, an I/O error) do not stall the model: the key-release verifier
// refuses stalled models, so stalling on a passing refusal would keep the
// model from ever getting its key again.
func modelReadiness(status mlv1alpha1.ProtectedModelStatus, obs observation) readiness {
	if reason, message, stalled := policy.Stalled.Evaluate(obs.policyFacts()); stalled {
		return readiness{StallReason: reason, StallMessage: message, Waiting: "waiting for the spec or the key to be fixed",
			ReadyReason: mlv1alpha1.ReasonFailClosed, ReadyMessage: "not serving, failed closed: " + message}
	}
	if c := failedCondition(status.Conditions, mlv1alpha1.ConditionWeightsVerified); c != nil {
		if c.Reason == mlv1alpha1.ReasonBundleTampered || c.Reason == mlv1alpha1.ReasonDigestMismatch {
			return readiness{StallReason: c.Reason, StallMessage: c.Message, Waiting: "waiting for the bundle or digest to be fixed",
				ReadyReason: c.Reason, ReadyMessage: "not serving: " + c.Message}
		}
		return readiness{Reason: c.Reason, Message: "not serving yet: " + c.Message}
	}
	ready, reason, message := deploymentReady(obs)
	return readiness{Ready: ready, Reason: reason, Message: message}
}

func modelPhase(status mlv1alpha1.ProtectedModelStatus, r readiness, obs observation) mlv1alpha1.ProtectedModelPhase {
	switch {
	case r.StallReason != "":
		return mlv1alpha1.ModelPhaseFailed
	case r.Ready && allProtectionsHold(status.Conditions):
		return mlv1alpha1.ModelPhaseProtected
	case r.Ready, obs.Deployment != nil && obs.Deployment.Status.ReadyReplicas > 0:
		return mlv1alpha1.ModelPhaseDegraded
	}
	return mlv1alpha1.ModelPhasePending
}

func deploymentReady(obs observation) (ready bool, reason, message string) {
	d := obs.Deployment
	switch {
	case !obs.Key.KeyReleaseReady:
		return false, mlv1alpha1.ReasonProgressing, "waiting for the key-release service's certificate"
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
