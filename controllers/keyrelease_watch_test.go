package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
)

// TestKeyReleaseWatchWakesEveryModelOnANewCA: a new CA bundle reaches the
// pod templates of every model at once, not at the next resync; an
// unchanged endpoint wakes nobody.
func TestKeyReleaseWatchWakesEveryModelOnANewCA(t *testing.T) {
	var bundle atomic.Value
	bundle.Store("CA 1")
	w := &keyReleaseWatch{
		endpoint: func() builder.KeyRelease {
			return builder.KeyRelease{URL: "https://kr.ns.svc", CABundle: bundle.Load().(string), Namespace: "ns"}
		},
		models: func(context.Context) ([]mlv1alpha1.ProtectedModel, error) {
			return []mlv1alpha1.ProtectedModel{
				{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "m1"}},
				{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "m2"}},
			}, nil
		},
		events:   make(chan event.GenericEvent, 4),
		interval: 10 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Start(ctx) }()

	time.Sleep(50 * time.Millisecond) // several ticks with the same endpoint
	if n := len(w.events); n != 0 {
		t.Fatalf("%d events without a change", n)
	}
	bundle.Store("CA 1 + CA 2")
	var woken []string
	for len(woken) < 2 {
		select {
		case ev := <-w.events:
			woken = append(woken, ev.Object.GetNamespace()+"/"+ev.Object.GetName())
		case <-time.After(5 * time.Second):
			t.Fatalf("woken %v after the CA bundle changed, want both models", woken)
		}
	}
	if diff := cmp.Diff([]string{"a/m1", "b/m2"}, woken); diff != "" {
		t.Errorf("woken models (-want +got):\n%s", diff)
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(w.events); n != 0 {
		t.Errorf("%d more events after one change", n)
	}
}
