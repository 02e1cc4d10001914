package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// FieldOwner is the server-side apply field manager of every ModelGuard
// write.
const FieldOwner = "modelguard"

// applyIfChanged server-side-applies desired unless the live object already
// holds exactly the fields ModelGuard owns with the desired values. Extracting
// our managed fields (rather than comparing whole objects) ignores what the
// API server and other controllers add, yet still notices a hand edit: an
// edit moves the field to the editor's manager, so it drops out of ours.
// Skipping no-op applies keeps the controller at zero writes in steady state.
func applyIfChanged[Obj client.Object, AC runtime.ApplyConfiguration](
	ctx context.Context,
	c client.Client,
	live Obj,
	desired AC,
	extract func(Obj, string) (AC, error),
) (applied bool, err error) {
	key := client.ObjectKeyFromObject(live)
	switch err := c.Get(ctx, key, live); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, fmt.Errorf("reading %T %s: %w", live, key, err)
	default:
		current, err := extract(live, FieldOwner)
		if err != nil {
			return false, fmt.Errorf("extracting managed fields of %T %s: %w", live, key, err)
		}
		if equality.Semantic.DeepEqual(current, desired) {
			return false, nil
		}
	}
	if err := c.Apply(ctx, desired, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, fmt.Errorf("applying %T %s: %w", live, key, err)
	}
	return true, nil
}
