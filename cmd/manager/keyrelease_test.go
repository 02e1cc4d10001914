package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/certs"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/keys"
)

const testNamespace = "modelguard-system"

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := mlv1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKeyReleaseEndpoint(t *testing.T) {
	o := keyReleaseOptions{service: "mg-key-release", servingCertSecret: "mg-serving-cert", caConfigMap: "mg-ca"}
	if diff := cmp.Diff([]string{"mg-key-release.mg-ops.svc", "mg-key-release.mg-ops.svc.cluster.local"}, o.dnsNames("mg-ops")); diff != "" {
		t.Errorf("DNS names (-want +got):\n%s", diff)
	}
	// Without a rotator (key release disabled) the CA bundle stays empty,
	// which holds every model at zero replicas.
	got := o.endpoint("mg-ops", nil)()
	want := builder.KeyRelease{URL: "https://mg-key-release.mg-ops.svc", Namespace: "mg-ops"}
	if got != want || got.Ready() {
		t.Errorf("endpoint without a rotator = %+v (ready %v), want %+v, not ready", got, got.Ready(), want)
	}

	c := fake.NewClientBuilder().WithScheme(testScheme(t)).Build()
	r, err := o.newRotator(c, "mg-ops")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := o.endpoint("mg-ops", r)
	if endpoint().Ready() {
		t.Error("the endpoint is ready before the rotator has a CA")
	}
	if _, err := r.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	got = endpoint()
	if !got.Ready() || got.CABundle != string(r.CABundle()) || !strings.Contains(got.CABundle, "BEGIN CERTIFICATE") {
		t.Errorf("endpoint after the first certificate = %+v, want the rotator's CA bundle", got)
	}
}

// TestCertSourceFlag checks --cert-source: its values, its default, the
// message for a wrong one, and which source the manager builds from it.
// Both sources are tested against the real API server in internal/certs.
func TestCertSourceFlag(t *testing.T) {
	tests := []struct {
		name string
		args []string
		// want is the parsed value; wantType the source newCertSource builds.
		want     certSource
		wantType string
		wantErr  []string
	}{{
		name:     "default: the manager issues its own",
		wantType: "*certs.Rotator",
	}, {
		name:     "self-signed",
		args:     []string{"--cert-source=self-signed"},
		want:     certSourceSelfSigned,
		wantType: "*certs.Rotator",
	}, {
		name:     "cert-manager: the manager follows the Secret it writes",
		args:     []string{"--cert-source=cert-manager", "--serving-cert-secret=mg-serving-cert"},
		want:     certSourceCertManager,
		wantType: "*certs.External",
	}, {
		name:    "a typo names the flag and the choices",
		args:    []string{"--cert-source=certmanager"},
		wantErr: []string{"-cert-source", `"certmanager" is not a certificate source`, "self-signed", "cert-manager"},
	}, {
		name:    "empty names the flag and the choices",
		args:    []string{"--cert-source="},
		wantErr: []string{"-cert-source", "self-signed or cert-manager"},
	}, {
		name:    "with cert-manager the Secret name is still checked",
		args:    []string{"--cert-source=cert-manager", "--serving-cert-secret=Serving_Cert"},
		wantErr: []string{"--serving-cert-secret"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(podNamespaceEnv, testNamespace)
			fs := flag.NewFlagSet("manager", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			o, err := parseOptions(fs, tc.args)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("parsed %v, want an error", tc.args)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not hold %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, o.keyRelease.certSource); diff != "" {
				t.Errorf("certSource (-want +got):\n%s", diff)
			}
			src, err := o.keyRelease.newCertSource(fake.NewClientBuilder().WithScheme(testScheme(t)).Build(), testNamespace)
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%T", src); got != tc.wantType {
				t.Errorf("newCertSource built a %s, want a %s", got, tc.wantType)
			}
			if src.NeedLeaderElection() {
				t.Error("the certificate source waits for leader election, but every replica serves")
			}
		})
	}

	// A struct that did not come from the flag is checked too.
	o := keyReleaseOptions{bindAddress: "0", service: "s", servingCertSecret: "s", caConfigMap: "c", certSource: "vault"}
	if err := o.validate(testNamespace); err == nil || !strings.Contains(err.Error(), "--cert-source") {
		t.Errorf("validate with certSource %q = %v, want an error naming --cert-source", o.certSource, err)
	}

	// --help says what the default is, since a flag.Value's zero value
	// hides it.
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var help strings.Builder
	fs.SetOutput(&help)
	(&keyReleaseOptions{}).bindFlags(fs)
	fs.PrintDefaults()
	if !strings.Contains(help.String(), "-cert-source") || !strings.Contains(help.String(), "self-signed (the manager, the default)") {
		t.Errorf("--help does not describe --cert-source and its default:\n%s", help.String())
	}
}

// TestCertManagerEndpoint: with cert-manager, the models' pods trust the
// Secret's ca.crt once it is loaded, and nothing before.
func TestCertManagerEndpoint(t *testing.T) {
	o := keyReleaseOptions{service: "mg-key-release", servingCertSecret: "mg-serving-cert", caConfigMap: "mg-ca", certSource: certSourceCertManager}
	// A Secret as cert-manager writes it, made here by the self-signed
	// rotator, whose Secret has the same keys.
	issuer := fake.NewClientBuilder().WithScheme(testScheme(t)).Build()
	r, err := (&keyReleaseOptions{service: o.service, servingCertSecret: o.servingCertSecret, caConfigMap: "unused"}).newRotator(issuer, "mg-ops")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	issued := &corev1.Secret{}
	if err := issuer.Get(context.Background(), types.NamespacedName{Namespace: "mg-ops", Name: o.servingCertSecret}, issued); err != nil {
		t.Fatal(err)
	}
	written := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "mg-ops", Name: o.servingCertSecret}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": issued.Data["tls.crt"], "tls.key": issued.Data["tls.key"], "ca.crt": issued.Data["ca.crt"]}}

	c := fake.NewClientBuilder().WithScheme(testScheme(t)).Build()
	src, err := o.newCertSource(c, "mg-ops")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := o.endpoint("mg-ops", src)
	ext := src.(interface {
		Load(context.Context) (certs.Loaded, error)
	})
	if _, err := ext.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "mg-ops/mg-serving-cert") {
		t.Errorf("Load before cert-manager wrote the Secret = %v, want an error naming it", err)
	}
	if endpoint().Ready() {
		t.Error("the endpoint is ready before cert-manager wrote the Secret")
	}
	if err := c.Create(context.Background(), written); err != nil {
		t.Fatal(err)
	}
	if _, err := ext.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := builder.KeyRelease{URL: "https://mg-key-release.mg-ops.svc", Namespace: "mg-ops", CABundle: string(written.Data["ca.crt"])}
	if diff := cmp.Diff(want, endpoint()); diff != "" {
		t.Errorf("endpoint once the Secret is loaded (-want +got):\n%s", diff)
	}
}

func TestManagerCachesNoSecrets(t *testing.T) {
	opts := cacheOptions(options{})
	for obj := range opts.ByObject {
		switch obj.(type) {
		case *corev1.Secret:
			t.Error("the manager's cache holds Secrets")
		case *batchv1.Job:
			t.Error("the manager's cache holds Jobs, which no ProtectedModel has any more")
		}
	}
	disabled := map[string]bool{}
	for _, obj := range clientOptions().Cache.DisableFor {
		disabled[fmt.Sprintf("%T", obj)] = true
	}
	if !disabled["*v1.Secret"] {
		t.Errorf("the manager's client may read Secrets through the cache; uncached kinds: %v", disabled)
	}
}

func modelKey(name string, ready bool, provider mlv1alpha1.ModelKeyProvider) *mlv1alpha1.ModelKey {
	mk := &mlv1alpha1.ModelKey{
		ObjectMeta: metav1.ObjectMeta{Name: name, Generation: 2},
		Spec:       mlv1alpha1.ModelKeySpec{Provider: provider, NamespaceSelector: &metav1.LabelSelector{}},
	}
	status := metav1.ConditionFalse
	if ready {
		status = metav1.ConditionTrue
	}
	mk.Status.Conditions = []metav1.Condition{{Type: mlv1alpha1.ConditionReady, Status: status, ObservedGeneration: 2,
		Reason: "SelfTest", LastTransitionTime: metav1.Now()}}
	return mk
}

func TestModelKeyProviders(t *testing.T) {
	kek := make([]byte, keys.KEKSize)
	for i := range kek {
		kek[i] = byte(i)
	}
	secretKey := func(name string) mlv1alpha1.ModelKeyProvider {
		return mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: name, Key: "kek"}}
	}
	stale := modelKey("stale", true, secretKey("kek"))
	stale.Generation = 3
	objs := []client.Object{
		modelKey("ready", true, secretKey("kek")),
		modelKey("failing", false, secretKey("kek")),
		stale,
		modelKey("no-secret", true, secretKey("gone")),
		modelKey("vault", true, mlv1alpha1.ModelKeyProvider{VaultTransit: &mlv1alpha1.ModelKeyVaultTransit{
			Address: "https://vault.example.com:8200", KeyName: "models"}}),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: "kek"},
			Data: map[string][]byte{"kek": []byte(keys.EncodeDEK(kek))}},
		// The same name in another namespace must never be read.
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "gone"},
			Data: map[string][]byte{"kek": []byte(keys.EncodeDEK(kek))}},
	}
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(objs...).Build()
	providers := modelKeyProviders(c, testNamespace, logr.Discard())

	tests := []struct {
		modelKey   string
		wantDenial string // reason of a *keyrelease.Denial
		wantRetry  bool   // an error the pod retries
	}{
		{modelKey: "ready"},
		{modelKey: "missing", wantDenial: mlv1alpha1.ReasonModelKeyNotFound},
		{modelKey: "failing", wantDenial: mlv1alpha1.ReasonModelKeyNotReady},
		{modelKey: "stale", wantDenial: mlv1alpha1.ReasonModelKeyNotReady},
		{modelKey: "no-secret", wantDenial: mlv1alpha1.ReasonKeySecretNotFound},
		{modelKey: "vault", wantRetry: true},
	}
	for _, tc := range tests {
		t.Run(tc.modelKey, func(t *testing.T) {
			p, err := providers(context.Background(), tc.modelKey)
			var denial *keyrelease.Denial
			switch {
			case tc.wantDenial != "":
				if !errors.As(err, &denial) || denial.Reason != tc.wantDenial {
					t.Fatalf("error = %v, want a Denial with reason %s", err, tc.wantDenial)
				}
				if !strings.Contains(denial.Message, tc.modelKey) {
					t.Errorf("denial message %q does not name the ModelKey", denial.Message)
				}
			case tc.wantRetry:
				if err == nil || errors.As(err, &denial) {
					t.Fatalf("error = %v, want one the pod retries (not a Denial)", err)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if p.Kind() != keys.KindKEK {
					t.Errorf("provider kind %q, want %q", p.Kind(), keys.KindKEK)
				}
			}
		})
	}
}

// eventRecorder captures what an events.EventRecorder is given.
type eventRecorder struct {
	mu     sync.Mutex
	events []recordedEvent
}

type recordedEvent struct {
	regarding, related              runtime.Object
	eventType, reason, action, note string
}

func (r *eventRecorder) Eventf(regarding, related runtime.Object, eventType, reason, action, note string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, recordedEvent{regarding, related, eventType, reason, action, fmt.Sprintf(note, args...)})
}

func TestOutcomeRecorder(t *testing.T) {
	pm := &mlv1alpha1.ProtectedModel{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "llm", UID: "pm-uid"}}
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(pm).Build()
	model := keyrelease.ModelRef{Kind: keyrelease.KindProtectedModel, Namespace: "team-a", Name: "llm"}
	pod := types.NamespacedName{Namespace: "team-a", Name: "llm-5d9c7-abcde"}

	tests := []struct {
		name    string
		outcome keyrelease.Outcome
		// want is type, reason, action and the words the note must hold;
		// nil means no Event.
		want []string
	}{{
		name: "a release is a Normal Event naming the pod",
		outcome: keyrelease.Outcome{Operation: keyrelease.OperationRelease, Model: model, Pod: pod,
			Result: keyrelease.ResultReleased, Reason: mlv1alpha1.ReasonKeyReleased, Message: "data key released to pod " + pod.String()},
		want: []string{corev1.EventTypeNormal, mlv1alpha1.ReasonKeyReleased, "KeyRelease", "released to pod " + pod.String()},
	}, {
		name: "a denial is a Warning naming the pod and the reason",
		outcome: keyrelease.Outcome{Operation: keyrelease.OperationRelease, Model: model, Pod: pod,
			Result: keyrelease.ResultDenied, Reason: mlv1alpha1.ReasonPodSpecMismatch,
			Message: `pod spec differs from the generated template: container "sidecar" added`},
		want: []string{corev1.EventTypeWarning, mlv1alpha1.ReasonPodSpecMismatch, "KeyRelease",
			pod.String(), mlv1alpha1.ReasonPodSpecMismatch, `container "sidecar" added`},
	}, {
		name: "a rejected token names no pod",
		outcome: keyrelease.Outcome{Operation: keyrelease.OperationRelease, Model: model,
			Result: keyrelease.ResultDenied, Reason: mlv1alpha1.ReasonTokenRejected, Message: "the token was not accepted"},
		want: []string{corev1.EventTypeWarning, mlv1alpha1.ReasonTokenRejected, "KeyRelease", "unknown", "the token was not accepted"},
	}, {
		name: "a wrap is a Normal Event",
		outcome: keyrelease.Outcome{Operation: keyrelease.OperationWrap, Model: model, Pod: pod,
			Result: keyrelease.ResultWrapped, Reason: mlv1alpha1.ReasonKeyWrapped},
		want: []string{corev1.EventTypeNormal, mlv1alpha1.ReasonKeyWrapped, "KeyWrap", "wrapped for pod " + pod.String()},
	}, {
		name: "an error the pod retries is no Event",
		outcome: keyrelease.Outcome{Operation: keyrelease.OperationRelease, Model: model, Pod: pod,
			Result: keyrelease.ResultError, Reason: mlv1alpha1.ReasonVerifierUnavailable},
	}, {
		name: "a model that does not exist gets no Event",
		outcome: keyrelease.Outcome{Operation: keyrelease.OperationRelease, Model: keyrelease.ModelRef{Kind: keyrelease.KindProtectedModel, Namespace: "team-a", Name: "other"},
			Result: keyrelease.ResultDenied, Reason: mlv1alpha1.ReasonTokenRejected},
	}, {
		name: "a long message is cut to what the Events API accepts",
		outcome: keyrelease.Outcome{Operation: keyrelease.OperationRelease, Model: model, Pod: pod,
			Result: keyrelease.ResultDenied, Reason: mlv1alpha1.ReasonPodSpecMismatch, Message: strings.Repeat("drift; ", 400)},
		want: []string{corev1.EventTypeWarning, mlv1alpha1.ReasonPodSpecMismatch, "KeyRelease", "..."},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &eventRecorder{}
			outcomeRecorder(c, rec, logr.Discard())(context.Background(), tc.outcome)
			if tc.want == nil {
				if len(rec.events) != 0 {
					t.Fatalf("Events = %+v, want none", rec.events)
				}
				return
			}
			if len(rec.events) != 1 {
				t.Fatalf("%d Events, want 1", len(rec.events))
			}
			e := rec.events[0]
			if e.eventType != tc.want[0] || e.reason != tc.want[1] || e.action != tc.want[2] {
				t.Errorf("Event %s %s %s, want %v", e.eventType, e.reason, e.action, tc.want[:3])
			}
			for _, w := range tc.want[3:] {
				if !strings.Contains(e.note, w) {
					t.Errorf("note %q does not hold %q", e.note, w)
				}
			}
			if len(e.note) > maxEventNote {
				t.Errorf("note is %d bytes, more than %d", len(e.note), maxEventNote)
			}
			if got, ok := e.regarding.(*mlv1alpha1.ProtectedModel); !ok || got.UID != pm.UID {
				t.Errorf("the Event regards %#v, want the model with its UID (kubectl describe finds Events by UID)", e.regarding)
			}
			if tc.outcome.Pod.Name != "" {
				if p, ok := e.related.(*corev1.Pod); !ok || p.Name != pod.Name || p.Namespace != pod.Namespace {
					t.Errorf("the Event's related object is %#v, want pod %s", e.related, pod)
				}
			} else if e.related != nil {
				t.Errorf("the Event's related object is %#v, want none", e.related)
			}
		})
	}
}

// TestKeyReleaseServer serves a handler with a rotator's certificate and
// checks what a pod's client sees: TLS 1.3 only, the certificate for the
// Service's name under the published CA, and a clean stop.
func TestKeyReleaseServer(t *testing.T) {
	o := keyReleaseOptions{service: mlv1alpha1.KeyReleaseServiceName, servingCertSecret: "modelguard-serving-cert", caConfigMap: "modelguard-ca"}
	r, err := o.newRotator(fake.NewClientBuilder().WithScheme(testScheme(t)).Build(), testNamespace)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	addrs := make(chan net.Addr, 1)
	srv := &keyReleaseServer{
		addr: "127.0.0.1:0", cert: r.GetCertificate, log: logr.Discard(),
		handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			_, _ = fmt.Fprintf(w, "tls=%x", req.TLS.Version)
		}),
		listening: func(a net.Addr) { addrs <- a },
	}
	if srv.NeedLeaderElection() {
		t.Error("the key-release endpoint waits for leader election, but every replica must serve")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	var addr string
	select {
	case a := <-addrs:
		addr = a.String()
	case err := <-done:
		t.Fatalf("the server stopped: %v", err)
	}

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(r.CABundle()) {
		t.Fatal("no CA in the bundle")
	}
	dnsName := o.dnsNames(testNamespace)[0]
	get := func(cfg *tls.Config) (string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := c.Get("https://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	body, err := get(&tls.Config{RootCAs: roots, ServerName: dnsName, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatalf("a client trusting the CA bundle, for %s: %v", dnsName, err)
	}
	if want := fmt.Sprintf("tls=%x", tls.VersionTLS13); body != want {
		t.Errorf("body %q, want %q", body, want)
	}
	if _, err := get(&tls.Config{RootCAs: roots, ServerName: dnsName, MaxVersion: tls.VersionTLS12}); err == nil {
		t.Error("a TLS 1.2 client was served")
	}
	if _, err := get(&tls.Config{RootCAs: roots, ServerName: "evil.example.com", MinVersion: tls.VersionTLS13}); err == nil {
		t.Error("the certificate is valid for a name other than the Service's")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start after the context ended: %v", err)
		}
	case <-time.After(keyReleaseShutdownTimeout + 5*time.Second):
		t.Fatal("the server did not stop")
	}
	if _, err := get(&tls.Config{RootCAs: roots, ServerName: dnsName, MinVersion: tls.VersionTLS13}); err == nil {
		t.Error("the server still answers after it stopped")
	}
}
