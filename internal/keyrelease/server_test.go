package keyrelease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	k8stypes "k8s.io/apimachinery/pkg/types"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

func newTestServer(t *testing.T, v Verifier, k Keys, logs *logBuffer, outcomes *[]Outcome) *Server {
	t.Helper()
	var mu sync.Mutex
	s, err := NewServer(ServerOptions{Verifier: v, Keys: k, Log: logs.logger(), OnOutcome: func(_ context.Context, o Outcome) {
		mu.Lock()
		defer mu.Unlock()
		if outcomes != nil {
			*outcomes = append(*outcomes, o)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestReleaseRoundTrip releases a data key wrapped by a real KEK over a real
// TLS loopback server, trusting the server through a CA file.
func TestReleaseRoundTrip(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	var outcomes []Outcome
	srv, caFile := tlsServer(t, newTestServer(t, f.allowWhen(), f.keysFor(), &logs, &outcomes))
	before := testutil.ToFloat64(ReleasesTotal.WithLabelValues(ResultReleased, mlv1alpha1.ReasonKeyReleased))

	c := newTestClient(t, srv.URL, caFile, fastBackoff(time.Second), logs.logger())
	dek, err := c.Release(context.Background(), f.releaseParams())
	if err != nil {
		t.Fatalf("release: %v", err)
	}
	if !bytes.Equal(dek, f.dek) {
		t.Fatal("released a different data key")
	}
	if got := testutil.ToFloat64(ReleasesTotal.WithLabelValues(ResultReleased, mlv1alpha1.ReasonKeyReleased)) - before; got != 1 {
		t.Errorf("modelguard_key_releases_total{result=released} grew by %v, want 1", got)
	}
	if len(outcomes) != 1 || outcomes[0].Result != ResultReleased || outcomes[0].Pod.Name != "sentiment-abc" || outcomes[0].Model != testModel {
		t.Errorf("outcomes = %+v, want one release to nlp/sentiment-abc", outcomes)
	}
	f.assertNoSecrets(t, "the log", logs.String())
	if !strings.Contains(logs.String(), "Key request granted") {
		t.Errorf("no log line for the release:\n%s", logs.String())
	}
}

// TestWrapRoundTrip wraps a sealing pod's fresh data key and checks that the
// record opens with the KEK to the same key.
func TestWrapRoundTrip(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	srv, caFile := tlsServer(t, newTestServer(t, f.allowWhen(), f.keysFor(), &logs, nil))
	c := newTestClient(t, srv.URL, caFile, fastBackoff(time.Second), logs.logger())
	fresh := randomBytes(t, keys.DEKSize)
	record, err := c.Wrap(context.Background(), WrapParams{Token: f.releaseParams().Token, Model: testModel, PodUID: testPodUID,
		ModelDigest: testDigest, Bundle: testBundle, DEK: fresh})
	if err != nil {
		t.Fatalf("wrap: %v", err)
	}
	if record.Provider != keys.KindKEK || record.ID != f.kek.ID() {
		t.Errorf("record names %s %s, want %s %s", record.Provider, record.ID, keys.KindKEK, f.kek.ID())
	}
	got, err := seal.UnwrapDEK(context.Background(), record, testBundle.Binding(testDigest), f.kek)
	if err != nil {
		t.Fatalf("unwrapping the returned record: %v", err)
	}
	// The service bound the wrapping to the bundle and digest it was sent.
	otherDigest := "sha256:" + strings.Repeat("b", 64)
	if _, err := seal.UnwrapDEK(context.Background(), record, testBundle.Binding(otherDigest), f.kek); err == nil {
		t.Error("the wrapped key also opens for another model digest")
	}
	if !bytes.Equal(got, fresh) {
		t.Fatal("the record wraps a different data key")
	}
	f.assertNoSecrets(t, "the log", logs.String())
	if strings.Contains(logs.String(), string(fresh)) {
		t.Error("the log contains the fresh data key")
	}
}

// TestDenials checks that each refusal is final (one request, no retry), maps
// to its status, names the model and reason, and leaks nothing: not in the
// client's error, the response body, or any log line.
func TestDenials(t *testing.T) {
	f := newFixture(t)
	deny := func(reason, msg string) Verifier {
		return verifierFunc(func(_ context.Context, c Claim) (Decision, error) {
			// A careless verifier that quotes the token must still leak
			// nothing.
			return Decision{Reason: reason, Message: msg + " (token " + string(c.Token) + ")"}, nil
		})
	}
	cases := []struct {
		name       string
		verifier   Verifier
		keys       Keys
		params     func(ReleaseParams) ReleaseParams
		wantStatus int
		wantReason string
		wantMsg    string
	}{
		{"pod spec differs", deny(mlv1alpha1.ReasonPodSpecMismatch, `pod spec differs from the generated template: container "sidecar" added`), f.keysFor(), nil,
			403, mlv1alpha1.ReasonPodSpecMismatch, `container "sidecar" added`},
		{"namespace not selected", deny(mlv1alpha1.ReasonKeyNotPermitted, "ModelKey nlp-models does not select namespace nlp"), f.keysFor(), nil,
			403, mlv1alpha1.ReasonKeyNotPermitted, "does not select namespace nlp"},
		{"wrong token", f.allowWhen(), f.keysFor(), func(p ReleaseParams) ReleaseParams {
			p.Token = func() (Token, error) { return "eyJh.eyJi.c2ln", nil }
			return p
		}, 403, mlv1alpha1.ReasonTokenRejected, "the token was not accepted"},
		{"wrong KEK", f.allowWhen(), ProviderKeys(func(context.Context, string) (keys.Provider, error) {
			other, err := keys.NewKEK(randomBytes(t, keys.KEKSize))
			return other, err
		}), nil, 403, mlv1alpha1.ReasonKeyUnwrapFailed, "wrong key"},
		{"ModelKey missing", f.allowWhen(), ProviderKeys(func(context.Context, string) (keys.Provider, error) {
			return nil, &Denial{Reason: mlv1alpha1.ReasonModelKeyNotFound, Message: "ModelKey nlp-models does not exist"}
		}), nil, 403, mlv1alpha1.ReasonModelKeyNotFound, "does not exist"},
		{"malformed digest", f.allowWhen(), f.keysFor(), func(p ReleaseParams) ReleaseParams {
			p.ModelDigest = "sha256:short"
			return p
		}, 400, mlv1alpha1.ReasonBadRequest, "modelDigest must be"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			var requests atomic.Int32
			var lastBody bytes.Buffer
			inner := newTestServer(t, tc.verifier, tc.keys, &logs, nil)
			srv, caFile := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, r)
				lastBody.Reset()
				lastBody.Write(rec.Body.Bytes())
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				_, _ = w.Write(rec.Body.Bytes())
			}))
			before := testutil.ToFloat64(ReleasesTotal.WithLabelValues(ResultDenied, tc.wantReason))
			c := newTestClient(t, srv.URL, caFile, fastBackoff(2*time.Second), logs.logger())
			p := f.releaseParams()
			if tc.params != nil {
				p = tc.params(p)
			}
			dek, err := c.Release(context.Background(), p)
			if dek != nil {
				t.Fatal("a refused release returned a key")
			}
			var denied *DeniedError
			if !errors.As(err, &denied) {
				t.Fatalf("want *DeniedError, got %T: %v", err, err)
			}
			if denied.StatusCode != tc.wantStatus || denied.Reason != tc.wantReason {
				t.Errorf("got HTTP %d %s, want %d %s", denied.StatusCode, denied.Reason, tc.wantStatus, tc.wantReason)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
			if tc.wantStatus == 403 && !strings.Contains(err.Error(), "ProtectedModel nlp/sentiment") {
				t.Errorf("error %q does not name the model", err)
			}
			if n := requests.Load(); n != 1 {
				t.Errorf("the client sent %d requests for a final refusal, want 1", n)
			}
			if got := testutil.ToFloat64(ReleasesTotal.WithLabelValues(ResultDenied, tc.wantReason)) - before; got != 1 {
				t.Errorf("modelguard_key_releases_total{result=denied,reason=%s} grew by %v, want 1", tc.wantReason, got)
			}
			f.assertNoSecrets(t, "the client's error", err.Error())
			f.assertNoSecrets(t, "the response body", lastBody.String())
			f.assertNoSecrets(t, "the log", logs.String())
			if !strings.Contains(logs.String(), tc.wantReason) {
				t.Errorf("the log does not record the reason %s:\n%s", tc.wantReason, logs.String())
			}
		})
	}
}

// TestRetriesUntilServerStarts starts the server only after the client has
// met a refused connection, as during an operator restart.
func TestRetriesUntilServerStarts(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	// Take a free loopback port and release it: until the server listens
	// on it, connections are refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()

	srv := httptest.NewUnstartedServer(newTestServer(t, f.allowWhen(), f.keysFor(), &logs, nil))
	defer srv.Close()
	// The CA file is written before the server starts, as the ConfigMap is
	// mounted before the operator answers.
	srv.StartTLS()
	caFile := writeCAFile(t, srv)
	tlsConfig := srv.TLS
	srv.Listener.Close()
	srv.Config.Close()

	late := &http.Server{Handler: srv.Config.Handler, TLSConfig: tlsConfig}
	started := make(chan struct{})
	var attemptsBefore atomic.Int32
	go func() {
		// Wait until the client has failed at least twice.
		for !strings.Contains(logs.String(), `"attempt"=2`) {
			time.Sleep(5 * time.Millisecond)
		}
		attemptsBefore.Store(int32(strings.Count(logs.String(), "Key-release service unavailable")))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listening on %s again: %v", addr, err)
			close(started)
			return
		}
		close(started)
		_ = late.ServeTLS(ln, "", "")
	}()
	defer late.Close()

	c := newTestClient(t, "https://"+addr, caFile, fastBackoff(20*time.Second), logs.logger())
	dek, err := c.Release(context.Background(), f.releaseParams())
	<-started
	if err != nil {
		t.Fatalf("release after a late start: %v\nlog:\n%s", err, logs.String())
	}
	if !bytes.Equal(dek, f.dek) {
		t.Fatal("released a different data key")
	}
	if n := attemptsBefore.Load(); n < 2 {
		t.Errorf("the client retried %d times before the server started, want at least 2", n)
	}
	if !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("the retries were not for refused connections:\n%s", logs.String())
	}
	f.assertNoSecrets(t, "the log", logs.String())
}

// TestRetriesThrough503 answers 503 (and one 502) before passing requests on.
func TestRetriesThrough503(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	inner := newTestServer(t, f.allowWhen(), f.keysFor(), &logs, nil)
	var requests atomic.Int32
	srv, caFile := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch requests.Add(1) {
		case 1, 2:
			w.WriteHeader(http.StatusServiceUnavailable)
		case 3:
			w.WriteHeader(http.StatusBadGateway)
		default:
			inner.ServeHTTP(w, r)
		}
	}))
	c := newTestClient(t, srv.URL, caFile, fastBackoff(10*time.Second), logs.logger())
	dek, err := c.Release(context.Background(), f.releaseParams())
	if err != nil {
		t.Fatalf("release through 503s: %v", err)
	}
	if !bytes.Equal(dek, f.dek) {
		t.Fatal("released a different data key")
	}
	if n := requests.Load(); n != 4 {
		t.Errorf("server saw %d requests, want 4", n)
	}
}

// TestVerifierUnavailableIsRetried makes the Verifier fail (as when the API
// server does not answer a TokenReview) and then recover.
func TestVerifierUnavailableIsRetried(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	var calls atomic.Int32
	allow := f.allowWhen()
	flaky := verifierFunc(func(ctx context.Context, c Claim) (Decision, error) {
		if calls.Add(1) == 1 {
			return Decision{}, errors.New("tokenreviews.authentication.k8s.io: connection refused")
		}
		return allow.Verify(ctx, c)
	})
	srv, caFile := tlsServer(t, newTestServer(t, flaky, f.keysFor(), &logs, nil))
	before := testutil.ToFloat64(ReleasesTotal.WithLabelValues(ResultError, mlv1alpha1.ReasonVerifierUnavailable))
	c := newTestClient(t, srv.URL, caFile, Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond, MaxElapsed: 5 * time.Second}, logs.logger())
	dek, err := c.Release(context.Background(), f.releaseParams())
	if err != nil || !bytes.Equal(dek, f.dek) {
		t.Fatalf("release after the verifier recovered: %v", err)
	}
	if got := testutil.ToFloat64(ReleasesTotal.WithLabelValues(ResultError, mlv1alpha1.ReasonVerifierUnavailable)) - before; got != 1 {
		t.Errorf("modelguard_key_releases_total{result=error,reason=VerifierUnavailable} grew by %v, want 1", got)
	}
}

// TestGivesUpWithinBudget checks the total time bound and cancellation.
func TestGivesUpWithinBudget(t *testing.T) {
	f := newFixture(t)
	var requests atomic.Int32
	srv, caFile := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Run("max elapsed", func(t *testing.T) {
		requests.Store(0)
		c := newTestClient(t, srv.URL, caFile, fastBackoff(500*time.Millisecond), logrDiscard())
		start := time.Now()
		_, err := c.Release(context.Background(), f.releaseParams())
		elapsed := time.Since(start)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("want ErrUnavailable, got %v", err)
		}
		if !strings.Contains(err.Error(), "HTTP 503") {
			t.Errorf("error %q does not give the last failure", err)
		}
		if n := requests.Load(); n < 2 {
			t.Errorf("%d requests, want retries", n)
		}
		// No attempt starts after MaxElapsed; the last one may take as
		// long as a loopback round trip.
		if elapsed > 500*time.Millisecond+2*time.Second {
			t.Errorf("gave up after %s, want about the 500ms budget", elapsed)
		}
	})
	t.Run("context cancelled", func(t *testing.T) {
		requests.Store(0)
		c := newTestClient(t, srv.URL, caFile, fastBackoff(time.Hour), logrDiscard())
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for requests.Load() < 2 {
				time.Sleep(time.Millisecond)
			}
			cancel()
		}()
		_, err := c.Release(ctx, f.releaseParams())
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled, got %v", err)
		}
	})
}

// TestTamperedResponseFails flips a bit of the sealed key in transit, as a
// proxy that terminates TLS could.
func TestTamperedResponseFails(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	inner := newTestServer(t, f.allowWhen(), f.keysFor(), &logs, nil)
	var requests atomic.Int32
	srv, caFile := tlsServer(t, rewriteResponse(inner, &requests, func(resp *ReleaseResponse) {
		resp.SealedKey[len(resp.SealedKey)-3] ^= 0x01
	}))
	c := newTestClient(t, srv.URL, caFile, fastBackoff(2*time.Second), logs.logger())
	dek, err := c.Release(context.Background(), f.releaseParams())
	if dek != nil || !errors.Is(err, ErrSealedKeyInvalid) {
		t.Fatalf("want ErrSealedKeyInvalid and no key, got %v", err)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("%d requests, want 1: a tampered response is final", n)
	}
	f.assertNoSecrets(t, "the error", err.Error())
}

// TestResponseSealedToAnotherKeyFails swaps the request's public key for an
// attacker's on the way in: the server seals to the attacker, who can open
// it, but the pod cannot; and the attacker's copy is bound to the real
// request, so it is no use for any other.
func TestResponseSealedToAnotherKeyFails(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	inner := newTestServer(t, f.allowWhen(), f.keysFor(), &logs, nil)
	attacker, err := NewEphemeralKey()
	if err != nil {
		t.Fatal(err)
	}
	var captured []byte
	srv, caFile := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req ReleaseRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			t.Errorf("decoding: %v", err)
		}
		req.PublicKey = attacker.PublicKey()
		body, _ := json.Marshal(&req)
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		var resp ReleaseResponse
		_ = json.Unmarshal(rec.Body.Bytes(), &resp)
		captured = resp.SealedKey
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	c := newTestClient(t, srv.URL, caFile, fastBackoff(2*time.Second), logs.logger())
	dek, err := c.Release(context.Background(), f.releaseParams())
	if dek != nil || !errors.Is(err, ErrSealedKeyInvalid) {
		t.Fatalf("want ErrSealedKeyInvalid and no key, got %v", err)
	}
	// The sealed key is usable only with the binding of the request it
	// answered.
	b := Binding{Model: testModel, ModelDigest: testDigest, PodUID: testPodUID, Key: f.record}
	if _, err := attacker.Open(captured, b); err != nil {
		t.Fatalf("the attacker's own key should open what was sealed to it: %v", err)
	}
	b.Model.Name = "other-model"
	if _, err := attacker.Open(captured, b); !errors.Is(err, ErrSealedKeyInvalid) {
		t.Fatalf("a sealed key opened under another binding: %v", err)
	}
}

// TestServerRefusals covers what the server refuses before any check.
func TestServerRefusals(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	var verified atomic.Int32
	counting := verifierFunc(func(ctx context.Context, c Claim) (Decision, error) {
		verified.Add(1)
		return f.allowWhen().Verify(ctx, c)
	})
	s := newTestServer(t, counting, f.keysFor(), &logs, nil)
	tlsSrv, _ := tlsServer(t, s)
	plain := httptest.NewServer(s)
	defer plain.Close()
	body := encode(t, f.validRequest(t))

	cases := []struct {
		name        string
		url         string
		method      string
		contentType string
		body        []byte
		wantStatus  int
	}{
		{"plain http", plain.URL + ReleasePath, http.MethodPost, "application/json", body, http.StatusBadRequest},
		{"GET", tlsSrv.URL + ReleasePath, http.MethodGet, "application/json", nil, http.StatusMethodNotAllowed},
		{"unknown path", tlsSrv.URL + "/v1/keys", http.MethodPost, "application/json", body, http.StatusNotFound},
		{"form content type", tlsSrv.URL + ReleasePath, http.MethodPost, "application/x-www-form-urlencoded", body, http.StatusUnsupportedMediaType},
		{"too large", tlsSrv.URL + ReleasePath, http.MethodPost, "application/json", bytes.Repeat([]byte(" "), MaxRequestBytes+10), http.StatusRequestEntityTooLarge},
		{"wrap with a release body", tlsSrv.URL + WrapPath, http.MethodPost, "application/json", body, http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, tc.url, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", tc.contentType)
			resp, err := tlsSrv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("HTTP %d, want %d: %s", resp.StatusCode, tc.wantStatus, data)
			}
			f.assertNoSecrets(t, "the response", string(data))
		})
	}
	if n := verified.Load(); n != 0 {
		t.Errorf("the Verifier was asked %d times about refused requests", n)
	}
	f.assertNoSecrets(t, "the log", logs.String())
}

// TestInconsistentVerifierIsRefused: an allow for another pod UID must not
// release a key bound to it.
func TestInconsistentVerifierIsRefused(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	v := verifierFunc(func(_ context.Context, c Claim) (Decision, error) {
		return Decision{Allowed: true, PodUID: "11111111-1111-4111-8111-111111111111", ModelKey: testKey}, nil
	})
	srv, caFile := tlsServer(t, newTestServer(t, v, f.keysFor(), &logs, nil))
	c := newTestClient(t, srv.URL, caFile, fastBackoff(300*time.Millisecond), logs.logger())
	if dek, err := c.Release(context.Background(), f.releaseParams()); dek != nil || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("want no key and ErrUnavailable (HTTP 500 is retried), got %v", err)
	}
}

func TestClientRefusesUntrustedServer(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	srv, _ := tlsServer(t, newTestServer(t, f.allowWhen(), f.keysFor(), &logs, nil))
	// httptest servers share one certificate, so the other CA is made here.
	otherCA := writeSelfSignedCA(t)
	c := newTestClient(t, srv.URL, otherCA, fastBackoff(5*time.Second), logs.logger())
	start := time.Now()
	_, err := c.Release(context.Background(), f.releaseParams())
	if err == nil || !isCertificateError(err) {
		t.Fatalf("want a certificate error, got %v", err)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Errorf("an untrusted server was retried until the budget ran out: %v (%s)", err, time.Since(start))
	}
	if strings.Contains(logs.String(), "Key request granted") {
		t.Error("the server granted a request over an untrusted connection")
	}
}

// rewriteResponse passes requests to inner and lets edit change a release
// response on its way back.
func rewriteResponse(inner http.Handler, requests *atomic.Int32, edit func(*ReleaseResponse)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		var resp ReleaseResponse
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err == nil && rec.Code == http.StatusOK {
			edit(&resp)
			body, _ := json.Marshal(&resp)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(body)
			return
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

// TestMetricOnManagerRegistry checks that the counter is served by the
// manager's metrics endpoint, which gathers controller-runtime's registry.
func TestMetricOnManagerRegistry(t *testing.T) {
	ReleasesTotal.WithLabelValues(ResultDenied, mlv1alpha1.ReasonBadRequest).Add(0)
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() == "modelguard_key_releases_total" {
			labels := map[string]bool{}
			for _, l := range mf.GetMetric()[0].GetLabel() {
				labels[l.GetName()] = true
			}
			if !labels["result"] || !labels["reason"] || len(labels) != 2 {
				t.Errorf("labels %v, want result and reason", labels)
			}
			return
		}
	}
	t.Fatal("modelguard_key_releases_total is not on controller-runtime's metrics registry")
}

// TestProviderOutageDoesNotSpendTheRelease: the Verifier records a release
// when it allows it; when the provider then fails (503, retried by the pod),
// the server undoes that record, so that the same unseal run's retry is
// released instead of refused as a second release.
func TestProviderOutageDoesNotSpendTheRelease(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	var ledger releaseLedger
	allow := f.allowWhen()
	onceVerifier := verifierFunc(func(ctx context.Context, c Claim) (Decision, error) {
		d, err := allow.Verify(ctx, c)
		if err != nil || !d.Allowed {
			return d, err
		}
		if first, _ := ledger.claim(k8stypes.UID(c.PodUID), "run-1"); !first {
			return Decision{Reason: mlv1alpha1.ReasonAlreadyReleased, Message: "already released"}, nil
		}
		d.Undo = func() { ledger.forget(k8stypes.UID(c.PodUID), "run-1") }
		return d, nil
	})
	var unwraps atomic.Int32
	flaky := ProviderKeys(func(ctx context.Context, name string) (keys.Provider, error) {
		if unwraps.Add(1) == 1 {
			return nil, errors.New("KMS throttled the request")
		}
		return f.kek, nil
	})
	srv, caFile := tlsServer(t, newTestServer(t, onceVerifier, flaky, &logs, nil))
	c := newTestClient(t, srv.URL, caFile, fastBackoff(10*time.Second), logs.logger())
	dek, err := c.Release(context.Background(), f.releaseParams())
	if err != nil {
		t.Fatalf("release after a provider outage: %v", err)
	}
	if !bytes.Equal(dek, f.dek) {
		t.Fatal("released a different data key")
	}
	if n := unwraps.Load(); n != 2 {
		t.Errorf("provider asked %d times, want 2 (one outage, one release)", n)
	}
	// A second request of the same run is still refused.
	if _, err := c.Release(context.Background(), f.releaseParams()); err == nil {
		t.Error("a second release of the same run was not refused")
	}
}
