package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/test/builders"
)

// TestManagerMetricsEndpoint runs the real manager binary (built as the
// Dockerfile builds it) against the test API server, watching one namespace
// with the permissions the Helm chart grants for that, and scrapes its
// secure metrics endpoint the way Prometheus does: over HTTPS with a
// ServiceAccount token, which the manager checks with a TokenReview and a
// SubjectAccessReview against the API server.
func TestManagerMetricsEndpoint(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	bin := filepath.Join(binariesFromDockerfile(t), "manager")
	install := installChartRBAC(t, ns)
	metricsAddr, probeAddr := freeLoopbackAddr(t), freeLoopbackAddr(t)
	// The chart's manager namespace is the release namespace, from the
	// downward API; key release is served, so readyz also waits for the
	// serving certificate that the chart's Role lets it issue.
	logs := startManagerWithEnv(t, []string{"POD_NAMESPACE=" + ns}, bin,
		"--kubeconfig", install.kubeconfig,
		"--watch-namespaces", ns,
		"--metrics-bind-address", metricsAddr,
		"--health-probe-bind-address", probeAddr,
		"--key-release-bind-address", freeLoopbackAddr(t),
		"--key-release-service", install.keyReleaseService,
		"--serving-cert-secret", install.servingCertSecret,
		"--ca-configmap", install.caConfigMap,
		"--leader-elect=false",
		"--unseal-image=modelguard:metrics-test",
	)
	eventuallyNoError(t, "the manager is ready", func() error {
		resp, err := http.Get("http://" + probeAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s\nmanager log:\n%s", resp.Status, logs.String())
		}
		// The metrics server starts on its own, after generating its
		// self-signed certificate.
		conn, err := net.DialTimeout("tcp", metricsAddr, time.Second)
		if err != nil {
			return fmt.Errorf("metrics endpoint: %w\nmanager log:\n%s", err, logs.String())
		}
		return conn.Close()
	})

	// What the metrics should count. The controller runs, so the models'
	// status is the controller's: a model whose ModelKey does not exist
	// fails closed; one whose ModelKey is Ready waits for its pods, which
	// never start here. TrainingJobs have no controller yet, so the test
	// writes one's status itself.
	kek := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kek"},
		Data:       map[string][]byte{"kek": []byte(keys.EncodeDEK(randomBytes(t, keys.KEKSize)))},
	}
	if err := env.Client.Create(ctx, kek); err != nil {
		t.Fatal(err)
	}
	mk := &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: ns + "-models"},
		Spec: mlv1alpha1.ModelKeySpec{
			Provider:          mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: kek.Name, Key: "kek"}},
			NamespaceSelector: &metav1.LabelSelector{},
		}}
	if err := env.Client.Create(ctx, mk); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), mk) })
	failing := builders.MakeProtectedModel("no-key", ns).ModelKey(ns + "-missing").Obj()
	pending := builders.MakeProtectedModel("waiting", ns).ModelKey(mk.Name).Obj()
	for _, pm := range []*mlv1alpha1.ProtectedModel{failing, pending} {
		if err := env.Client.Create(ctx, pm); err != nil {
			t.Fatal(err)
		}
	}
	job := builders.MakeTrainingJob("finetune", ns).Obj()
	if err := env.Client.Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	job.Status.Phase = mlv1alpha1.TrainingPhaseRunning
	if err := env.Client.Status().Update(ctx, job); err != nil {
		t.Fatal(err)
	}
	// A server pod whose unseal init container reported success, as the
	// kubelet would show it. Its model does not exist, so the controller
	// leaves it alone.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "legacy-0", Labels: map[string]string{
			mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue,
			mlv1alpha1.LabelModel:     "legacy",
			builder.LabelComponent:    builder.ComponentServer,
		}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "server", Image: "registry.example.com/serve:1"}}},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.InitContainerStatuses = []corev1.ContainerStatus{{
		Name: builder.UnsealContainerName, Image: "modelguard:metrics-test",
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 0, Message: "ok digest=sha256:" + strings.Repeat("ab", 32) + " files=3 bytes=2147483648 seconds=7.250\n",
		}},
	}}
	if err := env.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}

	reader := newServiceAccountToken(t, ns, "prometheus", true)
	stranger := newServiceAccountToken(t, ns, "stranger", false)
	url := "https://" + metricsAddr + "/metrics"

	t.Run("no token is unauthorized", func(t *testing.T) {
		if code, _ := scrape(t, url, ""); code != http.StatusUnauthorized {
			t.Errorf("GET /metrics without a token: %d, want 401", code)
		}
	})
	t.Run("a token without the metrics-reader grant is forbidden", func(t *testing.T) {
		if code, _ := scrape(t, url, stranger); code != http.StatusForbidden {
			t.Errorf("GET /metrics as a ServiceAccount without the grant: %d, want 403", code)
		}
	})
	t.Run("an authorized scraper gets the ModelGuard metrics", func(t *testing.T) {
		values := map[string]float64{
			`modelguard_models{namespace="` + ns + `",phase="Failed"}`:                        1,
			`modelguard_models{namespace="` + ns + `",phase="Pending"}`:                       1,
			`modelguard_models{namespace="` + ns + `",phase="Protected"}`:                     0,
			`modelguard_protection_condition{status="False",type="KeyAvailable"}`:             1,
			`modelguard_protection_condition{status="True",type="KeyAvailable"}`:              1,
			`modelguard_protection_condition{status="True",type="WeightsEncrypted"}`:          2,
			`modelguard_trainingjobs{phase="Running"}`:                                        1,
			`modelguard_trainingjobs{phase="Succeeded"}`:                                      0,
			`modelguard_unseal_bytes{model="legacy",namespace="` + ns + `",pod="legacy-0"}`:   2147483648,
			`modelguard_unseal_seconds{model="legacy",namespace="` + ns + `",pod="legacy-0"}`: 7.25,
		}
		// controller-runtime's own metrics are still there.
		present := []string{
			`controller_runtime_reconcile_total{controller="protectedmodel",result="success"}`,
			`controller_runtime_max_concurrent_reconciles{controller="protectedmodel"}`,
		}
		// The collector lists from the manager's cache, which holds only the
		// watched namespace, and every List succeeds with the chart's RBAC.
		absent := []string{
			`modelguard_metrics_list_errors_total{resource="protectedmodels"}`,
			`modelguard_metrics_list_errors_total{resource="trainingjobs"}`,
			`modelguard_metrics_list_errors_total{resource="pods"}`,
		}
		var last string
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("last scrape:\n%s\nmanager log:\n%s", last, logs.String())
			}
		})
		eventuallyNoError(t, "the metrics show the objects", func() error {
			code, body := scrape(t, url, reader)
			if code != http.StatusOK {
				return fmt.Errorf("GET /metrics: %d\n%s", code, body)
			}
			last = body
			samples := parseExposition(body)
			for series, want := range values {
				if got, found := samples[series]; !found || got != want {
					return fmt.Errorf("%s = %v (found %v), want %v", series, got, found, want)
				}
			}
			for _, series := range present {
				if _, found := samples[series]; !found {
					return fmt.Errorf("%s is missing", series)
				}
			}
			for _, series := range absent {
				if _, found := samples[series]; found {
					return fmt.Errorf("%s is reported", series)
				}
			}
			for series := range samples {
				if strings.HasPrefix(series, "modelguard_models{") && !strings.Contains(series, `namespace="`+ns+`"`) {
					return fmt.Errorf("%s is outside the watched namespace", series)
				}
			}
			return nil
		})
	})
}

// chartInstall is the chart's RBAC, installed for a manager that runs
// outside the cluster as the chart's ServiceAccount.
type chartInstall struct {
	// kubeconfig authenticates as the chart's ServiceAccount.
	kubeconfig string
	// managerArgs are the arguments the chart gives the manager.
	managerArgs []string
	// The names the chart gives the manager for key release.
	keyReleaseService, servingCertSecret, caConfigMap string
}

// installChartRBAC installs the chart's ServiceAccount, RBAC and Services
// for an operator released into ns and watching only ns, under a release
// name of the test's own, and returns a kubeconfig that authenticates as
// that ServiceAccount with the chart's manager arguments.
func installChartRBAC(t *testing.T, ns string) chartInstall {
	t.Helper()
	release := "mg-" + ns
	render := runTool(t, helmEnv(t), helmPath(t), "template", release, chartDir, "--namespace", ns,
		"--set", "watchNamespaces={"+ns+"}", "--set", "leaderElection.enabled=false", "--set", "replicas=1")
	var docs []string
	var install chartInstall
	for _, o := range splitYAML(t, render) {
		if o.GetKind() == "Deployment" {
			d := fromRendered[appsv1.Deployment](t, o.Unstructured)
			install.managerArgs = d.Spec.Template.Spec.Containers[0].Args
			continue
		}
		docs = append(docs, "---\n"+string(o.raw))
	}
	if install.managerArgs == nil {
		t.Fatal("the chart renders no Deployment")
	}
	install.keyReleaseService = managerFlag(t, install.managerArgs, "key-release-service")
	install.servingCertSecret = managerFlag(t, install.managerArgs, "serving-cert-secret")
	install.caConfigMap = managerFlag(t, install.managerArgs, "ca-configmap")
	path := filepath.Join(t.TempDir(), "rbac.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(docs, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	k := newKubectl(t)
	if out, err := k.run("apply", "--server-side", "-f", path); err != nil {
		t.Fatalf("installing the chart's RBAC: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := k.run("delete", "--ignore-not-found", "-f", path); err != nil {
			t.Errorf("removing the chart's RBAC: %v\n%s", err, out)
		}
	})

	install.kubeconfig = operatorKubeconfig(t, ns, release+"-modelguard-controller-manager")
	return install
}

// parseExposition reads the Prometheus text format into series -> value;
// client_golang writes labels sorted by name, so series strings are stable.
func parseExposition(body string) map[string]float64 {
	samples := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndex(line, " ")
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		samples[line[:i]] = v
	}
	return samples
}

func scrape(t *testing.T, url, token string) (int, string) {
	t.Helper()
	// The manager serves a self-signed certificate, as it does in a cluster
	// without cert-manager; the ServiceMonitor skips verification too.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback, self-signed test server
	}}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// newServiceAccountToken creates a ServiceAccount, binds it to a ClusterRole
// that may GET /metrics when canRead is set (as the chart's
// metrics-reader does), and returns a token for it from the TokenRequest
// API.
func newServiceAccountToken(t *testing.T, ns, name string, canRead bool) string {
	t.Helper()
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := env.Client.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	if canRead {
		role := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: ns + "-metrics-reader"},
			Rules:      []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}},
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: ns + "-metrics-reader"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}},
		}
		if err := env.Client.Create(ctx, role); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), role) })
		if err := env.Client.Create(ctx, binding); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), binding) })
	}
	return serviceAccountToken(t, ns, name)
}

// serviceAccountToken returns a token for a ServiceAccount from the
// TokenRequest API, as the kubelet mounts one into pods.
func serviceAccountToken(t *testing.T, ns, name string) string {
	t.Helper()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("requesting a token for %s: %v", name, err)
	}
	return tr.Status.Token
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startManager runs the manager binary until the test ends, then stops it
// with SIGTERM as the kubelet would.
func startManager(t *testing.T, bin string, args ...string) *lockedBuffer {
	t.Helper()
	return startManagerWithEnv(t, nil, bin, args...)
}

// startManagerWithEnv is startManager with extra environment variables, e.g.
// the POD_NAMESPACE that the downward API sets in a cluster.
func startManagerWithEnv(t *testing.T, extraEnv []string, bin string, args ...string) *lockedBuffer {
	t.Helper()
	logs := &lockedBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the manager: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the manager did not stop cleanly on SIGTERM: %v\n%s", err, logs.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("the manager did not stop within 30s of SIGTERM\n%s", logs.String())
		}
	})
	return logs
}
