package keyrelease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// Operation is what a pod asks for.
type Operation string

const (
	// OperationRelease is a request for a bundle's data key.
	OperationRelease Operation = "release"
	// OperationWrap is a request to wrap a fresh data key.
	OperationWrap Operation = "wrap"
)

// Claim is what a request claims, for the Verifier to check. The token is
// unverified: checking it (TokenReview, audience Audience) is the
// Verifier's first job.
type Claim struct {
	Operation Operation
	Token     Token
	Model     ModelRef
	// PodUID is the UID the pod says it has; the Verifier must check it
	// against the token's pod claim.
	PodUID string
	// ModelDigest is the bundle's digest: for a release, the Verifier
	// checks it against the model's spec; for a wrap, it is the digest of
	// the output being sealed.
	ModelDigest string
	// Key is set for OperationRelease only.
	Key *seal.KeyInfo
}

// Decision is a Verifier's verdict.
type Decision struct {
	// Allowed releases (or wraps) the key.
	Allowed bool
	// Reason is a CamelCase reason from the API package, e.g.
	// mlv1alpha1.ReasonPodSpecMismatch; required when denied.
	Reason string
	// Message says why, for the pod's log and the model's Event, e.g.
	// `pod spec differs from the generated template: container "sidecar"
	// added`. It must hold no token or key bytes.
	Message string
	// Pod is the pod the token was verified for.
	Pod types.NamespacedName
	// PodUID is the verified pod's UID. An allowed decision must carry the
	// claim's PodUID; the server refuses anything else, because the sealed
	// key is bound to it.
	PodUID string
	// ModelKey is the ModelKey to unwrap or wrap with, from the model's
	// spec; required when allowed.
	ModelKey string
	// Undo, when set, forgets what the Verifier recorded for an allowed
	// decision (e.g. that this unseal run got its key). The server calls it
	// when it could not finish the request for a reason the pod may retry,
	// so that the retry is not refused as a second release.
	Undo func()
}

// Verifier makes the release decision. An error means the decision could not
// be made (e.g. the API server did not answer); the pod is told to retry.
type Verifier interface {
	Verify(ctx context.Context, claim Claim) (Decision, error)
}

// Keys does the key operations with a ModelKey's provider. An error that is a
// *Denial, or wraps keys.ErrWrongKey or keys.ErrInvalidKey, is final; any
// other error means the provider is unavailable and the pod retries.
type Keys interface {
	// Unwrap returns the data key of a bundle's key record.
	Unwrap(ctx context.Context, modelKey string, record seal.KeyInfo, binding keys.Binding) ([]byte, error)
	// Wrap wraps a fresh data key, bound to binding, and returns the record
	// for the manifest.
	Wrap(ctx context.Context, modelKey string, dek []byte, binding keys.Binding) (seal.KeyInfo, error)
}

// Denial is a final refusal with its reason. A Keys implementation returns it,
// e.g. for a ModelKey that is not Ready.
type Denial struct {
	Reason  string
	Message string
}

func (d *Denial) Error() string { return d.Reason + ": " + d.Message }

// ProviderKeys implements Keys with a keys.Provider looked up by ModelKey
// name, e.g. from a ModelKey's Secret in the operator's namespace.
type ProviderKeys func(ctx context.Context, modelKey string) (keys.Provider, error)

var _ Keys = ProviderKeys(nil)

// Unwrap checks that the record names the provider's kind and key ID, then
// unwraps.
func (f ProviderKeys) Unwrap(ctx context.Context, modelKey string, record seal.KeyInfo, binding keys.Binding) ([]byte, error) {
	p, err := f(ctx, modelKey)
	if err != nil {
		return nil, err
	}
	return seal.UnwrapDEK(ctx, record, binding, p)
}

// Wrap wraps dek with the provider.
func (f ProviderKeys) Wrap(ctx context.Context, modelKey string, dek []byte, binding keys.Binding) (seal.KeyInfo, error) {
	p, err := f(ctx, modelKey)
	if err != nil {
		return seal.KeyInfo{}, err
	}
	wrapped, err := p.Wrap(ctx, dek, binding)
	if err != nil {
		return seal.KeyInfo{}, fmt.Errorf("wrapping with %s: %w", p.ID(), err)
	}
	return seal.KeyInfo{Provider: p.Kind(), ID: p.ID(), WrappedDEK: wrapped}, nil
}

// Results of modelguard_key_releases_total.
const (
	ResultReleased = "released"
	ResultWrapped  = "wrapped"
	ResultDenied   = "denied"
	// ResultError counts requests that failed for a reason the pod can wait
	// out: verifier or provider unavailable, or an internal error.
	ResultError = "error"
)

// ReleasesTotal counts every key-release and wrap request by result and
// reason. It is registered with controller-runtime's metrics registry, so the
// manager's metrics endpoint serves it.
var ReleasesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "modelguard_key_releases_total",
	Help: "Key-release and key-wrap requests by result (released, wrapped, denied, error) and reason.",
}, []string{"result", "reason"})

func init() {
	ctrlmetrics.Registry.MustRegister(ReleasesTotal)
}

// Outcome is one request's result, passed to ServerOptions.OnOutcome, e.g.
// to record an Event on the model.
type Outcome struct {
	Operation Operation
	Model     ModelRef
	Pod       types.NamespacedName
	Result    string
	Reason    string
	Message   string
}

// ServerOptions configures a Server.
type ServerOptions struct {
	// Verifier makes the release decision; required.
	Verifier Verifier
	// Keys unwraps and wraps; required.
	Keys Keys
	// Log receives one line per request, never a token or key bytes.
	Log logr.Logger
	// OnOutcome, if set, is called after each decided request.
	OnOutcome func(ctx context.Context, o Outcome)
}

// Server is the key-release endpoint, an http.Handler for ReleasePath and
// WrapPath. Serve it over TLS only: it refuses requests that did not arrive
// over TLS.
type Server struct {
	opts ServerOptions
	mux  *http.ServeMux
}

// NewServer returns a Server.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Verifier == nil || opts.Keys == nil {
		return nil, errors.New("key-release server needs a Verifier and a Keys")
	}
	s := &Server{opts: opts, mux: http.NewServeMux()}
	s.mux.HandleFunc("POST "+ReleasePath, s.serveRelease)
	s.mux.HandleFunc("POST "+WrapPath, s.serveWrap)
	return s, nil
}

// ServeHTTP serves the two endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.TLS == nil {
		s.reply(r.Context(), w, http.StatusBadRequest, nil, Outcome{Result: ResultDenied, Reason: mlv1alpha1.ReasonBadRequest,
			Message: "key release is served over TLS only"})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// result is the outcome of one request and the status it maps to.
type result struct {
	status  int
	outcome Outcome
}

func (s *Server) serveRelease(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if res, ok := checkContentType(r); !ok {
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	req, err := DecodeReleaseRequest(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	if err != nil {
		res := decodeFailure(OperationRelease, err)
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	claim := Claim{Operation: OperationRelease, Token: req.Token, Model: req.Model, PodUID: req.PodUID, ModelDigest: req.ModelDigest, Key: &req.Key}
	decision, res, ok := s.verify(ctx, claim)
	if !ok {
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	// The Verifier has checked ModelDigest against the model's spec, so the
	// wrapping opens only for the bundle the spec pins.
	dek, err := s.opts.Keys.Unwrap(ctx, decision.ModelKey, req.Key, req.Bundle.Binding(req.ModelDigest))
	if err != nil {
		res := keysFailure(claim, decision, err)
		s.undoIfRetryable(decision, res)
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	defer clear(dek)
	sealed, err := SealDataKey(req.PublicKey, BindingFor(req), dek)
	if err != nil {
		res := result{http.StatusInternalServerError, outcomeOf(claim, decision, ResultError, "SealFailed",
			"sealing the data key to the pod's public key failed")}
		s.undoIfRetryable(decision, res)
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	s.reply(ctx, w, http.StatusOK, &ReleaseResponse{Version: ProtocolVersion, Suite: Suite, SealedKey: sealed},
		outcomeOf(claim, decision, ResultReleased, mlv1alpha1.ReasonKeyReleased, "data key released to pod "+decision.Pod.String()))
}

func (s *Server) serveWrap(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if res, ok := checkContentType(r); !ok {
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	req, err := DecodeWrapRequest(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	if err != nil {
		res := decodeFailure(OperationWrap, err)
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	defer clear(req.DEK)
	claim := Claim{Operation: OperationWrap, Token: req.Token, Model: req.Model, PodUID: req.PodUID, ModelDigest: req.ModelDigest}
	decision, res, ok := s.verify(ctx, claim)
	if !ok {
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	record, err := s.opts.Keys.Wrap(ctx, decision.ModelKey, req.DEK, req.Bundle.Binding(req.ModelDigest))
	if err != nil {
		res := keysFailure(claim, decision, err)
		s.reply(ctx, w, res.status, nil, res.outcome)
		return
	}
	s.reply(ctx, w, http.StatusOK, &WrapResponse{Version: ProtocolVersion, Key: record},
		outcomeOf(claim, decision, ResultWrapped, mlv1alpha1.ReasonKeyWrapped, "data key wrapped for pod "+decision.Pod.String()))
}

// undoIfRetryable forgets an allowed decision whose request failed with a
// status the client retries (5xx): the pod never received anything, and its
// retry must not be refused as a second release.
func (s *Server) undoIfRetryable(d Decision, res result) {
	if d.Undo != nil && res.status >= http.StatusInternalServerError {
		d.Undo()
	}
}

// verify asks the Verifier and turns anything but a consistent allow into a
// result to send.
func (s *Server) verify(ctx context.Context, claim Claim) (Decision, result, bool) {
	d, err := s.opts.Verifier.Verify(ctx, claim)
	if err != nil {
		s.opts.Log.Error(err, "Key-release checks could not be made", "model", claim.Model.String(), "operation", claim.Operation)
		return d, result{http.StatusServiceUnavailable, outcomeOf(claim, d, ResultError, mlv1alpha1.ReasonVerifierUnavailable,
			"the checks could not be made; retry")}, false
	}
	if !d.Allowed {
		reason := d.Reason
		if reason == "" {
			reason = "Denied"
		}
		return d, result{http.StatusForbidden, outcomeOf(claim, d, ResultDenied, reason, redact(d.Message, claim.Token))}, false
	}
	if d.PodUID != claim.PodUID || d.ModelKey == "" {
		// A Verifier bug must not release a key bound to another pod.
		return d, result{http.StatusInternalServerError, outcomeOf(claim, d, ResultError, "VerifierInconsistent",
			"the checks allowed the request without naming the same pod UID and a ModelKey")}, false
	}
	return d, result{}, true
}

func checkContentType(r *http.Request) (result, bool) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != contentType {
		return result{http.StatusUnsupportedMediaType, Outcome{Result: ResultDenied, Reason: mlv1alpha1.ReasonBadRequest,
			Message: "the request must be " + contentType}}, false
	}
	return result{}, true
}

func decodeFailure(op Operation, err error) result {
	status := http.StatusBadRequest
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) || strings.Contains(err.Error(), "larger than") {
		status = http.StatusRequestEntityTooLarge
	}
	msg := err.Error()
	if !errors.Is(err, ErrBadRequest) {
		msg = "the request could not be read"
	}
	return result{status, Outcome{Operation: op, Result: ResultDenied, Reason: mlv1alpha1.ReasonBadRequest, Message: msg}}
}

// keysFailure maps a Keys error: final refusals are 403, the rest 503.
func keysFailure(claim Claim, d Decision, err error) result {
	var denial *Denial
	switch {
	case errors.As(err, &denial):
		return result{http.StatusForbidden, outcomeOf(claim, d, ResultDenied, denial.Reason, redact(denial.Message, claim.Token))}
	case errors.Is(err, keys.ErrWrongKey), errors.Is(err, keys.ErrInvalidKey):
		// keys and seal errors name key IDs (fingerprints), never bytes.
		return result{http.StatusForbidden, outcomeOf(claim, d, ResultDenied, mlv1alpha1.ReasonKeyUnwrapFailed, redact(err.Error(), claim.Token))}
	}
	return result{http.StatusServiceUnavailable, outcomeOf(claim, d, ResultError, mlv1alpha1.ReasonKeyProviderUnavailable,
		fmt.Sprintf("ModelKey %s is unavailable; retry", d.ModelKey))}
}

func outcomeOf(claim Claim, d Decision, res, reason, msg string) Outcome {
	return Outcome{Operation: claim.Operation, Model: claim.Model, Pod: d.Pod, Result: res, Reason: reason, Message: msg}
}

// redact removes the token from a message, in case a Verifier quoted it.
func redact(msg string, token Token) string {
	if token == "" {
		return msg
	}
	return strings.ReplaceAll(msg, string(token), "[redacted]")
}

// reply counts, logs and reports the outcome and writes the response: body
// on success, an ErrorResponse otherwise.
func (s *Server) reply(ctx context.Context, w http.ResponseWriter, status int, body any, o Outcome) {
	ReleasesTotal.WithLabelValues(o.Result, o.Reason).Inc()
	kv := []any{"operation", o.Operation, "result", o.Result, "reason", o.Reason, "status", status}
	if o.Model.Name != "" {
		kv = append(kv, "model", o.Model.String())
	}
	if o.Pod.Name != "" {
		kv = append(kv, "pod", o.Pod.String())
	}
	switch o.Result {
	case ResultReleased, ResultWrapped:
		s.opts.Log.Info("Key request granted", kv...)
	default:
		s.opts.Log.Info("Key request refused", append(kv, "message", o.Message)...)
	}
	if s.opts.OnOutcome != nil && o.Model.Name != "" {
		s.opts.OnOutcome(ctx, o)
	}
	if body == nil {
		msg := o.Message
		if o.Model.Name != "" {
			msg = fmt.Sprintf("key %s for %s refused: %s", o.Operation, o.Model, o.Message)
		}
		body = &ErrorResponse{Reason: o.Reason, Message: msg}
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
