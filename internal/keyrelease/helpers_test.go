package keyrelease

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"k8s.io/apimachinery/pkg/types"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

const (
	testPodUID = "0f0e0d0c-0b0a-4908-8706-050403020100"
	testDigest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	testKey    = "nlp-models"
)

var (
	testModel  = ModelRef{Kind: KindProtectedModel, Namespace: "nlp", Name: "sentiment"}
	testBundle = BundleRef{FormatVersion: seal.FormatVersion, BundleID: "00112233445566778899aabbccddeeff"}
)

// fixture is a real KEK, a data key wrapped by it, and a token: the secrets
// that no log line, error or denial body may contain.
type fixture struct {
	kekBytes []byte
	kek      *keys.KEK
	dek      []byte
	record   seal.KeyInfo
	token    Token
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{kekBytes: randomBytes(t, keys.KEKSize), dek: randomBytes(t, keys.DEKSize)}
	var err error
	if f.kek, err = keys.NewKEK(f.kekBytes); err != nil {
		t.Fatal(err)
	}
	wrapped, err := f.kek.Wrap(context.Background(), f.dek, testBundle.Binding(testDigest))
	if err != nil {
		t.Fatal(err)
	}
	f.record = seal.KeyInfo{Provider: f.kek.Kind(), ID: f.kek.ID(), WrappedDEK: wrapped}
	// A token shaped like a real one: header.claims.signature.
	seg := func(n int) string { return base64.RawURLEncoding.EncodeToString(randomBytes(t, n)) }
	f.token = Token(seg(36) + "." + seg(400) + "." + seg(256))
	return f
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// secretForms are the forms in which a secret could leak: raw, hex, base64.
func (f *fixture) secretForms() map[string]string {
	forms := map[string]string{"token": string(f.token)}
	for name, b := range map[string][]byte{"KEK": f.kekBytes, "DEK": f.dek} {
		forms[name+" raw"] = string(b)
		forms[name+" hex"] = hex.EncodeToString(b)
		forms[name+" base64"] = base64.StdEncoding.EncodeToString(b)
		forms[name+" base64url"] = base64.RawURLEncoding.EncodeToString(b)
	}
	return forms
}

// assertNoSecrets fails if text contains any form of any secret.
func (f *fixture) assertNoSecrets(t *testing.T, where, text string) {
	t.Helper()
	for name, form := range f.secretForms() {
		if strings.Contains(text, form) {
			t.Errorf("%s contains the %s", where, name)
		}
	}
}

// verifierFunc is a Verifier from a function; the controllers' real Verifier
// (TokenReview, pod chain, spec) plugs into the same interface.
type verifierFunc func(ctx context.Context, c Claim) (Decision, error)

func (f verifierFunc) Verify(ctx context.Context, c Claim) (Decision, error) { return f(ctx, c) }

// allowWhen allows a claim that presents the fixture's token for testModel,
// as a verifier that had checked the token would.
func (f *fixture) allowWhen() Verifier {
	return verifierFunc(func(_ context.Context, c Claim) (Decision, error) {
		if c.Token != f.token {
			return Decision{Reason: mlv1alpha1.ReasonTokenRejected, Message: "the token was not accepted"}, nil
		}
		return Decision{Allowed: true, Pod: types.NamespacedName{Namespace: c.Model.Namespace, Name: "sentiment-abc"},
			PodUID: c.PodUID, ModelKey: testKey}, nil
	})
}

// keysFor serves the fixture's KEK under testKey.
func (f *fixture) keysFor() Keys {
	return ProviderKeys(func(_ context.Context, name string) (keys.Provider, error) {
		if name != testKey {
			return nil, &Denial{Reason: mlv1alpha1.ReasonModelKeyNotFound, Message: "ModelKey " + name + " does not exist"}
		}
		return f.kek, nil
	})
}

// logBuffer collects every log line at every verbosity.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.buf.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{Verbosity: 10})
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tlsServer starts h on a loopback TLS server and writes its certificate to a
// CA file, as the CA ConfigMap is mounted into the init container.
func tlsServer(t testing.TB, h http.Handler) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, writeCAFile(t, srv)
}

func writeCAFile(t testing.TB, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.crt")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// fastBackoff keeps retry tests short.
func fastBackoff(maxElapsed time.Duration) Backoff {
	return Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, MaxElapsed: maxElapsed}
}

func newTestClient(t *testing.T, url, caFile string, b Backoff, log logr.Logger) *Client {
	t.Helper()
	c, err := NewClient(ClientOptions{URL: url, CAFile: caFile, Backoff: b, AttemptTimeout: 5 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) releaseParams() ReleaseParams {
	tok := f.token
	return ReleaseParams{
		Token:       func() (Token, error) { return tok, nil },
		Model:       testModel,
		PodUID:      testPodUID,
		ModelDigest: testDigest,
		Bundle:      testBundle,
		Key:         f.record,
	}
}

func (f *fixture) validRequest(t *testing.T) *ReleaseRequest {
	t.Helper()
	eph, err := NewEphemeralKey()
	if err != nil {
		t.Fatal(err)
	}
	return &ReleaseRequest{Version: ProtocolVersion, Token: f.token, Model: testModel, PodUID: testPodUID,
		ModelDigest: testDigest, Bundle: testBundle, Key: f.record, PublicKey: eph.PublicKey()}
}

// writeSelfSignedCA writes a CA certificate that signed nothing the tests
// serve.
func writeSelfSignedCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "another CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "other-ca.crt")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func logrDiscard() logr.Logger { return logr.Discard() }
