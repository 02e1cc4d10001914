package controllers

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
	"github.com/modelguard/modelguard/internal/seal"
)

const generation = 7

var (
	testDEK = []byte("0123456789abcdef0123456789abcdef")
	// longAgo is a transition time no setter would produce.
	longAgo = metav1.NewTime(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC))

	ignoreTransitionTime = cmpopts.IgnoreFields(metav1.Condition{}, "LastTransitionTime")

	tamperMessage = (&seal.ChunkError{Path: "model.safetensors", Chunk: 37, Err: seal.ErrAuthentication}).Error()

	keyDeniedMessage = "key release denied (UnsealNotRunning): key release for ProtectedModel default/m refused: the unseal init container is not running"
)

// cond is the condition a setter is expected to leave, stamped with the
// model's generation.
func cond(conditionType string, status metav1.ConditionStatus, reason, message string) metav1.Condition {
	return metav1.Condition{Type: conditionType, Status: status, Reason: reason, Message: message, ObservedGeneration: generation}
}

// servingObservation is a model whose every prerequisite holds.
func servingObservation() observation {
	return observation{
		Key:                 keyState{ModelKey: "models", Provider: mlv1alpha1.KeyProviderSecret, KeyReleaseReady: true},
		MemoryCoversWeights: true,
		DesiredReplicas:     2,
		BundleLocation:      "/var/run/modelguard/bundle",
		workloadFacts:       workloadFacts{PolicyApplied: true},
	}
}

func with(obs observation, edit func(*observation)) observation {
	edit(&obs)
	return obs
}

func unsealPod(exitCode int32, message string) corev1.Pod {
	return corev1.Pod{Status: corev1.PodStatus{
		Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
		InitContainerStatuses: []corev1.ContainerStatus{{
			Name:  "unseal",
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Message: message}},
		}},
	}}
}

// restartingUnsealPod is a pod whose unseal container failed and runs again.
func restartingUnsealPod(exitCode int32, message string) corev1.Pod {
	p := unsealPod(exitCode, message)
	s := &p.Status.InitContainerStatuses[0]
	s.LastTerminationState, s.State = s.State, corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	return p
}

func unsealingPod() corev1.Pod {
	return corev1.Pod{Status: corev1.PodStatus{
		Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
		InitContainerStatuses: []corev1.ContainerStatus{{
			Name: "unseal", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
		}},
	}}
}

func scheduling(status corev1.ConditionStatus, reason, message string) corev1.Pod {
	return corev1.Pod{Status: corev1.PodStatus{Conditions: []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: status, Reason: reason, Message: message},
	}}}
}

func availableDeployment(replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Generation: 3},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: replicas, UpdatedReplicas: replicas,
			ReadyReplicas: replicas, AvailableReplicas: replicas},
	}
}

type setterCase struct {
	name  string
	prior []metav1.Condition
	obs   observation
	want  metav1.Condition
}

func runSetter(t *testing.T, conditionType string, setter func(*[]metav1.Condition, int64, observation), tests []setterCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status := mlv1alpha1.ProtectedModelStatus{Conditions: append([]metav1.Condition(nil), tc.prior...)}
			setter(&status.Conditions, generation, tc.obs)
			got := meta.FindStatusCondition(status.Conditions, conditionType)
			if got == nil {
				t.Fatalf("no %s condition set", conditionType)
			}
			if diff := cmp.Diff(tc.want, *got, ignoreTransitionTime); diff != "" {
				t.Errorf("%s (-want +got):\n%s", conditionType, diff)
			}
			if got.LastTransitionTime.IsZero() {
				t.Error("lastTransitionTime is not set")
			}
			if len(status.Conditions) != len(tc.prior)+1 && meta.FindStatusCondition(tc.prior, conditionType) == nil {
				t.Errorf("setter left %d conditions, want %d", len(status.Conditions), len(tc.prior)+1)
			}
		})
	}
}

func TestSetKeyAvailableCondition(t *testing.T) {
	releasable := cond(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionTrue, mlv1alpha1.ReasonKeyReleasable, "ModelKey models is Ready for this namespace; the data key is released only to the verified unseal containers of this model's pods")
	runSetter(t, mlv1alpha1.ConditionKeyAvailable, func(c *[]metav1.Condition, gen int64, o observation) { setKeyAvailableCondition(c, gen, o.Key) }, []setterCase{{
		name: "ModelKey usable",
		obs:  servingObservation(),
		want: releasable,
	}, {
		name: "ModelKey usable, key release not ready yet: the key is still available",
		obs:  with(servingObservation(), func(o *observation) { o.Key.KeyReleaseReady = false }),
		want: releasable,
	}, {
		name: "ModelKey missing",
		obs:  observation{Key: keyState{ModelKey: "models", KeyReason: mlv1alpha1.ReasonModelKeyNotFound, KeyMessage: "ModelKey models does not exist"}},
		want: cond(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, mlv1alpha1.ReasonModelKeyNotFound, "ModelKey models does not exist"),
	}, {
		name: "ModelKey not Ready",
		obs: observation{Key: keyState{ModelKey: "models", KeyReason: mlv1alpha1.ReasonModelKeyNotReady,
			KeyMessage: "ModelKey models is not Ready: SecretNotFound: Secret kek named by spec.provider.secret does not exist"}},
		want: cond(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, mlv1alpha1.ReasonModelKeyNotReady,
			"ModelKey models is not Ready: SecretNotFound: Secret kek named by spec.provider.secret does not exist"),
	}, {
		name: "namespace not selected",
		obs: observation{Key: keyState{ModelKey: "models", KeyReason: mlv1alpha1.ReasonKeyNotPermitted,
			KeyMessage: "ModelKey models does not select namespace nlp (spec.namespaceSelector: team=vision)"}},
		want: cond(mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, mlv1alpha1.ReasonKeyNotPermitted,
			"ModelKey models does not select namespace nlp (spec.namespaceSelector: team=vision)"),
	}, {
		name:  "recovery replaces an old failure",
		prior: []metav1.Condition{{Type: mlv1alpha1.ConditionKeyAvailable, Status: metav1.ConditionFalse, Reason: mlv1alpha1.ReasonModelKeyNotFound, ObservedGeneration: 2, LastTransitionTime: longAgo}},
		obs:   servingObservation(),
		want:  releasable,
	}})
}

func TestSetWeightsEncryptedCondition(t *testing.T) {
	runSetter(t, mlv1alpha1.ConditionWeightsEncrypted, func(c *[]metav1.Condition, gen int64, o observation) {
		setWeightsEncryptedCondition(c, gen, o.BundleLocation)
	}, []setterCase{{
		name: "volume bundle",
		obs:  servingObservation(),
		want: cond(mlv1alpha1.ConditionWeightsEncrypted, metav1.ConditionTrue, mlv1alpha1.ReasonSealedBundle,
			"weights are read only from the sealed bundle /var/run/modelguard/bundle and decrypted into memory"),
	}, {
		name: "https bundle",
		obs:  with(servingObservation(), func(o *observation) { o.BundleLocation = "https://models.example.com/v3/" }),
		want: cond(mlv1alpha1.ConditionWeightsEncrypted, metav1.ConditionTrue, mlv1alpha1.ReasonSealedBundle,
			"weights are read only from the sealed bundle https://models.example.com/v3/ and decrypted into memory"),
	}})
}

func TestSetWeightsVerifiedCondition(t *testing.T) {
	digestMismatch := fmt.Errorf("%w: the bundle holds sha256:%s, expected sha256:%s", seal.ErrDigestMismatch,
		strings.Repeat("ab", 32), strings.Repeat("cd", 32)).Error()
	verified := cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionTrue, mlv1alpha1.ReasonDigestVerified,
		"every chunk authenticated and the model digest matched spec.weights.digest")
	pending := cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionUnknown, mlv1alpha1.ReasonVerificationPending,
		"no unseal init container has finished yet")
	verifiedEarlier := metav1.Condition{Type: mlv1alpha1.ConditionWeightsVerified, Status: metav1.ConditionTrue,
		Reason: mlv1alpha1.ReasonDigestVerified, Message: verified.Message, ObservedGeneration: 2, LastTransitionTime: longAgo}

	runSetter(t, mlv1alpha1.ConditionWeightsVerified, func(c *[]metav1.Condition, gen int64, o observation) {
		setWeightsVerifiedCondition(c, gen, o.Key, o.Pods)
	}, []setterCase{{
		name: "unseal succeeded",
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(0, "ok digest=sha256:… files=3")} }),
		want: verified,
	}, {
		name: "unseal of a format v2 bundle",
		obs: with(servingObservation(), func(o *observation) {
			o.Pods = []corev1.Pod{unsealPod(0, "ok digest=sha256:… files=3 bytes=10 seconds=0.1 format=2")}
		}),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionTrue, mlv1alpha1.ReasonDigestVerified,
			verified.Message+"; bundle format v2"),
	}, {
		name: "unseal of a format v1 bundle names its unbound key wrap",
		obs: with(servingObservation(), func(o *observation) {
			o.Pods = []corev1.Pod{unsealPod(0, "ok digest=sha256:… files=3 bytes=10 seconds=0.1 format=1")}
		}),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionTrue, mlv1alpha1.ReasonDigestVerified,
			verified.Message+"; bundle format v1 (unbound key wrap)"),
	}, {
		name: "tamper message verbatim",
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(1, tamperMessage+"\n")} }),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered,
			"chunk 37 of model.safetensors failed authentication"),
	}, {
		name: "digest mismatch verbatim",
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(1, digestMismatch)} }),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonDigestMismatch, digestMismatch),
	}, {
		name: "failure of the last run while the container restarts",
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{restartingUnsealPod(1, tamperMessage)} }),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered, tamperMessage),
	}, {
		name: "killed without a message",
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(137, "")} }),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonUnsealFailed,
			"the unseal init container exited with code 137"),
	}, {
		name: "one failing pod among verified ones",
		obs: with(servingObservation(), func(o *observation) {
			o.Pods = []corev1.Pod{unsealPod(0, ""), unsealPod(1, tamperMessage), unsealPod(0, "")}
		}),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered, tamperMessage),
	}, {
		name: "unseal still running",
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealingPod()} }),
		want: pending,
	}, {
		name: "no pods yet",
		obs:  servingObservation(),
		want: pending,
	}, {
		name:  "verified pods scaled away, same key: stays verified",
		prior: []metav1.Condition{verifiedEarlier},
		obs:   with(servingObservation(), func(o *observation) { o.DesiredReplicas = 0 }),
		want:  verified,
	}, {
		name:  "verified earlier, but the ModelKey is gone: pending again",
		prior: []metav1.Condition{verifiedEarlier},
		obs:   observation{Key: keyState{ModelKey: "models", KeyReason: mlv1alpha1.ReasonModelKeyNotFound, KeyMessage: "ModelKey models does not exist"}},
		want:  pending,
	}, {
		// A refusal says nothing of the bundle: replacing the verdict would
		// un-stall the model and let it fail on the same bundle again.
		name: "tampered earlier, the next run refused its key: the verdict stays",
		prior: []metav1.Condition{{Type: mlv1alpha1.ConditionWeightsVerified, Status: metav1.ConditionFalse,
			Reason: mlv1alpha1.ReasonBundleTampered, Message: tamperMessage, ObservedGeneration: 2, LastTransitionTime: longAgo}},
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(1, keyDeniedMessage)} }),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered, tamperMessage),
	}, {
		name: "tampered earlier, a repaired bundle verified: verified",
		prior: []metav1.Condition{{Type: mlv1alpha1.ConditionWeightsVerified, Status: metav1.ConditionFalse,
			Reason: mlv1alpha1.ReasonBundleTampered, Message: tamperMessage, ObservedGeneration: 2, LastTransitionTime: longAgo}},
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(0, "ok digest=sha256:… files=3")} }),
		want: verified,
	}, {
		name: "a refused key without an earlier verdict: KeyReleaseDenied",
		obs:  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(1, keyDeniedMessage)} }),
		want: cond(mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonKeyReleaseDenied, keyDeniedMessage),
	}})
}

func TestSetNetworkIsolatedCondition(t *testing.T) {
	problem := "the bundle host 203.0.113.10 (203.0.113.10) port 443 is not covered by spec.network.allowedEgress, so the download would be blocked; add a CIDR that covers it"
	runSetter(t, mlv1alpha1.ConditionNetworkIsolated, func(c *[]metav1.Condition, gen int64, o observation) {
		setNetworkIsolatedCondition(c, gen, o.workloadFacts)
	}, []setterCase{{
		name: "policy applied",
		obs:  servingObservation(),
		want: cond(mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionTrue, mlv1alpha1.ReasonPolicyApplied,
			"default-deny NetworkPolicy in force for ingress and egress"),
	}, {
		name: "policy not applied",
		obs:  with(servingObservation(), func(o *observation) { o.PolicyApplied = false; o.BundleHostProblem = problem }),
		want: cond(mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, mlv1alpha1.ReasonPolicyNotApplied,
			"the default-deny NetworkPolicy is not in force yet"),
	}, {
		name: "bundle host not allowed",
		obs:  with(servingObservation(), func(o *observation) { o.BundleHostProblem = problem }),
		want: cond(mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, mlv1alpha1.ReasonBundleHostNotAllowed, problem),
	}})
}

func TestSetHardenedCondition(t *testing.T) {
	runSetter(t, mlv1alpha1.ConditionHardened, func(c *[]metav1.Condition, gen int64, o observation) { setHardenedCondition(c, gen, o.workloadFacts) }, []setterCase{{
		name: "restricted",
		obs:  servingObservation(),
		want: cond(mlv1alpha1.ConditionHardened, metav1.ConditionTrue, mlv1alpha1.ReasonRestricted,
			`every generated pod passes Pod Security "restricted", runs with a read-only root and no API token`),
	}, {
		name: "namespace does not enforce Pod Security: before anything else",
		obs: with(servingObservation(), func(o *observation) {
			o.NamespaceEnforcement = "namespace nlp does not enforce Pod Security"
			o.PodSecurityViolations = []string{"host namespaces: hostNetwork=true"}
		}),
		want: cond(mlv1alpha1.ConditionHardened, metav1.ConditionFalse, mlv1alpha1.ReasonNamespaceNotEnforced, "namespace nlp does not enforce Pod Security"),
	}, {
		name: "violations listed",
		obs: with(servingObservation(), func(o *observation) {
			o.PodSecurityViolations = []string{`privileged: container "server" must not set securityContext.privileged=true`, "host namespaces: hostNetwork=true"}
		}),
		want: cond(mlv1alpha1.ConditionHardened, metav1.ConditionFalse, mlv1alpha1.ReasonNotRestricted,
			`pods violate Pod Security "restricted": privileged: container "server" must not set securityContext.privileged=true; host namespaces: hostNetwork=true`),
	}})
}

func TestSetGPUScheduledCondition(t *testing.T) {
	const insufficient = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
	gpus := func(count int32, pods ...corev1.Pod) observation {
		return with(servingObservation(), func(o *observation) { o.GPUCount, o.Pods = count, pods })
	}
	pending := cond(mlv1alpha1.ConditionGPUScheduled, metav1.ConditionUnknown, mlv1alpha1.ReasonSchedulingPending, "no pod has been scheduled yet")
	runSetter(t, mlv1alpha1.ConditionGPUScheduled, func(c *[]metav1.Condition, gen int64, o observation) {
		setGPUScheduledCondition(c, gen, o.workloadFacts)
	}, []setterCase{{
		name: "no GPU asked for",
		obs:  gpus(0, scheduling(corev1.ConditionTrue, "", "")),
		want: cond(mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonNoGPURequested, "spec.gpu asks for no GPU"),
	}, {
		name: "no GPU asked for and no pod",
		obs:  gpus(0),
		want: cond(mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonNoGPURequested, "spec.gpu asks for no GPU"),
	}, {
		name: "every pod scheduled",
		obs:  gpus(2, scheduling(corev1.ConditionTrue, "", ""), scheduling(corev1.ConditionTrue, "", "")),
		want: cond(mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonScheduled, "2 pod(s) scheduled with 2 GPU(s) each"),
	}, {
		name: "scheduler's message verbatim",
		obs:  gpus(8, scheduling(corev1.ConditionTrue, "", ""), scheduling(corev1.ConditionFalse, corev1.PodReasonUnschedulable, insufficient)),
		want: cond(mlv1alpha1.ConditionGPUScheduled, metav1.ConditionFalse, mlv1alpha1.ReasonUnschedulable, insufficient),
	}, {
		name: "unschedulable even without GPUs",
		obs:  gpus(0, scheduling(corev1.ConditionFalse, corev1.PodReasonUnschedulable, "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")),
		want: cond(mlv1alpha1.ConditionGPUScheduled, metav1.ConditionFalse, mlv1alpha1.ReasonUnschedulable,
			"0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."),
	}, {
		name: "waiting for the scheduler",
		obs:  gpus(1, scheduling(corev1.ConditionFalse, "", "")),
		want: pending,
	}, {
		name: "pod the scheduler has not looked at yet",
		obs:  gpus(1, scheduling(corev1.ConditionTrue, "", ""), corev1.Pod{}),
		want: pending,
	}, {
		name: "bound pod whose condition lags",
		obs:  gpus(1, corev1.Pod{Spec: corev1.PodSpec{NodeName: "gpu-node-1"}}),
		want: cond(mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonScheduled, "1 pod(s) scheduled with 1 GPU(s) each"),
	}, {
		name: "no pods",
		obs:  gpus(1),
		want: pending,
	}})
}

func TestSetOwnershipRecordedCondition(t *testing.T) {
	runSetter(t, mlv1alpha1.ConditionOwnershipRecorded, func(c *[]metav1.Condition, gen int64, o observation) {
		setOwnershipRecordedCondition(c, gen, o.workloadFacts)
	}, []setterCase{{
		name: "every object annotated",
		obs:  servingObservation(),
		want: cond(mlv1alpha1.ConditionOwnershipRecorded, metav1.ConditionTrue, mlv1alpha1.ReasonOwnershipAnnotated,
			"every managed object, pods included, carries the owner, license, copyright, classification and digest annotations"),
	}, {
		name: "missing ones listed in order",
		obs: with(servingObservation(), func(o *observation) {
			o.ObjectsMissingOwnership = []string{"*v1.Service m", "*v1.Pod m-7d9f-abcde", "*v1.NetworkPolicy m"}
		}),
		want: cond(mlv1alpha1.ConditionOwnershipRecorded, metav1.ConditionFalse, mlv1alpha1.ReasonProgressing,
			"ownership annotations missing on *v1.NetworkPolicy m, *v1.Pod m-7d9f-abcde, *v1.Service m"),
	}})
}

func TestStallReasonAndCanServe(t *testing.T) {
	tests := []struct {
		name     string
		obs      observation
		reason   string
		canServe bool
	}{
		{"everything holds", servingObservation(), "", true},
		{"key failure", with(servingObservation(), func(o *observation) {
			o.Key = keyState{KeyReason: mlv1alpha1.ReasonKeyNotPermitted, KeyMessage: "not selected"}
		}), mlv1alpha1.ReasonKeyNotPermitted, false},
		{"key failure before memory", with(servingObservation(), func(o *observation) {
			o.Key = keyState{KeyReason: mlv1alpha1.ReasonModelKeyNotFound, KeyMessage: "no ModelKey"}
			o.MemoryCoversWeights = false
		}), mlv1alpha1.ReasonModelKeyNotFound, false},
		{"memory too small", with(servingObservation(), func(o *observation) { o.MemoryCoversWeights = false }),
			mlv1alpha1.ReasonMemoryTooSmall, false},
		{"key release not ready", with(servingObservation(), func(o *observation) { o.Key.KeyReleaseReady = false }), "", false},
		{"policy not applied", with(servingObservation(), func(o *observation) { o.PolicyApplied = false }), "", false},
		{"pods not restricted", with(servingObservation(), func(o *observation) { o.PodSecurityViolations = []string{"privileged: x"} }), "", false},
		{"bundle host uncovered does not hold pods back", with(servingObservation(), func(o *observation) { o.BundleHostProblem = "blocked" }), "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reason, message, _ := policy.Stalled.Evaluate(tc.obs.policyFacts())
			if reason != tc.reason {
				t.Errorf("stallReason = %q, want %q", reason, tc.reason)
			}
			if (reason == "") != (message == "") {
				t.Errorf("stallReason gave reason %q with message %q", reason, message)
			}
			if _, _, failed := policy.Serving.Evaluate(tc.obs.policyFacts()); !failed != tc.canServe {
				t.Errorf("canServe = %v, want %v", !failed, tc.canServe)
			}
		})
	}
}

// TestPhaseAndReadiness computes the whole status and checks the phase and
// the kstatus conditions.
func TestPhaseAndReadiness(t *testing.T) {
	servingWith := func(edit func(*observation)) observation {
		obs := servingObservation()
		obs.Pods = []corev1.Pod{unsealPod(0, ""), unsealPod(0, "")}
		obs.Deployment = availableDeployment(2)
		edit(&obs)
		return obs
	}
	tests := []struct {
		name        string
		obs         observation
		phase       mlv1alpha1.ProtectedModelPhase
		ready       metav1.Condition
		reconciling metav1.ConditionStatus
		stalled     *metav1.Condition
	}{{
		name:        "serving with every protection",
		obs:         servingWith(func(*observation) {}),
		phase:       mlv1alpha1.ModelPhaseProtected,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable, "2 of 2 pods serving"),
		reconciling: metav1.ConditionFalse,
	}, {
		name:        "serving, but a protection condition is not true",
		obs:         servingWith(func(o *observation) { o.BundleHostProblem = "blocked" }),
		phase:       mlv1alpha1.ModelPhaseDegraded,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable, "2 of 2 pods serving"),
		reconciling: metav1.ConditionFalse,
	}, {
		name:        "serving with fewer pods than asked",
		obs:         servingWith(func(o *observation) { o.Deployment.Status.AvailableReplicas, o.Deployment.Status.ReadyReplicas = 1, 1 }),
		phase:       mlv1alpha1.ModelPhaseDegraded,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonUnavailable, "1 of 2 pods available"),
		reconciling: metav1.ConditionTrue,
	}, {
		name:        "rolling out",
		obs:         servingWith(func(o *observation) { o.Deployment.Status.UpdatedReplicas, o.Deployment.Status.ReadyReplicas = 0, 0 }),
		phase:       mlv1alpha1.ModelPhasePending,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonRollingOut, "0 of 2 pods updated"),
		reconciling: metav1.ConditionTrue,
	}, {
		name:        "Deployment controller behind",
		obs:         servingWith(func(o *observation) { o.Deployment.Generation = 4 }),
		phase:       mlv1alpha1.ModelPhaseDegraded, // its two pods still serve
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonRollingOut, "the Deployment controller has not seen the latest spec yet"),
		reconciling: metav1.ConditionTrue,
	}, {
		name:        "no Deployment yet",
		obs:         servingWith(func(o *observation) { o.Deployment, o.Pods = nil, nil }),
		phase:       mlv1alpha1.ModelPhasePending,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonProgressing, "creating the Deployment"),
		reconciling: metav1.ConditionTrue,
	}, {
		name: "key release not ready",
		obs: servingWith(func(o *observation) {
			o.Key.KeyReleaseReady, o.Pods, o.Deployment = false, nil, availableDeployment(0)
		}),
		phase:       mlv1alpha1.ModelPhasePending,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonProgressing, "waiting for the key-release service's certificate"),
		reconciling: metav1.ConditionTrue,
	}, {
		name: "key missing: failed closed",
		obs: servingWith(func(o *observation) {
			o.Key = keyState{ModelKey: "models", KeyReason: mlv1alpha1.ReasonModelKeyNotFound, KeyMessage: "ModelKey models does not exist"}
		}),
		phase: mlv1alpha1.ModelPhaseFailed,
		ready: cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonFailClosed,
			"not serving, failed closed: ModelKey models does not exist"),
		reconciling: metav1.ConditionFalse,
		stalled: &metav1.Condition{Type: mlv1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: mlv1alpha1.ReasonModelKeyNotFound,
			Message: "ModelKey models does not exist", ObservedGeneration: generation},
	}, {
		name:  "memory too small: failed closed",
		obs:   servingWith(func(o *observation) { o.MemoryCoversWeights = false }),
		phase: mlv1alpha1.ModelPhaseFailed,
		ready: cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonFailClosed,
			"not serving, failed closed: spec.server.resources.limits.memory does not exceed spec.weights.memory: the plaintext weights in tmpfs would not fit, so no pod is started"),
		reconciling: metav1.ConditionFalse,
		stalled: &metav1.Condition{Type: mlv1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: mlv1alpha1.ReasonMemoryTooSmall,
			Message: "spec.server.resources.limits.memory does not exceed spec.weights.memory: the plaintext weights in tmpfs would not fit, so no pod is started", ObservedGeneration: generation},
	}, {
		name: "tampered bundle reported by a pod",
		obs: servingWith(func(o *observation) {
			o.Pods = []corev1.Pod{unsealPod(1, tamperMessage)}
			o.Deployment.Status.AvailableReplicas, o.Deployment.Status.ReadyReplicas = 0, 0
		}),
		phase:       mlv1alpha1.ModelPhaseFailed,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered, "not serving: "+tamperMessage),
		reconciling: metav1.ConditionFalse,
		stalled: &metav1.Condition{Type: mlv1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: mlv1alpha1.ReasonBundleTampered,
			Message: tamperMessage, ObservedGeneration: generation},
	}, {
		// Key release refuses stalled models: stalling on a refusal would
		// keep the model from its key after the cause is gone.
		name: "key release refused a pod: not serving, not stalled",
		obs: servingWith(func(o *observation) {
			o.Pods = []corev1.Pod{unsealPod(1, keyDeniedMessage)}
			o.Deployment.Status.AvailableReplicas, o.Deployment.Status.ReadyReplicas = 0, 0
		}),
		phase:       mlv1alpha1.ModelPhasePending,
		ready:       cond(mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonKeyReleaseDenied, "not serving yet: "+keyDeniedMessage),
		reconciling: metav1.ConditionTrue,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pm := testModel().DeepCopy()
			pm.Generation = generation
			status := computeStatus(pm, tc.obs)
			if status.Phase != tc.phase {
				t.Errorf("phase = %s, want %s", status.Phase, tc.phase)
			}
			if diff := cmp.Diff(tc.ready, *meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionReady), ignoreTransitionTime); diff != "" {
				t.Errorf("Ready (-want +got):\n%s", diff)
			}
			if got := meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionReconciling); got.Status != tc.reconciling {
				t.Errorf("Reconciling = %s (%s: %s), want %s", got.Status, got.Reason, got.Message, tc.reconciling)
			}
			stalled := meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionStalled)
			if diff := cmp.Diff(tc.stalled, stalled, ignoreTransitionTime); diff != "" {
				t.Errorf("Stalled (-want +got):\n%s", diff)
			}
			if status.ObservedGeneration != generation {
				t.Errorf("status.observedGeneration = %d, want %d", status.ObservedGeneration, generation)
			}
			for _, c := range status.Conditions {
				if c.ObservedGeneration != generation {
					t.Errorf("%s observedGeneration = %d, want %d", c.Type, c.ObservedGeneration, generation)
				}
			}
			wantReplicas, wantReady := int32(0), int32(0)
			if d := tc.obs.Deployment; d != nil {
				wantReplicas, wantReady = d.Status.Replicas, d.Status.ReadyReplicas
			}
			if status.Replicas != wantReplicas || status.ReadyReplicas != wantReady {
				t.Errorf("replicas/ready = %d/%d, want %d/%d", status.Replicas, status.ReadyReplicas, wantReplicas, wantReady)
			}
		})
	}
}

func TestRecoveryRemovesStalled(t *testing.T) {
	pm := testModel().DeepCopy()
	pm.Generation = generation
	stalled := servingObservation()
	stalled.MemoryCoversWeights = false
	pm.Status = computeStatus(pm, stalled)
	if !meta.IsStatusConditionTrue(pm.Status.Conditions, mlv1alpha1.ConditionStalled) {
		t.Fatal("setup: the model is not stalled")
	}
	recovered := servingObservation()
	recovered.Pods = []corev1.Pod{unsealPod(0, ""), unsealPod(0, "")}
	recovered.Deployment = availableDeployment(2)
	status := computeStatus(pm, recovered)
	if c := meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionStalled); c != nil {
		t.Errorf("Stalled still present after recovery: %+v", c)
	}
	if status.Phase != mlv1alpha1.ModelPhaseProtected {
		t.Errorf("phase = %s, want Protected", status.Phase)
	}
}

// TestComputeStatusIsStable is the pure half of "zero writes at steady
// state": computing the status again from the same observation changes
// nothing, transition times included, and the input is left alone.
func TestComputeStatusIsStable(t *testing.T) {
	observations := map[string]observation{
		"serving":               with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(0, "")}; o.Deployment = availableDeployment(2) }),
		"key release not ready": {Key: keyState{ModelKey: "models"}, MemoryCoversWeights: true, workloadFacts: workloadFacts{PolicyApplied: true}},
		"stalled":               with(servingObservation(), func(o *observation) { o.MemoryCoversWeights = false }),
		"tampered":              with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(1, tamperMessage)} }),
		"unschedulable": with(servingObservation(), func(o *observation) {
			o.GPUCount, o.Pods = 8, []corev1.Pod{scheduling(corev1.ConditionFalse, corev1.PodReasonUnschedulable, "0/3 nodes are available")}
		}),
		"scaled to zero after serving": with(servingObservation(), func(o *observation) {
			o.DesiredReplicas, o.Deployment = 0, availableDeployment(0)
		}),
	}
	for name, obs := range observations {
		t.Run(name, func(t *testing.T) {
			pm := testModel().DeepCopy()
			pm.Generation = generation
			pm.Status = computeStatus(pm, obs)
			// Age every transition, as if the status had been written long ago.
			for i := range pm.Status.Conditions {
				pm.Status.Conditions[i].LastTransitionTime = longAgo
			}
			before := pm.DeepCopy()
			again := computeStatus(pm, obs)
			if !equality.Semantic.DeepEqual(pm.Status, again) {
				t.Errorf("second computation differs (-first +second):\n%s", cmp.Diff(pm.Status, again))
			}
			if diff := cmp.Diff(before, pm); diff != "" {
				t.Errorf("computeStatus changed its input (-before +after):\n%s", diff)
			}
		})
	}
}

func TestTransitionTimes(t *testing.T) {
	pm := testModel().DeepCopy()
	pm.Generation = generation
	pm.Status.Conditions = []metav1.Condition{
		// Same status, other reason and generation: the time stays.
		{Type: mlv1alpha1.ConditionKeyAvailable, Status: metav1.ConditionTrue, Reason: "Old", Message: "old", ObservedGeneration: 1, LastTransitionTime: longAgo},
		// Status flips: the time moves.
		{Type: mlv1alpha1.ConditionNetworkIsolated, Status: metav1.ConditionFalse, Reason: mlv1alpha1.ReasonPolicyNotApplied, ObservedGeneration: 1, LastTransitionTime: longAgo},
	}
	status := computeStatus(pm, servingObservation())
	key := meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionKeyAvailable)
	if !key.LastTransitionTime.Equal(&longAgo) {
		t.Errorf("KeyAvailable kept its status but its transition time moved to %v", key.LastTransitionTime)
	}
	if key.Reason != mlv1alpha1.ReasonKeyReleasable || key.ObservedGeneration != generation {
		t.Errorf("KeyAvailable = %s gen %d, want %s gen %d", key.Reason, key.ObservedGeneration, mlv1alpha1.ReasonKeyReleasable, generation)
	}
	isolated := meta.FindStatusCondition(status.Conditions, mlv1alpha1.ConditionNetworkIsolated)
	if isolated.Status != metav1.ConditionTrue || !isolated.LastTransitionTime.After(longAgo.Time) {
		t.Errorf("NetworkIsolated flipped to %s but its transition time is %v", isolated.Status, isolated.LastTransitionTime)
	}
}

func TestProtectionSummary(t *testing.T) {
	pm := testModel().DeepCopy()
	pm.Spec.Access = &mlv1alpha1.Access{BreakGlassGroups: []string{"sre-oncall", "ml-security"}}
	status := computeStatus(pm, servingObservation())
	want := &mlv1alpha1.ProtectionSummary{
		Cipher:      "AES-256-GCM (chunked, HKDF-SHA256 per-file keys)",
		KeyProvider: mlv1alpha1.KeyProviderSecret,
		Digest:      pm.Spec.Weights.Digest,
		Isolation:   "default-deny NetworkPolicy (ingress and egress)",
		ExecGuard:   "break-glass groups: sre-oncall, ml-security",
	}
	if diff := cmp.Diff(want, status.Protection); diff != "" {
		t.Errorf("protection (-want +got):\n%s", diff)
	}
	unprotected := computeStatus(testModel(), with(servingObservation(), func(o *observation) { o.PolicyApplied = false }))
	if unprotected.Protection.Isolation != "none" || unprotected.Protection.ExecGuard != "no break-glass groups" {
		t.Errorf("protection without policy or access = %+v", unprotected.Protection)
	}
}

// TestStatusNeverHoldsKeyMaterial: the status is computed while the data
// key is in memory; no form of it may reach the status.
func TestStatusNeverHoldsKeyMaterial(t *testing.T) {
	for name, obs := range map[string]observation{
		"serving":  with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(0, "")} }),
		"stalled":  with(servingObservation(), func(o *observation) { o.MemoryCoversWeights = false }),
		"tampered": with(servingObservation(), func(o *observation) { o.Pods = []corev1.Pod{unsealPod(1, tamperMessage)} }),
	} {
		data, err := json.Marshal(computeStatus(testModel(), obs))
		if err != nil {
			t.Fatal(err)
		}
		for _, form := range []string{string(testDEK), hex.EncodeToString(testDEK), base64.StdEncoding.EncodeToString(testDEK),
			base64.RawURLEncoding.EncodeToString(testDEK), hex.EncodeToString(testDEK[:8])} {
			if strings.Contains(string(data), form) {
				t.Errorf("%s: status contains the data key as %q", name, form)
			}
		}
	}
}

// TestClassifyUnsealError feeds the classifier the messages the sealing
// package really produces.
func TestClassifyUnsealError(t *testing.T) {
	tests := []struct {
		name    string
		message string
		want    string
	}{
		{"chunk failed authentication", tamperMessage, mlv1alpha1.ReasonBundleTampered},
		{"truncated file", (&seal.ChunkError{Path: "weights/model-00002.safetensors", Chunk: 12, Err: seal.ErrTruncated, Detail: "4096 bytes missing"}).Error(), mlv1alpha1.ReasonBundleTampered},
		{"data appended to a file", (&seal.ChunkError{Path: "model.safetensors", Chunk: 3, Err: seal.ErrExtended}).Error(), mlv1alpha1.ReasonBundleTampered},
		{"file swapped from another bundle", (&seal.HeaderError{Path: "model.safetensors", Detail: "its salt differs: the sealed file was swapped, replaced, or belongs to another bundle"}).Error(), mlv1alpha1.ReasonBundleTampered},
		{"manifest modified", fmt.Errorf("%s: %w", seal.ManifestName, seal.ErrManifestAuth).Error(), mlv1alpha1.ReasonBundleTampered},
		{"tampered file whose name mentions a digest", (&seal.ChunkError{Path: "digests/model.safetensors", Chunk: 0, Err: seal.ErrAuthentication}).Error(), mlv1alpha1.ReasonBundleTampered},
		{"another model", fmt.Errorf("%w: the bundle holds sha256:%s, expected sha256:%s", seal.ErrDigestMismatch, strings.Repeat("ab", 32), strings.Repeat("cd", 32)).Error(), mlv1alpha1.ReasonDigestMismatch},
		{"bundle missing", "open /var/run/modelguard/bundle/manifest.json: no such file or directory", mlv1alpha1.ReasonUnsealFailed},
		{"key release refused", "key release denied (OwnerChainBroken): key release for ProtectedModel nlp/m refused: pod nlp/rogue of ProtectedModel nlp/m: the pod is not controlled by a ReplicaSet", mlv1alpha1.ReasonKeyReleaseDenied},
		{"destination on disk", "DEST /var/run/modelguard/model is on ext4, not on a memory-backed file system (tmpfs or ramfs), so plaintext weights would reach disk", mlv1alpha1.ReasonUnsealFailed},
		{"https download failed", `Get "https://models.example.com/v3/manifest.json": dial tcp 203.0.113.10:443: i/o timeout`, mlv1alpha1.ReasonUnsealFailed},
		{"an I/O error inside a chunk", (&seal.ChunkError{Path: "model.safetensors", Chunk: 2, Err: fmt.Errorf("reading: %w", errors.New("input/output error"))}).Error(), mlv1alpha1.ReasonUnsealFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := classifyUnsealError(tc.message); got != tc.want {
				t.Errorf("classifyUnsealError(%q) = %s, want %s", tc.message, got, tc.want)
			}
		})
	}
}
