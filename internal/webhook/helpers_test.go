package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/reference"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/webhook"
)

const (
	ns          = "nlp"
	operatorSA  = "system:serviceaccount:modelguard-system:modelguard"
	modelName   = "sentiment"
	modelPod    = "sentiment-7c9-x"
	modelRS     = "sentiment-7c9"
	modelRSUID  = types.UID("rs-uid")
	modelDepUID = types.UID("deployment-uid")
)

var (
	alice    = authenticationv1.UserInfo{Username: "alice", Groups: []string{"dev", "system:authenticated"}}
	carol    = authenticationv1.UserInfo{Username: "carol", Groups: []string{"sre-oncall", "system:authenticated"}}
	operator = authenticationv1.UserInfo{Username: operatorSA, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:modelguard-system"}}
	rsCtrl   = authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:replicaset-controller"}
	depCtrl  = authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:deployment-controller"}
	gc       = authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:generic-garbage-collector"}
	hpa      = authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
	node     = authenticationv1.UserInfo{Username: "system:node:gpu-1", Groups: []string{"system:nodes", "system:authenticated"}}
	admin    = authenticationv1.UserInfo{Username: "kubernetes-admin", Groups: []string{"system:masters", "system:authenticated"}}
)

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(mlv1alpha1.AddToScheme(s))
	return s
}

// managedLabels are the labels of every object the operator makes for the
// model, as builder.CommonLabels gives them.
func managedLabels() map[string]string {
	return map[string]string{
		mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue, mlv1alpha1.LabelName: modelName,
		mlv1alpha1.LabelModel: modelName, mlv1alpha1.LabelProtected: "true",
	}
}

func podLabels() map[string]string {
	l := managedLabels()
	l[mlv1alpha1.LabelComponent] = mlv1alpha1.ComponentServer
	return l
}

func model() *mlv1alpha1.ProtectedModel {
	return &mlv1alpha1.ProtectedModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelName, UID: "model-uid"},
		Spec:       mlv1alpha1.ProtectedModelSpec{Access: &mlv1alpha1.Access{BreakGlassGroups: []string{"sre-oncall"}}},
	}
}

func podSpec(sa string, claims ...string) corev1.PodSpec {
	spec := corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "server", Image: "serve:1"}}}
	for _, c := range claims {
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: c, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
	}
	return spec
}

func controllerRef(apiVersion, kind, name string, uid types.UID) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, UID: uid, Controller: ptr.To(true)}}
}

// managedObjects are what the operator and the model's controllers made;
// the manager's cache holds exactly these (it selects managed-by).
func managedObjects() []client.Object {
	return []client.Object{
		model(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelName, Labels: managedLabels()}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelName, UID: modelDepUID, Labels: managedLabels()},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels()}, Spec: podSpec(modelName, "bundle")}}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelRS, UID: modelRSUID, Labels: podLabels(),
			OwnerReferences: controllerRef("apps/v1", "Deployment", modelName, modelDepUID)}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelPod, UID: "pod-uid", Labels: podLabels(),
			OwnerReferences: controllerRef("apps/v1", "ReplicaSet", modelRS, modelRSUID)}, Spec: podSpec(modelName, "bundle")},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelName, Labels: managedLabels()},
			Spec: corev1.ServiceSpec{Selector: map[string]string{mlv1alpha1.LabelModel: modelName, mlv1alpha1.LabelComponent: mlv1alpha1.ComponentServer}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: modelName, Labels: managedLabels()}},
	}
}

// tenantObjects are the tenant's own, and what the training job's output
// claim would be; only the API server has them.
func tenantObjects() []client.Object {
	return []client.Object{
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci"}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Labels: map[string]string{"app": "web"}}, Spec: podSpec("ci")},
		// A pod from before the guard: no labels, but the model's account.
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "legacy"}, Spec: podSpec(modelName)},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lookalike"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{mlv1alpha1.LabelModel: modelName}}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bundle"}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "finetune-output", Labels: map[string]string{
			mlv1alpha1.LabelManagedBy: mlv1alpha1.ManagedByValue, mlv1alpha1.LabelTrainingJob: "finetune", mlv1alpha1.LabelProtected: "true"}}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mine", UID: "mine-uid"}},
	}
}

// event is one recorded Event.
type event struct {
	Regarding, Related         string
	Type, Reason, Action, Note string
}

// recorder keeps the Events the handler records.
type recorder struct {
	mu     sync.Mutex
	events []event
}

func (r *recorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	ref := func(o runtime.Object) string {
		if o == nil {
			return ""
		}
		rf, err := reference.GetReference(scheme(), o)
		if err != nil {
			return "unreferenceable: " + err.Error()
		}
		s := rf.Kind + " " + rf.Namespace + "/" + rf.Name
		if rf.UID != "" {
			s += " " + string(rf.UID)
		}
		return s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{ref(regarding), ref(related), eventtype, reason, action, fmt.Sprintf(note, args...)})
}

func (r *recorder) take() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

// failingReader fails every read, as an API server that does not answer.
type failingReader struct{}

func (failingReader) Get(context.Context, client.ObjectKey, client.Object, ...client.GetOption) error {
	return errors.New("etcdserver: request timed out")
}

func (failingReader) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("etcdserver: request timed out")
}

type fixture struct {
	handler  http.Handler
	recorder *recorder
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	s := scheme()
	cache := fake.NewClientBuilder().WithScheme(s).WithObjects(managedObjects()...).Build()
	api := fake.NewClientBuilder().WithScheme(s).WithObjects(append(managedObjects(), tenantObjects()...)...).Build()
	return newFixtureWith(t, cache, api)
}

func newFixtureWith(t testing.TB, cache, api client.Reader) *fixture {
	t.Helper()
	rec := &recorder{}
	h, err := webhook.NewHandler(webhook.Options{
		Reader: cache, APIReader: api, Recorder: rec, OperatorServiceAccount: operatorSA,
		TrustedControllers: []string{"system:serviceaccount:kueue-system:kueue-controller-manager"},
		Log:                logr.Discard(),
	})
	if err != nil {
		t.Fatalf("NewHandler: %v", err)
	}
	return &fixture{handler: h, recorder: rec}
}

// post sends review and returns the HTTP status and the decoded answer.
func (f *fixture) post(t testing.TB, body []byte) (int, *admissionv1.AdmissionReview) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, webhook.Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rw := httptest.NewRecorder()
	f.handler.ServeHTTP(rw, req)
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rw.Body.Bytes(), &out); err != nil {
		t.Fatalf("the answer is not JSON: %v: %q", err, rw.Body.String())
	}
	return rw.Code, &out
}

// admit sends one request through the handler.
func (f *fixture) admit(t testing.TB, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	t.Helper()
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  req,
	})
	if err != nil {
		t.Fatal(err)
	}
	code, review := f.post(t, body)
	if code != http.StatusOK || review.Response == nil {
		t.Fatalf("status %d, response %+v", code, review.Response)
	}
	if review.Response.UID != req.UID {
		t.Errorf("response UID %q, want the request's %q", review.Response.UID, req.UID)
	}
	return review.Response
}

func raw(t testing.TB, obj any) runtime.RawExtension {
	t.Helper()
	if obj == nil {
		return runtime.RawExtension{}
	}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return runtime.RawExtension{Raw: b}
}
