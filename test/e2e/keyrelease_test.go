//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// Key release on the local cluster (issue 12): the KEK lives in a Secret of
// the operator's namespace behind a cluster-scoped ModelKey, no data key is
// stored anywhere, and the operator releases the data key only to the
// verified unseal container of a model's own pod. These cases check it with
// the real init container, the real TokenReview and real tenants.

// testModelKey is a ModelKey over a KEK whose Secret lives in the operator's
// namespace, and the label by which it selects the namespaces whose models
// may use it.
type testModelKey struct {
	name string
	// secret is the KEK Secret's name in namespace, the operator's.
	secret    string
	namespace string
	// id is the KEK's fingerprint, as status.keyId shows it.
	id      string
	selects map[string]string
	removed bool
}

// newTestModelKey creates the KEK Secret in the operator's namespace and a
// ModelKey naming it, and waits for the ModelKey's self-test to make it
// Ready.
func newTestModelKey(t testing.TB, op *operatorRelease, kek []byte) *testModelKey {
	t.Helper()
	ctx := context.Background()
	suffix := randomSuffix()
	provider, err := keys.NewKEK(kek)
	if err != nil {
		t.Fatalf("the KEK: %v", err)
	}
	k := &testModelKey{
		name:      "e2e-models-" + suffix,
		secret:    "e2e-kek-" + suffix,
		namespace: op.namespace,
		id:        provider.ID(),
		selects:   map[string]string{"e2e.modelguard.dev/model-key": "e2e-models-" + suffix},
	}
	if _, err := client.CoreV1().Secrets(k.namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: k.secret},
		Data:       map[string][]byte{"kek": kek},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the KEK Secret in the operator's namespace %s: %v", k.namespace, err)
	}
	t.Cleanup(func() { k.remove(t) })
	mk := &mlv1alpha1.ModelKey{
		ObjectMeta: metav1.ObjectMeta{Name: k.name},
		Spec: mlv1alpha1.ModelKeySpec{
			Provider:          mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: k.secret, Key: "kek"}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: k.selects},
		},
	}
	c := modelClient(t)
	if err := c.Create(ctx, mk); err != nil {
		t.Fatalf("creating ModelKey %s: %v", k.name, err)
	}
	began := time.Now()
	var last *mlv1alpha1.ModelKey
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		got := &mlv1alpha1.ModelKey{}
		if err := c.Get(ctx, crclient.ObjectKey{Name: k.name}, got); err != nil {
			return false, nil
		}
		last = got
		ready := meta.FindStatusCondition(got.Status.Conditions, mlv1alpha1.ConditionReady)
		return ready != nil && ready.Status == metav1.ConditionTrue && ready.ObservedGeneration == got.Generation, nil
	})
	if err != nil {
		op.dumpLogs(t)
		t.Fatalf("ModelKey %s did not become Ready within 90s:\n%s", k.name, describeModelKey(k.name))
	}
	if last.Status.Provider != mlv1alpha1.ModelKeyProviderSecret || last.Status.KeyID != k.id {
		t.Errorf("ModelKey %s status: provider %q, keyId %q; want %q and the KEK's fingerprint %s",
			k.name, last.Status.Provider, last.Status.KeyID, mlv1alpha1.ModelKeyProviderSecret, k.id)
	}
	t.Logf("ModelKey %s (Secret %s/%s) Ready %.1fs after creation, key %s", k.name, k.namespace, k.secret, time.Since(began).Seconds(), last.Status.KeyID)
	return k
}

// remove deletes the ModelKey and its KEK Secret, once.
func (k *testModelKey) remove(t testing.TB) {
	t.Helper()
	if k.removed {
		return
	}
	k.removed = true
	ctx := context.Background()
	mk := &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: k.name}}
	if err := modelClient(t).Delete(ctx, mk); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("deleting ModelKey %s: %v", k.name, err)
	}
	if err := client.CoreV1().Secrets(k.namespace).Delete(ctx, k.secret, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("deleting the KEK Secret %s/%s: %v", k.namespace, k.secret, err)
	}
	err := eventually(30*time.Second, func() error {
		if err := modelClient(t).Get(ctx, crclient.ObjectKeyFromObject(mk), &mlv1alpha1.ModelKey{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ModelKey %s still exists (%v)", k.name, err)
		}
		if _, err := client.CoreV1().Secrets(k.namespace).Get(ctx, k.secret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("Secret %s/%s still exists (%v)", k.namespace, k.secret, err)
		}
		return nil
	})
	if err != nil {
		t.Errorf("removing the test ModelKey: %v\n%s", err, describeModelKey(k.name))
	}
}

func describeModelKey(name string) string {
	out, err := exec.Command(kubectl, "get", "mk", name, "-o", "yaml").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("kubectl get mk %s: %v\n%s", name, err, out)
	}
	return string(out)
}

// unwrapBundleDEK returns the bundle's data key, unwrapped in-process with
// the KEK it was sealed with, after checking that it authenticates the
// manifest: the tenant scans look for exactly these bytes.
func unwrapBundleDEK(t testing.TB, bundle string, kek []byte) []byte {
	t.Helper()
	ctx := context.Background()
	m, err := seal.ReadManifest(ctx, bundle, nil)
	if err != nil {
		t.Fatalf("reading the sealed bundle's manifest: %v", err)
	}
	provider, err := keys.NewKEK(kek)
	if err != nil {
		t.Fatalf("the KEK: %v", err)
	}
	dek, err := seal.UnwrapDEK(ctx, m.Key, m.Binding(), provider)
	if err != nil {
		t.Fatalf("unwrapping the bundle's data key with the KEK it was sealed with: %v", err)
	}
	if err := m.Authenticate(dek); err != nil {
		t.Fatalf("control: the unwrapped data key does not authenticate the bundle's manifest: %v", err)
	}
	return dek
}

// testKeyRelease serves a model and then attacks its key as the threat
// model's tenant would: a look-alike pod, and everything the built-in edit
// and admin roles can read.
func testKeyRelease(t *testing.T, e *modelEnv) {
	ns := e.newNamespace(t, "e2e-pm-keys")
	claim := e.provideBundle(t, ns, filepath.Join(e.scratch, "good"))
	pm := e.protectedModel(ns, "keys", claim)
	began := time.Now()
	createModel(t, pm)
	pm = waitForModel(t, ns, pm.Name, 3*time.Minute, "Ready", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
	})
	t.Logf("ProtectedModel Ready %.1fs after creation", time.Since(began).Seconds())
	pods := modelPods(t, ns, pm.Name)
	if len(pods) != 1 {
		t.Fatalf("model %s has %d server pods, want 1", pm.Name, len(pods))
	}
	pod := pods[0]

	t.Run("ReleasedToTheModelPod", func(t *testing.T) {
		ev := waitForKeyEvent(t, ns, pm.Name, pod.Name, 30*time.Second, mlv1alpha1.ReasonKeyReleased)
		if ev.Type != corev1.EventTypeNormal {
			t.Errorf("the KeyReleased Event is of type %s, want Normal: %s", ev.Type, ev.Note)
		}
		t.Logf("Event %s: %s", ev.Reason, ev.Note)
		last := lastTermination(initStatus(&pod, mlv1alpha1.ContainerUnseal))
		if last == nil || last.ExitCode != 0 || !strings.HasPrefix(last.Message, "ok digest="+e.digest) {
			t.Errorf("unseal init container: termination %+v, want exit 0 and \"ok digest=%s …\"", last, e.digest)
		}
		if log, err := podLog(ns, pod.Name, mlv1alpha1.ContainerUnseal, false); err != nil || !strings.Contains(log, "released") {
			t.Errorf("the unseal container's log does not say the key was released (%v):\n%s", err, log)
		}
		assertNoKeyObjects(t, ns, pm.Name)
	})
	t.Run("RoguePodGetsNoKey", func(t *testing.T) {
		testRoguePod(t, e, ns, pm, pod.Name)
	})
	// Last, so that it also reads what the rogue pod left: its log, its
	// status and the denial Events.
	t.Run("TenantScanFindsNoKeyMaterial", func(t *testing.T) {
		testTenantScan(t, e, ns)
	})
}

// A tenant with edit copies the model's live pod (same ServiceAccount,
// volumes and bundle claim, the same unseal init container, the labels) into
// a pod of their own, which no managed ReplicaSet owns. Its unseal container
// is refused the key and fails naming the refusal, nothing is decrypted into
// its memory volume, and an Event on the model names the pod and the reason.
func testRoguePod(t *testing.T, e *modelEnv, ns string, pm *mlv1alpha1.ProtectedModel, modelPod string) {
	ctx := context.Background()
	live, err := client.CoreV1().Pods(ns).Get(ctx, modelPod, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading the model's pod: %v", err)
	}
	// pod-template-hash is left out: with it the managed ReplicaSet would
	// adopt the pod (it selects on that label and adopts orphans), which
	// makes it a pod of the model, not a tenant's look-alike.
	labels := maps.Clone(live.Labels)
	delete(labels, appsv1.DefaultDeploymentUniqueLabelKey)
	spec := live.Spec.DeepCopy()
	// Set by the scheduler and by admission, which compute them again.
	spec.NodeName, spec.Priority, spec.PreemptionPolicy = "", nil, nil
	rogue := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "rogue-" + randomSuffix(), Namespace: ns, Labels: labels, Annotations: maps.Clone(live.Annotations)},
		Spec:       *spec,
	}
	if err := tenantClient(t, ns, "edit").Create(ctx, rogue); err != nil {
		// The admission guard (issue 13) may refuse such a pod outright;
		// its refusal must name the model.
		if (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && strings.Contains(err.Error(), pm.Name) {
			t.Logf("The rogue pod was refused at admission: %v", err)
			return
		}
		t.Fatalf("creating the rogue pod as the edit tenant: %v", err)
	}
	t.Logf("Created pod %s as the edit tenant: the model pod's spec, ServiceAccount %s, no owner", rogue.Name, spec.ServiceAccountName)

	refused := waitForPodLogged(t, ns, rogue.Name, mlv1alpha1.ContainerUnseal, 2*time.Minute, "refused the key (unseal failed)", func(p *corev1.Pod) bool {
		last := lastTermination(initStatus(p, mlv1alpha1.ContainerUnseal))
		return last != nil && last.ExitCode != 0
	})
	last := lastTermination(initStatus(refused, mlv1alpha1.ContainerUnseal))
	current, _ := podLog(ns, rogue.Name, mlv1alpha1.ContainerUnseal, false)
	previous, _ := podLog(ns, rogue.Name, mlv1alpha1.ContainerUnseal, true)
	refusal := last.Message + "\n" + current + "\n" + previous
	reasons := []string{mlv1alpha1.ReasonOwnerChainBroken, mlv1alpha1.ReasonPodSpecMismatch}
	if !strings.Contains(refusal, "denied") || !slices.ContainsFunc(reasons, func(r string) bool { return strings.Contains(refusal, r) }) {
		t.Errorf("the rogue's unseal container failed (exit %d) without naming the refusal and one of %v; termination message %q, log:\n%s%s",
			last.ExitCode, reasons, last.Message, previous, current)
	}
	t.Logf("Rogue unseal container: exit %d: %s", last.ExitCode, strings.TrimSpace(last.Message))

	// Nothing was decrypted into its memory volume: read while the unseal
	// container is known not to run, before and after the read.
	var left []string
	err = eventually(90*time.Second, func() error {
		before, err := client.CoreV1().Pods(ns).Get(ctx, rogue.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		status := initStatus(before, mlv1alpha1.ContainerUnseal)
		if !stoppedAfterFailure(status) {
			return fmt.Errorf("the rogue's unseal container is not stopped after a failure: %s", describeStatus(before))
		}
		volume := filepath.Join(e.workDir, "run", "kubelet", "pods", string(before.UID), "volumes", "kubernetes.io~empty-dir", "model")
		entries, err := os.ReadDir(volume)
		if err != nil {
			return fmt.Errorf("reading the rogue pod's memory volume on the node: %w", err)
		}
		after, err := client.CoreV1().Pods(ns).Get(ctx, rogue.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if now := initStatus(after, mlv1alpha1.ContainerUnseal); !stoppedAfterFailure(now) || now.RestartCount != status.RestartCount {
			return fmt.Errorf("the rogue's unseal container restarted while its volume was read")
		}
		left = dirNames(entries)
		for _, s := range after.Status.ContainerStatuses {
			if s.Name == mlv1alpha1.ContainerServer && (s.State.Running != nil || s.State.Terminated != nil || s.RestartCount > 0) {
				t.Errorf("the rogue pod's server container started: %s", describeStatus(after))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("the rogue pod's memory volume holds %v; want nothing", left)
	}

	ev := waitForKeyEvent(t, ns, pm.Name, rogue.Name, 30*time.Second, reasons...)
	if ev.Type != corev1.EventTypeWarning {
		t.Errorf("the denial Event is of type %s, want Warning: %s", ev.Type, ev.Note)
	}
	t.Logf("Event %s: %s", ev.Reason, ev.Note)
	for _, ev := range modelEvents(t, ns, pm.Name) {
		if ev.Reason == mlv1alpha1.ReasonKeyReleased && eventNamesPod(ev, rogue.Name) {
			t.Errorf("the data key was released to the rogue pod: %s", ev.Note)
		}
	}

	// The model's own pod still serves.
	own := waitForPod(t, ns, modelPod, 30*time.Second, "still Ready", podReady)
	if own.UID != live.UID {
		t.Errorf("the model's pod was replaced while the rogue pod ran")
	}
	// A look-alike pod is not the model's (its owner is no managed
	// ReplicaSet), so the model's status should not change; logged, not
	// asserted, for whoever reads a failure.
	now := &mlv1alpha1.ProtectedModel{}
	if err := modelClient(t).Get(ctx, crclient.ObjectKeyFromObject(pm), now); err == nil {
		t.Logf("Model after the rogue pod: phase %s; Ready %+v; WeightsVerified %+v", now.Status.Phase,
			condition(now, mlv1alpha1.ConditionReady), condition(now, mlv1alpha1.ConditionWeightsVerified))
	}
}

// The threat model's tenants, one bound to the built-in edit ClusterRole
// and one to admin in the model's namespace, read everything they may there:
// every namespaced type that discovery lists and they may list, each object
// listed and got one by one, and every container's log. None of it holds a
// byte of the KEK or of the data key, raw, hex or base64 (standard or URL
// alphabet, at any alignment, also nested in base64). Control keys planted
// in a Secret, a ConfigMap and a pod's log prove that the scan reads and
// decodes what it should.
func testTenantScan(t *testing.T, e *modelEnv, ns string) {
	ctx := context.Background()
	control, nested := randomKey(t), randomKey(t)
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "scan-control"},
		Data:       map[string][]byte{"value": control},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "scan-control-nested"},
		Data:       map[string][]byte{"value": []byte(base64.StdEncoding.EncodeToString(nested))},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "scan-control"},
		Data:       map[string]string{"value": base64.RawURLEncoding.EncodeToString(control)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	printer := restrictedContainer("control", "env", "SCAN_CONTROL")
	printer.Env = []corev1.EnvVar{{Name: "SCAN_CONTROL", Value: hex.EncodeToString(control)}}
	logPod := restrictedPod(ns, "scan-control", nil, printer)
	logPod.Spec.RestartPolicy = corev1.RestartPolicyNever
	createPod(t, logPod)
	waitForPod(t, ns, logPod.Name, 90*time.Second, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })

	sc := newKeyScanner(map[string][]byte{"KEK": e.kek, "DEK": e.dek, "control": control, "nested control": nested})
	wantControls := []keyFinding{
		{where: "secrets scan-control (list)", key: "control"},
		{where: "secrets scan-control (get)", key: "control"},
		{where: "secrets scan-control-nested (get)", key: "nested control"},
		{where: "configmaps scan-control (get)", key: "control"},
		{where: "pods/log scan-control/control", key: "control"},
	}
	// What the built-in roles let a tenant read; a scan that missed one of
	// them would prove little.
	mustRead := []string{"secrets", "configmaps", "pods", "events", "serviceaccounts", "deployments.apps", "replicasets.apps"}
	for _, role := range []string{"edit", "admin"} {
		res := scanAsTenant(t, ns, role, sc)
		found := map[keyFinding]bool{}
		for _, f := range res.findings {
			switch f.key {
			case "KEK", "DEK":
				// Never print the key, only where and how it was found.
				t.Errorf("the %s tenant reads %s bytes (%s) in %s", role, f.key, f.form, f.where)
			default:
				found[keyFinding{where: f.where, key: f.key}] = true
			}
		}
		for _, want := range wantControls {
			if !found[want] {
				t.Errorf("control: the %s tenant's scan did not find the %s key planted in %s: the scan does not see what it should", role, want.key, want.where)
			}
		}
		for _, r := range mustRead {
			if !slices.Contains(res.listed, r) {
				t.Errorf("the %s tenant's scan did not list %s (listed %v; refused %v)", role, r, res.listed, res.refused)
			}
		}
		t.Logf("%s tenant: listed %d resource types (%d refused: %s), %d objects listed and %d got one by one, %d container logs (%d without one yet); %d KiB scanned; %d control findings, no KEK or DEK bytes",
			role, len(res.listed), len(res.refused), strings.Join(res.refused, ", "), res.objects, res.gets, res.logs, res.noLog, res.bytes>>10, len(found))
	}

	// Where the KEK does live, neither tenant may read.
	for _, role := range []string{"edit", "admin"} {
		err := tenantClient(t, ns, role).Get(ctx, crclient.ObjectKey{Namespace: e.key.namespace, Name: e.key.secret}, &corev1.Secret{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("the %s tenant of %s reading the KEK Secret %s/%s: err = %v, want Forbidden", role, ns, e.key.namespace, e.key.secret, err)
		}
	}
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// tenantScan is what one tenant's scan read and found.
type tenantScan struct {
	// listed and refused name the resource types ("deployments.apps") the
	// tenant could list, and those it was forbidden to.
	listed, refused []string
	objects, gets   int
	logs, noLog     int
	bytes           int
	findings        []keyFinding
}

// scanAsTenant reads, as the tenant bound to role in ns, every object of
// every type discovery offers and the tenant may list (in ns for namespaced
// types, cluster-wide for the others), each again by name, and every log of
// every container of every pod in ns, the previous run's too, and scans all
// of it.
func scanAsTenant(t *testing.T, ns, role string, sc *keyScanner) *tenantScan {
	t.Helper()
	ctx := context.Background()
	cfg := tenantConfig(t, ns, role)
	cfg.QPS, cfg.Burst = 100, 200
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The RoleBinding counts once the authorizer's cache has it.
	if err := eventually(20*time.Second, func() error {
		_, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err
	}); err != nil {
		t.Fatalf("%s cannot list pods in %s: %v", cfg.Impersonate.UserName, ns, err)
	}

	res := &tenantScan{}
	scan := func(where string, data []byte) {
		res.bytes += len(data)
		res.findings = append(res.findings, sc.scan(where, data)...)
	}
	for _, r := range listableResources(t, disc) {
		name := r.gvr.Resource
		if r.gvr.Group != "" {
			name += "." + r.gvr.Group
		}
		var ri dynamic.ResourceInterface = dyn.Resource(r.gvr)
		if r.namespaced {
			ri = dyn.Resource(r.gvr).Namespace(ns)
		}
		list, err := ri.List(ctx, metav1.ListOptions{})
		switch {
		case apierrors.IsForbidden(err):
			res.refused = append(res.refused, name)
			continue
		case apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err):
			t.Logf("%s tenant: %s cannot be listed: %v", role, name, err)
			continue
		case err != nil:
			t.Errorf("%s tenant: listing %s: %v", role, name, err)
			continue
		}
		res.listed = append(res.listed, name)
		for i := range list.Items {
			item := &list.Items[i]
			data, err := item.MarshalJSON()
			if err != nil {
				t.Errorf("encoding %s %s: %v", name, item.GetName(), err)
				continue
			}
			res.objects++
			scan(fmt.Sprintf("%s %s (list)", name, item.GetName()), data)
			got, err := ri.Get(ctx, item.GetName(), metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				continue // deleted since the list, e.g. an expired Event
			case err != nil:
				t.Errorf("%s tenant: getting %s %s, which it could list: %v", role, name, item.GetName(), err)
				continue
			}
			if data, err = got.MarshalJSON(); err != nil {
				t.Errorf("encoding %s %s: %v", name, item.GetName(), err)
				continue
			}
			res.gets++
			scan(fmt.Sprintf("%s %s (get)", name, item.GetName()), data)
		}
	}

	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("%s tenant: listing pods: %v", role, err)
	}
	for _, p := range pods.Items {
		restarts := map[string]int32{}
		for _, s := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses) {
			restarts[s.Name] = s.RestartCount
		}
		var names []string
		for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
			names = append(names, c.Name)
		}
		for _, c := range p.Spec.EphemeralContainers {
			names = append(names, c.Name)
		}
		for _, c := range names {
			for _, previous := range []bool{false, true} {
				if previous && restarts[c] == 0 {
					continue
				}
				raw, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: c, Previous: previous}).DoRaw(ctx)
				switch {
				case apierrors.IsBadRequest(err):
					res.noLog++ // the container has not started
					continue
				case err != nil:
					t.Errorf("%s tenant: reading the log of %s/%s: %v", role, p.Name, c, err)
					continue
				}
				res.logs++
				where := fmt.Sprintf("pods/log %s/%s", p.Name, c)
				if previous {
					where += " (previous)"
				}
				scan(where, raw)
			}
		}
	}
	return res
}

// keyNeedle is one encoding of a key the scan looks for.
type keyNeedle struct {
	key, form string
	b         []byte
}

// keyFinding is where one key was found, and in which form.
type keyFinding struct {
	where, key, form string
}

// keyScanner finds keys in bytes: raw, hex, and base64 in the standard and
// the URL alphabet at each of the three alignments a key can have inside a
// longer base64 text (the 42 characters that depend on the key's bytes
// alone), also inside base64 that it decodes, two levels deep (a Secret's
// value that is itself base64 text shows as base64 of base64).
type keyScanner struct {
	needles []keyNeedle
}

func newKeyScanner(named map[string][]byte) *keyScanner {
	s := &keyScanner{}
	for _, name := range slices.Sorted(maps.Keys(named)) {
		k := named[name]
		s.needles = append(s.needles,
			keyNeedle{name, "raw", k},
			keyNeedle{name, "hex", []byte(hex.EncodeToString(k))},
			keyNeedle{name, "upper-case hex", []byte(strings.ToUpper(hex.EncodeToString(k)))})
		for _, enc := range []struct {
			name string
			enc  *base64.Encoding
		}{{"base64", base64.StdEncoding}, {"base64url", base64.URLEncoding}} {
			for r := 0; r < 3; r++ {
				buf := make([]byte, r+len(k)+2)
				copy(buf[r:], k)
				text := enc.enc.EncodeToString(buf)
				from, to := (8*r+5)/6, (8*r+8*len(k))/6
				s.needles = append(s.needles, keyNeedle{name, fmt.Sprintf("%s, offset %d", enc.name, r), []byte(text[from:to])})
			}
		}
	}
	return s
}

// base64Token matches a run of base64 (either alphabet) long enough to hold
// 32 bytes.
var base64Token = regexp.MustCompile(`[A-Za-z0-9+/_-]{43,}={0,2}`)

func (s *keyScanner) scan(where string, data []byte) []keyFinding {
	var out []keyFinding
	seen := map[keyFinding]bool{}
	var walk func(data []byte, via string, depth int)
	walk = func(data []byte, via string, depth int) {
		for _, n := range s.needles {
			if bytes.Contains(data, n.b) {
				f := keyFinding{where: where, key: n.key, form: n.form + via}
				if !seen[f] {
					seen[f] = true
					out = append(out, f)
				}
			}
		}
		if depth == 2 {
			return
		}
		for _, tok := range base64Token.FindAll(data, -1) {
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
				if dec, err := enc.DecodeString(string(tok)); err == nil {
					walk(dec, via+", inside base64", depth+1)
					break
				}
			}
		}
	}
	walk(data, "", 0)
	return out
}

// A model in a namespace that its ModelKey does not select is not served:
// KeyAvailable is False with KeyNotPermitted, naming the ModelKey, and no
// data key goes to any of its pods.
func testKeyNotPermitted(t *testing.T, e *modelEnv) {
	// Not labelled for the env's ModelKey.
	ns := newNamespace(t, "e2e-pm-notpermitted")
	claim := e.provideBundle(t, ns, filepath.Join(e.scratch, "good"))
	pm := e.protectedModel(ns, "not-permitted", claim)
	createModel(t, pm)
	pm = waitForModel(t, ns, pm.Name, 2*time.Minute, "KeyAvailable=False KeyNotPermitted", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionKeyAvailable, metav1.ConditionFalse, mlv1alpha1.ReasonKeyNotPermitted)
	})
	key := condition(pm, mlv1alpha1.ConditionKeyAvailable)
	if !strings.Contains(key.Message, e.key.name) {
		t.Errorf("KeyAvailable message = %q, want it to name the ModelKey %s", key.Message, e.key.name)
	}
	if c := condition(pm, mlv1alpha1.ConditionReady); c.Status != metav1.ConditionFalse {
		t.Errorf("Ready = %+v, want False", c)
	}
	if described := describeModel(ns, pm.Name); !strings.Contains(described, mlv1alpha1.ReasonKeyNotPermitted) {
		t.Errorf("kubectl describe pm does not show KeyNotPermitted:\n%s", described)
	}
	for _, p := range modelPods(t, ns, pm.Name) {
		if podReady(&p) {
			t.Errorf("pod %s of a model whose ModelKey does not select its namespace is Ready", p.Name)
		}
	}
	for _, ev := range modelEvents(t, ns, pm.Name) {
		switch {
		case ev.Reason == mlv1alpha1.ReasonKeyReleased:
			t.Errorf("a data key was released for a model whose ModelKey does not select its namespace: %s", ev.Note)
		case ev.Reason == mlv1alpha1.ReasonKeyNotPermitted:
			t.Logf("Event %s: %s", ev.Reason, ev.Note)
		}
	}
	t.Logf("KeyAvailable=False %s: %s", key.Reason, key.Message)
}

// restartModel is the model the manager-restart case uses, created before
// the parallel cases so that it serves when that case starts.
type restartModel struct {
	namespace, name string
}

func startRestartModel(t *testing.T, e *modelEnv) restartModel {
	t.Helper()
	ns := e.newNamespace(t, "e2e-pm-restart")
	claim := e.provideBundle(t, ns, filepath.Join(e.scratch, "good"))
	pm := e.protectedModel(ns, "restart", claim)
	createModel(t, pm)
	return restartModel{namespace: ns, name: pm.Name}
}

// A model pod that starts while the manager restarts becomes Ready by
// itself: its unseal container asks any replica that answers and retries
// with backoff, in one run, and the restarted manager neither rolls nor
// scales the model.
func testManagerRestart(t *testing.T, e *modelEnv, op *operatorRelease, m restartModel) {
	ctx := context.Background()
	ns := m.namespace
	waitForModel(t, ns, m.name, 3*time.Minute, "Ready", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
	})
	pods := modelPods(t, ns, m.name)
	if len(pods) != 1 {
		t.Fatalf("model %s has %d server pods, want 1", m.name, len(pods))
	}
	old := pods[0]

	deployName := op.name + "-controller-manager"
	deployments := client.AppsV1().Deployments(op.namespace)
	deploy, err := deployments.Get(ctx, deployName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading the manager Deployment: %v", err)
	}
	replicas := ptr.Deref(deploy.Spec.Replicas, 1)
	selector, err := metav1.LabelSelectorAsSelector(deploy.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	scale := func(n int32) error {
		return eventually(30*time.Second, func() error {
			s, err := deployments.GetScale(ctx, deployName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Spec.Replicas = n
			_, err = deployments.UpdateScale(ctx, deployName, s, metav1.UpdateOptions{})
			return err
		})
	}
	managerPods := func() ([]corev1.Pod, error) {
		list, err := client.CoreV1().Pods(op.namespace).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
		if err != nil {
			return nil, err
		}
		return list.Items, nil
	}
	restored := false
	t.Cleanup(func() {
		if restored {
			return
		}
		// The cases after this one need the manager.
		if err := scale(replicas); err != nil {
			t.Errorf("scaling the manager back to %d: %v", replicas, err)
		}
		if _, err := runKubectl("-n", op.namespace, "rollout", "status", "deployment/"+deployName, "--timeout=120s"); err != nil {
			t.Errorf("the manager did not come back: %v", err)
		}
	})

	// The admission guard fails closed: while no replica serves it, not
	// even the ReplicaSet controller may create a model's pod (see
	// testGuardFailsClosed). So the restart is the one a cluster sees, a
	// rolling restart of every replica, begun as the model's new pod
	// starts: its unseal container asks for its key while replicas come
	// and go.
	if err := client.CoreV1().Pods(ns).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatalf("deleting the model pod %s: %v", old.Name, err)
	}
	stopped := time.Now()
	if _, err := runKubectl("-n", op.namespace, "rollout", "restart", "deployment/"+deployName); err != nil {
		t.Fatalf("restarting the manager: %v", err)
	}
	restored = true
	var starting corev1.Pod
	if err := eventually(60*time.Second, func() error {
		for _, p := range modelPods(t, ns, m.name) {
			if p.Name != old.Name && p.DeletionTimestamp == nil {
				starting = p
				return nil
			}
		}
		return fmt.Errorf("the ReplicaSet has not replaced pod %s", old.Name)
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("Pod %s started %.1fs into the manager's rolling restart", starting.Name, time.Since(stopped).Seconds())
	if _, err := runKubectl("-n", op.namespace, "rollout", "status", "deployment/"+deployName, "--timeout=180s"); err != nil {
		t.Fatalf("the manager's rolling restart did not finish: %v", err)
	}
	restarted := time.Now()
	pods, err = managerPods()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Manager restarted in %.1fs; its pods now: %v", time.Since(stopped).Seconds(), podNames(pods))
	var ready *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx, starting.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			// Stop waiting: the pod that waited for its key is gone.
			return false, err
		case err != nil:
			return false, nil
		}
		ready = p
		if p.DeletionTimestamp != nil {
			return false, fmt.Errorf("pod %s is being deleted", p.Name)
		}
		return podReady(p), nil
	})
	if apierrors.IsNotFound(err) || (err != nil && ready != nil && ready.DeletionTimestamp != nil) {
		op.dumpLogs(t)
		t.Fatalf("pod %s, which waited for its key, was deleted after the manager came back (%v): the restarted manager scaled or rolled the model's Deployment instead of letting the pod get its key; pods now: %v",
			starting.Name, err, podNames(modelPods(t, ns, m.name)))
	}
	if err != nil {
		log, _ := podLog(ns, starting.Name, mlv1alpha1.ContainerUnseal, false)
		previous, _ := podLog(ns, starting.Name, mlv1alpha1.ContainerUnseal, true)
		op.dumpLogs(t)
		t.Fatalf("pod %s did not become Ready within 3 minutes of the manager's restart; status: %s\nunseal log (previous run):\n%s\nunseal log:\n%s",
			starting.Name, describeStatus(ready), previous, log)
	}
	t.Logf("Pod %s Ready %.1fs after the manager's restart finished (%.1fs after it began)",
		starting.Name, time.Since(restarted).Seconds(), time.Since(stopped).Seconds())

	unseal := initStatus(ready, mlv1alpha1.ContainerUnseal)
	if unseal == nil || unseal.RestartCount != 0 {
		t.Errorf("the unseal container needed restarts to get its key: %+v", unseal)
	}
	if last := lastTermination(unseal); last == nil || last.ExitCode != 0 || !strings.HasPrefix(last.Message, "ok digest="+e.digest) {
		t.Errorf("unseal init container: termination %+v, want exit 0 and \"ok digest=%s …\"", last, e.digest)
	}
	if log, err := podLog(ns, starting.Name, mlv1alpha1.ContainerUnseal, false); err == nil {
		t.Logf("The unseal container retried %d times", strings.Count(log, "retrying"))
	}
	ev := waitForKeyEvent(t, ns, m.name, starting.Name, 30*time.Second, mlv1alpha1.ReasonKeyReleased)
	t.Logf("Event %s: %s", ev.Reason, ev.Note)

	// The restarted manager reconciles again, to the same pod template:
	// the pod that waited is the model's pod.
	waitForModel(t, ns, m.name, 2*time.Minute, "Ready after the restart", func(pm *mlv1alpha1.ProtectedModel) bool {
		return conditionIs(pm, mlv1alpha1.ConditionReady, metav1.ConditionTrue, mlv1alpha1.ReasonAvailable)
	})
	if names := podNames(modelPods(t, ns, m.name)); !slices.Equal(names, []string{starting.Name}) {
		t.Errorf("after the restart the model's pods are %v, want only %s: the restarted manager rolled the Deployment", names, starting.Name)
	}
	if err := eventually(60*time.Second, func() error {
		lease, err := client.CoordinationV1().Leases(op.namespace).Get(ctx, "modelguard.ml.modelguard.dev", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ptr.Deref(lease.Spec.HolderIdentity, "") == "" {
			return fmt.Errorf("the leader-election Lease has no holder")
		}
		return nil
	}); err != nil {
		t.Errorf("no manager leads after the restart: %v", err)
	}
}

// waitForPodLogged is waitForPod that also shows the container's log, and
// its previous run's, when timeout passes.
func waitForPodLogged(t *testing.T, ns, name, container string, timeout time.Duration, what string, done func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = pod
		return done(pod), nil
	})
	if err != nil {
		log, _ := podLog(ns, name, container, false)
		previous, _ := podLog(ns, name, container, true)
		t.Fatalf("pod %s/%s did not become %s within %s; status: %s\n%s log (previous run):\n%s\n%s log:\n%s",
			ns, name, what, timeout, describeStatus(last), container, previous, container, log)
	}
	return last
}

func podNames(pods []corev1.Pod) []string {
	names := make([]string, len(pods))
	for i := range pods {
		names[i] = pods[i].Name
	}
	return names
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// podLog reads a container's log, or its previous run's.
func podLog(ns, pod, container string, previous bool) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, Previous: previous}).DoRaw(ctx)
	return string(raw), err
}

// eventNamesPod tells whether a key-release Event names the pod, as a person
// reading `kubectl describe pm` sees it.
func eventNamesPod(ev eventsv1.Event, pod string) bool {
	return strings.Contains(ev.Note, pod)
}

// waitForKeyEvent waits for an Event on the model with one of reasons that
// names the pod, failing with the model's Events on timeout.
func waitForKeyEvent(t *testing.T, ns, model, pod string, timeout time.Duration, reasons ...string) eventsv1.Event {
	t.Helper()
	var found eventsv1.Event
	err := eventually(timeout, func() error {
		for _, ev := range modelEvents(t, ns, model) {
			if slices.Contains(reasons, ev.Reason) && eventNamesPod(ev, pod) {
				found = ev
				return nil
			}
		}
		return fmt.Errorf("no Event on ProtectedModel %s/%s with reason %s names pod %s", ns, model, strings.Join(reasons, " or "), pod)
	})
	if err != nil {
		t.Fatalf("%v; the model's Events:\n%s", err, formatEvents(modelEvents(t, ns, model)))
	}
	return found
}

func formatEvents(events []eventsv1.Event) string {
	var b strings.Builder
	for _, ev := range events {
		count := int32(1)
		if ev.Series != nil {
			count = ev.Series.Count
		}
		fmt.Fprintf(&b, "  %s %s (x%d): %s\n", ev.Type, ev.Reason, count, ev.Note)
	}
	return b.String()
}

// assertNoKeyObjects checks that the model's namespace holds neither a
// key-resolve Job nor a data-key Secret, nor any Secret ModelGuard manages:
// key release stores no key in the cluster.
func assertNoKeyObjects(t *testing.T, ns, model string) {
	t.Helper()
	ctx := context.Background()
	jobs, err := client.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing Jobs in %s: %v", ns, err)
	}
	for _, j := range jobs.Items {
		t.Errorf("Job %s/%s exists: no Job runs for a model's key", ns, j.Name)
	}
	secrets, err := client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing Secrets in %s: %v", ns, err)
	}
	for _, s := range secrets.Items {
		if s.Name == model+"-data-key" || s.Labels[mlv1alpha1.LabelManagedBy] == mlv1alpha1.ManagedByValue {
			t.Errorf("Secret %s/%s exists: no data key is stored in the cluster", ns, s.Name)
		}
	}
}

// stoppedAfterFailure reports whether a container is not running and its
// latest run failed, whether or not the kubelet has restarted it yet: its
// volumes then hold whatever that run left.
func stoppedAfterFailure(s *corev1.ContainerStatus) bool {
	last := lastTermination(s)
	return s != nil && s.State.Running == nil && last != nil && last.ExitCode != 0
}
