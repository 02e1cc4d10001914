package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/certs"
)

// certDNSName is the name the manager's certificate is issued for by
// default: the key-release Service in the operator's namespace.
const certDNSName = mlv1alpha1.KeyReleaseServiceName + ".modelguard-system.svc"

func newRotator(t *testing.T, ns string, mutate func(*certs.Options)) *certs.Rotator {
	t.Helper()
	opts := certs.Options{
		Namespace: ns, SecretName: "modelguard-serving-cert", ConfigMapName: "modelguard-ca",
		DNSNames: []string{certDNSName, certDNSName + ".cluster.local"},
	}
	if mutate != nil {
		mutate(&opts)
	}
	r, err := certs.New(env.Client, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readCertObjects(t *testing.T, ns string) (*corev1.Secret, *corev1.ConfigMap) {
	t.Helper()
	ctx := context.Background()
	secret := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "modelguard-serving-cert"}, secret); err != nil {
		t.Fatalf("reading the Secret: %v", err)
	}
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "modelguard-ca"}, cm); err != nil {
		t.Fatalf("reading the ConfigMap: %v", err)
	}
	return secret, cm
}

func parsePEMCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// handshake serves r's certificate on loopback and connects with a client
// that trusts only bundle, as the init container trusts the ConfigMap. It
// returns the certificate the server presented.
func handshake(t *testing.T, r *certs.Rotator, bundle []byte) *x509.Certificate {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", r.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		t.Fatal("the bundle holds no certificate")
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", "127.0.0.1:"+port, &tls.Config{RootCAs: roots, ServerName: certDNSName, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatalf("TLS handshake with a client trusting the ConfigMap's bundle: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestServingCertificates runs the rotator against the real API server: it
// creates the Secret and the ConfigMap, a client trusting the ConfigMap
// completes a handshake, a second replica reuses the same certificate, and a
// certificate near expiry is replaced by one that still chains to the CA.
func TestServingCertificates(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)

	r := newRotator(t, ns, nil)
	if err := r.ReadyzCheck(nil); err == nil {
		t.Fatal("ready before any certificate was loaded")
	}
	res, err := r.Ensure(ctx)
	if err != nil {
		t.Fatalf("first Ensure: %v", err)
	}
	if !res.CAIssued || !res.CertIssued {
		t.Errorf("first Ensure = %+v, want a CA and a certificate issued", res)
	}
	select {
	case <-r.Ready():
	default:
		t.Error("Ready not closed after a successful Ensure")
	}
	secret, cm := readCertObjects(t, ns)
	if secret.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret type %q, want %q", secret.Type, corev1.SecretTypeTLS)
	}
	for _, k := range []string{certs.SecretCACert, certs.SecretCAKey, certs.SecretCert, certs.SecretKey} {
		if len(secret.Data[k]) == 0 {
			t.Errorf("Secret lacks %s", k)
		}
	}
	bundle := []byte(cm.Data[certs.ConfigMapBundle])
	if !bytes.Equal(bundle, secret.Data[certs.SecretCACert]) {
		t.Error("the ConfigMap's bundle is not the Secret's CA")
	}
	for k, v := range cm.Data {
		if bytes.Contains([]byte(v), []byte("PRIVATE KEY")) {
			t.Errorf("the ConfigMap's %s holds a private key", k)
		}
	}
	if !bytes.Equal(r.CABundle(), bundle) {
		t.Error("CABundle() differs from the published bundle")
	}
	first := handshake(t, r, bundle)
	if first.NotAfter.Sub(time.Now()) < 80*24*time.Hour {
		t.Errorf("the default certificate expires at %s, want about 90 days", first.NotAfter)
	}

	t.Run("a second Ensure and a second replica change nothing", func(t *testing.T) {
		res, err := r.Ensure(ctx)
		if err != nil || res.CAIssued || res.CertIssued {
			t.Fatalf("second Ensure = %+v, %v; want nothing issued", res, err)
		}
		replica := newRotator(t, ns, nil)
		res, err = replica.Ensure(ctx)
		if err != nil || res.CAIssued || res.CertIssued {
			t.Fatalf("second replica's Ensure = %+v, %v; want nothing issued", res, err)
		}
		if got := handshake(t, replica, bundle); !got.Equal(first) {
			t.Error("the second replica serves another certificate")
		}
	})

	t.Run("a certificate near expiry is renewed under the same CA", func(t *testing.T) {
		// A RenewBefore longer than the 90 days the first certificate has
		// left makes it due, as a real certificate near expiry is.
		short := newRotator(t, ns, func(o *certs.Options) {
			o.CertValidity = 100 * 24 * time.Hour
			o.RenewBefore = 100*24*time.Hour - time.Hour
		})
		res, err := short.Ensure(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.CAIssued || !res.CertIssued {
			t.Fatalf("Ensure with a certificate due = %+v, want only a new certificate", res)
		}
		renewed := handshake(t, short, bundle)
		if renewed.Equal(first) || renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
			t.Fatal("the renewed certificate is the old one")
		}
		if !renewed.NotAfter.After(first.NotAfter) {
			t.Errorf("the renewed certificate expires at %s, not after the old one's %s", renewed.NotAfter, first.NotAfter)
		}
		if res, err := short.Ensure(ctx); err != nil || res.CAIssued || res.CertIssued {
			t.Fatalf("the fresh certificate is not due yet, but Ensure = %+v, %v", res, err)
		}
		_, cm := readCertObjects(t, ns)
		if cm.Data[certs.ConfigMapBundle] != string(bundle) {
			t.Error("renewing the serving certificate changed the CA bundle")
		}
		ca := parsePEMCert(t, bundle)
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		if _, err := renewed.Verify(x509.VerifyOptions{Roots: roots, DNSName: certDNSName}); err != nil {
			t.Errorf("the renewed certificate does not chain to the CA: %v", err)
		}
		if _, err := r.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
		if got := handshake(t, r, bundle); !got.Equal(parsePEMCert(t, mustSecret(t, ns).Data[certs.SecretCert])) {
			t.Error("the first replica did not load the renewed certificate from the Secret")
		}
	})

	t.Run("a changed DNS name or a corrupted key gets a new certificate", func(t *testing.T) {
		renamed := newRotator(t, ns, func(o *certs.Options) {
			o.DNSNames = append(o.DNSNames, "modelguard-webhook.modelguard-system.svc")
		})
		res, err := renamed.Ensure(ctx)
		if err != nil || res.CAIssued || !res.CertIssued {
			t.Fatalf("Ensure with a new DNS name = %+v, %v; want a new certificate under the same CA", res, err)
		}
		served := handshake(t, renamed, bundle)
		if !slices.Contains(served.DNSNames, "modelguard-webhook.modelguard-system.svc") {
			t.Errorf("the new certificate names %v", served.DNSNames)
		}

		secret := mustSecret(t, ns)
		// Swap in the CA's key as the serving key: it parses, but does
		// not match the certificate.
		secret.Data[certs.SecretKey] = secret.Data[certs.SecretCAKey]
		if err := env.Client.Update(ctx, secret); err != nil {
			t.Fatal(err)
		}
		res, err = renamed.Ensure(ctx)
		if err != nil || res.CAIssued || !res.CertIssued {
			t.Fatalf("Ensure with a mismatched key = %+v, %v; want a new certificate under the same CA", res, err)
		}
		handshake(t, renamed, bundle)
	})

	t.Run("a CA near expiry is renewed and the old CA stays in the bundle", func(t *testing.T) {
		// Twice CertValidity is more than the CA has left, as for a CA
		// near the end of its life.
		long := newRotator(t, ns, func(o *certs.Options) {
			o.CertValidity = 6 * 365 * 24 * time.Hour
			o.CAValidity = 20 * 365 * 24 * time.Hour
		})
		oldCA := parsePEMCert(t, bundle)
		res, err := long.Ensure(ctx)
		if err != nil || !res.CAIssued || !res.CertIssued {
			t.Fatalf("Ensure with the CA due = %+v, %v; want a new CA and certificate", res, err)
		}
		secret, cm := readCertObjects(t, ns)
		newBundle := []byte(cm.Data[certs.ConfigMapBundle])
		if !bytes.Contains(newBundle, bundle) || !bytes.Contains(newBundle, secret.Data[certs.SecretCACert]) {
			t.Fatal("the bundle does not hold both the new and the previous CA")
		}
		if parsePEMCert(t, secret.Data[certs.SecretCACert]).Equal(oldCA) {
			t.Fatal("the CA was not replaced")
		}
		served := handshake(t, long, newBundle)
		if err := served.CheckSignatureFrom(oldCA); err == nil {
			t.Error("the new certificate is signed by the old CA")
		}
	})
}

func mustSecret(t *testing.T, ns string) *corev1.Secret {
	t.Helper()
	s, _ := readCertObjects(t, ns)
	return s
}

func TestServingCertificateOptions(t *testing.T) {
	for name, o := range map[string]certs.Options{
		"no namespace":              {SecretName: "s", ConfigMapName: "c", DNSNames: []string{"a"}},
		"no DNS names":              {Namespace: "n", SecretName: "s", ConfigMapName: "c"},
		"renew after expiry":        {Namespace: "n", SecretName: "s", ConfigMapName: "c", DNSNames: []string{"a"}, CertValidity: time.Hour, RenewBefore: 2 * time.Hour},
		"CA shorter than two certs": {Namespace: "n", SecretName: "s", ConfigMapName: "c", DNSNames: []string{"a"}, CertValidity: time.Hour, CAValidity: time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := certs.New(env.Client, o); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// TestRotatorRunsInAManager runs the rotator as a controller-runtime
// runnable, as cmd/manager does on every replica: it needs no leader
// election, becomes ready without help, and serves the certificate the
// Secret holds. TestManagerServesKeyRelease runs it in the real manager.
func TestRotatorRunsInAManager(t *testing.T) {
	ns := newNamespace(t)
	mgr, err := manager.New(env.Config, manager.Options{
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := newRotator(t, ns, func(o *certs.Options) { o.CheckInterval = time.Second })
	if r.NeedLeaderElection() {
		t.Error("the rotator needs leader election, but every replica serves")
	}
	if err := mgr.Add(r); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	select {
	case <-r.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the rotator did not become ready")
	}
	if err := r.ReadyzCheck(nil); err != nil {
		t.Errorf("ReadyzCheck after Ready: %v", err)
	}
	secret, cm := readCertObjects(t, ns)
	served := handshake(t, r, []byte(cm.Data[certs.ConfigMapBundle]))
	if !served.Equal(parsePEMCert(t, secret.Data[certs.SecretCert])) {
		t.Error("the manager's rotator serves another certificate than the Secret's")
	}
}
