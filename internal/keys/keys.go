// Package keys wraps and unwraps the per-bundle data keys (DEKs) of sealed
// model bundles with a key-encryption key (KEK) that never leaves its
// provider.
//
// The first provider is a raw 256-bit KEK read from a file or a Kubernetes
// Secret. Cloud KMS and Vault Transit providers implement the same Provider
// interface, so the sealing format and the operator do not change when they
// arrive.
//
// Key material never appears in an error message: errors name the key's
// source and its fingerprint (ID), never its bytes.
package keys

import (
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
)

const (
	// KEKSize is the size of a raw key-encryption key: AES-256.
	KEKSize = 32
	// DEKSize is the size of a bundle's data key.
	DEKSize = 32

	// KindKEK is the provider kind of a raw 256-bit KEK, whatever holds it
	// (file or Secret): a bundle sealed with a KEK file opens with a Secret
	// holding the same bytes.
	KindKEK = "kek"

	// DEKEnvVar is the environment variable from which `modelguard unseal`
	// reads the DEK (base64) when no key flag is given, for unsealing by
	// hand. The operator never sets it: protected pods get their key from
	// the key-release service.
	DEKEnvVar = "MODELGUARD_DEK"
)

var (
	// ErrWrongKey means a wrapped DEK did not open: the KEK is not the one
	// the bundle was sealed with, or the wrapped DEK was modified.
	ErrWrongKey = errors.New("the wrapped data key does not open with this key-encryption key (wrong key, or the wrapped key was modified)")
	// ErrInvalidKey means key material has the wrong size or encoding.
	ErrInvalidKey = errors.New("invalid key material")
)

// Provider wraps and unwraps data keys. Implementations must never put key
// material (the KEK or a DEK) in an error or a log line.
type Provider interface {
	// Kind names the provider type recorded in a bundle's manifest, e.g.
	// "kek"; later "aws-kms" or "vault-transit".
	Kind() string
	// ID identifies the key-encryption key without revealing it: a
	// fingerprint for a raw KEK, a key ARN or name for a KMS.
	ID() string
	// Wrap encrypts a DEK under the KEK, bound to the bundle b names.
	Wrap(ctx context.Context, dek []byte, b Binding) ([]byte, error)
	// Unwrap decrypts a wrapped DEK; it returns an error wrapping ErrWrongKey
	// when the KEK does not match or the wrapping is bound to another
	// bundle than b.
	Unwrap(ctx context.Context, wrapped []byte, b Binding) ([]byte, error)
}

// KEK is a raw 256-bit key-encryption key. It wraps DEKs with AES-256-GCM
// under a random nonce; see docs/sealed-format.md.
type KEK struct {
	aead cipher.AEAD
	id   string
}

var _ Provider = (*KEK)(nil)

// wrapVersion prefixes every wrapped DEK so that the wrapping can change
// without guessing.
const wrapVersion byte = 1

// WrappedKEKSize is the size of a DEK wrapped by a KEK: version, nonce,
// ciphertext and tag.
const WrappedKEKSize = 1 + 12 + DEKSize + 16

// NewKEK returns a provider for a raw 32-byte KEK. It copies key.
func NewKEK(key []byte) (*KEK, error) {
	if len(key) != KEKSize {
		return nil, fmt.Errorf("%w: a KEK must be %d bytes, got %d", ErrInvalidKey, KEKSize, len(key))
	}
	aead, err := NewAESGCM(key)
	if err != nil {
		return nil, err
	}
	// The ID is derived, not a plain hash, so that it reveals nothing about
	// the key even to someone who could guess candidate keys' hashes.
	idBytes, err := hkdf.Key(sha256.New, key, nil, "modelguard/v1 key id", 8)
	if err != nil {
		return nil, fmt.Errorf("deriving key id: %w", err)
	}
	return &KEK{aead: aead, id: "kek:" + hex.EncodeToString(idBytes)}, nil
}

// GenerateKEK returns a fresh random KEK, encoded as base64 text suitable for
// a key file or a Secret.
func GenerateKEK() (string, error) {
	key := make([]byte, KEKSize)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	defer clear(key)
	return base64.StdEncoding.EncodeToString(key), nil
}

// ParseKEK accepts a KEK as 32 raw bytes, 64 hex characters or the base64 of
// 32 bytes (surrounding whitespace ignored), the forms people put in files
// and Secrets. Raw input that is all printable ASCII is refused: it is a
// passphrase, not 256 random bits.
func ParseKEK(data []byte) (*KEK, error) {
	if len(data) == KEKSize && printableASCII(data) {
		return nil, fmt.Errorf("KEK: %w: %d bytes of printable text look like a passphrase, not a raw 256-bit key; "+
			"store the key as base64 of 32 random bytes (what `head -c 32 /dev/urandom | base64` prints), or as 64 hex characters",
			ErrInvalidKey, len(data))
	}
	key, err := decodeKey(data, KEKSize)
	if err != nil {
		return nil, fmt.Errorf("KEK: %w", err)
	}
	defer clear(key)
	return NewKEK(key)
}

// LoadKEKFile reads a KEK from a file (see ParseKEK for the accepted forms).
func LoadKEKFile(path string) (*KEK, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading KEK file: %w", err)
	}
	defer clear(data)
	k, err := ParseKEK(data)
	if err != nil {
		return nil, fmt.Errorf("KEK file %s: %w", path, err)
	}
	return k, nil
}

// Kind returns KindKEK.
func (k *KEK) Kind() string { return KindKEK }

// ID returns the KEK's fingerprint, "kek:" and 16 hex digits.
func (k *KEK) ID() string { return k.id }

// Wrap encrypts dek under the KEK with b's AAD, which binds it to its
// purpose and, from format version 2, to its bundle.
func (k *KEK) Wrap(_ context.Context, dek []byte, b Binding) ([]byte, error) {
	if len(dek) != DEKSize {
		return nil, fmt.Errorf("%w: a data key must be %d bytes, got %d", ErrInvalidKey, DEKSize, len(dek))
	}
	out := make([]byte, 1+k.aead.NonceSize(), WrappedKEKSize)
	out[0] = wrapVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("reading random nonce: %w", err)
	}
	return k.aead.Seal(out, out[1:], dek, b.AAD()), nil
}

// Unwrap decrypts a DEK wrapped by Wrap with the same KEK and binding.
func (k *KEK) Unwrap(_ context.Context, wrapped []byte, b Binding) ([]byte, error) {
	if len(wrapped) != WrappedKEKSize {
		return nil, fmt.Errorf("wrapped data key is %d bytes, want %d: %w", len(wrapped), WrappedKEKSize, ErrWrongKey)
	}
	if wrapped[0] != wrapVersion {
		return nil, fmt.Errorf("wrapped data key has unknown version %d: %w", wrapped[0], ErrWrongKey)
	}
	nonce, sealed := wrapped[1:1+k.aead.NonceSize()], wrapped[1+k.aead.NonceSize():]
	dek, err := k.aead.Open(nil, nonce, sealed, b.AAD())
	if err != nil {
		// The AEAD error says nothing useful; ErrWrongKey says what to do.
		if b.Bound() {
			return nil, fmt.Errorf("key %s, for %s: %w", k.id, b, ErrWrongKey)
		}
		return nil, fmt.Errorf("key %s: %w", k.id, ErrWrongKey)
	}
	return dek, nil
}

// ParseDEK decodes a data key given as 32 raw bytes, 64 hex characters or
// base64 (the form in MODELGUARD_DEK).
func ParseDEK(data []byte) ([]byte, error) {
	dek, err := decodeKey(data, DEKSize)
	if err != nil {
		return nil, fmt.Errorf("data key: %w", err)
	}
	return dek, nil
}

// EncodeDEK encodes a data key as base64, the form of MODELGUARD_DEK and of
// KEK Secrets. Environment variables cannot hold arbitrary bytes, so the raw
// form is never used there.
func EncodeDEK(dek []byte) string { return base64.StdEncoding.EncodeToString(dek) }

// decodeKey decodes size bytes of key material. Its errors give lengths only,
// never content.
func decodeKey(data []byte, size int) ([]byte, error) {
	if len(data) == size {
		return append([]byte(nil), data...), nil
	}
	text := trimSpace(data)
	if len(text) == 2*size {
		key := make([]byte, size)
		if _, err := hex.Decode(key, text); err == nil {
			return key, nil
		}
		clear(key)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if enc.DecodedLen(len(text)) < size || enc.DecodedLen(len(text)) > size+2 {
			continue
		}
		key := make([]byte, enc.DecodedLen(len(text)))
		n, err := enc.Decode(key, text)
		if err == nil && n == size {
			return key[:n], nil
		}
		clear(key)
	}
	return nil, fmt.Errorf("%w: want %d raw bytes, %d hex characters or base64 of %d bytes; got %d bytes that are none of these",
		ErrInvalidKey, size, 2*size, size, len(data))
}

// printableASCII reports whether every byte is printable ASCII (space to
// tilde), which 32 random bytes are with a probability of about 1e-14.
func printableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// trimSpace trims ASCII whitespace without copying, so that no stray copy of
// key text is left behind.
func trimSpace(b []byte) []byte {
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}
