package seal

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/modelguard/modelguard/internal/keys"
)

// The tamper fixture: a.bin spans 41 chunks of 64 KiB in three work units
// (so that other units' plaintext is written before a bad chunk fails), and
// w/b.bin one chunk.
const (
	tamperChunk  = 64 << 10
	tamperChunks = 41
	tamperSize   = (tamperChunks-1)*tamperChunk + 100
)

var tamperFiles = map[string][]byte{
	"a.bin":   pseudoRandom(21, tamperSize),
	"w/b.bin": pseudoRandom(22, 3000),
}

// chunkOff is the offset of chunk i in a sealed a.bin.
func chunkOff(i int64) int64 { return int64(HeaderSize) + i*(tamperChunk+TagSize) }

func readBytes(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeBytes(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func flipBit(t *testing.T, p string, off int64) {
	t.Helper()
	b := readBytes(t, p)
	b[off] ^= 0x10
	writeBytes(t, p, b)
}

// editManifest rewrites the manifest's first line with edit applied, keeping
// the original MAC, as an attacker without the DEK must.
func editManifest(t *testing.T, dir string, edit func(m map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, ManifestName)
	body, macLine, _ := bytes.Cut(readBytes(t, p), []byte("\n"))
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	writeBytes(t, p, append(append(canonicalJSON(t, m), '\n'), macLine...))
}

// canonicalJSON encodes an edited manifest as modelguard writes manifests,
// so that the edit, not its form, is what a reader trips on.
func canonicalJSON(t testing.TB, edited map[string]any) []byte {
	t.Helper()
	data, err := json.Marshal(edited)
	if err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := strictUnmarshal(data, &m); err != nil {
		return data // not a manifest any more: keep it as it is
	}
	if data, err = json.Marshal(&m); err != nil {
		t.Fatal(err)
	}
	return data
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// loadMemSource reads a bundle directory into a memSource that streams
// without announcing lengths, the hardest case for truncation detection.
func loadMemSource(t *testing.T, dir string) *memSource {
	t.Helper()
	src := &memSource{manifest: readBytes(t, filepath.Join(dir, ManifestName)), files: map[string][]byte{}, stream: true}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, SealedSuffix) {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		src.files[filepath.ToSlash(rel)] = readBytes(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestTamper(t *testing.T) {
	opts := SealOptions{ChunkSize: tamperChunk, Ownership: Ownership{Owner: "Acme Corp", License: "LicenseRef-Acme"}}
	original, m := sealFiles(t, tamperFiles, opts)
	// A second sealing of the same model: same digest, different data key.
	other, _ := sealFiles(t, tamperFiles, opts)
	a := func(dir string) string { return filepath.Join(dir, "a.bin"+SealedSuffix) }
	b := func(dir string) string { return filepath.Join(dir, "w", "b.bin"+SealedSuffix) }
	otherKEK, err := keys.NewKEK(bytes.Repeat([]byte{7}, keys.KEKSize))
	if err != nil {
		t.Fatal(err)
	}
	dek := bundleDEK(t, m)
	wrongDEK := bytes.Clone(dek)
	wrongDEK[0] ^= 1

	tests := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		key    Key
		expect string
		want   string // regexp on the error
		// wantHTTPS replaces want for the https source when it differs.
		wantHTTPS string
		is        error
	}{
		{name: "bit flip in a header's salt",
			tamper: func(t *testing.T, dir string) { flipBit(t, a(dir), int64(HeaderSize-1)) },
			want:   `^header of a\.bin does not match the authenticated manifest: its salt differs`, is: ErrHeader},
		{name: "bit flip in a header's magic",
			tamper: func(t *testing.T, dir string) { flipBit(t, a(dir), 2) },
			want:   `^header of a\.bin does not match the authenticated manifest: bad magic`, is: ErrHeader},
		{name: "bit flip in a header's chunk size",
			tamper: func(t *testing.T, dir string) { flipBit(t, a(dir), int64(magicSize+2)) },
			want:   `^header of a\.bin does not match the authenticated manifest: its chunk size differs`, is: ErrHeader},
		{name: "bit flip in a chunk body",
			tamper: func(t *testing.T, dir string) { flipBit(t, a(dir), chunkOff(37)+1000) },
			want:   `^chunk 37 of a\.bin failed authentication$`, is: ErrAuthentication},
		{name: "bit flip in a tag",
			tamper: func(t *testing.T, dir string) { flipBit(t, a(dir), chunkOff(39)-3) },
			want:   `^chunk 38 of a\.bin failed authentication$`, is: ErrAuthentication},
		{name: "bit flip in the last, short chunk",
			tamper: func(t *testing.T, dir string) { flipBit(t, a(dir), chunkOff(40)+50) },
			want:   `^chunk 40 of a\.bin failed authentication$`, is: ErrAuthentication},
		{name: "bit flip in the manifest",
			tamper: func(t *testing.T, dir string) {
				p := filepath.Join(dir, ManifestName)
				data := readBytes(t, p)
				i := bytes.Index(data, []byte(`"owner":"Acme`))
				data[i+len(`"owner":"Acm`)] ^= 0x01
				writeBytes(t, p, data)
			},
			want: `^modelguard\.json: manifest failed authentication`, is: ErrManifestAuth},
		{name: "manifest edited consistently (digests recomputed)",
			tamper: func(t *testing.T, dir string) {
				editManifest(t, dir, func(mm map[string]any) {
					files := mm["files"].([]any)
					files[1].(map[string]any)["digest"] = FileDigest([]byte("other weights"))
					var fs []File
					for _, f := range files {
						f := f.(map[string]any)
						fs = append(fs, File{Path: f["path"].(string), Digest: f["digest"].(string)})
					}
					mm["modelDigest"] = ModelDigest(fs)
				})
			},
			// Format v2 binds the wrapped key to the model digest, so the KEK
			// refuses before the MAC is reached; with the DEK, the MAC does.
			want: `^unwrapping the data key: key kek:[0-9a-f]{16}, for format v2 bundle [0-9a-f]{32} model sha256:[0-9a-f]{64}: the wrapped data key does not open`,
			is:   keys.ErrWrongKey},
		{name: "manifest edited consistently, opened with the data key", key: Key{DEK: dek},
			tamper: func(t *testing.T, dir string) {
				editManifest(t, dir, func(mm map[string]any) { mm["ownership"].(map[string]any)["owner"] = "Mallory" })
			},
			want: `^modelguard\.json: manifest failed authentication`, is: ErrManifestAuth},
		{name: "file re-encrypted by a data-key holder, same size", key: Key{DEK: dek}, expect: m.ModelDigest,
			tamper: func(t *testing.T, dir string) {
				forgeInPlace(t, dir, dek, map[string][]byte{"a.bin": pseudoRandom(23, tamperSize)}, nil)
			},
			want: `^a\.bin: sealed file was tampered with: its decrypted content does not match its digest in the manifest \(it has sha256:[0-9a-f]{64}, the manifest records sha256:[0-9a-f]{64}`,
			is:   ErrPlaintextDigest},
		{name: "file resized and re-encrypted by a data-key holder, manifest re-MACed", expect: m.ModelDigest,
			tamper: func(t *testing.T, dir string) {
				forgeInPlace(t, dir, dek, map[string][]byte{"w/b.bin": pseudoRandom(24, 5000)}, func(fm *Manifest) { fm.Files[1].Size = 5000 })
			},
			want: `^w/b\.bin: sealed file was tampered with: its decrypted content does not match`, is: ErrPlaintextDigest},
		{name: "bundle minted by a data-key holder with this bundle's wrapped key",
			tamper: func(t *testing.T, dir string) {
				other := pseudoRandom(25, 5000)
				forgeInPlace(t, dir, dek, map[string][]byte{"w/b.bin": other}, func(fm *Manifest) {
					fm.Files[1].Size, fm.Files[1].Digest = 5000, FileDigest(other)
					fm.ModelDigest = ModelDigest(fm.Files)
				})
			},
			want: `^unwrapping the data key: key kek:[0-9a-f]{16}, for format v2 bundle [0-9a-f]{32} model sha256:[0-9a-f]{64}: the wrapped data key does not open`,
			is:   keys.ErrWrongKey},
		{name: "manifest with a duplicate key, re-MACed by a data-key holder", key: Key{DEK: dek},
			tamper: func(t *testing.T, dir string) {
				p := filepath.Join(dir, ManifestName)
				body, _, _ := bytes.Cut(readBytes(t, p), []byte("\n"))
				body = bytes.Replace(body, []byte(`"ownership":{`), []byte(`"ownership":{"owner":"Mallory"},"ownership":{`), 1)
				mac, err := computeMAC(dek, body)
				if err != nil {
					t.Fatal(err)
				}
				writeBytes(t, p, fmt.Appendf(append(body, '\n'), "{\"mac\":%q}\n", macPrefix+base64.StdEncoding.EncodeToString(mac)))
			},
			want: `^manifest: not in canonical form`},
		{name: "truncated file",
			tamper: func(t *testing.T, dir string) { writeBytes(t, a(dir), readBytes(t, a(dir))[:chunkOff(39)+100]) },
			want:   `^chunk 39 of a\.bin: sealed file is truncated \(the sealed file ends inside this chunk`, is: ErrTruncated},
		{name: "file truncated inside its header",
			tamper: func(t *testing.T, dir string) { writeBytes(t, b(dir), readBytes(t, b(dir))[:10]) },
			want:   `^header of w/b\.bin does not match the authenticated manifest: the sealed file ends inside its header`, is: ErrHeader},
		{name: "appended chunk",
			tamper: func(t *testing.T, dir string) {
				data := readBytes(t, a(dir))
				writeBytes(t, a(dir), append(data, data[chunkOff(39):chunkOff(40)]...))
			},
			want: `^chunk 40 of a\.bin: sealed file was tampered with: it has data after its last chunk`, is: ErrExtended},
		{name: "dropped last chunk",
			tamper: func(t *testing.T, dir string) { writeBytes(t, a(dir), readBytes(t, a(dir))[:chunkOff(40)]) },
			want:   `^chunk 40 of a\.bin: sealed file is truncated \(the chunk is missing`, is: ErrTruncated},
		{name: "two chunks swapped",
			tamper: func(t *testing.T, dir string) {
				data := readBytes(t, a(dir))
				c36 := bytes.Clone(data[chunkOff(36):chunkOff(37)])
				copy(data[chunkOff(36):], data[chunkOff(37):chunkOff(38)])
				copy(data[chunkOff(37):], c36)
				writeBytes(t, a(dir), data)
			},
			want: `^chunk 36 of a\.bin failed authentication$`, is: ErrAuthentication},
		{name: "two files swapped",
			tamper: func(t *testing.T, dir string) {
				da, db := readBytes(t, a(dir)), readBytes(t, b(dir))
				writeBytes(t, a(dir), db)
				writeBytes(t, b(dir), da)
			},
			want: `^header of a\.bin does not match the authenticated manifest: its salt differs: the sealed file was swapped`, is: ErrHeader},
		{name: "manifest from another bundle (replay)",
			tamper: func(t *testing.T, dir string) {
				writeBytes(t, filepath.Join(dir, ManifestName), readBytes(t, filepath.Join(other, ManifestName)))
			},
			// The other bundle holds the same model, so the digest check
			// passes; the files still do not belong to that manifest.
			expect: m.ModelDigest,
			want:   `^header of a\.bin does not match the authenticated manifest: its salt differs`, is: ErrHeader},
		{name: "chunk from another bundle",
			tamper: func(t *testing.T, dir string) {
				data, foreign := readBytes(t, a(dir)), readBytes(t, a(other))
				copy(data[chunkOff(37):chunkOff(38)], foreign[chunkOff(37):chunkOff(38)])
				writeBytes(t, a(dir), data)
			},
			want: `^chunk 37 of a\.bin failed authentication$`, is: ErrAuthentication},
		{name: "sealed file missing",
			tamper: func(t *testing.T, dir string) {
				if err := os.Remove(b(dir)); err != nil {
					t.Fatal(err)
				}
			},
			want:      `^w/b\.bin: the sealed file w/b\.bin\.sealed is missing from the bundle$`,
			wantHTTPS: `^w/b\.bin: fetching https://127\.0\.0\.1:\d+/models/m1/w/b\.bin\.sealed: HTTP 404 Not Found$`},
		{name: "wrong KEK", key: Key{Provider: otherKEK},
			want: `^wrong key: the bundle was sealed with key kek:[0-9a-f]{16}, this key is kek:[0-9a-f]{16}`, is: keys.ErrWrongKey},
		{name: "wrapped data key modified",
			tamper: func(t *testing.T, dir string) {
				editManifest(t, dir, func(mm map[string]any) {
					key := mm["key"].(map[string]any)
					wrapped, err := base64.StdEncoding.DecodeString(key["wrappedDek"].(string))
					if err != nil {
						t.Fatal(err)
					}
					wrapped[20] ^= 1
					key["wrappedDek"] = base64.StdEncoding.EncodeToString(wrapped)
				})
			},
			want: `^unwrapping the data key: key kek:[0-9a-f]{16}, for format v2 bundle [0-9a-f]{32} model sha256:[0-9a-f]{64}: the wrapped data key does not open`,
			is:   keys.ErrWrongKey},
		{name: "wrong data key", key: Key{DEK: wrongDEK},
			want: `^modelguard\.json: manifest failed authentication`, is: ErrManifestAuth},
		{name: "wrong expected digest", expect: "sha256:" + strings.Repeat("ab", 32),
			want: `^model digest mismatch: the bundle holds sha256:[0-9a-f]{64}, expected sha256:(ab){32}$`, is: ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "bundle")
			copyDir(t, original, dir)
			if tt.tamper != nil {
				tt.tamper(t, dir)
			}
			key := tt.key
			if key.DEK == nil && key.Provider == nil {
				key.Provider = testKEK(t)
			}
			url, client, _ := serveBundle(t, dir)
			sources := []struct {
				name, location, want string
				client               HTTPDoer
			}{
				{name: "directory", location: dir, want: tt.want},
				{name: "https", location: url, client: client, want: cmpOr(tt.wantHTTPS, tt.want)},
			}
			for _, src := range sources {
				dest := memDir(t)
				_, err := Unseal(context.Background(), src.location, dest, UnsealOptions{OpenOptions: OpenOptions{
					Key: key, ExpectDigest: tt.expect, HTTPClient: src.client}})
				checkTamperError(t, src.name, err, src.want, tt.is)
				if got := entries(t, dest); len(got) != 0 {
					t.Errorf("%s: failed unseal left %v in DEST", src.name, got)
				}
			}
			if tt.wantHTTPS == "" {
				// The same bytes as a stream of unknown length, as from a
				// chunked download.
				_, err := verifySource(context.Background(), loadMemSource(t, dir), OpenOptions{Key: key, ExpectDigest: tt.expect})
				checkTamperError(t, "stream", err, tt.want, tt.is)
			}
		})
	}
}

func checkTamperError(t *testing.T, source string, err error, want string, is error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: tampering went undetected", source)
		return
	}
	if !regexp.MustCompile(want).MatchString(err.Error()) {
		t.Errorf("%s: error %q does not match %q", source, err, want)
	}
	if is != nil && !errors.Is(err, is) {
		t.Errorf("%s: error %q is not %v", source, err, is)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
