package keys

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// SecretGetter reads one Secret by namespace and name. The operator passes
// its uncached API reader, so that it never caches Secrets it does not own.
type SecretGetter func(ctx context.Context, namespace, name string) (*corev1.Secret, error)

// SecretsFrom reads Secrets through reader; the operator passes its uncached
// API reader, so that KEK Secrets are never watched or cached.
func SecretsFrom(reader client.Reader) SecretGetter {
	return func(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
		secret := &corev1.Secret{}
		if err := reader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, secret); err != nil {
			return nil, err
		}
		return secret, nil
	}
}

// ProviderError says why ModelKeyProvider could not load a key-encryption key, as
// the reason of a KeyAvailable condition and a message that names the spec
// field. It never holds key material.
type ProviderError struct {
	// Reason is one of the api's KeyAvailable reasons, e.g.
	// ReasonKeySecretNotFound.
	Reason  string
	Message string
}

func (e *ProviderError) Error() string { return e.Message }

// ModelKeyProvider loads the key-encryption key that a ModelKey names. A
// secret provider's Secret is read in operatorNamespace, the operator's own
// namespace, never a tenant's: the spec has no namespace field. The KMS and
// Vault providers are not built yet and fail closed with
// ReasonKeyProviderUnavailable. Errors are *ProviderError and name the
// ModelKey, the Secret and the field, never key bytes.
func ModelKeyProvider(ctx context.Context, mk *mlv1alpha1.ModelKey, operatorNamespace string, getSecret SecretGetter) (Provider, error) {
	p := mk.Spec.Provider
	if p.Secret == nil {
		return nil, &ProviderError{Reason: mlv1alpha1.ReasonKeyProviderUnavailable,
			Message: fmt.Sprintf("ModelKey %s: key provider %q is not supported by this operator version yet; use spec.provider.secret", mk.Name, p.Kind())}
	}
	if operatorNamespace == "" {
		return nil, &ProviderError{Reason: mlv1alpha1.ReasonKeyProviderUnavailable,
			Message: fmt.Sprintf("ModelKey %s: the operator does not know its own namespace (POD_NAMESPACE), so it cannot read Secret %s", mk.Name, p.Secret.Name)}
	}
	return secretKEK(ctx, operatorNamespace, p.Secret.Name, p.Secret.Key, "spec.provider.secret", getSecret)
}

// secretKEK reads the KEK in entry key of Secret namespace/name; field is the
// spec field that names the Secret, for the messages.
func secretKEK(ctx context.Context, namespace, name, key, field string, getSecret SecretGetter) (Provider, error) {
	secret, err := getSecret(ctx, namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		return nil, &ProviderError{Reason: mlv1alpha1.ReasonKeySecretNotFound,
			Message: fmt.Sprintf("Secret %s named by %s does not exist", name, field)}
	case err != nil:
		return nil, &ProviderError{Reason: mlv1alpha1.ReasonKeyProviderUnavailable,
			Message: fmt.Sprintf("reading Secret %s: %s", name, apiErrorSummary(err))}
	}
	defer func() {
		for _, v := range secret.Data {
			clear(v)
		}
	}()
	if _, ok := secret.Data[key]; !ok {
		return nil, &ProviderError{Reason: mlv1alpha1.ReasonKeyNotInSecret,
			Message: fmt.Sprintf("Secret %s has no key %q named by %s.key", name, key, field)}
	}
	kek, err := KEKFromSecret(secret, key)
	if err != nil {
		return nil, &ProviderError{Reason: mlv1alpha1.ReasonKeyUnwrapFailed,
			Message: fmt.Sprintf("Secret %s key %q: %s", name, key, err.Error())}
	}
	return kek, nil
}

// apiErrorSummary keeps API errors short in conditions.
func apiErrorSummary(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return string(status.Status().Reason)
	}
	return err.Error()
}
