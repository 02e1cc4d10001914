package keyrelease

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// Suite names the one HPKE cipher suite (RFC 9180, base mode) the protocol
// uses. It is fixed: a server cannot be talked into a weaker one.
const Suite = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"

// ErrSealedKeyInvalid means a sealed data key did not open: it was modified,
// sealed to another public key, or bound to another model, digest, pod or
// key record. Nothing of the plaintext is returned.
var ErrSealedKeyInvalid = errors.New("the sealed data key does not open with this pod's key (modified, sealed to another key, or bound to another request)")

const (
	x25519PublicKeySize = 32
	aeadTagSize         = 16
	// SealedKeySize is the size of a sealed data key: the encapsulated
	// X25519 key and the AEAD ciphertext with its tag.
	SealedKeySize = x25519PublicKeySize + keys.DEKSize + aeadTagSize
)

// hpkeInfo separates this use of HPKE from any other use of the same keys.
var hpkeInfo = []byte("modelguard/v1 key-release")

func kem() hpke.KEM { return hpke.DHKEM(ecdh.X25519()) }

// Binding is what a sealed data key is bound to. The server fills it from the
// verified request and the client from what it asked for, so a sealed key
// copied to another pod's response, or replayed for another model, digest or
// bundle, does not open.
type Binding struct {
	Model       ModelRef
	ModelDigest string
	PodUID      string
	Key         seal.KeyInfo
}

// BindingFor returns the binding of a release request.
func BindingFor(req *ReleaseRequest) Binding {
	return Binding{Model: req.Model, ModelDigest: req.ModelDigest, PodUID: req.PodUID, Key: req.Key}
}

// aad encodes the binding unambiguously: every field length-prefixed, the
// wrapped key by its SHA-256.
func (b Binding) aad() []byte {
	wrapped := sha256.Sum256(b.Key.WrappedDEK)
	var out []byte
	for _, f := range [][]byte{
		[]byte("modelguard/v1 released-dek"),
		[]byte(b.Model.Kind), []byte(b.Model.Namespace), []byte(b.Model.Name),
		[]byte(b.ModelDigest), []byte(b.PodUID),
		[]byte(b.Key.Provider), []byte(b.Key.ID), wrapped[:],
	} {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}

// SealDataKey seals dek to the X25519 public key recipient, bound to b. The
// result is the encapsulated key followed by the ciphertext, SealedKeySize
// bytes.
func SealDataKey(recipient []byte, b Binding, dek []byte) ([]byte, error) {
	if len(dek) != keys.DEKSize {
		return nil, fmt.Errorf("%w: a data key must be %d bytes, got %d", keys.ErrInvalidKey, keys.DEKSize, len(dek))
	}
	pk, err := parsePublicKey(recipient)
	if err != nil {
		return nil, err
	}
	enc, sender, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), hpkeInfo)
	if err != nil {
		return nil, fmt.Errorf("setting up HPKE: %w", err)
	}
	ct, err := sender.Seal(b.aad(), dek)
	if err != nil {
		return nil, fmt.Errorf("sealing the data key: %w", err)
	}
	return append(enc, ct...), nil
}

// EphemeralKey is a pod's one-use X25519 key pair. Its private half never
// leaves the process.
type EphemeralKey struct {
	priv hpke.PrivateKey
}

// NewEphemeralKey generates a fresh key pair.
func NewEphemeralKey() (*EphemeralKey, error) {
	priv, err := kem().GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generating an X25519 key: %w", err)
	}
	return &EphemeralKey{priv: priv}, nil
}

// PublicKey returns the 32-byte public key to send.
func (k *EphemeralKey) PublicKey() []byte { return k.priv.PublicKey().Bytes() }

// Open opens a data key sealed to this key pair and bound to b. Any failure
// is ErrSealedKeyInvalid and returns no plaintext.
func (k *EphemeralKey) Open(sealed []byte, b Binding) ([]byte, error) {
	if len(sealed) != SealedKeySize {
		return nil, fmt.Errorf("sealed data key is %d bytes, want %d: %w", len(sealed), SealedKeySize, ErrSealedKeyInvalid)
	}
	enc, ct := sealed[:x25519PublicKeySize], sealed[x25519PublicKeySize:]
	recipient, err := hpke.NewRecipient(enc, k.priv, hpke.HKDFSHA256(), hpke.AES256GCM(), hpkeInfo)
	if err != nil {
		return nil, fmt.Errorf("decapsulating: %w", ErrSealedKeyInvalid)
	}
	dek, err := recipient.Open(b.aad(), ct)
	if err != nil {
		return nil, ErrSealedKeyInvalid
	}
	return dek, nil
}

// parsePublicKey accepts a 32-byte X25519 public key that is not of low
// order: a low-order point would make the shared secret all zeros, which
// crypto/ecdh refuses, so a trial exchange tells.
func parsePublicKey(b []byte) (hpke.PublicKey, error) {
	if len(b) != x25519PublicKeySize {
		return nil, badRequest("publicKey must be a %d-byte X25519 public key, got %d bytes", x25519PublicKeySize, len(b))
	}
	pub, err := ecdh.X25519().NewPublicKey(b)
	if err != nil {
		return nil, badRequest("publicKey is not an X25519 public key")
	}
	probe, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a probe key: %w", err)
	}
	if _, err := probe.ECDH(pub); err != nil {
		return nil, badRequest("publicKey is a low-order X25519 point")
	}
	pk, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return nil, badRequest("publicKey is not usable for HPKE")
	}
	return pk, nil
}
