package builder

import (
	corev1 "k8s.io/api/core/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
)

// nonRootUID is distroless's "nonroot" user; pods run as it whatever the
// image says, so that Pod Security "restricted" admits them.
const nonRootUID int64 = 65532

// hardenedPodSpec is the pod-level part shared by every pod ModelGuard runs,
// whatever the kind: the workload's own ServiceAccount with no API token, no
// service links, non-root with the runtime's seccomp profile, and the
// workload's runtime class. GPU scheduling is added by withGPUScheduling, for
// the pods that need GPUs.
func hardenedPodSpec(w Workload) *corev1ac.PodSpecApplyConfiguration {
	spec := corev1ac.PodSpec().
		WithServiceAccountName(w.Name).
		WithAutomountServiceAccountToken(false).
		WithEnableServiceLinks(false).
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(nonRootUID).
			WithRunAsGroup(nonRootUID).
			WithFSGroup(nonRootUID).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault)))
	if w.RuntimeClassName != "" {
		spec.WithRuntimeClassName(w.RuntimeClassName)
	}
	return spec
}

// hardenedContainerSecurityContext is the security context of every
// container ModelGuard generates.
func hardenedContainerSecurityContext() *corev1ac.SecurityContextApplyConfiguration {
	return corev1ac.SecurityContext().
		WithRunAsNonRoot(true).
		WithAllowPrivilegeEscalation(false).
		WithReadOnlyRootFilesystem(true).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
		WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))
}

// podTemplate is a pod template of one component of the workload, labelled
// and annotated like every object managed for it.
func podTemplate(w Workload, component string, annotations map[string]string, spec *corev1ac.PodSpecApplyConfiguration) *corev1ac.PodTemplateSpecApplyConfiguration {
	return corev1ac.PodTemplateSpec().
		WithLabels(PodLabels(w, component)).
		WithAnnotations(merge(OwnershipAnnotations(w), annotations)).
		WithSpec(spec)
}
