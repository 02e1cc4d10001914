// Package webhook is ModelGuard's admission guard: a validating webhook that
// keeps a protected workload's tenants (users and ServiceAccounts bound to
// edit or admin in its namespace) away from its plaintext weights and its
// key, and from what protects them. RBAC cannot take the rights it needs
// away (exec, port-forward, proxy, debug, creating pods and tokens), because
// RBAC only adds; admission can refuse them.
//
// The ValidatingWebhookConfiguration selects namespaces labelled
// modelguard.dev/protected-namespace=true (CONNECT requests carry no object,
// so objectSelector cannot scope them), registers Rules(), and fails closed.
// The handler reads what it needs once per request, asks internal/policy,
// records an Event on the workload for every allowed session and (rate
// limited) every denial, and counts both.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/modelguard/modelguard/internal/policy"
)

// Path is where the handler serves AdmissionReview v1.
const Path = "/validate-modelguard"

// maxRequestBytes bounds an AdmissionReview: two objects of at most 3 MiB
// (the API server's limit, as JSON) and the rest, as controller-runtime
// reasons for its own webhooks.
const maxRequestBytes = 7 << 20

// Options configure the handler.
type Options struct {
	// Reader reads the objects the manager caches: ModelGuard-labelled pods,
	// Services, ServiceAccounts, Deployments and ReplicaSets,
	// NetworkPolicies, ProtectedModels and TrainingJobs. An object missing
	// from it is treated as not ModelGuard's.
	Reader client.Reader
	// APIReader reads uncached: a pod by name in a CONNECT request that the
	// cache does not hold yet (or at all, when unlabelled), the controller
	// of a new pod or ReplicaSet, and PersistentVolumeClaims.
	APIReader client.Reader
	// Recorder records Events on the workloads.
	Recorder events.EventRecorder
	// OperatorServiceAccount is the operator's user name, e.g.
	// "system:serviceaccount:modelguard-system:modelguard".
	OperatorServiceAccount string
	// TrustedControllers are user names of controllers that may change
	// managed objects besides Kubernetes' own, e.g. Kueue's ServiceAccount.
	TrustedControllers []string
	// Log receives one line per allowed session and per recorded denial.
	Log logr.Logger
}

// NewHandler returns the admission guard's HTTP handler, to be served at
// Path over TLS.
func NewHandler(o Options) (http.Handler, error) {
	var missing []string
	if o.Reader == nil {
		missing = append(missing, "Reader")
	}
	if o.APIReader == nil {
		missing = append(missing, "APIReader")
	}
	if o.Recorder == nil {
		missing = append(missing, "Recorder")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("admission guard: %s not set", strings.Join(missing, ", "))
	}
	if parts := strings.Split(o.OperatorServiceAccount, ":"); len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" || parts[2] == "" || parts[3] == "" {
		return nil, fmt.Errorf("admission guard: OperatorServiceAccount %q is not a ServiceAccount user name such as system:serviceaccount:modelguard-system:modelguard", o.OperatorServiceAccount)
	}
	return &handler{
		reader:    o.Reader,
		apiReader: o.APIReader,
		recorder:  o.Recorder,
		ids:       policy.Identities{OperatorServiceAccount: o.OperatorServiceAccount, TrustedControllers: o.TrustedControllers},
		log:       o.Log,
		limiter:   newEventLimiter(),
	}, nil
}

type handler struct {
	reader, apiReader client.Reader
	recorder          events.EventRecorder
	ids               policy.Identities
	log               logr.Logger
	limiter           *eventLimiter
}

// ServeHTTP answers every request with an AdmissionReview v1, even a
// malformed one (with allowed=false): the API server treats anything else
// as the webhook failing, which with failurePolicy Fail denies as well, but
// without saying why.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeReview(w, http.StatusMethodNotAllowed, errored(http.StatusMethodNotAllowed, "the admission guard answers POST requests only"))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil {
		writeReview(w, http.StatusBadRequest, errored(http.StatusBadRequest, "reading the request: "+err.Error()))
		return
	}
	if len(body) > maxRequestBytes {
		writeReview(w, http.StatusRequestEntityTooLarge, errored(http.StatusRequestEntityTooLarge, fmt.Sprintf("the AdmissionReview is larger than %d bytes", maxRequestBytes)))
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		// The decoder's error can quote the body, which may hold a
		// Secret: say only that it did not decode.
		writeReview(w, http.StatusBadRequest, errored(http.StatusBadRequest, "the body is not an AdmissionReview with a request"))
		return
	}
	resp := h.decide(r.Context(), review.Request)
	resp.UID = review.Request.UID
	writeReview(w, http.StatusOK, resp)
}

// decide answers one request, denying it if deciding panics: a request the
// guard could not judge must not pass.
func (h *handler) decide(ctx context.Context, req *admissionv1.AdmissionRequest) (resp *admissionv1.AdmissionResponse) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error(fmt.Errorf("panic: %v", p), "Admission guard failed on a request; denied",
				"operation", req.Operation, "resource", req.Resource.Resource, "subresource", req.SubResource,
				"namespace", req.Namespace, "name", req.Name, "user", req.UserInfo.Username)
			resp = response(policy.FailClosed(describe(req), errors.New("internal error")))
		}
	}()
	d := h.review(ctx, req)
	// Recording is part of deciding: a session that could not be
	// recorded (a panic here) is denied like any other failure.
	h.record(ctx, req, d)
	return response(d)
}

func response(d policy.Decision) *admissionv1.AdmissionResponse {
	if d.Allowed {
		return &admissionv1.AdmissionResponse{Allowed: true}
	}
	return &admissionv1.AdmissionResponse{Result: &metav1.Status{
		Status:  metav1.StatusFailure,
		Code:    http.StatusForbidden,
		Reason:  metav1.StatusReasonForbidden,
		Message: d.Message,
	}}
}

func errored(code int32, message string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Reason: metav1.StatusReasonBadRequest,
		Message: "ModelGuard's admission guard: " + message,
	}}
}

func writeReview(w http.ResponseWriter, status int, resp *admissionv1.AdmissionResponse) {
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// A failed write means the API server went away; it has its answer
	// (a timeout) already.
	_ = json.NewEncoder(w).Encode(review)
}

// describe names a request for messages and logs, without its body.
func describe(req *admissionv1.AdmissionRequest) string {
	resource := req.Resource.Resource
	if req.SubResource != "" {
		resource += "/" + req.SubResource
	}
	name := req.Name
	if name == "" {
		name = "(new)"
	}
	return fmt.Sprintf("%s %s %s/%s", strings.ToLower(string(req.Operation)), resource, req.Namespace, name)
}
