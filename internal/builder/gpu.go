package builder

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// GPU Feature Discovery's node labels.
const (
	LabelGPUProduct = "nvidia.com/gpu.product"
	LabelGPUMemory  = "nvidia.com/gpu.memory"
)

// withGPUScheduling adds what a pod asking for gpu needs to land on a fitting
// node: its priority class, a toleration of the GPU resource taint, the
// cluster's default GPU tolerations, the spec's own tolerations, and node
// affinity on the GPU product and memory labels.
func withGPUScheduling(spec *corev1ac.PodSpecApplyConfiguration, gpu *mlv1alpha1.GPU, defaultTolerations []corev1.Toleration) *corev1ac.PodSpecApplyConfiguration {
	if gpu == nil {
		return spec
	}
	if gpu.PriorityClassName != "" {
		spec.WithPriorityClassName(gpu.PriorityClassName)
	}
	if gpu.Count > 0 {
		spec.WithTolerations(corev1ac.Toleration().
			WithKey(gpuResourceName(gpu)).
			WithOperator(corev1.TolerationOpExists).
			WithEffect(corev1.TaintEffectNoSchedule))
		for i := range defaultTolerations {
			spec.WithTolerations(toleration(defaultTolerations[i]))
		}
	}
	for i := range gpu.Tolerations {
		spec.WithTolerations(toleration(gpu.Tolerations[i]))
	}
	var requirements []*corev1ac.NodeSelectorRequirementApplyConfiguration
	if len(gpu.Products) > 0 {
		requirements = append(requirements, corev1ac.NodeSelectorRequirement().
			WithKey(LabelGPUProduct).
			WithOperator(corev1.NodeSelectorOpIn).
			WithValues(gpu.Products...))
	}
	if gpu.MinMemoryMiB > 0 {
		// Gt is strict; the label is the memory in MiB, and a node with
		// exactly the minimum must qualify.
		requirements = append(requirements, corev1ac.NodeSelectorRequirement().
			WithKey(LabelGPUMemory).
			WithOperator(corev1.NodeSelectorOpGt).
			WithValues(strconv.FormatInt(gpu.MinMemoryMiB-1, 10)))
	}
	if len(requirements) > 0 {
		spec.WithAffinity(corev1ac.Affinity().WithNodeAffinity(corev1ac.NodeAffinity().
			WithRequiredDuringSchedulingIgnoredDuringExecution(corev1ac.NodeSelector().
				WithNodeSelectorTerms(corev1ac.NodeSelectorTerm().WithMatchExpressions(requirements...)))))
	}
	return spec
}

// withGPULimit sets the container's limit on the GPU resource and drops any
// request for it (extended resources cannot be overcommitted, so the limit is
// the request).
func withGPULimit(gpu *mlv1alpha1.GPU, requests, limits corev1.ResourceList) {
	if gpu == nil || gpu.Count == 0 {
		return
	}
	name := corev1.ResourceName(gpuResourceName(gpu))
	limits[name] = *resource.NewQuantity(int64(gpu.Count), resource.DecimalSI)
	delete(requests, name)
}

func gpuResourceName(gpu *mlv1alpha1.GPU) string {
	if gpu.ResourceName == "" {
		return "nvidia.com/gpu"
	}
	return gpu.ResourceName
}
