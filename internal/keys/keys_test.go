package keys

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kekBytes is not all printable ASCII, so that ParseKEK takes it raw.
var kekBytes = []byte("0123456789abcdef0123456789ABCDE\xff")

// leakForms are the ways key bytes could show up in text.
func leakForms(key []byte) []string {
	return []string{
		string(key),
		hex.EncodeToString(key),
		strings.ToUpper(hex.EncodeToString(key)),
		base64.StdEncoding.EncodeToString(key),
		base64.RawStdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key),
		base64.RawURLEncoding.EncodeToString(key),
	}
}

func assertNoLeak(t *testing.T, text string, key []byte) {
	t.Helper()
	for _, form := range leakForms(key) {
		// Forms this short occur by chance and mean nothing.
		if len(form) >= 8 && strings.Contains(text, form) {
			t.Errorf("key material %q appears in %q", form, text)
		}
	}
}

func TestParseKEK(t *testing.T) {
	want, err := NewKEK(kekBytes)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "raw", data: kekBytes},
		{name: "hex", data: []byte(hex.EncodeToString(kekBytes))},
		{name: "hex with newline", data: []byte(hex.EncodeToString(kekBytes) + "\n")},
		{name: "upper hex", data: []byte(strings.ToUpper(hex.EncodeToString(kekBytes)))},
		{name: "base64", data: []byte(base64.StdEncoding.EncodeToString(kekBytes))},
		{name: "base64 with newline", data: []byte(base64.StdEncoding.EncodeToString(kekBytes) + "\n")},
		{name: "base64 unpadded", data: []byte(base64.RawStdEncoding.EncodeToString(kekBytes))},
		{name: "base64 URL alphabet", data: []byte(base64.URLEncoding.EncodeToString(kekBytes))},
		{name: "too short", data: kekBytes[:31], wantErr: "want 32 raw bytes, 64 hex characters or base64 of 32 bytes; got 31 bytes"},
		{name: "base64 of 16 bytes", data: []byte(base64.StdEncoding.EncodeToString(kekBytes[:16])), wantErr: "got 24 bytes"},
		{name: "empty", data: nil, wantErr: "got 0 bytes"},
		{name: "bad hex", data: []byte(strings.Repeat("zz", 32)), wantErr: "got 64 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKEK(tt.data)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatal("ParseKEK accepted it")
				}
				if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q, want ErrInvalidKey containing %q", err, tt.wantErr)
				}
				assertNoLeak(t, err.Error(), tt.data)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID() != want.ID() {
				t.Errorf("ID %s, want %s (the same key)", got.ID(), want.ID())
			}
		})
	}
}

func TestKEKWrapUnwrap(t *testing.T) {
	ctx := context.Background()
	k, err := NewKEK(kekBytes)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewKEK(bytes.Repeat([]byte{9}, KEKSize))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^kek:[0-9a-f]{16}$`).MatchString(k.ID()) || k.ID() == other.ID() {
		t.Errorf("IDs %s and %s: want distinct kek:<16 hex>", k.ID(), other.ID())
	}
	assertNoLeak(t, k.ID(), kekBytes)

	dek := bytes.Repeat([]byte{0xd0}, DEKSize)
	bundle := Binding{Version: 2, BundleID: strings.Repeat("ab", 16), ModelDigest: "sha256:" + strings.Repeat("0", 64)}
	wrapped, err := k.Wrap(ctx, dek, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(wrapped) != WrappedKEKSize || wrapped[0] != 1 {
		t.Errorf("wrapped is %d bytes with version %d, want %d with 1", len(wrapped), wrapped[0], WrappedKEKSize)
	}
	again, err := k.Wrap(ctx, dek, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(wrapped, again) {
		t.Error("two wraps of the same DEK are equal: the nonce is not random")
	}
	got, err := k.Unwrap(ctx, wrapped, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(dek, got); diff != "" {
		t.Errorf("unwrapped (-want +got):\n%s", diff)
	}

	tampered := bytes.Clone(wrapped)
	tampered[30] ^= 1
	otherBundle, otherDigest, unbound := bundle, bundle, Binding{Version: 1}
	otherBundle.BundleID = strings.Repeat("cd", 16)
	otherDigest.ModelDigest = "sha256:" + strings.Repeat("1", 64)
	failures := map[string]struct {
		kek     *KEK
		wrapped []byte
		binding Binding
	}{
		"other KEK":          {other, wrapped, bundle},
		"tampered":           {k, tampered, bundle},
		"truncated":          {k, wrapped[:40], bundle},
		"bad version":        {k, append([]byte{2}, wrapped[1:]...), bundle},
		"other bundle id":    {k, wrapped, otherBundle},
		"other model digest": {k, wrapped, otherDigest},
		"as an unbound wrap": {k, wrapped, unbound},
	}
	for name, tt := range failures {
		t.Run(name, func(t *testing.T) {
			_, err := tt.kek.Unwrap(ctx, tt.wrapped, tt.binding)
			if !errors.Is(err, ErrWrongKey) {
				t.Fatalf("got %v, want ErrWrongKey", err)
			}
			assertNoLeak(t, err.Error(), kekBytes)
			assertNoLeak(t, err.Error(), dek)
		})
	}
	if _, err := k.Wrap(ctx, dek[:16], bundle); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("wrapping a 16-byte DEK: %v, want ErrInvalidKey", err)
	}
}

func TestLoadKEKFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "kek")
	if err := os.WriteFile(good, []byte(base64.StdEncoding.EncodeToString(kekBytes)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKEKFile(good); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, kekBytes[:20], 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKEKFile(bad)
	if err == nil || !strings.Contains(err.Error(), "KEK file "+bad) {
		t.Fatalf("got %v, want an error naming the file", err)
	}
	assertNoLeak(t, err.Error(), kekBytes[:20])
	if _, err := LoadKEKFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestGenerateKEK(t *testing.T) {
	a, err := GenerateKEK()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := GenerateKEK()
	if a == b {
		t.Error("two generated KEKs are equal")
	}
	if _, err := ParseKEK([]byte(a)); err != nil {
		t.Errorf("a generated KEK does not parse: %v", err)
	}
}

func TestParseDEK(t *testing.T) {
	dek := bytes.Repeat([]byte{0xab}, DEKSize)
	for _, form := range []string{EncodeDEK(dek), EncodeDEK(dek) + "\n", hex.EncodeToString(dek), string(dek)} {
		got, err := ParseDEK([]byte(form))
		if err != nil {
			t.Fatalf("ParseDEK(%q): %v", form, err)
		}
		if diff := cmp.Diff(dek, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	}
	_, err := ParseDEK([]byte("not a key"))
	if !errors.Is(err, ErrInvalidKey) || !strings.HasPrefix(err.Error(), "data key: ") {
		t.Errorf("got %v", err)
	}
}

func TestParseSecretRef(t *testing.T) {
	tests := []struct {
		in      string
		want    SecretRef
		wantErr string
	}{
		{in: "models/llama-kek:kek", want: SecretRef{Namespace: "models", Name: "llama-kek", Key: "kek"}},
		{in: "ns/name.with.dots:key_with-chars.bin", want: SecretRef{Namespace: "ns", Name: "name.with.dots", Key: "key_with-chars.bin"}},
		{in: "name:key", wantErr: "want namespace/name:key"},
		{in: "ns/name", wantErr: "want namespace/name:key"},
		{in: "ns/:key", wantErr: "want namespace/name:key"},
		{in: "NS/name:key", wantErr: "namespace:"},
		{in: "ns/Name:key", wantErr: "name:"},
		{in: "ns/name:bad/key", wantErr: "key:"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSecretRef(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestKEKFromSecret(t *testing.T) {
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "kek"},
		Data:       map[string][]byte{"kek": kekBytes, "short": kekBytes[:10]},
	}
	want, _ := NewKEK(kekBytes)
	got, err := KEKFromSecret(secret, "kek")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID() != want.ID() {
		t.Errorf("ID %s, want %s", got.ID(), want.ID())
	}
	_, err = KEKFromSecret(secret, "missing")
	if !errors.Is(err, ErrKeyNotInSecret) || !strings.Contains(err.Error(), `secret models/kek: the Secret has no such key "missing"`) {
		t.Errorf("missing key: %v", err)
	}
	_, err = KEKFromSecret(secret, "short")
	if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), `secret models/kek key "short"`) {
		t.Errorf("short key: %v", err)
	}
	assertNoLeak(t, err.Error(), kekBytes[:10])
}

// Finding 8 of issue 16: a raw KEK is raw. A 32-character passphrase is
// refused, pointing to the base64 form modelguard generates.
func TestParseKEKRefusesPassphrase(t *testing.T) {
	for _, pass := range []string{"correct horse battery staple!!!!", "0123456789abcdef0123456789ABCDEF"} {
		_, err := ParseKEK([]byte(pass))
		if err == nil {
			t.Fatalf("the passphrase %q was taken as a raw KEK", pass)
		}
		if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), "base64") {
			t.Errorf("got %v, want ErrInvalidKey pointing to the base64 form", err)
		}
		assertNoLeak(t, err.Error(), []byte(pass))
	}
}

func TestBindingAAD(t *testing.T) {
	digest := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name    string
		b       Binding
		aad     string
		context map[string]string
	}{
		{name: "version 1 is unbound", b: Binding{Version: 1, BundleID: "ignored", ModelDigest: digest}, aad: "modelguard/v1 dek-wrap"},
		{name: "no version is unbound", b: Binding{}, aad: "modelguard/v1 dek-wrap"},
		{
			name: "version 2", b: Binding{Version: 2, BundleID: strings.Repeat("ab", 16), ModelDigest: digest},
			aad: "modelguard/v2 dek-wrap\x00" + strings.Repeat("ab", 16) + "\x00" + digest,
			context: map[string]string{
				"modelguard.dev/format-version": "2",
				"modelguard.dev/bundle-id":      strings.Repeat("ab", 16),
				"modelguard.dev/model-digest":   digest,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.aad, string(tt.b.AAD())); diff != "" {
				t.Errorf("AAD (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.context, tt.b.EncryptionContext()); diff != "" {
				t.Errorf("EncryptionContext (-want +got):\n%s", diff)
			}
		})
	}
}
