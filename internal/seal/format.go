// Package seal implements the ModelGuard sealed-bundle format (see
// docs/sealed-format.md): a directory holding an authenticated manifest and,
// for each model file, a stream of AES-256-GCM chunks under a per-file key.
//
// Seal, Unseal and Verify process chunks in parallel across all cores and
// read and write at offsets, with a few chunk buffers per worker whatever the
// model size. Unseal and Verify authenticate every chunk as they decrypt it
// into a worker's private buffer, and hash the plaintext there in the same
// pass: each file's digest must equal the manifest's before any plaintext is
// renamed into place, so a pinned model digest covers the bytes served, not
// only the manifest's claim.
package seal

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/modelguard/modelguard/internal/keys"
)

const (
	// FormatName and FormatVersion identify the manifest format. Seal writes
	// FormatVersion; readers also accept MinFormatVersion and later.
	FormatName    = "modelguard.dev/sealed-bundle"
	FormatVersion = 2
	// MinFormatVersion is the oldest version readers accept: version 1
	// bundles stay readable, with their unbound key wrap.
	MinFormatVersion = 1

	// Cipher names the construction in the manifest, for humans and for
	// future versions.
	Cipher = "AES-256-GCM STREAM, per-file HKDF-SHA256 keys"

	// ManifestName is the manifest's file name at the root of a bundle.
	ManifestName = "modelguard.json"
	// SealedSuffix is appended to each file's path in a bundle, so that a
	// sealed file is never mistaken for plaintext and never collides with
	// the manifest.
	SealedSuffix = ".sealed"

	// DefaultChunkSize is the plaintext size of a chunk.
	DefaultChunkSize = 1 << 20
	// MinChunkSize and MaxChunkSize bound the chunk size, a power of two.
	MinChunkSize = 1 << 10
	MaxChunkSize = 1 << 26

	// DigestLeafSize is the plaintext size of a digest leaf. It is fixed, not
	// the chunk size, so that a model's digest does not depend on how it was
	// sealed.
	DigestLeafSize = 1 << 20

	// TagSize is the GCM tag appended to each chunk.
	TagSize = 16
	// SaltSize is the size of a file's HKDF salt.
	SaltSize = 32
	// HeaderSize is the size of a sealed file's header.
	HeaderSize = magicSize + 4 + SaltSize

	nonceSize = 12
	magicSize = 8
)

// headerMagic starts every sealed file: "MGSEAL", 0x00 and the format
// version in the last byte.
func headerMagic(version int) string { return "MGSEAL\x00" + string([]byte{byte(version)}) }

// encodeHeader returns a sealed file's header: magic, chunk size (uint32
// big-endian) and salt.
func encodeHeader(version, chunkSize int, salt []byte) []byte {
	h := make([]byte, 0, HeaderSize)
	h = append(h, headerMagic(version)...)
	h = binary.BigEndian.AppendUint32(h, uint32(chunkSize))
	return append(h, salt...)
}

// validChunkSize reports whether n is a power of two within the bounds.
func validChunkSize(n int) bool {
	return n >= MinChunkSize && n <= MaxChunkSize && n&(n-1) == 0
}

// chunkCount is the number of chunks of a file of size bytes. An empty file
// has one empty chunk, so that even it carries an authenticated last chunk.
func chunkCount(size int64, chunkSize int) int64 {
	if size == 0 {
		return 1
	}
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

// sealedSize is the size of the sealed file for a plaintext of size bytes.
func sealedSize(size int64, chunkSize int) int64 {
	return int64(HeaderSize) + size + chunkCount(size, chunkSize)*TagSize
}

// nonce returns the STREAM nonce of a chunk: the 88-bit big-endian chunk
// index followed by a byte that is 1 for the last chunk and 0 otherwise. The
// last-chunk flag makes truncation at a chunk boundary detectable.
func nonce(dst *[nonceSize]byte, index int64, last bool) {
	clear(dst[:3])
	binary.BigEndian.PutUint64(dst[3:11], uint64(index))
	dst[11] = 0
	if last {
		dst[11] = 1
	}
}

// fileKey derives a file's AES-256-GCM key from the bundle's DEK, the file's
// salt and its path. The path in the HKDF info binds each sealed file to its
// place in the bundle, so swapping files is detected. Versions 1 and 2 derive
// it alike.
func fileKey(dek, salt []byte, path string) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, dek, salt, "modelguard/v1 file key\x00"+path, 32)
	if err != nil {
		return nil, fmt.Errorf("deriving file key: %w", err)
	}
	defer clear(key)
	return keys.NewAESGCM(key)
}

// manifestMACKey derives the key that authenticates the manifest.
func manifestMACKey(dek []byte) ([]byte, error) {
	key, err := hkdf.Key(sha256.New, dek, nil, "modelguard/v1 manifest mac", 32)
	if err != nil {
		return nil, fmt.Errorf("deriving manifest key: %w", err)
	}
	return key, nil
}

// unitChunks is the number of chunks a worker processes as one unit: enough
// to cover a whole digest leaf, so that a unit always holds whole leaves and
// whole chunks (both are powers of two).
func unitChunks(chunkSize int) int64 {
	if chunkSize >= DigestLeafSize {
		return 1
	}
	return int64(DigestLeafSize / chunkSize)
}
