package policy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/policy"
)

func TestPodSpecDrift(t *testing.T) {
	generated, err := typedTemplate(builder.Deployment(testModel(), servingFacts()).Spec.Template)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(*corev1.PodSpec)
		want []string
	}{{
		name: "the generated pod",
		edit: func(*corev1.PodSpec) {},
	}, {
		name: "what the API server and kubelet fill in is ignored",
		edit: func(s *corev1.PodSpec) {
			s.NodeName, s.DNSPolicy, s.SchedulerName = "node-1", corev1.DNSClusterFirst, "default-scheduler"
			s.Containers[0].ImagePullPolicy, s.Containers[0].TerminationMessagePath = corev1.PullAlways, "/dev/termination-log"
			s.Tolerations = append(s.Tolerations, corev1.Toleration{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists})
			// The same quantity in another form.
			s.Volumes[0].EmptyDir.SizeLimit = ptr.To(resource.MustParse("1024Mi"))
		},
	}, {
		name: "a sidecar added",
		edit: func(s *corev1.PodSpec) {
			s.Containers = append(s.Containers, corev1.Container{Name: "sidecar", Image: "tenant/x"})
		},
		want: []string{`container "sidecar" added`},
	}, {
		name: "the server's command, env and image changed",
		edit: func(s *corev1.PodSpec) {
			s.Containers[0].Command = []string{"sh", "-c", "cat /models/*"}
			s.Containers[0].Env = []corev1.EnvVar{{Name: "DUMP", Value: "1"}}
			s.Containers[0].Image = "tenant/server:evil"
		},
		want: []string{`container "server": image differs`, `container "server": command differs`, `container "server": env differs`},
	}, {
		name: "the unseal container's mounts and security context changed",
		edit: func(s *corev1.PodSpec) {
			s.InitContainers[0].VolumeMounts = append(s.InitContainers[0].VolumeMounts, corev1.VolumeMount{Name: "out", MountPath: "/out"})
			s.InitContainers[0].SecurityContext.ReadOnlyRootFilesystem = ptr.To(false)
		},
		want: []string{`init container "unseal": volumeMounts differs`, `init container "unseal": securityContext differs`},
	}, {
		name: "a container removed, a volume added and one swapped",
		edit: func(s *corev1.PodSpec) {
			s.InitContainers = nil
			s.Volumes = append(s.Volumes, corev1.Volume{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
			s.Volumes[0].EmptyDir = nil
			s.Volumes[0].HostPath = &corev1.HostPathVolumeSource{Path: "/var/lib/models"}
		},
		want: []string{`init container "unseal" removed`, `volume "model" differs`, `volume "host" added`},
	}, {
		name: "pod-level weakening",
		edit: func(s *corev1.PodSpec) {
			s.SecurityContext.RunAsUser = ptr.To[int64](0)
			s.ServiceAccountName, s.AutomountServiceAccountToken, s.HostNetwork = "default", ptr.To(true), true
			s.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger"}}}
		},
		want: []string{`ephemeral container "debugger" added`, "pod securityContext differs", `serviceAccountName is "default", not "m"`,
			"automountServiceAccountToken differs", "host namespaces differ"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			live := generated.Spec.DeepCopy()
			tc.edit(live)
			if diff := cmp.Diff(tc.want, policy.PodSpecDrift(&generated.Spec, live)); diff != "" {
				t.Errorf("PodSpecDrift (-want +got):\n%s", diff)
			}
		})
	}
}
