// Package protectedmodel tests the ProtectedModel controller against a real
// kube-apiserver and etcd. There is no kubelet, Job or Deployment controller
// here, so tests play their part where needed: they write the pod and
// Deployment status a kubelet and the Deployment controller would write.
package protectedmodel

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/controllers"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
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
)

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
	if err := controllers.SetupWithManager(mgr, controllers.Options{UnsealImage: unsealImage, OperatorNamespace: operatorNamespace}); err != nil {
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

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "pm-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}

// sealedKey is a bundle's key material as a test sees it: the KEK (which
// goes in the key Secret), the DEK (which must reach only the data-key
// Secret) and the manifest record the key-resolve Job reports.
type sealedKey struct {
	KEK      []byte
	DEK      []byte
	Resolved seal.ResolvedKey
}

func newSealedKey(t *testing.T, digest string) sealedKey {
	t.Helper()
	kekBytes, dek := make([]byte, keys.KEKSize), make([]byte, keys.DEKSize)
	_, _ = rand.Read(kekBytes)
	_, _ = rand.Read(dek)
	bundleID := make([]byte, 16)
	_, _ = rand.Read(bundleID)
	k := sealedKey{KEK: kekBytes, DEK: dek}
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

func createKEKSecret(t *testing.T, ns, name, key string, kek []byte) {
	t.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string][]byte{key: []byte(keys.EncodeDEK(kek))},
	}
	if err := k8s.Create(context.Background(), s); err != nil {
		t.Fatalf("creating KEK Secret: %v", err)
	}
}

// completeKeyResolve plays the Job controller and kubelet for the model's
// key-resolve Job: a pod from the Job's template that exited 0 with the
// manifest record as its termination message.
func completeKeyResolve(t *testing.T, pm *mlv1alpha1.ProtectedModel, resolved seal.ResolvedKey) {
	t.Helper()
	message, err := json.Marshal(resolved)
	if err != nil {
		t.Fatal(err)
	}
	finishKeyResolvePod(t, pm, 0, string(message))
}

func finishKeyResolvePod(t *testing.T, pm *mlv1alpha1.ProtectedModel, exitCode int32, message string) {
	t.Helper()
	ctx := context.Background()
	job := &batchv1.Job{}
	eventually(t, "the key-resolve Job is created", func() error {
		jobs := &batchv1.JobList{}
		if err := k8s.List(ctx, jobs, client.InNamespace(pm.Namespace), client.MatchingLabels{
			mlv1alpha1.LabelModel: pm.Name, builder.LabelComponent: builder.ComponentKeyResolve,
		}); err != nil {
			return err
		}
		if len(jobs.Items) != 1 {
			return fmt.Errorf("%d key-resolve Jobs", len(jobs.Items))
		}
		*job = jobs.Items[0]
		return nil
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   pm.Namespace,
			Name:        job.Name + "-pod",
			Labels:      mergeLabels(job.Spec.Template.Labels, map[string]string{batchv1.JobNameLabel: job.Name}),
			Annotations: job.Spec.Template.Annotations,
		},
		Spec: job.Spec.Template.Spec,
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatalf("creating key-resolve pod: %v", err)
	}
	pod.Status.Phase = corev1.PodSucceeded
	if exitCode != 0 {
		pod.Status.Phase = corev1.PodFailed
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name:  builder.KeyResolveContainerName,
		Image: unsealImage,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Message: message}},
	}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatalf("writing key-resolve pod status: %v", err)
	}
	if exitCode != 0 {
		job.Status.Conditions = append(job.Status.Conditions,
			batchv1.JobCondition{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: metav1.Now()},
			batchv1.JobCondition{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: metav1.Now()})
		now := metav1.Now()
		job.Status.StartTime = &now
		job.Status.Failed = 1
		if err := k8s.Status().Update(ctx, job); err != nil {
			t.Fatalf("writing key-resolve Job status: %v", err)
		}
	}
}

func mergeLabels(maps ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
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
