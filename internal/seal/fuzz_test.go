package seal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Run the fuzzers with, e.g.:
//
//	go test ./internal/seal -run '^$' -fuzz FuzzChunkReader -fuzztime 60s
//	go test ./internal/seal -run '^$' -fuzz FuzzParseManifest -fuzztime 60s
//
// Their seed corpora are checked in under testdata/fuzz and run with every
// `go test`. MODELGUARD_UPDATE_FUZZ_SEEDS=1 regenerates them.

// FuzzParseManifest feeds arbitrary bytes to the manifest parser. Anything it
// accepts must satisfy the invariants the unseal path relies on, must be
// canonical (its re-encoding is its MAC'd line, byte for byte) and must
// survive a re-encoding unchanged.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("{}\n{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if m != nil {
				t.Fatal("a manifest came back with an error")
			}
			return
		}
		for i, file := range m.Files {
			if err := ValidatePath(file.Path); err != nil {
				t.Fatalf("accepted an invalid path: %v", err)
			}
			if i > 0 && m.Files[i-1].Path >= file.Path {
				t.Fatalf("accepted unsorted paths %q, %q", m.Files[i-1].Path, file.Path)
			}
			if file.Size < 0 || !validChunkSize(file.ChunkSize) || len(file.Salt) != SaltSize {
				t.Fatalf("accepted a bad file entry %+v", file)
			}
		}
		if ModelDigest(m.Files) != m.ModelDigest {
			t.Fatal("accepted a model digest that is not of its files")
		}
		if len(m.Files) > MaxFiles || !validBundleID(m.BundleID) || m.Cipher != Cipher ||
			!printable(m.SealedBy) || validateKeyInfo(m.Key) != nil {
			t.Fatalf("accepted bad fields: %d files, bundleId %q, cipher %q, sealedBy %q, key %+v", len(m.Files), m.BundleID, m.Cipher, m.SealedBy, m.Key)
		}
		body, macLine, _ := bytes.Cut(data, []byte("\n"))
		if again, err := json.Marshal(m); err != nil || !bytes.Equal(again, body) {
			t.Fatalf("accepted a manifest that is not canonical:\n%s\nre-encodes as\n%s", body, again)
		}
		again, err := reencode(m, macLine)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		m2, err := ParseManifest(again)
		if err != nil {
			t.Fatalf("the re-encoded manifest does not parse: %v", err)
		}
		if diff := cmp.Diff(m, m2, cmpopts.IgnoreUnexported(Manifest{}), cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("re-encoding changed the manifest (-first +second):\n%s", diff)
		}
	})
}

// reencode serializes m's body again with the given MAC line.
func reencode(m *Manifest, macLine []byte) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append(append(body, '\n'), macLine...), nil
}

var fuzzDEK = bytes.Repeat([]byte{0x11}, 32)

type fuzzFixture struct {
	file   File
	plain  []byte
	sealed []byte
}

// fuzzFixtures are small files sealed as the specification says (by the
// independent implementation in spec_test.go) under fuzzDEK: empty, one
// byte, exactly one chunk, and several chunks with a short last one.
func fuzzFixtures(t testing.TB) []fuzzFixture {
	var out []fuzzFixture
	for i, size := range []int{0, 1, MinChunkSize, 2*MinChunkSize + 600} {
		plain := pseudoRandom(uint64(100+i), size)
		salt := bytes.Repeat([]byte{byte(i + 1)}, SaltSize)
		file := File{Path: "w/model.bin", Size: int64(size), ChunkSize: MinChunkSize, Salt: salt, Digest: FileDigest(plain)}
		out = append(out, fuzzFixture{file: file, plain: plain, sealed: specSealFile(t, fuzzDEK, salt, file.Path, MinChunkSize, plain)})
	}
	return out
}

// FuzzChunkReader feeds arbitrary bytes to the chunk reader and decrypter,
// in place of a fixture's sealed file, read at offsets or as a stream of
// unknown length. It must never panic or accept anything but the genuine
// ciphertext, and every error must locate the file (and chunk).
func FuzzChunkReader(f *testing.F) {
	fixtures := fuzzFixtures(f)
	for i, fx := range fixtures {
		f.Add(uint8(i), false, fx.sealed)
		f.Add(uint8(i), true, fx.sealed)
	}
	f.Fuzz(func(t *testing.T, which uint8, stream bool, sealed []byte) {
		fx := fixtures[int(which)%len(fixtures)]
		file := fx.file
		src := &memSource{files: map[string][]byte{file.SealedPath(): sealed}, stream: stream}
		sink := &memSink{files: map[string]*memFile{}}
		e := &openEngine{src: src, m: &Manifest{Version: FormatVersion, Files: []File{file}}, dek: fuzzDEK, sink: sink, workers: 2}
		err := e.run(context.Background())
		if err == nil {
			if !bytes.Equal(sink.files[file.Path].data, fx.plain) {
				t.Fatal("accepted sealed bytes that decrypt to something other than the sealed file")
			}
			if !bytes.Equal(sealed, fx.sealed) {
				t.Fatal("accepted sealed bytes other than the genuine ones")
			}
			return
		}
		var ce *ChunkError
		var he *HeaderError
		var de *DigestError
		if !errors.As(err, &ce) && !errors.As(err, &he) && !errors.As(err, &de) {
			t.Fatalf("error %q does not locate a chunk or header, and is not a digest mismatch", err)
		}
		if !strings.Contains(err.Error(), file.Path) {
			t.Fatalf("error %q does not name the file", err)
		}
	})
}

// TestFuzzSeedCorpora checks that the seed corpora are checked in, and
// regenerates them when MODELGUARD_UPDATE_FUZZ_SEEDS=1.
func TestFuzzSeedCorpora(t *testing.T) {
	seeds := map[string][][]any{
		"FuzzParseManifest": manifestSeeds(t),
		"FuzzChunkReader":   chunkSeeds(t),
	}
	for fuzzer, corpus := range seeds {
		dir := filepath.Join("testdata", "fuzz", fuzzer)
		if os.Getenv("MODELGUARD_UPDATE_FUZZ_SEEDS") == "1" {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for i, args := range corpus {
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), encodeCorpusEntry(args), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		got, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("%s has no checked-in seed corpus: %v", fuzzer, err)
		}
		if len(got) < len(corpus) {
			t.Errorf("%s: %d seeds checked in, want %d (regenerate with MODELGUARD_UPDATE_FUZZ_SEEDS=1)", fuzzer, len(got), len(corpus))
		}
	}
}

// encodeCorpusEntry writes a corpus file in the "go test fuzz v1" format.
func encodeCorpusEntry(args []any) []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case byte:
			fmt.Fprintf(&b, "byte(%q)\n", v)
		case bool:
			fmt.Fprintf(&b, "bool(%v)\n", v)
		default:
			panic(fmt.Sprintf("unsupported %T", a))
		}
	}
	return b.Bytes()
}

func manifestSeeds(t *testing.T) [][]any {
	valid := validManifestFile(t)
	edit := func(f func(m map[string]any)) []byte { return rewrite(t, valid, f, true) }
	body, macLine, _ := bytes.Cut(valid, []byte("\n"))
	raw := func(old, new string) []byte {
		return append(append(bytes.Replace(bytes.Clone(body), []byte(old), []byte(new), 1), '\n'), macLine...)
	}
	seeds := [][]byte{
		valid,
		readBytes(t, filepath.Join("testdata", "v1-bundle", ManifestName)),
		// Issue 16: non-canonical forms, deep paths, strings that are printed.
		raw(`"ownership":{`, `"ownership":{"owner":"Mallory"},"ownership":{`),
		raw(`"ownership":{`, `"Ownership":{"owner":"Mallory"},"ownership":{`),
		raw(`"version":`, `"version": `),
		raw(`"format":`, `"bundleId":"00000000000000000000000000000000","format":`),
		edit(func(m map[string]any) { file0(m)["path"] = strings.Repeat("a/", MaxPathDepth) + "z" }),
		edit(func(m map[string]any) { m["bundleId"] = "\x1b[2J" }),
		edit(func(m map[string]any) { m["sealedBy"] = "modelguard \u202egnp.exe" }),
		edit(func(m map[string]any) { m["cipher"] = "rot13" }),
		edit(func(m map[string]any) { m["key"].(map[string]any)["id"] = "kek:\x07" }),
		edit(func(m map[string]any) { m["key"].(map[string]any)["provider"] = "KEK" }),
		edit(func(m map[string]any) { m["version"] = 1 }),
		edit(func(m map[string]any) { file0(m)["path"] = "../escape" }),
		edit(func(m map[string]any) { file0(m)["path"] = "w" }),
		edit(func(m map[string]any) { file0(m)["chunkSize"] = 3 }),
		edit(func(m map[string]any) { m["version"] = 3 }),
		edit(func(m map[string]any) { m["files"] = []any{} }),
		rewrite(t, valid, func(m map[string]any) { file0(m)["size"] = 1 << 40 }, false),
		bytes.SplitN(valid, []byte("\n"), 2)[0],
		[]byte("{}\n{\"mac\":\"hmac-sha256:\"}\n"),
	}
	var out [][]any
	for _, s := range seeds {
		out = append(out, []any{s})
	}
	return out
}

func chunkSeeds(t *testing.T) [][]any {
	var out [][]any
	for i, fx := range fuzzFixtures(t) {
		s := fx.sealed
		flipped := bytes.Clone(s)
		flipped[len(flipped)-1] ^= 1
		// Issue 16: other plaintext of the same size, sealed under the same
		// DEK, as a DEK holder can; and the format v1 magic.
		other := pseudoRandom(uint64(200+i), len(fx.plain))
		forged := specSealFile(t, fuzzDEK, fx.file.Salt, fx.file.Path, fx.file.ChunkSize, other)
		v1Magic := bytes.Clone(s)
		v1Magic[magicSize-1] = 1
		for _, stream := range []bool{false, true} {
			out = append(out,
				[]any{byte(i), stream, s},
				[]any{byte(i), stream, forged},
				[]any{byte(i), stream, v1Magic},
				[]any{byte(i), stream, s[:len(s)-1]},
				[]any{byte(i), stream, append(bytes.Clone(s), s[HeaderSize:]...)},
				[]any{byte(i), stream, flipped},
				[]any{byte(i), stream, s[:HeaderSize]},
			)
		}
	}
	return out
}
