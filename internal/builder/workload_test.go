package builder_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
)

func TestWorkloadOfEitherKind(t *testing.T) {
	gpu := &mlv1alpha1.GPU{Count: 2, ResourceName: "nvidia.com/gpu"}
	network := mlv1alpha1.Network{AllowedEgress: []mlv1alpha1.EgressRule{{CIDR: "203.0.113.0/24"}}}
	pm := model(func(w *builders.ProtectedModelWrapper) {
		w.GPUs(2).RuntimeClass("kata-cc").AllowEgress("203.0.113.0/24").BreakGlassGroups("sre")
	})
	base := pm.Spec.Weights.DeepCopy()
	tj := builders.MakeTrainingJob("t", testNamespace).UID(testUID).GPUs(2).RuntimeClass("kata-cc").
		AllowEgress("203.0.113.0/24").BreakGlassGroups("sre").BaseWeights(base).Defaulted().Obj()
	bare := builders.MakeTrainingJob("bare", testNamespace).Obj()
	bare.Spec.Network, bare.Spec.Access = nil, nil

	tests := []struct {
		name string
		got  builder.Workload
		want builder.Workload
	}{{
		name: "ProtectedModel",
		got:  builder.ForProtectedModel(pm),
		want: builder.Workload{Kind: "ProtectedModel", Name: "m", Namespace: testNamespace, UID: types.UID(testUID),
			NameLabel: mlv1alpha1.LabelModel, Ownership: pm.Spec.Ownership, WeightsDigest: pm.Spec.Weights.Digest,
			GPU: gpu, Network: network, Access: mlv1alpha1.Access{BreakGlassGroups: []string{"sre"}}, RuntimeClassName: "kata-cc"},
	}, {
		name: "TrainingJob from base weights",
		got:  builder.ForTrainingJob(tj),
		want: builder.Workload{Kind: "TrainingJob", Name: "t", Namespace: testNamespace, UID: types.UID(testUID),
			NameLabel: mlv1alpha1.LabelTrainingJob, Ownership: tj.Spec.Ownership, WeightsDigest: base.Digest,
			GPU: gpu, Network: network, Access: mlv1alpha1.Access{BreakGlassGroups: []string{"sre"}}, RuntimeClassName: "kata-cc"},
	}, {
		name: "TrainingJob from scratch, no network or access block",
		got:  builder.ForTrainingJob(bare),
		want: builder.Workload{Kind: "TrainingJob", Name: "bare", Namespace: testNamespace,
			NameLabel: mlv1alpha1.LabelTrainingJob, Ownership: bare.Spec.Ownership, GPU: bare.Spec.GPU},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.got); diff != "" {
				t.Errorf("workload (-want +got):\n%s", diff)
			}
		})
	}

	w := builder.ForTrainingJob(tj)
	if diff := cmp.Diff(map[string]string{
		"app.kubernetes.io/managed-by": "modelguard", "app.kubernetes.io/name": "t",
		"modelguard.dev/training-job": "t", "modelguard.dev/protected": "true",
	}, builder.CommonLabels(w)); diff != "" {
		t.Errorf("TrainingJob labels (-want +got):\n%s", diff)
	}
	sa := asAPI[corev1.ServiceAccount](t, builder.ServiceAccount(w))
	if diff := cmp.Diff([]metav1.OwnerReference{{APIVersion: "ml.modelguard.dev/v1alpha1", Kind: "TrainingJob", Name: "t",
		UID: types.UID(testUID), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}, sa.OwnerReferences); diff != "" {
		t.Errorf("owner reference (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(base.Digest, sa.Annotations[mlv1alpha1.AnnotationWeightsDigest]); diff != "" {
		t.Errorf("weights digest annotation (-want +got):\n%s", diff)
	}
}

func TestNetworkPolicyIsolationShapes(t *testing.T) {
	w := builder.ForTrainingJob(builders.MakeTrainingJob("t", testNamespace).
		AllowClient(nil, &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}).Defaulted().Obj())
	self := []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/training-job": "t"}}}}
	tests := []struct {
		name      string
		isolation builder.Isolation
		ingress   []networkingv1.NetworkPolicyIngressRule
		egress    int // rules after DNS
	}{{
		name:      "no serving port: allowed clients reach nothing",
		isolation: builder.Isolation{},
	}, {
		name:      "serving port",
		isolation: builder.Isolation{ServingPort: ptr.To[int32](9000)},
		ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(9000))}},
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
		}},
	}, {
		name:      "same-workload peers, both directions",
		isolation: builder.Isolation{SameWorkloadPeers: true},
		ingress:   []networkingv1.NetworkPolicyIngressRule{{From: self}},
		egress:    1,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			np := asAPI[networkingv1.NetworkPolicy](t, builder.NetworkPolicy(w, tc.isolation))
			if diff := cmp.Diff(tc.ingress, np.Spec.Ingress); diff != "" {
				t.Errorf("ingress (-want +got):\n%s", diff)
			}
			if got := len(np.Spec.Egress) - 1; got != tc.egress {
				t.Fatalf("%d egress rules after DNS, want %d", got, tc.egress)
			}
			if tc.egress > 0 {
				if diff := cmp.Diff(self, np.Spec.Egress[1].To); diff != "" {
					t.Errorf("peer egress (-want +got):\n%s", diff)
				}
			}
			if diff := cmp.Diff(metav1.LabelSelector{MatchLabels: map[string]string{"modelguard.dev/training-job": "t"}}, np.Spec.PodSelector); diff != "" {
				t.Errorf("podSelector (-want +got):\n%s", diff)
			}
		})
	}
}
