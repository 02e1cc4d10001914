package keys

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// ErrKeyNotInSecret means a Secret exists but has no entry under the
// requested key.
var ErrKeyNotInSecret = errors.New("the Secret has no such key")

// SecretRef names one entry of a Kubernetes Secret, written ns/name:key.
type SecretRef struct {
	Namespace string
	Name      string
	Key       string
}

// String returns the ns/name:key form.
func (r SecretRef) String() string { return r.Namespace + "/" + r.Name + ":" + r.Key }

// ParseSecretRef parses "ns/name:key".
func ParseSecretRef(s string) (SecretRef, error) {
	nsName, key, ok := strings.Cut(s, ":")
	ns, name, ok2 := strings.Cut(nsName, "/")
	if !ok || !ok2 || ns == "" || name == "" || key == "" {
		return SecretRef{}, fmt.Errorf("secret reference %q: want namespace/name:key", s)
	}
	ref := SecretRef{Namespace: ns, Name: name, Key: key}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return SecretRef{}, fmt.Errorf("secret reference %q: namespace: %s", s, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return SecretRef{}, fmt.Errorf("secret reference %q: name: %s", s, strings.Join(errs, "; "))
	}
	if errs := validation.IsConfigMapKey(key); len(errs) > 0 {
		return SecretRef{}, fmt.Errorf("secret reference %q: key: %s", s, strings.Join(errs, "; "))
	}
	return ref, nil
}

// KEKFromSecret reads a KEK from one entry of a Secret the caller already
// has (the operator reads it through its narrow cache). A missing entry gives
// an error wrapping ErrKeyNotInSecret; bad content one wrapping
// ErrInvalidKey.
func KEKFromSecret(secret *corev1.Secret, key string) (*KEK, error) {
	data, ok := secret.Data[key]
	if !ok {
		return nil, fmt.Errorf("secret %s/%s: %w %q", secret.Namespace, secret.Name, ErrKeyNotInSecret, key)
	}
	k, err := ParseKEK(data)
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s key %q: %w", secret.Namespace, secret.Name, key, err)
	}
	return k, nil
}

// FetchSecretKEK reads the Secret through the API server and returns its KEK.
// A missing Secret gives the API server's NotFound error, wrapped, so that
// apierrors.IsNotFound works on it.
func FetchSecretKEK(ctx context.Context, secrets corev1client.SecretsGetter, ref SecretRef) (*KEK, error) {
	secret, err := secrets.Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	defer func() {
		for _, v := range secret.Data {
			clear(v)
		}
	}()
	return KEKFromSecret(secret, ref.Key)
}
