package v1alpha1_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

func TestModelKeyProviderKind(t *testing.T) {
	cases := []struct {
		name     string
		provider mlv1alpha1.ModelKeyProvider
		want     mlv1alpha1.ModelKeyProviderKind
	}{
		{"secret", mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "kek", Key: "kek"}}, mlv1alpha1.ModelKeyProviderSecret},
		{"aws kms", mlv1alpha1.ModelKeyProvider{AWSKMS: &mlv1alpha1.AWSKMSKey{KeyID: "alias/models"}}, mlv1alpha1.ModelKeyProviderAWSKMS},
		{"vault transit", mlv1alpha1.ModelKeyProvider{VaultTransit: &mlv1alpha1.ModelKeyVaultTransit{Address: "https://vault"}}, mlv1alpha1.ModelKeyProviderVaultTransit},
		{"none", mlv1alpha1.ModelKeyProvider{}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.provider.Kind(); got != tc.want {
				t.Errorf("Kind() = %q, want %q", got, tc.want)
			}
		})
	}
}

// conditionInColumn extracts the condition type a printer column filters on.
var conditionInColumn = regexp.MustCompile(`@\.type=="([A-Za-z]+)"`)

// TestPrinterColumnsUseConditionConstants guards the generated CRDs against
// a printer column that filters on a condition type the controllers never
// set: kubectl would show an always-empty column.
func TestPrinterColumnsUseConditionConstants(t *testing.T) {
	known := append(mlv1alpha1.ProtectionConditionTypes(),
		mlv1alpha1.ConditionReady, mlv1alpha1.ConditionReconciling, mlv1alpha1.ConditionStalled,
		mlv1alpha1.ConditionOutputSealed)
	wantColumns := map[string][]string{
		"ProtectedModel": {"Owner", "Class", "Encrypted", "Isolated", "GPUs", "Ready", "Phase", "Age"},
		"TrainingJob":    {"Owner", "Nodes", "GPUs", "Phase", "Sealed", "Age"},
		"ModelKey":       {"Provider", "Ready", "Key", "Age"},
	}
	wantScope := map[string]apiextensionsv1.ResourceScope{
		"ProtectedModel": apiextensionsv1.NamespaceScoped,
		"TrainingJob":    apiextensionsv1.NamespaceScoped,
		// The KEK a ModelKey names must be out of tenants' reach.
		"ModelKey": apiextensionsv1.ClusterScoped,
	}
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) != 3 {
		t.Fatalf("want the 3 generated CRDs in config/crd/bases, found %v (err %v); run `make manifests`", files, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(data, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		kind := crd.Spec.Names.Kind
		if len(crd.Spec.Versions) != 1 {
			t.Fatalf("%s: want one version, got %d", kind, len(crd.Spec.Versions))
		}
		var names []string
		for _, col := range crd.Spec.Versions[0].AdditionalPrinterColumns {
			names = append(names, col.Name)
			for _, m := range conditionInColumn.FindAllStringSubmatch(col.JSONPath, -1) {
				if !slices.Contains(known, m[1]) {
					t.Errorf("%s column %s filters on condition %q, which is not an exported condition type", kind, col.Name, m[1])
				}
			}
		}
		if diff := cmp.Diff(wantColumns[kind], names); diff != "" {
			t.Errorf("%s printer columns (-want +got):\n%s", kind, diff)
		}
		if diff := cmp.Diff([]string{"modelguard"}, crd.Spec.Names.Categories); diff != "" {
			t.Errorf("%s categories (-want +got):\n%s", kind, diff)
		}
		if crd.Spec.Scope != wantScope[kind] {
			t.Errorf("%s scope = %s, want %s", kind, crd.Spec.Scope, wantScope[kind])
		}
	}
}
