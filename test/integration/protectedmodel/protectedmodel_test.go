package protectedmodel

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
)

// protectedModel creates a model under the default ModelKey and waits until
// its key may be released and its Deployment is scaled up: the state every
// serving test starts from.
func protectedModel(t *testing.T, w *builders.ProtectedModelWrapper) (*mlv1alpha1.ProtectedModel, sealedKey) {
	t.Helper()
	pm := w.Obj()
	key := newSealedKey(t, pm.Spec.Weights.Digest)
	if err := k8s.Create(context.Background(), pm); err != nil {
		t.Fatalf("creating ProtectedModel: %v", err)
	}
	waitForCondition(t, pm.Namespace, pm.Name, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionTrue, mlv1alpha1.ReasonKeyReleasable)
	eventually(t, "the Deployment is scaled up", func() error {
		if d := getDeployment(t, pm); ptr.Deref(d.Spec.Replicas, 0) != builder.Replicas(pm) {
			return fmt.Errorf("replicas %d", ptr.Deref(d.Spec.Replicas, 0))
		}
		return nil
	})
	return pm, key
}

func getDeployment(t *testing.T, pm *mlv1alpha1.ProtectedModel) *appsv1.Deployment {
	t.Helper()
	d := &appsv1.Deployment{}
	eventually(t, "the Deployment exists", func() error {
		return k8s.Get(context.Background(), client.ObjectKey{Namespace: pm.Namespace, Name: pm.Name}, d)
	})
	return d
}

// markDeploymentAvailable plays the Deployment controller.
func markDeploymentAvailable(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	replicas := *d.Spec.Replicas
	d.Status = appsv1.DeploymentStatus{
		ObservedGeneration: d.Generation, Replicas: replicas, UpdatedReplicas: replicas,
		ReadyReplicas: replicas, AvailableReplicas: replicas,
	}
	if err := k8s.Status().Update(context.Background(), d); err != nil {
		t.Fatalf("writing Deployment status: %v", err)
	}
}

// createServerPod plays the Deployment and ReplicaSet controllers and the
// kubelet: a pod from the Deployment's template, owned by a ReplicaSet that
// the Deployment controls, with the given status.
func createServerPod(t *testing.T, d *appsv1.Deployment, name string, status corev1.PodStatus) {
	t.Helper()
	createPod(t, d, name, d.Spec.Template.Spec, status)
}

// createPod is createServerPod with a pod spec of the test's choosing, as a
// ReplicaSet makes from an edited template.
func createPod(t *testing.T, d *appsv1.Deployment, name string, spec corev1.PodSpec, status corev1.PodStatus) {
	t.Helper()
	rs := replicaSetOf(t, d)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, Name: name,
			Labels: d.Spec.Template.Labels, Annotations: d.Spec.Template.Annotations,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}},
		Spec: spec,
	}
	if err := k8s.Create(context.Background(), pod); err != nil {
		t.Fatalf("creating server pod: %v", err)
	}
	pod.Status = status
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatalf("writing server pod status: %v", err)
	}
}

// replicaSetOf plays the Deployment controller: the ReplicaSet that d
// controls, created on first use.
func replicaSetOf(t *testing.T, d *appsv1.Deployment) *appsv1.ReplicaSet {
	t.Helper()
	ctx := context.Background()
	rs := &appsv1.ReplicaSet{}
	key := client.ObjectKey{Namespace: d.Namespace, Name: d.Name + "-rs"}
	if err := k8s.Get(ctx, key, rs); err == nil {
		return rs
	}
	rs = &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, Name: key.Name, Labels: d.Spec.Template.Labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
		Spec: appsv1.ReplicaSetSpec{Replicas: d.Spec.Replicas, Selector: d.Spec.Selector, Template: d.Spec.Template},
	}
	if err := k8s.Create(ctx, rs); err != nil {
		t.Fatalf("creating the Deployment's ReplicaSet: %v", err)
	}
	return rs
}

func unsealedPodStatus(exitCode int32, message string) corev1.PodStatus {
	return corev1.PodStatus{
		Phase:      corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
		InitContainerStatuses: []corev1.ContainerStatus{{
			Name: builder.UnsealContainerName, Image: unsealImage,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Message: message}},
		}},
	}
}

func TestProtectedModelServesFromSealedWeights(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, key := protectedModel(t, builders.MakeProtectedModel("llm", ns).
		AllowClientPods(map[string]string{"app": "web"}).
		AllowEgress("10.20.0.0/16", 443).
		Patents("US1234567"))

	d := getDeployment(t, pm)
	if got := *d.Spec.Replicas; got != 1 {
		t.Fatalf("Deployment replicas = %d, want 1 once the ModelKey may be used", got)
	}
	podSpec := d.Spec.Template.Spec
	if len(podSpec.InitContainers) != 1 || podSpec.InitContainers[0].Name != builder.UnsealContainerName {
		t.Fatalf("init containers = %v, want one %q", podSpec.InitContainers, builder.UnsealContainerName)
	}
	unseal, server := podSpec.InitContainers[0], podSpec.Containers[0]
	if unseal.Image != unsealImage || !slices.Contains(unseal.Command, "--expect-digest") || !slices.Contains(unseal.Command, pm.Spec.Weights.Digest) {
		t.Errorf("unseal container %q %v does not verify the digest with the operator's image", unseal.Image, unseal.Command)
	}
	// Only the init container holds the key-release token; no Secret is
	// mounted at all.
	if !mountsVolume(unseal, mlv1alpha1.KeyReleaseTokenVolume) || !slices.Contains(unseal.Command, testKeyRelease.URL) {
		t.Errorf("unseal container %v does not call key release with its token", unseal.Command)
	}
	if mountsVolume(server, mlv1alpha1.KeyReleaseTokenVolume) || len(server.EnvFrom) > 0 {
		t.Errorf("server container can reach the key-release token: mounts %v envFrom %v", server.VolumeMounts, server.EnvFrom)
	}
	for _, v := range podSpec.Volumes {
		if v.Secret != nil {
			t.Errorf("the pod mounts Secret %s", v.Secret.SecretName)
		}
		if v.Projected != nil && (len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil ||
			v.Projected.Sources[0].ServiceAccountToken.Audience != mlv1alpha1.KeyReleaseAudience) {
			t.Errorf("projected volume %s is not only a token for %s: %+v", v.Name, mlv1alpha1.KeyReleaseAudience, v.Projected)
		}
	}
	if podSpec.AutomountServiceAccountToken == nil || *podSpec.AutomountServiceAccountToken {
		t.Errorf("pod mounts a service-account token")
	}
	for _, v := range podSpec.Volumes {
		if v.Name == "model" && (v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory) {
			t.Errorf("plaintext volume is not memory-backed: %+v", v)
		}
	}
	for _, m := range server.VolumeMounts {
		if m.Name == "model" && !m.ReadOnly {
			t.Errorf("server mounts the plaintext read-write")
		}
	}

	// No key material is written to the model's namespace: no Secret and
	// no Job at all.
	assertNoSecretsOrJobs(t, ns)

	// The kubelet reports a finished unseal and the Deployment becomes
	// available: the model is Protected.
	createServerPod(t, d, pm.Name+"-abc", unsealedPodStatus(0, ""))
	markDeploymentAvailable(t, d)
	pm = waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
	for _, c := range []struct{ conditionType, reason string }{
		{mlv1alpha1.ConditionWeightsEncrypted, mlv1alpha1.ReasonSealedBundle},
		{mlv1alpha1.ConditionWeightsVerified, mlv1alpha1.ReasonDigestVerified},
		{mlv1alpha1.ConditionNetworkIsolated, mlv1alpha1.ReasonPolicyApplied},
		{mlv1alpha1.ConditionHardened, mlv1alpha1.ReasonRestricted},
		{mlv1alpha1.ConditionGPUScheduled, mlv1alpha1.ReasonNoGPURequested},
		{mlv1alpha1.ConditionOwnershipRecorded, mlv1alpha1.ReasonOwnershipAnnotated},
	} {
		waitForCondition(t, ns, pm.Name, c.conditionType, metav1.ConditionTrue, c.reason)
	}
	eventually(t, "phase is Protected", func() error {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(pm), pm); err != nil {
			return err
		}
		if pm.Status.Phase != mlv1alpha1.ModelPhaseProtected || pm.Status.ReadyReplicas != 1 {
			return fmt.Errorf("phase %s, ready %d", pm.Status.Phase, pm.Status.ReadyReplicas)
		}
		return nil
	})
	if pm.Status.Protection == nil || pm.Status.Protection.KeyProvider != mlv1alpha1.KeyProviderSecret {
		t.Errorf("protection summary = %+v", pm.Status.Protection)
	}

	// Network isolation: default deny both ways, the allowed clients on the
	// model's port, DNS and the allowed CIDR out.
	policy := &networkingv1.NetworkPolicy{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: pm.Name}, policy); err != nil {
		t.Fatalf("reading NetworkPolicy: %v", err)
	}
	if !slices.Contains(policy.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(policy.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("policy types = %v, want Ingress and Egress", policy.Spec.PolicyTypes)
	}
	if len(policy.Spec.Ingress) != 1 || policy.Spec.Ingress[0].Ports[0].Port.IntValue() != 8080 {
		t.Errorf("ingress = %+v, want one rule on port 8080", policy.Spec.Ingress)
	}
	if len(policy.Spec.Egress) != 3 || policy.Spec.Egress[1].Ports[0].Port.IntValue() != mlv1alpha1.KeyReleasePort ||
		policy.Spec.Egress[2].To[0].IPBlock.CIDR != "10.20.0.0/16" {
		t.Errorf("egress = %+v, want DNS, key release and 10.20.0.0/16", policy.Spec.Egress)
	}

	assertNoKeyMaterial(t, ns, pm.Name, key)
}

// assertNoSecretsOrJobs checks that the operator wrote no Secret and no Job
// into the model's namespace: the data key is never stored in the cluster.
func assertNoSecretsOrJobs(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	secrets, jobs := &corev1.SecretList{}, &batchv1.JobList{}
	if err := k8s.List(ctx, secrets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if err := k8s.List(ctx, jobs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		t.Errorf("Secret %s exists in the model's namespace", s.Name)
	}
	for _, j := range jobs.Items {
		t.Errorf("Job %s exists in the model's namespace", j.Name)
	}
}

func mountsVolume(c corev1.Container, volume string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return true
		}
	}
	return false
}

// assertNoKeyMaterial checks that neither the KEK nor the DEK appears in the
// model's status, its events or the manager's logs.
func assertNoKeyMaterial(t *testing.T, ns, name string, key sealedKey) {
	t.Helper()
	ctx := context.Background()
	pm := &mlv1alpha1.ProtectedModel{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, pm); err != nil {
		t.Fatal(err)
	}
	status, _ := yaml.Marshal(pm.Status)
	events := &eventsv1.EventList{}
	if err := k8s.List(ctx, events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	eventText, _ := yaml.Marshal(events.Items)
	places := map[string]string{"status": string(status), "events": string(eventText), "manager logs": logs.String()}
	for where, text := range places {
		for _, secret := range [][]byte{key.KEK, key.DEK} {
			for _, form := range secretForms(secret) {
				if strings.Contains(text, form) {
					t.Errorf("key material appears in the %s", where)
				}
			}
		}
	}
}

// TestFailClosed covers every way the model can be left unprotectable: no
// pod may start, the reason is in the conditions, and no key leaks.
func TestFailClosed(t *testing.T) {
	tests := []struct {
		name  string
		model func(ns string) *builders.ProtectedModelWrapper
		// setup runs before the model is created; ns is its namespace.
		setup       func(t *testing.T, ns string)
		condition   string
		reason      string
		messagePart string
	}{
		{
			name: "ModelKey missing",
			model: func(ns string) *builders.ProtectedModelWrapper {
				return builders.MakeProtectedModel("nokey", ns).ModelKey("absent-" + ns)
			},
			setup:     func(*testing.T, string) {},
			condition: mlv1alpha1.ConditionKeyAvailable, reason: mlv1alpha1.ReasonModelKeyNotFound,
			messagePart: "ModelKey absent-",
		},
		{
			name: "ModelKey not Ready: its Secret is missing",
			model: func(ns string) *builders.ProtectedModelWrapper {
				return builders.MakeProtectedModel("brokenkey", ns).ModelKey("broken-" + ns)
			},
			setup: func(t *testing.T, ns string) {
				createModelKey(t, "broken-"+ns, secretProvider("no-such-secret", "kek"), nil)
			},
			condition: mlv1alpha1.ConditionKeyAvailable, reason: mlv1alpha1.ReasonModelKeyNotReady,
			messagePart: "no-such-secret",
		},
		{
			name: "ModelKey does not select the namespace",
			model: func(ns string) *builders.ProtectedModelWrapper {
				return builders.MakeProtectedModel("otherteam", ns).ModelKey("vision-" + ns)
			},
			setup: func(t *testing.T, ns string) {
				createModelKey(t, "vision-"+ns, secretProvider("model-kek", "kek"), &metav1.LabelSelector{MatchLabels: map[string]string{"team": "vision"}})
				waitForModelKey(t, "vision-"+ns, metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed)
			},
			condition: mlv1alpha1.ConditionKeyAvailable, reason: mlv1alpha1.ReasonKeyNotPermitted,
			messagePart: "does not select namespace",
		},
		{
			name: "memory limit below the plaintext size",
			model: func(ns string) *builders.ProtectedModelWrapper {
				return builders.MakeProtectedModel("smallmem", ns).Memory("2Gi").MemoryLimit("1Gi")
			},
			setup:     func(*testing.T, string) {},
			condition: mlv1alpha1.ConditionStalled, reason: mlv1alpha1.ReasonMemoryTooSmall,
			messagePart: "spec.weights.memory",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			ns := newNamespace(t)
			tc.setup(t, ns)
			pm := tc.model(ns).Obj()
			if err := k8s.Create(ctx, pm); err != nil {
				t.Fatalf("creating ProtectedModel: %v", err)
			}

			// Stalled is the one condition whose True is bad news.
			want := metav1.ConditionFalse
			if tc.condition == mlv1alpha1.ConditionStalled {
				want = metav1.ConditionTrue
			}
			pm = waitForCondition(t, ns, pm.Name, tc.condition, want, tc.reason)
			c := findCondition(pm, tc.condition)
			if !strings.Contains(c.Message, tc.messagePart) {
				t.Errorf("%s message %q does not mention %q", tc.condition, c.Message, tc.messagePart)
			}
			waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonFailClosed)
			if pm.Status.Phase != mlv1alpha1.ModelPhaseFailed {
				t.Errorf("phase = %s, want Failed", pm.Status.Phase)
			}

			// Fail closed: a Deployment at zero replicas, and nothing of
			// the key in the namespace.
			d := getDeployment(t, pm)
			if *d.Spec.Replicas != 0 {
				t.Errorf("Deployment replicas = %d, want 0 while the model cannot be protected", *d.Spec.Replicas)
			}
			assertNoSecretsOrJobs(t, ns)
			assertNoKeyMaterial(t, ns, pm.Name, newSealedKey(t, pm.Spec.Weights.Digest))
		})
	}
}

// TestNamespaceMustEnforcePodSecurity: in a namespace that does not enforce
// Pod Security baseline or restricted, a privileged pod could read the
// plaintext beside the model, so nothing is served (Hardened=False,
// NamespaceNotEnforced, Deployment at zero); enforcing it serves the model.
func TestNamespaceMustEnforcePodSecurity(t *testing.T) {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "pm-open-"}}
	if err := k8s.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	pm := builders.MakeProtectedModel("open", ns.Name).Obj()
	if err := k8s.Create(ctx, pm); err != nil {
		t.Fatal(err)
	}
	pm = waitForCondition(t, ns.Name, pm.Name, mlv1alpha1.ConditionHardened, metav1.ConditionFalse, mlv1alpha1.ReasonNamespaceNotEnforced)
	if msg := findCondition(pm, mlv1alpha1.ConditionHardened).Message; !strings.Contains(msg, mlv1alpha1.LabelPodSecurityEnforce) {
		t.Errorf("Hardened message %q does not say which label to set", msg)
	}
	waitForCondition(t, ns.Name, pm.Name, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonNamespaceNotEnforced)
	if d := getDeployment(t, pm); *d.Spec.Replicas != 0 {
		t.Errorf("Deployment replicas = %d in a namespace that does not enforce Pod Security", *d.Spec.Replicas)
	}

	update(t, ns, func(n *corev1.Namespace) {
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[mlv1alpha1.LabelPodSecurityEnforce] = "restricted"
	})
	waitForCondition(t, ns.Name, pm.Name, mlv1alpha1.ConditionHardened, metav1.ConditionTrue, mlv1alpha1.ReasonRestricted)
	eventually(t, "the Deployment is scaled up", func() error {
		if d := getDeployment(t, pm); *d.Spec.Replicas != 1 {
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		return nil
	})
}

// TestNamespaceCarriesTheGuardLabelWhileItHasModels: the operator labels a
// namespace for the admission guard before any child of its first model
// exists, and removes the label with its last model.
func TestNamespaceCarriesTheGuardLabelWhileItHasModels(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	guarded := func() (bool, error) {
		n := &corev1.Namespace{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: ns}, n); err != nil {
			return false, err
		}
		return n.Labels[mlv1alpha1.LabelProtectedNamespace] == "true", nil
	}
	first, _ := protectedModel(t, builders.MakeProtectedModel("first", ns))
	second, _ := protectedModel(t, builders.MakeProtectedModel("second", ns))
	if ok, err := guarded(); err != nil || !ok {
		t.Fatalf("namespace with models is not labelled %s (err %v)", mlv1alpha1.LabelProtectedNamespace, err)
	}
	// The label came before the first child.
	label, account := writes.first("PATCH /api/v1/namespaces/"+ns), writes.first("PATCH /api/v1/namespaces/"+ns+"/serviceaccounts/first")
	if label < 0 || account < 0 || label > account {
		t.Errorf("namespace labelled at write %d, the first model's ServiceAccount at %d: the label must come first", label, account)
	}
	if err := k8s.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if ok, err := guarded(); err != nil || !ok {
		t.Fatalf("namespace lost the guard label while model %s remains (err %v)", second.Name, err)
	}
	if err := k8s.Delete(ctx, second); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the guard label goes with the last model", func() error {
		ok, err := guarded()
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("still labelled")
		}
		return nil
	})
}

// TestModelKeyChangesReachTheModel: narrowing a ModelKey's namespaceSelector
// takes the key away from a serving model (held at zero pods, reason
// KeyNotPermitted), and labelling the namespace gives it back: both through
// the watches, without touching the model.
func TestModelKeyChangesReachTheModel(t *testing.T) {
	ns := newNamespace(t)
	name := "shared-" + ns
	mk := createModelKey(t, name, secretProvider("model-kek", "kek"), nil)
	waitForModelKey(t, name, metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("moved", ns).ModelKey(name))

	update(t, mk, func(mk *mlv1alpha1.ModelKey) {
		mk.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/test-team": "nlp"}}
	})
	waitForModelKey(t, name, metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed)
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, mlv1alpha1.ReasonKeyNotPermitted)
	eventually(t, "the Deployment is held at zero", func() error {
		if d := getDeployment(t, pm); *d.Spec.Replicas != 0 {
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		return nil
	})

	update(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, func(n *corev1.Namespace) {
		n.Labels["modelguard.dev/test-team"] = "nlp"
	})
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionTrue, mlv1alpha1.ReasonKeyReleasable)
	eventually(t, "the Deployment is scaled up again", func() error {
		if d := getDeployment(t, pm); *d.Spec.Replicas != 1 {
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		return nil
	})
}

func findCondition(pm *mlv1alpha1.ProtectedModel, conditionType string) metav1.Condition {
	for _, c := range pm.Status.Conditions {
		if c.Type == conditionType {
			return c
		}
	}
	return metav1.Condition{}
}

// TestUnsealFailureShownVerbatim: the unseal init container's reason reaches
// WeightsVerified word for word, and the model stops serving.
func TestUnsealFailureShownVerbatim(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("tampered", ns))
	d := getDeployment(t, pm)
	const reason = "chunk 37 of model.safetensors failed authentication"
	createServerPod(t, d, pm.Name+"-bad", unsealedPodStatus(1, reason))
	pm = waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered)
	if got := findCondition(pm, mlv1alpha1.ConditionWeightsVerified).Message; got != reason {
		t.Errorf("WeightsVerified message = %q, want %q", got, reason)
	}
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonBundleTampered)
}

// TestGPUUnschedulableShownVerbatim: the scheduler's message reaches
// GPUScheduled word for word.
func TestGPUUnschedulableShownVerbatim(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("big", ns).GPUs(8).GPUProducts("NVIDIA-H100-80GB-HBM3"))
	d := getDeployment(t, pm)
	server := d.Spec.Template.Spec.Containers[0]
	if got := server.Resources.Limits["nvidia.com/gpu"]; got.Value() != 8 {
		t.Errorf("server GPU limit = %s, want 8", got.String())
	}
	const message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
	createServerPod(t, d, pm.Name+"-pending", corev1.PodStatus{
		Phase: corev1.PodPending,
		Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: message}},
	})
	pm = waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionFalse, mlv1alpha1.ReasonUnschedulable)
	if got := findCondition(pm, mlv1alpha1.ConditionGPUScheduled).Message; got != message {
		t.Errorf("GPUScheduled message = %q, want %q", got, message)
	}
}

// TestDriftIsRepaired: hand edits that weaken protection are undone and
// deleted children come back.
func TestDriftIsRepaired(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("drift", ns).AllowClientPods(map[string]string{"app": "web"}))
	key := client.ObjectKey{Namespace: ns, Name: pm.Name}

	t.Run("widened NetworkPolicy", func(t *testing.T) {
		policy := &networkingv1.NetworkPolicy{}
		eventually(t, "the NetworkPolicy exists", func() error { return k8s.Get(ctx, key, policy) })
		update(t, policy, func(p *networkingv1.NetworkPolicy) {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{}) // allow all
		}, client.FieldOwner("kubectl-edit"))
		eventually(t, "the NetworkPolicy is narrowed again", func() error {
			if err := k8s.Get(ctx, key, policy); err != nil {
				return err
			}
			if len(policy.Spec.Ingress) != 1 || len(policy.Spec.Ingress[0].From) == 0 {
				return fmt.Errorf("ingress is %+v", policy.Spec.Ingress)
			}
			return nil
		})
	})

	t.Run("securityContext removed", func(t *testing.T) {
		d := getDeployment(t, pm)
		update(t, d, func(d *appsv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].SecurityContext = nil
			d.Spec.Template.Spec.SecurityContext = nil
		}, client.FieldOwner("kubectl-edit"))
		eventually(t, "the securityContext is restored", func() error {
			if err := k8s.Get(ctx, key, d); err != nil {
				return err
			}
			sc := d.Spec.Template.Spec.Containers[0].SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || d.Spec.Template.Spec.SecurityContext == nil {
				return fmt.Errorf("securityContext is %+v", sc)
			}
			return nil
		})
	})

	t.Run("Service deleted", func(t *testing.T) {
		svc := &corev1.Service{}
		eventually(t, "the Service exists", func() error { return k8s.Get(ctx, key, svc) })
		if err := k8s.Delete(ctx, svc); err != nil {
			t.Fatalf("deleting the Service: %v", err)
		}
		eventually(t, "the Service is recreated", func() error {
			fresh := &corev1.Service{}
			if err := k8s.Get(ctx, key, fresh); err != nil {
				return err
			}
			if fresh.UID == svc.UID {
				return fmt.Errorf("still the old Service")
			}
			if fresh.Spec.Ports[0].TargetPort != intstr.FromString("http") {
				return fmt.Errorf("ports %+v", fresh.Spec.Ports)
			}
			return nil
		})
	})
}

// TestSteadyStateMakesNoWrites: once converged, forced resyncs (every 2s in
// this manager) cause no API writes at all.
func TestSteadyStateMakesNoWrites(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("steady", ns))
	d := getDeployment(t, pm)
	createServerPod(t, d, pm.Name+"-ok", unsealedPodStatus(0, ""))
	markDeploymentAvailable(t, d)
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)

	converging := writes.inNamespace(ns)
	t.Logf("Reconciles to converge a new ProtectedModel (the test plays kubelet and Deployment controller, 3 status updates): %d",
		reconcilesOf(ns))
	t.Logf("API writes to converge a new ProtectedModel: %d", len(converging))
	for _, w := range converging {
		t.Logf("  %s", w)
	}
	time.Sleep(6 * time.Second) // three resync periods
	if after := writes.inNamespace(ns)[len(converging):]; len(after) > 0 {
		t.Errorf("the controller wrote %d times at steady state: %v", len(after), after)
	}
}

// TestOwnershipOnEveryManagedObject sweeps every object the operator made in
// the namespace, pods included, so that a new child cannot skip the
// ownership annotations or labels.
func TestOwnershipOnEveryManagedObject(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("owned", ns).
		Copyright("(c) 2026 Acme Corp").Patents("US1234567", "EP7654321"))
	d := getDeployment(t, pm)
	createServerPod(t, d, pm.Name+"-swept", unsealedPodStatus(0, ""))

	lists := []client.ObjectList{
		&appsv1.DeploymentList{}, &corev1.ServiceList{}, &corev1.ServiceAccountList{},
		&networkingv1.NetworkPolicyList{}, &corev1.PodList{},
	}
	wantAnnotations := map[string]string{
		mlv1alpha1.AnnotationOwner:          builders.DefaultOwner,
		mlv1alpha1.AnnotationLicense:        builders.DefaultLicense,
		mlv1alpha1.AnnotationCopyright:      "(c) 2026 Acme Corp",
		mlv1alpha1.AnnotationClassification: string(mlv1alpha1.ClassificationTradeSecret),
		mlv1alpha1.AnnotationPatents:        "US1234567; EP7654321",
		mlv1alpha1.AnnotationWeightsDigest:  pm.Spec.Weights.Digest,
	}
	wantLabels := map[string]string{
		mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue,
		mlv1alpha1.LabelName:      pm.Name,
		mlv1alpha1.LabelModel:     pm.Name,
		mlv1alpha1.LabelProtected: "true",
	}
	swept := 0
	for _, list := range lists {
		if err := k8s.List(ctx, list, client.InNamespace(ns)); err != nil {
			t.Fatalf("listing %T: %v", list, err)
		}
		items, err := metaItems(list)
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range items {
			if obj.GetName() == "default" {
				continue // the namespace's ServiceAccount, made by Kubernetes
			}
			swept++
			what := fmt.Sprintf("%T %s", obj, obj.GetName())
			for k, v := range wantAnnotations {
				if got, ok := obj.GetAnnotations()[k]; !ok || got != v {
					t.Errorf("%s: annotation %s = %q, want %q", what, k, got, v)
				}
			}
			for k, v := range wantLabels {
				if got := obj.GetLabels()[k]; got != v {
					t.Errorf("%s: label %s = %q, want %q", what, k, got, v)
				}
			}
		}
	}
	// SA, NetworkPolicy, Service, Deployment, server pod.
	if swept < 5 {
		t.Errorf("swept %d objects, want at least 5", swept)
	}
}

// TestKeyOrDigestChangeRollsPods: another ModelKey or digest changes the pod
// template, so pods restart and unseal under the new key and expectations.
func TestKeyOrDigestChangeRollsPods(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("roll", ns))
	before := getDeployment(t, pm).Spec.Template.Annotations[builder.AnnotationConfigHash]
	if before == "" {
		t.Fatalf("pod template has no %s annotation", builder.AnnotationConfigHash)
	}

	// The same KEK under another ModelKey: the reference changes, and pods
	// must be verified and unsealed under it.
	rotated := "rotated-" + ns
	createModelKey(t, rotated, secretProvider("model-kek", "kek"), nil)
	waitForModelKey(t, rotated, metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed)
	update(t, pm, func(pm *mlv1alpha1.ProtectedModel) { pm.Spec.Weights.Key.ModelKey = rotated })
	var after string
	eventually(t, "the pod template hash changes", func() error {
		after = getDeployment(t, pm).Spec.Template.Annotations[builder.AnnotationConfigHash]
		if after == before {
			return fmt.Errorf("hash still %s", after)
		}
		return nil
	})

	// A new digest: the unseal container expects it, and the pods roll.
	newDigest := "sha256:" + strings.Repeat("cd", 32)
	update(t, pm, func(pm *mlv1alpha1.ProtectedModel) { pm.Spec.Weights.Digest = newDigest })
	eventually(t, "the pods roll with the new digest", func() error {
		d := getDeployment(t, pm)
		if *d.Spec.Replicas != 1 || d.Spec.Template.Annotations[builder.AnnotationConfigHash] == after {
			return fmt.Errorf("replicas %d hash %s", *d.Spec.Replicas, d.Spec.Template.Annotations[builder.AnnotationConfigHash])
		}
		if !slices.Contains(d.Spec.Template.Spec.InitContainers[0].Command, newDigest) {
			return fmt.Errorf("unseal does not expect the new digest")
		}
		return nil
	})
}

func metaItems(list client.ObjectList) ([]client.Object, error) {
	objs, err := meta.ExtractList(list)
	if err != nil {
		return nil, fmt.Errorf("extracting %T: %w", list, err)
	}
	out := make([]client.Object, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(client.Object))
	}
	return out, nil
}

// TestOwnershipEditKeepsServing: an edit that changes neither the bundle,
// the digest nor the key (here the copyright) reaches every child and never
// takes the model's pods away.
func TestOwnershipEditKeepsServing(t *testing.T) {
	ns := newNamespace(t)
	pm, _ := protectedModel(t, builders.MakeProtectedModel("edited", ns))
	update(t, pm, func(pm *mlv1alpha1.ProtectedModel) {
		pm.Spec.Ownership.Copyright = "(c) 2026 Acme Corp, all rights reserved"
	})
	eventually(t, "the Deployment carries the new copyright", func() error {
		d := getDeployment(t, pm)
		if *d.Spec.Replicas != 1 {
			t.Fatalf("Deployment scaled to %d by an ownership edit", *d.Spec.Replicas)
		}
		if d.Annotations[mlv1alpha1.AnnotationCopyright] != pm.Spec.Ownership.Copyright {
			return fmt.Errorf("copyright annotation %q", d.Annotations[mlv1alpha1.AnnotationCopyright])
		}
		return nil
	})
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if d := getDeployment(t, pm); *d.Spec.Replicas != 1 {
			t.Fatalf("Deployment scaled to %d after an ownership edit", *d.Spec.Replicas)
		}
	}
}

// reconcilesOf counts the manager's "Reconciling" debug lines for models in
// namespace ns.
func reconcilesOf(ns string) int {
	n := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "Reconciling") && strings.Contains(line, `"namespace": "`+ns+`"`) {
			n++
		}
	}
	return n
}
