// Package keyrelease is the wire protocol between the operator's key-release
// endpoint and the init containers of protected pods: the unseal container
// asks for a bundle's data key (DEK), a sealing container asks for a fresh
// DEK to be wrapped by a ModelKey.
//
// A released DEK never crosses the wire in a form a copy of the TLS stream,
// a proxy or a log line could use: the pod sends an ephemeral X25519 public
// key and receives the DEK sealed to it with HPKE (RFC 9180,
// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM), bound by the AEAD's
// additional data to the model, its digest, the pod's UID and the key record.
//
// The release decision is not made here: the Server delegates it to a
// Verifier (TokenReview, pod, owner chain, pod spec, digest, ModelKey
// permission) and the key operations to a Keys, so that the controllers plug
// their checks in without this package importing them.
package keyrelease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"

	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

const (
	// Audience is the audience of the projected ServiceAccount token that
	// the init container presents. No other audience is accepted, so a token
	// the pod holds for the API server is useless here, and this one is
	// useless to the API server.
	Audience = mlv1alpha1.KeyReleaseAudience

	// ReleasePath is the endpoint that releases a bundle's data key.
	ReleasePath = "/v1/release"
	// WrapPath is the endpoint that wraps a sealing pod's fresh data key.
	WrapPath = "/v1/wrap"

	// ProtocolVersion is the version every request and response carries.
	ProtocolVersion = 1

	// MaxRequestBytes bounds a request body. A real request is about 3 KiB:
	// a token of 1-2 KiB and a wrapped key of at most MaxWrappedKeyBytes.
	MaxRequestBytes = 32 << 10
	// MaxResponseBytes bounds a response body the client reads.
	MaxResponseBytes = 16 << 10
	// MaxTokenBytes bounds the ServiceAccount token.
	MaxTokenBytes = 16 << 10
	// MaxWrappedKeyBytes bounds a wrapped data key, as sealed manifests do.
	MaxWrappedKeyBytes = 4096

	contentType = "application/json"
)

// Model kinds a request may name.
const (
	KindProtectedModel = "ProtectedModel"
	KindTrainingJob    = "TrainingJob"
)

// ErrBadRequest means a request (or, on the client, a response) is
// malformed: too large, not one JSON object, an unknown field, or a value out
// of bounds. Its messages name the field, never its value.
var ErrBadRequest = errors.New("malformed key-release message")

// Token is a ServiceAccount token. It prints as "[redacted]" with fmt and
// logr so that a request logged by mistake carries no credential; only
// encoding/json sees the value.
type Token string

// String redacts the token.
func (Token) String() string { return "[redacted]" }

// GoString redacts the token from %#v.
func (Token) GoString() string { return `"[redacted]"` }

// MarshalLog redacts the token from logr.
func (Token) MarshalLog() any { return "[redacted]" }

// SecretBytes is key material. It prints as "[redacted]" with fmt and logr;
// only encoding/json sees the value (base64).
type SecretBytes []byte

// String redacts the bytes.
func (SecretBytes) String() string { return "[redacted]" }

// GoString redacts the bytes from %#v.
func (SecretBytes) GoString() string { return `"[redacted]"` }

// MarshalLog redacts the bytes from logr.
func (SecretBytes) MarshalLog() any { return "[redacted]" }

// ModelRef names the ProtectedModel or TrainingJob a request is for.
type ModelRef struct {
	// Kind is KindProtectedModel or KindTrainingJob.
	Kind string `json:"kind"`
	// Namespace is the model's namespace.
	Namespace string `json:"namespace"`
	// Name is the model's name.
	Name string `json:"name"`
}

// String returns "Kind namespace/name", the form every message uses.
func (m ModelRef) String() string { return m.Kind + " " + m.Namespace + "/" + m.Name }

// ReleaseRequest asks for the data key of a sealed bundle.
type ReleaseRequest struct {
	// Version is ProtocolVersion.
	Version int `json:"version"`
	// Token is the pod's projected ServiceAccount token for Audience.
	Token Token `json:"token"`
	// Model is the model the pod serves or trains.
	Model ModelRef `json:"model"`
	// PodUID is the pod's UID (downward API). The Verifier checks it
	// against the token's pod claim; the sealed key is bound to it.
	PodUID string `json:"podUID"`
	// ModelDigest is the digest recorded in the bundle's manifest.
	ModelDigest string `json:"modelDigest"`
	// Bundle names the sealed bundle the wrapped key is bound to.
	Bundle BundleRef `json:"bundle"`
	// Key is the bundle's key record from its manifest: provider kind, key
	// ID and wrapped data key. None of it is secret.
	Key seal.KeyInfo `json:"key"`
	// PublicKey is the pod's ephemeral X25519 public key (32 bytes) that the
	// data key is sealed to.
	PublicKey []byte `json:"publicKey"`
}

// MarshalLog is what logr prints for a request: everything but the token.
func (r *ReleaseRequest) MarshalLog() any {
	return map[string]any{"model": r.Model.String(), "podUID": r.PodUID, "modelDigest": r.ModelDigest, "bundleId": r.Bundle.BundleID, "keyId": r.Key.ID}
}

// BundleRef names a sealed bundle: with the model digest it is the
// keys.Binding that a wrapped data key is bound to (docs/sealed-format.md).
type BundleRef struct {
	// FormatVersion is the manifest's format version.
	FormatVersion int `json:"formatVersion"`
	// BundleID is the manifest's bundleId, 32 lowercase hex digits.
	BundleID string `json:"bundleId"`
}

// Binding is the wrapping's binding for this bundle and digest.
func (b BundleRef) Binding(modelDigest string) keys.Binding {
	return keys.Binding{Version: b.FormatVersion, BundleID: b.BundleID, ModelDigest: modelDigest}
}

// BundleRefOf names the bundle a binding belongs to.
func BundleRefOf(b keys.Binding) BundleRef {
	return BundleRef{FormatVersion: b.Version, BundleID: b.BundleID}
}

// ReleaseResponse carries the released data key, sealed to the request's
// public key.
type ReleaseResponse struct {
	// Version is ProtocolVersion.
	Version int `json:"version"`
	// Suite names the HPKE cipher suite, for forensics; it is fixed.
	Suite string `json:"suite"`
	// SealedKey is the HPKE encapsulated key followed by the AEAD
	// ciphertext of the data key (see SealDataKey).
	SealedKey []byte `json:"sealedKey"`
}

// WrapRequest asks for a sealing pod's fresh data key to be wrapped by the
// ModelKey the Verifier chooses for the model. The data key travels only
// inside the TLS channel, in a SecretBytes that no log line prints.
type WrapRequest struct {
	// Version is ProtocolVersion.
	Version int `json:"version"`
	// Token is the pod's projected ServiceAccount token for Audience.
	Token Token `json:"token"`
	// Model is the TrainingJob (or model) whose output is being sealed.
	Model ModelRef `json:"model"`
	// PodUID is the pod's UID (downward API).
	PodUID string `json:"podUID"`
	// ModelDigest is the digest of the bundle being sealed, known once its
	// files are encrypted: format v2 wraps the data key last.
	ModelDigest string `json:"modelDigest"`
	// Bundle names the bundle being sealed; the wrapping is bound to it and
	// to ModelDigest.
	Bundle BundleRef `json:"bundle"`
	// DEK is the fresh 32-byte data key to wrap.
	DEK SecretBytes `json:"dek"`
}

// MarshalLog is what logr prints for a request: no token, no key.
func (r *WrapRequest) MarshalLog() any {
	return map[string]any{"model": r.Model.String(), "podUID": r.PodUID, "modelDigest": r.ModelDigest, "bundleId": r.Bundle.BundleID}
}

// WrapResponse carries the wrapped key record to put in the sealed manifest.
type WrapResponse struct {
	// Version is ProtocolVersion.
	Version int `json:"version"`
	// Key is the key record: provider kind, key ID and wrapped data key.
	Key seal.KeyInfo `json:"key"`
}

// ErrorResponse is the body of every non-200 response. Message names the
// model and the reason; it never holds a token or key bytes.
type ErrorResponse struct {
	// Reason is a CamelCase reason, e.g. PodSpecMismatch.
	Reason string `json:"reason"`
	// Message says what was refused and why.
	Message string `json:"message"`
}

// DecodeReleaseRequest reads and validates one release request. It accepts
// exactly one JSON object of at most MaxRequestBytes with no unknown fields,
// and fails with an error wrapping ErrBadRequest that names the offending
// field but never its value.
func DecodeReleaseRequest(r io.Reader) (*ReleaseRequest, error) {
	var req ReleaseRequest
	if err := decodeStrict(r, MaxRequestBytes, &req); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return &req, nil
}

// DecodeWrapRequest is DecodeReleaseRequest for a wrap request.
func DecodeWrapRequest(r io.Reader) (*WrapRequest, error) {
	var req WrapRequest
	if err := decodeStrict(r, MaxRequestBytes, &req); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return &req, nil
}

// Validate checks every field's bounds.
func (r *ReleaseRequest) Validate() error {
	if err := validateCommon(r.Version, r.Token, r.Model, r.PodUID); err != nil {
		return err
	}
	if !digestPattern.MatchString(r.ModelDigest) {
		return badRequest("modelDigest must be sha256: followed by 64 lowercase hex digits")
	}
	if err := validateBundle(r.Bundle, seal.MinFormatVersion); err != nil {
		return err
	}
	if err := validateKeyInfo("key", r.Key); err != nil {
		return err
	}
	if _, err := parsePublicKey(r.PublicKey); err != nil {
		return err
	}
	return nil
}

// Validate checks every field's bounds.
func (r *WrapRequest) Validate() error {
	if err := validateCommon(r.Version, r.Token, r.Model, r.PodUID); err != nil {
		return err
	}
	if !digestPattern.MatchString(r.ModelDigest) {
		return badRequest("modelDigest must be sha256: followed by 64 lowercase hex digits")
	}
	// New bundles are sealed in the current format, whose wrapping is bound.
	if err := validateBundle(r.Bundle, seal.FormatVersion); err != nil {
		return err
	}
	if len(r.DEK) != keys.DEKSize {
		return badRequest("dek must be %d bytes, got %d", keys.DEKSize, len(r.DEK))
	}
	return nil
}

var (
	digestPattern = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	// A manifest's bundleId.
	bundleIDPattern = regexp.MustCompile(`^[a-f0-9]{32}$`)
	// A Kubernetes UID is an RFC 4122 UUID in its text form.
	uidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	// A JWT in compact serialisation: three base64url segments.
	tokenPattern    = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)
	providerPattern = regexp.MustCompile(`^[a-z0-9][-a-z0-9]{0,62}$`)
)

func validateCommon(version int, token Token, model ModelRef, podUID string) error {
	if version != ProtocolVersion {
		return badRequest("version must be %d, got %d", ProtocolVersion, version)
	}
	switch {
	case token == "":
		return badRequest("token is required")
	case len(token) > MaxTokenBytes:
		return badRequest("token is %d bytes, more than %d", len(token), MaxTokenBytes)
	case !tokenPattern.MatchString(string(token)):
		return badRequest("token is not a JWT (three base64url segments separated by '.')")
	}
	if model.Kind != KindProtectedModel && model.Kind != KindTrainingJob {
		return badRequest("model.kind must be %s or %s", KindProtectedModel, KindTrainingJob)
	}
	if errs := validation.IsDNS1123Label(model.Namespace); len(errs) > 0 {
		return badRequest("model.namespace must be a DNS-1123 label")
	}
	if errs := validation.IsDNS1035Label(model.Name); len(errs) > 0 {
		return badRequest("model.name must be a DNS-1035 label")
	}
	if !uidPattern.MatchString(podUID) {
		return badRequest("podUID must be a lowercase UUID")
	}
	return nil
}

// validateBundle accepts format versions from minVersion to the current one
// and, for a bound (v2+) wrapping, a bundle id of 32 lowercase hex digits.
func validateBundle(b BundleRef, minVersion int) error {
	if b.FormatVersion < minVersion || b.FormatVersion > seal.FormatVersion {
		return badRequest("bundle.formatVersion must be %d to %d, got %d", minVersion, seal.FormatVersion, b.FormatVersion)
	}
	if b.Binding("").Bound() && !bundleIDPattern.MatchString(b.BundleID) {
		return badRequest("bundle.bundleId must be 32 lowercase hex digits")
	}
	return nil
}

func validateKeyInfo(field string, k seal.KeyInfo) error {
	if !providerPattern.MatchString(k.Provider) {
		return badRequest("%s.provider must be a provider kind such as %q", field, keys.KindKEK)
	}
	if k.ID == "" || len(k.ID) > 2048 || strings.ContainsFunc(k.ID, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return badRequest("%s.id must be 1 to 2048 printable ASCII characters without spaces", field)
	}
	if len(k.WrappedDEK) == 0 || len(k.WrappedDEK) > MaxWrappedKeyBytes {
		return badRequest("%s.wrappedDek must be 1 to %d bytes, got %d", field, MaxWrappedKeyBytes, len(k.WrappedDEK))
	}
	return nil
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// decodeStrict decodes exactly one JSON object of at most limit bytes into v,
// rejecting unknown fields and trailing data. encoding/json's own errors can
// quote input, so they are replaced by ones that give only the position or
// the field name.
func decodeStrict(r io.Reader, limit int64, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return fmt.Errorf("reading the message: %w", err)
	}
	if int64(len(data)) > limit {
		return badRequest("the message is larger than %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("%s", describeJSONError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("the message holds more than one JSON value")
	}
	return nil
}

// jsonTypeName is the JSON name of what a Go type decodes from.
func jsonTypeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	case reflect.String:
		return "string"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "base64 string"
		}
		return "array"
	}
	return "object"
}

func describeJSONError(err error) string {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("not valid JSON at byte %d", syntaxErr.Offset)
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return "the message must be a JSON object"
		}
		return fmt.Sprintf("field %s must be a JSON %s", typeErr.Field, jsonTypeName(typeErr.Type))
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the message is empty or truncated"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// Naming the field is what makes the error useful; it is cut short
		// so that a value sent as a field name is not echoed whole.
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		if len(name) > 40 {
			name = name[:40] + `..."`
		}
		return "unknown field " + name
	}
	// Other errors (e.g. bad base64) do not quote the input.
	return "not a valid message: " + err.Error()
}
