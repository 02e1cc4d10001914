package keyrelease

import (
	"context"
	"testing"
	"time"
)

// BenchmarkSealOpen is the crypto of one release: seal on the server, open
// in the pod, plus the pod's key generation.
func BenchmarkSealOpen(b *testing.B) {
	f := newFixture(b)
	binding := Binding{Model: testModel, ModelDigest: testDigest, PodUID: testPodUID, Key: f.record}
	for b.Loop() {
		eph, err := NewEphemeralKey()
		if err != nil {
			b.Fatal(err)
		}
		sealed, err := SealDataKey(eph.PublicKey(), binding, f.dek)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := eph.Open(sealed, binding); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReleaseLoopback is one full release over loopback TLS with a real
// KEK, a fresh connection per release as the init container makes. The
// verifier is instant, so this is the protocol's own cost; the cluster
// figures (TokenReview, pod lookups) come from the e2e benchmark.
func BenchmarkReleaseLoopback(b *testing.B) {
	f := newFixture(b)
	s, err := NewServer(ServerOptions{Verifier: f.allowWhen(), Keys: f.keysFor(), Log: logrDiscard()})
	if err != nil {
		b.Fatal(err)
	}
	srv, caFile := tlsServer(b, s)
	c, err := NewClient(ClientOptions{URL: srv.URL, CAFile: caFile, Backoff: fastBackoff(time.Second), Log: logrDiscard()})
	if err != nil {
		b.Fatal(err)
	}
	p := f.releaseParams()
	for b.Loop() {
		if _, err := c.Release(context.Background(), p); err != nil {
			b.Fatal(err)
		}
	}
}
