package policy_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/policy"
	"github.com/modelguard/modelguard/test/builders"
)

const testUnsealImage = "registry.example.com/modelguard/modelguard:v0.1.0"

func testModel(edits ...func(*builders.ProtectedModelWrapper)) *mlv1alpha1.ProtectedModel {
	w := builders.MakeProtectedModel("m", "models").UID("6f1c1f0e-3a55-4c1b-9a57-2b1d8d7e0c11").Generation(1)
	for _, edit := range edits {
		edit(w)
	}
	return w.Defaulted().Obj()
}

func servingFacts() builder.ProtectedModelFacts {
	return builder.ProtectedModelFacts{UnsealImage: testUnsealImage, Replicas: 2, KeyRelease: builder.KeyRelease{
		URL: "https://modelguard-key-release.modelguard-system.svc", CABundle: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", Namespace: "modelguard-system"}}
}

// TestGeneratedPodsPassRestricted runs every pod template the builders make,
// for specs that take every path through them, through the Pod Security
// "restricted" checks of k8s.io/pod-security-admission.
func TestGeneratedPodsPassRestricted(t *testing.T) {
	specs := map[string]func(*builders.ProtectedModelWrapper){
		"minimal": func(w *builders.ProtectedModelWrapper) {},
		"https source": func(w *builders.ProtectedModelWrapper) {
			w.HTTPSource("https://models.example.com/v3/").AllowEgress("203.0.113.0/24", 443)
		},
		"GPUs with products, memory, tolerations and priority": func(w *builders.ProtectedModelWrapper) {
			w.GPUs(4).GPUProducts("NVIDIA-H100-80GB-HBM3").GPUMinMemoryMiB(81920).PriorityClass("inference").
				Toleration(corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ml", Effect: corev1.TaintEffectNoSchedule})
		},
		"runtime class": func(w *builders.ProtectedModelWrapper) { w.RuntimeClass("kata-cc") },
		"server settings": func(w *builders.ProtectedModelWrapper) {
			w.Command("serve").Args("--port", "9000").Port(9000).Env("A", "b").ReadinessPath("/healthz").
				ModelMountPath("/weights").Replicas(3).MemoryLimit("4Gi")
		},
	}
	for name, edit := range specs {
		pm := testModel(edit)
		templates := map[string]*corev1ac.PodTemplateSpecApplyConfiguration{
			"Deployment":         builder.Deployment(pm, servingFacts()).Spec.Template,
			"Deployment at zero": builder.Deployment(pm, builder.ProtectedModelFacts{UnsealImage: testUnsealImage}).Spec.Template,
		}
		for kind, template := range templates {
			t.Run(name+"/"+kind, func(t *testing.T) {
				if violations := policy.PodSecurityViolations(template); len(violations) > 0 {
					t.Errorf("pod template fails Pod Security restricted:\n%s", strings.Join(violations, "\n"))
				}
			})
		}
	}
}

// TestPodSecurityViolationsFindsWeakenedPods checks the check itself: each
// weakening of a generated pod must be reported, with the policy's reason.
func TestPodSecurityViolationsFindsWeakenedPods(t *testing.T) {
	tests := []struct {
		name   string
		weaken func(*corev1ac.PodTemplateSpecApplyConfiguration)
		reason string
	}{{
		name: "privileged server",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) {
			p.Spec.Containers[0].SecurityContext.WithPrivileged(true)
		},
		reason: "privileged",
	}, {
		name: "privilege escalation in the init container",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) {
			p.Spec.InitContainers[0].SecurityContext.WithAllowPrivilegeEscalation(true)
		},
		reason: "allowPrivilegeEscalation != false",
	}, {
		name: "capabilities not dropped",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) {
			p.Spec.Containers[0].SecurityContext.Capabilities = nil
		},
		reason: "unrestricted capabilities",
	}, {
		name: "capability added",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) {
			p.Spec.Containers[0].SecurityContext.Capabilities.WithAdd("NET_ADMIN")
		},
		reason: "unrestricted capabilities",
	}, {
		name: "root allowed everywhere",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) {
			p.Spec.SecurityContext.WithRunAsNonRoot(false)
			for i := range p.Spec.Containers {
				p.Spec.Containers[i].SecurityContext.RunAsNonRoot = nil
			}
			for i := range p.Spec.InitContainers {
				p.Spec.InitContainers[i].SecurityContext.RunAsNonRoot = nil
			}
		},
		reason: "runAsNonRoot != true",
	}, {
		name:   "runs as root",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) { p.Spec.SecurityContext.WithRunAsUser(0) },
		reason: "runAsUser=0",
	}, {
		name: "seccomp unconfined",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) {
			p.Spec.Containers[0].SecurityContext.WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeUnconfined))
		},
		reason: "seccompProfile",
	}, {
		name:   "host network",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) { p.Spec.WithHostNetwork(true) },
		reason: "host namespaces",
	}, {
		name: "host path volume",
		weaken: func(p *corev1ac.PodTemplateSpecApplyConfiguration) {
			p.Spec.WithVolumes(corev1ac.Volume().WithName("host").WithHostPath(corev1ac.HostPathVolumeSource().WithPath("/var/lib/kubelet")))
		},
		reason: "restricted volume types",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			template := builder.Deployment(testModel(func(w *builders.ProtectedModelWrapper) { w.GPUs(1) }), servingFacts()).Spec.Template
			tc.weaken(template)
			violations := policy.PodSecurityViolations(template)
			found := false
			for _, v := range violations {
				found = found || strings.HasPrefix(v, tc.reason+":")
			}
			if !found {
				t.Errorf("violations %q do not report %q", violations, tc.reason)
			}
		})
	}
}

func typedTemplate(template *corev1ac.PodTemplateSpecApplyConfiguration) (*corev1.PodTemplateSpec, error) {
	data, err := json.Marshal(template)
	if err != nil {
		return nil, err
	}
	out := &corev1.PodTemplateSpec{}
	return out, json.Unmarshal(data, out)
}

func TestNamespaceEnforcement(t *testing.T) {
	ns := func(labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "nlp", Labels: labels}}
	}
	tests := []struct {
		name   string
		labels map[string]string
		want   string
	}{
		{"restricted", map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}, ""},
		{"baseline", map[string]string{"pod-security.kubernetes.io/enforce": "baseline"}, ""},
		{"no label", nil, "namespace nlp does not enforce Pod Security: label it pod-security.kubernetes.io/enforce=restricted (or baseline), so that no privileged or hostPath pod can run beside the model"},
		{"privileged", map[string]string{"pod-security.kubernetes.io/enforce": "privileged"},
			`namespace nlp enforces Pod Security "privileged": models need pod-security.kubernetes.io/enforce=restricted (or baseline), so that no privileged or hostPath pod can run beside them`},
		{"only warn and audit", map[string]string{"pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "restricted"},
			"namespace nlp does not enforce Pod Security: label it pod-security.kubernetes.io/enforce=restricted (or baseline), so that no privileged or hostPath pod can run beside the model"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, policy.NamespaceEnforcement(ns(tc.labels))); diff != "" {
				t.Errorf("NamespaceEnforcement (-want +got):\n%s", diff)
			}
		})
	}
}
