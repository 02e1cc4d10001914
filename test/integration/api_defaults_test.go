package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/test/builders"
)

const digest = "sha256:620df455f2938f340552eb5b1ff0c3764e37ec72de553aaebb87c2e44c3d5d0f"

// longModelKey is a valid ModelKey name of the maximum length, 253
// characters: four labels of 63 joined by dots.
var longModelKey = strings.Repeat("k", 63) + "." + strings.Repeat("e", 63) + "." + strings.Repeat("y", 63) + "." + strings.Repeat("s", 61)

// TestDefaults sends objects that set only required fields (and the blocks
// whose nested defaults are under test) as YAML, the way a person writes
// them, and compares the whole spec the API server stores with the defaults
// the API promises.
func TestDefaults(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)

	t.Run("ProtectedModel", func(t *testing.T) {
		sent := fromYAML(t, ns, `
apiVersion: ml.modelguard.dev/v1alpha1
kind: ProtectedModel
metadata:
  name: minimal
spec:
  ownership:
    owner: Acme Corp
    license: Apache-2.0
  weights:
    source:
      http:
        url: https://models.example.com/minimal/
    digest: `+digest+`
    key:
      modelKey: models-prod
    memory: 1Gi
  server:
    image: registry.example.com/acme/serve:1.0
  gpu:
    count: 1
  network:
    allowedEgress:
    - cidr: 10.0.0.0/8
      ports:
      - port: 443
`)
		if err := env.Client.Create(ctx, sent); err != nil {
			t.Fatalf("creating: %v", err)
		}
		got := &mlv1alpha1.ProtectedModel{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sent), got); err != nil {
			t.Fatalf("reading back: %v", err)
		}
		want := mlv1alpha1.ProtectedModelSpec{
			Ownership: mlv1alpha1.Ownership{
				Owner:          "Acme Corp",
				License:        "Apache-2.0",
				Classification: mlv1alpha1.ClassificationTradeSecret, // defaulted
			},
			Weights: mlv1alpha1.SealedWeights{
				Source: mlv1alpha1.WeightsSource{HTTP: &mlv1alpha1.HTTPSource{URL: "https://models.example.com/minimal/"}},
				Digest: digest,
				Key:    mlv1alpha1.ModelKeyReference{ModelKey: "models-prod"}, // nothing defaulted
				Memory: resource.MustParse("1Gi"),
			},
			Server: mlv1alpha1.ModelServer{
				Image:          "registry.example.com/acme/serve:1.0",
				Port:           8080,             // defaulted
				Replicas:       ptr.To[int32](1), // defaulted
				ModelMountPath: "/models",        // defaulted
			},
			GPU: &mlv1alpha1.GPU{
				Count:        1,
				ResourceName: "nvidia.com/gpu", // defaulted
			},
			Network: &mlv1alpha1.Network{AllowedEgress: []mlv1alpha1.EgressRule{{
				CIDR:  "10.0.0.0/8",
				Ports: []mlv1alpha1.NetworkPort{{Protocol: corev1.ProtocolTCP /* defaulted */, Port: 443}},
			}}},
		}
		if diff := cmp.Diff(want, got.Spec); diff != "" {
			t.Errorf("stored spec differs from the promised defaults (-want +got):\n%s", diff)
		}
	})

	t.Run("TrainingJob", func(t *testing.T) {
		sent := fromYAML(t, ns, `
apiVersion: ml.modelguard.dev/v1alpha1
kind: TrainingJob
metadata:
  name: minimal
spec:
  ownership:
    owner: Acme Corp
    license: Apache-2.0
  image: registry.example.com/acme/trainer:1.0
  output:
    size: 10Gi
    seal:
      key:
        modelKey: trained-models
`)
		if err := env.Client.Create(ctx, sent); err != nil {
			t.Fatalf("creating: %v", err)
		}
		got := &mlv1alpha1.TrainingJob{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sent), got); err != nil {
			t.Fatalf("reading back: %v", err)
		}
		want := mlv1alpha1.TrainingJobSpec{
			Ownership: mlv1alpha1.Ownership{
				Owner:          "Acme Corp",
				License:        "Apache-2.0",
				Classification: mlv1alpha1.ClassificationTradeSecret, // defaulted
			},
			Image:        "registry.example.com/acme/trainer:1.0",
			Nodes:        1,                // defaulted
			BackoffLimit: ptr.To[int32](0), // defaulted
			Output: mlv1alpha1.TrainingOutput{
				Size:                    resource.MustParse("10Gi"),
				AllowUnencryptedStorage: false, // defaulted; omitempty hides it from Go
				Seal:                    mlv1alpha1.SealSpec{Key: mlv1alpha1.ModelKeyReference{ModelKey: "trained-models"}},
			},
		}
		if diff := cmp.Diff(want, got.Spec); diff != "" {
			t.Errorf("stored spec differs from the promised defaults (-want +got):\n%s", diff)
		}
		// allowUnencryptedStorage: false is invisible in the Go struct, so
		// check the stored JSON: a default must be written, not implied.
		raw := &unstructured.Unstructured{}
		raw.SetGroupVersionKind(sent.GroupVersionKind())
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sent), raw); err != nil {
			t.Fatalf("reading back: %v", err)
		}
		v, found, err := unstructured.NestedBool(raw.Object, "spec", "output", "allowUnencryptedStorage")
		if err != nil || !found || v {
			t.Errorf("spec.output.allowUnencryptedStorage = %v (found %v, err %v); want an explicit false", v, found, err)
		}
	})
}

// TestValidVariantsAccepted sends objects that use the API's range of valid
// values, and checks that the server stores each exactly as sent plus the
// defaults that builders' Defaulted() predicts. That keeps validation from
// being stricter than documented and keeps Defaulted() true to the schema.
func TestValidVariantsAccepted(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	name50 := "m" + strings.Repeat("x", 49)

	models := map[string]*builders.ProtectedModelWrapper{
		"minimal":                builders.MakeProtectedModel("minimal", ns),
		"name of 50 characters":  builders.MakeProtectedModel(name50, ns),
		"license OR":             builders.MakeProtectedModel("lic-or", ns).License("MIT OR Apache-2.0"),
		"license parenthesised":  builders.MakeProtectedModel("lic-paren", ns).License("(MIT OR Apache-2.0) AND BSD-3-Clause"),
		"license WITH exception": builders.MakeProtectedModel("lic-with", ns).License("GPL-2.0-or-later WITH Classpath-exception-2.0"),
		"license or-later plus":  builders.MakeProtectedModel("lic-plus", ns).License("GPL-2.0+"),
		"license DocumentRef":    builders.MakeProtectedModel("lic-docref", ns).License("DocumentRef-spdx-tool-1.2:LicenseRef-MIT-Style-2"),
		"full ownership": builders.MakeProtectedModel("ownership", ns).Contact("ml-legal@acme.example").
			Copyright("Copyright 2026 Acme Corp").Classification(mlv1alpha1.ClassificationConfidential).Patents("US 11,123,456 B2", "EP 3 456 789 A1"),
		"public":   builders.MakeProtectedModel("public", ns).Classification(mlv1alpha1.ClassificationPublic),
		"internal": builders.MakeProtectedModel("internal", ns).Classification(mlv1alpha1.ClassificationInternal),
		"http source with port and query": builders.MakeProtectedModel("http-port", ns).
			HTTPSource("https://models.example.com:8443/bundles/v3/?version=3"),
		"http source on IPv6 literal":    builders.MakeProtectedModel("http-ipv6", ns).HTTPSource("https://[2001:db8::1]/bundle/"),
		"volume path with dots in names": builders.MakeProtectedModel("vol-dots", ns).VolumeSource("sealed.models", "weights/v1..v2/.sealed"),
		// A ModelKey is named, never embedded; the API server does not
		// check that it exists (the controller reports ModelKeyNotFound).
		"model key with dots and digits": builders.MakeProtectedModel("mk-dots", ns).ModelKey("nlp.models-2026"),
		"model key of one character":     builders.MakeProtectedModel("mk-short", ns).ModelKey("k"),
		"model key of 253 characters":    builders.MakeProtectedModel("mk-long", ns).ModelKey(longModelKey),

		"memory 4Ti":   builders.MakeProtectedModel("mem-max", ns).Memory("4Ti").MemoryLimit("5Ti"),
		"memory 512Mi": builders.MakeProtectedModel("mem-small", ns).Memory("512Mi"),
		"full server": builders.MakeProtectedModel("server", ns).Command("/serve").Args("--model-dir=/weights").
			Env("LOG_LEVEL", "info").Port(9000).Replicas(3).ReadinessPath("/v1/health?ready=1").ModelMountPath("/weights").
			Resources(corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("2Gi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("4Gi")},
			}),
		"scaled to zero": builders.MakeProtectedModel("zero", ns).Replicas(0),
		"port 1":         builders.MakeProtectedModel("port-low", ns).Port(1),
		"port 65535":     builders.MakeProtectedModel("port-high", ns).Port(65535),
		"gpu count 0":    builders.MakeProtectedModel("gpu-zero", ns).GPUs(0),
		"gpu count 64 with products": builders.MakeProtectedModel("gpu-max", ns).GPUs(64).
			GPUProducts("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3").GPUMinMemoryMiB(81920),
		"gpu mig":   builders.MakeProtectedModel("gpu-mig", ns).GPUs(1).GPUResourceName("nvidia.com/mig-1g.10gb"),
		"gpu amd":   builders.MakeProtectedModel("gpu-amd", ns).GPUs(2).GPUResourceName("amd.com/gpu"),
		"gpu intel": builders.MakeProtectedModel("gpu-intel", ns).GPUs(1).GPUResourceName("gpu.intel.com/i915"),
		"gpu tolerations and priority": builders.MakeProtectedModel("gpu-tol", ns).GPUs(1).
			Toleration(corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ml", Effect: corev1.TaintEffectNoSchedule}).
			PriorityClass("inference-high"),
		"clients by namespace and pod": builders.MakeProtectedModel("clients", ns).
			AllowClient(builders.Selector(map[string]string{"team": "web"}), builders.Selector(map[string]string{"app": "frontend"})).
			AllowClient(&metav1.LabelSelector{}, nil),
		"egress ranges": builders.MakeProtectedModel("egress", ns).
			EgressRule(mlv1alpha1.EgressRule{CIDR: "10.0.0.0/8", Except: []mlv1alpha1.CIDR{"10.96.0.0/12"},
				Ports: []mlv1alpha1.NetworkPort{{Protocol: corev1.ProtocolUDP, Port: 8125}, {Port: 30000, EndPort: ptr.To[int32](32767)}}}).
			EgressRule(mlv1alpha1.EgressRule{CIDR: "2001:db8::/32", Except: []mlv1alpha1.CIDR{"2001:db8:1::/48"}}).
			AllowEgress("203.0.113.7/32", 443),
		"break glass": builders.MakeProtectedModel("breakglass", ns).BreakGlassGroups("sre-oncall", "oidc:ml-admins"),
		"runtime":     builders.MakeProtectedModel("runtime", ns).RuntimeClass("kata-cc"),
	}
	for name, w := range models {
		t.Run("ProtectedModel/"+name, func(t *testing.T) {
			sent := w.Obj()
			want := w.Clone().Defaulted().Spec
			if err := env.Client.Create(ctx, sent); err != nil {
				t.Fatalf("valid object rejected: %v", err)
			}
			got := &mlv1alpha1.ProtectedModel{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sent), got); err != nil {
				t.Fatalf("reading back: %v", err)
			}
			if diff := cmp.Diff(want, got.Spec); diff != "" {
				t.Errorf("stored spec differs from sent spec plus builders' defaults (-want +got):\n%s", diff)
			}
		})
	}

	jobs := map[string]*builders.TrainingJobWrapper{
		"minimal":   builders.MakeTrainingJob("minimal", ns),
		"512 nodes": builders.MakeTrainingJob("nodes-max", ns).Nodes(512).GPUs(8).GPUProducts("NVIDIA-H100-80GB-HBM3"),
		"fine-tune from https with another model key": builders.MakeTrainingJob("finetune", ns).
			BaseWeights(builders.MakeWeights("base-models").HTTP("https://models.example.com/base/").Memory("80Gi").Obj()),
		"base weights and output under one model key": builders.MakeTrainingJob("same-key", ns).
			BaseWeights(builders.MakeWeights("models.nlp").Volume("sealed-base", "llama/v1").Obj()).SealKey("models.nlp"),
		"data from claims and urls": builders.MakeTrainingJob("data", ns).
			DataFromClaim("reviews", "review-corpus", true).DataFromClaim("scratch", "scratch", false).
			DataFromURL("labels", "https://data.example.com/labels.jsonl"),
		"output options": builders.MakeTrainingJob("output", ns).StorageClass("encrypted-ssd").OutputSize("2Ti").
			AllowUnencryptedStorage(true).SealKey("trained-models").PromoteTo(strings.Repeat("p", 50)),
		"scheduling": builders.MakeTrainingJob("sched", ns).QueueName("gpu-training").BackoffLimit(100).ActiveDeadlineSeconds(1),
		"container": builders.MakeTrainingJob("container", ns).Command("torchrun").Args("train.py").Env("NCCL_DEBUG", "WARN").
			Resources(corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("16")}}),
		"shared blocks": builders.MakeTrainingJob("shared", ns).AllowEgress("10.40.0.0/16", 443).
			AllowClient(nil, builders.Selector(map[string]string{"app": "tensorboard"})).BreakGlassGroups("ml-oncall").RuntimeClass("gvisor"),
	}
	for name, w := range jobs {
		t.Run("TrainingJob/"+name, func(t *testing.T) {
			sent := w.Obj()
			want := w.Clone().Defaulted().Spec
			if err := env.Client.Create(ctx, sent); err != nil {
				t.Fatalf("valid object rejected: %v", err)
			}
			got := &mlv1alpha1.TrainingJob{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sent), got); err != nil {
				t.Fatalf("reading back: %v", err)
			}
			if diff := cmp.Diff(want, got.Spec); diff != "" {
				t.Errorf("stored spec differs from sent spec plus builders' defaults (-want +got):\n%s", diff)
			}
		})
	}

	// YAML lets people write a quantity as a bare number; the CEL quantity
	// rules must accept that form too.
	t.Run("ProtectedModel/memory as a number", func(t *testing.T) {
		u := toUnstructured(t, builders.MakeProtectedModel("mem-int", ns).Obj())
		if err := unstructured.SetNestedField(u.Object, int64(1<<30), "spec", "weights", "memory"); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Create(ctx, u); err != nil {
			t.Fatalf("memory: 1073741824 rejected: %v", err)
		}
	})
}

// fromYAML parses one object and puts it in namespace ns.
func fromYAML(t *testing.T, ns, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatalf("parsing YAML: %v", err)
	}
	u.SetNamespace(ns)
	return u
}
