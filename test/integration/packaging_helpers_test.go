package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/webhook"
)

// packagingTool returns the path of a tool the Makefile builds and exports
// in envVar (HELM, KUSTOMIZE). It fails the test, naming the make target,
// when the tool is missing: a packaging test that skips proves nothing.
func packagingTool(t *testing.T, envVar, makeTarget string) string {
	t.Helper()
	path := os.Getenv(envVar)
	if path == "" {
		t.Fatalf("%s is not set: run the tests through `make test`, which builds %s and exports %s", envVar, makeTarget, envVar)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s=%s does not exist: run `make %s`: %v", envVar, path, makeTarget, err)
	}
	return path
}

func helmPath(t *testing.T) string      { return packagingTool(t, "HELM", "bin/helm") }
func kustomizePath(t *testing.T) string { return packagingTool(t, "KUSTOMIZE", "bin/kustomize") }

// runTool runs a command in the repository root and returns its stdout; it
// fails the test with stderr when the command fails.
func runTool(t *testing.T, extraEnv []string, name string, args ...string) string {
	t.Helper()
	out, errOut, err := runToolErr(extraEnv, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func runToolErr(extraEnv []string, name string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = env.RepoRoot
	cmd.Env = append(os.Environ(), extraEnv...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// helmEnv keeps helm's cache, config and data out of $HOME.
func helmEnv(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	return []string{
		"HELM_CACHE_HOME=" + filepath.Join(dir, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"HELM_DATA_HOME=" + filepath.Join(dir, "data"),
	}
}

// renderedObject is one document of a multi-document YAML render.
type renderedObject struct {
	*unstructured.Unstructured
	raw []byte
}

// splitYAML parses a multi-document YAML stream, skipping empty documents.
func splitYAML(t *testing.T, stream string) []renderedObject {
	t.Helper()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(stream)))
	var objs []renderedObject
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("reading YAML stream: %v", err)
		}
		m := map[string]any{}
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("parsing YAML document: %v\n%s", err, doc)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, renderedObject{Unstructured: &unstructured.Unstructured{Object: m}, raw: doc})
	}
}

// objectIDs lists objects as "Kind namespace/name", the form the expected
// lists in the tests use.
func objectIDs(objs []renderedObject) []string {
	ids := make([]string, 0, len(objs))
	for _, o := range objs {
		ids = append(ids, objectID(o.Unstructured))
	}
	return ids
}

func objectID(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return o.GetKind() + " " + o.GetName()
	}
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

func findRendered(t *testing.T, objs []renderedObject, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o.Unstructured
		}
	}
	t.Fatalf("render has no %s %s; it has %v", kind, name, objectIDs(objs))
	return nil
}

// fromRendered converts a rendered object into a typed one.
func fromRendered[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	data, err := o.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := yaml.Unmarshal(data, out); err != nil {
		t.Fatalf("decoding %s into %T: %v", objectID(o), out, err)
	}
	return out
}

// ensureNamespace creates a namespace with a fixed name if it does not
// exist yet; renders name their namespaces, so generated names do not fit.
func ensureNamespace(t *testing.T, c client.Client, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := c.Create(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// serverDryRunApply applies a manifest stream with a server-side dry run:
// the API server runs defaulting, schema and CEL validation, admission and
// field validation, and persists nothing.
func serverDryRunApply(t *testing.T, k *kubectlRunner, manifests string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "manifests.yaml")
	if err := os.WriteFile(path, []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := k.run("apply", "--server-side", "--dry-run=server", "--field-manager=packaging-test", "-f", path)
	if err != nil {
		t.Fatalf("kubectl apply --server-side --dry-run=server: %v\n%s", err, out)
	}
	return out
}

// assertAllApplied checks that kubectl reported every object of the render
// as applied, so that a document kubectl silently skipped is caught.
func assertAllApplied(t *testing.T, objs []renderedObject, kubectlOut string) {
	t.Helper()
	for _, o := range objs {
		// kubectl prints kind.group/name, e.g. deployment.apps/manager.
		kind, name := strings.ToLower(o.GetKind()), "/"+o.GetName()+" "
		found := false
		for _, line := range strings.Split(kubectlOut, "\n") {
			resource, _, _ := strings.Cut(line, "/")
			if (resource == kind || strings.HasPrefix(resource, kind+".")) && strings.Contains(line, name) &&
				strings.HasSuffix(line, "(server dry run)") {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("kubectl output does not report %s as applied:\n%s", objectID(o.Unstructured), kubectlOut)
		}
	}
}

// assertPodPassesRestricted creates, with a server-side dry run, a pod from
// the Deployment's template in a namespace that enforces Pod Security
// "restricted", so the API server's own PodSecurity admission judges it. A
// control pod with privilege escalation allowed must be rejected, which
// proves the admission plugin is really enforcing.
func assertPodPassesRestricted(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	ctx := context.Background()
	ns := newNamespace(t)
	nsObj := &corev1.Namespace{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: ns}, nsObj); err != nil {
		t.Fatal(err)
	}
	nsObj.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	nsObj.Labels["pod-security.kubernetes.io/enforce-version"] = "latest"
	if err := env.Client.Update(ctx, nsObj); err != nil {
		t.Fatalf("labelling namespace for Pod Security: %v", err)
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "manager", Labels: d.Spec.Template.Labels},
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
	}
	if err := env.Client.Create(ctx, pod, client.DryRunAll); err != nil {
		t.Errorf("the manager pod of %s is rejected by Pod Security \"restricted\": %v", d.Name, err)
	}

	control := pod.DeepCopy()
	allow := true
	control.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = &allow
	err := env.Client.Create(ctx, control, client.DryRunAll)
	if err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
		t.Errorf("control pod with allowPrivilegeEscalation=true: err = %v, want a PodSecurity rejection (is admission enforcing?)", err)
	}
}

// subjectCan asks the API server whether the subject may perform an action,
// with a SubjectAccessReview evaluated by the real RBAC authorizer.
func subjectCan(t *testing.T, c client.Client, user string, attrs rbacCheck) bool {
	t.Helper()
	review := &authorizationv1.SubjectAccessReview{}
	review.Spec.User = user
	review.Spec.ResourceAttributes = &authorizationv1.ResourceAttributes{
		Namespace: attrs.Namespace, Verb: attrs.Verb, Group: attrs.Group, Resource: attrs.Resource, Name: attrs.Name,
	}
	if err := c.Create(context.Background(), review); err != nil {
		t.Fatalf("SubjectAccessReview for %s: %v", user, err)
	}
	return review.Status.Allowed
}

// rbacCheck is one action a SubjectAccessReview asks about. Name, if set,
// is the object's name, for rules limited by resourceNames.
type rbacCheck struct {
	Verb, Group, Resource, Namespace, Name string
}

func (c rbacCheck) String() string {
	where := "cluster-wide"
	if c.Namespace != "" {
		where = "in " + c.Namespace
	}
	group := c.Group
	if group == "" {
		group = "core"
	}
	what := c.Resource + "." + group
	if c.Name != "" {
		what += " " + c.Name
	}
	return fmt.Sprintf("%s %s %s", c.Verb, what, where)
}

// ruleChecks expands RBAC rules into one check per group, resource and verb,
// so a test can ask the authorizer about everything a generated role grants
// without repeating the role by hand.
func ruleChecks(rules []rbacv1.PolicyRule, namespace string) []rbacCheck {
	var checks []rbacCheck
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					checks = append(checks, rbacCheck{Verb: v, Group: g, Resource: res, Namespace: namespace})
				}
			}
		}
	}
	return checks
}

// eventuallyNoError retries f for up to 30 seconds.
func eventuallyNoError(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// rulesAllow evaluates RBAC rules as the authorizer does for one request:
// some rule must match the verb, the group, the resource and, when the rule
// names any, the object's name.
func rulesAllow(rules []rbacv1.PolicyRule, c rbacCheck) bool {
	matches := func(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }
	for _, r := range rules {
		if matches(r.Verbs, c.Verb) && matches(r.APIGroups, c.Group) && matches(r.Resources, c.Resource) &&
			(len(r.ResourceNames) == 0 || (c.Name != "" && slices.Contains(r.ResourceNames, c.Name))) {
			return true
		}
	}
	return false
}

// grantsOn lists the roles of a render whose rules mention resource in
// group, as "Kind namespace/name".
func grantsOn(t *testing.T, objs []renderedObject, group, resource string) []string {
	t.Helper()
	var out []string
	for _, o := range objs {
		if o.GetKind() != "Role" && o.GetKind() != "ClusterRole" {
			continue
		}
		for _, r := range fromRendered[rbacv1.ClusterRole](t, o.Unstructured).Rules {
			if slices.Contains(r.APIGroups, group) && (slices.Contains(r.Resources, resource) || slices.Contains(r.Resources, "*")) {
				out = append(out, objectID(o.Unstructured))
				break
			}
		}
	}
	return out
}

// managerFlag returns the value of --name=value in args.
func managerFlag(t *testing.T, args []string, name string) string {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	t.Fatalf("the manager is not given --%s; its args: %v", name, args)
	return ""
}

// assertKeyReleaseWiring checks that a render (Helm or kustomize) serves key
// release the way the manager and the models' pods expect, in the
// operator's namespace:
//   - the manager pods carry OperatorPodLabels, which the models'
//     NetworkPolicies select, and know their namespace from the downward API;
//   - the container port key-release is mlv1alpha1.KeyReleasePort, the one
//     port those NetworkPolicies open, and the manager binds it;
//   - the Service the manager is told about exists, maps 443 to that port
//     and selects the manager pods;
//   - a Role in the namespace, bound to the manager's ServiceAccount, lets
//     it read ModelKeys' Secrets and keep its serving certificate and CA
//     bundle, and nothing else on them;
//   - nothing in the render grants anything on Secrets elsewhere.
func assertKeyReleaseWiring(t *testing.T, objs []renderedObject, namespace string) {
	t.Helper()
	var d *appsv1.Deployment
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			d = fromRendered[appsv1.Deployment](t, o.Unstructured)
		}
	}
	if d == nil {
		t.Fatalf("the render has no Deployment: %v", objectIDs(objs))
	}
	pod := d.Spec.Template
	for k, v := range mlv1alpha1.OperatorPodLabels() {
		if pod.Labels[k] != v {
			t.Errorf("the manager pods are labelled %v, without %s=%s that the models' NetworkPolicies select", pod.Labels, k, v)
		}
	}
	c := pod.Spec.Containers[0]
	port := -1
	for _, p := range c.Ports {
		if p.Name == "key-release" {
			port = int(p.ContainerPort)
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				t.Errorf("port key-release is %s, want TCP", p.Protocol)
			}
		}
	}
	if port != mlv1alpha1.KeyReleasePort {
		t.Errorf("container port key-release = %d, want %d (-1: none)", port, mlv1alpha1.KeyReleasePort)
	}
	if got := managerFlag(t, c.Args, "key-release-bind-address"); got != fmt.Sprintf(":%d", mlv1alpha1.KeyReleasePort) {
		t.Errorf("--key-release-bind-address=%s, want :%d", got, mlv1alpha1.KeyReleasePort)
	}
	hasNamespaceEnv := false
	for _, e := range c.Env {
		if e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace" {
			hasNamespaceEnv = true
		}
	}
	if !hasNamespaceEnv {
		t.Errorf("the manager has no POD_NAMESPACE from the downward API; env: %+v", c.Env)
	}

	serviceName := managerFlag(t, c.Args, "key-release-service")
	svc := fromRendered[corev1.Service](t, findRendered(t, objs, "Service", serviceName))
	if svc.Namespace != namespace {
		t.Errorf("Service %s is in %q, want the operator's namespace %s", serviceName, svc.Namespace, namespace)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.String() != "key-release" {
		t.Errorf("Service %s ports %+v, want 443 to targetPort key-release", serviceName, svc.Spec.Ports)
	}
	if len(svc.Spec.Selector) == 0 {
		t.Errorf("Service %s selects nothing", serviceName)
	}
	for k, v := range svc.Spec.Selector {
		if pod.Labels[k] != v {
			t.Errorf("Service %s selects %s=%s, which the manager pods do not carry", serviceName, k, v)
		}
	}

	secret, configMap := managerFlag(t, c.Args, "serving-cert-secret"), managerFlag(t, c.Args, "ca-configmap")
	var rules []rbacv1.PolicyRule
	for _, o := range objs {
		if o.GetKind() != "RoleBinding" || o.GetNamespace() != namespace {
			continue
		}
		b := fromRendered[rbacv1.RoleBinding](t, o.Unstructured)
		if b.RoleRef.Kind != "Role" || !slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == pod.Spec.ServiceAccountName && s.Namespace == namespace
		}) {
			continue
		}
		for _, r := range objs {
			if r.GetKind() == "Role" && r.GetNamespace() == namespace && r.GetName() == b.RoleRef.Name {
				rules = append(rules, fromRendered[rbacv1.Role](t, r.Unstructured).Rules...)
			}
		}
	}
	for _, check := range []rbacCheck{
		{Verb: "get", Resource: "secrets", Name: "a-modelkey-kek"},
		{Verb: "get", Resource: "secrets", Name: secret},
		{Verb: "create", Resource: "secrets"},
		{Verb: "update", Resource: "secrets", Name: secret},
		{Verb: "patch", Resource: "secrets", Name: secret},
		{Verb: "get", Resource: "configmaps", Name: configMap},
		{Verb: "create", Resource: "configmaps"},
		{Verb: "update", Resource: "configmaps", Name: configMap},
		{Verb: "patch", Resource: "configmaps", Name: configMap},
	} {
		if !rulesAllow(rules, check) {
			t.Errorf("the manager's Roles in %s do not allow %s", namespace, check)
		}
	}
	for _, check := range []rbacCheck{
		{Verb: "list", Resource: "secrets"},
		{Verb: "watch", Resource: "secrets"},
		{Verb: "delete", Resource: "secrets", Name: secret},
		{Verb: "update", Resource: "secrets", Name: "a-modelkey-kek"},
		{Verb: "patch", Resource: "secrets", Name: "a-modelkey-kek"},
		{Verb: "get", Resource: "configmaps", Name: "someone-elses"},
		{Verb: "update", Resource: "configmaps", Name: "someone-elses"},
	} {
		if rulesAllow(rules, check) {
			t.Errorf("the manager's Roles in %s allow %s, which it does not need", namespace, check)
		}
	}

	// The operator's namespace is the only place it touches Secrets.
	for _, id := range grantsOn(t, objs, "", "secrets") {
		if !strings.HasPrefix(id, "Role "+namespace+"/") {
			t.Errorf("%s grants rights on Secrets outside the operator's namespace", id)
		}
	}
}

// assertAdmissionGuardWiring checks that a render (Helm or kustomize)
// registers the admission guard the way the manager serves it:
//   - the ValidatingWebhookConfiguration the manager is told about
//     (--webhook-configuration) has one webhook, mlv1alpha1.AdmissionWebhookName,
//     with exactly the rules of webhook.Rules(), calling the Service the
//     manager is told about (--webhook-service) at webhook.Path, failing
//     closed within 5 seconds, with no caBundle (the manager injects it);
//   - its namespaceSelector selects labelled namespaces but never the
//     operator's own;
//   - that Service maps 443 to the manager pods' key-release port, where
//     the manager serves the guard;
//   - the manager may get, update and patch that configuration, and no
//     other, and list, watch, create and delete none.
func assertAdmissionGuardWiring(t *testing.T, objs []renderedObject, namespace string) {
	t.Helper()
	d := renderedDeployment(t, objs)
	c := d.Spec.Template.Spec.Containers[0]
	if got := managerFlagOr(c.Args, "admission-guard", "true"); got != "true" {
		t.Errorf("the manager is given --admission-guard=%s", got)
	}
	name := managerFlag(t, c.Args, "webhook-configuration")
	vwc := fromRendered[admissionregistrationv1.ValidatingWebhookConfiguration](t, findRendered(t, objs, "ValidatingWebhookConfiguration", name))
	if len(vwc.Webhooks) != 1 {
		t.Fatalf("ValidatingWebhookConfiguration %s has %d webhooks, want 1", name, len(vwc.Webhooks))
	}
	w := vwc.Webhooks[0]
	if w.Name != mlv1alpha1.AdmissionWebhookName {
		t.Errorf("webhook name %q, want %q", w.Name, mlv1alpha1.AdmissionWebhookName)
	}
	if diff := cmp.Diff(webhook.Rules(), w.Rules); diff != "" {
		t.Errorf("ValidatingWebhookConfiguration %s rules differ from webhook.Rules() (-want +got):\n%s", name, diff)
	}
	serviceName := managerFlag(t, c.Args, "webhook-service")
	wantClient := admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
		Namespace: namespace, Name: serviceName, Path: ptr.To(webhook.Path), Port: ptr.To[int32](443)}}
	if diff := cmp.Diff(wantClient, w.ClientConfig); diff != "" {
		t.Errorf("webhook clientConfig (-want +got):\n%s", diff)
	}
	type settings struct {
		FailurePolicy  admissionregistrationv1.FailurePolicyType
		MatchPolicy    admissionregistrationv1.MatchPolicyType
		SideEffects    admissionregistrationv1.SideEffectClass
		TimeoutSeconds int32
		ReviewVersions []string
		ObjectSelector *metav1.LabelSelector
	}
	got := settings{ReviewVersions: w.AdmissionReviewVersions, ObjectSelector: w.ObjectSelector}
	got.FailurePolicy, got.MatchPolicy = ptr.Deref(w.FailurePolicy, ""), ptr.Deref(w.MatchPolicy, "")
	got.SideEffects, got.TimeoutSeconds = ptr.Deref(w.SideEffects, ""), ptr.Deref(w.TimeoutSeconds, 0)
	want := settings{FailurePolicy: admissionregistrationv1.Fail, MatchPolicy: admissionregistrationv1.Equivalent,
		SideEffects: admissionregistrationv1.SideEffectClassNoneOnDryRun, TimeoutSeconds: 5, ReviewVersions: []string{"v1"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("webhook settings (-want +got):\n%s", diff)
	}

	// CONNECT requests carry no object, so the namespace is the scope.
	if w.NamespaceSelector == nil {
		t.Fatal("the webhook has no namespaceSelector: it would judge every namespace")
	}
	selector, err := metav1.LabelSelectorAsSelector(w.NamespaceSelector)
	if err != nil {
		t.Fatalf("namespaceSelector: %v", err)
	}
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{mlv1alpha1.LabelProtectedNamespace: "true", corev1.LabelMetadataName: "nlp"}, true},
		{map[string]string{corev1.LabelMetadataName: "nlp"}, false},
		{map[string]string{mlv1alpha1.LabelProtectedNamespace: "false", corev1.LabelMetadataName: "nlp"}, false},
		// The operator's own namespace, even labelled: the guard must
		// never stand between the operator and its own Secrets and pods.
		{map[string]string{mlv1alpha1.LabelProtectedNamespace: "true", corev1.LabelMetadataName: namespace}, false},
	} {
		if got := selector.Matches(labels.Set(tc.labels)); got != tc.want {
			t.Errorf("namespaceSelector %q matches a namespace labelled %v: %v, want %v", selector, tc.labels, got, tc.want)
		}
	}

	// The Service leads to the listener that serves the guard.
	svc := fromRendered[corev1.Service](t, findRendered(t, objs, "Service", serviceName))
	if svc.Namespace != namespace {
		t.Errorf("Service %s is in %q, want the operator's namespace %s", serviceName, svc.Namespace, namespace)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.String() != "key-release" {
		t.Errorf("Service %s ports %+v, want 443 to targetPort key-release", serviceName, svc.Spec.Ports)
	}
	if len(svc.Spec.Selector) == 0 {
		t.Errorf("Service %s selects nothing", serviceName)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Service %s selects %s=%s, which the manager pods do not carry", serviceName, k, v)
		}
	}
	if serviceName == managerFlag(t, c.Args, "key-release-service") {
		t.Errorf("the guard's Service is the key-release Service %s", serviceName)
	}

	// The manager keeps that configuration's caBundle, and touches no other.
	rules := clusterRulesOf(t, objs, d.Spec.Template.Spec.ServiceAccountName, namespace)
	for _, verb := range []string{"get", "update", "patch"} {
		check := rbacCheck{Verb: verb, Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: name}
		if !rulesAllow(rules, check) {
			t.Errorf("the manager's ClusterRoles do not allow %s", check)
		}
	}
	for _, check := range []rbacCheck{
		{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "someone-elses"},
		{Verb: "get", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "someone-elses"},
		{Verb: "list", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations"},
		{Verb: "watch", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations"},
		{Verb: "create", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations"},
		{Verb: "delete", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: name},
		{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Name: name},
	} {
		if rulesAllow(rules, check) {
			t.Errorf("the manager's ClusterRoles allow %s, which it does not need", check)
		}
	}
}

// assertHighAvailability checks that the manager runs replicas pods spread
// over nodes where possible, with a PodDisruptionBudget that keeps
// minAvailable of them through a drain.
func assertHighAvailability(t *testing.T, objs []renderedObject, replicas, minAvailable int32) {
	t.Helper()
	d := renderedDeployment(t, objs)
	if got := ptr.Deref(d.Spec.Replicas, 1); got != replicas {
		t.Errorf("the manager runs %d replicas, want %d", got, replicas)
	}
	if got := managerFlagOr(d.Spec.Template.Spec.Containers[0].Args, "leader-elect", "false"); got != "true" && got != "" {
		t.Errorf("--leader-elect=%s with %d replicas: every replica would reconcile", got, replicas)
	}
	var pdb *policyv1.PodDisruptionBudget
	for _, o := range objs {
		if o.GetKind() == "PodDisruptionBudget" {
			pdb = fromRendered[policyv1.PodDisruptionBudget](t, o.Unstructured)
		}
	}
	if pdb == nil {
		t.Fatalf("the render has no PodDisruptionBudget: %v", objectIDs(objs))
	}
	if pdb.Namespace != d.Namespace || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != int(minAvailable) || pdb.Spec.MaxUnavailable != nil {
		t.Errorf("PodDisruptionBudget %s/%s: minAvailable %v, maxUnavailable %v; want minAvailable %d in %s",
			pdb.Namespace, pdb.Name, pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable, minAvailable, d.Namespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("PodDisruptionBudget selector %v does not select the manager pods %v (err %v)", pdb.Spec.Selector, d.Spec.Template.Labels, err)
	}
	anti := d.Spec.Template.Spec.Affinity
	if anti == nil || anti.PodAntiAffinity == nil || len(anti.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Fatalf("the manager pods have no soft pod anti-affinity: %+v", anti)
	}
	if len(anti.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) > 0 {
		t.Errorf("the manager pods' anti-affinity is required, which leaves a replica pending on a one-node cluster")
	}
	term := anti.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	sel, err = metav1.LabelSelectorAsSelector(term.LabelSelector)
	if term.TopologyKey != corev1.LabelHostname || err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("anti-affinity term %+v does not spread the manager pods by %s", term, corev1.LabelHostname)
	}
}

// userRoles are the ClusterRoles for people (issue 13), by their suffix
// after the release's name prefix: what each grants, and whether the
// built-in view, edit and admin roles aggregate it.
var userRoles = []struct {
	suffix     string
	rules      []rbacv1.PolicyRule
	aggregated bool
}{{
	suffix: "viewer",
	rules: []rbacv1.PolicyRule{
		{APIGroups: []string{mlv1alpha1.GroupVersion.Group}, Resources: []string{"protectedmodels", "trainingjobs"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{mlv1alpha1.GroupVersion.Group}, Resources: []string{"protectedmodels/status", "trainingjobs/status"}, Verbs: []string{"get"}},
	},
	aggregated: true,
}, {
	suffix: "editor",
	rules: []rbacv1.PolicyRule{
		{APIGroups: []string{mlv1alpha1.GroupVersion.Group}, Resources: []string{"protectedmodels", "trainingjobs"},
			Verbs: []string{"create", "delete", "get", "list", "patch", "update", "watch"}},
		{APIGroups: []string{mlv1alpha1.GroupVersion.Group}, Resources: []string{"protectedmodels/status", "trainingjobs/status"}, Verbs: []string{"get"}},
	},
}, {
	suffix: "key-admin",
	rules: []rbacv1.PolicyRule{
		{APIGroups: []string{mlv1alpha1.GroupVersion.Group}, Resources: []string{"modelkeys"},
			Verbs: []string{"create", "delete", "get", "list", "patch", "update", "watch"}},
		{APIGroups: []string{mlv1alpha1.GroupVersion.Group}, Resources: []string{"modelkeys/status"}, Verbs: []string{"get"}},
	},
}}

// aggregationLabels are the labels that make the built-in roles include a
// ClusterRole's rules.
var aggregationLabels = []string{
	"rbac.authorization.k8s.io/aggregate-to-view",
	"rbac.authorization.k8s.io/aggregate-to-edit",
	"rbac.authorization.k8s.io/aggregate-to-admin",
}

// assertUserRoles checks the roles for people: prefix-viewer, -editor and
// -key-admin grant what userRoles says, only the viewer is aggregated into
// view, edit and admin, and no role for people is bound by the render.
func assertUserRoles(t *testing.T, objs []renderedObject, prefix string) {
	t.Helper()
	for _, r := range userRoles {
		name := prefix + r.suffix
		role := fromRendered[rbacv1.ClusterRole](t, findRendered(t, objs, "ClusterRole", name))
		if diff := cmp.Diff(normalizeRules(r.rules), normalizeRules(role.Rules)); diff != "" {
			t.Errorf("ClusterRole %s rules (-want +got):\n%s", name, diff)
		}
		for _, l := range aggregationLabels {
			if got := role.Labels[l] == "true"; got != r.aggregated {
				t.Errorf("ClusterRole %s labelled %s=%q; want aggregated %v", name, l, role.Labels[l], r.aggregated)
			}
		}
		if role.AggregationRule != nil {
			t.Errorf("ClusterRole %s aggregates others: %+v", name, role.AggregationRule)
		}
		for _, o := range objs {
			if k := o.GetKind(); k == "RoleBinding" || k == "ClusterRoleBinding" {
				if b := fromRendered[rbacv1.RoleBinding](t, o.Unstructured); b.RoleRef.Name == name {
					t.Errorf("%s binds %s: who gets it is the cluster's choice", objectID(o.Unstructured), name)
				}
			}
		}
	}
}

// renderedDeployment is the render's one Deployment, the manager.
func renderedDeployment(t *testing.T, objs []renderedObject) *appsv1.Deployment {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			return fromRendered[appsv1.Deployment](t, o.Unstructured)
		}
	}
	t.Fatalf("the render has no Deployment: %v", objectIDs(objs))
	return nil
}

// managerFlagOr returns the value of --name=value in args, "" for a bare
// --name, or def when the flag is not passed.
func managerFlagOr(args []string, name, def string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
		if a == "--"+name {
			return ""
		}
	}
	return def
}

// clusterRulesOf collects the rules of every ClusterRole in the render
// that a ClusterRoleBinding grants ServiceAccount namespace/serviceAccount.
func clusterRulesOf(t *testing.T, objs []renderedObject, serviceAccount, namespace string) []rbacv1.PolicyRule {
	t.Helper()
	var rules []rbacv1.PolicyRule
	for _, o := range objs {
		if o.GetKind() != "ClusterRoleBinding" {
			continue
		}
		b := fromRendered[rbacv1.ClusterRoleBinding](t, o.Unstructured)
		if b.RoleRef.Kind != "ClusterRole" || !slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == serviceAccount && s.Namespace == namespace
		}) {
			continue
		}
		for _, r := range objs {
			if r.GetKind() == "ClusterRole" && r.GetName() == b.RoleRef.Name {
				rules = append(rules, fromRendered[rbacv1.ClusterRole](t, r.Unstructured).Rules...)
			}
		}
	}
	return rules
}

// operatorKubeconfig writes a kubeconfig that authenticates as ServiceAccount
// ns/account with a token from the real TokenRequest API, so that a manager
// run with it has exactly the chart's RBAC.
func operatorKubeconfig(t *testing.T, ns, account string) string {
	t.Helper()
	token := serviceAccountToken(t, ns, account)
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: operator
  user:
    token: %s
contexts:
- name: operator
  context: {cluster: test, user: operator}
current-context: operator
`, env.Config.Host, base64.StdEncoding.EncodeToString(env.Config.CAData), token)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
