//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// breakGlassGroup is the group the guarded model lets exec in.
const breakGlassGroup = "sre-oncall"

// guardedModel is a served model the admission guard cases attack.
type guardedModel struct {
	ns, name, pod string
	// unrelated is a namespace without protected workloads, with a pod of
	// the tenant's own, which the guard must leave alone.
	unrelated, unrelatedPod string
}

// newGuardedModel creates a model whose spec.access lets breakGlassGroup
// exec, and a plain pod in an unrelated namespace, without waiting for
// them: t is the parent test, so that both outlive the parallel cases for
// testGuardFailsClosed, which runs after them.
func newGuardedModel(t *testing.T, e *modelEnv) *guardedModel {
	t.Helper()
	g := &guardedModel{ns: e.newNamespace(t, "e2e-pm-guard"), name: "guarded"}
	claim := e.provideBundle(t, g.ns, filepath.Join(e.scratch, "good"))
	pm := e.protectedModel(g.ns, g.name, claim)
	pm.Spec.Access = &mlv1alpha1.Access{BreakGlassGroups: []string{breakGlassGroup}}
	createModel(t, pm)
	g.unrelated = newNamespace(t, "e2e-unguarded")
	g.unrelatedPod = "tenants-own"
	createPod(t, restrictedPod(g.unrelated, g.unrelatedPod, nil, restrictedContainer("client", "idle")))
	return g
}

// waitServing waits until the model serves and records its pod.
func (g *guardedModel) waitServing(t *testing.T) {
	t.Helper()
	waitForModel(t, g.ns, g.name, 3*time.Minute, "Ready", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
	})
	pods := modelPods(t, g.ns, g.name)
	if len(pods) != 1 {
		t.Fatalf("model %s has %d server pods, want 1", g.name, len(pods))
	}
	g.pod = pods[0].Name
	waitForRunning(t, g.unrelated, g.unrelatedPod)
}

// kubectlAs runs kubectl as user (and groups), by impersonation, with the
// admin kubeconfig: the way a tenant's kubectl reaches the API server.
func kubectlAs(timeout time.Duration, user string, groups []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := []string{"--as", user}
	for _, g := range groups {
		full = append(full, "--as-group", g)
	}
	cmd := exec.CommandContext(ctx, kubectl, append(full, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// bindUser binds user to the built-in ClusterRole role in ns.
func bindUser(t *testing.T, ns, user, role string) {
	t.Helper()
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bind-" + strings.NewReplacer("@", "-", ".", "-").Replace(user), Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := modelClient(t).Create(context.Background(), binding); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("binding %s to %s in %s: %v", user, role, ns, err)
	}
}

// assertGuardDenied checks that a tenant's attempt failed with the guard's
// message naming the model.
func assertGuardDenied(t *testing.T, g *guardedModel, what, out string, err error) {
	t.Helper()
	model := "ProtectedModel " + g.ns + "/" + g.name
	if err == nil {
		t.Errorf("%s succeeded; want the admission guard's denial naming %s:\n%s", what, model, out)
		return
	}
	if !strings.Contains(out, model) || !strings.Contains(out, "denied") {
		t.Errorf("%s failed, but not with the guard's denial naming %s:\n%s", what, model, out)
		return
	}
	t.Logf("%s: %s", what, firstLine(out))
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// testAdmissionGuard attacks a served model the ways issue 13 lists, as
// tenants bound to edit and to admin: every route to its plaintext through
// the API server is denied with a message naming the model, while a
// break-glass member may exec (and leaves an Event), and the tenant's own
// pods elsewhere are untouched.
func testAdmissionGuard(t *testing.T, g *guardedModel) {
	ctx := context.Background()
	for _, role := range []string{"edit", "admin"} {
		t.Run(role, func(t *testing.T) {
			user := "tenant-" + role + "@modelguard.test"
			bindUser(t, g.ns, user, role)
			bindUser(t, g.unrelated, user, role)
			as := func(args ...string) (string, error) { return kubectlAs(30*time.Second, user, nil, args...) }

			out, err := as("-n", g.ns, "exec", g.pod, "-c", "server", "--", "/demo-server", "report")
			assertGuardDenied(t, g, "exec", out, err)
			out, err = as("-n", g.ns, "attach", g.pod, "-c", "server")
			assertGuardDenied(t, g, "attach", out, err)
			out, err = kubectlAs(15*time.Second, user, nil, "-n", g.ns, "port-forward", "pod/"+g.pod, ":8080")
			assertGuardDenied(t, g, "port-forward", out, err)
			out, err = as("-n", g.ns, "cp", "-c", "server", g.pod+":/models", t.TempDir()+"/stolen")
			assertGuardDenied(t, g, "cp", out, err)
			out, err = as("get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:8080/proxy/", g.ns, g.pod))
			assertGuardDenied(t, g, "pods/proxy", out, err)
			out, err = as("get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/services/%s:http/proxy/", g.ns, g.name))
			assertGuardDenied(t, g, "services/proxy", out, err)
			// The restricted profile passes Pod Security, so the guard is
			// what decides.
			out, err = as("-n", g.ns, "debug", g.pod, "--copy-to", "stolen-copy", "--profile", "restricted", "--container", "server", "--", "/demo-server", "idle")
			assertGuardDenied(t, g, "debug --copy-to", out, err)
			out, err = as("-n", g.ns, "create", "token", g.name)
			assertGuardDenied(t, g, "a token for the model's ServiceAccount", out, err)

			// kubectl debug with an ephemeral container: Kubernetes 1.37's
			// edit and admin roles no longer grant pods/ephemeralcontainers,
			// so RBAC may refuse before the guard is asked; either way it
			// must not succeed.
			out, err = as("-n", g.ns, "debug", g.pod, "--profile", "restricted", "--image", "modelguard.local/demo-server:dev", "--target", "server", "--", "/demo-server", "idle")
			if err == nil {
				t.Errorf("kubectl debug (ephemeral container) succeeded:\n%s", out)
			} else if !strings.Contains(out, "forbidden") && !strings.Contains(out, "denied") {
				t.Errorf("kubectl debug failed, but not refused:\n%s", out)
			} else {
				t.Logf("debug (ephemeral): %s", firstLine(out))
			}

			// Edits of the managed Deployment: a sidecar, a changed command.
			out, err = as("-n", g.ns, "patch", "deployment", g.name, "--type", "json", "-p",
				`[{"op":"add","path":"/spec/template/spec/containers/-","value":{"name":"sidecar","image":"modelguard.local/demo-server:dev","args":["idle"]}}]`)
			assertGuardDenied(t, g, "a sidecar added to the managed Deployment", out, err)
			out, err = as("-n", g.ns, "patch", "deployment", g.name, "--type", "json", "-p",
				`[{"op":"replace","path":"/spec/template/spec/containers/0/args","value":["report"]}]`)
			assertGuardDenied(t, g, "a changed server command", out, err)

			// A look-alike pod with the model's labels and ServiceAccount.
			tenant := tenantClient(t, g.ns, role)
			lookalike := restrictedPod(g.ns, "lookalike-"+role, map[string]string{mlv1alpha1.LabelModel: g.name, mlv1alpha1.LabelComponent: mlv1alpha1.ComponentServer},
				restrictedContainer("server", "idle"))
			lookalike.Spec.ServiceAccountName = g.name
			err = tenant.Create(ctx, lookalike)
			assertGuardDenied(t, g, "a look-alike pod", errText(err), err)

			// A NetworkPolicy of the tenant's that selects the model's pods
			// (policies add up, so an allow-all opens them).
			allowAll := &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: g.ns, Name: "allow-all-" + role},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{},
					Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				},
			}
			err = tenant.Create(ctx, allowAll)
			assertGuardDenied(t, g, "an allow-all NetworkPolicy", errText(err), err)

			// The tenant's own pod in another namespace: the guard does not
			// look there.
			if out, err := as("-n", g.unrelated, "exec", g.unrelatedPod, "-c", "client", "--", "/demo-server", "env", "HOME"); err != nil {
				t.Errorf("exec into the tenant's own pod in an unrelated namespace failed:\n%s", out)
			}
		})
	}

	t.Run("BreakGlass", func(t *testing.T) {
		user := "oncall@modelguard.test"
		bindUser(t, g.ns, user, "edit")
		out, err := kubectlAs(30*time.Second, user, []string{breakGlassGroup, "system:authenticated"},
			"-n", g.ns, "exec", g.pod, "-c", "server", "--", "/demo-server", "report")
		if err != nil {
			t.Fatalf("a member of %s could not exec into the model's pod:\n%s", breakGlassGroup, out)
		}
		err = eventually(30*time.Second, func() error {
			for _, ev := range modelEvents(t, g.ns, g.name) {
				if strings.Contains(ev.Note, user) && strings.Contains(ev.Note, "exec") {
					t.Logf("Break-glass Event %s: %s", ev.Reason, ev.Note)
					return nil
				}
			}
			return fmt.Errorf("no Event on the model names %s's exec", user)
		})
		if err != nil {
			t.Error(err)
		}
		// The API server's audit log has the session, with who opened it.
		workDir, err := clusterWorkDir()
		if err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(workDir, "logs", "kube-apiserver-audit.log")
		err = eventually(20*time.Second, func() error {
			events, _, err := readAuditLog(logPath)
			if err != nil {
				return err
			}
			for _, ev := range events {
				r := ev.ObjectRef
				if r.Resource == "pods" && r.Subresource == "exec" && r.Namespace == g.ns && r.Name == g.pod && strings.Contains(ev.User.Username+ev.ImpersonatedUser.Username, user) {
					return nil
				}
			}
			return fmt.Errorf("no audit event for %s's exec into %s/%s", user, g.ns, g.pod)
		})
		if err != nil {
			t.Errorf("the audit log %s: %v", logPath, err)
		}
	})
}

// testGuardFailsClosed scales the operator to zero: with nobody to answer,
// the API server refuses exec into protected pods (failurePolicy Fail), and
// exec elsewhere is untouched. It stops the manager, so it runs alone.
func testGuardFailsClosed(t *testing.T, op *operatorRelease, g *guardedModel) {
	user := "tenant-edit@modelguard.test"
	deployment := "deployment/" + op.name + "-controller-manager"
	replicas, err := runKubectl("-n", op.namespace, "get", deployment, "-o", "jsonpath={.spec.replicas}")
	if err != nil {
		t.Fatalf("reading the manager's replicas: %v", err)
	}
	if _, err := runKubectl("-n", op.namespace, "scale", deployment, "--replicas=0"); err != nil {
		t.Fatalf("scaling the manager to 0: %v", err)
	}
	defer func() {
		if _, err := runKubectl("-n", op.namespace, "scale", deployment, "--replicas="+strings.TrimSpace(replicas)); err != nil {
			t.Errorf("scaling the manager back: %v", err)
		}
		if _, err := runKubectl("-n", op.namespace, "rollout", "status", deployment, "--timeout=120s"); err != nil {
			t.Errorf("the manager did not come back: %v", err)
		}
	}()
	if _, err := runKubectl("-n", op.namespace, "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/component=manager", "--timeout=60s"); err != nil {
		t.Fatalf("the manager pods did not go: %v", err)
	}
	out, err := kubectlAs(30*time.Second, user, nil, "-n", g.ns, "exec", g.pod, "-c", "server", "--", "/demo-server", "report")
	if err == nil {
		t.Errorf("exec into a protected pod succeeded while no manager runs:\n%s", out)
	} else {
		t.Logf("exec while the operator is down: %s", firstLine(out))
	}
	if out, err := kubectlAs(30*time.Second, user, nil, "-n", g.unrelated, "exec", g.unrelatedPod, "-c", "client", "--", "/demo-server", "env", "HOME"); err != nil {
		t.Errorf("exec in an unrelated namespace failed while the operator is down:\n%s", out)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
