package main

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
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/modelguard/modelguard/hack/local-cluster/cluster"
	"github.com/modelguard/modelguard/hack/local-cluster/images"
)

// Names the cluster demo creates.
const (
	demoNamespace    = "modelguard-demo"
	samplesNamespace = "modelguard-samples"
	demoModel        = "demo-model"
	operatorNS       = "modelguard-system"
	operatorDeploy   = "modelguard-controller-manager"
	// demoModelKey is the ModelKey the demo model names; its KEK lives in
	// the Secret demoKEKSecret of the operator's namespace, and it selects
	// the namespaces labelled demoTenantLabel.
	demoModelKey    = "demo-models"
	demoKEKSecret   = "demo-kek"
	demoTenantLabel = "modelguard.dev/tenant=demo"
)

// demo holds what the steps share.
type demo struct {
	ctx        context.Context
	root       string
	kubectl    string
	modelguard string
	kubeconfig string
	cfg        cluster.Config
	// modelURL is the model's Service, by ClusterIP: the cluster has no DNS.
	modelURL string
}

func runCluster() (err error) {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	d := &demo{
		root:       root,
		kubectl:    filepath.Join(root, "bin", "k8s", "1.37.2", "kubectl"),
		modelguard: filepath.Join(root, "bin", "modelguard"),
	}
	for _, bin := range []string{d.kubectl, d.modelguard, filepath.Join(root, "bin", "images", images.ModelGuardTarball)} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%s is missing: run `make demo`, which builds it first", bin)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d.ctx = ctx

	d.cfg = cluster.DefaultConfig(root)
	c, err := cluster.New(d.cfg, func(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) })
	if err != nil {
		return err
	}
	release, err := c.Reserve(ctx, "make demo", 30*time.Minute)
	if err != nil {
		return err
	}
	defer release()
	step("Bringing up a single-node Kubernetes on this machine (hack/local-cluster)")
	if err := c.Up(ctx, cluster.UpOptions{Fresh: true}); err != nil {
		return fmt.Errorf("bringing up the local cluster: %w", err)
	}
	d.kubeconfig = d.cfg.KubeconfigPath()
	defer func() {
		step("Tearing the cluster down")
		if derr := c.Down(context.Background()); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	if err := d.show(); err != nil {
		return err
	}

	if os.Getenv("DEMO_EXIT") == "1" {
		return nil
	}
	fmt.Printf(`
The cluster keeps running until you press Ctrl-C. In another shell:

  export KUBECONFIG=%[1]s
  %[2]s get mk
  %[2]s get pm -A
  %[2]s -n %[3]s describe pm %[4]s
  %[2]s -n %[3]s get events --field-selector reason=KeyReleased
  %[2]s -n %[3]s exec frontend -- /demo-server fetch %[5]s
  %[2]s -n %[3]s exec intruder -- /demo-server fetch %[5]s
  make cluster-status

`, d.kubeconfig, d.kubectl, demoNamespace, demoModel, d.modelURL)
	<-ctx.Done()
	return nil
}

// show runs every step of the demo on the running cluster.
func (d *demo) show() error {
	if err := d.kubectlRun(nil, "get", "nodes", "-o", "wide"); err != nil {
		return err
	}
	if err := d.deployOperator(); err != nil {
		return err
	}
	if err := d.applySamples(); err != nil {
		return err
	}
	plaintext, digest, kek, err := d.sealModel()
	if err != nil {
		return err
	}
	if err := d.createModelKey(kek); err != nil {
		return err
	}
	if err := d.createProtectedModel(digest); err != nil {
		return err
	}
	return d.proveIsolation(plaintext)
}

// deployOperator installs the CRDs, RBAC and manager of config/default, with
// the locally built image as both the manager and the unseal image.
func (d *demo) deployOperator() error {
	step("Deploying the ModelGuard operator in-cluster: config/default with image " + images.ModelGuardRef)
	rendered, err := d.kubectlOutput(false, "kustomize", filepath.Join(d.root, "config", "default"))
	if err != nil {
		return err
	}
	// config/default names the image modelguard:latest for the manager and
	// for --unseal-image; the cluster has the image under its local name.
	if !strings.Contains(rendered, "modelguard:latest") {
		return errors.New("config/default no longer names the image modelguard:latest; update the demo's image override")
	}
	rendered = strings.ReplaceAll(rendered, "modelguard:latest", images.ModelGuardRef)
	if err := d.kubectlRun(strings.NewReader(rendered), "apply", "--server-side", "-f", "-"); err != nil {
		return err
	}
	return d.kubectlRun(nil, "-n", operatorNS, "rollout", "status", "deployment/"+operatorDeploy, "--timeout=120s")
}

func (d *demo) applySamples() error {
	step("Applying config/samples in namespace " + samplesNamespace + " (they name a registry image and a claim this cluster lacks, and the ModelKey nlp-models, whose KEK Secret it lacks too and which does not select this namespace, so they stay Pending and say why)")
	if err := d.kubectlRun(nil, "create", "namespace", samplesNamespace); err != nil {
		return err
	}
	if err := d.kubectlRun(nil, "apply", "-n", samplesNamespace, "-k", filepath.Join(d.root, "config", "samples")); err != nil {
		return err
	}
	return nil
}

// sealModel generates a small model, seals it into the node's scratch dir
// (the hostPath behind the demo's PersistentVolume) and returns the
// plaintext digests, the model digest and the KEK file.
func (d *demo) sealModel() (map[string]string, string, string, error) {
	step("Sealing a small generated model with `modelguard seal`")
	dir := filepath.Join(d.cfg.ScratchDir(), "demo")
	modelDir := filepath.Join(dir, "model")
	if err := os.MkdirAll(modelDir, 0o700); err != nil {
		return nil, "", "", fmt.Errorf("creating %s: %w", modelDir, err)
	}
	weights := make([]byte, 3<<20)
	if _, err := rand.Read(weights); err != nil {
		return nil, "", "", err
	}
	files := map[string][]byte{
		"model.safetensors": weights,
		"config.json":       []byte(`{"architecture":"demo","hidden_size":256,"layers":4}` + "\n"),
		"tokenizer.json":    []byte(`{"version":"1.0","vocab":{"hello":0,"world":1}}` + "\n"),
	}
	plaintext := map[string]string{}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(modelDir, name), content, 0o600); err != nil {
			return nil, "", "", fmt.Errorf("writing %s: %w", name, err)
		}
		sum := sha256.Sum256(content)
		plaintext[name] = hex.EncodeToString(sum[:])
	}
	kek := filepath.Join(dir, "kek.bin")
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, "", "", err
	}
	if err := os.WriteFile(kek, key, 0o600); err != nil {
		return nil, "", "", fmt.Errorf("writing the KEK: %w", err)
	}
	sealed := filepath.Join(dir, "sealed-models", demoModel, "v1")
	args := []string{"seal", modelDir, sealed, "--kek-file", kek, "--owner", "Acme Corp",
		"--license", "LicenseRef-Acme-Proprietary", "--copyright", "Copyright 2026 Acme Corp", "--progress", "none"}
	fmt.Printf("$ modelguard %s\n", shellJoin(args))
	cmd := exec.CommandContext(d.ctx, d.modelguard, args...)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, "", "", fmt.Errorf("modelguard seal: %w", err)
	}
	lines := strings.Fields(stdout.String())
	if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "sha256:") {
		return nil, "", "", fmt.Errorf("modelguard seal printed no model digest: %q", stdout.String())
	}
	digest := lines[len(lines)-1]
	fmt.Printf("model digest: %s\n", digest)
	// The unseal init container runs as a non-root user and reads the
	// bundle through the PersistentVolume.
	if err := chmodReadable(filepath.Join(dir, "sealed-models")); err != nil {
		return nil, "", "", err
	}
	if err := runShown(d.ctx, d.modelguard, "inspect", sealed); err != nil {
		return nil, "", "", err
	}
	return plaintext, digest, kek, nil
}

func chmodReadable(root string) error {
	return filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if info.IsDir() {
			mode = 0o755
		}
		return os.Chmod(path, mode)
	})
}

// createModelKey puts the KEK where no tenant can read it, a Secret in the
// operator's own namespace, and names it with a cluster-scoped ModelKey that
// the demo namespace may use. The operator's self-test (wrap, then unwrap)
// makes the ModelKey Ready.
func (d *demo) createModelKey(kek string) error {
	step("Creating the KEK Secret in the operator's namespace " + operatorNS + " and the ModelKey " + demoModelKey + " (models in namespaces labelled " + demoTenantLabel + " may use it)")
	if err := d.kubectlRun(nil, "-n", operatorNS, "create", "secret", "generic", demoKEKSecret, "--from-file=kek="+kek); err != nil {
		return err
	}
	tenantKey, tenantValue, _ := strings.Cut(demoTenantLabel, "=")
	mk := fmt.Sprintf(`apiVersion: ml.modelguard.dev/v1alpha1
kind: ModelKey
metadata:
  name: %s
spec:
  provider:
    secret: {name: %s, key: kek}
  namespaceSelector:
    matchLabels: {%s: %s}
`, demoModelKey, demoKEKSecret, tenantKey, tenantValue)
	fmt.Print(mk)
	if err := d.kubectlRun(strings.NewReader(mk), "apply", "-f", "-"); err != nil {
		return err
	}
	if err := d.kubectlRun(nil, "wait", "--for=condition=Ready", "mk/"+demoModelKey, "--timeout=60s"); err != nil {
		_ = d.kubectlRun(nil, "describe", "mk", demoModelKey)
		return err
	}
	return d.kubectlRun(nil, "get", "mk", "-o", "wide")
}

func (d *demo) createProtectedModel(digest string) error {
	step("Creating namespace " + demoNamespace + " (Pod Security restricted, labelled for the ModelKey), the claim holding the sealed bundle, and the ProtectedModel; no key goes into the namespace")
	if err := d.kubectlRun(nil, "create", "namespace", demoNamespace); err != nil {
		return err
	}
	if err := d.kubectlRun(nil, "label", "namespace", demoNamespace, "pod-security.kubernetes.io/enforce=restricted", demoTenantLabel); err != nil {
		return err
	}
	bundleDir := filepath.Join(d.cfg.ScratchDir(), "demo", "sealed-models")
	storage := fmt.Sprintf(`apiVersion: v1
kind: PersistentVolume
metadata:
  name: modelguard-demo-sealed-models
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  storageClassName: modelguard-demo-local
  hostPath: {path: %s, type: Directory}
  claimRef: {namespace: %s, name: sealed-models}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: sealed-models
  namespace: %s
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: modelguard-demo-local
  resources: {requests: {storage: 1Gi}}
  volumeName: modelguard-demo-sealed-models
`, bundleDir, demoNamespace, demoNamespace)
	if err := d.kubectlRun(strings.NewReader(storage), "apply", "-f", "-"); err != nil {
		return err
	}
	pm := fmt.Sprintf(`apiVersion: ml.modelguard.dev/v1alpha1
kind: ProtectedModel
metadata:
  name: %s
  namespace: %s
spec:
  ownership:
    owner: Acme Corp
    license: LicenseRef-Acme-Proprietary
    copyright: Copyright 2026 Acme Corp
    classification: TradeSecret
  weights:
    source:
      volume: {claimName: sealed-models, path: %s/v1}
    digest: %s
    key:
      modelKey: %s
    memory: 32Mi
  server:
    image: %s
    args: [serve, --dir, /models]
    port: 8080
    readinessPath: /healthz
    resources:
      requests: {cpu: 10m, memory: 64Mi}
      limits: {memory: 128Mi}
  gpu:
    count: 1
    products: [%s]
  network:
    allowedClients:
    - podSelector:
        matchLabels: {app: frontend}
`, demoModel, demoNamespace, demoModel, digest, demoModelKey, images.DemoServerRef, d.cfg.GPUProduct)
	fmt.Print(pm)
	if err := d.kubectlRun(strings.NewReader(pm), "apply", "-f", "-"); err != nil {
		return err
	}

	step("Waiting for the operator: NetworkPolicy, Service, and a Deployment on a fake GPU node whose unseal init container presents its pod's token to the key-release service, gets the data key sealed to it once the operator has verified the pod, and decrypts into memory")
	if err := d.kubectlRun(nil, "-n", demoNamespace, "wait", "--for=condition=Ready", "pm/"+demoModel, "--timeout=180s"); err != nil {
		_ = d.kubectlRun(nil, "-n", demoNamespace, "describe", "pm", demoModel)
		_ = d.kubectlRun(nil, "-n", demoNamespace, "get", "pods,events")
		_ = d.kubectlRun(nil, "-n", demoNamespace, "logs", "-l", "modelguard.dev/model="+demoModel, "-c", "unseal", "--tail=20")
		_ = d.kubectlRun(nil, "-n", operatorNS, "logs", "deployment/"+operatorDeploy, "--tail=50")
		return err
	}
	for _, args := range [][]string{
		{"get", "mk"},
		{"get", "pm", "-A"},
		{"-n", demoNamespace, "describe", "pm", demoModel},
		{"-n", demoNamespace, "get", "events", "--field-selector", "reason=KeyReleased"},
		{"-n", demoNamespace, "get", "deployments,pods,services,networkpolicies", "-l", "modelguard.dev/model=" + demoModel, "-o", "wide"},
	} {
		if err := d.kubectlRun(nil, args...); err != nil {
			return err
		}
	}
	step("No key in the model's namespace: no Secret, no Job (the KEK stays in " + operatorNS + ", the data key is stored nowhere)")
	return d.kubectlRun(nil, "-n", demoNamespace, "get", "secrets,jobs")
}

// report mirrors the demo server's JSON report.
type report struct {
	Tmpfs bool `json:"tmpfs"`
	Files []struct {
		Path   string `json:"path"`
		SHA256 string `json:"sha256"`
	} `json:"files"`
}

func (d *demo) proveIsolation(plaintext map[string]string) error {
	step("Two client pods: frontend (in spec.network.allowedClients) and intruder (not)")
	for _, app := range []string{"frontend", "intruder"} {
		if err := d.kubectlRun(strings.NewReader(clientPod(app)), "apply", "-f", "-"); err != nil {
			return err
		}
	}
	if err := d.kubectlRun(nil, "-n", demoNamespace, "wait", "--for=condition=Ready", "pod/frontend", "pod/intruder", "--timeout=90s"); err != nil {
		return err
	}
	ip, err := d.kubectlOutput(false, "-n", demoNamespace, "get", "service", demoModel, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return err
	}
	url := fmt.Sprintf("http://%s:8080/", strings.TrimSpace(ip))
	d.modelURL = url

	step("frontend asks the model (its Service's ClusterIP; the model server reports the files it serves)")
	// kube-router admits a new client pod once it has synced the pod's IP
	// into the model's policy, a moment after the pod is Ready: the allowed
	// client asks again for a few seconds before the demo gives up.
	var out string
	for attempt := 1; ; attempt++ {
		out, err = d.kubectlOutput(attempt == 1, "-n", demoNamespace, "exec", "frontend", "--", "/demo-server", "fetch", "--timeout", "3s", url)
		if err == nil || attempt == 5 {
			break
		}
		fmt.Printf("  no answer yet (attempt %d): the network policy controller has not admitted the new client; asking again\n", attempt)
		time.Sleep(2 * time.Second)
	}
	fmt.Print(out)
	if err != nil {
		return fmt.Errorf("the allowed client got no answer: %w", err)
	}
	var got report
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		return fmt.Errorf("parsing the model server's report: %w", err)
	}
	served := map[string]string{}
	for _, f := range got.Files {
		served[f.Path] = f.SHA256
	}
	if len(served) != len(plaintext) {
		return fmt.Errorf("the server serves %d files, the sealed model had %d", len(served), len(plaintext))
	}
	names := make([]string, 0, len(plaintext))
	for name := range plaintext {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if served[name] != plaintext[name] {
			return fmt.Errorf("%s: the server has sha256 %s, the plaintext sealed above had %s", name, served[name], plaintext[name])
		}
		fmt.Printf("  %-18s sha256 %s  = the plaintext sealed above\n", name, plaintext[name])
	}
	if !got.Tmpfs {
		return errors.New("the model server's /models is not tmpfs: the plaintext is not in memory")
	}
	fmt.Println("  /models is tmpfs: the plaintext exists only in memory, decrypted by the unseal init container")

	step("intruder asks the model the same way")
	out, err = d.kubectlOutput(true, "-n", demoNamespace, "exec", "intruder", "--", "/demo-server", "fetch", "--timeout", "3s", url)
	fmt.Print(out)
	if err == nil {
		return errors.New("the intruder got an answer: the NetworkPolicy is not enforced")
	}
	if !strings.Contains(err.Error(), "no answer") {
		return fmt.Errorf("the intruder could not even try: %w", err)
	}
	fmt.Println("  intruder got nothing: the model's NetworkPolicy admits only spec.network.allowedClients")
	return nil
}

func clientPod(app string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: %[2]s
  labels: {app: %[1]s}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: client
    image: %[3]s
    imagePullPolicy: Never
    args: [idle]
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
`, app, demoNamespace, images.DemoServerRef)
}

// kubectlRun shows a kubectl command and runs it with the demo's kubeconfig.
func (d *demo) kubectlRun(stdin io.Reader, args ...string) error {
	fmt.Printf("$ kubectl %s\n", shellJoin(args))
	cmd := exec.CommandContext(d.ctx, d.kubectl, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+d.kubeconfig)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// kubectlOutput runs kubectl and returns its stdout (stderr goes to the
// terminal), showing the command first when show is set.
func (d *demo) kubectlOutput(show bool, args ...string) (string, error) {
	if show {
		fmt.Printf("$ kubectl %s\n", shellJoin(args))
	}
	ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.kubectl, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+d.kubeconfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, io.MultiWriter(os.Stderr, &stderr)
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func runShown(ctx context.Context, bin string, args ...string) error {
	fmt.Printf("$ %s %s\n", filepath.Base(bin), shellJoin(args))
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(bin), strings.Join(args, " "), err)
	}
	return nil
}

// shellJoin shows a command line as a person would type it.
func shellJoin(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$`\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		quoted[i] = a
	}
	return strings.Join(quoted, " ")
}
