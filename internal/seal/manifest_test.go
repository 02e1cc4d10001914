package seal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// validManifestFile seals a small model and returns its manifest file.
func validManifestFile(t *testing.T) []byte {
	t.Helper()
	bundle, _ := sealFiles(t, map[string][]byte{
		"config.json": []byte("{}"),
		"w/a.bin":     pseudoRandom(1, 3000),
	}, SealOptions{Ownership: Ownership{Owner: "Acme Corp", License: "MIT"}})
	return readBytes(t, filepath.Join(bundle, ManifestName))
}

// rewrite applies edit to the manifest's JSON body, recomputes the model
// digest so that the check under test is the one reached, and keeps the MAC
// line (ParseManifest does not check it).
func rewrite(t *testing.T, file []byte, edit func(m map[string]any), recompute bool) []byte {
	t.Helper()
	body, macLine, _ := bytes.Cut(file, []byte("\n"))
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if recompute {
		if files, ok := m["files"].([]any); ok {
			var fs []File
			for _, f := range files {
				f := f.(map[string]any)
				p, _ := f["path"].(string)
				d, _ := f["digest"].(string)
				fs = append(fs, File{Path: p, Digest: d})
			}
			m["modelDigest"] = ModelDigest(fs)
		}
	}
	return append(append(canonicalJSON(t, m), '\n'), macLine...)
}

func file0(m map[string]any) map[string]any { return m["files"].([]any)[0].(map[string]any) }

func TestParseManifestRejects(t *testing.T) {
	valid := validManifestFile(t)
	if _, err := ParseManifest(valid); err != nil {
		t.Fatalf("the valid manifest does not parse: %v", err)
	}
	edit := func(f func(m map[string]any)) []byte { return rewrite(t, valid, f, true) }
	setPath := func(p string) []byte { return edit(func(m map[string]any) { file0(m)["path"] = p }) }
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{name: "one line", data: bytes.SplitN(valid, []byte("\n"), 2)[0], want: "want two lines"},
		{name: "bad MAC prefix", data: bytes.Replace(valid, []byte("hmac-sha256:"), []byte("hmac-md5:"), 1), want: "want hmac-sha256:<base64>"},
		{name: "short MAC", data: append(bytes.SplitAfterN(valid, []byte("\n"), 2)[0], `{"mac":"hmac-sha256:AAAA"}`...), want: "want base64 of 32 bytes"},
		{name: "data after the MAC line", data: append(bytes.Clone(valid), "{}\n"...), want: "unexpected data after the MAC line"},
		{name: "not JSON", data: append([]byte("not json\n"), bytes.SplitAfterN(valid, []byte("\n"), 2)[1]...), want: "manifest: invalid character"},
		{name: "unknown field", data: edit(func(m map[string]any) { m["extra"] = 1 }), want: `unknown field "extra"`},
		{name: "other format", data: edit(func(m map[string]any) { m["format"] = "other" }), want: `format "other" is not "modelguard.dev/sealed-bundle"`},
		{name: "newer version", data: edit(func(m map[string]any) { m["version"] = 3 }), want: "format version 3 is newer than this modelguard supports (2): upgrade modelguard"},
		{name: "version 0", data: edit(func(m map[string]any) { m["version"] = 0 }), want: "format version 0 is not supported"},
		{name: "other leaf size", data: edit(func(m map[string]any) { m["digestLeafSize"] = 4096 }), want: "digestLeafSize 4096 is not 1048576"},
		{name: "no wrapped key", data: edit(func(m map[string]any) { delete(m["key"].(map[string]any), "wrappedDek") }), want: "key: provider, id and wrappedDek are required"},
		{name: "bad classification", data: edit(func(m map[string]any) { m["ownership"].(map[string]any)["classification"] = "Top" }), want: `ownership.classification "Top"`},
		{name: "no files", data: edit(func(m map[string]any) { m["files"] = []any{} }), want: "a bundle holds at least one file"},
		{name: "parent path", data: setPath("../etc/passwd"), want: `has a ".." element`},
		{name: "absolute path", data: setPath("/etc/passwd"), want: "is absolute"},
		{name: "unclean path", data: setPath("a//b"), want: "is not clean"},
		{name: "backslash", data: setPath(`a\b`), want: "contains a backslash"},
		{name: "newline in path", data: setPath("a\nb"), want: "contains a control character"},
		{name: "empty path", data: setPath(""), want: "empty path"},
		{name: "long element", data: setPath(strings.Repeat("x", 250)), want: "has an element longer than 248 bytes"},
		{name: "repeated path", data: setPath("w/a.bin"), want: `"w/a.bin" is out of order or repeated`},
		{name: "unsorted paths", data: setPath("z"), want: `"w/a.bin" is out of order or repeated`},
		{name: "file and directory", data: setPath("w"), want: `"w" is a file and also the directory of "w/a.bin"`},
		{name: "negative size", data: edit(func(m map[string]any) { file0(m)["size"] = -1 }), want: "size -1 is out of range"},
		{name: "chunk size not a power of two", data: edit(func(m map[string]any) { file0(m)["chunkSize"] = 1000 }), want: "chunkSize 1000 is not a power of two"},
		{name: "chunk size too large", data: edit(func(m map[string]any) { file0(m)["chunkSize"] = 1 << 30 }), want: "is not a power of two between 1024 and 67108864"},
		{name: "short salt", data: edit(func(m map[string]any) { file0(m)["salt"] = "AAAA" }), want: "salt is 3 bytes, want 32"},
		{name: "uppercase digest", data: edit(func(m map[string]any) { file0(m)["digest"] = strings.ToUpper(file0(m)["digest"].(string)) }), want: "is not sha256:<64 hex>"},
		{name: "model digest not of the files", data: rewrite(t, valid, func(m map[string]any) { file0(m)["digest"] = FileDigest([]byte("x")) }, false),
			want: "does not match its files' digests"},
		{name: "too large", data: make([]byte, MaxManifestSize+1), want: "more than the 67108864 accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseManifest(tt.data)
			if err == nil {
				t.Fatal("ParseManifest accepted it")
			}
			mustContain(t, err.Error(), tt.want)
		})
	}
}

// TestManifestEncoding checks that a parsed manifest re-encodes to the same
// bytes and authenticates only under its own DEK.
func TestManifestEncoding(t *testing.T) {
	bundle, m := sealFiles(t, map[string][]byte{"a": {1, 2, 3}}, SealOptions{
		Ownership: Ownership{Owner: "Acme Corp", License: "Apache-2.0", Copyright: "© 2026 Acme", Classification: "Confidential"},
		SealedBy:  "modelguard test",
	})
	file := readBytes(t, filepath.Join(bundle, ManifestName))
	parsed, err := ParseManifest(file)
	if err != nil {
		t.Fatal(err)
	}
	dek := bundleDEK(t, parsed)
	if err := parsed.Authenticate(dek); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	again, err := parsed.encode(dek)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(file), string(again)); diff != "" {
		t.Errorf("re-encoding changed the manifest (-file +re-encoded):\n%s", diff)
	}
	if diff := cmp.Diff(m, parsed, cmpopts.IgnoreUnexported(Manifest{})); diff != "" {
		t.Errorf("Seal's manifest and the parsed file differ (-seal +file):\n%s", diff)
	}
	want := Ownership{Owner: "Acme Corp", License: "Apache-2.0", Copyright: "© 2026 Acme", Classification: "Confidential"}
	if diff := cmp.Diff(want, parsed.Ownership); diff != "" {
		t.Errorf("ownership (-want +got):\n%s", diff)
	}
	dek[5] ^= 1
	if err := parsed.Authenticate(dek); !errors.Is(err, ErrManifestAuth) {
		t.Errorf("Authenticate with another DEK: %v, want ErrManifestAuth", err)
	}
	if err := (&Manifest{}).Authenticate(dek); err == nil {
		t.Error("a manifest not read from a file authenticated")
	}
}

func TestFileDigest(t *testing.T) {
	leaf := func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
	listDigest := func(leaves ...[]byte) string {
		s := sha256.Sum256(bytes.Join(leaves, nil))
		return "sha256:" + hex.EncodeToString(s[:])
	}
	big := pseudoRandom(1, 2*DigestLeafSize+5)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		// An empty file has no leaves: the digest of nothing.
		{name: "empty", data: nil, want: "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{name: "one byte", data: []byte{'a'}, want: listDigest(leaf([]byte{'a'}))},
		{name: "one full leaf", data: big[:DigestLeafSize], want: listDigest(leaf(big[:DigestLeafSize]))},
		{name: "two leaves and a bit", data: big, want: listDigest(
			leaf(big[:DigestLeafSize]), leaf(big[DigestLeafSize:2*DigestLeafSize]), leaf(big[2*DigestLeafSize:]))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FileDigest(tt.data); got != tt.want {
				t.Errorf("FileDigest = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestModelDigestIsOrderIndependent(t *testing.T) {
	a := File{Path: "b/x", Digest: FileDigest([]byte("1"))}
	b := File{Path: "a", Digest: FileDigest([]byte("2"))}
	lines := strings.TrimPrefix(b.Digest, "sha256:") + "  a\n" + strings.TrimPrefix(a.Digest, "sha256:") + "  b/x\n"
	sum := sha256.Sum256([]byte(lines))
	want := "sha256:" + hex.EncodeToString(sum[:])
	for _, files := range [][]File{{a, b}, {b, a}} {
		if got := ModelDigest(files); got != want {
			t.Errorf("ModelDigest(%v) = %s, want %s", files, got, want)
		}
	}
}

// TestDigestShellRecipe runs the recipe in docs/sealed-format.md, which uses
// only coreutils, and checks that it gives the digest Seal printed.
func TestDigestShellRecipe(t *testing.T) {
	files := map[string][]byte{
		"config.json":       []byte(`{"a":1}`),
		"weights/model.bin": pseudoRandom(3, 2*DigestLeafSize+777),
		"weights/empty":     {},
		"with space/t.json": []byte("tokenizer"),
	}
	src := filepath.Join(t.TempDir(), "src")
	writeTree(t, src, files)
	m, err := Seal(context.Background(), src, filepath.Join(t.TempDir(), "out"), SealOptions{Provider: testKEK(t)})
	if err != nil {
		t.Fatal(err)
	}
	recipe := extractRecipe(t)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", recipe)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("running the documented recipe: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != m.ModelDigest {
		t.Errorf("the documented recipe gives %q, Seal gave %q", got, m.ModelDigest)
	}
}

// extractRecipe returns the shell block marked "recompute-digest" in
// docs/sealed-format.md, so that the test runs exactly what is documented.
func extractRecipe(t *testing.T) string {
	t.Helper()
	doc := readBytes(t, filepath.Join("..", "..", "docs", "sealed-format.md"))
	const start = "```sh recompute-digest\n"
	_, rest, ok := strings.Cut(string(doc), start)
	if !ok {
		t.Fatalf("docs/sealed-format.md has no %q block", strings.TrimSpace(start))
	}
	recipe, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("unterminated recipe block")
	}
	return recipe
}
