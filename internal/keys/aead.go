package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
)

// NewAESGCM returns AES-256-GCM with the standard 12-byte nonce and 16-byte
// tag under key. It is the one AES-GCM construction of ModelGuard: the KEK
// wraps data keys with it, and the sealed format encrypts chunks with it.
func NewAESGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: an AES-256 key is 32 bytes, got %d", ErrInvalidKey, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("creating AES cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("creating AES-GCM: %w", err)
	}
	return aead, nil
}
