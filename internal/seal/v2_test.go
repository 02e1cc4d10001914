package seal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelguard/modelguard/internal/keys"
)

// v1Files is the model in testdata/v1-bundle, sealed by the format version 1
// code (commit 3249d8e) with the test KEK, 1 KiB chunks, deterministic salts
// and a fixed time.
var v1Files = map[string][]byte{
	"config.json":       []byte(`{"model_type":"test"}`),
	"empty":             {},
	"weights/model.bin": pseudoRandom(1001, 5000),
}

const v1Digest = "sha256:70264abfe1a8dc9c18c4f8128f053d347eda37bfc1313b9c3a74674adee59872"

// TestV1BundleStaysReadable opens the checked-in version 1 bundle with the
// KEK and with its DEK, and checks that it says it has an unbound key wrap.
func TestV1BundleStaysReadable(t *testing.T) {
	bundle := filepath.Join("testdata", "v1-bundle")
	m, err := ReadManifest(context.Background(), bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != 1 || m.ModelDigest != v1Digest {
		t.Fatalf("version %d digest %s, want 1 and %s", m.Version, m.ModelDigest, v1Digest)
	}
	if got, want := m.FormatDescription(), "format v1 (unbound key wrap)"; got != want {
		t.Errorf("FormatDescription() = %q, want %q", got, want)
	}
	if m.Binding().Bound() {
		t.Error("a version 1 binding claims to be bound")
	}
	for name, key := range map[string]Key{"KEK": {Provider: testKEK(t)}, "DEK": {DEK: bundleDEK(t, m)}} {
		t.Run(name, func(t *testing.T) {
			dest := memDir(t)
			res, err := Unseal(context.Background(), bundle, dest, UnsealOptions{OpenOptions: OpenOptions{Key: key, ExpectDigest: v1Digest}})
			if err != nil {
				t.Fatalf("Unseal: %v", err)
			}
			if res.Manifest.Version != 1 {
				t.Errorf("unsealed as version %d", res.Manifest.Version)
			}
			if diff := cmp.Diff(digestsOf(v1Files), treeDigests(t, dest)); diff != "" {
				t.Errorf("unsealed files (-want +got):\n%s", diff)
			}
		})
	}
	// The plaintext digest check covers version 1 too.
	forged := forgeBundle(t, bundle, bundleDEK(t, m), map[string][]byte{"weights/model.bin": pseudoRandom(9, 5000)}, nil)
	if _, err := Verify(context.Background(), forged, OpenOptions{Key: Key{Provider: testKEK(t)}, ExpectDigest: v1Digest}); !errors.Is(err, ErrPlaintextDigest) {
		t.Errorf("a re-encrypted version 1 file: got %v, want ErrPlaintextDigest", err)
	}
}

// TestSealWritesVersion2 checks what version 2 adds: the magic's version
// byte, and a wrapped key that opens only for this bundle id and digest.
func TestSealWritesVersion2(t *testing.T) {
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": pseudoRandom(1, 3000)}, SealOptions{})
	if m.Version != 2 || m.FormatDescription() != "format v2" {
		t.Errorf("version %d (%s), want 2 (format v2)", m.Version, m.FormatDescription())
	}
	if got := readBytes(t, filepath.Join(bundle, "a.bin.sealed"))[:magicSize]; string(got) != "MGSEAL\x00\x02" {
		t.Errorf("magic %q, want MGSEAL\\x00\\x02", got)
	}
	ctx := context.Background()
	kek := testKEK(t)
	rk := ResolvedKeyOf(m)
	if _, err := UnwrapDEK(ctx, rk.Key, rk.Binding(m.ModelDigest), kek); err != nil {
		t.Fatalf("unwrapping for the bundle's own digest: %v", err)
	}
	wrongs := map[string]keys.Binding{
		"another digest":    rk.Binding("sha256:" + strings.Repeat("0", 64)),
		"another bundle id": {Version: 2, BundleID: strings.Repeat("0", 32), ModelDigest: m.ModelDigest},
		"as version 1":      {Version: 1},
	}
	for name, b := range wrongs {
		if _, err := UnwrapDEK(ctx, rk.Key, b, kek); !errors.Is(err, keys.ErrWrongKey) {
			t.Errorf("%s: got %v, want ErrWrongKey", name, err)
		}
	}
}

// TestSealWithKey seals with a data key handed in and a WrapFunc in place of
// a KEK, as a pod that asks the operator to wrap does, and opens the result.
func TestSealWithKey(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	files := map[string][]byte{"a.bin": pseudoRandom(1, 3000), "b/c": []byte("x")}
	writeTree(t, src, files)
	dek, err := NewDataKey()
	if err != nil {
		t.Fatal(err)
	}
	var asked []keys.Binding
	kek := testKEK(t)
	wrap := func(ctx context.Context, b keys.Binding) (KeyInfo, error) {
		asked = append(asked, b)
		return ProviderWrap(kek, dek)(ctx, b)
	}
	out := filepath.Join(t.TempDir(), "bundle")
	m, err := SealWithKey(context.Background(), src, out, dek, wrap, SealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]keys.Binding{m.Binding()}, asked); diff != "" {
		t.Errorf("wrap was asked for (-want +got):\n%s", diff)
	}
	if _, err := Verify(context.Background(), out, OpenOptions{Key: Key{Provider: kek}, ExpectDigest: m.ModelDigest}); err != nil {
		t.Errorf("Verify with the KEK: %v", err)
	}
	if _, err := Verify(context.Background(), out, OpenOptions{Key: Key{DEK: dek}, ExpectDigest: m.ModelDigest}); err != nil {
		t.Errorf("Verify with the DEK: %v", err)
	}

	failing := func(context.Context, keys.Binding) (KeyInfo, error) {
		return KeyInfo{}, errors.New("key release unavailable")
	}
	out2 := filepath.Join(t.TempDir(), "bundle2")
	if _, err := SealWithKey(context.Background(), src, out2, dek, failing, SealOptions{}); err == nil || !strings.Contains(err.Error(), "key release unavailable") {
		t.Errorf("a failing wrap: got %v", err)
	}
	if got := entries(t, filepath.Dir(out2)); len(got) != 0 {
		t.Errorf("a failed SealWithKey left %v", got)
	}
	if _, err := SealWithKey(context.Background(), src, out2, dek[:16], wrap, SealOptions{}); !errors.Is(err, keys.ErrInvalidKey) {
		t.Errorf("a 16-byte data key: got %v, want ErrInvalidKey", err)
	}
}

// TestPathTreeWorkIsLinear bounds the work of the file/directory check by
// counting it: for deep paths it must stay within a small multiple of the
// paths' total length, where a walk up each path costs depth × length.
func TestPathTreeWorkIsLinear(t *testing.T) {
	var files []File
	total := 0
	for i := range 2000 {
		p := strings.Repeat("d/", MaxPathDepth-1) + fmt.Sprintf("f%05d", i)
		files = append(files, File{Path: p})
		total += len(p)
	}
	work, err := checkPathTree(files)
	if err != nil {
		t.Fatal(err)
	}
	if work > 2*total {
		t.Errorf("checking %d paths of %d bytes in all took %d steps, more than twice their length", len(files), total, work)
	}
	// And it still finds a file that is also a directory, either way round.
	for _, paths := range [][]string{{"a/b", "a/b/c"}, {"a/b/c", "a/b"}} {
		fs := []File{{Path: paths[0]}, {Path: paths[1]}}
		if _, err := checkPathTree(fs); err == nil || !strings.Contains(err.Error(), "a file and also the directory") {
			t.Errorf("%v: got %v", paths, err)
		}
	}
}

// TestManifestCaps checks the bounds the specification states.
func TestManifestCaps(t *testing.T) {
	valid := validManifestFile(t)
	tooDeep := strings.Repeat("d/", MaxPathDepth) + "f"
	tests := map[string]struct {
		data []byte
		want string
	}{
		"path depth": {rewrite(t, valid, func(m map[string]any) { file0(m)["path"] = tooDeep }, true), "elements, more than 64"},
		"file count": {rewrite(t, valid, func(m map[string]any) {
			files := m["files"].([]any)
			for len(files) <= MaxFiles {
				files = append(files, files[0])
			}
			m["files"] = files
		}, false), "more than the 65536 a bundle may hold"},
		"manifest size": {bytes.Repeat([]byte(" "), MaxManifestSize+1), "more than the 67108864 accepted"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseManifest(tt.data)
			if err == nil {
				t.Fatal("accepted")
			}
			mustContain(t, err.Error(), tt.want)
		})
	}
}
