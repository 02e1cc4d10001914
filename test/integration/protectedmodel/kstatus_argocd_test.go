package protectedmodel

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/argocd"
	"github.com/modelguard/modelguard/test/builders"
)

// readiness is how the generic tools judge a model: kstatus (kubectl wait,
// Flux, cli-utils) and the Argo CD health check in config/argocd.
type readiness struct {
	Kstatus     status.Status
	ArgoCD      string
	MessagePart string // in both messages
}

// judge reads the model as those tools do, as an unstructured object from
// the API server, with the conditions the controller wrote.
func judge(t *testing.T, pm *mlv1alpha1.ProtectedModel) (readiness, string) {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(mlv1alpha1.GroupVersion.WithKind("ProtectedModel"))
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pm), u); err != nil {
		t.Fatal(err)
	}
	ks, err := status.Compute(u)
	if err != nil {
		t.Fatalf("kstatus: %v", err)
	}
	script, err := argocd.ReadScript(filepath.Join(env.RepoRoot, "config/argocd/resource_customizations"), mlv1alpha1.GroupVersion.Group, "ProtectedModel")
	if err != nil {
		t.Fatal(err)
	}
	health, err := argocd.RunHealthLua(script, u.Object, false)
	if err != nil {
		t.Fatalf("Argo CD health check: %v", err)
	}
	return readiness{Kstatus: ks.Status, ArgoCD: health.Status}, ks.Message + " | " + health.Message
}

// waitForReadiness waits until kstatus and Argo CD judge the model as want,
// with the message part in both messages.
func waitForReadiness(t *testing.T, pm *mlv1alpha1.ProtectedModel, want readiness) {
	t.Helper()
	var got readiness
	var messages string
	eventually(t, "kstatus is "+string(want.Kstatus)+" and Argo CD "+want.ArgoCD, func() error {
		got, messages = judge(t, pm)
		kMsg, aMsg, _ := strings.Cut(messages, " | ")
		if got.Kstatus == want.Kstatus && got.ArgoCD == want.ArgoCD &&
			strings.Contains(kMsg, want.MessagePart) && strings.Contains(aMsg, want.MessagePart) {
			return nil
		}
		return fmt.Errorf("kstatus %s, Argo CD %s; messages %q", got.Kstatus, got.ArgoCD, messages)
	})
}

// TestGenericToolsFollowTheController drives models through the states the
// controller reports and checks that kstatus and the Argo CD health check
// read them as intended: InProgress/Progressing while reconciling,
// Current/Healthy once ready, Failed/Degraded when stalled.
func TestGenericToolsFollowTheController(t *testing.T) {
	t.Run("reconciling, then ready", func(t *testing.T) {
		ns := newNamespace(t)
		pm, _ := protectedModel(t, builders.MakeProtectedModel("kstatus", ns))
		// No pod has unsealed yet: the controller is working.
		waitForReadiness(t, pm, readiness{Kstatus: status.InProgressStatus, ArgoCD: "Progressing", MessagePart: ""})
		d := getDeployment(t, pm)
		createServerPod(t, d, pm.Name+"-abc", unsealedPodStatus(0, "ok digest="+pm.Spec.Weights.Digest+" files=1 bytes=10 seconds=0.1"))
		markDeploymentAvailable(t, d)
		waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
		waitForReadiness(t, pm, readiness{Kstatus: status.CurrentStatus, ArgoCD: "Healthy", MessagePart: ""})
	})

	t.Run("stalled", func(t *testing.T) {
		ns := newNamespace(t)
		pm := builders.MakeProtectedModel("kstatus", ns).ModelKey("absent-" + ns).Obj()
		// No such ModelKey: the model fails closed until someone creates it.
		if err := k8s.Create(context.Background(), pm); err != nil {
			t.Fatal(err)
		}
		waitForCondition(t, ns, pm.Name, mlv1alpha1.ConditionStalled, metav1.ConditionTrue, mlv1alpha1.ReasonModelKeyNotFound)
		waitForReadiness(t, pm, readiness{Kstatus: status.FailedStatus, ArgoCD: "Degraded", MessagePart: "absent-" + ns})
	})
}
