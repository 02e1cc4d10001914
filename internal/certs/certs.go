// Package certs issues and rotates the operator's serving certificate, one
// mechanism shared by the key-release endpoint and the admission webhook.
// Where cert-manager issues the certificate instead, External follows the
// Secret it writes; both are a Source.
//
// It follows the design of open-policy-agent/cert-controller, which Kueue
// uses: a self-signed CA and a serving certificate kept together in a Secret
// in the operator's namespace, checked periodically and renewed before they
// expire. It differs where ModelGuard needs it to:
//   - the CA bundle is also published to a ConfigMap, because the unseal init
//     containers must trust the endpoint without being able to read a Secret;
//   - every replica serves (the key-release endpoint is not leader-only), so
//     each loads the certificate straight from the Secret into memory rather
//     than waiting for a kubelet-mounted volume, and writes race safely
//     through optimistic concurrency;
//   - the Secret need not exist beforehand;
//   - keys are ECDSA P-256 and serial numbers random;
//   - when the CA itself is renewed, the previous CA stays in the bundle until
//     it expires, so clients holding the old bundle keep working.
//
// cert-controller v0.16.0 does build against controller-runtime v0.25 and
// k8s.io v0.37, but covers none of the points above; this package is the
// small rotator that does.
package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Keys of the Secret and the ConfigMap.
const (
	// SecretCACert is the current CA certificate (PEM).
	SecretCACert = "ca.crt"
	// SecretCAKey is the CA's private key (PEM). It never leaves the Secret.
	SecretCAKey = "ca.key"
	// SecretPreviousCACert is the CA certificate replaced by the last CA
	// renewal, kept while it is valid so that old bundles still verify.
	SecretPreviousCACert = "ca-previous.crt"
	// SecretCert and SecretKey are the serving certificate and key, the keys
	// of a kubernetes.io/tls Secret.
	SecretCert = corev1.TLSCertKey
	SecretKey  = corev1.TLSPrivateKeyKey

	// ConfigMapBundle is the ConfigMap key holding the CA bundle (PEM):
	// the current CA, then the previous one while it is valid.
	ConfigMapBundle = "ca.crt"
)

// Options configures a Rotator.
type Options struct {
	// Namespace is the operator's own namespace, where the Secret and the
	// ConfigMap live.
	Namespace string
	// SecretName is the Secret holding the CA and the serving certificate.
	SecretName string
	// ConfigMapName is the ConfigMap the CA bundle is published to.
	ConfigMapName string
	// DNSNames are the serving certificate's names, e.g. the Service's
	// "modelguard-key-release.modelguard-system.svc"; the first is also its
	// common name.
	DNSNames []string
	// CAValidity is the CA's lifetime; zero means 10 years.
	CAValidity time.Duration
	// CertValidity is the serving certificate's lifetime; zero means 90
	// days.
	CertValidity time.Duration
	// RenewBefore is how long before expiry the serving certificate is
	// replaced; zero means a third of CertValidity. The CA is replaced
	// when less than twice CertValidity is left.
	RenewBefore time.Duration
	// CheckInterval is how often Start checks; zero means 10 minutes.
	CheckInterval time.Duration
	// FieldOwner is the server-side apply field manager of the ConfigMap;
	// zero means "modelguard".
	FieldOwner string
	// Log receives a line per issued certificate.
	Log logr.Logger
}

// Result says what one Ensure did.
type Result struct {
	// CAIssued is true when a new CA was made (first run or renewal).
	CAIssued bool
	// CertIssued is true when a new serving certificate was made.
	CertIssued bool
	// NotAfter is the serving certificate's expiry.
	NotAfter time.Time
}

// Rotator keeps the Secret's CA and serving certificate valid, publishes the
// CA bundle, and serves the current certificate to TLS listeners. It is a
// manager.Runnable that runs on every replica.
type Rotator struct {
	c    client.Client
	opts Options

	served
	ready    chan struct{}
	readyOne sync.Once
}

var (
	_ manager.Runnable               = (*Rotator)(nil)
	_ manager.LeaderElectionRunnable = (*Rotator)(nil)
)

// New returns a Rotator. c must read the Secret from the API server, not from
// a cache: the operator does not cache Secrets.
func New(c client.Client, opts Options) (*Rotator, error) {
	if opts.Namespace == "" || opts.SecretName == "" || opts.ConfigMapName == "" {
		return nil, errors.New("certs: Namespace, SecretName and ConfigMapName are required")
	}
	if len(opts.DNSNames) == 0 {
		return nil, errors.New("certs: at least one DNS name is required")
	}
	if opts.CAValidity == 0 {
		opts.CAValidity = 10 * 365 * 24 * time.Hour
	}
	if opts.CertValidity == 0 {
		opts.CertValidity = 90 * 24 * time.Hour
	}
	if opts.RenewBefore == 0 {
		opts.RenewBefore = opts.CertValidity / 3
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = 10 * time.Minute
	}
	if opts.FieldOwner == "" {
		opts.FieldOwner = "modelguard"
	}
	if opts.RenewBefore >= opts.CertValidity {
		return nil, fmt.Errorf("certs: RenewBefore (%s) must be shorter than CertValidity (%s)", opts.RenewBefore, opts.CertValidity)
	}
	if 2*opts.CertValidity >= opts.CAValidity {
		return nil, fmt.Errorf("certs: CAValidity (%s) must be more than twice CertValidity (%s)", opts.CAValidity, opts.CertValidity)
	}
	return &Rotator{c: c, opts: opts, ready: make(chan struct{})}, nil
}

// NeedLeaderElection is false: every replica serves, so every replica needs
// the certificate.
func (r *Rotator) NeedLeaderElection() bool { return false }

// Start ensures the certificates now and then every CheckInterval, until ctx
// ends. A failed check is retried sooner and never stops the manager; an
// expired certificate just fails TLS handshakes, closed.
func (r *Rotator) Start(ctx context.Context) error {
	delay := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		if _, err := r.Ensure(ctx); err != nil {
			r.opts.Log.Error(err, "Serving certificate check failed", "secret", klog.KRef(r.opts.Namespace, r.opts.SecretName))
			delay = min(r.opts.CheckInterval, 5*time.Second)
			continue
		}
		delay = r.opts.CheckInterval
	}
}

// Ready is closed once a certificate is loaded.
func (r *Rotator) Ready() <-chan struct{} { return r.ready }

// ReadyzCheck is a healthz.Checker: not ready until a certificate is loaded.
func (r *Rotator) ReadyzCheck(*http.Request) error {
	if r.cert.Load() == nil {
		return errors.New("no serving certificate loaded yet")
	}
	return nil
}

// Ensure makes one pass: it reads the Secret, renews the CA or the serving
// certificate if missing, invalid or close to expiry, writes the Secret
// back with an optimistic lock, publishes the bundle and loads the
// certificate. When another replica wrote first, it starts over with theirs.
func (r *Rotator) Ensure(ctx context.Context) (Result, error) {
	var lastErr error
	for range 3 {
		res, err := r.ensureOnce(ctx)
		if err == nil {
			return res, nil
		}
		if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) {
			return res, err
		}
		lastErr = err
	}
	return Result{}, lastErr
}

func (r *Rotator) ensureOnce(ctx context.Context) (Result, error) {
	key := types.NamespacedName{Namespace: r.opts.Namespace, Name: r.opts.SecretName}
	secret := &corev1.Secret{}
	exists := true
	if err := r.c.Get(ctx, key, secret); err != nil {
		if !apierrors.IsNotFound(err) {
			return Result{}, fmt.Errorf("reading Secret %s: %w", key, err)
		}
		exists = false
		secret = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "modelguard", "app.kubernetes.io/component": "serving-cert"}},
			Type: corev1.SecretTypeTLS,
		}
	}
	data := cloneData(secret.Data)
	now := time.Now()
	var res Result

	ca, caErr := parseKeyPair(data[SecretCACert], data[SecretCAKey])
	if caErr != nil || ca.cert.NotAfter.Sub(now) < 2*r.opts.CertValidity || !ca.cert.IsCA {
		if ca != nil && caErr == nil && ca.cert.NotAfter.After(now) {
			data[SecretPreviousCACert] = data[SecretCACert]
		}
		newCA, err := newCA(now, r.opts.CAValidity)
		if err != nil {
			return Result{}, err
		}
		ca = newCA
		data[SecretCACert], data[SecretCAKey] = newCA.certPEM, newCA.keyPEM
		res.CAIssued = true
	}
	if prev, err := parseCert(data[SecretPreviousCACert]); err != nil || !prev.NotAfter.After(now) {
		delete(data, SecretPreviousCACert)
	}

	serving, err := parseKeyPair(data[SecretCert], data[SecretKey])
	if res.CAIssued || err != nil || !r.servingCertGood(serving.cert, ca.cert, now) {
		serving, err = newServingCert(now, r.opts.CertValidity, r.opts.DNSNames, ca)
		if err != nil {
			return Result{}, err
		}
		data[SecretCert], data[SecretKey] = serving.certPEM, serving.keyPEM
		res.CertIssued = true
	}
	res.NotAfter = serving.cert.NotAfter

	if res.CAIssued || res.CertIssued || !exists {
		secret.Data = data
		var err error
		if exists {
			err = r.c.Update(ctx, secret)
		} else {
			err = r.c.Create(ctx, secret)
		}
		if err != nil {
			return Result{}, fmt.Errorf("writing Secret %s: %w", key, err)
		}
		r.opts.Log.Info("Issued serving certificate", "secret", klog.KRef(key.Namespace, key.Name), "caIssued", res.CAIssued,
			"dnsNames", r.opts.DNSNames, "notAfter", res.NotAfter.UTC().Format(time.RFC3339))
	}

	bundle := slices.Concat(data[SecretCACert], data[SecretPreviousCACert])
	if err := r.publish(ctx, bundle); err != nil {
		return Result{}, err
	}
	tlsCert, err := tls.X509KeyPair(data[SecretCert], data[SecretKey])
	if err != nil {
		return Result{}, fmt.Errorf("loading the serving certificate: %w", err)
	}
	r.cert.Store(&tlsCert)
	r.bundle.Store(&bundle)
	r.readyOne.Do(func() { close(r.ready) })
	return res, nil
}

// servingCertGood reports whether cert chains to ca, names exactly the
// configured DNS names, and is not due for renewal.
func (r *Rotator) servingCertGood(cert, ca *x509.Certificate, now time.Time) bool {
	if cert.NotAfter.Sub(now) < r.opts.RenewBefore || now.Before(cert.NotBefore) {
		return false
	}
	if !slices.Equal(slices.Sorted(slices.Values(cert.DNSNames)), slices.Sorted(slices.Values(r.opts.DNSNames))) {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: r.opts.DNSNames[0], CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err == nil
}

// publish applies the bundle to the ConfigMap with server-side apply.
func (r *Rotator) publish(ctx context.Context, bundle []byte) error {
	return publishBundle(ctx, r.c, r.opts.Namespace, r.opts.ConfigMapName, r.opts.FieldOwner, bundle)
}

// publishBundle applies a CA bundle to the ConfigMap namespace/name with
// server-side apply.
func publishBundle(ctx context.Context, c client.Client, namespace, name, fieldOwner string, bundle []byte) error {
	cm := corev1ac.ConfigMap(name, namespace).
		WithLabels(map[string]string{"app.kubernetes.io/managed-by": "modelguard", "app.kubernetes.io/component": "serving-cert"}).
		WithData(map[string]string{ConfigMapBundle: string(bundle)})
	if err := c.Apply(ctx, cm, client.FieldOwner(fieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("publishing the CA bundle to ConfigMap %s/%s: %w", namespace, name, err)
	}
	return nil
}

type keyPair struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// parseKeyPair parses a PEM certificate and its PKCS#8 ECDSA key and checks
// that they belong together.
func parseKeyPair(certPEM, keyPEM []byte) (*keyPair, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the private key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("the private key is not ECDSA")
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("the certificate does not match the private key")
	}
	return &keyPair{cert: cert, key: key, certPEM: certPEM, keyPEM: keyPEM}, nil
}

// clockSkew backdates certificates so that a node whose clock is a little
// behind still accepts them.
const clockSkew = 5 * time.Minute

func newCA(now time.Time, validity time.Duration) (*keyPair, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "modelguard-ca", Organization: []string{"ModelGuard"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return issue(tmpl, nil)
}

func newServingCert(now time.Time, validity time.Duration, dnsNames []string, ca *keyPair) (*keyPair, error) {
	notAfter := now.Add(validity)
	if ca.cert.NotAfter.Before(notAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: dnsNames[0]},
		DNSNames:    slices.Clone(dnsNames),
		NotBefore:   now.Add(-clockSkew),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return issue(tmpl, ca)
}

// issue signs tmpl with a fresh P-256 key, by parent or (nil) by itself.
func issue(tmpl *x509.Certificate, parent *keyPair) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating a serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	signer, signerCert := key, tmpl
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the new certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	return &keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// cloneData copies a Secret's data so that a failed write leaves the read object
// as it was.
func cloneData(in map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(in))
	for k, v := range in {
		out[k] = bytes.Clone(v)
	}
	return out
}
