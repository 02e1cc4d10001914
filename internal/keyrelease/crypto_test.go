package keyrelease

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestSealedDataKeyOpensOnlyForItsBinding(t *testing.T) {
	f := newFixture(t)
	eph, err := NewEphemeralKey()
	if err != nil {
		t.Fatal(err)
	}
	b := Binding{Model: testModel, ModelDigest: testDigest, PodUID: testPodUID, Key: f.record}
	sealed, err := SealDataKey(eph.PublicKey(), b, f.dek)
	if err != nil {
		t.Fatal(err)
	}
	if len(sealed) != SealedKeySize {
		t.Fatalf("sealed key is %d bytes, want %d", len(sealed), SealedKeySize)
	}
	if bytes.Contains(sealed, f.dek) {
		t.Fatal("the sealed key contains the data key in clear")
	}
	got, err := eph.Open(sealed, b)
	if err != nil {
		t.Fatalf("opening with the right key and binding: %v", err)
	}
	if !bytes.Equal(got, f.dek) {
		t.Fatal("opened a different data key")
	}

	other, err := NewEphemeralKey()
	if err != nil {
		t.Fatal(err)
	}
	otherRecord := f.record
	otherRecord.WrappedDEK = append([]byte(nil), f.record.WrappedDEK...)
	otherRecord.WrappedDEK[5] ^= 1
	type openCase struct {
		name    string
		key     *EphemeralKey
		sealed  []byte
		binding func(Binding) Binding
	}
	cases := []openCase{
		{"another pod's private key", other, sealed, nil},
		{"another model name", eph, sealed, func(b Binding) Binding { b.Model.Name = "other"; return b }},
		{"another namespace", eph, sealed, func(b Binding) Binding { b.Model.Namespace = "other"; return b }},
		{"another kind", eph, sealed, func(b Binding) Binding { b.Model.Kind = KindTrainingJob; return b }},
		{"another digest", eph, sealed, func(b Binding) Binding { b.ModelDigest = "sha256:" + string(bytes.Repeat([]byte("b"), 64)); return b }},
		{"another pod UID", eph, sealed, func(b Binding) Binding { b.PodUID = "00000000-0000-4000-8000-000000000000"; return b }},
		{"another key ID", eph, sealed, func(b Binding) Binding { b.Key.ID = "kek:0000000000000000"; return b }},
		{"another wrapped key", eph, sealed, func(b Binding) Binding { b.Key = otherRecord; return b }},
		{"truncated", eph, sealed[:len(sealed)-1], nil},
		{"empty", eph, nil, nil},
	}
	for i := range SealedKeySize {
		flipped := append([]byte(nil), sealed...)
		flipped[i] ^= 0x80
		cases = append(cases, openCase{fmt.Sprintf("bit flipped in byte %d", i), eph, flipped, nil})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bb := b
			if tc.binding != nil {
				bb = tc.binding(b)
			}
			got, err := tc.key.Open(tc.sealed, bb)
			if !errors.Is(err, ErrSealedKeyInvalid) {
				t.Fatalf("want ErrSealedKeyInvalid, got %v", err)
			}
			if got != nil {
				t.Fatal("a failed open returned plaintext")
			}
		})
	}
}

func TestSealDataKeyRefusesBadRecipients(t *testing.T) {
	f := newFixture(t)
	b := Binding{Model: testModel, ModelDigest: testDigest, PodUID: testPodUID, Key: f.record}
	for name, pub := range map[string][]byte{
		"short":         make([]byte, 31),
		"long":          make([]byte, 33),
		"all zeros":     make([]byte, 32), // a low-order point
		"order-8 point": lowOrderPoint(),
		"missing":       nil,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := SealDataKey(pub, b, f.dek); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("want ErrBadRequest, got %v", err)
			}
		})
	}
}

// lowOrderPoint is a point of order 8 on Curve25519 (RFC 7748 test vectors,
// as listed by libsodium's blocklist).
func lowOrderPoint() []byte {
	return []byte{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00}
}
