package builder_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
)

const (
	tokenMount     = "/var/run/modelguard/key-release"
	bundleMount    = "/var/run/modelguard/bundle"
	plaintextMount = "/var/run/modelguard/model"
)

func TestDeploymentUnsealInitContainer(t *testing.T) {
	bundleVolumeMount := corev1.VolumeMount{Name: "bundle", MountPath: bundleMount, ReadOnly: true}
	tests := []struct {
		name     string
		edit     func(*builders.ProtectedModelWrapper)
		location string
		memory   string // the plaintext plus what the unseal process needs
		mounts   []corev1.VolumeMount
	}{{
		name:     "bundle at the root of the claim",
		edit:     func(w *builders.ProtectedModelWrapper) {},
		location: bundleMount,
		memory:   "1152Mi",
		mounts:   []corev1.VolumeMount{bundleVolumeMount},
	}, {
		name:     "bundle in a directory of the claim",
		edit:     func(w *builders.ProtectedModelWrapper) { w.VolumeSource("sealed", "models/sentiment/v3") },
		location: bundleMount + "/models/sentiment/v3",
		memory:   "1152Mi",
		mounts:   []corev1.VolumeMount{bundleVolumeMount},
	}, {
		name:     "claim path is cleaned and stays inside the mount",
		edit:     func(w *builders.ProtectedModelWrapper) { w.VolumeSource("sealed", "./models//v3/") },
		location: bundleMount + "/models/v3",
		memory:   "1152Mi",
		mounts:   []corev1.VolumeMount{bundleVolumeMount},
	}, {
		name: "https bundle is streamed, nothing is mounted for it",
		edit: func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://models.example.com/sentiment/v3/").Digest(otherDigest)
		},
		location: "https://models.example.com/sentiment/v3/",
		memory:   "1152Mi",
	}, {
		name:     "memory follows spec.weights.memory",
		edit:     func(w *builders.ProtectedModelWrapper) { w.Memory("16Gi") },
		location: bundleMount,
		memory:   "16512Mi",
		mounts:   []corev1.VolumeMount{bundleVolumeMount},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pm := model(tc.edit)
			d := deployment(t, pm, servingFacts(1))
			if n := len(d.Spec.Template.Spec.InitContainers); n != 1 {
				t.Fatalf("%d init containers, want exactly the unseal container", n)
			}
			memory := resource.MustParse(tc.memory)
			want := corev1.Container{
				Name:            "unseal",
				Image:           unsealImage,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"/modelguard", "unseal",
					"--key-release", testKeyRelease.URL,
					"--model", "ProtectedModel/" + testNamespace + "/m",
					"--token-file", tokenMount + "/token",
					"--expect-digest", pm.Spec.Weights.Digest,
					"--progress", "log",
					// No --keep-existing: init containers run again when the
					// pod's sandbox is recreated, and the memory volume still
					// holds the plaintext of the first run.
					tc.location, plaintextMount},
				Env: []corev1.EnvVar{
					{Name: "MODELGUARD_KEY_RELEASE_CA", Value: testKeyRelease.CABundle},
					{Name: "MODELGUARD_POD_UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.uid"}}},
				},
				SecurityContext:          hardenedContainer(),
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: mustQuantity("100m"), corev1.ResourceMemory: memory},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: memory},
				},
				VolumeMounts: append([]corev1.VolumeMount{
					{Name: "model", MountPath: plaintextMount},
					{Name: "key-release-token", MountPath: tokenMount, ReadOnly: true},
				}, tc.mounts...),
			}
			if diff := cmp.Diff(want, d.Spec.Template.Spec.InitContainers[0], quantities); diff != "" {
				t.Errorf("unseal container (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeploymentServerContainer(t *testing.T) {
	tests := []struct {
		name string
		edit func(*builders.ProtectedModelWrapper)
		want corev1.Container
	}{{
		name: "defaults",
		edit: func(w *builders.ProtectedModelWrapper) {},
		want: corev1.Container{
			Name:                     "server",
			Image:                    builders.DefaultServerImage,
			Ports:                    []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			SecurityContext:          hardenedContainer(),
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			// 1Gi of plaintext in tmpfs plus 512Mi for the server itself.
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("1536Mi")}},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "model", MountPath: "/models", ReadOnly: true},
				{Name: "tmp", MountPath: "/tmp"},
			},
		},
	}, {
		name: "everything the spec can set",
		edit: func(w *builders.ProtectedModelWrapper) {
			w.Image("registry.example.com/acme/vllm:0.9").
				Port(9000).
				ModelMountPath("/weights").
				Command("python", "-m", "serve").
				Args("--model", "/weights").
				Env("MODEL_DIR", "/weights").
				Env("LOG_LEVEL", "info").
				ReadinessPath("/healthz").
				GPUs(2)
		},
		want: corev1.Container{
			Name:                     "server",
			Image:                    "registry.example.com/acme/vllm:0.9",
			Command:                  []string{"python", "-m", "serve"},
			Args:                     []string{"--model", "/weights"},
			Env:                      []corev1.EnvVar{{Name: "MODEL_DIR", Value: "/weights"}, {Name: "LOG_LEVEL", Value: "info"}},
			Ports:                    []corev1.ContainerPort{{Name: "http", ContainerPort: 9000, Protocol: corev1.ProtocolTCP}},
			SecurityContext:          hardenedContainer(),
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
				corev1.ResourceMemory: mustQuantity("1536Mi"),
				"nvidia.com/gpu":      mustQuantity("2"),
			}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/healthz", Port: intstr.FromString("http"),
			}}},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "model", MountPath: "/weights", ReadOnly: true},
				{Name: "tmp", MountPath: "/tmp"},
			},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := deployment(t, model(tc.edit), servingFacts(1))
			if n := len(d.Spec.Template.Spec.Containers); n != 1 {
				t.Fatalf("%d containers, want exactly the server", n)
			}
			if diff := cmp.Diff(tc.want, d.Spec.Template.Spec.Containers[0], quantities); diff != "" {
				t.Errorf("server container (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeploymentVolumes(t *testing.T) {
	plaintext := func(size string) corev1.Volume {
		q := resource.MustParse(size)
		return corev1.Volume{Name: "model", VolumeSource: corev1.VolumeSource{
			EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &q}}}
	}
	tmpSize := resource.MustParse("64Mi")
	common := []corev1.Volume{
		{Name: "key-release-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			DefaultMode: ptr.To[int32](0o400),
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: "modelguard-key-release", ExpirationSeconds: ptr.To[int64](600), Path: "token"}}},
		}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: &tmpSize}}},
	}
	tests := []struct {
		name string
		edit func(*builders.ProtectedModelWrapper)
		want []corev1.Volume
	}{{
		name: "volume source: the claim is mounted read-only",
		edit: func(w *builders.ProtectedModelWrapper) { w.VolumeSource("sealed", "v3").Memory("24Gi") },
		want: append(append([]corev1.Volume{plaintext("24Gi")}, common...),
			corev1.Volume{Name: "bundle", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
				ClaimName: "sealed", ReadOnly: true}}}),
	}, {
		name: "https source: no claim",
		edit: func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://models.example.com/v3/").Memory("512Mi")
		},
		want: append([]corev1.Volume{plaintext("512Mi")}, common...),
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := deployment(t, model(tc.edit), servingFacts(1))
			if diff := cmp.Diff(tc.want, d.Spec.Template.Spec.Volumes, quantities); diff != "" {
				t.Errorf("volumes (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOnlyUnsealHoldsTheKeyReleaseToken checks, for every kind of spec, that
// the key-release token reaches the unseal container alone, that no Secret
// is mounted at all, and that the server gets neither a Secret nor a token.
func TestOnlyUnsealHoldsTheKeyReleaseToken(t *testing.T) {
	specs := map[string]func(*builders.ProtectedModelWrapper){
		"minimal": func(w *builders.ProtectedModelWrapper) {},
		"https":   func(w *builders.ProtectedModelWrapper) { w.HTTPSource("https://models.example.com/v3/") },
		"gpu and env": func(w *builders.ProtectedModelWrapper) {
			w.GPUs(4).Env("A", "b").Command("serve").ReadinessPath("/ready")
		},
	}
	for name, edit := range specs {
		t.Run(name, func(t *testing.T) {
			spec := deployment(t, model(edit), servingFacts(2)).Spec.Template.Spec
			secretVolumes := map[string]bool{}
			for _, v := range spec.Volumes {
				if v.Secret != nil || v.Projected != nil {
					secretVolumes[v.Name] = true
				}
			}
			if diff := cmp.Diff(map[string]bool{"key-release-token": true}, secretVolumes); diff != "" {
				t.Errorf("Secret-backed and projected volumes (-want +got):\n%s", diff)
			}
			for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
				for _, m := range c.VolumeMounts {
					if secretVolumes[m.Name] && c.Name != "unseal" {
						t.Errorf("container %s mounts the key-release token", c.Name)
					}
				}
				for _, e := range c.EnvFrom {
					if e.SecretRef != nil {
						t.Errorf("container %s takes env from Secret %s", c.Name, e.SecretRef.Name)
					}
				}
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
						t.Errorf("container %s takes %s from a Secret", c.Name, e.Name)
					}
				}
			}
			server := containerNamed(t, spec.Containers, "server")
			for _, m := range server.VolumeMounts {
				if m.Name == "model" && !m.ReadOnly {
					t.Error("server mounts the plaintext writable")
				}
			}
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
				t.Errorf("automountServiceAccountToken = %v, want false", spec.AutomountServiceAccountToken)
			}
		})
	}
}

func TestDeploymentPodHardening(t *testing.T) {
	specs := map[string]func(*builders.ProtectedModelWrapper){
		"minimal": func(w *builders.ProtectedModelWrapper) {},
		"gpu, runtime class and tolerations": func(w *builders.ProtectedModelWrapper) {
			w.GPUs(1).GPUProducts("NVIDIA-L4").RuntimeClass("kata-cc").PriorityClass("inference").
				Toleration(corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ml", Effect: corev1.TaintEffectNoSchedule})
		},
		"https": func(w *builders.ProtectedModelWrapper) { w.HTTPSource("https://models.example.com/v3/") },
	}
	wantPod := &corev1.PodSecurityContext{
		RunAsNonRoot:   ptr.To(true),
		RunAsUser:      ptr.To[int64](65532),
		RunAsGroup:     ptr.To[int64](65532),
		FSGroup:        ptr.To[int64](65532),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	for name, edit := range specs {
		t.Run(name, func(t *testing.T) {
			spec := deployment(t, model(edit), servingFacts(1)).Spec.Template.Spec
			if diff := cmp.Diff(wantPod, spec.SecurityContext); diff != "" {
				t.Errorf("pod securityContext (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(ptr.To(false), spec.EnableServiceLinks); diff != "" {
				t.Errorf("enableServiceLinks (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(ptr.To(false), spec.AutomountServiceAccountToken); diff != "" {
				t.Errorf("automountServiceAccountToken (-want +got):\n%s", diff)
			}
			if spec.ServiceAccountName != "m" {
				t.Errorf("serviceAccountName = %q, want the model's token-less account m", spec.ServiceAccountName)
			}
			if spec.HostNetwork || spec.HostPID || spec.HostIPC {
				t.Error("pod shares a host namespace")
			}
			all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
			if len(all) != 2 {
				t.Fatalf("%d containers, want unseal and server", len(all))
			}
			for _, c := range all {
				if diff := cmp.Diff(hardenedContainer(), c.SecurityContext); diff != "" {
					t.Errorf("container %s securityContext (-want +got):\n%s", c.Name, diff)
				}
				if c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
					t.Errorf("container %s terminationMessagePolicy = %q, want FallbackToLogsOnError", c.Name, c.TerminationMessagePolicy)
				}
			}
		})
	}
}

func TestDeploymentGPUScheduling(t *testing.T) {
	gpuToleration := func(resourceName string) corev1.Toleration {
		return corev1.Toleration{Key: resourceName, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	}
	userToleration := corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ml", Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](60)}
	required := func(requirements ...corev1.NodeSelectorRequirement) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: requirements}}}}}
	}
	tests := []struct {
		name           string
		edit           func(*builders.ProtectedModelWrapper)
		gpuLimits      corev1.ResourceList // the server's limits other than memory
		tolerations    []corev1.Toleration
		affinity       *corev1.Affinity
		priorityClass  string
		runtimeClass   *string
		noGPUResources bool
		defaults       []corev1.Toleration // the manager's --default-gpu-tolerations
	}{{
		name:           "no gpu block",
		edit:           func(w *builders.ProtectedModelWrapper) {},
		noGPUResources: true,
	}, {
		name:        "two GPUs of the default resource",
		edit:        func(w *builders.ProtectedModelWrapper) { w.GPUs(2) },
		gpuLimits:   corev1.ResourceList{"nvidia.com/gpu": mustQuantity("2")},
		tolerations: []corev1.Toleration{gpuToleration("nvidia.com/gpu")},
	}, {
		name:        "a MIG slice",
		edit:        func(w *builders.ProtectedModelWrapper) { w.GPUs(1).GPUResourceName("nvidia.com/mig-1g.10gb") },
		gpuLimits:   corev1.ResourceList{"nvidia.com/mig-1g.10gb": mustQuantity("1")},
		tolerations: []corev1.Toleration{gpuToleration("nvidia.com/mig-1g.10gb")},
	}, {
		name: "products and memory become required node affinity",
		edit: func(w *builders.ProtectedModelWrapper) {
			w.GPUs(8).GPUProducts("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3").GPUMinMemoryMiB(81920)
		},
		gpuLimits:   corev1.ResourceList{"nvidia.com/gpu": mustQuantity("8")},
		tolerations: []corev1.Toleration{gpuToleration("nvidia.com/gpu")},
		affinity: required(
			corev1.NodeSelectorRequirement{Key: "nvidia.com/gpu.product", Operator: corev1.NodeSelectorOpIn,
				Values: []string{"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"}},
			// Gt is strict and the minimum itself qualifies.
			corev1.NodeSelectorRequirement{Key: "nvidia.com/gpu.memory", Operator: corev1.NodeSelectorOpGt, Values: []string{"81919"}},
		),
	}, {
		name:        "memory alone",
		edit:        func(w *builders.ProtectedModelWrapper) { w.GPUs(1).GPUMinMemoryMiB(1) },
		gpuLimits:   corev1.ResourceList{"nvidia.com/gpu": mustQuantity("1")},
		tolerations: []corev1.Toleration{gpuToleration("nvidia.com/gpu")},
		affinity: required(corev1.NodeSelectorRequirement{
			Key: "nvidia.com/gpu.memory", Operator: corev1.NodeSelectorOpGt, Values: []string{"0"}}),
	}, {
		name: "user tolerations follow the default one; priority and runtime class",
		edit: func(w *builders.ProtectedModelWrapper) {
			w.GPUs(1).Toleration(userToleration).PriorityClass("inference").RuntimeClass("nvidia")
		},
		gpuLimits:     corev1.ResourceList{"nvidia.com/gpu": mustQuantity("1")},
		tolerations:   []corev1.Toleration{gpuToleration("nvidia.com/gpu"), userToleration},
		priorityClass: "inference",
		runtimeClass:  ptr.To("nvidia"),
	}, {
		name:        "cluster default GPU tolerations sit between the resource's and the spec's",
		edit:        func(w *builders.ProtectedModelWrapper) { w.GPUs(1).Toleration(userToleration) },
		defaults:    []corev1.Toleration{{Key: "gpu-pool", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
		gpuLimits:   corev1.ResourceList{"nvidia.com/gpu": mustQuantity("1")},
		tolerations: []corev1.Toleration{gpuToleration("nvidia.com/gpu"), {Key: "gpu-pool", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}, userToleration},
	}, {
		name:           "zero GPUs: no default GPU tolerations either",
		edit:           func(w *builders.ProtectedModelWrapper) { w.GPUs(0) },
		defaults:       []corev1.Toleration{{Key: "gpu-pool", Operator: corev1.TolerationOpExists}},
		noGPUResources: true,
	}, {
		name:           "zero GPUs: no GPU limit nor GPU toleration, user settings kept",
		edit:           func(w *builders.ProtectedModelWrapper) { w.GPUs(0).Toleration(userToleration).PriorityClass("batch") },
		tolerations:    []corev1.Toleration{userToleration},
		priorityClass:  "batch",
		noGPUResources: true,
	}, {
		name:           "runtime class without GPU",
		edit:           func(w *builders.ProtectedModelWrapper) { w.RuntimeClass("kata-cc") },
		runtimeClass:   ptr.To("kata-cc"),
		noGPUResources: true,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			facts := servingFacts(1)
			facts.DefaultGPUTolerations = tc.defaults
			spec := deployment(t, model(tc.edit), facts).Spec.Template.Spec
			if diff := cmp.Diff(tc.tolerations, spec.Tolerations); diff != "" {
				t.Errorf("tolerations (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.affinity, spec.Affinity); diff != "" {
				t.Errorf("affinity (-want +got):\n%s", diff)
			}
			if spec.PriorityClassName != tc.priorityClass {
				t.Errorf("priorityClassName = %q, want %q", spec.PriorityClassName, tc.priorityClass)
			}
			if diff := cmp.Diff(tc.runtimeClass, spec.RuntimeClassName); diff != "" {
				t.Errorf("runtimeClassName (-want +got):\n%s", diff)
			}
			limits := containerNamed(t, spec.Containers, "server").Resources.Limits.DeepCopy()
			delete(limits, corev1.ResourceMemory)
			if tc.noGPUResources {
				tc.gpuLimits = corev1.ResourceList{}
			}
			if diff := cmp.Diff(tc.gpuLimits, limits, quantities); diff != "" {
				t.Errorf("server limits besides memory (-want +got):\n%s", diff)
			}
			unseal := spec.InitContainers[0].Resources
			for name := range unseal.Limits {
				if name != corev1.ResourceMemory {
					t.Errorf("unseal container limits %s; only the server gets GPUs", name)
				}
			}
		})
	}
}

func TestDeploymentTopologySpread(t *testing.T) {
	spread := []corev1.TopologySpreadConstraint{{
		MaxSkew:           1,
		TopologyKey:       corev1.LabelHostname,
		WhenUnsatisfiable: corev1.ScheduleAnyway,
		LabelSelector:     &metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/model": "m", "modelguard.dev/component": "server"}},
	}}
	tests := []struct {
		replicas int32
		want     []corev1.TopologySpreadConstraint
	}{{0, nil}, {1, nil}, {2, spread}, {7, spread}}
	for _, tc := range tests {
		d := deployment(t, model(func(w *builders.ProtectedModelWrapper) { w.Replicas(tc.replicas) }), servingFacts(tc.replicas))
		if diff := cmp.Diff(tc.want, d.Spec.Template.Spec.TopologySpreadConstraints); diff != "" {
			t.Errorf("replicas %d: topologySpreadConstraints (-want +got):\n%s", tc.replicas, diff)
		}
	}
}

func TestDeploymentReplicasAndSelector(t *testing.T) {
	tests := []struct {
		name  string
		facts builder.ProtectedModelFacts
		want  int32
	}{
		{"fail closed: held at zero", builder.ProtectedModelFacts{UnsealImage: unsealImage}, 0},
		{"one", servingFacts(1), 1},
		{"three", servingFacts(3), 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The spec asks for five: the facts decide.
			d := deployment(t, model(func(w *builders.ProtectedModelWrapper) { w.Replicas(5) }), tc.facts)
			if diff := cmp.Diff(ptr.To(tc.want), d.Spec.Replicas); diff != "" {
				t.Errorf("replicas (-want +got):\n%s", diff)
			}
			wantSelector := &metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/model": "m", "modelguard.dev/component": "server"}}
			if diff := cmp.Diff(wantSelector, d.Spec.Selector); diff != "" {
				t.Errorf("selector (-want +got):\n%s", diff)
			}
			if !selects(t, d.Spec.Selector, d.Spec.Template.Labels) {
				t.Errorf("selector %v does not select the pod template's labels %v", d.Spec.Selector, d.Spec.Template.Labels)
			}
			if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
				t.Errorf("strategy = %q, want RollingUpdate", d.Spec.Strategy.Type)
			}
		})
	}
}

func TestDeploymentConfigHash(t *testing.T) {
	hash := func(pm *mlv1alpha1.ProtectedModel, facts builder.ProtectedModelFacts) string {
		t.Helper()
		h := deployment(t, pm, facts).Spec.Template.Annotations[builder.AnnotationConfigHash]
		if h == "" {
			t.Fatalf("pod template has no %s annotation", builder.AnnotationConfigHash)
		}
		return h
	}
	base := hash(model(), servingFacts(1))
	tests := []struct {
		name   string
		pm     *mlv1alpha1.ProtectedModel
		facts  builder.ProtectedModelFacts
		change bool
	}{
		{"same spec and facts", model(), servingFacts(1), false},
		{"digest", model(func(w *builders.ProtectedModelWrapper) { w.Digest(otherDigest) }), servingFacts(1), true},
		{"ModelKey", model(func(w *builders.ProtectedModelWrapper) { w.ModelKey("models-2027") }), servingFacts(1), true},
		{"key-release CA bundle (in the pod spec, not the hash)", model(), func() builder.ProtectedModelFacts {
			f := servingFacts(1)
			f.KeyRelease.CABundle += "-----BEGIN CERTIFICATE-----\nTUlJQw==\n-----END CERTIFICATE-----\n"
			return f
		}(), false},
		{"bundle location", model(func(w *builders.ProtectedModelWrapper) { w.VolumeSource(builders.DefaultClaimName, "v4") }), servingFacts(1), true},
		{"replicas", model(func(w *builders.ProtectedModelWrapper) { w.Replicas(4) }), servingFacts(4), false},
		{"held at zero", model(), func() builder.ProtectedModelFacts { f := servingFacts(1); f.Replicas = 0; return f }(), false},
		{"server image", model(func(w *builders.ProtectedModelWrapper) { w.Image("registry.example.com/acme/serve:2.0") }), servingFacts(1), false},
		{"server port", model(func(w *builders.ProtectedModelWrapper) { w.Port(9000) }), servingFacts(1), false},
		{"GPUs", model(func(w *builders.ProtectedModelWrapper) { w.GPUs(2) }), servingFacts(1), false},
		{"network", model(func(w *builders.ProtectedModelWrapper) { w.AllowEgress("10.0.0.0/8") }), servingFacts(1), false},
		{"license", model(func(w *builders.ProtectedModelWrapper) { w.License("Apache-2.0") }), servingFacts(1), false},
		{"memory", model(func(w *builders.ProtectedModelWrapper) { w.Memory("2Gi") }), servingFacts(1), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := hash(tc.pm, tc.facts)
			if changed := got != base; changed != tc.change {
				t.Errorf("config hash %s -> %s: changed = %v, want %v", base, got, changed, tc.change)
			}
		})
	}
}

func TestServerResources(t *testing.T) {
	tests := []struct {
		name      string
		resources corev1.ResourceRequirements
		gpus      int32
		want      corev1.ResourceRequirements
	}{{
		name: "nothing set: plaintext plus 512Mi",
		want: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("1536Mi")}},
	}, {
		name:      "memory request: plaintext plus the request",
		resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("3Gi"), corev1.ResourceCPU: mustQuantity("2")}},
		want: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("3Gi"), corev1.ResourceCPU: mustQuantity("2")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: mustQuantity("4Gi")},
		},
	}, {
		name:      "memory limit given: kept as it is",
		resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("6Gi"), corev1.ResourceCPU: mustQuantity("4")}},
		want:      corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("6Gi"), corev1.ResourceCPU: mustQuantity("4")}},
	}, {
		name:      "cpu limit only: memory limit derived beside it",
		resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: mustQuantity("500m")}},
		want:      corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("1536Mi"), corev1.ResourceCPU: mustQuantity("500m")}},
	}, {
		name: "GPUs come from spec.gpu, never from server.resources",
		resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{"nvidia.com/gpu": mustQuantity("1"), corev1.ResourceCPU: mustQuantity("1")},
			Limits:   corev1.ResourceList{"nvidia.com/gpu": mustQuantity("1")},
		},
		gpus: 4,
		want: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: mustQuantity("1")},
			Limits:   corev1.ResourceList{"nvidia.com/gpu": mustQuantity("4"), corev1.ResourceMemory: mustQuantity("1536Mi")},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pm := model(func(w *builders.ProtectedModelWrapper) {
				w.Resources(tc.resources)
				if tc.gpus > 0 {
					w.GPUs(tc.gpus)
				}
			})
			before := pm.Spec.Server.Resources.DeepCopy()
			got := asAPI[corev1.ResourceRequirements](t, builder.ServerResources(pm))
			if diff := cmp.Diff(tc.want, *got, quantities); diff != "" {
				t.Errorf("resources (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(*before, pm.Spec.Server.Resources, quantities); diff != "" {
				t.Errorf("ServerResources changed the spec (-before +after):\n%s", diff)
			}
		})
	}
}

func TestMemoryCoversWeights(t *testing.T) {
	tests := []struct {
		name   string
		limits corev1.ResourceList
		memory string
		want   bool
	}{
		{"no limit: one is derived", nil, "16Gi", true},
		{"cpu limit only", corev1.ResourceList{corev1.ResourceCPU: mustQuantity("2")}, "16Gi", true},
		{"limit above the plaintext", corev1.ResourceList{corev1.ResourceMemory: mustQuantity("17Gi")}, "16Gi", true},
		{"limit above in other units", corev1.ResourceList{corev1.ResourceMemory: mustQuantity("20G")}, "16Gi", true},
		{"limit equal to the plaintext: no room for the server", corev1.ResourceList{corev1.ResourceMemory: mustQuantity("16Gi")}, "16Gi", false},
		{"limit below the plaintext", corev1.ResourceList{corev1.ResourceMemory: mustQuantity("8Gi")}, "16Gi", false},
		{"decimal limit just under binary plaintext", corev1.ResourceList{corev1.ResourceMemory: mustQuantity("17G")}, "16Gi", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pm := model(func(w *builders.ProtectedModelWrapper) {
				w.Memory(tc.memory).Resources(corev1.ResourceRequirements{Limits: tc.limits})
			})
			if got := builder.MemoryCoversWeights(pm); got != tc.want {
				t.Errorf("MemoryCoversWeights = %v, want %v", got, tc.want)
			}
			if !tc.want {
				return
			}
			// Whatever it judges enough, the built pod really has.
			built := asAPI[corev1.ResourceRequirements](t, builder.ServerResources(pm)).Limits[corev1.ResourceMemory]
			if built.Cmp(pm.Spec.Weights.Memory) <= 0 {
				t.Errorf("server memory limit %s does not exceed the plaintext %s", built.String(), pm.Spec.Weights.Memory.String())
			}
		})
	}
}

func TestNetworkPolicy(t *testing.T) {
	dnsRule := networkingv1.NetworkPolicyEgressRule{
		Ports: []networkingv1.NetworkPolicyPort{
			{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))},
			{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(53))},
		},
		To: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
		}},
	}
	keyReleaseRule := networkingv1.NetworkPolicyEgressRule{
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(8444))}},
		To: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": testOperatorNamespace}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "modelguard", "app.kubernetes.io/component": "manager"}},
		}},
	}
	modelPods := metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/model": "m"}}
	both := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	tcp := func(port int32) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(port))}
	}
	webSelector := &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	teamSelector := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}}}

	tests := []struct {
		name string
		edit func(*builders.ProtectedModelWrapper)
		post func(*mlv1alpha1.ProtectedModel)
		want networkingv1.NetworkPolicySpec
	}{{
		name: "no network block: no ingress at all, egress to DNS only",
		edit: func(w *builders.ProtectedModelWrapper) {},
		want: networkingv1.NetworkPolicySpec{PodSelector: modelPods, PolicyTypes: both, Egress: []networkingv1.NetworkPolicyEgressRule{dnsRule, keyReleaseRule}},
	}, {
		name: "empty network block: the same",
		edit: func(w *builders.ProtectedModelWrapper) { w.Spec.Network = &mlv1alpha1.Network{} },
		want: networkingv1.NetworkPolicySpec{PodSelector: modelPods, PolicyTypes: both, Egress: []networkingv1.NetworkPolicyEgressRule{dnsRule, keyReleaseRule}},
	}, {
		name: "clients reach only the server port",
		edit: func(w *builders.ProtectedModelWrapper) {
			w.Port(9000).
				AllowClientPods(webSelector.MatchLabels).
				AllowClient(teamSelector, nil).
				AllowClient(&metav1.LabelSelector{}, webSelector)
		},
		want: networkingv1.NetworkPolicySpec{
			PodSelector: modelPods, PolicyTypes: both,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{tcp(9000)},
				From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: webSelector},
					{NamespaceSelector: teamSelector},
					{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: webSelector},
				},
			}},
			Egress: []networkingv1.NetworkPolicyEgressRule{dnsRule, keyReleaseRule},
		},
	}, {
		name: "egress ranges with except, ports, port ranges and protocols",
		edit: func(w *builders.ProtectedModelWrapper) {
			w.EgressRule(mlv1alpha1.EgressRule{
				CIDR:   "10.20.0.0/16",
				Except: []mlv1alpha1.CIDR{"10.20.5.0/24", "10.20.9.0/24"},
				Ports: []mlv1alpha1.NetworkPort{
					{Port: 443},
					{Protocol: corev1.ProtocolUDP, Port: 5000, EndPort: ptr.To[int32](5100)},
					{Protocol: corev1.ProtocolSCTP, Port: 9},
				},
			}).AllowEgress("2001:db8::/32").AllowEgress("203.0.113.0/24", 443, 8443)
		},
		// The API server defaults the protocol; the builder must not rely on it.
		post: func(pm *mlv1alpha1.ProtectedModel) { pm.Spec.Network.AllowedEgress[0].Ports[0].Protocol = "" },
		want: networkingv1.NetworkPolicySpec{
			PodSelector: modelPods, PolicyTypes: both,
			Egress: []networkingv1.NetworkPolicyEgressRule{
				dnsRule, keyReleaseRule,
				{
					To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.20.0.0/16", Except: []string{"10.20.5.0/24", "10.20.9.0/24"}}}},
					Ports: []networkingv1.NetworkPolicyPort{
						tcp(443),
						{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(5000)), EndPort: ptr.To[int32](5100)},
						{Protocol: ptr.To(corev1.ProtocolSCTP), Port: ptr.To(intstr.FromInt32(9))},
					},
				},
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "2001:db8::/32"}}}},
				{
					To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "203.0.113.0/24"}}},
					Ports: []networkingv1.NetworkPolicyPort{tcp(443), tcp(8443)},
				},
			},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pm := model(tc.edit)
			if tc.post != nil {
				tc.post(pm)
			}
			np := asAPI[networkingv1.NetworkPolicy](t, builder.ModelNetworkPolicy(pm, testOperatorNamespace))
			if np.Name != "m" || np.Namespace != testNamespace {
				t.Errorf("NetworkPolicy %s/%s, want %s/m", np.Namespace, np.Name, testNamespace)
			}
			if diff := cmp.Diff(tc.want, np.Spec); diff != "" {
				t.Errorf("NetworkPolicy spec (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNetworkPolicySelectsEveryPodOfTheModel(t *testing.T) {
	pm := model(func(w *builders.ProtectedModelWrapper) { w.GPUs(1) })
	np := asAPI[networkingv1.NetworkPolicy](t, builder.ModelNetworkPolicy(pm, testOperatorNamespace))
	server := deployment(t, pm, servingFacts(1)).Spec.Template.Labels
	if !selects(t, &np.Spec.PodSelector, server) {
		t.Errorf("the NetworkPolicy does not select the server pods (%v)", server)
	}
	other := model(func(w *builders.ProtectedModelWrapper) { w.Name = "other" })
	if selects(t, &np.Spec.PodSelector, deployment(t, other, servingFacts(1)).Spec.Template.Labels) {
		t.Error("the NetworkPolicy of m selects the pods of model other")
	}
}

func TestService(t *testing.T) {
	for _, port := range []int32{8080, 9000} {
		pm := model(func(w *builders.ProtectedModelWrapper) { w.Port(port) })
		svc := asAPI[corev1.Service](t, builder.Service(pm))
		want := corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{"modelguard.dev/model": "m", "modelguard.dev/component": "server"},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromString("http")}},
		}
		if diff := cmp.Diff(want, svc.Spec); diff != "" {
			t.Errorf("port %d: Service spec (-want +got):\n%s", port, diff)
		}
		if svc.Name != "m" || svc.Namespace != testNamespace {
			t.Errorf("Service %s/%s, want %s/m", svc.Namespace, svc.Name, testNamespace)
		}
		d := deployment(t, pm, servingFacts(1))
		if !selects(t, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, d.Spec.Template.Labels) {
			t.Errorf("Service selector %v misses the server pods %v", svc.Spec.Selector, d.Spec.Template.Labels)
		}
		if got := containerNamed(t, d.Spec.Template.Spec.Containers, "server").Ports[0]; got.Name != "http" || got.ContainerPort != port {
			t.Errorf("the Service's target port http is %+v in the server container, want port %d", got, port)
		}
	}
}

func TestServiceAccount(t *testing.T) {
	sa := asAPI[corev1.ServiceAccount](t, builder.ServiceAccount(builder.ForProtectedModel(model())))
	if sa.Name != "m" || sa.Namespace != testNamespace {
		t.Errorf("ServiceAccount %s/%s, want %s/m", sa.Namespace, sa.Name, testNamespace)
	}
	if diff := cmp.Diff(ptr.To(false), sa.AutomountServiceAccountToken); diff != "" {
		t.Errorf("automountServiceAccountToken (-want +got):\n%s", diff)
	}
	if len(sa.Secrets) != 0 || len(sa.ImagePullSecrets) != 0 {
		t.Errorf("ServiceAccount references Secrets: %v %v", sa.Secrets, sa.ImagePullSecrets)
	}
}
