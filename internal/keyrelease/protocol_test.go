package keyrelease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelguard/modelguard/internal/seal"
)

// requestJSON is a valid request as a JSON object, edited by the cases.
func requestJSON(t *testing.T, req any) map[string]any {
	t.Helper()
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func encode(t *testing.T, m any) []byte {
	t.Helper()
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeReleaseRequest(t *testing.T) {
	f := newFixture(t)
	valid := f.validRequest(t)
	edit := func(fn func(m map[string]any)) []byte {
		m := requestJSON(t, valid)
		fn(m)
		return encode(t, m)
	}
	sub := func(m map[string]any, key string) map[string]any { return m[key].(map[string]any) }

	got, err := DecodeReleaseRequest(bytes.NewReader(encode(t, valid)))
	if err != nil {
		t.Fatalf("valid request rejected: %v", err)
	}
	if diff := cmp.Diff(valid, got); diff != "" {
		t.Fatalf("decoded request differs (-sent +got):\n%s", diff)
	}

	cases := []struct {
		name string
		body []byte
		want string
	}{
		{"empty body", nil, "empty or truncated"},
		{"not JSON", []byte("token=abc"), "not valid JSON"},
		{"JSON array", []byte("[]"), "the message must be a JSON object"},
		{"null", []byte("null"), "version must be 1"},
		{"two objects", append(encode(t, valid), encode(t, valid)...), "more than one JSON value"},
		{"trailing garbage", append(encode(t, valid), []byte(" x")...), "more than one JSON value"},
		{"too large", append(encode(t, valid), bytes.Repeat([]byte(" "), MaxRequestBytes)...), "larger than"},
		{"unknown field", edit(func(m map[string]any) { m["namespace"] = "kube-system" }), `unknown field "namespace"`},
		{"unknown nested field", edit(func(m map[string]any) { sub(m, "key")["kek"] = "x" }), `unknown field "kek"`},
		{"wrong type", edit(func(m map[string]any) { m["version"] = "1" }), "field version must be a JSON number"},
		{"version 2", edit(func(m map[string]any) { m["version"] = 2 }), "version must be 1"},
		{"token missing", edit(func(m map[string]any) { delete(m, "token") }), "token is required"},
		{"token not a JWT", edit(func(m map[string]any) { m["token"] = "not a jwt" }), "token is not a JWT"},
		{"token too long", edit(func(m map[string]any) { m["token"] = strings.Repeat("a", MaxTokenBytes+1) }), "token is 16385 bytes"},
		{"model kind unknown", edit(func(m map[string]any) { sub(m, "model")["kind"] = "Pod" }), "model.kind must be"},
		{"model namespace invalid", edit(func(m map[string]any) { sub(m, "model")["namespace"] = "NLP" }), "model.namespace must be a DNS-1123 label"},
		{"model name missing", edit(func(m map[string]any) { delete(sub(m, "model"), "name") }), "model.name must be a DNS-1035 label"},
		{"bundle missing", edit(func(m map[string]any) { delete(m, "bundle") }), "bundle.formatVersion must be 1 to 2, got 0"},
		{"bundle format from the future", edit(func(m map[string]any) { sub(m, "bundle")["formatVersion"] = 3 }), "bundle.formatVersion must be 1 to 2, got 3"},
		{"bundle id not hex", edit(func(m map[string]any) { sub(m, "bundle")["bundleId"] = "zz112233445566778899aabbccddeeff" }), "bundle.bundleId must be 32 lowercase hex digits"},
		{"pod UID not a UUID", edit(func(m map[string]any) { m["podUID"] = "pod-1" }), "podUID must be a lowercase UUID"},
		{"digest other algorithm", edit(func(m map[string]any) { m["modelDigest"] = "md5:abc" }), "modelDigest must be sha256:"},
		{"key provider missing", edit(func(m map[string]any) { delete(sub(m, "key"), "provider") }), "key.provider must be"},
		{"key id with space", edit(func(m map[string]any) { sub(m, "key")["id"] = "kek: 1" }), "key.id must be"},
		{"wrapped key missing", edit(func(m map[string]any) { delete(sub(m, "key"), "wrappedDek") }), "key.wrappedDek must be 1 to 4096 bytes"},
		{"wrapped key a number", edit(func(m map[string]any) { sub(m, "key")["wrappedDek"] = 7 }), "field key.wrappedDek must be a JSON base64 string"},
		{"wrapped key not base64", edit(func(m map[string]any) { sub(m, "key")["wrappedDek"] = "!!!" }), "not a valid message"},
		{"public key missing", edit(func(m map[string]any) { delete(m, "publicKey") }), "publicKey must be a 32-byte"},
		{"public key low order", edit(func(m map[string]any) { m["publicKey"] = make([]byte, 32) }), "low-order"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeReleaseRequest(bytes.NewReader(tc.body))
			if got != nil || !errors.Is(err, ErrBadRequest) {
				t.Fatalf("want ErrBadRequest and no request, got %v, %v", got, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			f.assertNoSecrets(t, "the error", err.Error())
		})
	}
}

func TestDecodeWrapRequest(t *testing.T) {
	f := newFixture(t)
	valid := &WrapRequest{Version: ProtocolVersion, Token: f.token, Model: testModel, PodUID: testPodUID,
		ModelDigest: testDigest, Bundle: testBundle, DEK: SecretBytes(f.dek)}
	got, err := DecodeWrapRequest(bytes.NewReader(encode(t, valid)))
	if err != nil {
		t.Fatalf("valid request rejected: %v", err)
	}
	if diff := cmp.Diff(valid, got); diff != "" {
		t.Fatalf("decoded request differs (-sent +got):\n%s", diff)
	}
	cases := []struct {
		name string
		edit func(r *WrapRequest)
		want string
	}{
		{"dek short", func(r *WrapRequest) { r.DEK = f.dek[:31] }, "dek must be 32 bytes"},
		{"dek missing", func(r *WrapRequest) { r.DEK = nil }, "dek must be 32 bytes"},
		{"digest missing", func(r *WrapRequest) { r.ModelDigest = "" }, "modelDigest must be sha256:"},
		// A new bundle's wrapping is always bound: format v1's is not.
		{"format v1", func(r *WrapRequest) { r.Bundle.FormatVersion = 1 }, "bundle.formatVersion must be 2 to 2, got 1"},
		{"bundle id missing", func(r *WrapRequest) { r.Bundle.BundleID = "" }, "bundle.bundleId must be 32 lowercase hex digits"},
		{"bundle id upper case", func(r *WrapRequest) { r.Bundle.BundleID = strings.ToUpper(testBundle.BundleID) }, "bundle.bundleId must be"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := *valid
			tc.edit(&req)
			_, err := DecodeWrapRequest(bytes.NewReader(encode(t, &req)))
			if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error saying %q, got %v", tc.want, err)
			}
			f.assertNoSecrets(t, "the error", err.Error())
		})
	}
}

// TestRequestsPrintNoSecrets checks every way a request might be printed by
// mistake: fmt verbs and logr.
func TestRequestsPrintNoSecrets(t *testing.T) {
	f := newFixture(t)
	release := f.validRequest(t)
	wrap := &WrapRequest{Version: ProtocolVersion, Token: f.token, Model: testModel, PodUID: testPodUID,
		ModelDigest: testDigest, Bundle: testBundle, DEK: SecretBytes(f.dek)}
	var logs logBuffer
	log := logs.logger()
	for _, v := range []any{release, *release, wrap, *wrap, release.Token, wrap.DEK} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			f.assertNoSecrets(t, fmt.Sprintf("%s of %T", verb, v), fmt.Sprintf(verb, v))
		}
		log.Info("Request", "request", v)
	}
	f.assertNoSecrets(t, "the log", logs.String())
	if !strings.Contains(logs.String(), testModel.Name) {
		t.Errorf("the log does not name the model, so the check above proves little:\n%s", logs.String())
	}
}

// FuzzDecodeReleaseRequest checks that no input panics the decoder or gets
// past it unvalidated: whatever it accepts re-encodes to a request it accepts
// again, identically. The seed corpus is in testdata/fuzz.
func FuzzDecodeReleaseRequest(f *testing.F) {
	fx := newFixture(f)
	eph, err := NewEphemeralKey()
	if err != nil {
		f.Fatal(err)
	}
	valid := &ReleaseRequest{Version: ProtocolVersion, Token: fx.token, Model: testModel, PodUID: testPodUID,
		ModelDigest: testDigest, Key: seal.KeyInfo{Provider: "kek", ID: "kek:0123456789abcdef", WrappedDEK: fx.record.WrappedDEK},
		PublicKey: eph.PublicKey()}
	data, err := json.Marshal(valid)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeReleaseRequest(bytes.NewReader(body))
		if err != nil {
			if req != nil || !errors.Is(err, ErrBadRequest) {
				t.Fatalf("a rejected request must be ErrBadRequest with no request, got %v, %v", req, err)
			}
			return
		}
		if len(body) > MaxRequestBytes {
			t.Fatalf("accepted a %d-byte body", len(body))
		}
		again, err := DecodeReleaseRequest(bytes.NewReader(encode(t, req)))
		if err != nil {
			t.Fatalf("an accepted request re-encodes to one that is rejected: %v", err)
		}
		if diff := cmp.Diff(req, again); diff != "" {
			t.Fatalf("re-decoding changed the request (-first +second):\n%s", diff)
		}
	})
}

// TestFuzzCorpusReachesAcceptance proves the checked-in corpus exercises the
// accepting path too, not only rejections.
func TestFuzzCorpusReachesAcceptance(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzDecodeReleaseRequest", "valid"))
	if err != nil {
		t.Fatal(err)
	}
	_, quoted, ok := strings.Cut(strings.TrimSpace(string(data)), "\n[]byte(")
	if !ok {
		t.Fatal("the seed is not in the go test fuzz v1 format")
	}
	body, err := strconv.Unquote(strings.TrimSuffix(quoted, ")"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeReleaseRequest(strings.NewReader(body)); err != nil {
		t.Fatalf("the valid seed is rejected: %v", err)
	}
}
