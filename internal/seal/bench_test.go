package seal

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// The chunk path, one unit at a time on one core: run with
//
//	go test ./internal/seal -run '^$' -bench . -benchtime 2s
//
// The end-to-end benchmarks use all cores and tmpfs, like the init
// container; hack/bench-seal.sh compares the CLI with cp, age and sha256sum.

// memReaderAt serves a byte slice at offsets and discards writes.
type memReaderAt struct{ data []byte }

func (m memReaderAt) ReadAt(p []byte, off int64) (int, error) { return copy(p, m.data[off:]), nil }
func (memReaderAt) WriteAt(p []byte, _ int64) (int, error)    { return len(p), nil }
func (memReaderAt) Close() error                              { return nil }

func benchFile(b *testing.B, chunkSize int) (*File, []byte) {
	b.Helper()
	plain := pseudoRandom(1, DigestLeafSize*4)
	return &File{Path: "model.bin", Size: int64(len(plain)), ChunkSize: chunkSize, Salt: make([]byte, SaltSize)}, plain
}

// BenchmarkSealUnit measures hashing the digest leaves and encrypting the
// chunks of one unit, the work of one seal worker.
func BenchmarkSealUnit(b *testing.B) {
	for _, chunkSize := range []int{64 << 10, DefaultChunkSize, 4 * DefaultChunkSize} {
		b.Run(sizeName(chunkSize), func(b *testing.B) {
			f, plain := benchFile(b, chunkSize)
			aead, err := fileKey(make([]byte, 32), f.Salt, f.Path)
			if err != nil {
				b.Fatal(err)
			}
			sf := &sealFile{f: f, g: geometryOf(f), aead: aead, in: memReaderAt{plain}, out: memReaderAt{}, leaves: newLeafCombiner()}
			var pbuf, cbuf []byte
			b.SetBytes(int64(len(plain)))
			b.ResetTimer()
			for b.Loop() {
				sf.leaves = newLeafCombiner()
				for u := range sf.g.units {
					if _, err := (&sealEngine{}).sealUnit(sealJob{file: sf, unit: u}, &pbuf, &cbuf); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkOpenUnit measures authenticating, decrypting and hashing one
// unit, the work of one unseal worker, with the ciphertext already in
// memory; "no-plaintext-digest" leaves out the hashing that format v2 added,
// which is what v1 did.
func BenchmarkOpenUnit(b *testing.B) {
	for _, chunkSize := range []int{64 << 10, DefaultChunkSize, 4 * DefaultChunkSize} {
		for _, mode := range openModes {
			b.Run(sizeName(chunkSize)+"/"+mode.name, func(b *testing.B) {
				f, plain := benchFile(b, chunkSize)
				dek := make([]byte, 32)
				sealed := specSealFile(b, dek, f.Salt, f.Path, chunkSize, plain)
				aead, err := fileKey(dek, f.Salt, f.Path)
				if err != nil {
					b.Fatal(err)
				}
				of := &openFile{f: f, g: geometryOf(f), aead: aead, in: &sealedReader{at: memReaderAt{sealed}}}
				r := newRunner(context.Background(), []File{*f})
				e := &openEngine{skipPlaintextDigest: mode.skip}
				var inBuf, outBuf []byte
				b.SetBytes(int64(len(plain)))
				b.ResetTimer()
				for b.Loop() {
					of.leaves = newLeafCombiner()
					for u := range of.g.units {
						if _, err := e.openUnit(r, openJob{file: of, unit: u}, &inBuf, &outBuf); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// openModes are the two ways of opening a bundle the benchmarks compare in
// one run: format v2's, which hashes the plaintext as it decrypts, and
// without that hashing, as format v1 opened bundles. The second is reachable
// from the benchmarks alone.
var openModes = []struct {
	name string
	skip bool
}{
	{"v2", false},
	{"no-plaintext-digest", true},
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return string(rune('0'+n>>20)) + "MiB"
	}
	return "64KiB"
}

// benchBundle seals a 256 MiB model of two files on tmpfs.
func benchBundle(b *testing.B) (src, bundle string) {
	b.Helper()
	src = memDir(b)
	writeTree(b, src, map[string][]byte{
		"model-1.safetensors": pseudoRandom(1, 192<<20),
		"model-2.safetensors": pseudoRandom(2, 64<<20),
	})
	bundle = filepath.Join(memDir(b), "bundle")
	if _, err := Seal(context.Background(), src, bundle, SealOptions{Provider: testKEK(b)}); err != nil {
		b.Fatal(err)
	}
	return src, bundle
}

// BenchmarkSeal seals a 256 MiB model from tmpfs to tmpfs on all cores.
func BenchmarkSeal(b *testing.B) {
	src, _ := benchBundle(b)
	out := memDir(b)
	b.SetBytes(256 << 20)
	b.ResetTimer()
	for b.Loop() {
		dir := filepath.Join(out, "bundle")
		if _, err := Seal(context.Background(), src, dir, SealOptions{Provider: testKEK(b)}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

// BenchmarkUnseal unseals a 256 MiB model from tmpfs to tmpfs on all cores,
// with and without hashing the plaintext (see openModes).
func BenchmarkUnseal(b *testing.B) {
	_, bundle := benchBundle(b)
	dest := memDir(b)
	for _, mode := range openModes {
		b.Run(mode.name, func(b *testing.B) {
			b.SetBytes(256 << 20)
			b.ResetTimer()
			for b.Loop() {
				dir := filepath.Join(dest, "model")
				opts := OpenOptions{Key: Key{Provider: testKEK(b)}, skipPlaintextDigest: mode.skip}
				if _, err := Unseal(context.Background(), bundle, dir, UnsealOptions{OpenOptions: opts}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.RemoveAll(dir)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkVerify authenticates a 256 MiB bundle without writing, with and
// without hashing the plaintext.
func BenchmarkVerify(b *testing.B) {
	_, bundle := benchBundle(b)
	for _, mode := range openModes {
		b.Run(mode.name, func(b *testing.B) {
			b.SetBytes(256 << 20)
			b.ResetTimer()
			for b.Loop() {
				opts := OpenOptions{Key: Key{Provider: testKEK(b)}, skipPlaintextDigest: mode.skip}
				if _, err := Verify(context.Background(), bundle, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
