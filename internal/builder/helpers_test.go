package builder_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
)

const (
	testNamespace = "models"
	testUID       = "6f1c1f0e-3a55-4c1b-9a57-2b1d8d7e0c11"
	unsealImage   = "registry.example.com/modelguard/modelguard:v0.1.0"
	otherDigest   = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
)

// quantities compares resource quantities by value: a JSON round trip keeps
// the value but not the internal representation.
var quantities = cmp.Comparer(func(a, b resource.Quantity) bool { return a.Cmp(b) == 0 })

// model returns a defaulted ProtectedModel named "m" after applying edits,
// as the API server would hand it to the controller.
func model(edits ...func(*builders.ProtectedModelWrapper)) *mlv1alpha1.ProtectedModel {
	w := builders.MakeProtectedModel("m", testNamespace).UID(testUID).Generation(1)
	for _, edit := range edits {
		edit(w)
	}
	return w.Defaulted().Obj()
}

// servingFacts are the facts of a model that may serve.
func servingFacts(replicas int32) builder.ProtectedModelFacts {
	return builder.ProtectedModelFacts{UnsealImage: unsealImage, Replicas: replicas, KeyRelease: testKeyRelease}
}

// testKeyRelease is the key-release endpoint of the operator in
// testOperatorNamespace.
var testKeyRelease = builder.KeyRelease{
	URL:       "https://modelguard-key-release." + testOperatorNamespace + ".svc",
	CABundle:  "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n",
	Namespace: testOperatorNamespace,
}

const testOperatorNamespace = "modelguard-system"

// asAPI converts an applyconfiguration into the API type the API server
// would store, through the JSON both share. Unknown fields fail the test, so
// a builder cannot set something the API type would drop.
func asAPI[T any](t *testing.T, applyConfiguration any) *T {
	t.Helper()
	data, err := json.Marshal(applyConfiguration)
	if err != nil {
		t.Fatalf("marshalling %T: %v", applyConfiguration, err)
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.DisallowUnknownFields()
	out := new(T)
	if err := decoder.Decode(out); err != nil {
		t.Fatalf("decoding %T into %T: %v", applyConfiguration, out, err)
	}
	return out
}

func deployment(t *testing.T, pm *mlv1alpha1.ProtectedModel, facts builder.ProtectedModelFacts) *appsv1.Deployment {
	t.Helper()
	return asAPI[appsv1.Deployment](t, builder.Deployment(pm, facts))
}

func containerNamed(t *testing.T, containers []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q among %d", name, len(containers))
	return corev1.Container{}
}

// selects reports whether a label selector selects a set of labels.
func selects(t *testing.T, selector *metav1.LabelSelector, set map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		t.Fatalf("selector %v: %v", selector, err)
	}
	return s.Matches(labels.Set(set))
}

// hardenedContainer is the security context the issue requires on every
// container ModelGuard generates.
func hardenedContainer() *corev1.SecurityContext {
	f, tr := false, true
	return &corev1.SecurityContext{
		RunAsNonRoot:             &tr,
		AllowPrivilegeEscalation: &f,
		ReadOnlyRootFilesystem:   &tr,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }
