package seal

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"slices"
	"strings"
	"sync"
)

// A file's digest is a list digest, so that seal can hash leaves on all
// cores: SHA-256 over the concatenated raw SHA-256 hashes of the file's
// DigestLeafSize leaves, in order (the last leaf may be shorter; an empty
// file has no leaves). docs/sealed-format.md shows how to recompute it with
// coreutils.

// leafCombiner folds leaf hashes that workers finish in any order into the
// file digest in leaf order. It holds only the hashes that arrive ahead of
// the next expected leaf, a few per worker, so memory does not grow with the
// file.
type leafCombiner struct {
	mu      sync.Mutex
	h       hash.Hash
	next    int64
	pending map[int64][sha256.Size]byte
}

func newLeafCombiner() *leafCombiner {
	return &leafCombiner{h: sha256.New(), pending: map[int64][sha256.Size]byte{}}
}

// add records the hash of leaf i.
func (c *leafCombiner) add(i int64, sum [sha256.Size]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i != c.next {
		c.pending[i] = sum
		return
	}
	c.h.Write(sum[:])
	c.next++
	for {
		s, ok := c.pending[c.next]
		if !ok {
			return
		}
		delete(c.pending, c.next)
		c.h.Write(s[:])
		c.next++
	}
}

// addUnit hashes the leaves of a unit's plaintext, which starts at plaintext
// offset off. Units start on a leaf boundary (see unitChunks), so leaf
// indexes follow from the offset.
func (c *leafCombiner) addUnit(off int64, plain []byte) {
	for lo := 0; lo < len(plain); lo += DigestLeafSize {
		hi := min(lo+DigestLeafSize, len(plain))
		c.add((off+int64(lo))/DigestLeafSize, sha256.Sum256(plain[lo:hi]))
	}
}

// digest returns the file digest once all leaves were added.
func (c *leafCombiner) digest() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return "sha256:" + hex.EncodeToString(c.h.Sum(nil))
}

// FileDigest computes a file digest from its whole content, for tests and
// tools; seal computes the same value in parallel.
func FileDigest(data []byte) string {
	c := newLeafCombiner()
	for i := int64(0); len(data) > 0; i++ {
		n := min(len(data), DigestLeafSize)
		c.add(i, sha256.Sum256(data[:n]))
		data = data[n:]
	}
	return c.digest()
}

// ModelDigest is the digest of a whole model: "sha256:" and the hex SHA-256
// of one line per file, "<hex file digest><two spaces><path>\n" (the
// sha256sum format), sorted by path bytewise.
func ModelDigest(files []File) string {
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	h := sha256.New()
	for _, f := range sorted {
		h.Write([]byte(strings.TrimPrefix(f.Digest, "sha256:") + "  " + f.Path + "\n"))
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
