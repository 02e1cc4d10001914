package keys

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

func TestModelKeyProvider(t *testing.T) {
	kekText, err := GenerateKEK()
	if err != nil {
		t.Fatal(err)
	}
	kek, err := ParseKEK([]byte(kekText))
	if err != nil {
		t.Fatal(err)
	}
	modelKey := func(p mlv1alpha1.ModelKeyProvider) *mlv1alpha1.ModelKey {
		return &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: "models"}, Spec: mlv1alpha1.ModelKeySpec{Provider: p}}
	}
	secretKey := modelKey(mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "models-kek", Key: "kek"}})
	read := func(data map[string][]byte, err error) SecretGetter {
		return func(_ context.Context, namespace, name string) (*corev1.Secret, error) {
			if namespace != "modelguard-system" || name != "models-kek" {
				t.Errorf("read Secret %s/%s, want modelguard-system/models-kek: only the operator's namespace", namespace, name)
			}
			if err != nil {
				return nil, err
			}
			return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Data: data}, nil
		}
	}
	notRead := func(context.Context, string, string) (*corev1.Secret, error) {
		t.Error("read a Secret")
		return nil, errors.New("not read")
	}
	tests := []struct {
		name      string
		mk        *mlv1alpha1.ModelKey
		namespace string
		get       SecretGetter
		wantID    string
		wantErr   *ProviderError
	}{
		{"KEK in the operator's Secret", secretKey, "modelguard-system", read(map[string][]byte{"kek": []byte(kekText)}, nil), kek.ID(), nil},
		{"Secret missing", secretKey, "modelguard-system",
			read(nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, "models-kek")), "",
			&ProviderError{Reason: mlv1alpha1.ReasonKeySecretNotFound, Message: "Secret models-kek named by spec.provider.secret does not exist"}},
		{"no such entry", secretKey, "modelguard-system", read(map[string][]byte{"other": []byte(kekText)}, nil), "",
			&ProviderError{Reason: mlv1alpha1.ReasonKeyNotInSecret, Message: `Secret models-kek has no key "kek" named by spec.provider.secret.key`}},
		{"operator namespace unknown: fail closed", secretKey, "", notRead, "",
			&ProviderError{Reason: mlv1alpha1.ReasonKeyProviderUnavailable,
				Message: "ModelKey models: the operator does not know its own namespace (POD_NAMESPACE), so it cannot read Secret models-kek"}},
		{"AWS KMS not built yet: fail closed", modelKey(mlv1alpha1.ModelKeyProvider{AWSKMS: &mlv1alpha1.AWSKMSKey{KeyID: "alias/models"}}), "modelguard-system", notRead, "",
			&ProviderError{Reason: mlv1alpha1.ReasonKeyProviderUnavailable,
				Message: `ModelKey models: key provider "AWSKMS" is not supported by this operator version yet; use spec.provider.secret`}},
		{"Vault not built yet: fail closed", modelKey(mlv1alpha1.ModelKeyProvider{VaultTransit: &mlv1alpha1.ModelKeyVaultTransit{Address: "https://vault", KeyName: "m", Role: "r"}}), "modelguard-system", notRead, "",
			&ProviderError{Reason: mlv1alpha1.ReasonKeyProviderUnavailable,
				Message: `ModelKey models: key provider "VaultTransit" is not supported by this operator version yet; use spec.provider.secret`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			provider, err := ModelKeyProvider(context.Background(), tc.mk, tc.namespace, tc.get)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if provider.ID() != tc.wantID {
					t.Errorf("provider %s, want %s", provider.ID(), tc.wantID)
				}
				return
			}
			var got *ProviderError
			if !errors.As(err, &got) {
				t.Fatalf("error %v, want a *ProviderError", err)
			}
			if diff := cmp.Diff(tc.wantErr, got); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			assertNoLeak(t, err.Error(), []byte(kekText))
		})
	}
}
