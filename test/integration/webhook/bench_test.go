package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/webhook"
)

// BenchmarkWebhookLatency measures the guard's latency per rule, as the API
// server sees it: an AdmissionReview POSTed over loopback TLS (kept alive)
// to the handler, which reads from the manager's cache and, where the rule
// needs it, from the real API server. A baseline in the same run sends the
// same kind of request to a TLS server whose handler allows everything, so
// the ratios show what the guard's decision costs on top of the round trip.
//
//	go test ./test/integration/webhook/ -run '^$' -bench WebhookLatency -benchtime 1000x
//
// Each rule reports p50 and p99 in microseconds, and both as multiples of
// the baseline's.
func BenchmarkWebhookLatency(b *testing.B) {
	ctx := context.Background()
	p := newProtected(ctx, b, "bench")
	baselineURL := startBaseline(b)

	alice := authenticationv1.UserInfo{Username: "alice", Groups: []string{"dev", "system:authenticated"}}
	carol := authenticationv1.UserInfo{Username: "carol", Groups: []string{"sre-oncall", "system:authenticated"}}
	rsController := authenticationv1.UserInfo{Username: rsCtrl.user, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	kubelet := authenticationv1.UserInfo{Username: node.user, Groups: []string{"system:nodes", "system:authenticated"}}
	execOpts := &corev1.PodExecOptions{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodExecOptions"}, Container: "server", Command: []string{"cat", "/models/w"}}
	sidecar := p.deployment.DeepCopy()
	sidecar.Spec.Template.Spec.Containers = append(sidecar.Spec.Template.Spec.Containers, corev1.Container{Name: "sidecar", Image: "busybox"})
	copyToPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: "sentiment-debug"}, Spec: p.pod.Spec}
	replicaPod := p.pod.DeepCopy()
	replicaPod.Name = p.rs.Name + "-y"
	web := tenantPod(p.ns, "web", "default")
	webAsModel := web.DeepCopy()
	webAsModel.Labels[mlv1alpha1.LabelModel] = modelName
	allowAll := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: "allow-all"}, Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}}
	ownPolicy := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: "web"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}

	pods := metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
	rules := []struct {
		name string
		req  *admissionv1.AdmissionRequest
		// allowed is what the guard must answer, so that a rule that
		// broke is not timed as a fast one.
		allowed bool
	}{
		{"exec/tenant-denied", review(p.ns, admissionv1.Connect, pods, "PodExecOptions", "exec", p.pod.Name, alice, execOpts, nil), false},
		{"exec/break-glass-allowed", review(p.ns, admissionv1.Connect, pods, "PodExecOptions", "exec", p.pod.Name, carol, execOpts, nil), true},
		{"exec/unprotected-pod-allowed", review(p.ns, admissionv1.Connect, pods, "PodExecOptions", "exec", "web", alice, execOpts, nil), true},
		{"ephemeral-containers/denied", review(p.ns, admissionv1.Update, pods, "Pod", "ephemeralcontainers", p.pod.Name, alice, p.pod, p.pod), false},
		{"managed-object/sidecar-denied", review(p.ns, admissionv1.Update, metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "Deployment", "", modelName, alice, sidecar, p.deployment), false},
		{"managed-object/kubelet-delete-allowed", review(p.ns, admissionv1.Delete, pods, "Pod", "", p.pod.Name, kubelet, nil, p.pod), true},
		{"labels/endpoint-denied", review(p.ns, admissionv1.Update, pods, "Pod", "", "web", alice, webAsModel, web), false},
		{"look-alike/copy-to-denied", review(p.ns, admissionv1.Create, pods, "Pod", "", copyToPod.Name, alice, copyToPod, nil), false},
		{"look-alike/replicaset-pod-allowed", review(p.ns, admissionv1.Create, pods, "Pod", "", replicaPod.Name, rsController, replicaPod, nil), true},
		{"look-alike/tenant-pod-allowed", review(p.ns, admissionv1.Create, pods, "Pod", "", "web-2", alice, tenantPod(p.ns, "web-2", "default"), nil), true},
		{"token/tenant-denied", review(p.ns, admissionv1.Create, metav1.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}, "TokenRequest", "token", modelName, alice, &authenticationv1.TokenRequest{}, nil), false},
		{"token/kubelet-allowed", review(p.ns, admissionv1.Create, metav1.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}, "TokenRequest", "token", modelName, kubelet, &authenticationv1.TokenRequest{}, nil), true},
		{"network-policy/allow-all-denied", review(p.ns, admissionv1.Create, metav1.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}, "NetworkPolicy", "", "allow-all", alice, allowAll, nil), false},
		{"network-policy/own-pods-allowed", review(p.ns, admissionv1.Create, metav1.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}, "NetworkPolicy", "", "web", alice, ownPolicy, nil), true},
	}

	// The baseline, with the first rule's body: the same bytes on the wire.
	baseBody := body(b, rules[0].req)
	base := measure(b, baselineURL, baseBody, 2000, true)
	b.Run("baseline", func(b *testing.B) {
		report(b, measure(b, baselineURL, baseBody, b.N, true), base)
	})
	for _, r := range rules {
		b.Run(r.name, func(b *testing.B) {
			report(b, measure(b, guardURL, body(b, r.req), b.N, r.allowed), base)
		})
	}
}

// latencies are one run's request durations, sorted.
type latencies []time.Duration

func (l latencies) quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

func report(b *testing.B, l, base latencies) {
	p50, p99 := l.quantile(0.50), l.quantile(0.99)
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(p50)/float64(base.quantile(0.50)), "p50-x-baseline")
	b.ReportMetric(float64(p99)/float64(base.quantile(0.99)), "p99-x-baseline")
}

// measure POSTs body n times, one after the other, and checks each answer.
func measure(b *testing.B, url string, body []byte, n int, wantAllowed bool) latencies {
	b.Helper()
	out := make(latencies, 0, n)
	b.ResetTimer()
	for i := 0; i < n; i++ {
		start := time.Now()
		resp, err := guardClient.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		answer, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(answer, &review); err != nil || review.Response == nil || review.Response.Allowed != wantAllowed {
			b.Fatalf("answer %s, want allowed=%v", answer, wantAllowed)
		}
	}
	b.StopTimer()
	slices.Sort(out)
	return out
}

// startBaseline serves, over TLS with the guard's certificate, a handler
// that reads the review and allows it.
func startBaseline(b *testing.B) string {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Request struct {
				UID types.UID `json:"uid"`
			} `json:"request"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Response: &admissionv1.AdmissionResponse{UID: in.Request.UID, Allowed: true},
		})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	b.Cleanup(srv.Close)
	return srv.URL + webhook.Path
}

// review is an AdmissionRequest as the API server sends it.
func review(ns string, op admissionv1.Operation, gvr metav1.GroupVersionResource, kind, sub, name string, user authenticationv1.UserInfo, obj, old any) *admissionv1.AdmissionRequest {
	enc := func(o any) runtime.RawExtension {
		if o == nil {
			return runtime.RawExtension{}
		}
		data, err := json.Marshal(o)
		if err != nil {
			panic(err)
		}
		return runtime.RawExtension{Raw: data}
	}
	return &admissionv1.AdmissionRequest{
		UID: types.UID(fmt.Sprintf("bench-%s-%s-%s", op, gvr.Resource, sub)), Operation: op,
		Kind: metav1.GroupVersionKind{Group: gvr.Group, Version: gvr.Version, Kind: kind}, Resource: gvr, SubResource: sub,
		Namespace: ns, Name: name, UserInfo: user, Object: enc(obj), OldObject: enc(old),
	}
}

func body(b *testing.B, req *admissionv1.AdmissionRequest) []byte {
	data, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req})
	if err != nil {
		b.Fatal(err)
	}
	return data
}
