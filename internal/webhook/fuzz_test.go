package webhook_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/modelguard/modelguard/internal/webhook"
)

// checkReview fails unless body is an AdmissionReview v1 with a response,
// and, when the request had a UID, one that answers it.
func checkReview(t *testing.T, body []byte, wantUID string) {
	t.Helper()
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		t.Fatalf("the answer is not JSON: %v", err)
	}
	if review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" || review.Response == nil {
		t.Fatalf("the answer is not an AdmissionReview v1 with a response: %s", body)
	}
	if string(review.Response.UID) != wantUID {
		t.Fatalf("the answer's UID is %q, want %q", review.Response.UID, wantUID)
	}
	if !review.Response.Allowed && (review.Response.Result == nil || review.Response.Result.Message == "") {
		t.Fatalf("a denial without a message: %s", body)
	}
}

// FuzzAdmissionReview sends arbitrary bodies: the handler never panics and
// always answers with a valid AdmissionReview, for the request's UID when
// there is a request. The seeds (testdata/fuzz/FuzzAdmissionReview) are one
// request of each kind the guard judges.
func FuzzAdmissionReview(f *testing.F) {
	fx := newFixture(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, webhook.Path, bytes.NewReader(body))
		rw := httptest.NewRecorder()
		fx.handler.ServeHTTP(rw, req)
		var in admissionv1.AdmissionReview
		wantUID := ""
		if json.Unmarshal(body, &in) == nil && in.Request != nil {
			wantUID = string(in.Request.UID)
			if rw.Code != http.StatusOK {
				t.Fatalf("status %d for a decodable request", rw.Code)
			}
		}
		checkReview(t, rw.Body.Bytes(), wantUID)
	})
}
