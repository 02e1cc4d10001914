package main

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
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

const (
	testPodUID   = "0f0e0d0c-0b0a-4908-8706-050403020100"
	testModelKey = "nlp-models"
	testModelArg = keyrelease.KindProtectedModel + "/nlp/sentiment"
)

var testModel = keyrelease.ModelRef{Kind: keyrelease.KindProtectedModel, Namespace: "nlp", Name: "sentiment"}

// testBackoff keeps the key-release client's retries short; its schedule is
// tested in internal/keyrelease.
var testBackoff = keyrelease.Backoff{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, MaxElapsed: 10 * time.Second}

// testCA is a CA and a serving certificate it signed for loopback, as the
// operator's certificate machinery makes for the key-release Service.
type testCA struct {
	pem  string
	leaf tls.Certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "modelguard test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: mlv1alpha1.KeyReleaseServiceName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames:    []string{mlv1alpha1.KeyReleaseServiceName + ".modelguard-system.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, issuer, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{
		pem:  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey},
	}
}

// verifierFunc is a test Verifier that allows or denies as the test says.
// The real verifier (TokenReview, pod, owner chain, pod spec, digest,
// ModelKey permission) is tested against a real API server in
// internal/keyrelease and test/integration; here the CLI's side of the
// protocol is under test.
type verifierFunc func(ctx context.Context, c keyrelease.Claim) (keyrelease.Decision, error)

func (f verifierFunc) Verify(ctx context.Context, c keyrelease.Claim) (keyrelease.Decision, error) {
	return f(ctx, c)
}

// allow allows a release to the pod that holds the token.
func allow(token keyrelease.Token) keyrelease.Verifier {
	return verifierFunc(func(_ context.Context, c keyrelease.Claim) (keyrelease.Decision, error) {
		if c.Token != token {
			return keyrelease.Decision{Reason: mlv1alpha1.ReasonTokenRejected, Message: "the token was not accepted"}, nil
		}
		return keyrelease.Decision{Allowed: true, Pod: types.NamespacedName{Namespace: c.Model.Namespace, Name: "sentiment-7d9f8-abcde"},
			PodUID: c.PodUID, ModelKey: testModelKey}, nil
	})
}

// deny refuses every request, quoting the token in its message as a
// careless verifier might: the server must redact it.
func deny(reason, message string) keyrelease.Verifier {
	return verifierFunc(func(_ context.Context, c keyrelease.Claim) (keyrelease.Decision, error) {
		return keyrelease.Decision{Reason: reason, Message: message + " (token " + string(c.Token) + ")"}, nil
	})
}

// keyService is the real keyrelease.Server over loopback TLS 1.3, with a
// KEK behind the one ModelKey it knows.
type keyService struct {
	srv         *httptest.Server
	requests    atomic.Int32
	mu          sync.Mutex
	claims      []keyrelease.Claim
	tlsVersions []uint16
	log         bytes.Buffer
}

// newKeyService returns the service, not yet started, that decides with v
// and unwraps with kek under testModelKey.
func newKeyService(t *testing.T, ca *testCA, v keyrelease.Verifier, kek []byte) *keyService {
	t.Helper()
	ks := &keyService{}
	recording := verifierFunc(func(ctx context.Context, c keyrelease.Claim) (keyrelease.Decision, error) {
		ks.mu.Lock()
		ks.claims = append(ks.claims, c)
		ks.mu.Unlock()
		return v.Verify(ctx, c)
	})
	provider := keyrelease.ProviderKeys(func(_ context.Context, name string) (keys.Provider, error) {
		if name != testModelKey {
			return nil, &keyrelease.Denial{Reason: mlv1alpha1.ReasonModelKeyNotFound, Message: "ModelKey " + name + " does not exist"}
		}
		return keys.NewKEK(kek)
	})
	server, err := keyrelease.NewServer(keyrelease.ServerOptions{
		Verifier: recording,
		Keys:     provider,
		Log: funcr.New(func(prefix, args string) {
			ks.mu.Lock()
			defer ks.mu.Unlock()
			ks.log.WriteString(prefix + " " + args + "\n")
		}, funcr.Options{Verbosity: 10}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ks.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.requests.Add(1)
		ks.mu.Lock()
		ks.tlsVersions = append(ks.tlsVersions, r.TLS.Version)
		ks.mu.Unlock()
		server.ServeHTTP(w, r)
	}))
	ks.srv.EnableHTTP2 = true
	// Handshakes refused on purpose are the test's business, not noise.
	ks.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	ks.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{ca.leaf}}
	t.Cleanup(ks.srv.Close)
	return ks
}

// start serves on l, or on the server's own loopback listener if l is nil.
func (ks *keyService) start(l net.Listener) {
	if l != nil {
		ks.srv.Listener.Close()
		ks.srv.Listener = l
	}
	ks.srv.StartTLS()
}

// url is the service's URL once started.
func (ks *keyService) url() string { return ks.srv.URL }

// seen returns the claims the verifier was asked about and the TLS version
// of each request.
func (ks *keyService) seen() ([]keyrelease.Claim, []uint16) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return slices.Clone(ks.claims), slices.Clone(ks.tlsVersions)
}

func (ks *keyService) serverLog() string {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.log.String()
}

// keyReleaseFixture is a sealed bundle, the CA of the key-release service,
// and what a protected pod's unseal container has: a token file and its
// environment.
type keyReleaseFixture struct {
	*fixture
	ca        *testCA
	token     keyrelease.Token
	tokenFile string
	env       map[string]string
}

func newKeyReleaseFixture(t *testing.T) *keyReleaseFixture {
	t.Helper()
	kf := &keyReleaseFixture{fixture: newFixture(t), ca: newTestCA(t)}
	// Shaped like a projected ServiceAccount token: header.claims.signature.
	seg := func(n int) string { return base64.RawURLEncoding.EncodeToString(randomBytes(t, n)) }
	kf.token = keyrelease.Token(seg(36) + "." + seg(400) + "." + seg(256))
	kf.tokenFile = writeFile(t, filepath.Join(t.TempDir(), mlv1alpha1.KeyReleaseTokenFile), []byte(string(kf.token)+"\n"))
	kf.env = map[string]string{mlv1alpha1.EnvKeyReleaseCA: kf.ca.pem, mlv1alpha1.EnvPodUID: testPodUID}
	return kf
}

// service starts a key-release service that decides with v.
func (kf *keyReleaseFixture) service(t *testing.T, v keyrelease.Verifier) *keyService {
	t.Helper()
	ks := newKeyService(t, kf.ca, v, kf.kek)
	ks.start(nil)
	return ks
}

// unsealArgs is the command the operator's builder generates, with a token
// file and termination log of the test's own.
func (kf *keyReleaseFixture) unsealArgs(url, dest, termLog string) []string {
	return []string{"unseal", "--key-release", url, "--model", testModelArg, "--token-file", kf.tokenFile,
		"--expect-digest", kf.digest, "--progress", "log", "--termination-log", termLog, kf.bundle, dest}
}

// runCLIWith runs modelguard in-process with the given key-release backoff.
func runCLIWith(t *testing.T, backoff keyrelease.Backoff, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c := &cli{stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return env[k] }, keyReleaseBackoff: backoff}
	code := c.run(context.Background(), args)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// replaceFlagValues returns args with the value after each flag in replace
// set to the flag's new value.
func replaceFlagValues(args []string, replace map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if i > 0 {
			if v, ok := replace[args[i-1]]; ok {
				out[i] = v
			}
		}
	}
	return out
}

// TestUnsealKeyRelease unseals through the real key-release server: the
// released key opens the bundle, and every refusal leaves DEST empty and
// its reason in stderr and the termination log.
func TestUnsealKeyRelease(t *testing.T) {
	kf := newKeyReleaseFixture(t)
	otherKEK := randomBytes(t, keys.KEKSize)
	otherDigest := "sha256:" + strings.Repeat("0", 64)
	otherCA := newTestCA(t)
	missingToken := filepath.Join(t.TempDir(), "no-token")

	tests := []struct {
		name     string
		verifier keyrelease.Verifier
		// kek is the KEK behind the ModelKey; nil means the bundle's.
		kek []byte
		// flags and env replace values of the generated command and
		// environment.
		flags map[string]string
		env   map[string]string
		// requests is how many requests the server must see.
		requests int32
		// termLog is the termination log's exact line, or a prefix when
		// it ends in "…".
		termLog string
	}{
		{
			name:     "released",
			verifier: allow(kf.token),
			requests: 1,
			termLog:  "ok digest=" + kf.digest + " files=2 bytes=3145767 seconds=…",
		},
		{
			name:     "denied: pod spec differs",
			verifier: deny(mlv1alpha1.ReasonPodSpecMismatch, `pod spec differs from the generated template: container "sidecar" added`),
			requests: 1,
			termLog: `key release denied (PodSpecMismatch): key release for ProtectedModel nlp/sentiment refused: ` +
				`pod spec differs from the generated template: container "sidecar" added (token [redacted])`,
		},
		{
			name:     "denied: the ModelKey holds another KEK",
			verifier: allow(kf.token),
			kek:      otherKEK,
			requests: 1,
			termLog:  `key release denied (UnwrapFailed): key release for ProtectedModel nlp/sentiment refused: wrong key: …`,
		},
		{
			name:     "digest mismatch: refused before any request",
			verifier: allow(kf.token),
			flags:    map[string]string{"--expect-digest": otherDigest},
			requests: 0,
			termLog:  "model digest mismatch: the bundle holds " + kf.digest + ", expected " + otherDigest + "; no key was requested",
		},
		{
			name:     "server certificate from another CA: no request, no retry",
			verifier: allow(kf.token),
			env:      map[string]string{mlv1alpha1.EnvKeyReleaseCA: otherCA.pem},
			requests: 0,
			termLog:  "key release for ProtectedModel nlp/sentiment: Post \"https://127.0.0.1:…",
		},
		{
			name:     "no token file",
			verifier: allow(kf.token),
			flags:    map[string]string{"--token-file": missingToken},
			requests: 0,
			termLog:  "key release for ProtectedModel nlp/sentiment: reading the ServiceAccount token: open " + missingToken + ": no such file or directory",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kek := kf.kek
			if tt.kek != nil {
				kek = tt.kek
			}
			ks := newKeyService(t, kf.ca, tt.verifier, kek)
			ks.start(nil)
			env := map[string]string{}
			for k, v := range kf.env {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			dest := memDir(t)
			termLog := filepath.Join(t.TempDir(), "termination-log")
			r := runCLIWith(t, testBackoff, env, replaceFlagValues(kf.unsealArgs(ks.url(), dest, termLog), tt.flags)...)
			t.Logf("stderr:\n%s", r.stderr)

			if got := ks.requests.Load(); got != tt.requests {
				t.Errorf("the server saw %d requests, want %d", got, tt.requests)
			}
			line := strings.TrimSuffix(string(readFile(t, termLog)), "\n")
			if prefix, ok := strings.CutSuffix(tt.termLog, "…"); ok {
				if !strings.HasPrefix(line, prefix) {
					t.Errorf("termination log %q, want it to start with %q", line, prefix)
				}
			} else if line != tt.termLog {
				t.Errorf("termination log:\n got %q\nwant %q", line, tt.termLog)
			}
			if strings.Contains(line, "\n") {
				t.Errorf("termination log is not one line: %q", line)
			}
			kf.assertNoSecrets(t, "the output", r.stdout+r.stderr+line+ks.serverLog())

			if tt.requests == 1 {
				claims, versions := ks.seen()
				claim := claims[0]
				want := keyrelease.Claim{Operation: keyrelease.OperationRelease, Token: kf.token, Model: testModel,
					PodUID: testPodUID, ModelDigest: kf.digest, Key: &kf.manifest(t).Key}
				if diff := cmp.Diff(want, claim); diff != "" {
					t.Errorf("the claim the verifier saw (-want +got):\n%s", diff)
				}
				if v := versions[0]; v != tls.VersionTLS13 {
					t.Errorf("the request came over %s, want TLS 1.3", tls.VersionName(v))
				}
			}
			if strings.HasPrefix(line, "ok ") {
				if r.code != exitOK {
					t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
				}
				kf.checkUnsealed(t, dest)
				mustMatch(t, r.stderr, `(?m)^key release: data key for ProtectedModel nlp/sentiment released in \S+$`)
				return
			}
			if r.code != exitFail {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, exitFail, r.stderr)
			}
			if want := "modelguard unseal: " + line + "\n"; !strings.Contains(r.stderr, want) {
				t.Errorf("stderr %q lacks the one-line error %q", r.stderr, want)
			}
			if got := listTree(t, dest); len(got) != 0 {
				t.Errorf("a failed key release left %v in DEST", got)
			}
		})
	}
}

// TestKeyReleaseDenialClassified checks that a refusal is errKeyDenied and
// keeps the server's DeniedError for errors.As.
func TestKeyReleaseDenialClassified(t *testing.T) {
	err := error(&keyDeniedError{&keyrelease.DeniedError{StatusCode: 404, Message: "404 page not found"}})
	if !errors.Is(err, errKeyDenied) {
		t.Error("a refusal is not errKeyDenied")
	}
	var denied *keyrelease.DeniedError
	if !errors.As(err, &denied) || denied.StatusCode != 404 {
		t.Errorf("a refusal does not unwrap to its DeniedError: %v", err)
	}
	// A 4xx without a reason (e.g. a wrong URL path) shows its status.
	if got, want := err.Error(), "key release denied (HTTP 404): 404 page not found"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestKeyReleaseRetries has the service unavailable, then available: the
// client logs each retry on one line and the unseal succeeds.
func TestKeyReleaseRetries(t *testing.T) {
	kf := newKeyReleaseFixture(t)
	tests := []struct {
		name string
		// serve starts the service and returns its URL; up is called
		// after the CLI's first retry.
		serve func(t *testing.T) (url string, up func())
		// wantError is in the retry lines.
		wantError string
	}{
		{
			name: "connection refused until the operator starts",
			serve: func(t *testing.T) (string, func()) {
				// A port that nothing listens on until up, as while the
				// manager restarts.
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr := l.Addr().String()
				l.Close()
				ks := newKeyService(t, kf.ca, allow(kf.token), kf.kek)
				return "https://" + addr, func() {
					l, err := net.Listen("tcp", addr)
					if err != nil {
						t.Errorf("listening again on %s: %v", addr, err)
						return
					}
					ks.start(l)
				}
			},
			wantError: "connection refused",
		},
		{
			name: "the checks cannot be made (HTTP 503) twice",
			serve: func(t *testing.T) (string, func()) {
				var calls atomic.Int32
				allowed := allow(kf.token)
				ks := kf.service(t, verifierFunc(func(ctx context.Context, c keyrelease.Claim) (keyrelease.Decision, error) {
					if calls.Add(1) <= 2 {
						return keyrelease.Decision{}, errors.New("the API server did not answer")
					}
					return allowed.Verify(ctx, c)
				}))
				return ks.url(), func() {}
			},
			wantError: "HTTP 503: key release for ProtectedModel nlp/sentiment refused: the checks could not be made; retry",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, up := tt.serve(t)
			dest := memDir(t)
			termLog := filepath.Join(t.TempDir(), "termination-log")
			stderr := &signalWriter{match: "retrying", seen: make(chan struct{})}
			c := &cli{stdout: &bytes.Buffer{}, stderr: stderr, getenv: func(k string) string { return kf.env[k] }, keyReleaseBackoff: testBackoff}
			done := make(chan int)
			go func() { done <- c.run(context.Background(), kf.unsealArgs(url, dest, termLog)) }()

			var code int
			select {
			case <-stderr.seen:
				up()
				code = <-done
			case code = <-done:
				t.Fatalf("unseal finished (exit %d) without retrying; stderr:\n%s", code, stderr)
			case <-time.After(20 * time.Second):
				t.Fatalf("no retry within 20s; stderr:\n%s", stderr)
			}
			if code != exitOK {
				t.Fatalf("exit %d; stderr:\n%s", code, stderr)
			}
			kf.checkUnsealed(t, dest)
			t.Logf("stderr:\n%s", stderr)
			retries := 0
			for line := range strings.Lines(stderr.String()) {
				if strings.Contains(line, "retrying") {
					retries++
					mustMatch(t, line, `^key release: Key-release service unavailable, retrying attempt=\d+ wait=\d+(\.\d+)?m?s error=".*`+
						regexp.QuoteMeta(tt.wantError)+`.*"\n$`)
				}
			}
			if retries == 0 {
				t.Errorf("no retry line in stderr:\n%s", stderr)
			}
			kf.assertNoSecrets(t, "stderr", stderr.String())
		})
	}
}

// signalWriter is a goroutine-safe buffer that closes seen at the first
// write containing match.
type signalWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	match string
	seen  chan struct{}
	once  sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bytes.Contains(p, []byte(w.match)) {
		w.once.Do(func() { close(w.seen) })
	}
	return w.buf.Write(p)
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestKeyReleaseUsageErrors checks that a key-release command line that
// cannot work is refused as a usage error, naming what is missing or in
// conflict, before any request.
func TestKeyReleaseUsageErrors(t *testing.T) {
	kf := newKeyReleaseFixture(t)
	ks := kf.service(t, allow(kf.token))
	dir := t.TempDir()
	kekFile := writeFile(t, filepath.Join(dir, "kek"), kf.kek)
	full := func(extra ...string) []string {
		return append([]string{"unseal", kf.bundle, memDir(t), "--key-release", ks.url(), "--model", testModelArg,
			"--expect-digest", kf.digest, "--token-file", kf.tokenFile}, extra...)
	}
	without := func(args []string, flag string) []string {
		for i, a := range args {
			if a == flag {
				return append(append([]string(nil), args[:i]...), args[i+2:]...)
			}
		}
		t.Fatalf("no %s in %v", flag, args)
		return nil
	}
	envWithout := func(name string) map[string]string {
		env := map[string]string{}
		for k, v := range kf.env {
			if k != name {
				env[k] = v
			}
		}
		return env
	}
	withDEK := map[string]string{keys.DEKEnvVar: keys.EncodeDEK(kf.dek)}
	for k, v := range kf.env {
		withDEK[k] = v
	}

	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "with --dek-file", args: full("--dek-file", kekFile),
			want: "--key-release excludes --dek-file, --kek-file, --kek-secret and $MODELGUARD_DEK; got --dek-file"},
		{name: "with --kek-file and --kek-secret", args: full("--kek-file", kekFile, "--kek-secret", "ns/s:k"),
			want: "; got --kek-file, --kek-secret"},
		{name: "with $MODELGUARD_DEK", args: full(), env: withDEK, want: "; got $MODELGUARD_DEK"},
		{name: "without --model", args: without(full(), "--model"), want: "--key-release needs --model"},
		{name: "without --expect-digest", args: without(full(), "--expect-digest"), want: "--key-release needs --expect-digest"},
		{name: "with an empty --token-file", args: full("--token-file", ""), want: "--key-release needs --token-file"},
		{name: "without the CA", args: full(), env: envWithout(mlv1alpha1.EnvKeyReleaseCA),
			want: "--key-release needs $MODELGUARD_KEY_RELEASE_CA"},
		{name: "without the pod UID", args: full(), env: envWithout(mlv1alpha1.EnvPodUID),
			want: "--key-release needs $MODELGUARD_POD_UID"},
		{name: "without everything", args: []string{"unseal", kf.bundle, memDir(t), "--key-release", ks.url()}, env: map[string]string{},
			want: "--key-release needs --model, --expect-digest, $MODELGUARD_KEY_RELEASE_CA, $MODELGUARD_POD_UID"},
		{name: "an http URL", args: replaceFlagValues(full(), map[string]string{"--key-release": "http://127.0.0.1:1"}),
			want: `--key-release "http://127.0.0.1:1": want an https URL with a host`},
		{name: "a model of another kind", args: replaceFlagValues(full(), map[string]string{"--model": "Deployment/nlp/sentiment"}),
			want: `--model "Deployment/nlp/sentiment": kind must be ProtectedModel or TrainingJob`},
		{name: "a model without a namespace", args: replaceFlagValues(full(), map[string]string{"--model": "ProtectedModel/sentiment"}),
			want: `--model "ProtectedModel/sentiment": want Kind/namespace/name`},
		{name: "a model name that is no DNS label", args: replaceFlagValues(full(), map[string]string{"--model": "TrainingJob/nlp/Sentiment"}),
			want: `--model "TrainingJob/nlp/Sentiment": name: a DNS-1035 label`},
		{name: "a malformed digest", args: replaceFlagValues(full(), map[string]string{"--expect-digest": "sha256:abc"}),
			want: `--expect-digest "sha256:abc": want sha256:<64 lowercase hex>`},
		{name: "a CA that is not PEM", args: full(), env: map[string]string{mlv1alpha1.EnvKeyReleaseCA: "not a certificate", mlv1alpha1.EnvPodUID: testPodUID},
			want: "$MODELGUARD_KEY_RELEASE_CA holds no PEM certificate"},
		{name: "--model without --key-release", args: []string{"unseal", kf.bundle, memDir(t), "--model", testModelArg},
			want: "--model needs --key-release"},
		{name: "--model and --token-file without --key-release",
			args: []string{"unseal", kf.bundle, memDir(t), "--model", testModelArg, "--token-file", kf.tokenFile},
			want: "--model and --token-file need --key-release"},
		{name: "verify has no key release", args: []string{"verify", kf.bundle, "--key-release", ks.url()},
			want: "unknown flag: --key-release"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if env == nil {
				env = kf.env
			}
			r := runCLIWith(t, testBackoff, env, tt.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d (usage); stderr %q", r.code, exitUsage, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "--help' for usage") {
				t.Errorf("stderr %q, want %q and a pointer to --help", r.stderr, tt.want)
			}
		})
	}
	if n := ks.requests.Load(); n != 0 {
		t.Errorf("usage errors sent %d requests to the key-release service", n)
	}
}

func (f *fixture) manifest(t *testing.T) *seal.Manifest {
	t.Helper()
	m, err := seal.ReadManifest(context.Background(), f.bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// secrets are the KEK, the DEK and the token: no byte of them may be printed.
func (kf *keyReleaseFixture) secrets() map[string][]byte {
	// The signature alone would let a reader present the token.
	sig := string(kf.token)[strings.LastIndex(string(kf.token), ".")+1:]
	return map[string][]byte{"KEK": kf.kek, "DEK": kf.dek, "token": []byte(kf.token), "token signature": []byte(sig)}
}

// assertNoSecrets fails if text holds a secret in any of the forms keyForms
// lists.
func (kf *keyReleaseFixture) assertNoSecrets(t *testing.T, where, text string) {
	t.Helper()
	for name, key := range kf.secrets() {
		for _, form := range keyForms(key) {
			if strings.Contains(text, form) {
				t.Errorf("%s holds the %s as %q", where, name, form)
			}
		}
	}
}
