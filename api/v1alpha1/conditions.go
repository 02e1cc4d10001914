package v1alpha1

// Condition types. Ready, Reconciling and Stalled follow kstatus, so that
// kubectl wait, Argo CD and Flux understand the objects; the others each
// report one protection guarantee. They are untyped strings so that they can
// be passed to meta.SetStatusCondition and friends directly.
const (
	// ConditionReady is True when the workload is doing its job: the model
	// serves, or the training job has succeeded and sealed its output.
	ConditionReady = "Ready"
	// ConditionReconciling is True while the operator is still working
	// towards the spec (kstatus "InProgress").
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when the operator cannot make progress
	// without a change by a person (kstatus "Failed").
	ConditionStalled = "Stalled"

	// ConditionWeightsEncrypted is True when the weights are read only from
	// a sealed bundle, so no plaintext rests on disk.
	ConditionWeightsEncrypted = "WeightsEncrypted"
	// ConditionWeightsVerified is True when the decrypted weights matched
	// spec.weights.digest and every chunk authenticated.
	ConditionWeightsVerified = "WeightsVerified"
	// ConditionKeyAvailable is True when the key-encryption key was found
	// and unwrapped the bundle's data key.
	ConditionKeyAvailable = "KeyAvailable"
	// ConditionNetworkIsolated is True when a default-deny NetworkPolicy
	// covering ingress and egress is in force.
	ConditionNetworkIsolated = "NetworkIsolated"
	// ConditionHardened is True when every pod ModelGuard generates passes
	// the Pod Security "restricted" profile.
	ConditionHardened = "Hardened"
	// ConditionGPUScheduled is True when the pods were scheduled with the
	// GPUs they asked for, or asked for none.
	ConditionGPUScheduled = "GPUScheduled"
	// ConditionOwnershipRecorded is True when every managed object carries
	// the ownership annotations.
	ConditionOwnershipRecorded = "OwnershipRecorded"

	// ConditionOutputSealed is True when a TrainingJob's final weights have
	// been sealed; the TrainingJob "Sealed" column shows it.
	ConditionOutputSealed = "OutputSealed"
)

// Condition reasons. Each is CamelCase as metav1.Condition requires; messages
// carry the detail.
const (
	// Shared by several conditions.

	// ReasonReconciled means the operator applied the spec.
	ReasonReconciled = "Reconciled"
	// ReasonProgressing means the operator is working towards the spec.
	ReasonProgressing = "Progressing"
	// ReasonRollingOut means new pods are replacing old ones.
	ReasonRollingOut = "RollingOut"
	// ReasonAvailable means enough pods are ready.
	ReasonAvailable = "Available"
	// ReasonUnavailable means too few pods are ready.
	ReasonUnavailable = "Unavailable"
	// ReasonScaledToZero means replicas is 0, so nothing serves.
	ReasonScaledToZero = "ScaledToZero"
	// ReasonMemoryTooSmall means the server's memory limit does not cover
	// spec.weights.memory, so the pod would be OOM-killed; no pod is started.
	ReasonMemoryTooSmall = "MemoryTooSmall"
	// ReasonFailClosed means pods are held at zero replicas because a
	// protection prerequisite is missing.
	ReasonFailClosed = "FailClosed"

	// WeightsEncrypted.

	// ReasonSealedBundle means the weights come from a sealed bundle.
	ReasonSealedBundle = "SealedBundle"

	// WeightsVerified.

	// ReasonVerificationPending means the unseal container has not reported
	// yet.
	ReasonVerificationPending = "VerificationPending"
	// ReasonDigestVerified means the decrypted weights matched the digest.
	ReasonDigestVerified = "DigestVerified"
	// ReasonDigestMismatch means the bundle holds a different model than
	// spec.weights.digest names.
	ReasonDigestMismatch = "DigestMismatch"
	// ReasonBundleTampered means a chunk, file or manifest failed
	// authentication: the bundle was altered, truncated or reordered.
	ReasonBundleTampered = "BundleTampered"
	// ReasonUnsealFailed means unsealing failed for another reason, e.g. the
	// bundle could not be read.
	ReasonUnsealFailed = "UnsealFailed"

	// KeyAvailable.

	// ReasonKeyReleaseDenied means the key-release service refused a pod of
	// the workload its data key; the message names the check that failed.
	ReasonKeyReleaseDenied = "KeyReleaseDenied"
	// ReasonKeyReleasable means the workload's ModelKey is Ready and selects
	// its namespace: the key-release service gives the data key to the
	// workload's verified unseal containers, and to nobody else.
	ReasonKeyReleasable = "KeyReleasable"
	// ReasonKeySecretNotFound means the Secret a ModelKey names does not
	// exist.
	ReasonKeySecretNotFound = "SecretNotFound"
	// ReasonKeyNotInSecret means the Secret has no such key.
	ReasonKeyNotInSecret = "KeyNotInSecret"
	// ReasonKeyUnwrapFailed means the KEK did not unwrap the data key, e.g.
	// it is the wrong key.
	ReasonKeyUnwrapFailed = "UnwrapFailed"
	// ReasonKeyProviderUnavailable means the key provider (KMS, Vault) could
	// not be reached or is not supported by this operator build.
	ReasonKeyProviderUnavailable = "ProviderUnavailable"

	// NetworkIsolated.

	// ReasonPolicyApplied means the NetworkPolicy is in force.
	ReasonPolicyApplied = "PolicyApplied"
	// ReasonPolicyNotApplied means the NetworkPolicy could not be applied.
	ReasonPolicyNotApplied = "PolicyNotApplied"
	// ReasonForeignPolicyAllows means another NetworkPolicy in the namespace
	// selects the workload's pods and allows traffic that ModelGuard's policy
	// does not: policies add up, so the isolation is broken.
	ReasonForeignPolicyAllows = "ForeignPolicyAllows"
	// ReasonBundleHostNotAllowed means the https bundle's host is not
	// covered by network.allowedEgress, so the download would be blocked.
	ReasonBundleHostNotAllowed = "BundleHostNotAllowed"

	// Hardened.

	// ReasonRestricted means the pods pass Pod Security "restricted".
	ReasonRestricted = "PodSecurityRestricted"
	// ReasonNotRestricted means a pod fails Pod Security "restricted".
	ReasonNotRestricted = "PodSecurityViolation"
	// ReasonPodSpecDrift means a live pod differs from the generated
	// template, e.g. a container was added or a command changed.
	ReasonPodSpecDrift = "PodSpecDrift"
	// ReasonNamespaceNotEnforced means the namespace does not enforce Pod
	// Security baseline or restricted, so another pod on the node could be
	// privileged or mount the host and read the plaintext: nothing is served.
	ReasonNamespaceNotEnforced = "NamespaceNotEnforced"

	// GPUScheduled.

	// ReasonScheduled means the pods were scheduled.
	ReasonScheduled = "Scheduled"
	// ReasonUnschedulable means the scheduler cannot place a pod; the
	// message is the scheduler's.
	ReasonUnschedulable = "Unschedulable"
	// ReasonSchedulingPending means the pods are not scheduled yet.
	ReasonSchedulingPending = "SchedulingPending"
	// ReasonNoGPURequested means spec.gpu asks for no GPU.
	ReasonNoGPURequested = "NoGPURequested"

	// OwnershipRecorded.

	// ReasonOwnershipAnnotated means every managed object carries the
	// ownership annotations.
	ReasonOwnershipAnnotated = "Annotated"

	// TrainingJob progress and OutputSealed.

	// ReasonQueued means the job waits for admission by its Kueue queue.
	ReasonQueued = "Queued"
	// ReasonAdmitted means the queue admitted the job.
	ReasonAdmitted = "Admitted"
	// ReasonRunning means the job's pods are running.
	ReasonRunning = "Running"
	// ReasonSucceeded means training finished successfully.
	ReasonSucceeded = "Succeeded"
	// ReasonBackoffLimitExceeded means the job failed more often than
	// spec.backoffLimit allows.
	ReasonBackoffLimitExceeded = "BackoffLimitExceeded"
	// ReasonDeadlineExceeded means the job ran longer than
	// spec.activeDeadlineSeconds.
	ReasonDeadlineExceeded = "DeadlineExceeded"
	// ReasonSealing means the final weights are being sealed.
	ReasonSealing = "Sealing"
	// ReasonSealed means the final weights are sealed.
	ReasonSealed = "Sealed"
	// ReasonSealFailed means sealing the final weights failed.
	ReasonSealFailed = "SealFailed"
	// ReasonStorageNotEncrypted means the output StorageClass does not
	// encrypt at rest and output.allowUnencryptedStorage is false.
	ReasonStorageNotEncrypted = "StorageNotEncrypted"
)

// ProtectedModelPhase summarizes a ProtectedModel's state for humans; the
// conditions carry the detail.
// +kubebuilder:validation:Enum=Pending;Protected;Degraded;Failed
type ProtectedModelPhase string

const (
	// ModelPhasePending means the model is not serving yet.
	ModelPhasePending ProtectedModelPhase = "Pending"
	// ModelPhaseProtected means the model serves with every protection
	// condition True.
	ModelPhaseProtected ProtectedModelPhase = "Protected"
	// ModelPhaseDegraded means the model serves, but a protection condition
	// is not True or too few replicas are ready.
	ModelPhaseDegraded ProtectedModelPhase = "Degraded"
	// ModelPhaseFailed means the model cannot serve without a change, e.g.
	// the weights failed verification or the key is missing.
	ModelPhaseFailed ProtectedModelPhase = "Failed"
)

// TrainingJobPhase summarizes a TrainingJob's state for humans; the
// conditions carry the detail.
// +kubebuilder:validation:Enum=Pending;Admitted;Running;Sealing;Succeeded;Failed
type TrainingJobPhase string

const (
	// TrainingPhasePending means the job waits to be admitted.
	TrainingPhasePending TrainingJobPhase = "Pending"
	// TrainingPhaseAdmitted means the queue admitted the job and its pods
	// are starting.
	TrainingPhaseAdmitted TrainingJobPhase = "Admitted"
	// TrainingPhaseRunning means every node of the job is running.
	TrainingPhaseRunning TrainingJobPhase = "Running"
	// TrainingPhaseSealing means training finished and the final weights are
	// being sealed.
	TrainingPhaseSealing TrainingJobPhase = "Sealing"
	// TrainingPhaseSucceeded means the final weights are sealed.
	TrainingPhaseSucceeded TrainingJobPhase = "Succeeded"
	// TrainingPhaseFailed means the job or its sealing failed.
	TrainingPhaseFailed TrainingJobPhase = "Failed"
)

// ProtectionConditionTypes returns the condition types that each report one
// protection guarantee, in the order `kubectl describe` should show them.
func ProtectionConditionTypes() []string {
	return []string{
		ConditionWeightsEncrypted,
		ConditionWeightsVerified,
		ConditionKeyAvailable,
		ConditionNetworkIsolated,
		ConditionHardened,
		ConditionGPUScheduled,
		ConditionOwnershipRecorded,
	}
}

// Event reasons of the admission guard, on the protected workload.
const (
	// ReasonBreakGlass records a session (exec, attach, port-forward) into
	// a protected pod that the admission guard allowed, to a member of the
	// workload's spec.access.breakGlassGroups or a cluster administrator;
	// the note names the user, groups, container and command.
	ReasonBreakGlass = "BreakGlass"
	// ReasonAccessDenied records a request the admission guard denied; the
	// note names the user and carries the deny message.
	ReasonAccessDenied = "AccessDenied"
)
