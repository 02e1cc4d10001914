package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/certs"
	"github.com/modelguard/modelguard/internal/webhook"
	"github.com/modelguard/modelguard/test/builders"
)

// guardInstall is the chart installed for a manager that runs outside the
// cluster as the chart's ServiceAccount: everything but the Deployment.
type guardInstall struct {
	chartInstall
	// configuration and service are the admission guard's names, as the
	// manager is told them.
	configuration, service string
	// servingCertificate is the chart's serving Certificate, with
	// certManager.enabled.
	servingCertificate *unstructured.Unstructured
}

// installGuardChart applies the chart's render for an operator released
// into ns, watching ns and watched, with one replica, except the
// Deployment. Before it is applied, edit may change the admission guard's
// ValidatingWebhookConfiguration.
func installGuardChart(t *testing.T, ns string, watched []string, extraArgs []string,
	edit func(*admissionregistrationv1.ValidatingWebhookConfiguration)) guardInstall {
	t.Helper()
	release := "mg-" + ns
	args := append([]string{"template", release, chartDir, "--namespace", ns,
		"--set", "watchNamespaces={" + strings.Join(append([]string{ns}, watched...), ",") + "}",
		"--set", "replicas=1", "--set", "leaderElection.enabled=false"}, extraArgs...)
	var docs []string
	var install guardInstall
	objs := splitYAML(t, runTool(t, helmEnv(t), helmPath(t), args...))
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			install.managerArgs = renderedDeployment(t, objs).Spec.Template.Spec.Containers[0].Args
			continue
		}
		raw := o.raw
		if o.GetKind() == "ValidatingWebhookConfiguration" && edit != nil {
			vwc := fromRendered[admissionregistrationv1.ValidatingWebhookConfiguration](t, o.Unstructured)
			edit(vwc)
			var err error
			if raw, err = yaml.Marshal(vwc); err != nil {
				t.Fatal(err)
			}
		}
		docs = append(docs, "---\n"+string(raw))
	}
	install.keyReleaseService = managerFlag(t, install.managerArgs, "key-release-service")
	install.servingCertSecret = managerFlag(t, install.managerArgs, "serving-cert-secret")
	install.caConfigMap = managerFlag(t, install.managerArgs, "ca-configmap")
	install.configuration = managerFlag(t, install.managerArgs, "webhook-configuration")
	install.service = managerFlag(t, install.managerArgs, "webhook-service")
	path := filepath.Join(t.TempDir(), "chart.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(docs, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	k := newKubectl(t)
	if out, err := k.run("apply", "--server-side", "-f", path); err != nil {
		t.Fatalf("installing the chart without its Deployment: %v\n%s", err, out)
	}
	// The configuration fails closed: remove it first, or it would refuse
	// requests in the test's namespaces after the manager has stopped.
	t.Cleanup(func() {
		if out, err := k.run("delete", "--ignore-not-found", "-f", path); err != nil {
			t.Errorf("removing the chart: %v\n%s", err, out)
		}
	})
	if managerFlagOr(install.managerArgs, "cert-source", "") == "cert-manager" {
		install.servingCertificate = &unstructured.Unstructured{}
		install.servingCertificate.SetGroupVersionKind(schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"})
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: install.servingCertSecret}, install.servingCertificate); err != nil {
			t.Fatalf("the chart's serving Certificate: %v", err)
		}
	}

	install.kubeconfig = operatorKubeconfig(t, ns, release+"-modelguard-controller-manager")
	return install
}

// managerProcess is the manager binary, running until stop or the end of
// the test.
type managerProcess struct {
	logs *lockedBuffer
	stop func(t *testing.T)
}

// runManager starts the manager binary; stop sends SIGTERM as the kubelet
// would and waits for a clean exit, once.
func runManager(t *testing.T, extraEnv []string, bin string, args ...string) *managerProcess {
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
	var once sync.Once
	stop := func(t *testing.T) {
		once.Do(func() {
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
	}
	t.Cleanup(func() {
		stop(t)
		if t.Failed() {
			t.Logf("manager log:\n%s", logs.String())
		}
	})
	return &managerProcess{logs: logs, stop: stop}
}

// waitReady waits until the manager's /readyz passes, serving certificate
// loaded.
func waitReady(t *testing.T, probeAddr string) {
	t.Helper()
	eventuallyWithin(t, time.Minute, "the manager is ready, serving certificate loaded", func() error {
		resp, err := http.Get("http://" + probeAddr + "/readyz?verbose")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s\n%s", resp.Status, body)
		}
		return nil
	})
}

// injectedBundle waits until every webhook of the configuration holds
// want, and returns the configuration.
func injectedBundle(t *testing.T, name string, want []byte) *admissionregistrationv1.ValidatingWebhookConfiguration {
	t.Helper()
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	eventuallyWithin(t, time.Minute, "the manager injects the CA bundle into "+name, func() error {
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, vwc); err != nil {
			return err
		}
		for _, w := range vwc.Webhooks {
			if !bytes.Equal(w.ClientConfig.CABundle, want) {
				return fmt.Errorf("webhook %s caBundle is %d bytes, not the %d of the serving certificate's CA bundle", w.Name, len(w.ClientConfig.CABundle), len(want))
			}
		}
		return nil
	})
	return vwc
}

// TestManagerServesTheGuardWithItsOwnCertificate runs the real manager as
// the chart's ServiceAccount, with the chart's RBAC and arguments and the
// default self-signed certificate: the manager writes its CA bundle into
// the chart's ValidatingWebhookConfiguration (which names the webhook
// Service, as installed), and answers AdmissionReviews at the guard's path
// on the key-release listener, with a certificate valid for the webhook
// Service's name under that bundle.
func TestManagerServesTheGuardWithItsOwnCertificate(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	bin := filepath.Join(binariesFromDockerfile(t), "manager")
	install := installGuardChart(t, ns, nil, nil, nil)

	listenAddr, probeAddr := freeLoopbackAddr(t), freeLoopbackAddr(t)
	mgr := runManager(t, []string{"POD_NAMESPACE=" + ns}, bin, withManagerFlags(install.managerArgs, map[string]string{
		"kubeconfig": install.kubeconfig, "health-probe-bind-address": probeAddr, "metrics-bind-address": "0",
		"key-release-bind-address": listenAddr,
	})...)
	waitReady(t, probeAddr)

	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: install.caConfigMap}, cm); err != nil {
		t.Fatalf("the manager published no CA ConfigMap: %v", err)
	}
	bundle := []byte(cm.Data[certs.ConfigMapBundle])
	vwc := injectedBundle(t, install.configuration, bundle)
	if svc := vwc.Webhooks[0].ClientConfig.Service; svc == nil || svc.Name != install.service || svc.Namespace != ns {
		t.Errorf("the injection changed the clientConfig: %+v", vwc.Webhooks[0].ClientConfig)
	}

	// The API server calls the Service by its .svc name and trusts only
	// the caBundle.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(vwc.Webhooks[0].ClientConfig.CABundle) {
		t.Fatal("the injected caBundle holds no certificate")
	}
	serverName := install.service + "." + ns + ".svc"
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:         types.UID("0f7d6c1e-5b3a-4e2f-9d8c-7a6b5c4d3e2f"),
			Kind:        metav1.GroupVersionKind{Version: "v1", Kind: "PodExecOptions"},
			Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			SubResource: "exec", Name: "absent", Namespace: ns, Operation: admissionv1.Connect,
			UserInfo: authenticationUser("alice"),
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}}}
	resp, err := c.Post("https://"+listenAddr+webhook.Path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s as the API server calls %s: %v", webhook.Path, serverName, err)
	}
	defer resp.Body.Close()
	var answer admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || answer.Response == nil {
		t.Fatalf("the guard answered %s, not an AdmissionReview: %v", resp.Status, err)
	}
	// A pod that does not exist is no protected pod.
	if answer.Response.UID != review.Request.UID || !answer.Response.Allowed {
		t.Errorf("the guard answered %+v, want the request's UID, allowed", answer.Response)
	}
	if strings.Contains(mgr.logs.String(), "PRIVATE KEY") {
		t.Error("the manager logged a private key")
	}
}

func authenticationUser(name string) authenticationv1.UserInfo {
	return authenticationv1.UserInfo{Username: name, Groups: []string{"system:authenticated"}}
}

// TestAdmissionGuardRefusesExecIntoProtectedPods runs the real manager as
// the chart's ServiceAccount, with the chart's RBAC, arguments and
// ValidatingWebhookConfiguration, certificates from cert-manager (the test
// plays cert-manager), and asks the real API server for exec as a tenant:
//   - the manager injects the Secret's ca.crt into the configuration;
//   - the operator's own writes in the protected namespace pass the guard;
//   - exec into a protected pod in a namespace the operator labelled is
//     refused by the guard, naming the model, and leaves an Event on it;
//   - exec into the same kind of pod in an unlabelled namespace is not the
//     guard's business;
//   - with the manager stopped, the exec is still refused (failurePolicy
//     Fail), and the unlabelled namespace is still untouched.
//
// envtest has no Service routing (no kube-proxy, and Endpoints may not
// point at loopback), so the configuration is changed before it is applied
// to call https://127.0.0.1:<port>/validate-modelguard, the manager's
// listener, instead of the chart's webhook Service. The certificate the test
// issues for the chart's Certificate therefore also names 127.0.0.1, which
// cert-manager would not; the manager accepts extra names.
func TestAdmissionGuardRefusesExecIntoProtectedPods(t *testing.T) {
	ctx := context.Background()
	installCertManagerCRDs(t)
	ns, tenantNS, plainNS := newNamespace(t), newNamespace(t), newNamespace(t)
	bin := filepath.Join(binariesFromDockerfile(t), "manager")
	listenAddr, probeAddr := freeLoopbackAddr(t), freeLoopbackAddr(t)
	install := installGuardChart(t, ns, []string{tenantNS}, []string{"--values", certManagerValues},
		func(vwc *admissionregistrationv1.ValidatingWebhookConfiguration) {
			for i := range vwc.Webhooks {
				path := ptr.Deref(vwc.Webhooks[i].ClientConfig.Service.Path, "")
				vwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://" + listenAddr + path)}
			}
		})
	ca := cmIssue(t, nil, nil)
	issueWithLoopback(t, install.servingCertificate, ca)

	// A tenant: what edit grants in both namespaces. envtest runs no
	// controller manager, so the built-in edit role is never aggregated;
	// the tenant gets the role it aggregates.
	const tenant = "alice@example.com"
	for _, n := range []string{tenantNS, plainNS} {
		bindTenant(t, n, tenant, "system:aggregate-to-edit")
		if !subjectCan(t, env.Client, tenant, rbacCheck{Verb: "create", Resource: "pods/exec", Namespace: n}) {
			t.Fatalf("RBAC does not let the tenant exec in %s: a refusal would prove nothing about the guard", n)
		}
	}
	// A protected pod in each namespace, as the model's ReplicaSet makes
	// them (no kubelet runs it). The operator labels only the namespace
	// whose model it manages; the Pod Security label lets the model be
	// served there.
	if err := env.Client.Patch(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tenantNS,
		Labels: map[string]string{mlv1alpha1.LabelPodSecurityEnforce: "baseline"}}}, client.Merge); err != nil {
		t.Fatal(err)
	}
	pm := builders.MakeProtectedModel("llm", tenantNS).Obj()
	if err := env.Client.Create(ctx, pm); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{tenantNS, plainNS} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: "llm-0", Labels: map[string]string{
				mlv1alpha1.LabelProtected: "true", mlv1alpha1.LabelModel: "llm", mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "server", Image: builders.DefaultServerImage}}},
		}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}

	mgr := runManager(t, []string{"POD_NAMESPACE=" + ns}, bin, withManagerFlags(install.managerArgs, map[string]string{
		"kubeconfig": install.kubeconfig, "health-probe-bind-address": probeAddr, "metrics-bind-address": "0",
		"key-release-bind-address": listenAddr,
	})...)
	waitReady(t, probeAddr)
	injectedBundle(t, install.configuration, ca.certPEM)

	eventuallyWithin(t, time.Minute, "the operator labels the model's namespace for the guard", func() error {
		n := &corev1.Namespace{}
		if err := env.Client.Get(ctx, client.ObjectKey{Name: tenantNS}, n); err != nil {
			return err
		}
		if n.Labels[mlv1alpha1.LabelProtectedNamespace] != "true" {
			return fmt.Errorf("namespace %s labels %v", tenantNS, n.Labels)
		}
		return nil
	})
	// The guard now judges every write in the namespace; the operator's
	// own pass it.
	eventuallyWithin(t, time.Minute, "the operator creates the model's ServiceAccount through the guard", func() error {
		return env.Client.Get(ctx, client.ObjectKey{Namespace: tenantNS, Name: pm.Name}, &corev1.ServiceAccount{})
	})

	tenantClient, err := kubernetes.NewForConfig(impersonatingConfig(tenant))
	if err != nil {
		t.Fatal(err)
	}
	exec := func(namespace string) error {
		return tenantClient.CoreV1().RESTClient().Post().Namespace(namespace).Resource("pods").Name("llm-0").SubResource("exec").
			VersionedParams(&corev1.PodExecOptions{Container: "server", Command: []string{"cat", "/models/weights.bin"}, Stdout: true}, scheme.ParameterCodec).
			Do(ctx).Error()
	}
	// No kubelet runs the pods: an exec that admission lets through fails
	// next, because the pod has no node.
	notTheGuards := func(t *testing.T, err error) {
		t.Helper()
		t.Logf("exec in the unlabelled namespace: %v", err)
		if err == nil || strings.Contains(err.Error(), mlv1alpha1.AdmissionWebhookName) || apierrors.IsForbidden(err) {
			t.Errorf("exec in unlabelled namespace %s: %v; want the API server's own error (the pod has no node), not the guard's", plainNS, err)
		}
	}

	t.Run("exec into a protected pod is refused, naming the model", func(t *testing.T) {
		err := exec(tenantNS)
		t.Logf("exec as a tenant: %v", err)
		if !apierrors.IsForbidden(err) {
			t.Fatalf("exec as a tenant: %v; want Forbidden by the admission guard", err)
		}
		for _, want := range []string{`admission webhook "` + mlv1alpha1.AdmissionWebhookName + `" denied the request`,
			"ProtectedModel " + tenantNS + "/" + pm.Name} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the refusal %q does not say %q", err, want)
			}
		}
		eventuallyWithin(t, 30*time.Second, "the refusal is an Event on the model", func() error {
			list := &eventsv1.EventList{}
			if err := env.Client.List(ctx, list, client.InNamespace(tenantNS)); err != nil {
				return err
			}
			for _, e := range list.Items {
				if e.Regarding.Kind == "ProtectedModel" && e.Regarding.Name == pm.Name && e.Reason == mlv1alpha1.ReasonAccessDenied &&
					strings.Contains(e.Note, tenant) {
					return nil
				}
			}
			return fmt.Errorf("no %s Event naming %s regarding %s among %d Events", mlv1alpha1.ReasonAccessDenied, tenant, pm.Name, len(list.Items))
		})
	})
	t.Run("exec in an unlabelled namespace is not the guard's", func(t *testing.T) {
		notTheGuards(t, exec(plainNS))
	})

	mgr.stop(t)
	t.Run("with the manager stopped the exec is still refused", func(t *testing.T) {
		err := exec(tenantNS)
		t.Logf("exec as a tenant with no guard running: %v", err)
		if err == nil || !strings.Contains(err.Error(), mlv1alpha1.AdmissionWebhookName) {
			t.Errorf("exec as a tenant with no guard running: %v; want a refusal by failing webhook %s", err, mlv1alpha1.AdmissionWebhookName)
		}
		notTheGuards(t, exec(plainNS))
	})
}

// issueWithLoopback writes the Secret of the chart's serving Certificate as
// cert-manager's CA issuer would (a new key, a certificate for the
// Certificate's dnsNames, ca.crt), except that the certificate also names
// 127.0.0.1, where the test's API server calls the manager.
func issueWithLoopback(t *testing.T, cert *unstructured.Unstructured, ca *cmKeyPair) {
	t.Helper()
	secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	dnsNames, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	serving := cmIssue(t, ca, dnsNames)
	// Reissue the same template with the loopback address added.
	tmpl := *serving.cert
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, &serving.key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	secret := corev1ac.Secret(secretName, cert.GetNamespace()).
		WithAnnotations(map[string]string{"cert-manager.io/certificate-name": cert.GetName(), "cert-manager.io/issuer-kind": "Issuer"}).
		WithType(corev1.SecretTypeTLS).
		WithData(map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: serving.keyPEM, certs.SecretCACert: ca.certPEM})
	if err := env.Client.Apply(context.Background(), secret, client.FieldOwner(cmFieldManager), client.ForceOwnership); err != nil {
		t.Fatalf("writing Secret %s as cert-manager: %v", secretName, err)
	}
}

// bindTenant binds user to ClusterRole role in namespace ns.
func bindTenant(t *testing.T, ns, user, role string) {
	t.Helper()
	b := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tenant"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := env.Client.Create(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}
