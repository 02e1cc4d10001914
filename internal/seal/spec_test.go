package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// This file re-implements docs/sealed-format.md from the document alone,
// with the standard library, sequentially and without sharing code with the
// package, so that the implementation and the specification are checked
// against each other.

func specGCM(t testing.TB, key []byte) cipher.AEAD {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return aead
}

func specHKDF(t testing.TB, secret, salt []byte, info string, n int) []byte {
	t.Helper()
	k, err := hkdf.Key(sha256.New, secret, salt, info, n)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func specNonce(i uint64, last bool) []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint64(n[3:11], i)
	if last {
		n[11] = 1
	}
	return n
}

// specSealFile encrypts one file as §3 and §4 describe, for format version 2.
func specSealFile(t testing.TB, dek, salt []byte, path string, chunkSize int, plain []byte) []byte {
	t.Helper()
	return specSealFileVersion(t, 2, dek, salt, path, chunkSize, plain)
}

// specSealFileVersion encrypts one file for the given format version, which
// only the magic's last byte depends on.
func specSealFileVersion(t testing.TB, version int, dek, salt []byte, path string, chunkSize int, plain []byte) []byte {
	t.Helper()
	aead := specGCM(t, specHKDF(t, dek, salt, "modelguard/v1 file key\x00"+path, 32))
	out := append([]byte("MGSEAL\x00"), byte(version))
	out = binary.BigEndian.AppendUint32(out, uint32(chunkSize))
	out = append(out, salt...)
	n := max(1, (len(plain)+chunkSize-1)/chunkSize)
	for i := range n {
		chunk := plain[min(i*chunkSize, len(plain)):min((i+1)*chunkSize, len(plain))]
		out = aead.Seal(out, specNonce(uint64(i), i == n-1), chunk, nil)
	}
	return out
}

type specManifest struct {
	Version  int    `json:"version"`
	BundleID string `json:"bundleId"`
	Key      struct {
		ID         string `json:"id"`
		WrappedDEK string `json:"wrappedDek"`
	} `json:"key"`
	ModelDigest string `json:"modelDigest"`
	Files       []struct {
		Path      string `json:"path"`
		Size      int    `json:"size"`
		ChunkSize int    `json:"chunkSize"`
		Salt      string `json:"salt"`
		Digest    string `json:"digest"`
	} `json:"files"`
}

// specOpen opens a bundle with the KEK as §2, §5 and §7 describe and returns
// the plaintext files and the DEK.
func specOpen(t testing.TB, dir string, kek []byte) (map[string][]byte, []byte) {
	t.Helper()
	file := readBytes(t, filepath.Join(dir, "modelguard.json"))
	line1, line2, _ := bytes.Cut(file, []byte("\n"))
	var m specManifest
	if err := json.Unmarshal(line1, &m); err != nil {
		t.Fatal(err)
	}
	if want := "kek:" + hex.EncodeToString(specHKDF(t, kek, nil, "modelguard/v1 key id", 8)); m.Key.ID != want {
		t.Errorf("key id %s, the spec gives %s", m.Key.ID, want)
	}
	wrapped, _ := base64.StdEncoding.DecodeString(m.Key.WrappedDEK)
	if len(wrapped) != 61 || wrapped[0] != 1 {
		t.Fatalf("wrapped DEK is %d bytes starting %d; the spec says 61 starting 1", len(wrapped), wrapped[0])
	}
	if m.Version != 2 {
		t.Fatalf("version %d, want 2", m.Version)
	}
	// §2.1: version 2 binds the wrapping to the bundle id and model digest.
	aad := "modelguard/v2 dek-wrap\x00" + m.BundleID + "\x00" + m.ModelDigest
	dek, err := specGCM(t, kek).Open(nil, wrapped[1:13], wrapped[13:], []byte(aad))
	if err != nil {
		t.Fatalf("unwrapping as specified: %v", err)
	}
	mac := hmac.New(sha256.New, specHKDF(t, dek, nil, "modelguard/v1 manifest mac", 32))
	mac.Write(line1)
	var macDoc struct{ MAC string }
	if err := json.Unmarshal(line2, &macDoc); err != nil {
		t.Fatal(err)
	}
	if want := "hmac-sha256:" + base64.StdEncoding.EncodeToString(mac.Sum(nil)); macDoc.MAC != want {
		t.Fatalf("manifest MAC %s, the spec gives %s", macDoc.MAC, want)
	}
	out := map[string][]byte{}
	var lines []byte
	for _, f := range m.Files {
		salt, _ := base64.StdEncoding.DecodeString(f.Salt)
		sealed := readBytes(t, filepath.Join(dir, filepath.FromSlash(f.Path)+".sealed"))
		wantHeader := append([]byte("MGSEAL\x00\x02"), binary.BigEndian.AppendUint32(nil, uint32(f.ChunkSize))...)
		if !bytes.Equal(sealed[:44], append(wantHeader, salt...)) {
			t.Fatalf("%s: header differs from the spec", f.Path)
		}
		aead := specGCM(t, specHKDF(t, dek, salt, "modelguard/v1 file key\x00"+f.Path, 32))
		n := max(1, (f.Size+f.ChunkSize-1)/f.ChunkSize)
		if len(sealed) != 44+f.Size+16*n {
			t.Fatalf("%s: sealed size %d, the spec gives %d", f.Path, len(sealed), 44+f.Size+16*n)
		}
		var plain []byte
		for i := range n {
			start := 44 + i*(f.ChunkSize+16)
			end := min(start+f.ChunkSize+16, len(sealed))
			p, err := aead.Open(nil, specNonce(uint64(i), i == n-1), sealed[start:end], nil)
			if err != nil {
				t.Fatalf("%s: chunk %d does not open as specified: %v", f.Path, i, err)
			}
			plain = append(plain, p...)
		}
		out[f.Path] = plain
		// §6: the list digest over 1 MiB leaves.
		var leaves []byte
		for off := 0; off < len(plain); off += 1 << 20 {
			s := sha256.Sum256(plain[off:min(off+1<<20, len(plain))])
			leaves = append(leaves, s[:]...)
		}
		s := sha256.Sum256(leaves)
		if d := "sha256:" + hex.EncodeToString(s[:]); d != f.Digest {
			t.Errorf("%s: digest %s, the spec gives %s", f.Path, f.Digest, d)
		}
		lines = append(lines, hex.EncodeToString(s[:])+"  "+f.Path+"\n"...) // files are sorted
	}
	s := sha256.Sum256(lines)
	if d := "sha256:" + hex.EncodeToString(s[:]); d != m.ModelDigest {
		t.Errorf("model digest %s, the spec gives %s", m.ModelDigest, d)
	}
	return out, dek
}

func TestImplementationMatchesSpec(t *testing.T) {
	files := map[string][]byte{
		"a/empty":     {},
		"a/small.bin": pseudoRandom(1, 5000),
		"big.bin":     pseudoRandom(2, 2*DigestLeafSize+3),
	}
	for _, chunkSize := range []int{MinChunkSize, DefaultChunkSize, 4 * DefaultChunkSize} {
		bundle, m := sealFiles(t, files, SealOptions{ChunkSize: chunkSize})
		got, dek := specOpen(t, bundle, testKEKBytes)
		if diff := cmp.Diff(digestsOf(files), digestsOf(got)); diff != "" {
			t.Errorf("chunk size %d: spec decryption (-want +got):\n%s", chunkSize, diff)
		}
		// And encryption: the specified bytes are exactly what Seal wrote.
		for _, f := range m.Files {
			want := specSealFile(t, dek, f.Salt, f.Path, chunkSize, files[f.Path])
			if !bytes.Equal(want, readBytes(t, filepath.Join(bundle, filepath.FromSlash(f.SealedPath())))) {
				t.Errorf("chunk size %d: %s differs from the specified encryption", chunkSize, f.Path)
			}
		}
	}
}
