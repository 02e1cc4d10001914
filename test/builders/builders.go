// Package builders makes ModelGuard API objects for tests with a fluent,
// chainable style:
//
//	pm := builders.MakeProtectedModel("m", ns).GPUs(2).AllowClientPods(map[string]string{"app": "web"}).Obj()
//
// Make* returns the smallest object the API server accepts, so a test states
// only what it is about. Every setter returns the wrapper; Obj returns the
// object itself (not a copy) and Clone forks a wrapper.
package builders

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// Values used by the minimal objects. They are valid for the API server but
// point at nothing real.
const (
	DefaultOwner       = "Acme Corp"
	DefaultLicense     = "LicenseRef-Acme-Proprietary"
	DefaultServerImage = "registry.example.com/acme/serve:1.0"
	DefaultTrainImage  = "registry.example.com/acme/trainer:1.0"
	DefaultClaimName   = "sealed-models"
	// DefaultModelKey is the ModelKey the minimal objects name.
	DefaultModelKey   = "models"
	DefaultMemory     = "1Gi"
	DefaultOutputSize = "10Gi"
	// DefaultDigest is the sha256 of the empty string: well-formed, and
	// obviously not a real model.
	DefaultDigest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// WeightsWrapper builds SealedWeights, for ProtectedModel weights and
// TrainingJob baseWeights.
type WeightsWrapper struct{ mlv1alpha1.SealedWeights }

// MakeWeights returns valid weights: a sealed bundle on the PVC
// DefaultClaimName, its data key wrapped by ModelKey modelKey, DefaultMemory
// of memory.
func MakeWeights(modelKey string) *WeightsWrapper {
	return &WeightsWrapper{mlv1alpha1.SealedWeights{
		Source: mlv1alpha1.WeightsSource{Volume: &mlv1alpha1.VolumeSource{ClaimName: DefaultClaimName}},
		Digest: DefaultDigest,
		Key:    ModelKeyRef(modelKey),
		Memory: resource.MustParse(DefaultMemory),
	}}
}

// Obj returns the weights.
func (w *WeightsWrapper) Obj() *mlv1alpha1.SealedWeights { return &w.SealedWeights }

// Volume reads the bundle from path on the PVC claim, replacing any source.
func (w *WeightsWrapper) Volume(claim, path string) *WeightsWrapper {
	w.Source = volumeSource(claim, path)
	return w
}

// HTTP downloads the bundle from url, replacing any source.
func (w *WeightsWrapper) HTTP(url string) *WeightsWrapper {
	w.Source = httpSource(url)
	return w
}

func volumeSource(claim, path string) mlv1alpha1.WeightsSource {
	return mlv1alpha1.WeightsSource{Volume: &mlv1alpha1.VolumeSource{ClaimName: claim, Path: path}}
}

func httpSource(url string) mlv1alpha1.WeightsSource {
	return mlv1alpha1.WeightsSource{HTTP: &mlv1alpha1.HTTPSource{URL: url}}
}

// Digest sets the expected model digest.
func (w *WeightsWrapper) Digest(d string) *WeightsWrapper { w.SealedWeights.Digest = d; return w }

// ModelKey names the ModelKey that wrapped the bundle's data key.
func (w *WeightsWrapper) ModelKey(name string) *WeightsWrapper {
	w.SealedWeights.Key = ModelKeyRef(name)
	return w
}

// Memory sets the size of the plaintext memory volume, e.g. "16Gi".
func (w *WeightsWrapper) Memory(q string) *WeightsWrapper {
	w.SealedWeights.Memory = resource.MustParse(q)
	return w
}

// ModelKeyRef refers to the ModelKey name.
func ModelKeyRef(name string) mlv1alpha1.ModelKeyReference {
	return mlv1alpha1.ModelKeyReference{ModelKey: name}
}

// Selector is a label selector matching labels.
func Selector(labels map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: labels}
}

// Condition is a condition as a controller would set it.
func Condition(condType string, status metav1.ConditionStatus, reason, message string, generation int64) metav1.Condition {
	return metav1.Condition{
		Type: condType, Status: status, Reason: reason, Message: message,
		ObservedGeneration: generation, LastTransitionTime: metav1.Now(),
	}
}

// The shared blocks are edited through these helpers, so that both kinds'
// wrappers behave the same.

func gpuOf(g **mlv1alpha1.GPU) *mlv1alpha1.GPU {
	if *g == nil {
		*g = &mlv1alpha1.GPU{}
	}
	return *g
}

func networkOf(n **mlv1alpha1.Network) *mlv1alpha1.Network {
	if *n == nil {
		*n = &mlv1alpha1.Network{}
	}
	return *n
}

func egressRule(cidr string, ports []int32) mlv1alpha1.EgressRule {
	rule := mlv1alpha1.EgressRule{CIDR: mlv1alpha1.CIDR(cidr)}
	for _, p := range ports {
		rule.Ports = append(rule.Ports, mlv1alpha1.NetworkPort{Protocol: corev1.ProtocolTCP, Port: p})
	}
	return rule
}

func minimalOwnership() mlv1alpha1.Ownership {
	return mlv1alpha1.Ownership{Owner: DefaultOwner, License: DefaultLicense}
}

// defaultOwnership fills what the CRD schema defaults in an Ownership.
func defaultOwnership(o *mlv1alpha1.Ownership) {
	if o.Classification == "" {
		o.Classification = mlv1alpha1.ClassificationTradeSecret
	}
}

// defaultShared fills what the CRD schema defaults in the shared blocks.
func defaultShared(g *mlv1alpha1.GPU, n *mlv1alpha1.Network) {
	if g != nil && g.ResourceName == "" {
		g.ResourceName = "nvidia.com/gpu"
	}
	if n != nil {
		for i := range n.AllowedEgress {
			for j := range n.AllowedEgress[i].Ports {
				if n.AllowedEgress[i].Ports[j].Protocol == "" {
					n.AllowedEgress[i].Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
}
