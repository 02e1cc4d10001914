package seal

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelguard/modelguard/internal/keys"
)

func TestRoundTrip(t *testing.T) {
	many := map[string][]byte{}
	for i := range 150 {
		many[fmt.Sprintf("shard-%03d.bin", i)] = pseudoRandom(uint64(i), i*37)
	}
	tests := []struct {
		name      string
		files     map[string][]byte
		chunkSize int
	}{
		{name: "empty file", files: map[string][]byte{"empty": {}}},
		{name: "one byte", files: map[string][]byte{"one": {0x42}}},
		{name: "exact chunk multiple, small chunks", chunkSize: MinChunkSize,
			files: map[string][]byte{"m.bin": pseudoRandom(1, 4*MinChunkSize)}},
		{name: "exact chunk multiple, default chunks",
			files: map[string][]byte{"m.bin": pseudoRandom(2, 2*DefaultChunkSize)}},
		{name: "chunk multiple plus one", chunkSize: MinChunkSize,
			files: map[string][]byte{"m.bin": pseudoRandom(3, 3*MinChunkSize+1)}},
		{name: "one chunk less one byte", files: map[string][]byte{"m.bin": pseudoRandom(4, DefaultChunkSize-1)}},
		{name: "several units of small chunks", chunkSize: 4 * MinChunkSize,
			files: map[string][]byte{"m.bin": pseudoRandom(5, 3*DigestLeafSize+12345)}},
		{name: "chunks larger than a digest leaf", chunkSize: 4 * DigestLeafSize,
			files: map[string][]byte{"m.bin": pseudoRandom(6, 9*DigestLeafSize+7)}},
		{name: "many files", files: many},
		{name: "nested directories", files: map[string][]byte{
			"config.json":                       []byte(`{"architectures":["LlamaForCausalLM"]}`),
			"tokenizer/tokenizer.json":          pseudoRandom(7, 5000),
			"weights/layer/0/model.safetensors": pseudoRandom(8, DefaultChunkSize+3),
			"weights/layer/1/model.safetensors": pseudoRandom(9, 77),
			"weights/layer/1/empty":             {},
			"a b/ü ñ.txt":                       []byte("names with spaces and UTF-8"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bundle, m := sealFiles(t, tt.files, SealOptions{ChunkSize: tt.chunkSize})

			// The manifest's digests are the documented list digests of
			// the plaintext.
			wantFiles := map[string]string{}
			for p, data := range tt.files {
				wantFiles[p] = FileDigest(data)
			}
			gotFiles := map[string]string{}
			for _, f := range m.Files {
				gotFiles[f.Path] = f.Digest
			}
			if diff := cmp.Diff(wantFiles, gotFiles); diff != "" {
				t.Errorf("manifest file digests (-want +got):\n%s", diff)
			}

			dest := memDir(t)
			res, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: OpenOptions{
				Key: Key{Provider: testKEK(t)}, ExpectDigest: m.ModelDigest}})
			if err != nil {
				t.Fatalf("Unseal: %v", err)
			}
			if diff := cmp.Diff(digestsOf(tt.files), treeDigests(t, dest)); diff != "" {
				t.Errorf("unsealed files (-want +got):\n%s", diff)
			}
			if res.Bytes != m.TotalSize() || res.Files != len(tt.files) {
				t.Errorf("result: %d files, %d bytes; want %d, %d", res.Files, res.Bytes, len(tt.files), m.TotalSize())
			}

			// Verify with the DEK, the init container's key.
			if _, err := Verify(context.Background(), bundle, OpenOptions{Key: Key{DEK: bundleDEK(t, m)}}); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

// TestRoundTrip1GiB seals and unseals a 1 GiB file. It is generated as a
// stream, never held in memory, and compared by hash.
func TestRoundTrip1GiB(t *testing.T) {
	const size = 1 << 30
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(src, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	wantHash := sha256.New()
	gen := rand.NewChaCha8([32]byte{42})
	if _, err := io.Copy(io.MultiWriter(f, wantHash), io.LimitReader(gen, size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	var m *Manifest
	allocated := allocatedDuring(func() {
		if m, err = Seal(context.Background(), src, bundle, SealOptions{Provider: testKEK(t)}); err != nil {
			t.Fatalf("Seal: %v", err)
		}
	})
	// Memory is a few chunks per worker, not a function of the model size.
	limit := uint64(defaultWorkers(0))*4<<20 + 8<<20
	t.Logf("Seal allocated %.1f MiB in all", float64(allocated)/(1<<20))
	if allocated > limit {
		t.Errorf("Seal allocated %d MiB for a 1 GiB file, more than %d MiB", allocated>>20, limit>>20)
	}
	dest := memDir(t)
	allocated = allocatedDuring(func() {
		if _, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: OpenOptions{
			Key: Key{Provider: testKEK(t)}, ExpectDigest: m.ModelDigest}}); err != nil {
			t.Fatalf("Unseal: %v", err)
		}
	})
	t.Logf("Unseal allocated %.1f MiB in all", float64(allocated)/(1<<20))
	if allocated > limit {
		t.Errorf("Unseal allocated %d MiB for a 1 GiB file, more than %d MiB", allocated>>20, limit>>20)
	}
	out, err := os.Open(filepath.Join(dest, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	gotHash := sha256.New()
	n, err := io.Copy(gotHash, out)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || hex.EncodeToString(gotHash.Sum(nil)) != hex.EncodeToString(wantHash.Sum(nil)) {
		t.Fatalf("unsealed %d bytes with SHA-256 %x; want %d bytes with %x", n, gotHash.Sum(nil), size, wantHash.Sum(nil))
	}
}

// allocatedDuring returns the bytes of heap f allocated in total.
func allocatedDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// serveBundle serves a bundle directory over TLS on loopback, counting the
// requests, and returns its URL and a client trusting it.
func serveBundle(t *testing.T, dir string) (string, *http.Client, *int) {
	t.Helper()
	var requests int
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests++
		http.StripPrefix("/models/m1", http.FileServer(http.Dir(dir))).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/models/m1", srv.Client(), &requests
}

// TestUnsealHTTPS streams a bundle from an https server on loopback and
// checks that nothing but the plaintext reached a disk or tmp directory.
func TestUnsealHTTPS(t *testing.T) {
	files := map[string][]byte{
		"config.json":        []byte("{}"),
		"weights/model.bin":  pseudoRandom(11, 3*DefaultChunkSize+5),
		"weights/empty.bin":  {},
		"weights/with space": pseudoRandom(12, 10),
	}
	bundle, m := sealFiles(t, files, SealOptions{})
	url, client, requests := serveBundle(t, bundle)

	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dest := memDir(t)
	if _, err := Unseal(context.Background(), url, dest, UnsealOptions{OpenOptions: OpenOptions{
		Key: Key{DEK: bundleDEK(t, m)}, ExpectDigest: m.ModelDigest, HTTPClient: client}}); err != nil {
		t.Fatalf("Unseal: %v", err)
	}
	if diff := cmp.Diff(digestsOf(files), treeDigests(t, dest)); diff != "" {
		t.Errorf("unsealed files (-want +got):\n%s", diff)
	}
	if got := entries(t, tmp); len(got) != 0 {
		t.Errorf("unseal left files in TMPDIR: %v", got)
	}
	// One request for the manifest and one per file: nothing fetched twice
	// or staged.
	if *requests != 1+len(files) {
		t.Errorf("%d requests, want %d", *requests, 1+len(files))
	}

	m2, err := ReadManifest(context.Background(), url, client)
	if err != nil {
		t.Fatalf("ReadManifest over https: %v", err)
	}
	if m2.ModelDigest != m.ModelDigest {
		t.Errorf("ReadManifest digest %s, want %s", m2.ModelDigest, m.ModelDigest)
	}
}

func TestUnsealHTTPSErrors(t *testing.T) {
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": pseudoRandom(1, 100)}, SealOptions{})
	url, client, _ := serveBundle(t, bundle)
	key := OpenOptions{Key: Key{DEK: bundleDEK(t, m)}, HTTPClient: client}
	tests := []struct {
		name, location string
		opts           OpenOptions
		want           string
	}{
		{name: "plain http is refused", location: strings.Replace(url, "https://", "http://", 1), opts: key,
			want: "only https:// URLs and directories are supported"},
		{name: "missing bundle", location: url + "-missing?X-Signature=secret", opts: key,
			want: "manifest: fetching https://127.0.0.1"},
		{name: "untrusted certificate", location: url, opts: OpenOptions{Key: key.Key},
			want: "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Verify(context.Background(), tt.location, tt.opts)
			if err == nil {
				t.Fatal("Verify succeeded")
			}
			mustContain(t, err.Error(), tt.want)
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the URL's query", err)
			}
		})
	}
}

func TestUnsealRefusesDiskDestination(t *testing.T) {
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": pseudoRandom(1, 5000)}, SealOptions{})
	dest := diskDir(t)
	opts := UnsealOptions{OpenOptions: OpenOptions{Key: Key{DEK: bundleDEK(t, m)}}}
	_, err := Unseal(context.Background(), bundle, dest, opts)
	if err == nil {
		t.Fatal("Unseal wrote to a disk-backed DEST")
	}
	mustContain(t, err.Error(), "not on a memory-backed file system (tmpfs or ramfs)")
	mustContain(t, err.Error(), "--allow-disk")
	if got := entries(t, dest); len(got) != 0 {
		t.Errorf("refused unseal left %v in DEST", got)
	}
	// A DEST that does not exist yet is judged by its parent.
	if _, err := Unseal(context.Background(), bundle, filepath.Join(dest, "new"), opts); err == nil {
		t.Error("Unseal created a DEST on disk")
	}

	opts.AllowDisk = true
	if _, err := Unseal(context.Background(), bundle, dest, opts); err != nil {
		t.Fatalf("Unseal with AllowDisk: %v", err)
	}
	if diff := cmp.Diff([]string{"a.bin"}, entries(t, dest)); diff != "" {
		t.Errorf("DEST (-want +got):\n%s", diff)
	}
}

func TestUnsealDestination(t *testing.T) {
	files := map[string][]byte{"a.bin": pseudoRandom(1, 5000), "dir/b.bin": pseudoRandom(2, 10)}
	bundle, m := sealFiles(t, files, SealOptions{})
	key := OpenOptions{Key: Key{DEK: bundleDEK(t, m)}}

	t.Run("created when missing, removed again on failure", func(t *testing.T) {
		parent := memDir(t)
		dest := filepath.Join(parent, "model")
		_, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: OpenOptions{Key: key.Key, ExpectDigest: "sha256:" + strings.Repeat("0", 64)}})
		if !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("got %v, want a digest mismatch", err)
		}
		if got := entries(t, parent); len(got) != 0 {
			t.Errorf("failed unseal left %v", got)
		}
		if _, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: key}); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(digestsOf(files), treeDigests(t, dest)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("leftovers of a killed run are removed", func(t *testing.T) {
		dest := memDir(t)
		writeTree(t, dest, map[string][]byte{TempPrefix + "123/a.bin": []byte("stale plaintext")})
		if _, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: key}); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(digestsOf(files), treeDigests(t, dest)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("existing entries are replaced unless KeepExisting", func(t *testing.T) {
		dest := memDir(t)
		writeTree(t, dest, map[string][]byte{"dir/old.bin": []byte("old"), "a.bin": []byte("old"), "unrelated": []byte("kept")})
		_, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: key, KeepExisting: true})
		if err == nil {
			t.Fatal("Unseal replaced an existing entry with KeepExisting")
		}
		mustContain(t, err.Error(), "already has a.bin; not replacing it")
		// Twice, as an init container re-run in the same volume.
		for range 2 {
			if _, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: key}); err != nil {
				t.Fatal(err)
			}
		}
		want := digestsOf(files)
		want["unrelated"] = digestsOf(map[string][]byte{"x": []byte("kept")})["x"]
		if diff := cmp.Diff(want, treeDigests(t, dest)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("cancellation removes plaintext", func(t *testing.T) {
		dest := memDir(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Unseal(ctx, bundle, dest, UnsealOptions{OpenOptions: key})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if got := entries(t, dest); len(got) != 0 {
			t.Errorf("cancelled unseal left %v", got)
		}
	})
	t.Run("plaintext is read-only", func(t *testing.T) {
		dest := memDir(t)
		if _, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: key}); err != nil {
			t.Fatal(err)
		}
		info, err := os.Stat(filepath.Join(dest, "a.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if perm := info.Mode().Perm(); perm != 0o444 {
			t.Errorf("mode %v, want 0444", perm)
		}
	})
}

func TestSealErrors(t *testing.T) {
	ctx := context.Background()
	kek := testKEK(t)
	tests := []struct {
		name  string
		setup func(t *testing.T) (src, out string)
		opts  SealOptions
		want  string
	}{
		{name: "no files", setup: func(t *testing.T) (string, string) {
			return t.TempDir(), filepath.Join(t.TempDir(), "out")
		}, want: "holds no files"},
		{name: "out inside src", setup: func(t *testing.T) (string, string) {
			src := t.TempDir()
			writeTree(t, src, map[string][]byte{"a": {1}})
			return src, filepath.Join(src, "out")
		}, want: "is inside SRC_DIR"},
		{name: "out not empty", setup: func(t *testing.T) (string, string) {
			src, out := t.TempDir(), t.TempDir()
			writeTree(t, src, map[string][]byte{"a": {1}})
			writeTree(t, out, map[string][]byte{"x": {1}})
			return src, out
		}, want: "is not empty"},
		{name: "bad chunk size", opts: SealOptions{ChunkSize: 3000}, setup: func(t *testing.T) (string, string) {
			src := t.TempDir()
			writeTree(t, src, map[string][]byte{"a": {1}})
			return src, filepath.Join(t.TempDir(), "out")
		}, want: "chunk size 3000 is not a power of two"},
		{name: "bad classification", opts: SealOptions{Ownership: Ownership{Classification: "Secretish"}}, setup: func(t *testing.T) (string, string) {
			src := t.TempDir()
			writeTree(t, src, map[string][]byte{"a": {1}})
			return src, filepath.Join(t.TempDir(), "out")
		}, want: "want one of Public, Internal, Confidential, TradeSecret"},
		{name: "symlinked directory", setup: func(t *testing.T) (string, string) {
			src, other := t.TempDir(), t.TempDir()
			writeTree(t, other, map[string][]byte{"a": {1}})
			if err := os.Symlink(other, filepath.Join(src, "link")); err != nil {
				t.Fatal(err)
			}
			return src, filepath.Join(t.TempDir(), "out")
		}, want: "link is a symlink to a directory"},
		{name: "file name with a newline", setup: func(t *testing.T) (string, string) {
			src := t.TempDir()
			writeTree(t, src, map[string][]byte{"a\nb": {1}})
			return src, filepath.Join(t.TempDir(), "out")
		}, want: "contains a control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, out := tt.setup(t)
			tt.opts.Provider = kek
			_, err := Seal(ctx, src, out, tt.opts)
			if err == nil {
				t.Fatal("Seal succeeded")
			}
			mustContain(t, err.Error(), tt.want)
		})
	}

	t.Run("failure removes what was written", func(t *testing.T) {
		src := t.TempDir()
		writeTree(t, src, map[string][]byte{"a": pseudoRandom(1, 5000)})
		out := filepath.Join(t.TempDir(), "out")
		_, err := Seal(ctx, src, out, SealOptions{Provider: failingProvider{kek}})
		if err == nil {
			t.Fatal("Seal succeeded")
		}
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("OUT_DIR left behind: %v", err)
		}
	})
	t.Run("failure after files were written removes them", func(t *testing.T) {
		src := t.TempDir()
		writeTree(t, src, map[string][]byte{"a": pseudoRandom(1, 3*DigestLeafSize), "b/c": pseudoRandom(2, 10)})
		out := t.TempDir() // exists and is empty: it is kept, emptied
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := Seal(ctx, src, out, SealOptions{Provider: kek, Progress: cancelOnAdd{cancel}})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if got := entries(t, out); len(got) != 0 {
			t.Errorf("failed seal left %v in OUT_DIR", got)
		}
	})
	t.Run("symlinked files are followed", func(t *testing.T) {
		src, blobs := t.TempDir(), t.TempDir()
		writeTree(t, blobs, map[string][]byte{"blob": []byte("weights")})
		if err := os.Symlink(filepath.Join(blobs, "blob"), filepath.Join(src, "model.bin")); err != nil {
			t.Fatal(err)
		}
		m, err := Seal(ctx, src, filepath.Join(t.TempDir(), "out"), SealOptions{Provider: kek})
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Files[0]; got.Path != "model.bin" || got.Digest != FileDigest([]byte("weights")) {
			t.Errorf("got %+v", got)
		}
	})
}

// failingProvider fails to wrap, to test Seal's cleanup.
type failingProvider struct{ *keys.KEK }

func (failingProvider) Wrap(context.Context, []byte, keys.Binding) ([]byte, error) {
	return nil, errors.New("KMS unavailable")
}

// cancelOnAdd cancels a context as soon as some work is done.
type cancelOnAdd struct{ cancel context.CancelFunc }

func (cancelOnAdd) SetTotal(int64) {}
func (c cancelOnAdd) Add(int64)    { c.cancel() }

// TestSealedFileTruncatedWhileRead truncates a sealed file after it was
// opened: the unit past the new end must fail with an error naming the
// chunk, and leave nothing behind.
func TestSealedFileTruncatedWhileRead(t *testing.T) {
	ctx := context.Background()
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": pseudoRandom(1, 3*DefaultChunkSize)}, SealOptions{})
	src, err := openBundle(bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f := &m.Files[0]
	in, err := src.open(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	defer in.close()
	if err := os.Truncate(filepath.Join(bundle, f.SealedPath()), int64(HeaderSize)+DefaultChunkSize+TagSize); err != nil {
		t.Fatal(err)
	}
	aead, err := fileKey(bundleDEK(t, m), f.Salt, f.Path)
	if err != nil {
		t.Fatal(err)
	}
	of := &openFile{f: f, g: geometryOf(f), aead: aead, in: in, leaves: newLeafCombiner()}
	var inBuf, outBuf []byte
	_, err = (&openEngine{}).openUnit(newRunner(ctx, m.Files), openJob{file: of, unit: 2}, &inBuf, &outBuf)
	if !errors.Is(err, ErrTruncated) || err.Error() != "chunk 2 of a.bin: sealed file is truncated (the sealed file shrank while it was read)" {
		t.Errorf("got %v, want chunk 2 truncated", err)
	}
}
