//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"

	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// operatorRelease is a Helm release of charts/modelguard on the cluster.
type operatorRelease struct {
	name, namespace string
	uninstalled     bool
}

// The operator runs in-cluster from the Helm chart with the locally built
// image, and every ProtectedModel case runs against it: the chart's install
// is what brings the product up, so the cases double as the chart's proof
// that the operator it installs reconciles models to Ready and releases
// their keys. At the end `helm uninstall` must leave nothing of the release
// but the CRDs.
func TestHelmInstalledOperator(t *testing.T) {
	t.Parallel()
	op := installOperator(t)
	// The sealed model and its ModelKey, whose KEK Secret lives in the
	// operator's namespace.
	env := newModelEnv(t, op)
	// Started now, so that it is serving by the time the manager restart
	// case, which runs after the parallel cases, needs it.
	restart := startRestartModel(t, env)
	// The model the admission guard cases attack, created here so that it
	// outlives the parallel cases.
	guard := newGuardedModel(t, env)

	t.Run("ProtectedModel", func(t *testing.T) {
		t.Run("ServesSealedWeights", func(t *testing.T) {
			t.Parallel()
			testServesSealedWeights(t, env)
		})
		t.Run("TamperedBundle", func(t *testing.T) {
			t.Parallel()
			testTamperedBundle(t, env)
		})
		t.Run("WrongDigest", func(t *testing.T) {
			t.Parallel()
			testWrongDigest(t, env)
		})
		t.Run("GPUScheduling", func(t *testing.T) {
			t.Parallel()
			testGPUScheduling(t, env)
		})
		t.Run("KeyRelease", func(t *testing.T) {
			t.Parallel()
			testKeyRelease(t, env)
		})
		t.Run("ModelKeyNotSelectingNamespace", func(t *testing.T) {
			t.Parallel()
			testKeyNotPermitted(t, env)
		})
		t.Run("AdmissionGuard", func(t *testing.T) {
			t.Parallel()
			guard.waitServing(t)
			testAdmissionGuard(t, guard)
		})
	})

	// It stops the manager, which the cases above must not see, so it runs
	// after them.
	t.Run("ManagerRestartWhileModelPodStarts", func(t *testing.T) {
		testManagerRestart(t, env, op, restart)
	})
	// It stops the manager too.
	t.Run("GuardFailsClosed", func(t *testing.T) {
		if guard.pod == "" {
			t.Fatal("no guarded model: the AdmissionGuard case did not get that far")
		}
		testGuardFailsClosed(t, op, guard)
	})

	t.Run("Uninstall", func(t *testing.T) {
		// The KEK Secret is ours, not the release's: remove it and its
		// ModelKey first, so that the sweep sees only what Helm and the
		// manager left.
		env.key.remove(t)
		op.uninstall(t)
	})
}

func helmBinary(t testing.TB) string {
	t.Helper()
	helm := os.Getenv("HELM")
	if helm == "" {
		helm = filepath.Join(repoRoot(), "bin", "helm")
	}
	if _, err := os.Stat(helm); err != nil {
		t.Fatalf("helm is missing at %s: run `make test-e2e`, which builds it: %v", helm, err)
	}
	return helm
}

func runHelm(t testing.TB, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, helmBinary(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// installOperator installs charts/modelguard into a fresh namespace that
// enforces Pod Security "restricted" (so the manager pod must pass it), with
// the image the cluster imported, and waits for the manager to be Ready.
func installOperator(t testing.TB) *operatorRelease {
	t.Helper()
	op := &operatorRelease{name: "modelguard", namespace: newNamespace(t, "e2e-operator")}
	repo, tag, ok := strings.Cut(images.ModelGuardRef, ":")
	if !ok {
		t.Fatalf("image reference %q has no tag", images.ModelGuardRef)
	}
	t.Cleanup(func() {
		if t.Failed() {
			op.dumpLogs(t)
		}
		if !op.uninstalled {
			_, _ = runHelm(t, 2*time.Minute, "uninstall", op.name, "-n", op.namespace, "--wait")
		}
	})
	began := time.Now()
	if _, err := runHelm(t, 4*time.Minute, "install", op.name, filepath.Join(repoRoot(), "charts", "modelguard"),
		"-n", op.namespace,
		"--set", "image.repository="+repo, "--set", "image.tag="+tag, "--set", "image.pullPolicy=Never",
		"--wait", "--timeout", "3m"); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm install: the operator is Ready after %.1fs", time.Since(began).Seconds())

	ctx := context.Background()
	deploy, err := client.AppsV1().Deployments(op.namespace).Get(ctx, op.name+"-controller-manager", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading the manager Deployment: %v", err)
	}
	if deploy.Status.ReadyReplicas < 1 {
		t.Fatalf("the manager Deployment has %d ready replicas after helm install --wait", deploy.Status.ReadyReplicas)
	}
	manager := deploy.Spec.Template.Spec.Containers[0]
	if manager.Image != images.ModelGuardRef {
		t.Errorf("manager image = %q, want %q", manager.Image, images.ModelGuardRef)
	}
	// With no unsealImage value, the unseal init containers run the
	// operator's own image, which holds /modelguard.
	if want := "--unseal-image=" + images.ModelGuardRef; !slices.Contains(manager.Args, want) {
		t.Errorf("manager args %q lack %q: the chart's unsealImage default does not follow image.*", manager.Args, want)
	}
	pods, err := client.CoreV1().Pods(op.namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + op.name})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("listing the manager pods: %d pods, %v", len(pods.Items), err)
	}
	for _, p := range pods.Items {
		if p.Spec.ServiceAccountName != op.name+"-controller-manager" {
			t.Errorf("manager pod %s runs as %q, want the chart's ServiceAccount", p.Name, p.Spec.ServiceAccountName)
		}
	}
	return op
}

// dumpLogs logs the manager's output for diagnosis.
func (op *operatorRelease) dumpLogs(t testing.TB) {
	out, _ := exec.Command(kubectl, "logs", "-n", op.namespace, "deployment/"+op.name+"-controller-manager", "--tail=200").CombinedOutput()
	t.Logf("manager logs:\n%s", out)
}

// uninstall runs `helm uninstall` and checks that nothing of the release is
// left: no object in any namespace labelled as the release's, no
// cluster-scoped object named after it, nothing in the release namespace
// beyond what every namespace has, while the CRDs (which Helm never deletes)
// stay. That includes the manager's leader-election Lease, which the manager
// creates at run time (Helm never owned it) and deletes when it exits.
func (op *operatorRelease) uninstall(t *testing.T) {
	t.Helper()
	// Control: before the uninstall the sweep sees the release.
	dyn, disc := dynamicClients(t)
	resources := listableResources(t, disc)
	before := strings.Join(op.sweep(dyn, resources), "\n")
	for _, want := range []string{"deployments " + op.namespace + "/" + op.name + "-controller-manager ", "clusterroles /" + op.name + "-manager-role ",
		"leases " + op.namespace + "/modelguard.ml.modelguard.dev "} {
		if !strings.Contains(before, want) {
			t.Fatalf("control: before helm uninstall the sweep does not find %q; it found:\n%s", want, before)
		}
	}

	began := time.Now()
	if _, err := runHelm(t, 2*time.Minute, "uninstall", op.name, "-n", op.namespace, "--wait", "--timeout", "90s"); err != nil {
		t.Fatal(err)
	}
	op.uninstalled = true
	t.Logf("helm uninstall returned after %.1fs", time.Since(began).Seconds())
	began = time.Now()
	waitedFor := map[string]bool{}
	err := eventually(60*time.Second, func() error {
		left := op.sweep(dyn, resources)
		if len(left) > 0 {
			for _, l := range left {
				waitedFor[l] = true
			}
			return fmt.Errorf("left after helm uninstall: %s", strings.Join(left, "; "))
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	} else if len(waitedFor) > 0 {
		t.Logf("the release was gone %.1fs later; waited for the garbage collector to remove: %s",
			time.Since(began).Seconds(), strings.Join(slices.Sorted(maps.Keys(waitedFor)), "; "))
	}

	for _, crd := range []string{"protectedmodels.ml.modelguard.dev", "trainingjobs.ml.modelguard.dev", "modelkeys.ml.modelguard.dev"} {
		gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
		if _, err := dyn.Resource(gvr).Get(context.Background(), crd, metav1.GetOptions{}); err != nil {
			t.Errorf("CRD %s after helm uninstall: %v; Helm keeps the CRDs it installed from crds/", crd, err)
		}
	}
	if _, err := client.AppsV1().Deployments(op.namespace).Get(context.Background(), op.name+"-controller-manager", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("manager Deployment after helm uninstall: err = %v, want NotFound", err)
	}
}

// sweep lists what of the release exists: objects in any namespace
// labelled as the release's, cluster-scoped objects named after it, and
// everything in the release namespace that not every namespace has.
func (op *operatorRelease) sweep(dyn dynamic.Interface, resources []apiResource) []string {
	selector := "app.kubernetes.io/instance=" + op.name
	var found []string
	for _, r := range resources {
		// Every object the chart renders carries the release's labels.
		list, err := dyn.Resource(r.gvr).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err == nil {
			for _, o := range list.Items {
				found = append(found, fmt.Sprintf("%s %s/%s (labelled %s)", r.gvr.Resource, o.GetNamespace(), o.GetName(), selector))
			}
		}
		if !r.namespaced {
			for _, o := range mustList(dyn, r.gvr, "") {
				if strings.HasPrefix(o, op.name+"-") || o == op.name {
					found = append(found, fmt.Sprintf("%s %s (named after the release)", r.gvr.Resource, o))
				}
			}
			continue
		}
		for _, o := range mustList(dyn, r.gvr, op.namespace) {
			if !namespaceDefault(r.gvr, o) {
				found = append(found, fmt.Sprintf("%s %s/%s (in the release namespace)", r.gvr.Resource, op.namespace, o))
			}
		}
	}
	return found
}

// namespaceDefault tells whether an object exists in every namespace,
// whatever was installed there, or is history rather than state.
func namespaceDefault(gvr schema.GroupVersionResource, name string) bool {
	switch {
	case gvr.Resource == "serviceaccounts" && name == "default":
		return true
	case gvr.Resource == "configmaps" && name == "kube-root-ca.crt":
		return true
	case gvr.Resource == "events":
		return true
	}
	return false
}

type apiResource struct {
	gvr        schema.GroupVersionResource
	namespaced bool
}

func dynamicClients(t *testing.T) (dynamic.Interface, discovery.DiscoveryInterface) {
	t.Helper()
	cfg := restConfig(t)
	// A sweep lists every resource type twice; the default client-side
	// limit (5 requests/s) would make it take half a minute.
	cfg.QPS, cfg.Burst = 200, 400
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("building a dynamic client: %v", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatalf("building a discovery client: %v", err)
	}
	return dyn, disc
}

// listableResources are every resource type the API server can list, in
// their preferred versions.
func listableResources(t *testing.T, disc discovery.DiscoveryInterface) []apiResource {
	t.Helper()
	lists, err := disc.ServerPreferredResources()
	if err != nil && len(lists) == 0 {
		t.Fatalf("discovering the API's resources: %v", err)
	}
	var out []apiResource
	for _, list := range lists {
		gv, err := schema.ParseGroupVersion(list.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range list.APIResources {
			if strings.Contains(r.Name, "/") || !slices.Contains(r.Verbs, "list") {
				continue
			}
			out = append(out, apiResource{gvr: gv.WithResource(r.Name), namespaced: r.Namespaced})
		}
	}
	return out
}

// mustList returns the names of a resource's objects in namespace (""
// for cluster-scoped or all), or none when it cannot be listed.
func mustList(dyn dynamic.Interface, gvr schema.GroupVersionResource, namespace string) []string {
	var ri dynamic.ResourceInterface = dyn.Resource(gvr)
	if namespace != "" {
		ri = dyn.Resource(gvr).Namespace(namespace)
	}
	list, err := ri.List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(list.Items))
	for _, o := range list.Items {
		names = append(names, o.GetName())
	}
	return names
}
