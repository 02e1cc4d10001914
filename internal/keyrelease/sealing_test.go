package keyrelease

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelguard/modelguard/internal/seal"
)

// TestSealThenReleaseEndToEnd seals a model in a "training pod" through the
// wrap endpoint, then releases its key to a "serving pod" through the release
// endpoint and verifies the bundle with it: both endpoints, the real seal
// engine and a real KEK that never leaves the server side.
func TestSealThenReleaseEndToEnd(t *testing.T) {
	f := newFixture(t)
	var logs logBuffer
	srv, caFile := tlsServer(t, newTestServer(t, f.allowWhen(), f.keysFor(), &logs, nil))
	c := newTestClient(t, srv.URL, caFile, fastBackoff(5*time.Second), logs.logger())

	src := t.TempDir()
	weights := strings.Repeat("trade secret weights ", 5000)
	if err := os.WriteFile(filepath.Join(src, "model.safetensors"), []byte(weights), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "bundle")
	trainer := ModelRef{Kind: KindTrainingJob, Namespace: "nlp", Name: "finetune"}
	provider := NewSealingProvider(c, WrapParams{Token: f.releaseParams().Token, Model: trainer, PodUID: testPodUID})
	m, err := seal.Seal(context.Background(), src, out, seal.SealOptions{Provider: provider, Ownership: seal.Ownership{Owner: "Acme Corp"}})
	if err != nil {
		t.Fatalf("sealing through the wrap endpoint: %v", err)
	}
	if m.Key.Provider != f.kek.Kind() || m.Key.ID != f.kek.ID() {
		t.Fatalf("the manifest records key %s %s, want the server's %s %s", m.Key.Provider, m.Key.ID, f.kek.Kind(), f.kek.ID())
	}
	if _, err := provider.Unwrap(context.Background(), m.Key.WrappedDEK, m.Binding()); err == nil {
		t.Error("the sealing provider unwrapped a key")
	}

	manifest, err := seal.ReadManifest(context.Background(), out, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := f.releaseParams()
	p.ModelDigest, p.Bundle, p.Key = manifest.ModelDigest, BundleRefOf(manifest.Binding()), manifest.Key
	dek, err := c.Release(context.Background(), p)
	if err != nil {
		t.Fatalf("releasing the new bundle's key: %v", err)
	}
	res, err := seal.Verify(context.Background(), out, seal.OpenOptions{Key: seal.Key{DEK: dek}, ExpectDigest: manifest.ModelDigest})
	if err != nil {
		t.Fatalf("verifying the bundle with the released key: %v", err)
	}
	if res == nil {
		t.Fatal("no verify result")
	}
	f.assertNoSecrets(t, "the log", logs.String())
	for _, form := range []string{string(dek), hex.EncodeToString(dek), base64.StdEncoding.EncodeToString(dek)} {
		if strings.Contains(logs.String(), form) {
			t.Error("the log contains the bundle's data key")
		}
	}
}
