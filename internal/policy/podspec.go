package policy

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// PodSpecDrift lists how a live pod differs from the pod spec ModelGuard
// generated for it, in what keeps the weights in: the containers (added,
// removed, or with another image, command, arguments, environment, mounts or
// security context), the volumes, the pod's security context, its
// ServiceAccount and token, host namespaces and ephemeral containers. Each
// entry names the container or volume. Fields the API server or the kubelet
// fill in (pull policy, resources' form, tolerations, node name) are not
// compared. None means the pod is the generated one.
func PodSpecDrift(want, live *corev1.PodSpec) []string {
	var drift []string
	drift = append(drift, containerDrift("init container", want.InitContainers, live.InitContainers)...)
	drift = append(drift, containerDrift("container", want.Containers, live.Containers)...)
	for _, c := range live.EphemeralContainers {
		drift = append(drift, fmt.Sprintf("ephemeral container %q added", c.Name))
	}
	drift = append(drift, volumeDrift(want.Volumes, live.Volumes)...)
	if !equality.Semantic.DeepEqual(want.SecurityContext, live.SecurityContext) {
		drift = append(drift, "pod securityContext differs")
	}
	if want.ServiceAccountName != live.ServiceAccountName {
		drift = append(drift, fmt.Sprintf("serviceAccountName is %q, not %q", live.ServiceAccountName, want.ServiceAccountName))
	}
	if !equality.Semantic.DeepEqual(want.AutomountServiceAccountToken, live.AutomountServiceAccountToken) {
		drift = append(drift, "automountServiceAccountToken differs")
	}
	if live.HostNetwork != want.HostNetwork || live.HostPID != want.HostPID || live.HostIPC != want.HostIPC {
		drift = append(drift, "host namespaces differ")
	}
	if !equality.Semantic.DeepEqual(want.RuntimeClassName, live.RuntimeClassName) {
		drift = append(drift, "runtimeClassName differs")
	}
	return drift
}

// containerDrift compares containers by name, and each kept container's
// fields that decide what it runs and sees.
func containerDrift(what string, want, live []corev1.Container) []string {
	return listDrift(what, want, live, func(c *corev1.Container) string { return c.Name },
		func(w, l *corev1.Container) []string {
			var drift []string
			for _, field := range []struct {
				name       string
				want, live any
			}{
				{"image", w.Image, l.Image},
				{"command", w.Command, l.Command},
				{"args", w.Args, l.Args},
				{"env", normalizedEnv(w.Env), normalizedEnv(l.Env)},
				{"envFrom", w.EnvFrom, l.EnvFrom},
				{"volumeMounts", w.VolumeMounts, l.VolumeMounts},
				{"securityContext", w.SecurityContext, l.SecurityContext},
			} {
				if !equality.Semantic.DeepEqual(field.want, field.live) {
					drift = append(drift, fmt.Sprintf("%s %q: %s differs", what, l.Name, field.name))
				}
			}
			return drift
		})
}

// normalizedEnv applies the API server's one default in env, the field
// reference's apiVersion, and treats empty as unset.
func normalizedEnv(env []corev1.EnvVar) []corev1.EnvVar {
	if len(env) == 0 {
		return nil
	}
	out := make([]corev1.EnvVar, len(env))
	for i, e := range env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.APIVersion == "" {
			e.ValueFrom = e.ValueFrom.DeepCopy()
			e.ValueFrom.FieldRef.APIVersion = "v1"
		}
		out[i] = e
	}
	return out
}

// volumeDrift compares volumes by name, and each kept volume's source.
func volumeDrift(want, live []corev1.Volume) []string {
	return listDrift("volume", want, live, func(v *corev1.Volume) string { return v.Name },
		func(w, l *corev1.Volume) []string {
			if !equality.Semantic.DeepEqual(w.VolumeSource, l.VolumeSource) {
				return []string{fmt.Sprintf("volume %q differs", l.Name)}
			}
			return nil
		})
}

// listDrift compares two lists keyed by name: what live adds, what differs
// in the items both have (compare), then what live lacks.
func listDrift[T any](what string, want, live []T, name func(*T) string, compare func(want, live *T) []string) []string {
	var drift []string
	wanted := map[string]*T{}
	for i := range want {
		wanted[name(&want[i])] = &want[i]
	}
	seen := map[string]bool{}
	for i := range live {
		l := &live[i]
		seen[name(l)] = true
		if w, ok := wanted[name(l)]; ok {
			drift = append(drift, compare(w, l)...)
		} else {
			drift = append(drift, fmt.Sprintf("%s %q added", what, name(l)))
		}
	}
	for i := range want {
		if !seen[name(&want[i])] {
			drift = append(drift, fmt.Sprintf("%s %q removed", what, name(&want[i])))
		}
	}
	return drift
}
