package certs_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/modelguard/modelguard/internal/certs"
	"github.com/modelguard/modelguard/test/testenv"
)

// The External source is tested against a real kube-apiserver and etcd
// (test/testenv): what it relies on, reading a Secret uncached and applying
// a ConfigMap, is the API server's. The Secrets are written as cert-manager
// writes them for a Certificate of a CA issuer: kubernetes.io/tls with
// tls.crt (the leaf, then any intermediates), tls.key and ca.crt.

var (
	envOnce sync.Once
	env     *testenv.Env
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the API server:", err)
		}
	}
	os.Exit(code)
}

// apiServer returns a client of the real API server that refuses, and
// reports, any write to a Secret: the External source must only read.
func apiServer(t *testing.T) (client.Client, string) {
	t.Helper()
	envOnce.Do(func() { env, envErr = testenv.Start() })
	if envErr != nil {
		t.Fatalf("starting the API server: %v", envErr)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "certs-"}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), ns) })
	noSecretWrites := func(obj any, verb string) error {
		if _, ok := obj.(*corev1.Secret); ok {
			t.Errorf("the External source tried to %s a Secret", verb)
			return fmt.Errorf("test: no Secret writes")
		}
		return nil
	}
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return interceptor.NewClient(c, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if err := noSecretWrites(obj, "create"); err != nil {
				return err
			}
			return c.Create(ctx, obj, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			if err := noSecretWrites(obj, "update"); err != nil {
				return err
			}
			return c.Update(ctx, obj, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			if err := noSecretWrites(obj, "patch"); err != nil {
				return err
			}
			return c.Patch(ctx, obj, patch, opts...)
		},
		Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
			if err := noSecretWrites(obj, "delete"); err != nil {
				return err
			}
			return c.Delete(ctx, obj, opts...)
		},
		Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
			if _, ok := obj.(*corev1ac.SecretApplyConfiguration); ok {
				t.Error("the External source tried to apply a Secret")
				return fmt.Errorf("test: no Secret writes")
			}
			return c.Apply(ctx, obj, opts...)
		},
	}), ns.Name
}

const (
	secretName    = "modelguard-serving-cert"
	configMapName = "modelguard-ca"
	svcName       = "modelguard-key-release.modelguard-system.svc"
)

var dnsNames = []string{svcName, svcName + ".cluster.local"}

// pair is a certificate and its key, in PEM as cert-manager writes them.
type pair struct {
	cert    *x509.Certificate
	signer  crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

type keyKind int

const (
	ecdsaPKCS8 keyKind = iota
	ecdsaSEC1
	rsaPKCS1 // cert-manager's default private key
)

func newKey(t *testing.T, kind keyKind) (crypto.Signer, []byte) {
	t.Helper()
	var (
		signer crypto.Signer
		block  *pem.Block
	)
	switch kind {
	case rsaPKCS1:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		signer, block = k, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	case ecdsaSEC1:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		signer, block = k, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	default:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		signer, block = k, &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	return signer, pem.EncodeToMemory(block)
}

// issue signs a certificate from tmpl with a new key of kind, by parent or,
// when parent is nil, by itself.
func issue(t *testing.T, tmpl *x509.Certificate, kind keyKind, parent *pair) *pair {
	t.Helper()
	signer, keyPEM := newKey(t, kind)
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	parentCert, parentKey := tmpl, signer
	if parent != nil {
		parentCert, parentKey = parent.cert, parent.signer
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, signer.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &pair{cert: cert, signer: signer, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM: keyPEM}
}

func newTestCA(t *testing.T, name string, parent *pair) *pair {
	t.Helper()
	return issue(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}, ecdsaPKCS8, parent)
}

type servingOpts struct {
	names     []string
	notBefore time.Time
	notAfter  time.Time
	kind      keyKind
}

func newServing(t *testing.T, ca *pair, o servingOpts) *pair {
	t.Helper()
	if o.names == nil {
		o.names = dnsNames
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Minute)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(90 * 24 * time.Hour)
	}
	return issue(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: o.names[0]},
		DNSNames:  o.names,
		NotBefore: o.notBefore, NotAfter: o.notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, o.kind, ca)
}

// tlsSecret is the Secret cert-manager writes for serving, issued by ca.
func tlsSecret(ns string, serving, ca *pair) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secretName,
			Annotations: map[string]string{"cert-manager.io/certificate-name": secretName}},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       serving.certPEM,
			corev1.TLSPrivateKeyKey: serving.keyPEM,
			certs.SecretCACert:      ca.certPEM,
		},
	}
}

func newExternal(t *testing.T, c client.Client, ns string, mutate func(*certs.ExternalOptions)) *certs.External {
	t.Helper()
	opts := certs.ExternalOptions{Namespace: ns, SecretName: secretName, ConfigMapName: configMapName, DNSNames: dnsNames}
	if mutate != nil {
		mutate(&opts)
	}
	e, err := certs.NewExternal(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// keyMaterial lists every form in which a Secret's private keys could leak
// into a message: the PEM, its base64 body, and the body's first line.
func keyMaterial(s *corev1.Secret) []string {
	var out []string
	for _, k := range []string{corev1.TLSPrivateKeyKey, certs.SecretCACert, corev1.TLSCertKey} {
		for rest := s.Data[k]; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if !strings.Contains(block.Type, "PRIVATE KEY") {
				continue
			}
			b64 := base64.StdEncoding.EncodeToString(block.Bytes)
			out = append(out, string(pem.EncodeToMemory(block)), b64, b64[:40], fmt.Sprintf("%x", block.Bytes[:20]))
		}
	}
	if k := s.Data[corev1.TLSPrivateKeyKey]; len(k) > 0 && !bytes.Contains(k, []byte("-----")) {
		out = append(out, string(k))
	}
	return out
}

func assertNoKeyMaterial(t *testing.T, where, text string, s *corev1.Secret) {
	t.Helper()
	for _, m := range keyMaterial(s) {
		if strings.Contains(text, m) {
			t.Errorf("%s holds key material from Secret %s:\n%s", where, s.Name, text)
			return
		}
	}
}

// handshake serves src's certificate on loopback and connects with a client
// that trusts only bundle, for name. It returns the served leaf.
func handshake(t *testing.T, src certs.Source, bundle []byte, name string) (*x509.Certificate, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", src.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.(*tls.Conn).Handshake()
	}()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
		&tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func TestExternalLoad(t *testing.T) {
	c, ns := apiServer(t)
	ctx := context.Background()
	ca := newTestCA(t, "modelguard-ca", nil)
	otherCA := newTestCA(t, "someone-elses-ca", nil)
	intermediate := newTestCA(t, "modelguard-intermediate", ca)
	good := newServing(t, ca, servingOpts{})

	tests := []struct {
		name string
		// secret is what cert-manager wrote; nil means nothing yet.
		secret func() *corev1.Secret
		// wantErr are the parts the error must hold, naming the Secret and
		// the key at fault; empty means the certificate loads.
		wantErr []string
		// wantServed is the leaf served after a good load.
		wantServed *pair
		// wantBundle is the CA bundle after a good load.
		wantBundle []byte
	}{{
		name:       "ECDSA key in PKCS#8",
		secret:     func() *corev1.Secret { return tlsSecret(ns, good, ca) },
		wantServed: good, wantBundle: ca.certPEM,
	}, {
		name: "RSA key in PKCS#1, cert-manager's default",
		secret: func() *corev1.Secret {
			return tlsSecret(ns, newServing(t, ca, servingOpts{kind: rsaPKCS1}), ca)
		},
	}, {
		name: "ECDSA key in SEC 1",
		secret: func() *corev1.Secret {
			return tlsSecret(ns, newServing(t, ca, servingOpts{kind: ecdsaSEC1}), ca)
		},
	}, {
		name: "an intermediate after the leaf in tls.crt",
		secret: func() *corev1.Secret {
			leaf := newServing(t, intermediate, servingOpts{})
			s := tlsSecret(ns, leaf, ca)
			s.Data[corev1.TLSCertKey] = append(bytes.Clone(leaf.certPEM), intermediate.certPEM...)
			return s
		},
	}, {
		name:    "the Secret does not exist yet",
		wantErr: []string{"Secret " + ns + "/" + secretName + " does not exist", "cert-manager"},
	}, {
		// The API server insists on tls.crt and tls.key in a
		// kubernetes.io/tls Secret, so these two are Opaque Secrets, as
		// when --serving-cert-secret names the wrong Secret.
		name: "no tls.crt",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			s.Type = corev1.SecretTypeOpaque
			delete(s.Data, corev1.TLSCertKey)
			return s
		},
		wantErr: []string{"Secret " + ns + "/" + secretName + " has no key tls.crt"},
	}, {
		name: "no tls.key",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			s.Type = corev1.SecretTypeOpaque
			s.Data[corev1.TLSPrivateKeyKey] = nil
			return s
		},
		wantErr: []string{"Secret " + ns + "/" + secretName + " has no key tls.key"},
	}, {
		name: "no ca.crt",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			delete(s.Data, certs.SecretCACert)
			return s
		},
		wantErr: []string{"Secret " + ns + "/" + secretName + " has no key ca.crt"},
	}, {
		name: "tls.crt is not PEM",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			s.Data[corev1.TLSCertKey] = []byte("not a certificate")
			return s
		},
		wantErr: []string{"Secret " + ns + "/" + secretName + " key tls.crt: holds no PEM certificate"},
	}, {
		name: "tls.crt holds the private key",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			s.Data[corev1.TLSCertKey] = append(bytes.Clone(good.keyPEM), good.certPEM...)
			return s
		},
		wantErr: []string{"key tls.crt: holds a PEM block of type \"PRIVATE KEY\""},
	}, {
		name: "ca.crt is corrupt",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			s.Data[certs.SecretCACert] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")})
			return s
		},
		wantErr: []string{"Secret " + ns + "/" + secretName + " key ca.crt: certificate 1:"},
	}, {
		name: "tls.key is another certificate's key",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			s.Data[corev1.TLSPrivateKeyKey] = newServing(t, ca, servingOpts{}).keyPEM
			return s
		},
		wantErr: []string{"Secret " + ns + "/" + secretName + " key tls.key does not hold the private key of the certificate in tls.crt",
			"another key than the certificate's"},
	}, {
		name: "tls.key is a corrupt key",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			block, _ := pem.Decode(good.keyPEM)
			block.Bytes = block.Bytes[:len(block.Bytes)-7]
			s.Data[corev1.TLSPrivateKeyKey] = pem.EncodeToMemory(block)
			return s
		},
		wantErr: []string{"key tls.key does not hold the private key", "a private key that does not parse"},
	}, {
		name: "tls.key is not PEM",
		secret: func() *corev1.Secret {
			s := tlsSecret(ns, good, ca)
			block, _ := pem.Decode(good.keyPEM)
			s.Data[corev1.TLSPrivateKeyKey] = []byte(base64.StdEncoding.EncodeToString(block.Bytes))
			return s
		},
		wantErr: []string{"key tls.key does not hold the private key", "no PEM data"},
	}, {
		name:    "ca.crt is another CA",
		secret:  func() *corev1.Secret { return tlsSecret(ns, good, otherCA) },
		wantErr: []string{"Secret " + ns + "/" + secretName + " key tls.crt", "is not valid for " + svcName + " under the CA in ca.crt"},
	}, {
		name: "the certificate lacks the fully qualified name",
		secret: func() *corev1.Secret {
			return tlsSecret(ns, newServing(t, ca, servingOpts{names: []string{svcName}}), ca)
		},
		wantErr: []string{"is not valid for " + svcName + ".cluster.local"},
	}, {
		name: "the certificate has expired",
		secret: func() *corev1.Secret {
			return tlsSecret(ns, newServing(t, ca, servingOpts{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)}), ca)
		},
		wantErr: []string{"key tls.crt", "expired"},
	}, {
		name: "a certificate for clients only",
		secret: func() *corev1.Secret {
			p := issue(t, &x509.Certificate{
				Subject: pkix.Name{CommonName: svcName}, DNSNames: dnsNames,
				NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}, ecdsaPKCS8, ca)
			return tlsSecret(ns, p, ca)
		},
		wantErr: []string{"key tls.crt", "is not valid for " + svcName},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_ = c.DeleteAllOf(ctx, &corev1.ConfigMap{}, client.InNamespace(ns))
			_ = env.Client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secretName}})
			var secret *corev1.Secret
			if tc.secret != nil {
				secret = tc.secret()
				if err := env.Client.Create(ctx, secret); err != nil {
					t.Fatal(err)
				}
			} else {
				secret = &corev1.Secret{}
			}
			e := newExternal(t, c, ns, nil)
			res, err := e.Load(ctx)

			type state struct {
				Err         string
				Ready       bool
				ReadyzErr   string
				CABundle    string
				ConfigMap   string
				Changed     bool
				ServedFound bool
			}
			got := state{Ready: isClosed(e.Ready()), CABundle: string(e.CABundle()), Changed: res.Changed}
			if err != nil {
				got.Err = err.Error()
			}
			if err := e.ReadyzCheck(nil); err != nil {
				got.ReadyzErr = err.Error()
			}
			cm := &corev1.ConfigMap{}
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: configMapName}, cm); err == nil {
				got.ConfigMap = cm.Data[certs.ConfigMapBundle]
			} else if !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
			_, serveErr := e.GetCertificate(nil)
			got.ServedFound = serveErr == nil

			if len(tc.wantErr) > 0 {
				t.Logf("error: %s", got.Err)
				for _, w := range tc.wantErr {
					if !strings.Contains(got.Err, w) {
						t.Errorf("error %q does not hold %q", got.Err, w)
					}
				}
				want := state{Err: got.Err, ReadyzErr: "no serving certificate loaded yet: " + got.Err}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("after a bad Secret (-want +got):\n%s", diff)
				}
				assertNoKeyMaterial(t, "the error", got.Err, secret)
				return
			}
			bundle := secret.Data[certs.SecretCACert]
			want := state{Ready: true, CABundle: string(bundle), ConfigMap: string(bundle), Changed: true, ServedFound: true}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("after a good Secret (-want +got):\n%s", diff)
			}
			if tc.wantBundle != nil && !bytes.Equal(tc.wantBundle, e.CABundle()) {
				t.Error("CABundle() is not the Secret's ca.crt")
			}
			for _, name := range dnsNames {
				served, err := handshake(t, e, []byte(got.ConfigMap), name)
				if err != nil {
					t.Fatalf("a client trusting the ConfigMap's bundle, for %s: %v", name, err)
				}
				if tc.wantServed != nil && !served.Equal(tc.wantServed.cert) {
					t.Errorf("served serial %s, want the Secret's %s", served.SerialNumber, tc.wantServed.cert.SerialNumber)
				}
				if !res.NotAfter.Equal(served.NotAfter) {
					t.Errorf("Loaded.NotAfter %s, want the served certificate's %s", res.NotAfter, served.NotAfter)
				}
			}
			if _, err := handshake(t, e, []byte(got.ConfigMap), "evil.example.com"); err == nil {
				t.Error("the served certificate is valid for a name other than the Service's")
			}
			res, err = e.Load(ctx)
			if err != nil || res.Changed {
				t.Errorf("a second Load of the same Secret = %+v, %v; want nothing changed", res, err)
			}
		})
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// logSink collects log lines.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, prefix+" "+args)
	}, funcr.Options{Verbosity: 10})
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// TestExternalFollowsTheSecret runs the source as a manager runs it and
// plays cert-manager's part: the Secret appears late, is renewed under the
// same CA, then under a new CA, then is broken and deleted. The source
// becomes ready without help, serves each renewal without a restart,
// publishes each CA, and keeps serving the last good certificate through
// the breakage, logging why and never a key.
func TestExternalFollowsTheSecret(t *testing.T) {
	c, ns := apiServer(t)
	ctx := context.Background()
	logs := &logSink{}
	e := newExternal(t, c, ns, func(o *certs.ExternalOptions) {
		o.CheckInterval = 200 * time.Millisecond
		o.Log = logs.logger()
	})
	if e.NeedLeaderElection() {
		t.Error("the source waits for leader election, but every replica serves")
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.Start(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start: %v", err)
		}
	}()

	// Until cert-manager has written the Secret, nothing is served and
	// readiness says why.
	time.Sleep(500 * time.Millisecond)
	if isClosed(e.Ready()) {
		t.Fatal("ready before the Secret exists")
	}
	if err := e.ReadyzCheck(nil); err == nil || !strings.Contains(err.Error(), ns+"/"+secretName+" does not exist") {
		t.Errorf("ReadyzCheck without the Secret = %v, want an error naming it", err)
	}

	ca := newTestCA(t, "modelguard-ca", nil)
	first := newServing(t, ca, servingOpts{})
	secret := tlsSecret(ns, first, ca)
	if err := env.Client.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("not ready 30s after the Secret appeared: %v", e.ReadyzCheck(nil))
	}
	if err := e.ReadyzCheck(nil); err != nil {
		t.Errorf("ReadyzCheck once loaded: %v", err)
	}

	// served waits until a client trusting bundle is served want.
	served := func(what string, bundle []byte, want *pair) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err := handshake(t, e, bundle, svcName)
			if err == nil && got.Equal(want.cert) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not served within 30s (last handshake: %v)", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	configMap := func() string {
		cm := &corev1.ConfigMap{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: configMapName}, cm); err != nil {
			t.Fatal(err)
		}
		return cm.Data[certs.ConfigMapBundle]
	}
	served("the first certificate", ca.certPEM, first)
	if diff := cmp.Diff(string(ca.certPEM), configMap()); diff != "" {
		t.Errorf("published bundle (-want +got):\n%s", diff)
	}

	update := func(mutate func(*corev1.Secret)) {
		t.Helper()
		s := &corev1.Secret{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(secret), s); err != nil {
			t.Fatal(err)
		}
		mutate(s)
		if err := env.Client.Update(ctx, s); err != nil {
			t.Fatal(err)
		}
		secret = s
	}

	t.Run("a renewal under the same CA is served without a restart", func(t *testing.T) {
		renewed := newServing(t, ca, servingOpts{})
		update(func(s *corev1.Secret) { s.Data = tlsSecret(ns, renewed, ca).Data })
		served("the renewed certificate", ca.certPEM, renewed)
		if diff := cmp.Diff(string(ca.certPEM), string(e.CABundle())); diff != "" {
			t.Errorf("CA bundle after a renewal under the same CA (-want +got):\n%s", diff)
		}
	})

	var latest *pair
	t.Run("a new CA is served and published", func(t *testing.T) {
		newCA := newTestCA(t, "modelguard-ca-2", nil)
		latest = newServing(t, newCA, servingOpts{})
		update(func(s *corev1.Secret) { s.Data = tlsSecret(ns, latest, newCA).Data })
		served("the certificate under the new CA", newCA.certPEM, latest)
		if diff := cmp.Diff(string(newCA.certPEM), string(e.CABundle())); diff != "" {
			t.Errorf("CA bundle after a CA change (-want +got):\n%s", diff)
		}
		deadline := time.Now().Add(30 * time.Second)
		for configMap() != string(newCA.certPEM) {
			if time.Now().After(deadline) {
				t.Fatal("the ConfigMap does not hold the new CA")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if latest == nil {
		t.FailNow()
	}

	t.Run("a broken or deleted Secret leaves the last good certificate served", func(t *testing.T) {
		wrongKey := newServing(t, ca, servingOpts{})
		good := secret.DeepCopy()
		update(func(s *corev1.Secret) { s.Data[corev1.TLSPrivateKeyKey] = wrongKey.keyPEM })
		broken := secret.DeepCopy()
		waitForLog(t, logs, "key tls.key does not hold the private key")
		if err := e.ReadyzCheck(nil); err != nil {
			t.Errorf("ReadyzCheck while the last good certificate is served: %v", err)
		}
		served("the last good certificate", []byte(good.Data[certs.SecretCACert]), latest)

		if err := env.Client.Delete(ctx, secret); err != nil {
			t.Fatal(err)
		}
		waitForLog(t, logs, ns+"/"+secretName+" does not exist")
		served("the last good certificate", []byte(good.Data[certs.SecretCACert]), latest)
		for _, s := range []*corev1.Secret{good, broken} {
			assertNoKeyMaterial(t, "the log", logs.String(), s)
		}
		assertNoKeyMaterial(t, "the log", logs.String(), &corev1.Secret{Data: map[string][]byte{corev1.TLSPrivateKeyKey: wrongKey.keyPEM}})
	})
	if !strings.Contains(logs.String(), "Loaded the serving certificate issued by cert-manager") {
		t.Errorf("no line per loaded certificate in the log:\n%s", logs)
	}
}

func waitForLog(t *testing.T, logs *logSink, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say %q:\n%s", want, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestExternalExpiry: a loaded certificate that cert-manager fails to renew
// makes the replica unready once it expires.
func TestExternalExpiry(t *testing.T) {
	c, ns := apiServer(t)
	ctx := context.Background()
	ca := newTestCA(t, "modelguard-ca", nil)
	short := newServing(t, ca, servingOpts{notAfter: time.Now().Add(2 * time.Second)})
	if err := env.Client.Create(ctx, tlsSecret(ns, short, ca)); err != nil {
		t.Fatal(err)
	}
	e := newExternal(t, c, ns, nil)
	if _, err := e.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.ReadyzCheck(nil); err != nil {
		t.Fatalf("ReadyzCheck before expiry: %v", err)
	}
	time.Sleep(time.Until(short.cert.NotAfter) + 100*time.Millisecond)
	err := e.ReadyzCheck(nil)
	if err == nil || !strings.Contains(err.Error(), ns+"/"+secretName) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ReadyzCheck after expiry = %v, want an error naming the Secret and saying it expired", err)
	}
}

func TestExternalOptions(t *testing.T) {
	for name, o := range map[string]certs.ExternalOptions{
		"no namespace":    {SecretName: "s", ConfigMapName: "c", DNSNames: []string{"a"}},
		"no Secret":       {Namespace: "n", ConfigMapName: "c", DNSNames: []string{"a"}},
		"no ConfigMap":    {Namespace: "n", SecretName: "s", DNSNames: []string{"a"}},
		"no DNS names":    {Namespace: "n", SecretName: "s", ConfigMapName: "c"},
		"empty DNS names": {Namespace: "n", SecretName: "s", ConfigMapName: "c", DNSNames: []string{}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := certs.NewExternal(nil, o); err == nil {
				t.Error("accepted")
			}
		})
	}
}
