package seal

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelguard/modelguard/internal/keys"
)

// Regression tests for the findings of the format review (issue 16). Each
// of them failed on the format v1 code (commit 3249d8e), against which they
// were run with only specSealFileVersion added.

// forgeBundle copies bundle and forges the copy (see forgeInPlace). It
// returns the forged bundle's directory.
func forgeBundle(t *testing.T, bundle string, dek []byte, replace map[string][]byte, edit func(m *Manifest)) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "forged")
	copyDir(t, bundle, dir)
	forgeInPlace(t, dir, dek, replace, edit)
	return dir
}

// forgeInPlace does to the bundle in dir what a holder of its DEK can: it
// re-encrypts the files in replace under the DEK, applies edit to the
// manifest and MACs the result under the same DEK.
func forgeInPlace(t *testing.T, dir string, dek []byte, replace map[string][]byte, edit func(m *Manifest)) {
	t.Helper()
	m, err := ReadManifest(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range m.Files {
		f := &m.Files[i]
		if plain, ok := replace[f.Path]; ok {
			writeBytes(t, filepath.Join(dir, filepath.FromSlash(f.SealedPath())),
				specSealFileVersion(t, m.Version, dek, f.Salt, f.Path, f.ChunkSize, plain))
		}
	}
	if edit != nil {
		edit(m)
	}
	data, err := m.encode(dek)
	if err != nil {
		t.Fatal(err)
	}
	writeBytes(t, filepath.Join(dir, ManifestName), data)
}

// Finding 1: the pinned digest covers the plaintext. A DEK holder who
// re-encrypts a file and keeps the manifest must not pass --expect-digest.
func TestFindingDEKHolderSameSizeForgery(t *testing.T) {
	files := map[string][]byte{"a.bin": pseudoRandom(1, 3*DefaultChunkSize), "config.json": []byte(`{"x":1}`)}
	bundle, m := sealFiles(t, files, SealOptions{})
	dek := bundleDEK(t, m)
	other := pseudoRandom(2, 3*DefaultChunkSize)
	forged := forgeBundle(t, bundle, dek, map[string][]byte{"a.bin": other}, nil)

	dest := memDir(t)
	_, err := Unseal(context.Background(), forged, filepath.Join(dest, "out"), UnsealOptions{OpenOptions: OpenOptions{
		Key: Key{DEK: dek}, ExpectDigest: m.ModelDigest}})
	if err == nil {
		t.Fatal("unseal --expect-digest accepted a re-encrypted file under the pinned digest")
	}
	mustContain(t, err.Error(), "a.bin")
	mustContain(t, err.Error(), "does not match")
	if got := entries(t, dest); len(got) != 0 {
		t.Errorf("the failed unseal left %v", got)
	}
}

// Finding 1, resized: the forger changes a file's size in the manifest,
// keeps its digest (the model digest covers digests and paths only) and
// re-MACs the manifest. Verify with the KEK must refuse it.
func TestFindingDEKHolderResizedForgery(t *testing.T) {
	files := map[string][]byte{"a.bin": pseudoRandom(1, 2*DefaultChunkSize+10), "config.json": []byte(`{"x":1}`)}
	bundle, m := sealFiles(t, files, SealOptions{})
	dek := bundleDEK(t, m)
	other := pseudoRandom(3, DefaultChunkSize+77)
	forged := forgeBundle(t, bundle, dek, map[string][]byte{"a.bin": other}, func(fm *Manifest) {
		for i := range fm.Files {
			if fm.Files[i].Path == "a.bin" {
				fm.Files[i].Size = int64(len(other))
			}
		}
	})
	_, err := Verify(context.Background(), forged, OpenOptions{Key: Key{Provider: testKEK(t)}, ExpectDigest: m.ModelDigest})
	if err == nil {
		t.Fatal("verify with the KEK accepted a resized re-encryption under the pinned digest")
	}
	mustContain(t, err.Error(), "a.bin")
}

// Finding 3: the wrapped DEK is bound to its bundle. A DEK holder who
// copies bundle A's key record into a bundle of other weights must not get
// it to open under the KEK.
func TestFindingWrapReusedAcrossBundles(t *testing.T) {
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": pseudoRandom(1, 5000)}, SealOptions{})
	dek := bundleDEK(t, m)
	other := pseudoRandom(4, 7000)
	forged := forgeBundle(t, bundle, dek, map[string][]byte{"a.bin": other}, func(fm *Manifest) {
		fm.Files[0].Size = int64(len(other))
		fm.Files[0].Digest = FileDigest(other)
		fm.ModelDigest = ModelDigest(fm.Files)
	})
	fm, err := ReadManifest(context.Background(), forged, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Verify(context.Background(), forged, OpenOptions{Key: Key{Provider: testKEK(t)}, ExpectDigest: fm.ModelDigest})
	if err == nil {
		t.Fatal("a bundle minted by a data-key holder with another bundle's wrapped key opened under the KEK")
	}
	if !errors.Is(err, keys.ErrWrongKey) {
		t.Errorf("got %v, want an error wrapping keys.ErrWrongKey", err)
	}
}

// Finding 4: a canonical manifest. Duplicate keys, and keys that differ
// only in case, inside the MAC'd bytes must be refused, so that jq and
// modelguard cannot read different owners.
func TestFindingNonCanonicalManifest(t *testing.T) {
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": pseudoRandom(1, 100)}, SealOptions{Ownership: Ownership{Owner: "Acme Corp"}})
	dek := bundleDEK(t, m)
	body, _, _ := bytes.Cut(readBytes(t, filepath.Join(bundle, ManifestName)), []byte("\n"))
	tests := map[string]string{
		"duplicate key":         strings.Replace(string(body), `"ownership":{"owner":"Acme Corp"}`, `"ownership":{"owner":"Acme Corp"},"ownership":{"owner":"Mallory"}`, 1),
		"key differing by case": strings.Replace(string(body), `"ownership":{"owner":"Acme Corp"}`, `"ownership":{"owner":"Acme Corp"},"Ownership":{"owner":"Mallory"}`, 1),
		"whitespace":            strings.Replace(string(body), `"version":`, `"version": `, 1),
	}
	for name, edited := range tests {
		t.Run(name, func(t *testing.T) {
			if edited == string(body) {
				t.Fatal("the edit did not apply")
			}
			mac, err := computeMAC(dek, []byte(edited))
			if err != nil {
				t.Fatal(err)
			}
			file := fmt.Sprintf("%s\n{\"mac\":%q}\n", edited, macPrefix+base64.StdEncoding.EncodeToString(mac))
			if _, err := ParseManifest([]byte(file)); err == nil {
				t.Fatal("a non-canonical manifest was accepted")
			}
		})
	}
}

// Finding 5: bounded parsing before authentication. A path of thousands of
// elements is refused outright.
func TestFindingDeepPathRefused(t *testing.T) {
	deep := strings.Repeat("a/", 2000) + "z"
	file := rewrite(t, validManifestFile(t), func(m map[string]any) { file0(m)["path"] = deep }, true)
	_, err := ParseManifest(file)
	if err == nil {
		t.Fatal("a manifest path of 2001 elements was accepted")
	}
	mustContain(t, err.Error(), "elements")
}

// Finding 6: https means https. A redirect from the https bundle to plain
// http is refused, with the default client and with a caller's client.
func TestFindingHTTPSRedirectToHTTPRefused(t *testing.T) {
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": pseudoRandom(1, 100)}, SealOptions{})
	plain := httptest.NewServer(http.FileServer(http.Dir(bundle)))
	t.Cleanup(plain.Close)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+strings.TrimPrefix(r.URL.Path, "/m"), http.StatusFound)
	}))
	t.Cleanup(tlsSrv.Close)
	clients := map[string]HTTPDoer{
		"default client":  DefaultHTTPClient(tlsSrv.Client().Transport.(*http.Transport).Clone()),
		"caller's client": tlsSrv.Client(),
	}
	for name, client := range clients {
		t.Run(name, func(t *testing.T) {
			_, err := Verify(context.Background(), tlsSrv.URL+"/m", OpenOptions{Key: Key{DEK: bundleDEK(t, m)}, HTTPClient: client})
			if err == nil {
				t.Fatal("a redirect to http:// was followed")
			}
			mustContain(t, err.Error(), "http://")
		})
	}
}

// Finding 7: every manifest string that is printed is validated. Control
// characters would otherwise reach terminals and logs through inspect and
// the wrong-key error.
func TestFindingControlCharactersInPrintedFields(t *testing.T) {
	valid := validManifestFile(t)
	esc := "\x1b]0;owned\x07\x1b[2J"
	tests := map[string]func(m map[string]any){
		"bundleId":      func(m map[string]any) { m["bundleId"] = esc },
		"sealedBy":      func(m map[string]any) { m["sealedBy"] = "modelguard" + esc },
		"cipher":        func(m map[string]any) { m["cipher"] = esc },
		"key.provider":  func(m map[string]any) { m["key"].(map[string]any)["provider"] = "kek" + esc },
		"key.id":        func(m map[string]any) { m["key"].(map[string]any)["id"] = "kek:" + esc },
		"long key.id":   func(m map[string]any) { m["key"].(map[string]any)["id"] = strings.Repeat("k", 5000) },
		"sealedBy bidi": func(m map[string]any) { m["sealedBy"] = "modelguard \u202egnp.exe" },
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseManifest(rewrite(t, valid, edit, true)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
