// Package protectedmodel tests the ProtectedModel controller against a real
// kube-apiserver and etcd. There is no kubelet, Job or Deployment controller
// here, so tests play their part where needed: they write the pod and
// Deployment status a kubelet and the Deployment controller would write.
package protectedmodel

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/controllers"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
	"github.com/modelguard/modelguard/test/builders"
	"github.com/modelguard/modelguard/test/testenv"
)

const unsealImage = "modelguard:integration"

// operatorNamespace is the manager's own namespace, where the Secrets that
// ModelKeys name live.
const operatorNamespace = "modelguard-system"

var (
	env *testenv.Env
	// k8s is an uncached client for the tests; the manager has its own.
	k8s    client.Client
	writes = &writeRecorder{}
	// logs holds everything the manager logged, to scan for key material.
	logs = &syncBuffer{}
	// modelKEK is the KEK of the ModelKey builders.DefaultModelKey, which
	// every model of these tests names unless a test says otherwise.
	modelKEK = func() []byte {
		kek := make([]byte, keys.KEKSize)
		_, _ = rand.Read(kek)
		return kek
	}()
)

// testKeyRelease is the key-release endpoint the manager gives its models.
// Nothing serves it here: no kubelet starts the pods that would call it.
// The verifier and the server are tested in keyrelease_test.go.
var testKeyRelease = builder.KeyRelease{
	URL:       "https://" + mlv1alpha1.KeyReleaseServiceName + "." + operatorNamespace + ".svc",
	CABundle:  "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n",
	Namespace: operatorNamespace,
}

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "protectedmodel:", err)
		os.Exit(1)
	}
	k8s = env.Client
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}); err != nil {
		fmt.Fprintln(os.Stderr, "protectedmodel: creating the operator namespace:", err)
		_ = env.Stop()
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, err := startManager(ctx)
	if err == nil {
		err = createDefaultModelKey(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "protectedmodel: starting manager:", err)
		_ = env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	cancel()
	<-done
	_ = env.Stop()
	os.Exit(code)
}

// startManager runs the real manager with the production cache options and
// a short resync period, so that steady-state tests see forced resyncs.
func startManager(ctx context.Context) (<-chan struct{}, error) {
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &countingTransport{next: rt, writes: writes} })
	ctrl.SetLogger(zap.New(zap.WriteTo(logs), zap.UseDevMode(true)))

	cacheOpts := controllers.CacheOptions()
	resync := 2 * time.Second
	cacheOpts.SyncPeriod = &resync
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 env.Scheme,
		Cache:                  cacheOpts,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, err
	}
	if err := controllers.SetupWithManager(mgr, controllers.Options{UnsealImage: unsealImage, OperatorNamespace: operatorNamespace,
		KeyRelease: func() builder.KeyRelease { return testKeyRelease }}); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "protectedmodel: manager stopped:", err)
		}
	}()
	return done, nil
}

// createDefaultModelKey creates the ModelKey every model names by default,
// over modelKEK in the operator's namespace, for every namespace, and waits
// until its self-test passes.
func createDefaultModelKey(ctx context.Context) error {
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: "model-kek"},
		Data: map[string][]byte{"kek": []byte(keys.EncodeDEK(modelKEK))}}
	if err := k8s.Create(ctx, secret); err != nil {
		return fmt.Errorf("creating the KEK Secret: %w", err)
	}
	mk := &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: builders.DefaultModelKey},
		Spec: mlv1alpha1.ModelKeySpec{Provider: secretProvider(secret.Name, "kek"), NamespaceSelector: &metav1.LabelSelector{}}}
	if err := k8s.Create(ctx, mk); err != nil {
		return fmt.Errorf("creating ModelKey %s: %w", mk.Name, err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(mk), mk); err != nil {
			return err
		}
		if meta.IsStatusConditionTrue(mk.Status.Conditions, mlv1alpha1.ConditionReady) {
			return nil
		}
	}
	return fmt.Errorf("ModelKey %s is not Ready after 30s: %+v", mk.Name, mk.Status.Conditions)
}

// countingTransport records every write the manager sends.
type countingTransport struct {
	next   http.RoundTripper
	writes *writeRecorder
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet {
		c.writes.record(req.Method + " " + req.URL.Path)
	}
	return c.next.RoundTrip(req)
}

type writeRecorder struct {
	mu  sync.Mutex
	all []string
}

func (w *writeRecorder) record(s string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all = append(w.all, s)
}

// first returns the index of the first recorded write that is exactly
// write ("METHOD /path"), or -1.
func (w *writeRecorder) first(write string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Index(w.all, write)
}

// inNamespace returns the writes recorded so far to objects in ns.
func (w *writeRecorder) inNamespace(ns string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, s := range w.all {
		if strings.Contains(s, "/namespaces/"+ns+"/") {
			out = append(out, s)
		}
	}
	return out
}

type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newNamespace makes a namespace that enforces Pod Security baseline, as a
// namespace must before a model is served in it. (Baseline, not restricted,
// so that tests may create the tenant pods they attack with.)
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "pm-",
		Labels: map[string]string{mlv1alpha1.LabelPodSecurityEnforce: "baseline"}}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}

// sealedKey is a bundle's key material as a test sees it: the KEK (which a
// ModelKey's Secret holds), the DEK (which only a verified unseal container
// may receive) and the manifest's key record.
type sealedKey struct {
	KEK      []byte
	DEK      []byte
	Resolved seal.ResolvedKey
}

// newSealedKey is the key of a bundle sealed under modelKEK, the KEK of
// the default ModelKey.
func newSealedKey(t *testing.T, digest string) sealedKey {
	t.Helper()
	dek := make([]byte, keys.DEKSize)
	_, _ = rand.Read(dek)
	bundleID := make([]byte, 16)
	_, _ = rand.Read(bundleID)
	k := sealedKey{KEK: modelKEK, DEK: dek}
	k.Resolved = k.resolvedFor(t, fmt.Sprintf("%x", bundleID), digest)
	return k
}

// resolvedFor is the key record of a format v2 bundle with the given id and
// model digest, sealed under k's DEK and KEK: the wrapped key is bound to
// both.
func (k sealedKey) resolvedFor(t *testing.T, bundleID, digest string) seal.ResolvedKey {
	t.Helper()
	kek, err := keys.NewKEK(k.KEK)
	if err != nil {
		t.Fatal(err)
	}
	resolved := seal.ResolvedKey{Version: seal.FormatVersion, BundleID: bundleID, ModelDigest: digest}
	wrapped, err := kek.Wrap(context.Background(), k.DEK, resolved.Binding(digest))
	if err != nil {
		t.Fatal(err)
	}
	resolved.Key = seal.KeyInfo{Provider: kek.Kind(), ID: kek.ID(), WrappedDEK: wrapped}
	return resolved
}

// secretForms are the encodings of key bytes that must never appear in
// logs, events or status.
func secretForms(b []byte) []string {
	return []string{string(b), fmt.Sprintf("%x", b), keys.EncodeDEK(b)}
}

// eventually retries check for up to 30 seconds.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting until %s: %v", what, err)
}

// waitForCondition waits until the model's condition has the given status
// and reason, and returns the model.
func waitForCondition(t *testing.T, ns, name, conditionType string, status metav1.ConditionStatus, reason string) *mlv1alpha1.ProtectedModel {
	t.Helper()
	pm := &mlv1alpha1.ProtectedModel{}
	eventually(t, fmt.Sprintf("%s is %s/%s", conditionType, status, reason), func() error {
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, pm); err != nil {
			return err
		}
		c := meta.FindStatusCondition(pm.Status.Conditions, conditionType)
		if c == nil {
			return fmt.Errorf("no %s condition", conditionType)
		}
		if c.Status != status || c.Reason != reason {
			return fmt.Errorf("%s is %s/%s: %s", conditionType, c.Status, c.Reason, c.Message)
		}
		if c.ObservedGeneration != pm.Generation {
			return fmt.Errorf("%s observedGeneration %d, generation %d", conditionType, c.ObservedGeneration, pm.Generation)
		}
		return nil
	})
	return pm
}

// update reads obj afresh, applies edit and writes it, again on a conflict:
// the controller writes status (and the tests play other controllers) at any
// time, so a read-modify-write of a live object must expect to lose a race.
func update[T client.Object](t *testing.T, obj T, edit func(T), opts ...client.UpdateOption) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		edit(obj)
		return k8s.Update(ctx, obj, opts...)
	})
	if err != nil {
		t.Fatalf("updating %T %s: %v", obj, obj.GetName(), err)
	}
}
