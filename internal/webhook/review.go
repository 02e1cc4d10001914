package webhook

import (
	"context"
	"encoding/json"
	"fmt"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
)

// review gathers what one request needs, once, and asks the policy. Any
// read that fails denies the request (policy.FailClosed).
func (h *handler) review(ctx context.Context, req *admissionv1.AdmissionRequest) policy.Decision {
	r := policy.ClassifyRequester(req.UserInfo, h.ids)
	resource := req.Resource.Group + "/" + req.Resource.Resource
	token := resource == "/serviceaccounts" && req.SubResource == "token"
	// Every rule but the token rule lets the operator and cluster
	// administrators through; sessions are recorded, so CONNECT goes on.
	if (r == policy.Operator || r == policy.ClusterAdmin) && !token && req.Operation != admissionv1.Connect {
		return policy.Allowed()
	}
	var d policy.Decision
	var err error
	switch {
	case req.Operation == admissionv1.Connect:
		d, err = h.connect(ctx, req, r)
	case resource == "/pods" && req.SubResource == "ephemeralcontainers":
		d, err = h.ephemeralContainers(ctx, req, r)
	case token:
		d, err = h.token(ctx, req, r)
	case resource == "/pods" && req.SubResource == "eviction":
		d, err = h.eviction(ctx, req, r)
	case req.SubResource == "scale":
		d, err = h.scale(ctx, req, r)
	case req.SubResource == "":
		d, err = h.object(ctx, req, r)
	default:
		d = policy.Allowed()
	}
	if err != nil {
		return policy.FailClosed(describe(req), err)
	}
	return d
}

// connect decides exec, attach, port-forward and proxy to pods, and proxy to
// Services. The request carries only the options (PodExecOptions and its
// kin), never the pod, so the pod is looked up by name.
func (h *handler) connect(ctx context.Context, req *admissionv1.AdmissionRequest, r policy.Requester) (policy.Decision, error) {
	// Proxy requests name their target as [scheme:]name[:port].
	_, name, _, ok := utilnet.SplitSchemeNamePort(req.Name)
	if !ok {
		return policy.Decision{}, fmt.Errorf("%q is not a name", req.Name)
	}
	var w policy.Workload
	var target policy.ObjectRef
	switch req.Resource.Group + "/" + req.Resource.Resource {
	case "/pods":
		_, pw, protected, err := h.protectedPod(ctx, req.Namespace, name)
		if err != nil || !protected {
			return policy.Allowed(), err
		}
		w, target = pw, policy.ObjectRef{Kind: "Pod", Namespace: req.Namespace, Name: name}
	case "/services":
		sw, protected, err := h.protectedService(ctx, req.Namespace, name)
		if err != nil || !protected {
			return policy.Allowed(), err
		}
		w, target = sw, policy.ObjectRef{Kind: "Service", Namespace: req.Namespace, Name: name}
	default:
		return policy.Allowed(), nil
	}
	w, _, err := h.withAccess(ctx, w)
	if err != nil {
		return policy.Decision{}, err
	}
	return policy.Connect(r, req.UserInfo.Groups, target, req.SubResource, w), nil
}

// protectedService reports whether a Service leads to protected pods: it is
// one ModelGuard manages, or its selector selects a protected workload's
// pods (a tenant's look-alike Service would proxy to them all the same).
func (h *handler) protectedService(ctx context.Context, ns, name string) (policy.Workload, bool, error) {
	svc := &corev1.Service{}
	found, err := h.get(ctx, types.NamespacedName{Namespace: ns, Name: name}, svc)
	if err != nil || !found {
		return policy.Workload{}, false, err
	}
	if policy.IsManaged(svc.Labels) || svc.Labels[mlv1alpha1.LabelProtected] == "true" {
		return policy.WorkloadFromLabels(ns, svc.Labels), true, nil
	}
	if len(svc.Spec.Selector) == 0 {
		// A Service without a selector selects no pods.
		return policy.Workload{}, false, nil
	}
	sets, err := h.protectedPodSets(ctx, ns)
	if err != nil {
		return policy.Workload{}, false, err
	}
	selected := policy.SelectsProtectedPods(metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, sets)
	if len(selected) == 0 {
		return policy.Workload{}, false, nil
	}
	return selected[0], true, nil
}

// ephemeralContainers decides kubectl debug on a pod; the request carries
// the pod.
func (h *handler) ephemeralContainers(ctx context.Context, req *admissionv1.AdmissionRequest, r policy.Requester) (policy.Decision, error) {
	var pod corev1.Pod
	raw := req.OldObject
	if len(raw.Raw) == 0 {
		raw = req.Object
	}
	if err := decode(raw, &pod); err != nil {
		return policy.Decision{}, err
	}
	w, protected, err := h.podProtection(ctx, req.Namespace, pod.Labels, pod.Spec.ServiceAccountName)
	if err != nil || !protected {
		return policy.Allowed(), err
	}
	if w, _, err = h.withAccess(ctx, w); err != nil {
		return policy.Decision{}, err
	}
	return policy.EphemeralContainers(r, policy.ObjectRef{Kind: "Pod", Namespace: req.Namespace, Name: req.Name}, w), nil
}

// token decides a TokenRequest for a ServiceAccount.
func (h *handler) token(ctx context.Context, req *admissionv1.AdmissionRequest, r policy.Requester) (policy.Decision, error) {
	sa := policy.ObjectRef{Kind: "ServiceAccount", Namespace: req.Namespace, Name: req.Name}
	if r == policy.Node {
		// Kubelets refresh every pod's projected token; they may, and
		// need no read.
		return policy.TokenRequest(r, sa, policy.Workload{}), nil
	}
	w, protected, err := h.protectedServiceAccount(ctx, req.Namespace, req.Name)
	if err != nil || !protected {
		return policy.Allowed(), err
	}
	return policy.TokenRequest(r, sa, w), nil
}

// eviction decides the eviction of a pod: for a managed pod, a deletion.
func (h *handler) eviction(ctx context.Context, req *admissionv1.AdmissionRequest, r policy.Requester) (policy.Decision, error) {
	pod := &corev1.Pod{}
	found, err := h.get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: req.Name}, pod)
	if err != nil || !found || !policy.IsManaged(pod.Labels) {
		return policy.Allowed(), err
	}
	return policy.ManagedChange(r, policy.Evict, policy.ObjectRef{Kind: "Pod", Namespace: req.Namespace, Name: req.Name},
		policy.WorkloadFromLabels(req.Namespace, pod.Labels)), nil
}

// scale decides a change of a managed Deployment's or ReplicaSet's replicas
// through the scale subresource, which carries no labels.
func (h *handler) scale(ctx context.Context, req *admissionv1.AdmissionRequest, r policy.Requester) (policy.Decision, error) {
	var obj client.Object
	var kind string
	switch req.Resource.Group + "/" + req.Resource.Resource {
	case "apps/deployments":
		obj, kind = &appsv1.Deployment{}, "Deployment"
	case "apps/replicasets":
		obj, kind = &appsv1.ReplicaSet{}, "ReplicaSet"
	default:
		return policy.Allowed(), nil
	}
	found, err := h.get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: req.Name}, obj)
	if err != nil || !found || !policy.IsManaged(obj.GetLabels()) {
		return policy.Allowed(), err
	}
	return policy.ManagedChange(r, policy.Scale, policy.ObjectRef{Kind: kind, Namespace: req.Namespace, Name: req.Name},
		policy.WorkloadFromLabels(req.Namespace, obj.GetLabels())), nil
}

// object decides a create, update or delete of an object: changes to
// managed objects, to ModelGuard's labels, look-alike pods and pod
// templates, and NetworkPolicies, in that order.
func (h *handler) object(ctx context.Context, req *admissionv1.AdmissionRequest, r policy.Requester) (policy.Decision, error) {
	var old, cur metav1.PartialObjectMetadata
	if err := decodeIfAny(req.OldObject, &old); err != nil {
		return policy.Decision{}, err
	}
	if err := decodeIfAny(req.Object, &cur); err != nil {
		return policy.Decision{}, err
	}
	change := map[admissionv1.Operation]policy.Change{
		admissionv1.Create: policy.Create, admissionv1.Update: policy.Update, admissionv1.Delete: policy.Delete,
	}[req.Operation]
	if change == "" {
		return policy.Allowed(), nil
	}
	if change == policy.Delete && len(req.OldObject.Raw) == 0 {
		// API servers since 1.15 send the object being deleted; without
		// it there is nothing to judge by.
		return policy.Decision{}, fmt.Errorf("the request carries no oldObject")
	}
	ref := policy.ObjectRef{Kind: req.Kind.Kind, Namespace: req.Namespace, Name: req.Name}
	if ref.Name == "" && cur.GenerateName != "" {
		ref.Name = cur.GenerateName + "…"
	}

	if policy.IsManaged(old.Labels) || policy.IsManaged(cur.Labels) {
		labels := cur.Labels
		if !policy.IsManaged(labels) {
			labels = old.Labels
		}
		if d := policy.ManagedChange(r, change, ref, policy.WorkloadFromLabels(req.Namespace, labels)); !d.Allowed {
			return d, nil
		}
	}
	if change != policy.Delete {
		if d := policy.Labels(r, ref, old.Labels, cur.Labels); !d.Allowed {
			return d, nil
		}
	}
	// Pods and pod templates: on create by anyone, since a tenant's
	// ReplicaSet has the system controller create its pods; on update by
	// tenants, who could turn a workload of their own into a look-alike
	// (the system controllers only update what exists). Managed objects
	// were judged above.
	if change == policy.Create || (change == policy.Update && r == policy.Tenant && !policy.IsManaged(old.Labels)) {
		if d, err := h.lookAlike(ctx, req, r, change, ref, &cur); err != nil || !d.Allowed {
			return d, err
		}
	}
	if req.Resource.Group == "networking.k8s.io" && req.Resource.Resource == "networkpolicies" && change != policy.Delete {
		var np struct {
			Spec struct {
				PodSelector metav1.LabelSelector `json:"podSelector"`
			} `json:"spec"`
		}
		if err := decode(req.Object, &np); err != nil {
			return policy.Decision{}, err
		}
		sets, err := h.protectedPodSets(ctx, req.Namespace)
		if err != nil {
			return policy.Decision{}, err
		}
		return policy.NetworkPolicy(r, change, ref, np.Spec.PodSelector, sets), nil
	}
	return policy.Allowed(), nil
}

// podTemplate is where each kind keeps the pods it makes.
type podTemplate struct {
	// Labels, and for CronJobs the Job template's labels too (the Job
	// controller's children inherit nothing from them, but the Job does).
	Labels map[string]string
	Spec   corev1.PodSpec
}

// lookAlike decides a pod or pod template that could pass for a protected
// workload's pod.
func (h *handler) lookAlike(ctx context.Context, req *admissionv1.AdmissionRequest, r policy.Requester, change policy.Change, ref policy.ObjectRef, meta *metav1.PartialObjectMetadata) (policy.Decision, error) {
	tmpl, isTemplate, ok, err := podTemplateOf(req)
	if err != nil || !ok {
		return policy.Allowed(), err
	}
	t, err := h.traits(ctx, req.Namespace, tmpl.Labels, &tmpl.Spec)
	if err != nil {
		return policy.Decision{}, err
	}
	// Claims cost a read each from the API server. A pod that already
	// passes for a protected one by its labels or account is judged by its
	// owner first, which lets the model's own pods through without them.
	controller := r == policy.SystemController || r == policy.TrustedController
	managedOwner, askedOwner := false, false
	if controller && t.Protected() {
		askedOwner = true
		if managedOwner, err = h.managedOwner(ctx, req.Namespace, req.Kind.Kind, meta.OwnerReferences); err != nil || managedOwner {
			return policy.Allowed(), err
		}
	}
	if err := h.addClaims(ctx, req.Namespace, &tmpl.Spec, &t); err != nil {
		return policy.Decision{}, err
	}
	if !t.Protected() {
		return policy.Allowed(), nil
	}
	if controller && !askedOwner {
		if managedOwner, err = h.managedOwner(ctx, req.Namespace, req.Kind.Kind, meta.OwnerReferences); err != nil {
			return policy.Decision{}, err
		}
	}
	w, _, err := h.withAccess(ctx, t.Workload())
	if err != nil {
		return policy.Decision{}, err
	}
	return policy.LookAlike(r, change, ref, isTemplate, t, w, managedOwner), nil
}

// podTemplateOf decodes the pod, or the pod template, of a request's
// object; ok is false for kinds without pods.
func podTemplateOf(req *admissionv1.AdmissionRequest) (tmpl podTemplate, isTemplate, ok bool, err error) {
	switch req.Resource.Group + "/" + req.Resource.Resource {
	case "/pods":
		var pod struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     corev1.PodSpec    `json:"spec"`
		}
		err = decode(req.Object, &pod)
		return podTemplate{Labels: pod.Metadata.Labels, Spec: pod.Spec}, false, true, err
	case "apps/deployments", "apps/replicasets", "apps/statefulsets", "apps/daemonsets", "batch/jobs":
		var w struct {
			Spec struct {
				Template corev1.PodTemplateSpec `json:"template"`
			} `json:"spec"`
		}
		err = decode(req.Object, &w)
		return podTemplate{Labels: w.Spec.Template.Labels, Spec: w.Spec.Template.Spec}, true, true, err
	case "batch/cronjobs":
		var cj struct {
			Spec struct {
				JobTemplate struct {
					Metadata metav1.ObjectMeta `json:"metadata"`
					Spec     struct {
						Template corev1.PodTemplateSpec `json:"template"`
					} `json:"spec"`
				} `json:"jobTemplate"`
			} `json:"spec"`
		}
		err = decode(req.Object, &cj)
		labels := map[string]string{}
		for k, v := range cj.Spec.JobTemplate.Metadata.Labels {
			labels[k] = v
		}
		for k, v := range cj.Spec.JobTemplate.Spec.Template.Labels {
			labels[k] = v
		}
		return podTemplate{Labels: labels, Spec: cj.Spec.JobTemplate.Spec.Template.Spec}, true, true, err
	}
	return podTemplate{}, false, false, nil
}

func decode(raw runtime.RawExtension, into any) error {
	if len(raw.Raw) == 0 {
		return fmt.Errorf("the request carries no object")
	}
	if err := json.Unmarshal(raw.Raw, into); err != nil {
		// The decoder's message can quote the object, so it is not
		// passed on.
		return fmt.Errorf("the request's object does not decode as %T", into)
	}
	return nil
}

func decodeIfAny(raw runtime.RawExtension, into any) error {
	if len(raw.Raw) == 0 {
		return nil
	}
	return decode(raw, into)
}
