package builder_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/modelguard/modelguard/test/builders"
)

// TestGPUPlacementWithTheSchedulersMatchers checks the generated pod against
// nodes with the node-affinity and taint matchers the scheduler itself uses
// (k8s.io/component-helpers), rather than reading the fields back.
func TestGPUPlacementWithTheSchedulersMatchers(t *testing.T) {
	pm := model(func(w *builders.ProtectedModelWrapper) {
		w.GPUs(2).GPUProducts("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3").GPUMinMemoryMiB(81920).
			Toleration(corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ml", Effect: corev1.TaintEffectNoSchedule})
	})
	template := deployment(t, pm, servingFacts(1)).Spec.Template
	pod := &corev1.Pod{ObjectMeta: template.ObjectMeta, Spec: template.Spec}

	gpuTaint := corev1.Taint{Key: "nvidia.com/gpu", Value: "present", Effect: corev1.TaintEffectNoSchedule}
	node := func(product, memoryMiB string, taints ...corev1.Taint) *corev1.Node {
		labels := map[string]string{"kubernetes.io/hostname": "n"}
		if product != "" {
			labels["nvidia.com/gpu.product"] = product
		}
		if memoryMiB != "" {
			labels["nvidia.com/gpu.memory"] = memoryMiB
		}
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: labels},
			Spec:       corev1.NodeSpec{Taints: taints},
		}
	}
	tests := []struct {
		name string
		node *corev1.Node
		fits bool
	}{
		{"listed product with exactly the minimum memory", node("NVIDIA-A100-SXM4-80GB", "81920", gpuTaint), true},
		{"other listed product, memory below the minimum", node("NVIDIA-H100-80GB-HBM3", "81559", gpuTaint), false},
		{"listed product, more memory", node("NVIDIA-H100-80GB-HBM3", "97871", gpuTaint), true},
		{"one MiB short of the minimum", node("NVIDIA-A100-SXM4-80GB", "81919", gpuTaint), false},
		{"product not listed", node("Tesla-T4", "15360", gpuTaint), false},
		{"no GPU Feature Discovery labels", node("", ""), false},
		{"memory label missing", node("NVIDIA-A100-SXM4-80GB", ""), false},
		{"user's taint is tolerated", node("NVIDIA-A100-SXM4-80GB", "81920", gpuTaint,
			corev1.Taint{Key: "dedicated", Value: "ml", Effect: corev1.TaintEffectNoSchedule}), true},
		{"someone else's taint is not", node("NVIDIA-A100-SXM4-80GB", "81920",
			corev1.Taint{Key: "dedicated", Value: "batch", Effect: corev1.TaintEffectNoSchedule}), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			affinityOK, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(tc.node)
			if err != nil {
				t.Fatalf("node affinity: %v", err)
			}
			_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(klog.Background(), tc.node.Spec.Taints, pod.Spec.Tolerations,
				func(t *corev1.Taint) bool {
					return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
				}, false)
			if fits := affinityOK && !untolerated; fits != tc.fits {
				t.Errorf("fits = %v (affinity %v, untolerated taint %v), want %v", fits, affinityOK, untolerated, tc.fits)
			}
		})
	}
}
