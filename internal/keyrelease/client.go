package keyrelease

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// ErrUnavailable means the key-release service did not answer usefully
// within the client's time budget: connection refused, timeouts or 5xx.
var ErrUnavailable = errors.New("the key-release service is unavailable")

// DeniedError is a final refusal by the server (any 4xx): the client does not
// retry it.
type DeniedError struct {
	// StatusCode is the HTTP status, e.g. 403.
	StatusCode int
	// Reason is the server's reason, e.g. PodSpecMismatch.
	Reason string
	// Message is the server's message, naming the model and the reason.
	Message string
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("key-release service refused (HTTP %d, %s): %s", e.StatusCode, e.Reason, e.Message)
}

// Backoff is the retry schedule while the service is unavailable: delays grow
// from Initial by a factor of 2 up to Max, each with up to half of it taken
// off at random so that pods restarted together do not retry together, and
// no attempt starts after MaxElapsed.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	MaxElapsed time.Duration
}

// DefaultBackoff waits out an operator restart or a leader change: 250 ms
// doubling to 10 s, for at most 5 minutes.
func DefaultBackoff() Backoff {
	return Backoff{Initial: 250 * time.Millisecond, Max: 10 * time.Second, MaxElapsed: 5 * time.Minute}
}

// delay returns the pause before retry n (0-based), with jitter.
func (b Backoff) delay(n int) time.Duration {
	d := b.Initial
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if d <= 1 {
		return d
	}
	return d - rand.N(d/2)
}

// ClientOptions configures a Client.
type ClientOptions struct {
	// URL is the service's base URL, e.g.
	// "https://modelguard-key-release.modelguard-system.svc:9443".
	URL string
	// CAFile is a PEM bundle of the CAs to trust, e.g. the ca.crt of the
	// CA ConfigMap mounted into the init container. RootCAs, if set, is
	// used instead.
	CAFile  string
	RootCAs *x509.CertPool
	// Backoff is the retry schedule; zero means DefaultBackoff.
	Backoff Backoff
	// AttemptTimeout bounds each request; zero means 15 s.
	AttemptTimeout time.Duration
	// Log receives a line per retry, never a token or key bytes.
	Log logr.Logger
}

// Client calls the key-release service from an init container.
type Client struct {
	base    *url.URL
	http    *http.Client
	backoff Backoff
	log     logr.Logger
}

// NewClient returns a client that trusts only the given CAs, over TLS 1.3.
func NewClient(opts ClientOptions) (*Client, error) {
	base, err := url.Parse(opts.URL)
	if err != nil || base.Scheme != "https" || base.Host == "" {
		return nil, fmt.Errorf("key-release URL %q must be an https URL with a host", opts.URL)
	}
	roots := opts.RootCAs
	if roots == nil {
		if opts.CAFile == "" {
			return nil, errors.New("key-release client needs a CA bundle to trust (CAFile)")
		}
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the key-release CA bundle: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the key-release CA bundle %s holds no PEM certificate", opts.CAFile)
		}
	}
	b := opts.Backoff
	if b == (Backoff{}) {
		b = DefaultBackoff()
	}
	timeout := opts.AttemptTimeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout: timeout,
		ForceAttemptHTTP2:   true,
		// Each attempt opens a fresh connection, so that after a restart
		// the retry reaches a live replica rather than a dead socket.
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	return &Client{
		base:    base,
		http:    &http.Client{Transport: transport, Timeout: timeout},
		backoff: b,
		log:     opts.Log,
	}, nil
}

// TokenSource returns the current ServiceAccount token. Projected tokens are
// rotated by the kubelet, so it is read again for every attempt.
type TokenSource func() (Token, error)

// TokenFile reads the token from a projected volume file.
func TokenFile(path string) TokenSource {
	return func() (Token, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("reading the ServiceAccount token: %w", err)
		}
		return Token(strings.TrimSpace(string(b))), nil
	}
}

// ReleaseParams is what the unseal init container knows.
type ReleaseParams struct {
	Token       TokenSource
	Model       ModelRef
	PodUID      string
	ModelDigest string
	// Bundle names the bundle, from its manifest.
	Bundle BundleRef
	// Key is the bundle's key record, from its manifest.
	Key seal.KeyInfo
}

// Release asks for the bundle's data key and returns it, opened in memory.
// The caller must clear it when done.
func (c *Client) Release(ctx context.Context, p ReleaseParams) ([]byte, error) {
	eph, err := NewEphemeralKey()
	if err != nil {
		return nil, err
	}
	build := func(tok Token) any {
		return &ReleaseRequest{Version: ProtocolVersion, Token: tok, Model: p.Model, PodUID: p.PodUID,
			ModelDigest: p.ModelDigest, Bundle: p.Bundle, Key: p.Key, PublicKey: eph.PublicKey()}
	}
	var resp ReleaseResponse
	if err := c.call(ctx, ReleasePath, p.Token, build, &resp); err != nil {
		return nil, err
	}
	if resp.Version != ProtocolVersion || resp.Suite != Suite {
		return nil, fmt.Errorf("key release for %s: %w: the response is version %d with suite %q, want %d with %q",
			p.Model, ErrBadRequest, resp.Version, resp.Suite, ProtocolVersion, Suite)
	}
	b := Binding{Model: p.Model, ModelDigest: p.ModelDigest, PodUID: p.PodUID, Key: p.Key}
	dek, err := eph.Open(resp.SealedKey, b)
	if err != nil {
		return nil, fmt.Errorf("key release for %s: %w", p.Model, err)
	}
	return dek, nil
}

// WrapParams is what a sealing init container knows.
type WrapParams struct {
	Token  TokenSource
	Model  ModelRef
	PodUID string
	// ModelDigest and Bundle name the bundle being sealed; the wrapping is
	// bound to them. SealingProvider fills them in from seal's binding.
	ModelDigest string
	Bundle      BundleRef
	// DEK is the fresh data key to wrap.
	DEK []byte
}

// Wrap has the operator wrap a fresh data key and returns the key record for
// the sealed manifest.
func (c *Client) Wrap(ctx context.Context, p WrapParams) (seal.KeyInfo, error) {
	if len(p.DEK) != keys.DEKSize {
		return seal.KeyInfo{}, fmt.Errorf("%w: a data key must be %d bytes, got %d", keys.ErrInvalidKey, keys.DEKSize, len(p.DEK))
	}
	build := func(tok Token) any {
		return &WrapRequest{Version: ProtocolVersion, Token: tok, Model: p.Model, PodUID: p.PodUID,
			ModelDigest: p.ModelDigest, Bundle: p.Bundle, DEK: SecretBytes(p.DEK)}
	}
	var resp WrapResponse
	if err := c.call(ctx, WrapPath, p.Token, build, &resp); err != nil {
		return seal.KeyInfo{}, err
	}
	if err := validateKeyInfo("key", resp.Key); err != nil {
		return seal.KeyInfo{}, fmt.Errorf("key wrap for %s: the response: %w", p.Model, err)
	}
	return resp.Key, nil
}

// call posts the request built for the current token until it gets a 200
// (decoded into out), a final refusal, or runs out of time.
func (c *Client) call(ctx context.Context, path string, tokens TokenSource, build func(Token) any, out any) error {
	if tokens == nil {
		return errors.New("key-release client needs a token source")
	}
	endpoint := c.base.JoinPath(path).String()
	start := time.Now()
	var lastErr error
	for attempt := 0; ; attempt++ {
		tok, err := tokens()
		if err != nil {
			return err
		}
		body, err := json.Marshal(build(tok))
		if err != nil {
			return fmt.Errorf("encoding the request: %w", err)
		}
		retryAfter, err := c.attempt(ctx, endpoint, body, out)
		clear(body)
		if err == nil {
			return nil
		}
		var denied *DeniedError
		if errors.As(err, &denied) || errors.Is(err, ErrBadRequest) || isCertificateError(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("key-release request to %s: %w", endpoint, ctx.Err())
		}
		lastErr = err
		wait := max(c.backoff.delay(attempt), min(retryAfter, c.backoff.Max))
		if time.Since(start)+wait > c.backoff.MaxElapsed {
			return fmt.Errorf("%w: %d attempts in %s, last: %w", ErrUnavailable, attempt+1, time.Since(start).Round(time.Millisecond), lastErr)
		}
		c.log.Info("Key-release service unavailable, retrying", "attempt", attempt+1, "wait", wait.String(), "error", err.Error())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("key-release request to %s: %w (last: %w)", endpoint, ctx.Err(), lastErr)
		case <-t.C:
		}
	}
}

// attempt makes one request. A retryable failure is returned as a plain
// error with the server's Retry-After, a final one as *DeniedError.
func (c *Client) attempt(ctx context.Context, endpoint string, body []byte, out any) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return 0, fmt.Errorf("reading the response: %w", err)
	}
	if len(data) > MaxResponseBytes {
		return 0, fmt.Errorf("%w: the response is larger than %d bytes", ErrBadRequest, MaxResponseBytes)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		if err := decodeStrict(bytes.NewReader(data), MaxResponseBytes, out); err != nil {
			return 0, fmt.Errorf("the key-release response: %w", err)
		}
		return 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return retryAfterOf(resp), fmt.Errorf("HTTP %d: %s", resp.StatusCode, errorMessage(data))
	default:
		var e ErrorResponse
		_ = json.Unmarshal(data, &e)
		if e.Message == "" {
			e.Message = errorMessage(data)
		}
		return 0, &DeniedError{StatusCode: resp.StatusCode, Reason: e.Reason, Message: e.Message}
	}
}

func retryAfterOf(resp *http.Response) time.Duration {
	s, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || s < 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

// errorMessage is the message of an error body, or its first line, short.
func errorMessage(data []byte) string {
	var e ErrorResponse
	if json.Unmarshal(data, &e) == nil && e.Message != "" {
		return e.Message
	}
	s, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func isCertificateError(err error) bool {
	var verr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	return errors.As(err, &verr) || errors.As(err, &unknownCA) || errors.As(err, &hostErr)
}
