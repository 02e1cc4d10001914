package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/certs"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/test/builders"
)

// certManagerInstall is the chart, with certManager.enabled, installed
// into a namespace without its Deployment, and a kubeconfig of its
// ServiceAccount.
type certManagerInstall struct {
	chartInstall
	// servingCertificate is the chart's serving Certificate as stored.
	servingCertificate *unstructured.Unstructured
}

// installCertManagerChart applies the chart's render with
// certManager.enabled, for an operator released into ns and watching only
// ns, except the Deployment: its RBAC, Services, Issuers and Certificates
// are stored by the real API server (cert-manager's CRDs are installed;
// cert-manager itself is not running, so the test issues what it would).
func installCertManagerChart(t *testing.T, ns string) certManagerInstall {
	t.Helper()
	installCertManagerCRDs(t)
	release := "mg-" + ns
	render := runTool(t, helmEnv(t), helmPath(t), "template", release, chartDir, "--namespace", ns,
		"--set", "watchNamespaces={"+ns+"}", "--set", "leaderElection.enabled=false", "--set", "replicas=1", "--values", certManagerValues)
	var docs []string
	var install certManagerInstall
	for _, o := range splitYAML(t, render) {
		if o.GetKind() == "Deployment" {
			install.managerArgs = fromRendered[appsv1.Deployment](t, o.Unstructured).Spec.Template.Spec.Containers[0].Args
			continue
		}
		docs = append(docs, "---\n"+string(o.raw))
	}
	if managerFlag(t, install.managerArgs, "cert-source") != "cert-manager" {
		t.Fatalf("the chart does not tell the manager --cert-source=cert-manager: %v", install.managerArgs)
	}
	install.keyReleaseService = managerFlag(t, install.managerArgs, "key-release-service")
	install.servingCertSecret = managerFlag(t, install.managerArgs, "serving-cert-secret")
	install.caConfigMap = managerFlag(t, install.managerArgs, "ca-configmap")
	path := filepath.Join(t.TempDir(), "chart.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(docs, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	k := newKubectl(t)
	if out, err := k.run("apply", "--server-side", "-f", path); err != nil {
		t.Fatalf("installing the chart without its Deployment: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := k.run("delete", "--ignore-not-found", "-f", path); err != nil {
			t.Errorf("removing the chart: %v\n%s", err, out)
		}
	})

	install.servingCertificate = &unstructured.Unstructured{}
	install.servingCertificate.SetGroupVersionKind(schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"})
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: install.servingCertSecret}, install.servingCertificate); err != nil {
		t.Fatalf("the chart's serving Certificate: %v", err)
	}

	install.kubeconfig = operatorKubeconfig(t, ns, release+"-modelguard-controller-manager")
	return install
}

// cmKeyPair is a certificate and its key, as cert-manager writes them.
type cmKeyPair struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

// cmIssue does what cert-manager does for one Certificate: a CA (parent
// nil) or a serving certificate for dnsNames signed by parent, with a new
// ECDSA P-256 key in PKCS#8.
func cmIssue(t *testing.T, parent *cmKeyPair, dnsNames []string) *cmKeyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour)}
	signer, signerCert := key, tmpl
	if parent == nil {
		tmpl.Subject = pkix.Name{CommonName: "mg-root-ca"}
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.DNSNames = dnsNames
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &cmKeyPair{cert: cert, key: key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}
}

// cmFieldManager is the field manager cert-manager writes Secrets with.
const cmFieldManager = "cert-manager-certificates-issuing"

// issueForCertificate writes the Secret a Certificate names, as
// cert-manager's CA issuer would: a new key and a certificate for the
// Certificate's dnsNames, signed by ca, with ca.crt.
func issueForCertificate(t *testing.T, cert *unstructured.Unstructured, ca *cmKeyPair) *cmKeyPair {
	t.Helper()
	ctx := context.Background()
	secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	dnsNames, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	serving := cmIssue(t, ca, dnsNames)
	secret := corev1ac.Secret(secretName, cert.GetNamespace()).
		WithAnnotations(map[string]string{"cert-manager.io/certificate-name": cert.GetName(), "cert-manager.io/issuer-kind": "Issuer"}).
		WithType(corev1.SecretTypeTLS).
		WithData(map[string][]byte{corev1.TLSCertKey: serving.certPEM, corev1.TLSPrivateKeyKey: serving.keyPEM, certs.SecretCACert: ca.certPEM})
	if err := env.Client.Apply(ctx, secret, client.FieldOwner(cmFieldManager), client.ForceOwnership); err != nil {
		t.Fatalf("writing Secret %s as cert-manager: %v", secretName, err)
	}
	return serving
}

// TestManagerFollowsCertManager runs the real manager binary as the chart's
// ServiceAccount, with the chart's RBAC and arguments for
// certManager.enabled (get, and only get, on Secrets), and plays
// cert-manager: the manager is not ready while the Secret is missing, then
// serves the certificate issued for the chart's Certificate, publishes its
// ca.crt and gives it to the model's unseal container; a renewal under a new
// CA is served and published without a restart; the manager never writes
// the Secret and logs no key.
func TestManagerFollowsCertManager(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	bin := filepath.Join(binariesFromDockerfile(t), "manager")
	install := installCertManagerChart(t, ns)

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
	pm := builders.MakeProtectedModel("llm", ns).ModelKey(mk.Name).Obj()
	if err := env.Client.Create(ctx, pm); err != nil {
		t.Fatal(err)
	}

	keyReleaseAddr, probeAddr := freeLoopbackAddr(t), freeLoopbackAddr(t)
	logs := startManagerWithEnv(t, []string{"POD_NAMESPACE=" + ns}, bin, withManagerFlags(install.managerArgs, map[string]string{
		"kubeconfig":                install.kubeconfig,
		"health-probe-bind-address": probeAddr,
		"metrics-bind-address":      "0",
		"key-release-bind-address":  keyReleaseAddr,
	})...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("manager log:\n%s", logs.String())
		}
	})
	readyz := func() (int, string, error) {
		resp, err := http.Get("http://" + probeAddr + "/readyz?verbose")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	serviceDNS := install.keyReleaseService + "." + ns + ".svc"
	// served waits until a client trusting ca, for each of the Service's
	// names, is served want over TLS 1.3.
	served := func(t *testing.T, what string, ca, want *cmKeyPair) {
		t.Helper()
		roots := x509.NewCertPool()
		roots.AddCert(ca.cert)
		// The manager reads the Secret again every 30 seconds.
		eventuallyWithin(t, time.Minute, what, func() error {
			for _, name := range []string{serviceDNS, serviceDNS + ".cluster.local"} {
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", keyReleaseAddr,
					&tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS13})
				if err != nil {
					return fmt.Errorf("handshake for %s: %w", name, err)
				}
				leaf := conn.ConnectionState().PeerCertificates[0]
				conn.Close()
				if !leaf.Equal(want.cert) {
					return fmt.Errorf("serves serial %x, want %x", leaf.SerialNumber, want.cert.SerialNumber)
				}
			}
			return nil
		})
	}
	published := func(t *testing.T, what string, ca *cmKeyPair) {
		t.Helper()
		eventuallyWithin(t, time.Minute, what, func() error {
			cm := &corev1.ConfigMap{}
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: install.caConfigMap}, cm); err != nil {
				return err
			}
			if cm.Data[certs.ConfigMapBundle] != string(ca.certPEM) {
				return fmt.Errorf("ConfigMap %s holds another bundle", install.caConfigMap)
			}
			return nil
		})
	}
	trusted := func(t *testing.T, what string, ca *cmKeyPair) {
		t.Helper()
		eventuallyNoError(t, what, func() error {
			d := &appsv1.Deployment{}
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: pm.Name}, d); err != nil {
				return err
			}
			for _, c := range d.Spec.Template.Spec.InitContainers {
				for _, e := range c.Env {
					if c.Name == mlv1alpha1.ContainerUnseal && e.Name == mlv1alpha1.EnvKeyReleaseCA {
						if e.Value != string(ca.certPEM) {
							return fmt.Errorf("the unseal container trusts another bundle")
						}
						return nil
					}
				}
			}
			return fmt.Errorf("the model's Deployment has no %s in its %s container", mlv1alpha1.EnvKeyReleaseCA, mlv1alpha1.ContainerUnseal)
		})
	}

	t.Run("not ready while cert-manager has not written the Secret", func(t *testing.T) {
		eventuallyNoError(t, "the manager says which Secret it waits for", func() error {
			if !strings.Contains(logs.String(), ns+"/"+install.servingCertSecret+" does not exist") {
				return fmt.Errorf("the log does not name Secret %s/%s", ns, install.servingCertSecret)
			}
			return nil
		})
		status, body, err := readyz()
		if err != nil {
			t.Fatal(err)
		}
		if status == http.StatusOK || !strings.Contains(body, "[-]key-release-certificate") {
			t.Errorf("readyz %d without the Secret, want the key-release-certificate check failing:\n%s", status, body)
		}
		if _, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", keyReleaseAddr,
			&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}); err == nil {
			t.Error("the endpoint completed a handshake without a certificate")
		}
		d := &appsv1.Deployment{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: pm.Name}, d); err == nil {
			t.Errorf("the model's Deployment exists before any CA bundle is loaded")
		}
	})

	ca := cmIssue(t, nil, nil)
	first := issueForCertificate(t, install.servingCertificate, ca)
	t.Run("serves what cert-manager issued for the chart's Certificate", func(t *testing.T) {
		eventuallyNoError(t, "the manager is ready", func() error {
			status, body, err := readyz()
			if err != nil {
				return err
			}
			if status != http.StatusOK || !strings.Contains(body, "key-release-certificate ok") {
				return fmt.Errorf("readyz %d:\n%s", status, body)
			}
			return nil
		})
		served(t, "the issued certificate is served", ca, first)
		published(t, "ca.crt is published", ca)
		trusted(t, "the model's pods trust ca.crt", ca)
	})

	t.Run("a renewal under a new CA is served without a restart", func(t *testing.T) {
		newCA := cmIssue(t, nil, nil)
		renewed := issueForCertificate(t, install.servingCertificate, newCA)
		served(t, "the renewed certificate is served", newCA, renewed)
		published(t, "the new ca.crt is published", newCA)
		// The ProtectedModel controller does not watch the certificate
		// source: a changed CA bundle reaches a model's pod template at
		// the model's next reconcile (any event on it or its children, or
		// the periodic resync). Nudge the model, as such an event would.
		eventuallyNoError(t, "the model is annotated", func() error {
			live := &mlv1alpha1.ProtectedModel{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pm), live); err != nil {
				return err
			}
			metav1.SetMetaDataAnnotation(&live.ObjectMeta, "test.modelguard.dev/nudge", time.Now().Format(time.RFC3339Nano))
			return env.Client.Update(ctx, live)
		})
		trusted(t, "the model's pods trust the new ca.crt at the next reconcile", newCA)
	})

	t.Run("the manager never writes the Secret and may not", func(t *testing.T) {
		secret := &corev1.Secret{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: install.servingCertSecret}, secret); err != nil {
			t.Fatal(err)
		}
		var managers []string
		for _, f := range secret.ManagedFields {
			managers = append(managers, f.Manager)
		}
		if diff := cmp.Diff([]string{cmFieldManager}, managers); diff != "" {
			t.Errorf("field managers of Secret %s (-want +got):\n%s", secret.Name, diff)
		}
		sa := "system:serviceaccount:" + ns + ":mg-" + ns + "-modelguard-controller-manager"
		for _, c := range []struct {
			check rbacCheck
			want  bool
		}{
			{rbacCheck{Verb: "get", Resource: "secrets", Namespace: ns, Name: install.servingCertSecret}, true},
			{rbacCheck{Verb: "create", Resource: "secrets", Namespace: ns}, false},
			{rbacCheck{Verb: "update", Resource: "secrets", Namespace: ns, Name: install.servingCertSecret}, false},
			{rbacCheck{Verb: "patch", Resource: "secrets", Namespace: ns, Name: install.servingCertSecret}, false},
			{rbacCheck{Verb: "delete", Resource: "secrets", Namespace: ns, Name: install.servingCertSecret}, false},
			{rbacCheck{Verb: "list", Resource: "secrets", Namespace: ns}, false},
		} {
			if got := subjectCan(t, env.Client, sa, c.check); got != c.want {
				t.Errorf("the API server's authorizer lets the manager %s: %v, want %v", c.check, got, c.want)
			}
		}
		log := logs.String()
		for _, k := range [][]byte{first.keyPEM, ca.keyPEM} {
			block, _ := pem.Decode(k)
			if strings.Contains(log, base64.StdEncoding.EncodeToString(block.Bytes)[:40]) || bytes.Contains([]byte(log), k) {
				t.Error("the manager log holds a private key")
			}
		}
		if !strings.Contains(log, "Loaded the serving certificate issued by cert-manager") {
			t.Error("the manager log does not say it loaded the certificate cert-manager issued")
		}
	})
}

// eventuallyWithin retries f for up to d.
func eventuallyWithin(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s: %v", d, what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
