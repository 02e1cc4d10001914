package seal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelguard/modelguard/internal/keys"
)

// testKEKBytes is the KEK of most tests; tests that scan for leaks look for
// these bytes.
var testKEKBytes = bytes.Repeat([]byte{0x5a, 0xc3}, keys.KEKSize/2)

func testKEK(t testing.TB) *keys.KEK {
	t.Helper()
	k, err := keys.NewKEK(testKEKBytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pseudoRandom returns n reproducible bytes that differ for every seed, so
// that swapped chunks or files really differ.
func pseudoRandom(seed uint64, n int) []byte {
	b := make([]byte, n)
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 7})
	_, _ = src.Read(b)
	return b
}

// writeTree writes files (slash paths) under dir.
func writeTree(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for p, data := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// treeDigests maps each regular file under dir (slash paths) to the hex
// SHA-256 of its content.
func treeDigests(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func digestsOf(files map[string][]byte) map[string]string {
	out := map[string]string{}
	for p, data := range files {
		sum := sha256.Sum256(data)
		out[p] = hex.EncodeToString(sum[:])
	}
	return out
}

// entries lists everything under dir, directories included, so that a test
// can assert that a failed unseal left nothing behind.
func entries(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// memDir returns a fresh directory on tmpfs (/dev/shm), removed after the
// test. Unseal's real destination is memory-backed, so tests use one rather
// than --allow-disk. It fails, not skips, when there is none.
func memDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "modelguard-test-")
	if err != nil {
		t.Fatalf("this test needs a tmpfs at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if ok, name, err := MemoryBacked(dir); err != nil || !ok {
		t.Fatalf("/dev/shm is not memory-backed here (%s, %v)", name, err)
	}
	return dir
}

// diskDir returns a fresh directory on a disk file system: t.TempDir(), or
// one under the package directory if the temp dir is on tmpfs.
func diskDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if ok, _, err := MemoryBacked(dir); err == nil && !ok {
		return dir
	}
	dir, err := os.MkdirTemp(".", "disk-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if ok, _, err := MemoryBacked(dir); err != nil || ok {
		t.Fatalf("found no disk-backed directory for this test (%v)", err)
	}
	return dir
}

// sealFiles writes files into a source tree and seals it; it returns the
// bundle directory and the manifest.
func sealFiles(t testing.TB, files map[string][]byte, opts SealOptions) (string, *Manifest) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	writeTree(t, src, files)
	out := filepath.Join(t.TempDir(), "bundle")
	if opts.Provider == nil {
		opts.Provider = testKEK(t)
	}
	m, err := Seal(context.Background(), src, out, opts)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return out, m
}

// bundleDEK unwraps the bundle's DEK with the test KEK.
func bundleDEK(t testing.TB, m *Manifest) []byte {
	t.Helper()
	dek, err := UnwrapDEK(context.Background(), m.Key, m.Binding(), testKEK(t))
	if err != nil {
		t.Fatal(err)
	}
	return dek
}

// memSource is a bundle held in memory, served either at offsets or as
// streams, to drive the engine from fuzz tests without a file system.
type memSource struct {
	manifest []byte
	files    map[string][]byte // by sealed path
	stream   bool
}

func (s *memSource) readManifest(context.Context) ([]byte, error) { return s.manifest, nil }

func (s *memSource) open(_ context.Context, f *File) (*sealedReader, error) {
	data, ok := s.files[f.SealedPath()]
	if !ok {
		return nil, os.ErrNotExist
	}
	r := bytes.NewReader(data)
	if s.stream {
		// A chunked HTTP response does not announce its length.
		return &sealedReader{stream: iotestHalfReader{r}, size: -1}, nil
	}
	return &sealedReader{at: r, size: int64(len(data))}, nil
}

func (s *memSource) Close() error { return nil }

// iotestHalfReader returns at most half of what is asked (at least one
// byte), like a network stream delivering data in pieces.
type iotestHalfReader struct{ r io.Reader }

func (h iotestHalfReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:(len(p)+1)/2]
	}
	return h.r.Read(p)
}

// memSink collects plaintext in memory.
type memSink struct{ files map[string]*memFile }

type memFile struct{ data []byte }

func (s *memSink) create(f *File) (plainFile, error) {
	mf := &memFile{data: make([]byte, f.Size)}
	s.files[f.Path] = mf
	return mf, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) { return copy(m.data[off:], p), nil }
func (m *memFile) Close() error                             { return nil }

// fixedTime makes manifests reproducible.
func fixedTime() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }

// deterministicRand is a reproducible randomness source for Seal.
func deterministicRand(seed uint64) io.Reader {
	return rand.NewChaCha8([32]byte{byte(seed), 1, 2, 3})
}

func mustContain(t testing.TB, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Errorf("%q does not contain %q", s, sub)
	}
}
