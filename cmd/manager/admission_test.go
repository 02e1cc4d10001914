package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/modelguard/modelguard/internal/certs"
	"github.com/modelguard/modelguard/internal/webhook"
)

// TestAdmissionFlagsHelp checks that --help names the guard's defaults and
// says what trusting a controller means.
func TestAdmissionFlagsHelp(t *testing.T) {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var help strings.Builder
	fs.SetOutput(&help)
	(&admissionOptions{}).bindFlags(fs)
	fs.PrintDefaults()
	for _, want := range []string{
		"-admission-guard", "(default true)", "tests",
		"-webhook-configuration", `(default "modelguard-admission-guard")`,
		"-webhook-service", `(default "modelguard-webhook")`,
		"-admission-trusted-controllers", `(default system:serviceaccount:kueue-system:kueue-controller-manager)`,
		"not treat as tenants", "trust as much as the operator", "Empty trusts none",
	} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, help.String())
		}
	}
}

// TestServingCertificateNamesTheGuard checks that the one certificate of the
// key-release listener is issued for both Services, the key-release one
// first (the unseal containers call it and the rotator checks it).
func TestServingCertificateNamesTheGuard(t *testing.T) {
	k := keyReleaseOptions{service: "mg-key-release", servingCertSecret: "mg-serving-cert", caConfigMap: "mg-ca"}
	a := admissionOptions{service: "mg-webhook"}
	src, err := k.newCertSource(fake.NewClientBuilder().WithScheme(testScheme(t)).Build(), "mg-ops", a.dnsNames("mg-ops")...)
	if err != nil {
		t.Fatal(err)
	}
	rot, ok := src.(*certs.Rotator)
	if !ok {
		t.Fatalf("newCertSource built a %T, want the rotator", src)
	}
	if _, err := rot.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	cert, err := rot.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"mg-key-release.mg-ops.svc", "mg-key-release.mg-ops.svc.cluster.local", "mg-webhook.mg-ops.svc", "mg-webhook.mg-ops.svc.cluster.local"}
	if diff := cmp.Diff(want, leaf.DNSNames); diff != "" {
		t.Errorf("serving certificate DNS names (-want +got):\n%s", diff)
	}
}

func TestOperatorUser(t *testing.T) {
	tests := []struct {
		name    string
		user    string
		fail    error
		want    string
		wantErr []string
	}{{
		name: "the manager's ServiceAccount",
		user: "system:serviceaccount:modelguard-system:modelguard-controller-manager",
		want: "system:serviceaccount:modelguard-system:modelguard-controller-manager",
	}, {
		name:    "a user that is not a ServiceAccount",
		user:    "kubernetes-admin",
		wantErr: []string{`"kubernetes-admin"`, "ServiceAccount", "--admission-guard=false"},
	}, {
		name:    "the API server does not answer",
		fail:    errors.New("connection refused"),
		wantErr: []string{"SelfSubjectReview", "connection refused"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithInterceptorFuncs(interceptor.Funcs{
				Create: func(_ context.Context, _ client.WithWatch, obj client.Object, _ ...client.CreateOption) error {
					review, ok := obj.(*authenticationv1.SelfSubjectReview)
					if !ok {
						t.Fatalf("created a %T, want a SelfSubjectReview", obj)
					}
					if tc.fail != nil {
						return tc.fail
					}
					review.Status.UserInfo.Username = tc.user
					return nil
				},
			}).Build()
			got, err := operatorUser(context.Background(), c)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("operatorUser = %q, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("operatorUser = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestServingMux checks that the guard answers at its path and key release
// everywhere else, on the one listener.
func TestServingMux(t *testing.T) {
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) })
	}
	mux := servingMux(named("key-release"), named("guard"))
	for path, want := range map[string]string{
		webhook.Path:       "guard",
		"/v1/release":      "key-release",
		"/":                "key-release",
		webhook.Path + "x": "key-release",
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, nil))
		if rec.Body.String() != want {
			t.Errorf("POST %s went to %q, want %q", path, rec.Body.String(), want)
		}
	}
}

func guardConfiguration(bundles ...string) *admissionregistrationv1.ValidatingWebhookConfiguration {
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "mg-admission-guard"}}
	for i, b := range bundles {
		vwc.Webhooks = append(vwc.Webhooks, admissionregistrationv1.ValidatingWebhook{
			Name:         []string{"guard.modelguard.dev", "other.modelguard.dev"}[i],
			ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: []byte(b)},
		})
	}
	return vwc
}

func TestSetCABundle(t *testing.T) {
	tests := []struct {
		name        string
		vwc         *admissionregistrationv1.ValidatingWebhookConfiguration
		wantChanged bool
	}{
		{"empty caBundle, as installed", guardConfiguration(""), true},
		{"already the bundle", guardConfiguration("CA"), false},
		{"an old bundle", guardConfiguration("OLD"), true},
		{"one of two webhooks behind", guardConfiguration("CA", ""), true},
		{"both current", guardConfiguration("CA", "CA"), false},
		{"no webhooks", guardConfiguration(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := setCABundle(tc.vwc, []byte("CA")); got != tc.wantChanged {
				t.Errorf("changed = %v, want %v", got, tc.wantChanged)
			}
			for _, w := range tc.vwc.Webhooks {
				if string(w.ClientConfig.CABundle) != "CA" {
					t.Errorf("webhook %s caBundle %q after setCABundle", w.Name, w.ClientConfig.CABundle)
				}
			}
		})
	}
}

// TestCAInjector runs the injector against a fake API server: it waits for
// the first certificate, writes the bundle once, writes nothing while the
// bundle and the configuration agree, follows a new bundle, repairs a reset
// caBundle at the next resync, and survives a missing configuration.
func TestCAInjector(t *testing.T) {
	var updates atomic.Int32
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(guardConfiguration("", "")).
		WithInterceptorFuncs(interceptor.Funcs{
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				updates.Add(1)
				return c.Update(ctx, obj, opts...)
			},
		}).Build()
	var mu sync.Mutex
	bundle := []byte(nil)
	setBundle := func(b string) {
		mu.Lock()
		defer mu.Unlock()
		bundle = []byte(b)
	}
	ready := make(chan struct{})
	inj := &caInjector{
		c: c, name: "mg-admission-guard", ready: ready, interval: 10 * time.Millisecond, resync: 300 * time.Millisecond, log: logr.Discard(),
		bundle: func() []byte {
			mu.Lock()
			defer mu.Unlock()
			return bundle
		},
	}
	if inj.NeedLeaderElection() {
		t.Error("the CA injector waits for leader election, but every replica serves the certificate")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inj.Start(ctx) }()

	read := func() *admissionregistrationv1.ValidatingWebhookConfiguration {
		vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: "mg-admission-guard"}, vwc); err != nil {
			t.Fatal(err)
		}
		return vwc
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	allHold := func(b string) func() bool {
		return func() bool {
			for _, w := range read().Webhooks {
				if string(w.ClientConfig.CABundle) != b {
					return false
				}
			}
			return true
		}
	}

	time.Sleep(50 * time.Millisecond)
	if n := updates.Load(); n != 0 {
		t.Fatalf("%d writes before the first certificate", n)
	}
	setBundle("CA-1")
	close(ready)
	waitFor("every webhook holds the first bundle", allHold("CA-1"))
	// Several checks, but nothing changed: no more writes.
	time.Sleep(100 * time.Millisecond)
	if n := updates.Load(); n != 1 {
		t.Errorf("%d writes for one bundle, want 1", n)
	}

	setBundle("CA-2")
	waitFor("every webhook holds the renewed bundle", allHold("CA-2"))

	// Someone resets the caBundle (a forced upgrade); the next resync
	// repairs it though the bundle did not change.
	vwc := read()
	vwc.Webhooks[0].ClientConfig.CABundle = nil
	if err := c.Update(context.Background(), vwc); err != nil {
		t.Fatal(err)
	}
	waitFor("the reset caBundle is repaired", allHold("CA-2"))

	// A missing configuration is retried, never fatal.
	if err := c.Delete(context.Background(), read()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := c.Create(context.Background(), guardConfiguration("")); err != nil {
		t.Fatal(err)
	}
	waitFor("a recreated configuration gets the bundle", allHold("CA-2"))

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start after the context ended: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the injector did not stop")
	}
}

// TestCAInjectorErrors checks that inject names the configuration when it
// cannot read or write it.
func TestCAInjectorErrors(t *testing.T) {
	forbidden := apierrors.NewForbidden(admissionregistrationv1.Resource("validatingwebhookconfigurations"), "mg-admission-guard", errors.New("RBAC"))
	tests := []struct {
		name  string
		funcs interceptor.Funcs
		objs  []client.Object
		want  []string
	}{{
		name: "missing",
		want: []string{"reading ValidatingWebhookConfiguration mg-admission-guard", "not found"},
	}, {
		name: "not allowed to write",
		objs: []client.Object{guardConfiguration("")},
		funcs: interceptor.Funcs{Update: func(context.Context, client.WithWatch, client.Object, ...client.UpdateOption) error {
			return forbidden
		}},
		want: []string{"writing the CA bundle into ValidatingWebhookConfiguration mg-admission-guard", "forbidden"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(tc.objs...).WithInterceptorFuncs(tc.funcs).Build()
			inj := &caInjector{c: c, name: "mg-admission-guard"}
			_, err := inj.inject(context.Background(), []byte("CA"))
			if err == nil {
				t.Fatal("inject succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
