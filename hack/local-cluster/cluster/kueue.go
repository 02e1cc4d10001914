package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// Kueue, installed on demand into a running cluster by `local-cluster kueue`:
// the real sigs.k8s.io/kueue manager (hack/tools/kueue), its CRDs, RBAC and
// webhooks from its own config/default (rendered by kustomize into
// KueueManifests at build time), with its internal certificate management
// issuing the webhook certificates. Then a ResourceFlavor for the fake GPUs, a
// ClusterQueue with the node's 2 GPUs, and a LocalQueue in default.

// Names of the Kueue install.
const (
	KueueNamespace  = "kueue-system"
	KueueDeployment = "kueue-controller-manager"
	// KueueClusterQueue and KueueLocalQueue are the queues Kueue is installed
	// with; a namespace's own LocalQueue may point at the ClusterQueue.
	KueueClusterQueue = "fake-gpus"
	KueueLocalQueue   = "fake-gpus"
	KueueFlavor       = "fake-gpu"
	// KueueQueueLabel is the label that puts a Job into a LocalQueue.
	KueueQueueLabel = "kueue.x-k8s.io/queue-name"
)

// kueueManagerConfig is the manager's Configuration: only the batch/job
// integration (no other job CRDs exist here), no leader election (one
// replica), and the internal certificate management of Kueue's default.
const kueueManagerConfig = `apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
health:
  healthProbeBindAddress: :8081
metrics:
  bindAddress: :8443
webhook:
  port: 9443
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: true
integrations:
  frameworks:
  - "batch/job"
`

// kueueDroppedWebhooks are webhooks of Kueue's default install for built-in
// kinds whose integrations are disabled here. They match every Pod,
// Deployment and StatefulSet outside kube-system with failurePolicy Fail, so
// keeping them would make every other pod depend on Kueue being up.
var kueueDroppedWebhooks = map[string]bool{
	"mpod.kb.io": true, "mdeployment.kb.io": true, "mstatefulset.kb.io": true,
	"vpod.kb.io": true, "vdeployment.kb.io": true, "vstatefulset.kb.io": true,
}

// renderKueue adapts Kueue's rendered default install to the local cluster:
// our image (no registry here), the manager config above, smaller requests
// for a 2-core node, no visibility APIServices (the API server has no
// aggregation layer configured, and an unavailable APIService breaks
// discovery and namespace deletion for everyone), and no webhooks for the
// disabled built-in integrations.
func renderKueue(manifests []byte) ([]byte, error) {
	var out bytes.Buffer
	for i, doc := range strings.Split(string(manifests), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("parsing document %d of Kueue's manifests: %w", i, err)
		}
		if obj == nil {
			continue
		}
		kind, _ := obj["kind"].(string)
		name, _ := nested(obj, "metadata", "name").(string)
		switch {
		case kind == "APIService":
			continue
		case kind == "ConfigMap" && name == "kueue-manager-config":
			obj["data"] = map[string]any{"controller_manager_config.yaml": kueueManagerConfig}
		case kind == "Deployment" && name == KueueDeployment:
			if err := adaptKueueDeployment(obj); err != nil {
				return nil, err
			}
		case kind == "MutatingWebhookConfiguration" || kind == "ValidatingWebhookConfiguration":
			hooks, _ := obj["webhooks"].([]any)
			var kept []any
			for _, h := range hooks {
				if hm, ok := h.(map[string]any); ok && kueueDroppedWebhooks[fmt.Sprint(hm["name"])] {
					continue
				}
				kept = append(kept, h)
			}
			obj["webhooks"] = kept
		}
		data, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("rendering %s %s: %w", kind, name, err)
		}
		out.WriteString("---\n")
		out.Write(data)
	}
	return out.Bytes(), nil
}

func adaptKueueDeployment(obj map[string]any) error {
	containers, _ := nested(obj, "spec", "template", "spec", "containers").([]any)
	for _, c := range containers {
		cm, ok := c.(map[string]any)
		if !ok || cm["name"] != "manager" {
			continue
		}
		cm["image"] = images.KueueRef
		cm["imagePullPolicy"] = "Never"
		cm["resources"] = map[string]any{
			"requests": map[string]any{"cpu": "50m", "memory": "128Mi"},
			"limits":   map[string]any{"memory": "512Mi"},
		}
		if sc, ok := cm["securityContext"].(map[string]any); ok {
			sc["seccompProfile"] = map[string]any{"type": "RuntimeDefault"}
		}
		return nil
	}
	return errors.New("kueue's Deployment has no container named manager")
}

func nested(obj map[string]any, keys ...string) any {
	var cur any = obj
	for _, k := range keys {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

// kueueQueues are the ResourceFlavor, ClusterQueue and LocalQueue.
func (c Config) kueueQueues() string {
	return fmt.Sprintf(`apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata:
  name: %[1]s
spec:
  nodeLabels:
    nvidia.com/gpu.present: "true"
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata:
  name: %[2]s
spec:
  namespaceSelector: {}
  resourceGroups:
  - coveredResources: ["cpu", "memory", "%[4]s"]
    flavors:
    - name: %[1]s
      resources:
      - name: cpu
        nominalQuota: "2"
      - name: memory
        nominalQuota: 4Gi
      - name: %[4]s
        nominalQuota: %[5]d
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata:
  name: %[3]s
  namespace: default
spec:
  clusterQueue: %[2]s
`, KueueFlavor, KueueClusterQueue, KueueLocalQueue, c.GPUResource, c.GPUCount)
}

// InstallKueue installs Kueue into the running cluster, or checks the one
// installed: it imports the image, applies the manifests, waits until the
// manager is available and its webhooks answer, then applies the queues.
func (c *Cluster) InstallKueue(ctx context.Context, manifestsPath, imageTarball string) error {
	began := time.Now()
	if !c.Running(ctx) {
		return errors.New("the local cluster is not up: `make cluster-up` first (or use `local-cluster run`)")
	}
	for path, target := range map[string]string{manifestsPath: "make kueue", imageTarball: "make kueue"} {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s is missing (`%s` builds Kueue %s): %w", path, target, images.KueueVersion, err)
		}
	}
	raw, err := os.ReadFile(manifestsPath)
	if err != nil {
		return err
	}
	rendered, err := renderKueue(raw)
	if err != nil {
		return err
	}
	installPath := filepath.Join(c.p.Configs, "kueue.yaml")
	if err := os.WriteFile(installPath, rendered, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", installPath, err)
	}
	queuesPath := filepath.Join(c.p.Configs, "kueue-queues.yaml")
	if err := os.WriteFile(queuesPath, []byte(c.cfg.kueueQueues()), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", queuesPath, err)
	}
	if _, err := run(ctx, 2*time.Minute, nil, "ctr", "--address", c.p.ContainerdSocket, "-n", "k8s.io", "images", "import", imageTarball); err != nil {
		return fmt.Errorf("importing the Kueue image: %w", err)
	}
	kubectl := func(timeout time.Duration, args ...string) error {
		args = append([]string{"--kubeconfig", c.p.AdminKubeconfig}, args...)
		_, err := run(ctx, timeout, nil, c.cfg.bin("kubectl"), args...)
		return err
	}
	if err := kubectl(2*time.Minute, "apply", "--server-side", "--force-conflicts", "-f", installPath); err != nil {
		return fmt.Errorf("applying Kueue's manifests: %w", err)
	}
	client, err := c.client()
	if err != nil {
		return err
	}
	// The manager becomes ready once its certificate controller has written
	// the webhook Secret and the kubelet has synced it into the pod, which can
	// take a kubelet sync period (about a minute).
	deadline := time.Now().Add(4 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		d, err := client.AppsV1().Deployments(KueueNamespace).Get(ctx, KueueDeployment, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err
		case d.Status.AvailableReplicas < 1:
			last = fmt.Errorf("%s has no available replica", KueueDeployment)
		default:
			// Kueue's webhooks serve ResourceFlavors: an accepted apply means
			// the certificates are in place on both sides.
			last = kubectl(time.Minute, "apply", "--server-side", "--force-conflicts", "-f", queuesPath)
		}
		if last == nil {
			c.logf("Kueue %s is installed and serving (%.1fs); queues: ClusterQueue %s (%d %s), LocalQueue default/%s", images.KueueVersion, time.Since(began).Seconds(), KueueClusterQueue, c.cfg.GPUCount, c.cfg.GPUResource, KueueLocalQueue)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(2 * time.Second)
	}
	logs, _ := run(ctx, 30*time.Second, nil, c.cfg.bin("kubectl"), "--kubeconfig", c.p.AdminKubeconfig, "-n", KueueNamespace, "logs", "deploy/"+KueueDeployment, "--tail=20")
	return fmt.Errorf("kueue did not become ready within 4m: %v\nlast manager log lines:\n%s", last, indent(string(logs)))
}
