package webhook_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
	"github.com/modelguard/modelguard/internal/webhook"
)

var (
	podsGVR        = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
	servicesGVR    = metav1.GroupVersionResource{Version: "v1", Resource: "services"}
	saGVR          = metav1.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
	deploymentsGVR = metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	replicasetsGVR = metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}
	cronjobsGVR    = metav1.GroupVersionResource{Group: "batch", Version: "v1", Resource: "cronjobs"}
	npGVR          = metav1.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}

	modelRef = "ProtectedModel nlp/sentiment model-uid"
)

// request is an AdmissionRequest as the API server sends it.
func request(op admissionv1.Operation, gvr metav1.GroupVersionResource, kind, sub, name string, user authenticationv1.UserInfo) *admissionv1.AdmissionRequest {
	return &admissionv1.AdmissionRequest{
		UID: types.UID("req-" + string(op) + "-" + gvr.Resource + "-" + sub + "-" + name), Operation: op,
		Kind:     metav1.GroupVersionKind{Group: gvr.Group, Version: gvr.Version, Kind: kind},
		Resource: gvr, SubResource: sub, Namespace: ns, Name: name, UserInfo: user,
	}
}

func connect(t testing.TB, sub, name string, user authenticationv1.UserInfo, opts any) *admissionv1.AdmissionRequest {
	kind := map[string]string{"exec": "PodExecOptions", "attach": "PodAttachOptions", "portforward": "PodPortForwardOptions", "proxy": "PodProxyOptions"}[sub]
	r := request(admissionv1.Connect, podsGVR, kind, sub, name, user)
	r.Object = raw(t, opts)
	return r
}

func withObjects(t testing.TB, r *admissionv1.AdmissionRequest, obj, old any) *admissionv1.AdmissionRequest {
	r.Object, r.OldObject = raw(t, obj), raw(t, old)
	return r
}

func managedDeployment() *appsv1.Deployment {
	for _, o := range managedObjects() {
		if d, ok := o.(*appsv1.Deployment); ok {
			return d
		}
	}
	panic("no Deployment")
}

func managedPod() *corev1.Pod {
	for _, o := range managedObjects() {
		if p, ok := o.(*corev1.Pod); ok {
			return p
		}
	}
	panic("no Pod")
}

func denial(user authenticationv1.UserInfo, action, related, message string) event {
	return event{Regarding: modelRef, Related: related, Type: corev1.EventTypeWarning, Reason: mlv1alpha1.ReasonAccessDenied, Action: action,
		Note: "Denied to " + user.Username + " (groups " + strings.Join(user.Groups, ", ") + "): " + message}
}

func TestAdmission(t *testing.T) {
	execMsg := "exec into pods of ProtectedModel nlp/sentiment is denied: it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may exec"
	sidecar := managedDeployment()
	sidecar.Spec.Template.Spec.Containers = append(sidecar.Spec.Template.Spec.Containers, corev1.Container{Name: "sidecar", Image: "busybox"})
	copyTo := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sentiment-debug"}, Spec: podSpec(modelName, "bundle")}
	impostor := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "impostor", Labels: map[string]string{mlv1alpha1.LabelModel: modelName}}, Spec: podSpec("ci")}
	plainPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "job-1"}, Spec: podSpec("ci", "bundle")}
	readsCheckpoints := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reader"}, Spec: podSpec("ci", "finetune-output")}
	replica := func(owner string, uid types.UID) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: modelRS + "-", Labels: podLabels(),
			OwnerReferences: controllerRef("apps/v1", "ReplicaSet", owner, uid)}, Spec: podSpec(modelName, "bundle")}
	}
	tenantDeployment := func(sa string) *appsv1.Deployment {
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mine"},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: podSpec(sa)}}}
	}
	allowAll := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "allow-all"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}
	webPolicy := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}
	relabelled := managedPod().DeepCopy()
	delete(relabelled.Labels, mlv1alpha1.LabelProtected)
	webPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Labels: map[string]string{"app": "web"}}, Spec: podSpec("ci")}
	webPodAsModel := webPod.DeepCopy()
	webPodAsModel.Labels[mlv1alpha1.LabelModel] = modelName
	webPodAsModel.Labels[mlv1alpha1.LabelComponent] = mlv1alpha1.ComponentServer
	debugged := managedPod().DeepCopy()
	debugged.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: "busybox"}}}

	podRef := "Pod nlp/" + modelPod
	tests := []struct {
		name        string
		req         *admissionv1.AdmissionRequest
		wantAllowed bool
		wantMessage string
		wantEvents  []event
	}{
		// CONNECT.
		{
			name: "tenant exec", req: connect(t, "exec", modelPod, alice, corev1.PodExecOptions{Container: "server", Command: []string{"cat", "/models/w"}}),
			wantMessage: execMsg, wantEvents: []event{denial(alice, "Exec", podRef, execMsg)},
		}, {
			name: "break-glass exec", req: connect(t, "exec", modelPod, carol, corev1.PodExecOptions{Container: "server", Command: []string{"sh", "-c", "curl -H 'Authorization: Bearer s3cr3t' localhost"}}),
			wantAllowed: true,
			wantEvents: []event{{Regarding: modelRef, Related: "PodExecOptions nlp/" + modelPod + " req-CONNECT-pods-exec-" + modelPod, Type: "Normal", Reason: "BreakGlass", Action: "Exec",
				Note: `Break-glass exec into pod nlp/sentiment-7c9-x container server by carol (groups sre-oncall, system:authenticated), as a member of break-glass group sre-oncall: command ["sh" "-c" "curl -H 'Authorization: Bearer [redacted] localhost"]`}},
		}, {
			name: "break-glass port-forward", req: connect(t, "portforward", modelPod, carol, corev1.PodPortForwardOptions{Ports: []int32{8080}}),
			wantAllowed: true,
			wantEvents: []event{{Regarding: modelRef, Related: "PodPortForwardOptions nlp/" + modelPod + " req-CONNECT-pods-portforward-" + modelPod, Type: "Normal", Reason: "BreakGlass", Action: "PortForward",
				Note: "Break-glass port-forward into pod nlp/sentiment-7c9-x (default container) by carol (groups sre-oncall, system:authenticated), as a member of break-glass group sre-oncall: ports [8080]"}},
		}, {
			name: "cluster administrator's proxy, recorded", req: connect(t, "proxy", "https:"+modelPod+":8443", admin, corev1.PodProxyOptions{Path: "/metrics"}),
			wantAllowed: true,
			wantEvents: []event{{Regarding: modelRef, Related: "PodProxyOptions nlp/" + modelPod + " req-CONNECT-pods-proxy-https:" + modelPod + ":8443", Type: "Normal", Reason: "BreakGlass", Action: "Proxy",
				Note: `Break-glass proxy into pod nlp/sentiment-7c9-x (default container) by kubernetes-admin (groups system:masters, system:authenticated), as a cluster administrator (system:masters): path "/metrics"`}},
		}, {
			name: "tenant attach", req: connect(t, "attach", modelPod, alice, corev1.PodAttachOptions{}),
			wantMessage: "attaching to pods of ProtectedModel nlp/sentiment is denied: it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may attach",
			wantEvents:  []event{denial(alice, "Attach", podRef, "attaching to pods of ProtectedModel nlp/sentiment is denied: it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may attach")},
		}, {
			name: "tenant port-forward", req: connect(t, "portforward", modelPod, alice, corev1.PodPortForwardOptions{Ports: []int32{8080}}),
			wantMessage: "port-forwarding to pods of ProtectedModel nlp/sentiment is denied: it goes around the model's NetworkPolicy, and it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may port-forward",
			wantEvents:  []event{denial(alice, "PortForward", podRef, "port-forwarding to pods of ProtectedModel nlp/sentiment is denied: it goes around the model's NetworkPolicy, and it serves trade-secret weights; members of spec.access.breakGlassGroups [sre-oncall] may port-forward")},
		}, {
			name: "break-glass pod proxy by scheme:name:port", req: connect(t, "proxy", "https:"+modelPod+":8443", carol, corev1.PodProxyOptions{Path: "/"}),
			wantMessage: "proxying to pods of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call its Service, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward",
			wantEvents:  []event{denial(carol, "Proxy", podRef, "proxying to pods of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call its Service, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward")},
		}, {
			name: "tenant exec into an unlabelled pod on the model's account", req: connect(t, "exec", "legacy", alice, corev1.PodExecOptions{}),
			wantMessage: execMsg, wantEvents: []event{denial(alice, "Exec", "Pod nlp/legacy", execMsg)},
		}, {
			name: "tenant exec into its own pod", req: connect(t, "exec", "web", alice, corev1.PodExecOptions{}), wantAllowed: true,
		}, {
			name: "exec into a pod that does not exist", req: connect(t, "exec", "gone", alice, corev1.PodExecOptions{}), wantAllowed: true,
		}, {
			name:        "tenant proxy to the model's Service",
			req:         withObjects(t, request(admissionv1.Connect, servicesGVR, "ServiceProxyOptions", "proxy", "http:"+modelName+":http", alice), corev1.ServiceProxyOptions{}, nil),
			wantMessage: "proxying to Service nlp/sentiment of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call the Service directly, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward to its pods",
			wantEvents:  []event{denial(alice, "Proxy", "Service nlp/sentiment", "proxying to Service nlp/sentiment of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call the Service directly, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward to its pods")},
		}, {
			name:        "tenant proxy through a look-alike Service of its own",
			req:         withObjects(t, request(admissionv1.Connect, servicesGVR, "ServiceProxyOptions", "proxy", "lookalike", alice), corev1.ServiceProxyOptions{}, nil),
			wantMessage: "proxying to Service nlp/lookalike of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call the Service directly, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward to its pods",
			wantEvents:  []event{denial(alice, "Proxy", "Service nlp/lookalike", "proxying to Service nlp/lookalike of ProtectedModel nlp/sentiment through the API server is denied: it serves trade-secret weights; clients that spec.network.allowedClients admits call the Service directly, and members of spec.access.breakGlassGroups [sre-oncall] may port-forward to its pods")},
		}, {
			name:        "tenant proxy to its own Service",
			req:         withObjects(t, request(admissionv1.Connect, servicesGVR, "ServiceProxyOptions", "proxy", "web", alice), corev1.ServiceProxyOptions{}, nil),
			wantAllowed: true,
		},

		// kubectl debug.
		{
			name:        "break-glass member adds a debug container",
			req:         withObjects(t, request(admissionv1.Update, podsGVR, "Pod", "ephemeralcontainers", modelPod, carol), debugged, managedPod()),
			wantMessage: "adding debug containers to pod nlp/sentiment-7c9-x of ProtectedModel nlp/sentiment is denied: a container added to the pod reads its memory-backed weights; members of spec.access.breakGlassGroups [sre-oncall] may exec into it",
			wantEvents:  []event{denial(carol, "AddEphemeralContainer", podRef, "adding debug containers to pod nlp/sentiment-7c9-x of ProtectedModel nlp/sentiment is denied: a container added to the pod reads its memory-backed weights; members of spec.access.breakGlassGroups [sre-oncall] may exec into it")},
		}, {
			name: "debug container in a tenant's pod", req: withObjects(t, request(admissionv1.Update, podsGVR, "Pod", "ephemeralcontainers", "web", alice), webPod, webPod), wantAllowed: true,
		},

		// Managed objects.
		{
			name:        "tenant adds a sidecar to the model's Deployment",
			req:         withObjects(t, request(admissionv1.Update, deploymentsGVR, "Deployment", "", modelName, alice), sidecar, managedDeployment()),
			wantMessage: "changing Deployment nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(alice, "Update", "Deployment nlp/sentiment", "changing Deployment nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		}, {
			name: "the operator applies the Deployment", req: withObjects(t, request(admissionv1.Update, deploymentsGVR, "Deployment", "", modelName, operator), managedDeployment(), sidecar), wantAllowed: true,
		}, {
			name: "the Deployment controller annotates it", req: withObjects(t, request(admissionv1.Update, deploymentsGVR, "Deployment", "", modelName, depCtrl), managedDeployment(), managedDeployment()), wantAllowed: true,
		}, {
			name:        "tenant deletes the model's pod",
			req:         withObjects(t, request(admissionv1.Delete, podsGVR, "Pod", "", modelPod, alice), nil, managedPod()),
			wantMessage: "deleting Pod nlp/sentiment-7c9-x is denied: it is a pod of ProtectedModel nlp/sentiment, and a replacement would unseal the weights again whenever a tenant chose; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(alice, "Delete", podRef, "deleting Pod nlp/sentiment-7c9-x is denied: it is a pod of ProtectedModel nlp/sentiment, and a replacement would unseal the weights again whenever a tenant chose; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		}, {
			name: "the kubelet deletes it", req: withObjects(t, request(admissionv1.Delete, podsGVR, "Pod", "", modelPod, node), nil, managedPod()), wantAllowed: true,
		}, {
			name: "the garbage collector deletes it", req: withObjects(t, request(admissionv1.Delete, podsGVR, "Pod", "", modelPod, gc), nil, managedPod()), wantAllowed: true,
		}, {
			name:        "tenant evicts the model's pod",
			req:         withObjects(t, request(admissionv1.Create, podsGVR, "Eviction", "eviction", modelPod, alice), map[string]any{"apiVersion": "policy/v1", "kind": "Eviction"}, nil),
			wantMessage: "evicting Pod nlp/sentiment-7c9-x is denied: it is a pod of ProtectedModel nlp/sentiment, and a replacement would unseal the weights again whenever a tenant chose; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(alice, "Evict", podRef, "evicting Pod nlp/sentiment-7c9-x is denied: it is a pod of ProtectedModel nlp/sentiment, and a replacement would unseal the weights again whenever a tenant chose; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		}, {
			name: "tenant evicts its own pod", req: request(admissionv1.Create, podsGVR, "Eviction", "eviction", "web", alice), wantAllowed: true,
		}, {
			name:        "a tenant's HPA scales the model",
			req:         request(admissionv1.Update, deploymentsGVR, "Scale", "scale", modelName, hpa),
			wantMessage: "scaling Deployment nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(hpa, "Scale", "Deployment nlp/sentiment", "scaling Deployment nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		}, {
			name: "the Deployment controller scales the ReplicaSet", req: request(admissionv1.Update, replicasetsGVR, "Scale", "scale", modelRS, depCtrl), wantAllowed: true,
		},

		// Labels.
		{
			name:        "tenant takes the protected label off the model's pod",
			req:         withObjects(t, request(admissionv1.Update, podsGVR, "Pod", "", modelPod, alice), relabelled, managedPod()),
			wantMessage: "changing Pod nlp/sentiment-7c9-x is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(alice, "Update", podRef, "changing Pod nlp/sentiment-7c9-x is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		}, {
			name:        "tenant makes its pod an endpoint of the model",
			req:         withObjects(t, request(admissionv1.Update, podsGVR, "Pod", "", "web", alice), webPodAsModel, webPod),
			wantMessage: "adding labels modelguard.dev/component, modelguard.dev/model on Pod nlp/web is denied: ModelGuard's labels decide which pods belong to ProtectedModel nlp/sentiment, receive its traffic and fall under its NetworkPolicy, so only the operator sets them; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(alice, "Update", "Pod nlp/web", "adding labels modelguard.dev/component, modelguard.dev/model on Pod nlp/web is denied: ModelGuard's labels decide which pods belong to ProtectedModel nlp/sentiment, receive its traffic and fall under its NetworkPolicy, so only the operator sets them; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		}, {
			name:        "tenant creates a look-alike pod with the model's label",
			req:         withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "impostor", alice), impostor, nil),
			wantMessage: "adding label modelguard.dev/model on Pod nlp/impostor is denied: ModelGuard's labels decide which pods belong to ProtectedModel nlp/sentiment, receive its traffic and fall under its NetworkPolicy, so only the operator sets them; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(alice, "Create", "Pod nlp/impostor", "adding label modelguard.dev/model on Pod nlp/impostor is denied: ModelGuard's labels decide which pods belong to ProtectedModel nlp/sentiment, receive its traffic and fall under its NetworkPolicy, so only the operator sets them; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		},

		// Look-alike pods and templates.
		{
			name:        "kubectl debug --copy-to",
			req:         withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "sentiment-debug", alice), copyTo, nil),
			wantMessage: "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods",
			wantEvents:  []event{denial(alice, "Create", "Pod nlp/sentiment-debug", "creating Pod nlp/sentiment-debug is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods")},
		}, {
			name:        "a pod mounting the training output",
			req:         withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "reader", alice), readsCheckpoints, nil),
			wantMessage: "creating Pod nlp/reader is denied: it mounts PersistentVolumeClaim finetune-output, which holds data of TrainingJob nlp/finetune; only the ReplicaSet or Job that ModelGuard manages for TrainingJob nlp/finetune may create such pods; to debug it, its spec.access.breakGlassGroups is empty, so nobody may exec into its pods; the platform team can name an on-call group there",
		}, {
			name: "an ordinary pod mounting the tenant's own claim", req: withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "job-1", alice), plainPod, nil), wantAllowed: true,
		}, {
			name: "the ReplicaSet controller creates the model's pod", req: withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "", rsCtrl), replica(modelRS, modelRSUID), nil), wantAllowed: true,
		}, {
			name:        "the ReplicaSet controller, for a ReplicaSet that names the model's by a stale UID",
			req:         withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "", rsCtrl), replica(modelRS, "forged"), nil),
			wantMessage: "creating Pod nlp/sentiment-7c9-… is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment, carries ModelGuard's labels app.kubernetes.io/managed-by=modelguard, modelguard.dev/component, modelguard.dev/model, modelguard.dev/protected; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods",
			wantEvents:  []event{denial(rsCtrl, "Create", "", "creating Pod nlp/sentiment-7c9-… is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment, carries ModelGuard's labels app.kubernetes.io/managed-by=modelguard, modelguard.dev/component, modelguard.dev/model, modelguard.dev/protected; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods")},
		}, {
			name:        "the ReplicaSet controller, for a tenant's ReplicaSet",
			req:         withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "", rsCtrl), replica("mine", "mine-uid"), nil),
			wantMessage: "creating Pod nlp/sentiment-7c9-… is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment, carries ModelGuard's labels app.kubernetes.io/managed-by=modelguard, modelguard.dev/component, modelguard.dev/model, modelguard.dev/protected; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods",
			wantEvents:  []event{denial(rsCtrl, "Create", "", "creating Pod nlp/sentiment-7c9-… is denied: it runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment, carries ModelGuard's labels app.kubernetes.io/managed-by=modelguard, modelguard.dev/component, modelguard.dev/model, modelguard.dev/protected; only the ReplicaSet or Job that ModelGuard manages for ProtectedModel nlp/sentiment may create such pods; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods")},
		}, {
			name: "the Deployment controller creates the model's ReplicaSet",
			req: withObjects(t, request(admissionv1.Create, replicasetsGVR, "ReplicaSet", "", modelRS+"b", depCtrl), &appsv1.ReplicaSet{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelRS + "b", Labels: podLabels(), OwnerReferences: controllerRef("apps/v1", "Deployment", modelName, modelDepUID)},
				Spec:       appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels()}, Spec: podSpec(modelName)}}}, nil),
			wantAllowed: true,
		}, {
			name:        "tenant turns its Deployment into the model",
			req:         withObjects(t, request(admissionv1.Update, deploymentsGVR, "Deployment", "", "mine", alice), tenantDeployment(modelName), tenantDeployment("ci")),
			wantMessage: "changing Deployment nlp/mine is denied: its pod template runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only ModelGuard creates workloads whose pods pass for those of ProtectedModel nlp/sentiment; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods",
			wantEvents:  []event{denial(alice, "Update", "Deployment nlp/mine", "changing Deployment nlp/mine is denied: its pod template runs as ServiceAccount sentiment of ProtectedModel nlp/sentiment; only ModelGuard creates workloads whose pods pass for those of ProtectedModel nlp/sentiment; to debug it, members of spec.access.breakGlassGroups [sre-oncall] may exec into its pods")},
		}, {
			name: "tenant Deployment of its own", req: withObjects(t, request(admissionv1.Create, deploymentsGVR, "Deployment", "", "mine", alice), tenantDeployment("ci"), nil), wantAllowed: true,
		}, {
			name: "tenant CronJob whose Jobs would carry the model's labels",
			req: withObjects(t, request(admissionv1.Create, cronjobsGVR, "CronJob", "", "nightly", alice), &batchv1.CronJob{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nightly"},
				Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue}},
					Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: podSpec("ci")}}}}}, nil),
			wantMessage: "creating CronJob nlp/nightly is denied: its pod template carries ModelGuard's label app.kubernetes.io/managed-by=modelguard; only ModelGuard creates workloads whose pods pass for those of a ModelGuard-protected workload in namespace nlp; to debug it, its spec.access.breakGlassGroups is empty, so nobody may exec into its pods; the platform team can name an on-call group there",
		},

		// Tokens.
		{
			name:        "tenant mints a token for the model's ServiceAccount",
			req:         request(admissionv1.Create, saGVR, "TokenRequest", "token", modelName, alice),
			wantMessage: "creating a token for ServiceAccount nlp/sentiment is denied: it is the identity of the pods of ProtectedModel nlp/sentiment, and with its token a program could ask for their key; only the kubelets that run those pods get its tokens",
			wantEvents:  []event{denial(alice, "CreateToken", "ServiceAccount nlp/sentiment", "creating a token for ServiceAccount nlp/sentiment is denied: it is the identity of the pods of ProtectedModel nlp/sentiment, and with its token a program could ask for their key; only the kubelets that run those pods get its tokens")},
		}, {
			name:        "the operator may not either",
			req:         request(admissionv1.Create, saGVR, "TokenRequest", "token", modelName, operator),
			wantMessage: "creating a token for ServiceAccount nlp/sentiment is denied: it is the identity of the pods of ProtectedModel nlp/sentiment, and with its token a program could ask for their key; only the kubelets that run those pods get its tokens",
			wantEvents:  []event{denial(operator, "CreateToken", "ServiceAccount nlp/sentiment", "creating a token for ServiceAccount nlp/sentiment is denied: it is the identity of the pods of ProtectedModel nlp/sentiment, and with its token a program could ask for their key; only the kubelets that run those pods get its tokens")},
		}, {
			name: "the kubelet", req: request(admissionv1.Create, saGVR, "TokenRequest", "token", modelName, node), wantAllowed: true,
		}, {
			name: "tenant token for its own account", req: request(admissionv1.Create, saGVR, "TokenRequest", "token", "ci", alice), wantAllowed: true,
		},

		// NetworkPolicies.
		{
			name:        "tenant allow-all",
			req:         withObjects(t, request(admissionv1.Create, npGVR, "NetworkPolicy", "", "allow-all", alice), allowAll, nil),
			wantMessage: "creating NetworkPolicy nlp/allow-all is denied: its podSelector selects the pods of ProtectedModel nlp/sentiment (an empty podSelector selects every pod in the namespace), and NetworkPolicies add up, so it would let in traffic that the model's own policy refuses; the platform team admits clients in spec.network.allowedClients, and a policy of yours can leave protected pods out with the expression modelguard.dev/protected DoesNotExist",
			wantEvents:  []event{denial(alice, "Create", "NetworkPolicy nlp/allow-all", "creating NetworkPolicy nlp/allow-all is denied: its podSelector selects the pods of ProtectedModel nlp/sentiment (an empty podSelector selects every pod in the namespace), and NetworkPolicies add up, so it would let in traffic that the model's own policy refuses; the platform team admits clients in spec.network.allowedClients, and a policy of yours can leave protected pods out with the expression modelguard.dev/protected DoesNotExist")},
		}, {
			name: "tenant policy for its own pods", req: withObjects(t, request(admissionv1.Create, npGVR, "NetworkPolicy", "", "web", alice), webPolicy, nil), wantAllowed: true,
		}, {
			name:        "tenant deletes the model's policy",
			req:         withObjects(t, request(admissionv1.Delete, npGVR, "NetworkPolicy", "", modelName, alice), nil, managedObjects()[6]),
			wantMessage: "deleting NetworkPolicy nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it",
			wantEvents:  []event{denial(alice, "Delete", "NetworkPolicy nlp/sentiment", "deleting NetworkPolicy nlp/sentiment is denied: ModelGuard manages it for ProtectedModel nlp/sentiment and only the operator changes it; the platform team changes it through the ProtectedModel's spec, and the operator applies it")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			resp := f.admit(t, tt.req)
			var gotMessage string
			if resp.Result != nil {
				gotMessage = resp.Result.Message
			}
			if resp.Allowed != tt.wantAllowed || gotMessage != tt.wantMessage {
				t.Errorf("allowed %v, message:\n  %s\nwant allowed %v, message:\n  %s", resp.Allowed, gotMessage, tt.wantAllowed, tt.wantMessage)
			}
			if !resp.Allowed && (resp.Result.Code != http.StatusForbidden || resp.Result.Reason != metav1.StatusReasonForbidden) {
				t.Errorf("a denial is %d %s, want 403 Forbidden", resp.Result.Code, resp.Result.Reason)
			}
			if diff := cmp.Diff(tt.wantEvents, f.recorder.take()); diff != "" {
				t.Errorf("Events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAdmissionFailsClosed(t *testing.T) {
	s := scheme()
	api := fake.NewClientBuilder().WithScheme(s).WithObjects(tenantObjects()...).Build()
	f := newFixtureWith(t, failingReader{}, api)
	before := testutil.ToFloat64(webhook.DenialsTotal.WithLabelValues(policy.RuleFailClosed))
	resp := f.admit(t, connect(t, "exec", "web", alice, corev1.PodExecOptions{}))
	want := "ModelGuard's admission guard could not decide on connect pods/exec nlp/web and denies it to fail closed: reading *v1.Pod nlp/web: etcdserver: request timed out; retry shortly, and if it persists ask the platform team to check the operator"
	if resp.Allowed || resp.Result == nil || resp.Result.Message != want {
		t.Errorf("got allowed %v, %+v; want denied with %q", resp.Allowed, resp.Result, want)
	}
	if got := testutil.ToFloat64(webhook.DenialsTotal.WithLabelValues(policy.RuleFailClosed)) - before; got != 1 {
		t.Errorf("fail-closed denials counted %v times, want 1", got)
	}
	// The API server being away fails closed too, even for a tenant's own
	// pod: the guard cannot tell it is not protected.
	f = newFixtureWith(t, fake.NewClientBuilder().WithScheme(s).Build(), failingReader{})
	if resp := f.admit(t, connect(t, "exec", "web", alice, corev1.PodExecOptions{})); resp.Allowed {
		t.Error("exec allowed while the API server does not answer")
	}
}

func TestMetrics(t *testing.T) {
	f := newFixture(t)
	bg := webhook.BreakGlassTotal.WithLabelValues(ns, modelName, "exec")
	denied := webhook.DenialsTotal.WithLabelValues(policy.RuleExec)
	bgBefore, deniedBefore := testutil.ToFloat64(bg), testutil.ToFloat64(denied)
	f.admit(t, connect(t, "exec", modelPod, carol, corev1.PodExecOptions{Command: []string{"sh"}}))
	f.admit(t, connect(t, "exec", modelPod, alice, corev1.PodExecOptions{Command: []string{"sh"}}))
	f.admit(t, connect(t, "exec", modelPod, alice, corev1.PodExecOptions{Command: []string{"sh"}}))
	if got := testutil.ToFloat64(bg) - bgBefore; got != 1 {
		t.Errorf("modelguard_break_glass_total rose by %v, want 1", got)
	}
	if got := testutil.ToFloat64(denied) - deniedBefore; got != 2 {
		t.Errorf("modelguard_admission_denials_total{rule=exec} rose by %v, want 2", got)
	}
}

func TestDryRunLeavesNoEvent(t *testing.T) {
	f := newFixture(t)
	req := withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "sentiment-debug", alice),
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sentiment-debug"}, Spec: podSpec(modelName)}, nil)
	req.DryRun = ptr.To(true)
	if resp := f.admit(t, req); resp.Allowed {
		t.Fatal("a dry run of a look-alike pod is allowed")
	}
	if got := f.recorder.take(); len(got) != 0 {
		t.Errorf("a dry run recorded %v", got)
	}
}

func TestDenialEventsAreRateLimited(t *testing.T) {
	f := newFixture(t)
	for i := 0; i < 50; i++ {
		name := "copy-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		f.admit(t, withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", name, alice),
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: podSpec(modelName)}, nil))
	}
	if got := len(f.recorder.take()); got < 1 || got > 11 {
		t.Errorf("50 denied look-alike pods recorded %d Events, want at most the burst (10) and what refills meanwhile", got)
	}
	// Sessions are never limited: each is recorded.
	for i := 0; i < 20; i++ {
		f.admit(t, connect(t, "exec", modelPod, carol, corev1.PodExecOptions{Command: []string{"id"}}))
	}
	if got := len(f.recorder.take()); got != 20 {
		t.Errorf("20 break-glass sessions recorded %d Events, want 20", got)
	}
}

func TestSecretsStayOutOfEvents(t *testing.T) {
	f := newFixture(t)
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl"
	for _, cmd := range [][]string{
		{"curl", "-H", "Authorization: Bearer hunter2", "http://localhost"},
		{"sh", "-c", "TOKEN=" + jwt + " ./client"},
		{"client", "--token", "hunter2"},
		{"client", "--password=hunter2"},
		{"vault", "login", "-token=hunter2"},
	} {
		f.admit(t, connect(t, "exec", modelPod, carol, corev1.PodExecOptions{Command: cmd}))
	}
	for _, e := range f.recorder.take() {
		if strings.Contains(e.Note, "hunter2") || strings.Contains(e.Note, "eyJ") {
			t.Errorf("an Event carries a credential: %s", e.Note)
		}
	}
}

func TestServeHTTPAnswersEveryRequest(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name       string
		method     string
		body       string
		wantStatus int
	}{
		{"not JSON", http.MethodPost, "{", http.StatusBadRequest},
		{"no request", http.MethodPost, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest},
		{"empty", http.MethodPost, "", http.StatusBadRequest},
		{"GET", http.MethodGet, "", http.StatusMethodNotAllowed},
		{"too large", http.MethodPost, `{"x":"` + strings.Repeat("a", 7<<20) + `"}`, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, webhook.Path, strings.NewReader(tt.body))
			rw := httptest.NewRecorder()
			f.handler.ServeHTTP(rw, req)
			if rw.Code != tt.wantStatus {
				t.Errorf("status %d, want %d", rw.Code, tt.wantStatus)
			}
			checkReview(t, rw.Body.Bytes(), "")
		})
	}
}

func TestNewHandlerOptions(t *testing.T) {
	s := scheme()
	c := fake.NewClientBuilder().WithScheme(s).Build()
	tests := []struct {
		name    string
		opts    webhook.Options
		wantErr string
	}{
		{"nothing", webhook.Options{}, "admission guard: Reader, APIReader, Recorder not set"},
		{"not a ServiceAccount", webhook.Options{Reader: c, APIReader: c, Recorder: &recorder{}, OperatorServiceAccount: "modelguard"},
			`admission guard: OperatorServiceAccount "modelguard" is not a ServiceAccount user name such as system:serviceaccount:modelguard-system:modelguard`},
		{"complete", webhook.Options{Reader: c, APIReader: c, Recorder: &recorder{}, OperatorServiceAccount: operatorSA}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := webhook.NewHandler(tt.opts)
			var got string
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Errorf("error %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func TestRules(t *testing.T) {
	// Every resource a rule of the guard judges is sent to it.
	want := map[string][]string{
		"CONNECT /pods/exec": nil, "CONNECT /pods/attach": nil, "CONNECT /pods/portforward": nil, "CONNECT /pods/proxy": nil, "CONNECT /services/proxy": nil,
		"UPDATE /pods/ephemeralcontainers": nil, "CREATE /serviceaccounts/token": nil, "CREATE /pods/eviction": nil,
		"CREATE /pods": nil, "UPDATE /pods": nil, "DELETE /pods": nil,
		"DELETE apps/deployments": nil, "UPDATE apps/deployments/scale": nil, "CREATE apps/replicasets": nil,
		"CREATE batch/jobs": nil, "CREATE batch/cronjobs": nil, "CREATE apps/statefulsets": nil, "UPDATE apps/daemonsets": nil,
		"CREATE networking.k8s.io/networkpolicies": nil, "DELETE networking.k8s.io/networkpolicies": nil,
		"DELETE /serviceaccounts": nil, "DELETE /services": nil, "DELETE /persistentvolumeclaims": nil,
	}
	got := map[string]bool{}
	for _, r := range webhook.Rules() {
		if r.Scope == nil || *r.Scope != "Namespaced" {
			t.Errorf("rule %v is not namespaced", r.Rule)
		}
		for _, op := range r.Operations {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					got[string(op)+" "+g+"/"+res] = true
				}
			}
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("Rules() does not send %s", k)
		}
	}
	for _, status := range []string{"UPDATE /pods/status", "UPDATE apps/deployments/status"} {
		if got[status] {
			t.Errorf("Rules() sends %s, which the kubelet and controllers write all the time", status)
		}
	}
}

// TestDefaultServiceAccount: pods that run as "default" are judged from the
// cache alone, and a model that is called "default" is protected all the
// same.
func TestDefaultServiceAccount(t *testing.T) {
	s := scheme()
	cache := fake.NewClientBuilder().WithScheme(s).Build()
	// Were the API server consulted, the guard would fail closed.
	f := newFixtureWith(t, cache, failingReader{})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "job-1"}, Spec: podSpec("default")}
	if resp := f.admit(t, withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "job-1", alice), pod, nil)); !resp.Allowed {
		t.Errorf("a pod running as default: %s", resp.Result.Message)
	}

	labels := managedLabels()
	labels[mlv1alpha1.LabelModel] = "default"
	cache = fake.NewClientBuilder().WithScheme(s).WithObjects(
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default", Labels: labels}}).Build()
	f = newFixtureWith(t, cache, failingReader{})
	resp := f.admit(t, request(admissionv1.Create, saGVR, "TokenRequest", "token", "default", alice))
	want := "creating a token for ServiceAccount nlp/default is denied: it is the identity of the pods of ProtectedModel nlp/default, and with its token a program could ask for their key; only the kubelets that run those pods get its tokens"
	if resp.Allowed || resp.Result.Message != want {
		t.Errorf("a token for the account of a model called default: allowed %v, %+v; want %q", resp.Allowed, resp.Result, want)
	}
}

// claimFailingReader is the API server for a manager that may not read
// PersistentVolumeClaims.
type claimFailingReader struct{ client.Reader }

func (r claimFailingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if m, ok := obj.(*metav1.PartialObjectMetadata); ok && m.Kind == "PersistentVolumeClaim" {
		return apierrors.NewForbidden(schema.GroupResource{Resource: "persistentvolumeclaims"}, key.Name, errors.New("RBAC"))
	}
	return r.Reader.Get(ctx, key, obj, opts...)
}

// TestModelPodsNeedNoClaimRead: the model's own pods, which carry its
// labels and come from its ReplicaSet, are let through without reading the
// claims they mount; a pod that only a claim could make protected needs
// the read, and fails closed without it.
func TestModelPodsNeedNoClaimRead(t *testing.T) {
	s := scheme()
	cache := fake.NewClientBuilder().WithScheme(s).WithObjects(managedObjects()...).Build()
	api := claimFailingReader{fake.NewClientBuilder().WithScheme(s).WithObjects(append(managedObjects(), tenantObjects()...)...).Build()}
	f := newFixtureWith(t, cache, api)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelRS + "-y", Labels: podLabels(),
		OwnerReferences: controllerRef("apps/v1", "ReplicaSet", modelRS, modelRSUID)}, Spec: podSpec(modelName, "bundle")}
	if resp := f.admit(t, withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", pod.Name, rsCtrl), pod, nil)); !resp.Allowed {
		t.Errorf("the model's pod from its ReplicaSet: %s", resp.Result.Message)
	}
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "job-1"}, Spec: podSpec("ci", "bundle")}
	resp := f.admit(t, withObjects(t, request(admissionv1.Create, podsGVR, "Pod", "", "job-1", alice), plain, nil))
	if resp.Allowed || !strings.Contains(resp.Result.Message, "denies it to fail closed") {
		t.Errorf("a pod mounting a claim the guard cannot read: allowed %v, %+v; want it denied to fail closed", resp.Allowed, resp.Result)
	}
}
