package keyrelease

import (
	"context"
	"errors"

	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// ErrUnwrapNotOffered means a SealingProvider was asked to unwrap: a pod
// gets a data key only through Client.Release, never by unwrapping itself.
var ErrUnwrapNotOffered = errors.New("a sealing pod cannot unwrap data keys; they are released by the key-release service")

// SealingProvider is the keys.Provider a sealing pod hands to seal.Seal: its
// Wrap has the key-release service wrap the fresh data key with the model's
// ModelKey, so the KEK never reaches the pod. Kind and ID are those of the
// record the service returned, so they are known only after Wrap, which is
// when seal.Seal asks for them.
type SealingProvider struct {
	client *Client
	params WrapParams
	record seal.KeyInfo
}

var _ keys.Provider = (*SealingProvider)(nil)

// NewSealingProvider returns a provider that wraps through c for the pod and
// model in p (p.DEK, p.ModelDigest and p.Bundle are ignored: Wrap takes them
// from the data key and binding seal hands it).
func NewSealingProvider(c *Client, p WrapParams) *SealingProvider {
	p.DEK, p.ModelDigest, p.Bundle = nil, "", BundleRef{}
	return &SealingProvider{client: c, params: p}
}

// Kind returns the wrapping provider's kind, after Wrap.
func (s *SealingProvider) Kind() string { return s.record.Provider }

// ID returns the wrapping key's ID after Wrap, and what will wrap before.
func (s *SealingProvider) ID() string {
	if s.record.ID == "" {
		return "the key-release service's ModelKey for " + s.params.Model.String()
	}
	return s.record.ID
}

// Wrap sends dek to the key-release service, which wraps it bound to b, and
// returns the wrapped key.
func (s *SealingProvider) Wrap(ctx context.Context, dek []byte, b keys.Binding) ([]byte, error) {
	p := s.params
	p.DEK, p.ModelDigest, p.Bundle = dek, b.ModelDigest, BundleRefOf(b)
	rec, err := s.client.Wrap(ctx, p)
	if err != nil {
		return nil, err
	}
	s.record = rec
	return rec.WrappedDEK, nil
}

// Unwrap refuses: see ErrUnwrapNotOffered.
func (s *SealingProvider) Unwrap(context.Context, []byte, keys.Binding) ([]byte, error) {
	return nil, ErrUnwrapNotOffered
}
