//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// Statfs magic numbers (linux/magic.h) of the file systems the plaintext
// search treats specially.
const (
	tmpfsMagic   = 0x01021994
	ramfsMagic   = 0x858458f6
	overlayMagic = 0x794c7630
)

// modelOwner is the ownership every model of these tests records.
var modelOwner = mlv1alpha1.Ownership{
	Owner:          "Acme Corp",
	License:        "LicenseRef-Acme-Proprietary",
	Copyright:      "Copyright 2026 Acme Corp",
	Classification: mlv1alpha1.ClassificationTradeSecret,
}

var (
	crOnce   sync.Once
	crClient crclient.Client
	crErr    error
)

func restConfig(t testing.TB) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatalf("loading the kubeconfig: %v", err)
	}
	return cfg
}

// modelClient is a client that knows the ModelGuard types.
func modelClient(t testing.TB) crclient.Client {
	t.Helper()
	crOnce.Do(func() {
		scheme := runtime.NewScheme()
		if crErr = clientgoscheme.AddToScheme(scheme); crErr != nil {
			return
		}
		if crErr = mlv1alpha1.AddToScheme(scheme); crErr != nil {
			return
		}
		crClient, crErr = crclient.New(restConfig(t), crclient.Options{Scheme: scheme})
	})
	if crErr != nil {
		t.Fatalf("building a client for the ModelGuard API: %v", crErr)
	}
	return crClient
}

// tenantClient is a client acting as a tenant: a user bound to the built-in
// ClusterRole role ("edit" or "admin") in namespace ns, and nothing else, by
// impersonation, the way the threat model's tenant reaches the API.
func tenantClient(t *testing.T, ns, role string) crclient.Client {
	t.Helper()
	cfg := tenantConfig(t, ns, role)
	c, err := crclient.New(cfg, crclient.Options{Scheme: modelClient(t).Scheme()})
	if err != nil {
		t.Fatalf("building a client for %s: %v", cfg.Impersonate.UserName, err)
	}
	return c
}

// tenantConfig binds the tenant user of role ("edit" or "admin") to that
// built-in ClusterRole in ns, and returns a client config that impersonates
// it.
func tenantConfig(t *testing.T, ns, role string) *rest.Config {
	t.Helper()
	ctx := context.Background()
	user := "tenant-" + role + "@modelguard.test"
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tenant-" + role, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := modelClient(t).Create(ctx, binding); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("binding %s to %s in %s: %v", user, role, ns, err)
	}
	cfg := restConfig(t)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	return cfg
}

// modelEnv is a small model, sealed once with the real `modelguard seal`
// into the node's scratch directory, and what the cases need to check it.
type modelEnv struct {
	// workDir is the cluster's work dir: the kubelet's root dir, containerd's
	// state and the scratch dir for hostPath volumes all live under it.
	workDir string
	scratch string
	cli     string
	// plaintext maps each model file's path to its SHA-256.
	plaintext map[string]string
	// marker is a random string planted in every MiB of every plaintext
	// file; finding it on the node's disk means plaintext leaked there.
	marker []byte
	digest string
	// kek is the key-encryption key the bundle was sealed with, and dek the
	// bundle's data key, unwrapped in-process: the tenant scans look for
	// both.
	kek []byte
	dek []byte
	// key is the ModelKey over kek that every model of these cases names,
	// with its Secret in the operator's namespace.
	key *testModelKey
	// bundle is the sealed bundle's directory on the node.
	bundle string
	node   corev1.Node
	gpus   int64
}

// newModelEnv builds the modelguard CLI, generates a model, seals it with a
// random KEK, and makes that KEK a ModelKey of the operator op: its Secret in
// the operator's namespace, never a model's.
func newModelEnv(t testing.TB, op *operatorRelease) *modelEnv {
	t.Helper()
	kubeconfig := os.Getenv("KUBECONFIG")
	e := &modelEnv{workDir: filepath.Dir(kubeconfig)}
	if fi, err := os.Stat(filepath.Join(e.workDir, "run", "kubelet", "pods")); err != nil || !fi.IsDir() {
		t.Fatalf("%s is not a local cluster's work dir (no run/kubelet/pods beside the kubeconfig %s): %v", e.workDir, kubeconfig, err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("the ProtectedModel cases write the sealed bundle into the node's scratch dir and search the kubelet's directories: run them as root, as `make test-e2e` does")
	}
	e.scratch = filepath.Join(e.workDir, "run", "scratch", "e2e-"+randomSuffix())
	if err := os.MkdirAll(e.scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(e.scratch) })

	e.cli = filepath.Join(t.TempDir(), "modelguard")
	build := exec.Command("go", "build", "-o", e.cli, "./cmd/modelguard")
	build.Dir = repoRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the modelguard CLI: %v\n%s", err, out)
	}

	// The plaintext lives outside the cluster's work dir, so that the disk
	// search finds it only if the cluster put it there.
	src := t.TempDir()
	e.marker = []byte("MODELGUARD-E2E-PLAINTEXT-" + randomSuffix() + randomSuffix() + randomSuffix())
	weights := make([]byte, 3<<20+12345)
	if _, err := rand.Read(weights); err != nil {
		t.Fatal(err)
	}
	for off := 0; off+len(e.marker) <= len(weights); off += 1 << 20 {
		copy(weights[off+100:], e.marker)
	}
	files := map[string][]byte{
		"model.safetensors":        weights,
		"config.json":              []byte(`{"architecture":"e2e","hidden_size":256,"marker":"` + string(e.marker) + `"}` + "\n"),
		"tokenizer/tokenizer.json": []byte(`{"version":"1.0","vocab":{"` + string(e.marker) + `":0}}` + "\n"),
	}
	e.plaintext = map[string]string{}
	for name, content := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(content)
		e.plaintext[name] = hex.EncodeToString(sum[:])
	}
	e.kek = make([]byte, 32)
	if _, err := rand.Read(e.kek); err != nil {
		t.Fatal(err)
	}
	kekFile := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(kekFile, e.kek, 0o600); err != nil {
		t.Fatal(err)
	}

	e.bundle = filepath.Join(e.scratch, "good", "models", "v1")
	cmd := exec.Command(e.cli, "seal", src, e.bundle, "--kek-file", kekFile,
		"--owner", modelOwner.Owner, "--license", modelOwner.License, "--copyright", modelOwner.Copyright, "--progress", "none")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("modelguard seal: %v\n%s", err, stderr.String())
	}
	lines := strings.Fields(stdout.String())
	if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "sha256:") {
		t.Fatalf("modelguard seal printed no model digest: %q", stdout.String())
	}
	e.digest = lines[len(lines)-1]
	e.dek = unwrapBundleDEK(t, e.bundle, e.kek)
	makeReadable(t, filepath.Join(e.scratch, "good"))
	if found, err := searchFiles(e.scratch, e.marker); err != nil || len(found) > 0 {
		t.Fatalf("the sealed bundle holds plaintext (%v) or cannot be searched (%v)", found, err)
	}

	nodes, err := client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("listing nodes: %d nodes, %v; want the single local node", len(nodes.Items), err)
	}
	e.node = nodes.Items[0]
	allocatable := e.node.Status.Allocatable[corev1.ResourceName("nvidia.com/gpu")]
	e.gpus = allocatable.Value()
	e.key = newTestModelKey(t, op, e.kek)
	return e
}

// newNamespace creates a namespace that the env's ModelKey selects.
func (e *modelEnv) newNamespace(t testing.TB, prefix string) string {
	t.Helper()
	return newLabelledNamespace(t, prefix, e.key.selects)
}

// makeReadable lets the pods' non-root user (UID 65532) read the bundle
// through the hostPath PersistentVolume.
func makeReadable(t testing.TB, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		t.Fatalf("making %s readable: %v", root, err)
	}
}

// copyBundle copies the good bundle to a new directory of the scratch dir
// and returns the claim root (the PersistentVolume's path) and the bundle's
// directory inside it.
func (e *modelEnv) copyBundle(t testing.TB, name string) (root, bundle string) {
	t.Helper()
	root = filepath.Join(e.scratch, name)
	bundle = filepath.Join(root, "models", "v1")
	err := filepath.WalkDir(e.bundle, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.bundle, p)
		dst := filepath.Join(bundle, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatalf("copying the bundle: %v", err)
	}
	makeReadable(t, root)
	return root, bundle
}

// provideBundle creates a static hostPath PersistentVolume over root and a
// claim bound to it by name in ns. No key goes into ns: the models name the
// env's ModelKey.
func (e *modelEnv) provideBundle(t testing.TB, ns, root string) (claim string) {
	t.Helper()
	ctx := context.Background()
	claim = "sealed-models"
	pvName := ns + "-sealed-models"
	_, err := client.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:         corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
			StorageClassName: "",
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: root, Type: ptr.To(corev1.HostPathDirectory)},
			},
			ClaimRef: &corev1.ObjectReference{Namespace: ns, Name: claim},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating PersistentVolume %s: %v", pvName, err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().PersistentVolumes().Delete(context.Background(), pvName, metav1.DeleteOptions{})
	})
	_, err = client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: claim},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
			StorageClassName: ptr.To(""),
			VolumeName:       pvName,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating PersistentVolumeClaim %s/%s: %v", ns, claim, err)
	}
	return claim
}

// protectedModel is a model served by the demo server from the bundle at
// models/v1 of claim, whose data key the env's ModelKey wraps.
func (e *modelEnv) protectedModel(ns, name, claim string) *mlv1alpha1.ProtectedModel {
	return &mlv1alpha1.ProtectedModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: mlv1alpha1.ProtectedModelSpec{
			Ownership: modelOwner,
			Weights: mlv1alpha1.SealedWeights{
				Source: mlv1alpha1.WeightsSource{Volume: &mlv1alpha1.VolumeSource{ClaimName: claim, Path: "models/v1"}},
				Digest: e.digest,
				Key:    mlv1alpha1.ModelKeyReference{ModelKey: e.key.name},
				Memory: resource.MustParse("32Mi"),
			},
			Server: mlv1alpha1.ModelServer{
				Image:         images.DemoServerRef,
				Args:          []string{"serve", "--dir", "/models"},
				Port:          8080,
				ReadinessPath: "/healthz",
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
				},
			},
		},
	}
}

func createModel(t testing.TB, pm *mlv1alpha1.ProtectedModel) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := modelClient(t).Create(ctx, pm); err != nil {
		t.Fatalf("creating ProtectedModel %s/%s: %v", pm.Namespace, pm.Name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubectl describe pm %s:\n%s", pm.Name, describeModel(pm.Namespace, pm.Name))
		}
	})
}

// waitForModel polls a ProtectedModel until done says so, failing the test
// with `kubectl describe` when timeout passes.
func waitForModel(t *testing.T, ns, name string, timeout time.Duration, what string, done func(*mlv1alpha1.ProtectedModel) bool) *mlv1alpha1.ProtectedModel {
	t.Helper()
	c := modelClient(t)
	var last *mlv1alpha1.ProtectedModel
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pm := &mlv1alpha1.ProtectedModel{}
		if err := c.Get(ctx, crclient.ObjectKey{Namespace: ns, Name: name}, pm); err != nil {
			return false, nil
		}
		last = pm
		return done(pm), nil
	})
	if err != nil {
		t.Fatalf("ProtectedModel %s/%s did not become %s within %s:\n%s", ns, name, what, timeout, describeModel(ns, name))
	}
	return last
}

func conditionIs(pm *mlv1alpha1.ProtectedModel, conditionType string, status metav1.ConditionStatus, reason string) bool {
	c := meta.FindStatusCondition(pm.Status.Conditions, conditionType)
	return c != nil && c.Status == status && c.Reason == reason && c.ObservedGeneration == pm.Generation
}

func condition(pm *mlv1alpha1.ProtectedModel, conditionType string) metav1.Condition {
	if c := meta.FindStatusCondition(pm.Status.Conditions, conditionType); c != nil {
		return *c
	}
	return metav1.Condition{Type: conditionType, Status: "(absent)"}
}

func describeModel(ns, name string) string {
	out, err := exec.Command(kubectl, "describe", "pm", "-n", ns, name).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("kubectl describe pm %s/%s: %v\n%s", ns, name, err, out)
	}
	return string(out)
}

// modelPods lists the model's server pods.
func modelPods(t testing.TB, ns, name string) []corev1.Pod {
	t.Helper()
	pods, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{
		LabelSelector: mlv1alpha1.LabelModel + "=" + name + ",modelguard.dev/component=server",
	})
	if err != nil {
		t.Fatalf("listing the pods of model %s/%s: %v", ns, name, err)
	}
	return pods.Items
}

// A ProtectedModel serves sealed weights: the operator installed by Helm
// releases the data key to the verified unseal init container (the KEK stays
// in the operator's namespace, the data key is stored nowhere), which
// decrypts the real bundle into a memory volume; the demo server serves
// exactly the plaintext that was sealed, and no plaintext byte reaches the
// node's disk. Its NetworkPolicy lets in only the allowed client and lets
// the model reach only the egress it allows, checked with real connections.
func testServesSealedWeights(t *testing.T, e *modelEnv) {
	ns := e.newNamespace(t, "e2e-pm-serve")
	ctx := context.Background()

	// Two servers of ours for the egress checks, and two clients.
	for _, name := range []string{"egress-allowed", "egress-denied"} {
		c := restrictedContainer("server", "serve", "--dir", "/tmp")
		c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
		createPod(t, restrictedPod(ns, name, map[string]string{"app": name}, c))
	}
	for _, app := range []string{"frontend", "intruder"} {
		createPod(t, restrictedPod(ns, app, map[string]string{"app": app}, restrictedContainer("client", "idle")))
	}
	allowedIP := waitForRunning(t, ns, "egress-allowed").Status.PodIP
	deniedIP := waitForRunning(t, ns, "egress-denied").Status.PodIP

	claim := e.provideBundle(t, ns, filepath.Join(e.scratch, "good"))
	pm := e.protectedModel(ns, "sentiment", claim)
	product, memory := e.node.Labels["nvidia.com/gpu.product"], e.node.Labels["nvidia.com/gpu.memory"]
	memoryMiB, err := strconv.ParseInt(memory, 10, 64)
	if product == "" || err != nil {
		t.Fatalf("node %s lacks usable GPU Feature Discovery labels: product %q, memory %q", e.node.Name, product, memory)
	}
	// Exactly the node's GPU memory: a node with the minimum qualifies.
	pm.Spec.GPU = &mlv1alpha1.GPU{Count: 1, Products: []string{product}, MinMemoryMiB: memoryMiB}
	pm.Spec.Network = &mlv1alpha1.Network{
		AllowedClients: []mlv1alpha1.NetworkClient{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}},
		AllowedEgress: []mlv1alpha1.EgressRule{{
			CIDR:  mlv1alpha1.CIDR(allowedIP + "/32"),
			Ports: []mlv1alpha1.NetworkPort{{Port: 8080}},
		}},
	}
	began := time.Now()
	createModel(t, pm)
	pm = waitForModel(t, ns, pm.Name, 3*time.Minute, "Ready", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
	})
	t.Logf("ProtectedModel Ready %.1fs after creation", time.Since(began).Seconds())

	t.Run("Status", func(t *testing.T) {
		if pm.Status.Phase != mlv1alpha1.ModelPhaseProtected {
			t.Errorf("phase = %q, want %q", pm.Status.Phase, mlv1alpha1.ModelPhaseProtected)
		}
		if c := condition(pm, mlv1alpha1.ConditionKeyAvailable); !strings.Contains(c.Message, e.key.name) {
			t.Errorf("KeyAvailable message = %q, want it to name the ModelKey %s", c.Message, e.key.name)
		}
		want := map[string]string{
			mlv1alpha1.ConditionKeyAvailable:      mlv1alpha1.ReasonKeyReleasable,
			mlv1alpha1.ConditionWeightsEncrypted:  mlv1alpha1.ReasonSealedBundle,
			mlv1alpha1.ConditionWeightsVerified:   mlv1alpha1.ReasonDigestVerified,
			mlv1alpha1.ConditionNetworkIsolated:   mlv1alpha1.ReasonPolicyApplied,
			mlv1alpha1.ConditionHardened:          mlv1alpha1.ReasonRestricted,
			mlv1alpha1.ConditionGPUScheduled:      mlv1alpha1.ReasonScheduled,
			mlv1alpha1.ConditionOwnershipRecorded: mlv1alpha1.ReasonOwnershipAnnotated,
		}
		for conditionType, reason := range want {
			if !conditionIs(pm, conditionType, metav1.ConditionTrue, reason) {
				t.Errorf("%s = %+v, want True/%s", conditionType, condition(pm, conditionType), reason)
			}
		}
		if pm.Status.ReadyReplicas != 1 {
			t.Errorf("readyReplicas = %d, want 1", pm.Status.ReadyReplicas)
		}
	})

	pods := modelPods(t, ns, pm.Name)
	if len(pods) != 1 {
		t.Fatalf("model %s has %d server pods, want 1", pm.Name, len(pods))
	}
	pod := pods[0]
	t.Run("EventsOnTransitionsOnly", func(t *testing.T) {
		// Every condition changed status once on the way to Ready, so every
		// event is announced once.
		notes := map[string]int{}
		for _, ev := range modelEvents(t, ns, pm.Name) {
			count := 1
			if ev.Series != nil {
				count = int(ev.Series.Count)
			}
			notes[ev.Note] += count
		}
		for note, n := range notes {
			if n != 1 {
				t.Errorf("event %q was emitted %d times, want once", note, n)
			}
		}
		if len(notes) == 0 {
			t.Errorf("the model has no events")
		}
	})

	t.Run("UnsealedIntoMemory", func(t *testing.T) {
		message, code := "", int32(-1)
		for _, s := range pod.Status.InitContainerStatuses {
			if s.Name == "unseal" && s.State.Terminated != nil {
				message, code = s.State.Terminated.Message, s.State.Terminated.ExitCode
			}
		}
		if code != 0 || !strings.HasPrefix(message, "ok digest="+e.digest+" files=3 ") {
			t.Errorf("unseal init container: exit %d, termination message %q; want 0 and \"ok digest=%s files=3 …\"", code, message, e.digest)
		}
		if pod.Spec.NodeName != e.node.Name {
			t.Errorf("the model runs on %q, want the GPU node %q", pod.Spec.NodeName, e.node.Name)
		}
		visible, err := execIn(ns, pod.Name, "server", "/demo-server", "env", "NVIDIA_VISIBLE_DEVICES")
		if err != nil || !strings.HasPrefix(strings.TrimSpace(visible), "fake-gpu-") {
			t.Errorf("the server got no fake GPU: NVIDIA_VISIBLE_DEVICES = %q, %v", visible, err)
		}
	})

	svc, err := client.CoreV1().Services(ns).Get(ctx, pm.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading the model's Service: %v", err)
	}
	viaService := fmt.Sprintf("http://%s:8080/", svc.Spec.ClusterIP)
	viaPod := fmt.Sprintf("http://%s:8080/", pod.Status.PodIP)

	t.Run("ServesThePlaintext", func(t *testing.T) {
		// kube-router programs a new pod's rules shortly after it starts.
		var body string
		err := eventually(30*time.Second, func() error {
			var err error
			body, err = execIn(ns, "frontend", "client", "/demo-server", "fetch", "--timeout", "2s", viaService)
			return err
		})
		if err != nil {
			t.Fatalf("the allowed client gets no answer from the model's Service %s: %v", viaService, err)
		}
		var got report
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("parsing the model server's report %q: %v", body, err)
		}
		served := map[string]string{}
		for _, f := range got.Files {
			served[f.Path] = f.SHA256
		}
		if diff := cmp.Diff(e.plaintext, served); diff != "" {
			t.Errorf("files the server sees (sha256) differ from the plaintext sealed (-sealed +served):\n%s", diff)
		}
		if !got.Tmpfs || got.Dir != "/models" {
			t.Errorf("the server's model dir %q is tmpfs=%v; want /models on tmpfs (a memory-backed emptyDir)", got.Dir, got.Tmpfs)
		}
	})

	t.Run("NoPlaintextOnNodeDisk", func(t *testing.T) {
		// Control: the search finds the marker where the plaintext is meant
		// to be, the pod's memory volume as the kubelet mounted it.
		volume := filepath.Join(e.workDir, "run", "kubelet", "pods", string(pod.UID), "volumes", "kubernetes.io~empty-dir", "model")
		var st syscall.Statfs_t
		if err := syscall.Statfs(volume, &st); err != nil {
			t.Fatalf("statfs of the model's volume on the node: %v", err)
		}
		if st.Type != tmpfsMagic {
			t.Errorf("the model's volume %s has file system magic %#x, want tmpfs", volume, st.Type)
		}
		inMemory, err := searchFiles(volume, e.marker)
		if err != nil {
			t.Fatal(err)
		}
		if len(inMemory) != len(e.plaintext) {
			t.Fatalf("control: the marker is in %d files of the model's memory volume %s (%v), want %d: the search does not see the plaintext", len(inMemory), volume, inMemory, len(e.plaintext))
		}
		found, skipped, err := searchDisk(e.workDir, e.marker)
		if err != nil {
			t.Fatal(err)
		}
		if len(found) > 0 {
			t.Errorf("plaintext on the node's disk under %s: %v", e.workDir, found)
		}
		if !containsPath(skipped, volume) {
			t.Errorf("the disk search did not pass the model's memory volume %s as tmpfs; skipped %v", volume, skipped)
		}
		t.Logf("searched %s on disk (skipping %d memory-backed mounts): no plaintext", e.workDir, len(skipped))
	})

	t.Run("Isolation", func(t *testing.T) {
		if err := fetchFrom(ns, "frontend", viaPod); err != nil {
			t.Errorf("the allowed client gets no answer from the model pod %s: %v", viaPod, err)
		}
		// Control: the intruder's own network works.
		if err := eventually(30*time.Second, func() error {
			return fetchFrom(ns, "intruder", fmt.Sprintf("http://%s:8080/healthz", allowedIP))
		}); err != nil {
			t.Fatalf("control: the intruder cannot reach a pod that no policy guards: %v", err)
		}
		// kube-router programs a new pod's rules within seconds of its start.
		for _, url := range []string{viaService, viaPod} {
			if err := eventually(30*time.Second, func() error { return blocked(ns, "intruder", url) }); err != nil {
				t.Errorf("a client outside spec.network.allowedClients: %v; want no answer", err)
			}
		}

		allowed := fmt.Sprintf("http://%s:8080/healthz", allowedIP)
		denied := fmt.Sprintf("http://%s:8080/healthz", deniedIP)
		if err := fetchFrom(ns, "frontend", denied); err != nil {
			t.Fatalf("control: egress-denied serves nothing even to a client no policy limits: %v", err)
		}
		fromModel := func(url string) error {
			_, err := execIn(ns, pod.Name, "server", "/demo-server", "fetch", "--timeout", "2s", url)
			return err
		}
		if err := eventually(30*time.Second, func() error { return fromModel(allowed) }); err != nil {
			t.Errorf("the model cannot reach %s, which spec.network.allowedEgress allows: %v", allowed, err)
		}
		err := eventually(30*time.Second, func() error {
			switch err := fromModel(denied); {
			case err == nil:
				return fmt.Errorf("the model reached %s, which spec.network.allowedEgress does not cover", denied)
			case !strings.Contains(err.Error(), "no answer"):
				return fmt.Errorf("the model could not try %s: %w", denied, err)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("RestrictedEnforced", func(t *testing.T) {
		nsObj, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := nsObj.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
			t.Fatalf("namespace %s enforces %q, want restricted", ns, got)
		}
		// The API server admitted the model pod under that label, and it
		// runs.
		if pod.Status.Phase != corev1.PodRunning {
			t.Errorf("model pod %s is %s, want Running", pod.Name, pod.Status.Phase)
		}
	})

	t.Run("KeyReleasedToThePod", func(t *testing.T) {
		ev := waitForKeyEvent(t, ns, pm.Name, pod.Name, 30*time.Second, mlv1alpha1.ReasonKeyReleased)
		t.Logf("Event %s: %s", ev.Reason, ev.Note)
		assertNoKeyObjects(t, ns, pm.Name)
	})

	// Last, because it rolls the model's pods: a tenant with edit adds a
	// sidecar that mounts the plaintext to the managed Deployment. The
	// operator removes it; while a pod with the sidecar runs, Hardened is
	// False and names it.
	// A tenant's sidecar in the managed Deployment would mount the
	// plaintext. The admission guard refuses the edit, naming the model; the
	// operator's repair of an edit that got through anyway (its apply
	// removes what others added, and key release refuses the edited pods)
	// is tested against the real API server in test/integration.
	t.Run("TenantSidecarDenied", func(t *testing.T) {
		c := modelClient(t)
		tenant := tenantClient(t, ns, "edit")
		key := crclient.ObjectKey{Namespace: ns, Name: pm.Name}
		sidecar := restrictedContainer("sidecar", "idle")
		sidecar.VolumeMounts = append(sidecar.VolumeMounts, corev1.VolumeMount{Name: "model", MountPath: "/stolen", ReadOnly: true})
		d := &appsv1.Deployment{}
		if err := tenant.Get(ctx, key, d); err != nil {
			t.Fatalf("the tenant cannot read the Deployment: %v", err)
		}
		d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, sidecar)
		err := tenant.Update(ctx, d, crclient.FieldOwner("kubectl-edit"))
		model := "ProtectedModel " + ns + "/" + pm.Name
		if err == nil || !strings.Contains(err.Error(), model) {
			t.Fatalf("adding a sidecar as a tenant with edit: %v; want the admission guard's denial naming %s", err, model)
		}
		t.Logf("Sidecar edit refused: %v", err)
		if err := c.Get(ctx, key, d); err != nil {
			t.Fatal(err)
		}
		for _, ctr := range d.Spec.Template.Spec.Containers {
			if ctr.Name == "sidecar" {
				t.Fatal("the Deployment has the tenant's sidecar")
			}
		}
		if got := condition(waitForModel(t, ns, pm.Name, time.Minute, "Ready", func(pm *mlv1alpha1.ProtectedModel) bool {
			return conditionIs(pm, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
		}), mlv1alpha1.ConditionHardened); got.Status != metav1.ConditionTrue {
			t.Errorf("Hardened = %+v after a refused edit", got)
		}
	})
}

// A bundle with one flipped ciphertext byte never serves: the unseal init
// container fails authentication, the server never starts, WeightsVerified
// carries the unseal error (also in `kubectl describe`), and the memory
// volume holds no partial plaintext between attempts.
func testTamperedBundle(t *testing.T, e *modelEnv) {
	ns := e.newNamespace(t, "e2e-pm-tamper")
	root, bundle := e.copyBundle(t, "tampered")
	sealedWeights := filepath.Join(bundle, "model.safetensors.sealed")
	data, err := os.ReadFile(sealedWeights)
	if err != nil {
		t.Fatal(err)
	}
	// The middle of the file is inside the second 1 MiB chunk's ciphertext.
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(sealedWeights, data, 0o644); err != nil {
		t.Fatal(err)
	}
	claim := e.provideBundle(t, ns, root)
	pm := e.protectedModel(ns, "tampered", claim)
	createModel(t, pm)
	pm = waitForModel(t, ns, pm.Name, 3*time.Minute, "WeightsVerified=False", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered)
	})
	verified := condition(pm, mlv1alpha1.ConditionWeightsVerified)
	if !strings.Contains(verified.Message, "model.safetensors") || !strings.Contains(verified.Message, "failed authentication") {
		t.Errorf("WeightsVerified message = %q, want the unseal error naming model.safetensors and the failed authentication", verified.Message)
	}
	if !conditionIs(pm, mlv1alpha1.ConditionReady, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered) || pm.Status.Phase != mlv1alpha1.ModelPhaseFailed {
		t.Errorf("Ready = %+v, phase %q; want Ready False (BundleTampered) and phase Failed", condition(pm, mlv1alpha1.ConditionReady), pm.Status.Phase)
	}
	if !conditionIs(pm, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionTrue, mlv1alpha1.ReasonKeyReleasable) {
		t.Errorf("KeyAvailable = %+v; want True (KeyReleasable): the key is fine, a chunk is not", condition(pm, mlv1alpha1.ConditionKeyAvailable))
	}
	described := describeModel(ns, pm.Name)
	if !strings.Contains(described, verified.Message) {
		t.Errorf("kubectl describe pm does not show the unseal error %q:\n%s", verified.Message, described)
	}

	// The transition has its own event, not folded into Ready's or
	// Stalled's (they share the reason).
	if err := eventually(20*time.Second, func() error {
		for _, ev := range modelEvents(t, ns, pm.Name) {
			if ev.Type == corev1.EventTypeWarning && ev.Note == "WeightsVerified=False: "+verified.Message {
				return nil
			}
		}
		return fmt.Errorf("no Warning event says WeightsVerified=False: %s", verified.Message)
	}); err != nil {
		t.Error(err)
	}

	// Between two attempts (the kubelet backs off after a failure), no
	// plaintext is left in the pod's memory volume: the volume is read while
	// the unseal container is known not to run, before and after the read.
	var after *corev1.Pod
	var left []string
	err = eventually(90*time.Second, func() error {
		pods := modelPods(t, ns, pm.Name)
		if len(pods) != 1 {
			return fmt.Errorf("%d server pods", len(pods))
		}
		before := initStatus(&pods[0], "unseal")
		if !backingOff(before) || time.Since(lastTermination(before).FinishedAt.Time) < 2*time.Second {
			return fmt.Errorf("the unseal container is not backing off after a failure: %s", describeStatus(&pods[0]))
		}
		volume := filepath.Join(e.workDir, "run", "kubelet", "pods", string(pods[0].UID), "volumes", "kubernetes.io~empty-dir", "model")
		entries, err := os.ReadDir(volume)
		if err != nil {
			return fmt.Errorf("reading the pod's memory volume on the node: %w", err)
		}
		// An attempt that started during the read shows within the
		// kubelet's status period.
		time.Sleep(2 * time.Second)
		pod, err := client.CoreV1().Pods(ns).Get(context.Background(), pods[0].Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if now := initStatus(pod, "unseal"); !backingOff(now) || now.RestartCount != before.RestartCount {
			return fmt.Errorf("the unseal container restarted while its volume was read")
		}
		after, left = pod, dirNames(entries)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("after a failed unseal the memory volume holds %v; want nothing (no partial plaintext)", left)
	}
	// A later attempt fails the same way, or is refused its key because the
	// model is stalled: the key-release service gives no key to a model
	// whose bundle failed authentication.
	if last := lastTermination(initStatus(after, "unseal")); last == nil || last.ExitCode == 0 ||
		(strings.TrimSpace(last.Message) != verified.Message && !strings.Contains(last.Message, mlv1alpha1.ReasonModelStalled)) {
		t.Errorf("unseal's last termination = %+v, want a failure whose message is WeightsVerified's %q, or a refusal for %s", last, verified.Message, mlv1alpha1.ReasonModelStalled)
	}
	// What the first attempt found stays the model's verdict.
	back := &mlv1alpha1.ProtectedModel{}
	if err := modelClient(t).Get(context.Background(), crclient.ObjectKeyFromObject(pm), back); err != nil {
		t.Fatalf("reading the model: %v", err)
	}
	if !conditionIs(back, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonBundleTampered) {
		t.Errorf("after %d more attempts WeightsVerified = %+v, want it to stay False (BundleTampered)",
			initStatus(after, "unseal").RestartCount, condition(back, mlv1alpha1.ConditionWeightsVerified))
	}
	for _, s := range after.Status.ContainerStatuses {
		if s.Name == "server" && (s.Ready || s.State.Running != nil || s.RestartCount > 0 || s.LastTerminationState.Terminated != nil) {
			t.Errorf("the server container ran although its weights did not verify: %+v", s.State)
		}
	}
	for _, c := range after.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			t.Errorf("pod %s is Ready with a tampered bundle", after.Name)
		}
	}
}

// modelEvents lists the events the operator reported about a model.
func modelEvents(t *testing.T, ns, name string) []eventsv1.Event {
	t.Helper()
	list, err := client.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "regarding.kind=ProtectedModel,regarding.name=" + name,
	})
	if err != nil {
		t.Fatalf("listing the events of model %s/%s: %v", ns, name, err)
	}
	return list.Items
}

func initStatus(pod *corev1.Pod, name string) *corev1.ContainerStatus {
	for i := range pod.Status.InitContainerStatuses {
		if pod.Status.InitContainerStatuses[i].Name == name {
			return &pod.Status.InitContainerStatuses[i]
		}
	}
	return nil
}

// backingOff tells whether a container failed at least once and is not
// running now: the kubelet waits before the next attempt.
func backingOff(s *corev1.ContainerStatus) bool {
	return s != nil && s.State.Running == nil && s.RestartCount >= 1 && lastTermination(s) != nil
}

// lastTermination is a container's latest termination: the current state
// while the kubelet backs off (an init container stays Terminated), or the
// previous one.
func lastTermination(s *corev1.ContainerStatus) *corev1.ContainerStateTerminated {
	switch {
	case s == nil:
		return nil
	case s.State.Terminated != nil:
		return s.State.Terminated
	}
	return s.LastTerminationState.Terminated
}

func dirNames(entries []os.DirEntry) []string {
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

// A spec whose digest is not the bundle's fails closed: the unseal init
// container compares the bundle's digest with the spec's before it asks for
// any key, so WeightsVerified is False with DigestMismatch, no data key is
// released to any pod, and the model server never starts.
func testWrongDigest(t *testing.T, e *modelEnv) {
	ns := e.newNamespace(t, "e2e-pm-digest")
	claim := e.provideBundle(t, ns, filepath.Join(e.scratch, "good"))
	pm := e.protectedModel(ns, "wrong-digest", claim)
	sum := sha256.Sum256([]byte("a model that was never sealed"))
	pm.Spec.Weights.Digest = "sha256:" + hex.EncodeToString(sum[:])
	createModel(t, pm)
	pm = waitForModel(t, ns, pm.Name, 3*time.Minute, "WeightsVerified=False DigestMismatch", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionWeightsVerified, metav1.ConditionFalse, mlv1alpha1.ReasonDigestMismatch)
	})
	verified := condition(pm, mlv1alpha1.ConditionWeightsVerified)
	if !strings.Contains(verified.Message, e.digest) || !strings.Contains(verified.Message, pm.Spec.Weights.Digest) {
		t.Errorf("WeightsVerified message = %q, want both the bundle's digest %s and the spec's", verified.Message, e.digest)
	}
	if c := condition(pm, mlv1alpha1.ConditionReady); c.Status != metav1.ConditionFalse || pm.Status.Phase != mlv1alpha1.ModelPhaseFailed {
		t.Errorf("Ready = %+v, phase %q; want Ready False and phase Failed", c, pm.Status.Phase)
	}
	if described := describeModel(ns, pm.Name); !strings.Contains(described, "DigestMismatch") || !strings.Contains(described, verified.Message) {
		t.Errorf("kubectl describe pm does not show the digest mismatch %q:\n%s", verified.Message, described)
	}
	// The operator cannot read the bundle (it has no key-resolve Job any
	// more), so a pod may have started; whether it is then scaled away is
	// the controller's choice. Either way no server ran and no key went out.
	for _, p := range modelPods(t, ns, pm.Name) {
		for _, s := range p.Status.ContainerStatuses {
			if s.Name == mlv1alpha1.ContainerServer && (s.State.Running != nil || s.RestartCount > 0 || s.LastTerminationState.Terminated != nil || s.State.Terminated != nil) {
				t.Errorf("pod %s: the server container started although the bundle's digest does not match: %s", p.Name, describeStatus(&p))
			}
		}
	}
	for _, ev := range modelEvents(t, ns, pm.Name) {
		if ev.Reason == mlv1alpha1.ReasonKeyReleased {
			t.Errorf("a data key was released for a model whose digest does not match: %s", ev.Note)
		}
	}
	assertNoKeyObjects(t, ns, pm.Name)
}

// GPU requests go through the real scheduler: more GPUs than the node has,
// or a product the node does not carry, leave the model Pending with the
// scheduler's own message in GPUScheduled.
func testGPUScheduling(t *testing.T, e *modelEnv) {
	ns := e.newNamespace(t, "e2e-pm-gpu")
	claim := e.provideBundle(t, ns, filepath.Join(e.scratch, "good"))

	tooMany := e.protectedModel(ns, "too-many-gpus", claim)
	tooMany.Spec.GPU = &mlv1alpha1.GPU{Count: int32(e.gpus) + 1}
	wrongProduct := e.protectedModel(ns, "wrong-product", claim)
	wrongProduct.Spec.GPU = &mlv1alpha1.GPU{Count: 1, Products: []string{"NVIDIA-E2E-Nonexistent-GPU"}}
	createModel(t, tooMany)
	createModel(t, wrongProduct)

	for _, tc := range []struct {
		pm   *mlv1alpha1.ProtectedModel
		want string
	}{
		{tooMany, "Insufficient nvidia.com/gpu"},
		{wrongProduct, "didn't match Pod's node affinity/selector"},
	} {
		// The pod starts as soon as the model is created, and the scheduler
		// may first report the bundle's claim as not yet bound; GPUScheduled
		// follows its message until it is about the GPUs.
		pm := waitForModel(t, ns, tc.pm.Name, 3*time.Minute, "GPUScheduled=False naming "+tc.want, func(pm *mlv1alpha1.ProtectedModel) bool {
			return conditionIs(pm, mlv1alpha1.ConditionGPUScheduled, metav1.ConditionFalse, mlv1alpha1.ReasonUnschedulable) &&
				strings.Contains(condition(pm, mlv1alpha1.ConditionGPUScheduled).Message, tc.want)
		})
		scheduled := condition(pm, mlv1alpha1.ConditionGPUScheduled)
		if !strings.Contains(scheduled.Message, tc.want) {
			t.Errorf("%s: GPUScheduled message = %q, want the scheduler's %q", pm.Name, scheduled.Message, tc.want)
		}
		pods := modelPods(t, ns, pm.Name)
		if len(pods) != 1 {
			t.Fatalf("%s: %d server pods, want 1", pm.Name, len(pods))
		}
		var podMessage string
		for _, c := range pods[0].Status.Conditions {
			if c.Type == corev1.PodScheduled {
				podMessage = c.Message
			}
		}
		if pods[0].Status.Phase != corev1.PodPending || pods[0].Spec.NodeName != "" {
			t.Errorf("%s: pod is %s on %q, want Pending and unscheduled", pm.Name, pods[0].Status.Phase, pods[0].Spec.NodeName)
		}
		// Verbatim, unless the scheduler retried between the two reads.
		if podMessage != scheduled.Message && !strings.Contains(podMessage, tc.want) {
			t.Errorf("%s: GPUScheduled says %q, the pod's PodScheduled says %q", pm.Name, scheduled.Message, podMessage)
		}
		if pm.Status.Phase != mlv1alpha1.ModelPhasePending || condition(pm, mlv1alpha1.ConditionReady).Status != metav1.ConditionFalse {
			t.Errorf("%s: phase %q, Ready %+v; want Pending and not Ready", pm.Name, pm.Status.Phase, condition(pm, mlv1alpha1.ConditionReady))
		}
		described := describeModel(ns, pm.Name)
		if !strings.Contains(described, tc.want) {
			t.Errorf("%s: kubectl describe pm does not show the scheduler's message:\n%s", pm.Name, described)
		}
		t.Logf("%s: GPUScheduled=False: %s", pm.Name, scheduled.Message)
	}
}

// searchDisk returns the regular files under root that contain marker,
// leaving out memory-backed mounts (tmpfs, ramfs), which it returns
// separately, pseudo file systems (e.g. the network namespaces bound onto
// files), and overlay mounts (containers' root file systems, whose layers it
// reads where the snapshotter keeps them under root).
func searchDisk(root string, marker []byte) (found, skipped []string, err error) {
	var rootStat syscall.Stat_t
	if err := syscall.Stat(root, &rootStat); err != nil {
		return nil, nil, err
	}
	devOf := map[string]uint64{root: rootStat.Dev}
	// onDisk tells whether p, a mount point when its device differs from
	// its directory's, is on a disk file system.
	onDisk := func(p string, dev uint64) bool {
		if p == root || dev == devOf[filepath.Dir(p)] {
			return true
		}
		var sfs syscall.Statfs_t
		if err := syscall.Statfs(p, &sfs); err != nil {
			return false
		}
		switch int64(sfs.Type) {
		case tmpfsMagic, ramfsMagic:
			skipped = append(skipped, p)
			return false
		case overlayMagic, 0x9fa0 /* proc */, 0x62656572 /* sysfs */, 0x6e736673 /* nsfs */, 0x27e0eb, /* cgroup */
			0x63677270 /* cgroup2 */, 0x1cd1 /* devpts */, 0x19800202 /* mqueue */ :
			return false
		}
		return true
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking, e.g. a finished pod's
			}
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			devOf[p] = st.Dev
		}
		if !onDisk(p, st.Dev) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		ok, err := fileContains(p, marker)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if ok {
			found = append(found, p)
		}
		return nil
	})
	return found, skipped, err
}

// searchFiles returns the regular files under root that contain marker.
func searchFiles(root string, marker []byte) ([]string, error) {
	var found []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		ok, err := fileContains(p, marker)
		if ok {
			found = append(found, p)
		}
		return err
	})
	sort.Strings(found)
	return found, err
}

// fileContains streams a file looking for marker, across buffer boundaries.
func fileContains(path string, marker []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	keep := 0
	for {
		n, err := f.Read(buf[keep:])
		if bytes.Contains(buf[:keep+n], marker) {
			return true, nil
		}
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("reading %s: %w", path, err)
		}
		// Keep the tail that could start a marker.
		tail := min(len(marker)-1, keep+n)
		copy(buf, buf[keep+n-tail:keep+n])
		keep = tail
	}
}

func containsPath(paths []string, p string) bool {
	for _, q := range paths {
		if q == p {
			return true
		}
	}
	return false
}
