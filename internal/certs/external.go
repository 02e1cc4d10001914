package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// ExternalOptions configures an External source.
type ExternalOptions struct {
	// Namespace is the operator's own namespace, where the Secret and the
	// ConfigMap live.
	Namespace string
	// SecretName is the kubernetes.io/tls Secret that cert-manager writes
	// (the Certificate's spec.secretName), with the keys tls.crt, tls.key
	// and ca.crt.
	SecretName string
	// ConfigMapName is the ConfigMap the CA bundle (the Secret's ca.crt) is
	// published to, as the Rotator publishes its own.
	ConfigMapName string
	// DNSNames are the names clients call the endpoint by. A certificate
	// that is not valid for each of them under ca.crt is not loaded.
	DNSNames []string
	// CheckInterval is how often Start reads the Secret again; zero means
	// 30 seconds, one small uncached GET per replica. A certificate that
	// cert-manager renews (well before expiry) is served within that time,
	// without a restart.
	CheckInterval time.Duration
	// FieldOwner is the server-side apply field manager of the ConfigMap;
	// zero means "modelguard".
	FieldOwner string
	// Log receives a line per loaded certificate and per failed check. It
	// never receives key material.
	Log logr.Logger
}

// Loaded says what one Load did.
type Loaded struct {
	// Changed is true when the Secret held another certificate, key or CA
	// bundle than the one served before (always on the first load).
	Changed bool
	// NotAfter is the serving certificate's expiry.
	NotAfter time.Time
}

// External serves a certificate that cert-manager issues: the operator
// issues nothing and writes no Secret, it reads the Secret periodically
// through an uncached client and serves what it holds. The CA bundle is the
// Secret's ca.crt, also published to the ConfigMap. It is a
// manager.Runnable that runs on every replica, like the Rotator.
//
// A Secret that is missing or malformed is never loaded: until a good one
// has been, GetCertificate fails and ReadyzCheck names the Secret and the
// key at fault. A later bad read keeps the last good certificate while it
// is valid (cert-manager replaces a Secret's keys at once, so a bad read is
// a mistake or an outage, not a renewal in progress) and is logged on every
// check.
type External struct {
	c    client.Client
	opts ExternalOptions

	served
	// mu guards the fields below.
	mu sync.Mutex
	// fingerprint identifies the loaded tls.crt, tls.key and ca.crt.
	fingerprint []byte
	// lastErr is the last Load's failure, for ReadyzCheck; nil after a
	// success.
	lastErr error
	// published is the bundle last applied to the ConfigMap, and when.
	published   []byte
	publishedAt time.Time

	ready    chan struct{}
	readyOne sync.Once
}

var (
	_ manager.Runnable               = (*External)(nil)
	_ manager.LeaderElectionRunnable = (*External)(nil)
)

// republishInterval bounds how long a ConfigMap that someone changed or
// deleted stays so while the bundle itself does not change.
const republishInterval = 10 * time.Minute

// NewExternal returns an External source. c must read the Secret from the
// API server, not from a cache: the operator does not cache Secrets.
func NewExternal(c client.Client, opts ExternalOptions) (*External, error) {
	if opts.Namespace == "" || opts.SecretName == "" || opts.ConfigMapName == "" {
		return nil, errors.New("certs: Namespace, SecretName and ConfigMapName are required")
	}
	if len(opts.DNSNames) == 0 {
		return nil, errors.New("certs: at least one DNS name is required")
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = 30 * time.Second
	}
	if opts.FieldOwner == "" {
		opts.FieldOwner = "modelguard"
	}
	return &External{c: c, opts: opts, ready: make(chan struct{})}, nil
}

// NeedLeaderElection is false: every replica serves, so every replica needs
// the certificate.
func (e *External) NeedLeaderElection() bool { return false }

// Start loads the Secret now and then every CheckInterval, until ctx ends.
// A failed load is retried sooner and never stops the manager.
func (e *External) Start(ctx context.Context) error {
	delay := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		if _, err := e.Load(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			e.opts.Log.Error(err, "Loading the serving certificate issued by cert-manager failed",
				"secret", klog.KRef(e.opts.Namespace, e.opts.SecretName), "servingPreviousCertificate", e.cert.Load() != nil)
			delay = min(e.opts.CheckInterval, 5*time.Second)
			continue
		}
		delay = e.opts.CheckInterval
	}
}

// Ready is closed once a certificate is loaded.
func (e *External) Ready() <-chan struct{} { return e.ready }

// ReadyzCheck is a healthz.Checker: not ready until a certificate is
// loaded, saying why not, nor once the loaded one has expired.
func (e *External) ReadyzCheck(*http.Request) error {
	c := e.cert.Load()
	if c == nil {
		e.mu.Lock()
		err := e.lastErr
		e.mu.Unlock()
		if err != nil {
			return fmt.Errorf("no serving certificate loaded yet: %w", err)
		}
		return errors.New("no serving certificate loaded yet")
	}
	if now := time.Now(); !now.Before(c.Leaf.NotAfter) {
		return fmt.Errorf("the serving certificate from Secret %s expired at %s, and cert-manager has not renewed it",
			e.secretRef(), c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

func (e *External) secretRef() string { return e.opts.Namespace + "/" + e.opts.SecretName }

// Load makes one pass: it reads the Secret, checks that its certificate
// matches its key and verifies under its ca.crt for every DNS name,
// publishes ca.crt to the ConfigMap and serves the certificate. A Secret
// that fails a check changes nothing that is served.
func (e *External) Load(ctx context.Context) (Loaded, error) {
	res, err := e.load(ctx)
	e.mu.Lock()
	e.lastErr = err
	e.mu.Unlock()
	return res, err
}

func (e *External) load(ctx context.Context) (Loaded, error) {
	key := types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.SecretName}
	secret := &corev1.Secret{}
	if err := e.c.Get(ctx, key, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return Loaded{}, fmt.Errorf("Secret %s does not exist: cert-manager writes it once the Certificate whose spec.secretName names it is issued", key)
		}
		return Loaded{}, fmt.Errorf("reading Secret %s: %w", key, err)
	}
	tlsCert, bundle, err := e.parse(secret, time.Now())
	if err != nil {
		return Loaded{}, err
	}
	res := Loaded{NotAfter: tlsCert.Leaf.NotAfter}

	fingerprint := bytes.Join([][]byte{secret.Data[SecretCert], secret.Data[SecretKey], secret.Data[SecretCACert]}, []byte{0})
	e.mu.Lock()
	res.Changed = !bytes.Equal(fingerprint, e.fingerprint)
	publish := !bytes.Equal(bundle, e.published) || time.Since(e.publishedAt) >= republishInterval
	e.mu.Unlock()

	if publish {
		if err := publishBundle(ctx, e.c, e.opts.Namespace, e.opts.ConfigMapName, e.opts.FieldOwner, bundle); err != nil {
			return Loaded{}, err
		}
		e.mu.Lock()
		e.published, e.publishedAt = bundle, time.Now()
		e.mu.Unlock()
	}
	if res.Changed {
		e.cert.Store(tlsCert)
		e.bundle.Store(&bundle)
		e.mu.Lock()
		e.fingerprint = fingerprint
		e.mu.Unlock()
		e.opts.Log.Info("Loaded the serving certificate issued by cert-manager", "secret", klog.KRef(key.Namespace, key.Name),
			"dnsNames", tlsCert.Leaf.DNSNames, "serial", tlsCert.Leaf.SerialNumber.Text(16),
			"notAfter", res.NotAfter.UTC().Format(time.RFC3339))
	}
	e.readyOne.Do(func() { close(e.ready) })
	return res, nil
}

// parse checks a Secret's keys and returns the certificate to serve and the
// CA bundle. Its errors name the Secret and the key at fault and never hold
// key material: they are built from fixed text, key names, certificate
// fields and x509/tls errors, which quote no key bytes.
func (e *External) parse(secret *corev1.Secret, now time.Time) (*tls.Certificate, []byte, error) {
	ref := e.secretRef()
	for _, k := range []string{SecretCert, SecretKey, SecretCACert} {
		if len(secret.Data[k]) == 0 {
			return nil, nil, fmt.Errorf("Secret %s has no key %s: it is not a Secret that cert-manager issued for a Certificate with a CA issuer", ref, k)
		}
	}
	chain, err := parseCerts(secret.Data[SecretCert])
	if err != nil {
		return nil, nil, fmt.Errorf("Secret %s key %s: %w", ref, SecretCert, err)
	}
	roots, err := parseCerts(secret.Data[SecretCACert])
	if err != nil {
		return nil, nil, fmt.Errorf("Secret %s key %s: %w", ref, SecretCACert, err)
	}
	tlsCert, err := tls.X509KeyPair(secret.Data[SecretCert], secret.Data[SecretKey])
	if err != nil {
		return nil, nil, fmt.Errorf("Secret %s key %s does not hold the private key of the certificate in %s: %s", ref, SecretKey, SecretCert, keyPairError(err))
	}
	leaf := chain[0]
	tlsCert.Leaf = leaf

	pool, intermediates := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	for _, name := range e.opts.DNSNames {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: intermediates, DNSName: name, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return nil, nil, fmt.Errorf("Secret %s key %s: the certificate (serial %s, DNS names %v, valid %s to %s) is not valid for %s under the CA in %s: %w",
				ref, SecretCert, leaf.SerialNumber.Text(16), leaf.DNSNames, leaf.NotBefore.UTC().Format(time.RFC3339),
				leaf.NotAfter.UTC().Format(time.RFC3339), name, SecretCACert, err)
		}
	}
	return &tlsCert, bytes.Clone(secret.Data[SecretCACert]), nil
}

// parseCerts parses every PEM block of data, which must all be
// certificates.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			// The type is safe to name; the block is not quoted.
			return nil, fmt.Errorf("holds a PEM block of type %q where only certificates belong", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return out, nil
}

// keyPairError words a tls.X509KeyPair failure. Its errors quote no key
// bytes today; mapping the known ones to fixed text keeps it so whatever a
// later Go release prints.
func keyPairError(err error) string {
	msg := err.Error()
	for _, known := range []struct{ prefix, say string }{
		{"tls: failed to find any PEM data in key input", "no PEM data"},
		{"tls: found a certificate rather than a key", "a certificate instead of a private key"},
		{"tls: failed to find PEM block with type ending in \"PRIVATE KEY\"", "no PEM private key"},
		{"tls: failed to parse private key", "a private key that does not parse"},
		{"tls: private key type does not match public key type", "a key of another type than the certificate's"},
		{"tls: private key does not match public key", "another key than the certificate's"},
		{"tls: unknown public key algorithm", "a certificate with a public key algorithm TLS does not support"},
	} {
		if len(msg) >= len(known.prefix) && msg[:len(known.prefix)] == known.prefix {
			return "it holds " + known.say
		}
	}
	return "the key pair does not load"
}
