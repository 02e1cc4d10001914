package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// applyMode says how far ModelGuard keeps a child in line with its builder.
type applyMode int

const (
	// enforce applies the desired object whenever the fields ModelGuard owns
	// differ from it, and removes what other managers added outside metadata
	// and status (a sidecar, a volume, an env var, a selector label), so that
	// a tenant's edit of a managed object does not survive.
	enforce applyMode = iota
	// createOnce creates the object when it is missing and then leaves it
	// alone, for objects that others mutate by design after creation: a Job
	// that Kueue admits gets spec.suspend and tolerations written by Kueue,
	// and a forced apply would take them back. A Job's template is immutable
	// too, so its name must change with it.
	createOnce
)

// applyIfChanged keeps one child as desired with as few writes as possible.
// It reads the child (from the cache); afterwards live holds what was
// observed before any repair, or the server's answer to the create, so that
// the caller reads the state that was in force.
//
// In enforce mode it server-side-applies desired unless the live object
// already holds exactly the fields ModelGuard owns with the desired values.
// Extracting our managed fields (rather than comparing whole objects)
// ignores what the API server and other controllers add, yet still notices a
// hand edit: an edit moves the field to the editor's manager, so it drops out
// of ours. Fields another manager added are removed by an update first
// (removeStrayFields). Skipping no-op writes keeps the controller at zero
// writes in steady state.
func applyIfChanged[Obj client.Object, AC runtime.ApplyConfiguration](
	ctx context.Context,
	c client.Client,
	live Obj,
	desired AC,
	extract func(Obj, string) (AC, error),
	mode applyMode,
) (written bool, err error) {
	key := client.ObjectKeyFromObject(live)
	switch err := c.Get(ctx, key, live); {
	case apierrors.IsNotFound(err):
		return true, apply(ctx, c, live, desired)
	case err != nil:
		return false, fmt.Errorf("reading %T %s: %w", live, key, err)
	}
	if mode == createOnce {
		return false, nil
	}
	removed, err := removeStrayFields(ctx, c, live, desired)
	if err != nil {
		return false, err
	}
	current, err := extract(live, mlv1alpha1.FieldManager)
	if err != nil {
		return false, fmt.Errorf("extracting managed fields of %T %s: %w", live, key, err)
	}
	if equality.Semantic.DeepEqual(current, desired) {
		return removed, nil
	}
	// Apply a copy: the client decodes the server's answer into what it
	// applied, and the caller still needs what it built.
	answer := live.DeepCopyObject().(Obj)
	return true, apply(ctx, c, answer, desired)
}

// apply server-side-applies desired with force and decodes the server's
// answer into into, leaving desired as it was built.
func apply[Obj client.Object, AC runtime.ApplyConfiguration](ctx context.Context, c client.Client, into Obj, desired AC) error {
	key := client.ObjectKeyFromObject(into)
	data, err := json.Marshal(desired)
	if err != nil {
		return fmt.Errorf("encoding %T %s: %w", into, key, err)
	}
	sent := reflect.New(reflect.TypeOf(desired).Elem()).Interface().(AC)
	if err := json.Unmarshal(data, sent); err != nil {
		return fmt.Errorf("copying %T %s: %w", into, key, err)
	}
	if err := c.Apply(ctx, sent, client.FieldOwner(mlv1alpha1.FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying %T %s: %w", into, key, err)
	}
	answer, err := json.Marshal(sent)
	if err != nil {
		return fmt.Errorf("encoding the answer for %T %s: %w", into, key, err)
	}
	if err := json.Unmarshal(answer, into); err != nil {
		return fmt.Errorf("decoding the answer for %T %s: %w", into, key, err)
	}
	return nil
}

// removeStrayFields deletes, with one update, the fields that managers other
// than ModelGuard own in live outside metadata and status and that desired
// does not set. Server-side apply alone cannot do this: a forced apply takes
// back the fields it sets, but leaves another manager's additions (a tenant's
// sidecar, volume or env var) in place. live itself is left as observed.
func removeStrayFields(ctx context.Context, c client.Client, live client.Object, desired any) (bool, error) {
	key := client.ObjectKeyFromObject(live)
	var foreign []metav1.ManagedFieldsEntry
	for _, entry := range live.GetManagedFields() {
		// Only ModelGuard's own applied set is exempt: an update under its
		// manager name is someone else's edit all the same.
		ours := entry.Manager == mlv1alpha1.FieldManager && entry.Operation == metav1.ManagedFieldsOperationApply
		if !ours && entry.Subresource == "" && entry.FieldsV1 != nil {
			foreign = append(foreign, entry)
		}
	}
	// Most children have no other manager: skip the conversions, which
	// would otherwise run for every child on every reconcile.
	if len(foreign) == 0 {
		return false, nil
	}
	object, err := runtime.DefaultUnstructuredConverter.ToUnstructured(live)
	if err != nil {
		return false, fmt.Errorf("converting %T %s: %w", live, key, err)
	}
	want, err := toMap(desired)
	if err != nil {
		return false, fmt.Errorf("converting the desired %T %s: %w", live, key, err)
	}
	var removed []string
	for _, entry := range foreign {
		var owned map[string]any
		if err := json.Unmarshal(entry.FieldsV1.Raw, &owned); err != nil {
			return false, fmt.Errorf("reading the fields %s owns in %T %s: %w", entry.Manager, live, key, err)
		}
		// Labels and annotations of others stay (the Deployment controller
		// writes its revision there); ModelGuard's own are enforced by the
		// apply. Status belongs to the controllers that report it.
		delete(owned, "f:metadata")
		delete(owned, "f:status")
		_, gone := pruneFields(owned, object, want, "")
		removed = append(removed, gone...)
	}
	if len(removed) == 0 {
		return false, nil
	}
	gvk, err := apiutil.GVKForObject(live, c.Scheme())
	if err != nil {
		return false, fmt.Errorf("finding the kind of %T %s: %w", live, key, err)
	}
	repaired := &unstructured.Unstructured{Object: object}
	repaired.SetGroupVersionKind(gvk)
	switch err := c.Update(ctx, repaired, client.FieldOwner(mlv1alpha1.FieldManager)); {
	case apierrors.IsConflict(err):
		// The cache lags behind the object, often behind our own repair;
		// the watch event of the newer version reconciles it again.
		return false, nil
	case err != nil:
		return false, fmt.Errorf("removing %v that another manager added to %s %s: %w", removed, gvk.Kind, key, err)
	}
	return true, nil
}

func toMap(v any) (map[string]any, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	return out, json.Unmarshal(data, &out)
}

// pruneFields walks one manager's field set (the managedFields "FieldsV1"
// tree: f:<field>, k:<list item key>, v:<set value>, i:<index>) over the live
// object and drops every field or list item that the desired object does not
// have. It returns the pruned live node and the paths it removed.
func pruneFields(owned map[string]any, live, want any, path string) (any, []string) {
	var removed []string
	switch node := live.(type) {
	case map[string]any:
		wantMap, _ := want.(map[string]any)
		for element, sub := range owned {
			name, ok := strings.CutPrefix(element, "f:")
			if !ok {
				continue
			}
			child, present := node[name]
			if !present {
				continue
			}
			wantChild, wanted := wantMap[name]
			if !wanted {
				delete(node, name)
				removed = append(removed, path+"."+name)
				continue
			}
			if subtree, ok := sub.(map[string]any); ok && hasChildren(subtree) {
				var gone []string
				node[name], gone = pruneFields(subtree, child, wantChild, path+"."+name)
				removed = append(removed, gone...)
			}
		}
		return node, removed
	case []any:
		wantList, _ := want.([]any)
		drop := map[int]bool{}
		for element, sub := range owned {
			i := findItem(node, element)
			if i < 0 {
				continue
			}
			j := findItem(wantList, element)
			if j < 0 {
				drop[i] = true
				removed = append(removed, path+"["+element+"]")
				continue
			}
			if subtree, ok := sub.(map[string]any); ok && hasChildren(subtree) {
				var gone []string
				node[i], gone = pruneFields(subtree, node[i], wantList[j], path+"["+element+"]")
				removed = append(removed, gone...)
			}
		}
		if len(drop) == 0 {
			return node, removed
		}
		kept := make([]any, 0, len(node)-len(drop))
		for i, item := range node {
			if !drop[i] {
				kept = append(kept, item)
			}
		}
		return kept, removed
	}
	return live, removed
}

// findItem finds a list item by its managedFields path element: k:{key
// fields} for a list keyed by fields, v:value for a set, i:index otherwise.
func findItem(list []any, element string) int {
	if k, ok := strings.CutPrefix(element, "k:"); ok {
		var keyFields map[string]any
		if json.Unmarshal([]byte(k), &keyFields) != nil {
			return -1
		}
		for i, item := range list {
			fields, ok := item.(map[string]any)
			if !ok {
				continue
			}
			match := true
			for f, v := range keyFields {
				match = match && sameJSON(fields[f], v)
			}
			if match {
				return i
			}
		}
		return -1
	}
	if v, ok := strings.CutPrefix(element, "v:"); ok {
		var value any
		if json.Unmarshal([]byte(v), &value) != nil {
			return -1
		}
		for i, item := range list {
			if sameJSON(item, value) {
				return i
			}
		}
		return -1
	}
	if index, ok := strings.CutPrefix(element, "i:"); ok {
		var i int
		if _, err := fmt.Sscanf(index, "%d", &i); err == nil && i >= 0 && i < len(list) {
			return i
		}
	}
	return -1
}

// sameJSON compares values decoded by different means (int64 from the
// converter, float64 from encoding/json) by their JSON form.
func sameJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}

func hasChildren(subtree map[string]any) bool {
	for k := range subtree {
		if k != "." {
			return true
		}
	}
	return false
}
