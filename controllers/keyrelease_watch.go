package controllers

import (
	"context"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/event"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
)

// keyReleaseCheckInterval is how often the key-release endpoint is compared
// with the one the models were last built with.
const keyReleaseCheckInterval = 10 * time.Second

// keyReleaseWatch wakes every model when the key-release endpoint changes,
// e.g. a renewed CA bundle (self-signed or from cert-manager): the bundle is
// in the pod templates, and no Kubernetes watch reports that it changed, so
// without this the pods would carry the old CA until the next resync.
type keyReleaseWatch struct {
	endpoint func() builder.KeyRelease
	models   func(ctx context.Context) ([]mlv1alpha1.ProtectedModel, error)
	events   chan event.GenericEvent
	interval time.Duration
}

// NeedLeaderElection is true: only the leader reconciles.
func (w *keyReleaseWatch) NeedLeaderElection() bool { return true }

// Start compares the endpoint every interval and, on a change, sends an
// event for every model. The first endpoint it sees is the baseline: models
// are reconciled on start anyway.
func (w *keyReleaseWatch) Start(ctx context.Context) error {
	last := w.endpoint()
	ticker := time.NewTicker(w.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		current := w.endpoint()
		if current == last {
			continue
		}
		models, err := w.models(ctx)
		if err != nil {
			continue // the endpoint still differs from last: the next tick tries again
		}
		last = current
		for i := range models {
			select {
			case w.events <- event.GenericEvent{Object: &models[i]}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}
