package seal

import (
	"errors"
	"fmt"
)

// Sentinel errors, for errors.Is. The messages that wrap them name the file
// and the chunk, so that an operator reading a pod's termination message
// knows exactly which bytes are bad.
var (
	// ErrAuthentication means a chunk's GCM tag did not verify: the chunk was
	// modified, moved, or belongs to another file or bundle.
	ErrAuthentication = errors.New("failed authentication")
	// ErrTruncated means a sealed file ends before its last chunk.
	ErrTruncated = errors.New("sealed file is truncated")
	// ErrExtended means a sealed file has data after its last chunk.
	ErrExtended = errors.New("sealed file was tampered with: it has data after its last chunk")
	// ErrHeader means a sealed file's header is malformed or is not the one
	// the manifest expects.
	ErrHeader = errors.New("sealed file header does not match the authenticated manifest")
	// ErrDigestMismatch means the bundle's model digest is not the expected
	// one.
	ErrDigestMismatch = errors.New("model digest mismatch")
	// ErrKeyDenied is a final refusal by the operator's key-release
	// service: the pod was not verified, so it gets no data key.
	ErrKeyDenied = errors.New("key release denied")
	// ErrPlaintextDigest means a file decrypted and authenticated under the
	// data key, but its plaintext is not the one the manifest's digest
	// names: a holder of the data key re-encrypted it.
	ErrPlaintextDigest = errors.New("sealed file was tampered with: its decrypted content does not match its digest in the manifest")
)

// DigestError reports a file whose decrypted plaintext has another digest
// than the authenticated manifest records.
type DigestError struct {
	Path      string
	Got, Want string
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("%s: %s (it has %s, the manifest records %s; it was re-encrypted by a holder of the bundle's data key)",
		e.Path, ErrPlaintextDigest.Error(), e.Got, e.Want)
}

func (e *DigestError) Unwrap() error { return ErrPlaintextDigest }

// ChunkError locates a failure in one chunk of one file.
type ChunkError struct {
	// Path is the file's path in the model, as in the manifest.
	Path string
	// Chunk is the 0-based chunk index.
	Chunk int64
	// Detail says more, e.g. how many bytes are missing; it may be empty.
	Detail string
	// Err is one of the sentinel errors above, or an I/O error.
	Err error
}

func (e *ChunkError) Error() string {
	msg := fmt.Sprintf("chunk %d of %s", e.Chunk, e.Path)
	switch {
	case errors.Is(e.Err, ErrAuthentication):
		msg += " failed authentication"
	default:
		msg += ": " + e.Err.Error()
	}
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	return msg
}

func (e *ChunkError) Unwrap() error { return e.Err }

// HeaderError reports a sealed file whose header is bad or foreign.
type HeaderError struct {
	Path   string
	Detail string
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("header of %s does not match the authenticated manifest: %s", e.Path, e.Detail)
}

func (e *HeaderError) Unwrap() error { return ErrHeader }

// before orders two errors by their place in the bundle, so that when
// several workers fail at once the error reported is the first in file and
// chunk order, and repeated runs report the same one.
func before(a, b error, order map[string]int) bool {
	pa, ca := errorPlace(a, order)
	pb, cb := errorPlace(b, order)
	if pa != pb {
		return pa < pb
	}
	return ca < cb
}

func errorPlace(err error, order map[string]int) (file int, chunk int64) {
	var ce *ChunkError
	var he *HeaderError
	var de *DigestError
	switch {
	case errors.As(err, &ce):
		return order[ce.Path], ce.Chunk
	case errors.As(err, &he):
		return order[he.Path], -1
	case errors.As(err, &de):
		// Found after the file's last chunk.
		return order[de.Path], 1 << 62
	}
	return 1 << 30, 0
}
