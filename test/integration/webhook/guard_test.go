package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/webhook"
	"github.com/modelguard/modelguard/test/builders"
)

const modelName = "sentiment"

// protected is a namespace with a model, its children as the operator and
// Kubernetes' controllers made them, and a tenant's pod.
type protected struct {
	ns         string
	deployment *appsv1.Deployment
	rs         *appsv1.ReplicaSet
	pod        *corev1.Pod
}

// newProtected sets up namespace ns as the operator would for model
// sentiment (break-glass group sre-oncall), and waits until the guard
// judges requests there.
func newProtected(ctx context.Context, t testing.TB, ns string) *protected {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	must(bindTenants(ctx, ns))
	// The platform team creates the model.
	pm := builders.MakeProtectedModel(modelName, ns).BreakGlassGroups("sre-oncall").Obj()
	must(admin.Create(ctx, pm))

	// The operator labels the namespace, then applies the children.
	opc, _, err := operator.clients()
	must(err)
	must(opc.Apply(ctx, corev1ac.Namespace(ns).WithLabels(map[string]string{mlv1alpha1.LabelProtectedNamespace: "true"}),
		client.FieldOwner(mlv1alpha1.FieldManager+"-namespace-guard"), client.ForceOwnership))
	waitForGuard(ctx, t, ns)
	facts := builder.ProtectedModelFacts{UnsealImage: "modelguard:integration", Replicas: 1, KeyRelease: builder.KeyRelease{
		URL: "https://" + mlv1alpha1.KeyReleaseServiceName + "." + operatorNamespace + ".svc", Namespace: operatorNamespace,
		CABundle: "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n"}}
	for _, ac := range []runtime.ApplyConfiguration{
		builder.ServiceAccount(builder.ForProtectedModel(pm)),
		builder.Service(pm),
		builder.ModelNetworkPolicy(pm, operatorNamespace),
		builder.Deployment(pm, facts),
	} {
		must(opc.Apply(ctx, ac, client.FieldOwner(mlv1alpha1.FieldManager), client.ForceOwnership))
	}
	// A training job's output claim, as the operator will make it.
	must(opc.Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "finetune-output", Labels: map[string]string{
			mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue, mlv1alpha1.LabelTrainingJob: "finetune", mlv1alpha1.LabelProtected: "true"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
	}, client.FieldOwner(mlv1alpha1.FieldManager)))

	p := &protected{ns: ns, deployment: &appsv1.Deployment{}}
	must(admin.Get(ctx, types.NamespacedName{Namespace: ns, Name: modelName}, p.deployment))

	// The Deployment controller makes the ReplicaSet, and the ReplicaSet
	// controller the pod, through the guard.
	dc, _, err := depCtrl.clients()
	must(err)
	template := p.deployment.Spec.Template.DeepCopy()
	template.Labels["pod-template-hash"] = "7c9"
	p.rs = &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelName + "-7c9", Labels: template.Labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: modelName, UID: p.deployment.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](1), Template: *template,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{
				mlv1alpha1.LabelModel: modelName, mlv1alpha1.LabelComponent: mlv1alpha1.ComponentServer, "pod-template-hash": "7c9"}}},
	}
	must(dc.Create(ctx, p.rs))
	rc, _, err := rsCtrl.clients()
	must(err)
	p.pod = &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.rs.Name + "-x", Labels: template.Labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: p.rs.Name, UID: p.rs.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: template.Spec,
	}
	must(rc.Create(ctx, p.pod))

	// The tenant's own pod and ReplicaSet.
	ac, _, err := editUser.clients()
	must(err)
	must(ac.Create(ctx, tenantPod(ns, "web", "default")))
	must(ac.Create(ctx, &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mine"},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "mine"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "mine"}}, Spec: tenantPod(ns, "", "default").Spec}}}))
	return p
}

func tenantPod(ns, name, sa string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "web", Image: "registry.example.com/web:1"}}}}
}

// waitForGuard waits until the API server calls the guard for ns: the
// configuration and the namespace label reach its informers a moment after
// they are written.
func waitForGuard(ctx context.Context, t testing.TB, ns string) {
	t.Helper()
	c, _, err := editUser.clients()
	if err != nil {
		t.Fatal(err)
	}
	probe := tenantPod(ns, "probe", "default")
	probe.Labels[mlv1alpha1.LabelModel] = "probe"
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.Create(ctx, probe.DeepCopy(), client.DryRunAll)
		if isGuardDenial(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guard does not judge requests in %s after 30s: %v", ns, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// guardPrefix starts every error the API server returns for a denial.
var guardPrefix = fmt.Sprintf("admission webhook %q denied the request: ", mlv1alpha1.AdmissionWebhookName)

func isGuardDenial(err error) bool {
	return err != nil && apierrors.IsForbidden(err) && strings.Contains(err.Error(), guardPrefix)
}

// action is one attempt, as one identity.
type action func(ctx context.Context, p *protected, c client.Client, cs kubernetes.Interface) error

func execInto(pod func(*protected) string, container string, command ...string) action {
	return func(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
		return cs.CoreV1().RESTClient().Post().Namespace(p.ns).Resource("pods").Name(pod(p)).SubResource("exec").
			VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdout: true}, scheme.ParameterCodec).Do(ctx).Error()
	}
}

func attach(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	return cs.CoreV1().RESTClient().Post().Namespace(p.ns).Resource("pods").Name(p.pod.Name).SubResource("attach").
		VersionedParams(&corev1.PodAttachOptions{Container: "server", Stdout: true}, scheme.ParameterCodec).Do(ctx).Error()
}

func portForward(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	return cs.CoreV1().RESTClient().Post().Namespace(p.ns).Resource("pods").Name(p.pod.Name).SubResource("portforward").
		VersionedParams(&corev1.PodPortForwardOptions{Ports: []int32{8080}}, scheme.ParameterCodec).Do(ctx).Error()
}

func podProxy(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	return proxyError(cs.CoreV1().RESTClient().Get().Namespace(p.ns).Resource("pods").Name("https:" + p.pod.Name + ":8080").
		SubResource("proxy").Suffix("weights").Do(ctx))
}

func serviceProxy(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	return proxyError(cs.CoreV1().RESTClient().Get().Namespace(p.ns).Resource("services").Name("http:" + modelName + ":http").
		SubResource("proxy").Suffix("weights").Do(ctx))
}

// proxyError is the API server's Status for a proxy request: client-go
// does not decode the body of a failed proxy request, which could be the
// backend's own, so the test does.
func proxyError(res rest.Result) error {
	raw, err := res.Raw()
	var status metav1.Status
	if err != nil && json.Unmarshal(raw, &status) == nil && status.Kind == "Status" {
		return &apierrors.StatusError{ErrStatus: status}
	}
	return err
}

func addDebugContainer(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	pod, err := cs.CoreV1().Pods(p.ns).Get(ctx, p.pod.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: "debugger", Image: "busybox", TerminationMessagePolicy: corev1.TerminationMessageReadFile, ImagePullPolicy: corev1.PullIfNotPresent}})
	_, err = cs.CoreV1().Pods(p.ns).UpdateEphemeralContainers(ctx, pod.Name, pod, metav1.UpdateOptions{})
	return err
}

func addSidecar(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	patch := `{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox","command":["sh","-c","cat /models/*"]}]}}}}`
	_, err := cs.AppsV1().Deployments(p.ns).Patch(ctx, modelName, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// annotateDeployment does what the Deployment controller does to a
// Deployment besides its status: an update (it may not patch) of the
// revision annotation.
func annotateDeployment(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	d, err := cs.AppsV1().Deployments(p.ns).Get(ctx, modelName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	metav1.SetMetaDataAnnotation(&d.ObjectMeta, "deployment.kubernetes.io/revision", "1")
	_, err = cs.AppsV1().Deployments(p.ns).Update(ctx, d, metav1.UpdateOptions{})
	return err
}

func scaleModel(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	_, err := cs.AppsV1().Deployments(p.ns).UpdateScale(ctx, modelName, &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: modelName}, Spec: autoscalingv1.ScaleSpec{Replicas: 0}}, metav1.UpdateOptions{})
	return err
}

func deleteModelPod(dryRun bool) action {
	return func(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
		opts := metav1.DeleteOptions{}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		return cs.CoreV1().Pods(p.ns).Delete(ctx, p.pod.Name, opts)
	}
}

func evictModelPod(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	return cs.PolicyV1().Evictions(p.ns).Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.pod.Name}})
}

func unprotectModelPod(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, mlv1alpha1.LabelProtected)
	_, err := cs.CoreV1().Pods(p.ns).Patch(ctx, p.pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

func makeWebAnEndpoint(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q,%q:%q}}}`, mlv1alpha1.LabelModel, modelName, mlv1alpha1.LabelComponent, mlv1alpha1.ComponentServer)
	_, err := cs.CoreV1().Pods(p.ns).Patch(ctx, "web", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// copyTo is what kubectl debug --copy-to creates: the pod's spec, without
// its labels and owner.
func copyTo(name string, dryRun bool) action {
	return func(ctx context.Context, p *protected, c client.Client, _ kubernetes.Interface) error {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: name}, Spec: *p.pod.Spec.DeepCopy()}
		pod.Spec.NodeName = ""
		return create(ctx, c, pod, dryRun)
	}
}

func create(ctx context.Context, c client.Client, obj client.Object, dryRun bool) error {
	if dryRun {
		return c.Create(ctx, obj, client.DryRunAll)
	}
	return c.Create(ctx, obj)
}

func readCheckpoints(ctx context.Context, p *protected, c client.Client, _ kubernetes.Interface) error {
	pod := tenantPod(p.ns, "reader", "default")
	pod.Spec.Volumes = []corev1.Volume{{Name: "out", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "finetune-output"}}}}
	return c.Create(ctx, pod)
}

// replica is a pod the ReplicaSet controller creates for ReplicaSet name.
func replica(owner func(*protected) (string, types.UID), dryRun bool) action {
	return func(ctx context.Context, p *protected, c client.Client, _ kubernetes.Interface) error {
		name, uid := owner(p)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, GenerateName: name + "-", Labels: p.pod.Labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name, UID: uid, Controller: ptr.To(true)}}},
			Spec: *p.pod.Spec.DeepCopy()}
		return create(ctx, c, pod, dryRun)
	}
}

func modelRS(p *protected) (string, types.UID) { return p.rs.Name, p.rs.UID }

func tenantRS(ctx context.Context) func(p *protected) (string, types.UID) {
	return func(p *protected) (string, types.UID) {
		rs := &appsv1.ReplicaSet{}
		if err := admin.Get(ctx, types.NamespacedName{Namespace: p.ns, Name: "mine"}, rs); err != nil {
			panic(err)
		}
		return rs.Name, rs.UID
	}
}

func deploymentAs(sa string, dryRun bool) action {
	return func(ctx context.Context, p *protected, c client.Client, _ kubernetes.Interface) error {
		d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: "mine-" + sa},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "mine"}},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "mine"}}, Spec: tenantPod(p.ns, "", sa).Spec}}}
		return create(ctx, c, d, dryRun)
	}
}

func token(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	_, err := cs.CoreV1().ServiceAccounts(p.ns).CreateToken(ctx, modelName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{mlv1alpha1.KeyReleaseAudience}, ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
	return err
}

func networkPolicy(name string, selector metav1.LabelSelector, dryRun bool) action {
	return func(ctx context.Context, p *protected, c client.Client, _ kubernetes.Interface) error {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: name},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: selector, Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}
		return create(ctx, c, np, dryRun)
	}
}

func deleteModelPolicy(ctx context.Context, p *protected, _ client.Client, cs kubernetes.Interface) error {
	return cs.NetworkingV1().NetworkPolicies(p.ns).Delete(ctx, modelName, metav1.DeleteOptions{})
}

func modelPod(p *protected) string { return p.pod.Name }

// outcome is what the guard should do with an attempt.
type outcome int

const (
	allowed outcome = iota
	denied
	// reachesKubelet: a session the guard lets through; it then fails
	// because envtest has no kubelet.
	reachesKubelet
)

type wantEvent struct {
	reason, action string
	// note holds these parts.
	note []string
}

func TestGuard(t *testing.T) {
	ctx := context.Background()
	p := newProtected(ctx, t, "nlp")
	model := "ProtectedModel nlp/sentiment"
	execDenied := "exec into pods of " + model + " is denied: it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may exec"
	denial := func(act, message string) *wantEvent {
		return &wantEvent{reason: mlv1alpha1.ReasonAccessDenied, action: act, note: []string{message}}
	}
	tests := []struct {
		what    string
		as      identity
		do      action
		want    outcome
		message string // the deny message's start
		event   *wantEvent
	}{
		{"exec", editUser, execInto(modelPod, "server", "cat", "/models/weights"), denied, execDenied, denial("Exec", execDenied)},
		{"exec", adminUser, execInto(modelPod, "server", "cat", "/models/weights"), denied, execDenied, denial("Exec", execDenied)},
		{"exec", breakGlass, execInto(modelPod, "server", "ls", "/models"), reachesKubelet, "",
			&wantEvent{mlv1alpha1.ReasonBreakGlass, "Exec", []string{"Break-glass exec into pod nlp/" + p.pod.Name + " container server by carol (groups sre-oncall, system:authenticated), as a member of break-glass group sre-oncall: command [\"ls\" \"/models\"]"}}},
		{"exec", operator, execInto(modelPod, "server", "true"), reachesKubelet, "",
			&wantEvent{mlv1alpha1.ReasonBreakGlass, "Exec", []string{"by " + operatorUser, "as the ModelGuard operator"}}},
		{"attach", editUser, attach, denied, "attaching to pods of " + model + " is denied", denial("Attach", "attaching to pods of "+model)},
		{"attach", breakGlass, attach, reachesKubelet, "", &wantEvent{mlv1alpha1.ReasonBreakGlass, "Attach", []string{"Break-glass attach into pod nlp/" + p.pod.Name + " container server by carol"}}},
		{"port-forward", editUser, portForward, denied, "port-forwarding to pods of " + model + " is denied", denial("PortForward", "port-forwarding to pods of "+model)},
		{"port-forward", adminUser, portForward, denied, "port-forwarding to pods of " + model + " is denied", denial("PortForward", "port-forwarding to pods of "+model)},
		{"port-forward", breakGlass, portForward, reachesKubelet, "", &wantEvent{mlv1alpha1.ReasonBreakGlass, "PortForward", []string{"by carol", "ports [8080]"}}},
		{"pod proxy", editUser, podProxy, denied, "proxying to pods of " + model + " through the API server is denied", denial("Proxy", "proxying to pods of "+model)},
		{"pod proxy", breakGlass, podProxy, denied, "proxying to pods of " + model + " through the API server is denied", denial("Proxy", "proxying to pods of "+model)},
		{"service proxy", adminUser, serviceProxy, denied, "proxying to Service nlp/sentiment of " + model + " through the API server is denied", denial("Proxy", "proxying to Service nlp/sentiment")},
		{"debug container", editUser, addDebugContainer, denied, "adding debug containers to pod nlp/" + p.pod.Name + " of " + model + " is denied", denial("AddEphemeralContainer", "adding debug containers")},
		{"debug container", breakGlass, addDebugContainer, denied, "adding debug containers to pod nlp/" + p.pod.Name + " of " + model + " is denied", denial("AddEphemeralContainer", "adding debug containers")},
		{"sidecar in the model's Deployment", editUser, addSidecar, denied, "changing Deployment nlp/sentiment is denied: ModelGuard manages it for " + model, denial("Update", "changing Deployment nlp/sentiment")},
		{"sidecar in the model's Deployment", adminUser, addSidecar, denied, "changing Deployment nlp/sentiment is denied: ModelGuard manages it for " + model, denial("Update", "changing Deployment nlp/sentiment")},
		{"sidecar in the model's Deployment", breakGlass, addSidecar, denied, "changing Deployment nlp/sentiment is denied: ModelGuard manages it for " + model, denial("Update", "changing Deployment nlp/sentiment")},
		{"revision annotation on the model's Deployment", depCtrl, annotateDeployment, allowed, "", nil},
		{"revision annotation on the model's Deployment", operator, annotateDeployment, allowed, "", nil},
		{"scale the model's Deployment", adminUser, scaleModel, denied, "scaling Deployment nlp/sentiment is denied", denial("Scale", "scaling Deployment nlp/sentiment")},
		{"scale the model's Deployment", hpa, scaleModel, denied, "scaling Deployment nlp/sentiment is denied", denial("Scale", "scaling Deployment nlp/sentiment")},
		{"delete the model's pod", editUser, deleteModelPod(false), denied, "deleting Pod nlp/" + p.pod.Name + " is denied: it is a pod of " + model, denial("Delete", "deleting Pod nlp/"+p.pod.Name)},
		{"evict the model's pod", adminUser, evictModelPod, denied, "evicting Pod nlp/" + p.pod.Name + " is denied: it is a pod of " + model, denial("Evict", "evicting Pod nlp/"+p.pod.Name)},
		{"delete the model's pod (dry run)", gc, deleteModelPod(true), allowed, "", nil},
		{"delete the model's pod (dry run)", node, deleteModelPod(true), allowed, "", nil},
		{"protected label off the model's pod", editUser, unprotectModelPod, denied, "changing Pod nlp/" + p.pod.Name + " is denied: ModelGuard manages it for " + model, denial("Update", "changing Pod nlp/"+p.pod.Name)},
		{"model's labels on a tenant pod", editUser, makeWebAnEndpoint, denied, "adding labels modelguard.dev/component, modelguard.dev/model on Pod nlp/web is denied: ModelGuard's labels decide which pods belong to " + model, denial("Update", "adding labels")},
		{"kubectl debug --copy-to", editUser, copyTo("sentiment-debug", false), denied, "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of " + model, denial("Create", "creating Pod nlp/sentiment-debug")},
		{"kubectl debug --copy-to", adminUser, copyTo("sentiment-debug", false), denied, "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of " + model, denial("Create", "creating Pod nlp/sentiment-debug")},
		{"kubectl debug --copy-to", breakGlass, copyTo("sentiment-debug", false), denied, "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of " + model, denial("Create", "creating Pod nlp/sentiment-debug")},
		{"pod mounting a training output", editUser, readCheckpoints, denied, "creating Pod nlp/reader is denied: it mounts PersistentVolumeClaim finetune-output, which holds data of TrainingJob nlp/finetune", nil},
		{"kubectl debug --copy-to (dry run)", operator, copyTo("sentiment-debug", true), allowed, "", nil},
		{"pod of the model's ReplicaSet (dry run)", rsCtrl, replica(modelRS, true), allowed, "", nil},
		{"model pod for a tenant ReplicaSet", rsCtrl, replica(tenantRS(ctx), false), denied, "creating Pod nlp/mine-", denial("Create", "is denied: it runs as ServiceAccount sentiment of "+model+", carries ModelGuard's labels")},
		{"Deployment running as the model", adminUser, deploymentAs(modelName, false), denied, "creating Deployment nlp/mine-sentiment is denied: its pod template runs as ServiceAccount sentiment of " + model, denial("Create", "creating Deployment nlp/mine-sentiment")},
		{"Deployment of its own (dry run)", adminUser, deploymentAs("default", true), allowed, "", nil},
		{"token for the model's ServiceAccount", editUser, token, denied, "creating a token for ServiceAccount nlp/sentiment is denied: it is the identity of the pods of " + model, denial("CreateToken", "creating a token for ServiceAccount nlp/sentiment")},
		{"token for the model's ServiceAccount", adminUser, token, denied, "creating a token for ServiceAccount nlp/sentiment is denied", denial("CreateToken", "creating a token")},
		{"token for the model's ServiceAccount", operator, token, denied, "creating a token for ServiceAccount nlp/sentiment is denied", denial("CreateToken", "creating a token")},
		{"token for the model's ServiceAccount", node, token, allowed, "", nil},
		{"allow-all NetworkPolicy", editUser, networkPolicy("allow-all", metav1.LabelSelector{}, false), denied, "creating NetworkPolicy nlp/allow-all is denied: its podSelector selects the pods of " + model + " (an empty podSelector selects every pod in the namespace)", denial("Create", "creating NetworkPolicy nlp/allow-all")},
		{"NetworkPolicy for the model's pods", adminUser, networkPolicy("allow-model", metav1.LabelSelector{MatchLabels: map[string]string{mlv1alpha1.LabelModel: modelName}}, false), denied, "creating NetworkPolicy nlp/allow-model is denied: its podSelector selects the pods of " + model, denial("Create", "creating NetworkPolicy nlp/allow-model")},
		{"NetworkPolicy for its own pods (dry run)", editUser, networkPolicy("allow-web", metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, true), allowed, "", nil},
		{"allow-all leaving protected pods out (dry run)", editUser, networkPolicy("allow-unprotected", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: mlv1alpha1.LabelProtected, Operator: metav1.LabelSelectorOpDoesNotExist}}}, true), allowed, "", nil},
		{"allow-all NetworkPolicy (dry run)", operator, networkPolicy("allow-all", metav1.LabelSelector{}, true), allowed, "", nil},
		{"delete the model's NetworkPolicy", editUser, deleteModelPolicy, denied, "deleting NetworkPolicy nlp/sentiment is denied: ModelGuard manages it for " + model, denial("Delete", "deleting NetworkPolicy nlp/sentiment")},
	}
	breakGlassBefore := testutil.ToFloat64(webhook.BreakGlassTotal.WithLabelValues("nlp", modelName, "exec"))
	for _, tt := range tests {
		t.Run(tt.what+" as "+tt.as.name, func(t *testing.T) {
			c, cs, err := tt.as.clients()
			if err != nil {
				t.Fatal(err)
			}
			err = tt.do(ctx, p, c, cs)
			switch tt.want {
			case allowed:
				if err != nil {
					t.Fatalf("want allowed, got %v", err)
				}
			case reachesKubelet:
				if err == nil || strings.Contains(err.Error(), "admission webhook") {
					t.Fatalf("want the request past admission, failing at the kubelet; got %v", err)
				}
			case denied:
				if !isGuardDenial(err) {
					t.Fatalf("want the guard's denial, got %v", err)
				}
				if got := err.Error()[strings.Index(err.Error(), guardPrefix)+len(guardPrefix):]; !strings.HasPrefix(got, tt.message) {
					t.Errorf("deny message:\n  %s\nwant it to start with:\n  %s", got, tt.message)
				}
			}
			if tt.event != nil {
				waitForEvent(ctx, t, p.ns, *tt.event)
			}
		})
	}
	// Two break-glass execs: carol's and the operator's.
	if got := testutil.ToFloat64(webhook.BreakGlassTotal.WithLabelValues("nlp", modelName, "exec")) - breakGlassBefore; got != 2 {
		t.Errorf("modelguard_break_glass_total{subresource=exec} rose by %v, want 2", got)
	}
	// What the denied attempts would have changed is unchanged.
	d := &appsv1.Deployment{}
	if err := admin.Get(ctx, types.NamespacedName{Namespace: p.ns, Name: modelName}, d); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Spec.Template.Spec.Containers); n != 1 || *d.Spec.Replicas != 1 {
		t.Errorf("the model's Deployment has %d containers and %d replicas after the denied attempts, want 1 and 1", n, *d.Spec.Replicas)
	}
	if err := admin.Get(ctx, client.ObjectKeyFromObject(p.pod), &corev1.Pod{}); err != nil {
		t.Errorf("the model's pod after the denied deletes: %v", err)
	}
}

// waitForEvent waits for an events.k8s.io Event on the model with the
// reason and action whose note holds every part of want.note. Denials of
// one action on one object fold into one Event series, whose note is the
// first attempt's: the parts are chosen to hold for every attempt.
func waitForEvent(ctx context.Context, t *testing.T, ns string, want wantEvent) {
	t.Helper()
	var seen []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		list := &eventsv1.EventList{}
		if err := admin.List(ctx, list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		seen = seen[:0]
		for _, e := range list.Items {
			if e.Regarding.Kind != "ProtectedModel" || e.Regarding.Name != modelName || e.Regarding.UID == "" {
				continue
			}
			seen = append(seen, e.Reason+" "+e.Action+": "+e.Note)
			if e.Reason != want.reason || e.Action != want.action || e.ReportingController != "modelguard" {
				continue
			}
			all := true
			for _, part := range want.note {
				all = all && strings.Contains(e.Note, part)
			}
			if all {
				return
			}
		}
	}
	t.Errorf("no %s %s Event on the model with %q; the model's Events:\n  %s", want.reason, want.action, want.note, strings.Join(seen, "\n  "))
}

// TestUnlabelledNamespaceUntouched: in a namespace where ModelGuard manages
// nothing, the guard is not called, even for pods that look like a model's.
func TestUnlabelledNamespaceUntouched(t *testing.T) {
	ctx := context.Background()
	const ns = "plain"
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := bindTenants(ctx, ns); err != nil {
		t.Fatal(err)
	}
	c, cs, err := editUser.clients()
	if err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelName, Labels: map[string]string{
		mlv1alpha1.LabelProtected: "true", mlv1alpha1.LabelModel: modelName}}}
	if err := admin.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	pod := tenantPod(ns, "lookalike", modelName)
	pod.Labels[mlv1alpha1.LabelModel] = modelName
	pod.Labels[mlv1alpha1.LabelProtected] = "true"
	if err := c.Create(ctx, pod); err != nil {
		t.Fatalf("creating a pod with a model's labels in an unlabelled namespace: %v", err)
	}
	err = execInto(func(*protected) string { return "lookalike" }, "web", "id")(ctx, &protected{ns: ns}, c, cs)
	if err == nil || strings.Contains(err.Error(), "admission webhook") {
		t.Errorf("exec in an unlabelled namespace: want it past admission, failing at the kubelet; got %v", err)
	}
	if err := networkPolicy("allow-all", metav1.LabelSelector{}, false)(ctx, &protected{ns: ns}, c, cs); err != nil {
		t.Errorf("an allow-all NetworkPolicy in an unlabelled namespace: %v", err)
	}
	if err := token(ctx, &protected{ns: ns}, c, cs); err != nil {
		t.Errorf("a token in an unlabelled namespace: %v", err)
	}
}
