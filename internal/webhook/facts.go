package webhook

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/policy"
)

// What the guard reads from the API server when the cache may not hold it:
// a claim's labels (whether it is a protected training output) and a new
// pod's Job owner. It fails closed without them.
// +kubebuilder:rbac:groups=core,resources=persistentvolumeclaims,verbs=get
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get

// get reads an object from the cache and, when the cache does not hold it,
// from the API server: the cache holds only ModelGuard's objects, and may
// lag behind one just created. found is false when neither has it.
func (h *handler) get(ctx context.Context, key types.NamespacedName, obj client.Object) (found bool, err error) {
	err = h.reader.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) {
		err = h.apiReader.Get(ctx, key, obj)
	}
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading %T %s: %w", obj, key, err)
	}
	return true, nil
}

// protectedServiceAccount reports whether ServiceAccount ns/name is a
// protected workload's, and whose. Pods without a ServiceAccount name run as
// "default".
func (h *handler) protectedServiceAccount(ctx context.Context, ns, name string) (policy.Workload, bool, error) {
	if name == "" {
		return policy.Workload{}, false, nil
	}
	sa := &corev1.ServiceAccount{}
	key := types.NamespacedName{Namespace: ns, Name: name}
	var found bool
	var err error
	if name == "default" {
		// Nearly every tenant pod runs as default, and a model is
		// seldom called so: the cache alone answers, rather than a
		// round trip to the API server per pod. It holds a model's
		// account from moments after the operator applies it, before
		// the model's Deployment.
		switch err = h.reader.Get(ctx, key, sa); {
		case err == nil:
			found = true
		case apierrors.IsNotFound(err):
			err = nil
		default:
			err = fmt.Errorf("reading ServiceAccount %s: %w", key, err)
		}
	} else {
		found, err = h.get(ctx, key, sa)
	}
	if err != nil || !found || sa.Labels[mlv1alpha1.LabelProtected] != "true" {
		return policy.Workload{}, false, err
	}
	return policy.WorkloadFromLabels(ns, sa.Labels), true, nil
}

// podProtection reports whether a pod with labels and ServiceAccount sa is
// protected: it carries modelguard.dev/protected=true or runs as a protected
// ServiceAccount.
func (h *handler) podProtection(ctx context.Context, ns string, labels map[string]string, sa string) (policy.Workload, bool, error) {
	if labels[mlv1alpha1.LabelProtected] == "true" {
		w := policy.WorkloadFromLabels(ns, labels)
		if !w.Known() {
			// Labelled protected but naming no workload: its
			// ServiceAccount may name one.
			if saw, ok, err := h.protectedServiceAccount(ctx, ns, sa); err != nil || ok {
				return saw, true, err
			}
		}
		return w, true, nil
	}
	return h.protectedServiceAccount(ctx, ns, sa)
}

// protectedPod looks pod ns/name up and reports whether it is protected.
// A pod that does not exist is not.
func (h *handler) protectedPod(ctx context.Context, ns, name string) (*corev1.Pod, policy.Workload, bool, error) {
	pod := &corev1.Pod{}
	found, err := h.get(ctx, types.NamespacedName{Namespace: ns, Name: name}, pod)
	if err != nil || !found {
		return nil, policy.Workload{}, false, err
	}
	w, protected, err := h.podProtection(ctx, ns, pod.Labels, pod.Spec.ServiceAccountName)
	return pod, w, protected, err
}

// protectedClaim reports whether PersistentVolumeClaim ns/name holds a
// protected workload's data, such as a training job's checkpoints: the
// operator creates such claims with modelguard.dev/protected=true. It reads
// the claim's metadata from the API server, since the manager caches no
// claims.
func (h *handler) protectedClaim(ctx context.Context, ns, name string) (policy.Workload, bool, error) {
	pvc := &metav1.PartialObjectMetadata{}
	pvc.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PersistentVolumeClaim"))
	switch err := h.apiReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, pvc); {
	case apierrors.IsNotFound(err):
		return policy.Workload{}, false, nil
	case err != nil:
		return policy.Workload{}, false, fmt.Errorf("reading PersistentVolumeClaim %s/%s: %w", ns, name, err)
	}
	if pvc.Labels[mlv1alpha1.LabelProtected] != "true" {
		return policy.Workload{}, false, nil
	}
	return policy.WorkloadFromLabels(ns, pvc.Labels), true, nil
}

// traits finds what makes a pod, or a pod template, pass for a protected
// workload's pod, from the cache: its labels and its ServiceAccount.
func (h *handler) traits(ctx context.Context, ns string, labels map[string]string, spec *corev1.PodSpec) (policy.PodTraits, error) {
	t := policy.PodTraits{Labels: policy.ModelGuardLabels(labels), LabelsOf: policy.WorkloadFromLabels(ns, labels)}
	sa := spec.ServiceAccountName
	if sa == "" {
		sa = spec.DeprecatedServiceAccount
	}
	w, protected, err := h.protectedServiceAccount(ctx, ns, sa)
	if err != nil {
		return t, err
	}
	if protected {
		t.ServiceAccount, t.ServiceAccountOf = sa, w
	}
	return t, nil
}

// addClaims adds the protected PersistentVolumeClaims the pod mounts to t;
// each claim is a read from the API server.
func (h *handler) addClaims(ctx context.Context, ns string, spec *corev1.PodSpec, t *policy.PodTraits) error {
	for _, v := range spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		w, protected, err := h.protectedClaim(ctx, ns, v.PersistentVolumeClaim.ClaimName)
		if err != nil {
			return err
		}
		if protected {
			t.Claims = append(t.Claims, policy.ProtectedClaim{Name: v.PersistentVolumeClaim.ClaimName, Of: w})
		}
	}
	return nil
}

// Controllers whose children may pass for a protected workload's, by the
// child's kind: the model's pods come from its ReplicaSets, a training
// job's from its Job, and the ReplicaSets from the model's Deployment.
var managedControllers = map[string][]schema.GroupVersionKind{
	"Pod":        {appsv1.SchemeGroupVersion.WithKind("ReplicaSet"), {Group: "batch", Version: "v1", Kind: "Job"}},
	"ReplicaSet": {appsv1.SchemeGroupVersion.WithKind("Deployment")},
}

// managedOwner reports whether the controller named in refs is one that
// ModelGuard manages, by UID: a reference names the owner's UID, and the
// tenant can neither create managed controllers nor relabel its own. It
// reads from the API server, because the controller may be seconds old.
func (h *handler) managedOwner(ctx context.Context, ns, kind string, refs []metav1.OwnerReference) (bool, error) {
	var ref *metav1.OwnerReference
	for i := range refs {
		if refs[i].Controller != nil && *refs[i].Controller {
			ref = &refs[i]
		}
	}
	if ref == nil {
		return false, nil
	}
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return false, nil
	}
	gvk := gv.WithKind(ref.Kind)
	allowed := false
	for _, c := range managedControllers[kind] {
		allowed = allowed || c == gvk
	}
	if !allowed {
		return false, nil
	}
	owner := &metav1.PartialObjectMetadata{}
	owner.SetGroupVersionKind(gvk)
	switch err := h.apiReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: ref.Name}, owner); {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading %s %s/%s, the controller of the new %s: %w", ref.Kind, ns, ref.Name, kind, err)
	}
	return owner.UID == ref.UID && policy.IsManaged(owner.Labels), nil
}

// withAccess fills in the workload's break-glass groups and returns its
// object, for the Event's reference. obj is nil when the workload is not
// named or does not exist (any more).
func (h *handler) withAccess(ctx context.Context, w policy.Workload) (policy.Workload, client.Object, error) {
	var obj client.Object
	var access func() *mlv1alpha1.Access
	switch w.Kind {
	case "ProtectedModel":
		pm := &mlv1alpha1.ProtectedModel{}
		obj, access = pm, func() *mlv1alpha1.Access { return pm.Spec.Access }
	case "TrainingJob":
		tj := &mlv1alpha1.TrainingJob{}
		obj, access = tj, func() *mlv1alpha1.Access { return tj.Spec.Access }
	default:
		return w, nil, nil
	}
	switch err := h.reader.Get(ctx, types.NamespacedName{Namespace: w.Namespace, Name: w.Name}, obj); {
	case apierrors.IsNotFound(err):
		return w, nil, nil
	case err != nil:
		return w, nil, fmt.Errorf("reading %s: %w", w, err)
	}
	if a := access(); a != nil {
		w.BreakGlassGroups = a.BreakGlassGroups
	}
	return w, obj, nil
}

// protectedPodSets are the labels the pods of every protected workload in
// ns carry or will carry: each model's server pods as the builders make
// them, each training job's common labels, the live protected pods, and the
// templates of the managed Deployments. A selector that matches none of
// them selects no protected pod, now or after the next rollout.
func (h *handler) protectedPodSets(ctx context.Context, ns string) ([]policy.ProtectedPods, error) {
	var out []policy.ProtectedPods
	models := &mlv1alpha1.ProtectedModelList{}
	if err := h.reader.List(ctx, models, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("listing the ProtectedModels in %s: %w", ns, err)
	}
	for i := range models.Items {
		pm := &models.Items[i]
		out = append(out, policy.ProtectedPods{
			Workload: policy.Workload{Kind: "ProtectedModel", Namespace: ns, Name: pm.Name},
			Labels:   builder.PodLabels(builder.ForProtectedModel(pm), mlv1alpha1.ComponentServer),
		})
	}
	jobs := &mlv1alpha1.TrainingJobList{}
	if err := h.reader.List(ctx, jobs, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("listing the TrainingJobs in %s: %w", ns, err)
	}
	for i := range jobs.Items {
		tj := &jobs.Items[i]
		out = append(out, policy.ProtectedPods{
			Workload: policy.Workload{Kind: "TrainingJob", Namespace: ns, Name: tj.Name},
			Labels:   builder.CommonLabels(builder.ForTrainingJob(tj)),
		})
	}
	pods := &corev1.PodList{}
	if err := h.reader.List(ctx, pods, client.InNamespace(ns), client.MatchingLabels{mlv1alpha1.LabelProtected: "true"}); err != nil {
		return nil, fmt.Errorf("listing the protected pods in %s: %w", ns, err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		out = append(out, policy.ProtectedPods{Workload: policy.WorkloadFromLabels(ns, p.Labels), Labels: p.Labels})
	}
	deployments := &appsv1.DeploymentList{}
	if err := h.reader.List(ctx, deployments, client.InNamespace(ns), client.MatchingLabels{mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue}); err != nil {
		return nil, fmt.Errorf("listing the managed Deployments in %s: %w", ns, err)
	}
	for i := range deployments.Items {
		d := &deployments.Items[i]
		out = append(out, policy.ProtectedPods{Workload: policy.WorkloadFromLabels(ns, d.Labels), Labels: d.Spec.Template.Labels})
	}
	return out, nil
}
