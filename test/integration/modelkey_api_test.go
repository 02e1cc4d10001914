package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// A PEM certificate, for caBundle; its content is not checked by the API.
const testCAPEM = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBADAKBggqhkjOPQQDAjAAMB4XDTI2MDEwMTAwMDAwMFoX\n-----END CERTIFICATE-----\n"

// makeModelKey is a minimal valid ModelKey: a Secret provider, every
// namespace.
func makeModelKey(name string) *mlv1alpha1.ModelKey {
	return &mlv1alpha1.ModelKey{
		TypeMeta:   metav1.TypeMeta{APIVersion: mlv1alpha1.GroupVersion.String(), Kind: "ModelKey"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: mlv1alpha1.ModelKeySpec{
			Provider:          mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "model-kek", Key: "kek"}},
			NamespaceSelector: &metav1.LabelSelector{},
		},
	}
}

func awsKMS() *mlv1alpha1.AWSKMSKey {
	return &mlv1alpha1.AWSKMSKey{KeyID: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}
}

func vaultTransit() *mlv1alpha1.ModelKeyVaultTransit {
	return &mlv1alpha1.ModelKeyVaultTransit{Address: "https://vault.example.com:8200", KeyName: "models", Role: "modelguard"}
}

// mk is a ModelKey changed by mutate and then by raw edits; ModelKeys are
// cluster-scoped, so the namespace is unused.
func mk(mutate func(*mlv1alpha1.ModelKey), edits ...rawEdit) func(*testing.T, string) client.Object {
	return func(t *testing.T, _ string) client.Object {
		k := makeModelKey("mk-invalid")
		if mutate != nil {
			mutate(k)
		}
		return applyEdits(t, k, edits)
	}
}

func withProvider(p mlv1alpha1.ModelKeyProvider) func(*mlv1alpha1.ModelKey) {
	return func(k *mlv1alpha1.ModelKey) { k.Spec.Provider = p }
}

func withVault(mutate func(*mlv1alpha1.ModelKeyVaultTransit)) func(*mlv1alpha1.ModelKey) {
	return func(k *mlv1alpha1.ModelKey) {
		v := vaultTransit()
		mutate(v)
		k.Spec.Provider = mlv1alpha1.ModelKeyProvider{VaultTransit: v}
	}
}

func withAWS(mutate func(*mlv1alpha1.AWSKMSKey)) func(*mlv1alpha1.ModelKey) {
	return func(k *mlv1alpha1.ModelKey) {
		a := awsKMS()
		mutate(a)
		k.Spec.Provider = mlv1alpha1.ModelKeyProvider{AWSKMS: a}
	}
}

var invalidModelKeys = []invalidCase{
	// Exactly one provider.
	{"no provider", mk(withProvider(mlv1alpha1.ModelKeyProvider{})), "spec.provider", "provider must set exactly one of secret, awsKms or vaultTransit"},
	{"secret and awsKms", mk(withProvider(mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "k", Key: "kek"}, AWSKMS: awsKMS()})),
		"spec.provider", "provider must set exactly one of secret, awsKms or vaultTransit"},
	{"awsKms and vaultTransit", mk(withProvider(mlv1alpha1.ModelKeyProvider{AWSKMS: awsKMS(), VaultTransit: vaultTransit()})),
		"spec.provider", "provider must set exactly one of secret, awsKms or vaultTransit"},
	{"all three providers", mk(withProvider(mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "k", Key: "kek"}, AWSKMS: awsKMS(), VaultTransit: vaultTransit()})),
		"spec.provider", "provider must set exactly one of secret, awsKms or vaultTransit"},
	{"provider missing", mk(nil, drop("spec", "provider")), "spec.provider", "Required value"},
	{"spec missing", mk(nil, drop("spec")), "spec", "Required value"},

	// namespaceSelector is required: sharing a key is a decision.
	{"namespaceSelector missing", mk(nil, drop("spec", "namespaceSelector")), "spec.namespaceSelector", "Required value"},
	{"namespaceSelector nil from Go", mk(func(k *mlv1alpha1.ModelKey) { k.Spec.NamespaceSelector = nil }), "spec.namespaceSelector", "Required value"},

	// secret
	{"secret name missing", mk(nil, drop("spec", "provider", "secret", "name")), "spec.provider.secret.name", "Required value"},
	{"secret name uppercase", mk(withProvider(mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "Model-KEK", Key: "kek"}})),
		"spec.provider.secret.name", "secret.name must be a lowercase RFC 1123 subdomain"},
	{"secret name too long", mk(withProvider(mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: strings.Repeat("a", 254), Key: "kek"}})),
		"spec.provider.secret.name", "Too long"},
	{"secret key missing", mk(nil, drop("spec", "provider", "secret", "key")), "spec.provider.secret.key", "Required value"},
	{"secret key with slash", mk(withProvider(mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "model-kek", Key: "a/b"}})),
		"spec.provider.secret.key", "secret.key must be a Secret data key"},

	// awsKms
	{"awsKms keyId missing", mk(withAWS(func(a *mlv1alpha1.AWSKMSKey) {}), drop("spec", "provider", "awsKms", "keyId")), "spec.provider.awsKms.keyId", "Required value"},
	{"awsKms region invalid", mk(withAWS(func(a *mlv1alpha1.AWSKMSKey) { a.Region = "Europe" })), "spec.provider.awsKms.region", "awsKms.region must be an AWS region"},
	{"awsKms endpoint plain http", mk(withAWS(func(a *mlv1alpha1.AWSKMSKey) { a.Endpoint = "http://kms.eu-west-1.amazonaws.com" })),
		"spec.provider.awsKms.endpoint", "awsKms.endpoint must be an https URL"},

	// vaultTransit
	{"vault address plain http", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.Address = "http://vault.example.com:8200" })),
		"spec.provider.vaultTransit.address", "vaultTransit.address must be an https URL"},
	{"vault address with credentials", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.Address = "https://root:s3cret@vault.example.com" })),
		"spec.provider.vaultTransit.address", "vaultTransit.address must not contain credentials"},
	{"vault address missing", mk(withVault(func(*mlv1alpha1.ModelKeyVaultTransit) {}), drop("spec", "provider", "vaultTransit", "address")),
		"spec.provider.vaultTransit.address", "Required value"},
	{"vault keyName missing", mk(withVault(func(*mlv1alpha1.ModelKeyVaultTransit) {}), drop("spec", "provider", "vaultTransit", "keyName")),
		"spec.provider.vaultTransit.keyName", "Required value"},
	{"vault keyName with slash", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.KeyName = "models/v2" })),
		"spec.provider.vaultTransit.keyName", "vaultTransit.keyName must start with a letter or digit"},
	{"vault role missing", mk(withVault(func(*mlv1alpha1.ModelKeyVaultTransit) {}), drop("spec", "provider", "vaultTransit", "role")),
		"spec.provider.vaultTransit.role", "Required value"},
	{"vault role with space", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.Role = "model guard" })),
		"spec.provider.vaultTransit.role", "vaultTransit.role must start with a letter or digit"},
	{"vault mount leading slash", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.Mount = "/transit" })),
		"spec.provider.vaultTransit.mount", "vaultTransit.mount must be a Vault mount path"},
	{"vault authMount trailing slash", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.AuthMount = "kubernetes/" })),
		"spec.provider.vaultTransit.authMount", "vaultTransit.authMount must be a Vault mount path"},
	{"vault namespace leading slash", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.Namespace = "/ml" })),
		"spec.provider.vaultTransit.namespace", "vaultTransit.namespace must be a Vault namespace path"},
	{"vault caBundle not PEM", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) { v.CABundle = "trust me" })),
		"spec.provider.vaultTransit.caBundle", "vaultTransit.caBundle must hold PEM-encoded certificates"},
	{"vault caBundle with a private key", mk(withVault(func(v *mlv1alpha1.ModelKeyVaultTransit) {
		v.CABundle = testCAPEM + "-----BEGIN PRIVATE KEY-----\nMC4CAQ==\n-----END PRIVATE KEY-----\n"
	})), "spec.provider.vaultTransit.caBundle", "never a private key"},
}

// TestModelKeyInvalidRejected sends every case to the real API server, with
// strict field validation as kubectl uses, and checks that it is refused on
// the right field with a message that says what is expected.
func TestModelKeyInvalidRejected(t *testing.T) {
	ctx := context.Background()
	if out := env.Client.Create(ctx, makeModelKey("mk-minimal"), client.DryRunAll); out != nil {
		t.Fatalf("the minimal ModelKey, the starting point of every case, is rejected: %v", out)
	}
	seen := map[string]bool{}
	for _, tc := range invalidModelKeys {
		if seen[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			obj := tc.build(t, "")
			err := env.Client.Create(ctx, obj, client.FieldValidation(metav1.FieldValidationStrict))
			if err == nil {
				t.Cleanup(func() { _ = env.Client.Delete(ctx, obj) })
			}
			got := causes(t, err)
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error does not name %s:\n%v", tc.field, err)
			}
			for _, c := range got {
				field, msg, _ := strings.Cut(c, ": ")
				if field == tc.field && strings.Contains(msg, tc.want) {
					t.Logf("rejected: %s", c)
					return
				}
			}
			t.Errorf("no error on field %q containing %q; the API server said:\n  %s\n%v",
				tc.field, tc.want, strings.Join(got, "\n  "), err)
		})
	}
}

// TestModelKeySecretHasNoNamespace: the KEK Secret is always in the
// operator's namespace, so a namespace in the spec is an unknown field, which
// kubectl (strict field validation) refuses and other clients lose.
func TestModelKeySecretHasNoNamespace(t *testing.T) {
	ctx := context.Background()
	obj := mk(nil, set("tenant-ns", "spec", "provider", "secret", "namespace"))(t, "")
	err := env.Client.Create(ctx, obj, client.FieldValidation(metav1.FieldValidationStrict))
	if err == nil {
		t.Cleanup(func() { _ = env.Client.Delete(ctx, obj) })
		t.Fatal("the API server accepted spec.provider.secret.namespace")
	}
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), `unknown field "spec.provider.secret.namespace"`) {
		t.Fatalf("want a BadRequest naming the unknown field, got %v", err)
	}
}

// TestModelKeyValidVariantsStoredAsSent creates each provider and selector
// form and reads it back unchanged, with the schema defaults filled in.
func TestModelKeyValidVariantsStoredAsSent(t *testing.T) {
	ctx := context.Background()
	fullVault := &mlv1alpha1.ModelKeyVaultTransit{
		Address: "https://vault.example.com:8200", Mount: "ml/transit", KeyName: "models.v2", Role: "modelguard@prod",
		AuthMount: "k8s/prod", Namespace: "ml/prod", CABundle: testCAPEM,
	}
	cases := []struct {
		name     string
		spec     mlv1alpha1.ModelKeySpec
		wantSpec mlv1alpha1.ModelKeySpec
	}{
		{"secret, every namespace", makeModelKey("x").Spec, makeModelKey("x").Spec},
		{"secret, selected namespaces", mlv1alpha1.ModelKeySpec{
			Provider: mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "kek.nlp", Key: "kek_2026-01"}},
			NamespaceSelector: &metav1.LabelSelector{
				MatchLabels:      map[string]string{"modelguard.dev/tenant": "nlp"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "env", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod", "staging"}}},
			},
		}, mlv1alpha1.ModelKeySpec{}},
		{"awsKms with region and endpoint", mlv1alpha1.ModelKeySpec{
			Provider: mlv1alpha1.ModelKeyProvider{AWSKMS: &mlv1alpha1.AWSKMSKey{KeyID: "alias/models", Region: "eu-west-1",
				Endpoint: "https://vpce-0123.kms.eu-west-1.vpce.amazonaws.com"}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "ml"}},
		}, mlv1alpha1.ModelKeySpec{}},
		{"vaultTransit with every field", mlv1alpha1.ModelKeySpec{
			Provider:          mlv1alpha1.ModelKeyProvider{VaultTransit: fullVault},
			NamespaceSelector: &metav1.LabelSelector{},
		}, mlv1alpha1.ModelKeySpec{}},
		{"vaultTransit defaults mount and authMount", mlv1alpha1.ModelKeySpec{
			Provider:          mlv1alpha1.ModelKeyProvider{VaultTransit: vaultTransit()},
			NamespaceSelector: &metav1.LabelSelector{},
		}, mlv1alpha1.ModelKeySpec{
			Provider: mlv1alpha1.ModelKeyProvider{VaultTransit: &mlv1alpha1.ModelKeyVaultTransit{
				Address: "https://vault.example.com:8200", Mount: "transit", KeyName: "models", Role: "modelguard", AuthMount: "kubernetes"}},
			NamespaceSelector: &metav1.LabelSelector{},
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := makeModelKey("mk-valid-" + string(rune('a'+i)))
			k.Spec = tc.spec
			want := tc.wantSpec
			if want.NamespaceSelector == nil {
				want = *tc.spec.DeepCopy()
			}
			if err := env.Client.Create(ctx, k, client.FieldValidation(metav1.FieldValidationStrict)); err != nil {
				t.Fatalf("rejected: %v", err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(ctx, k) })
			got := &mlv1alpha1.ModelKey{}
			if err := env.Client.Get(ctx, client.ObjectKey{Name: k.Name}, got); err != nil {
				t.Fatal(err)
			}
			if got.Namespace != "" {
				t.Errorf("a ModelKey got namespace %q; it is cluster-scoped", got.Namespace)
			}
			if diff := cmp.Diff(want, got.Spec); diff != "" {
				t.Errorf("stored spec differs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestModelKeyStatus checks that status is a subresource with an enum on
// provider, and that Ready carries observedGeneration as written.
func TestModelKeyStatus(t *testing.T) {
	ctx := context.Background()
	k := makeModelKey("mk-status")
	if err := env.Client.Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, k) })

	k.Status.Provider = "GoogleKMS"
	err := env.Client.Status().Update(ctx, k)
	got := causes(t, err)
	if !containsPrefix(got, `status.provider: Unsupported value: "GoogleKMS"`) {
		t.Errorf("status.provider enum not enforced; the API server said:\n  %s", strings.Join(got, "\n  "))
	}

	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(k), k); err != nil {
		t.Fatal(err)
	}
	k.Status.Provider = mlv1alpha1.ModelKeyProviderSecret
	k.Status.KeyID = "kek:0123456789abcdef"
	meta.SetStatusCondition(&k.Status.Conditions, metav1.Condition{Type: mlv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: mlv1alpha1.ReasonSelfTestPassed, Message: "wrapped and unwrapped a test data key", ObservedGeneration: k.Generation})
	if err := env.Client.Status().Update(ctx, k); err != nil {
		t.Fatalf("status update rejected: %v", err)
	}
	// A spec write through the status subresource is ignored.
	k.Spec.Provider.Secret.Name = "changed-through-status"
	if err := env.Client.Status().Update(ctx, k); err != nil {
		t.Fatal(err)
	}
	stored := &mlv1alpha1.ModelKey{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(k), stored); err != nil {
		t.Fatal(err)
	}
	if stored.Spec.Provider.Secret.Name != "model-kek" {
		t.Errorf("the status subresource changed spec.provider.secret.name to %q", stored.Spec.Provider.Secret.Name)
	}
	ready := meta.FindStatusCondition(stored.Status.Conditions, mlv1alpha1.ConditionReady)
	if ready == nil || ready.ObservedGeneration != stored.Generation || ready.Reason != mlv1alpha1.ReasonSelfTestPassed {
		t.Errorf("Ready = %+v, want SelfTestPassed at generation %d", ready, stored.Generation)
	}
}

// TestModelKeyKubectl checks kubectl explain on every part of the spec and
// the printer columns of kubectl get mk, with real status values.
func TestModelKeyKubectl(t *testing.T) {
	ctx := context.Background()
	k := newKubectl(t)
	explain := []struct {
		path  string
		wants []string
	}{
		{"modelkey", []string{"KIND:       ModelKey", "cluster-scoped", "tenants refer to it by name only"}},
		{"mk.spec", []string{"namespaceSelector\t<Object> -required-", "{} selects every namespace", "KeyNotPermitted",
			"provider\t<Object> -required-", "awsKms or vaultTransit"}},
		{"mk.spec.provider.secret", []string{"operator's own", "never part of the spec", "key\t<string> -required-", "name\t<string> -required-"}},
		{"mk.spec.provider.awsKms", []string{"keyId\t<string> -required-", "region\t<string>", "endpoint\t<string>", "IRSA"}},
		{"mk.spec.provider.vaultTransit", []string{"address\t<string> -required-", "keyName\t<string> -required-", "role\t<string> -required-",
			"mount\t<string>", "authMount\t<string>", "namespace\t<string>", "caBundle\t<string>", "Kubernetes auth"}},
		{"mk.spec.provider.vaultTransit.mount", []string{`It defaults to "transit"`}},
		{"mk.status", []string{"conditions\t<[]Object>", "wrap-then-unwrap self-test", "keyId\t<string>", "provider\t<string>",
			"enum: Secret, AWSKMS, VaultTransit"}},
	}
	for _, tc := range explain {
		t.Run("explain "+tc.path, func(t *testing.T) {
			k.eventually(t, containsAll(tc.wants...), "explain", tc.path)
		})
	}

	key := makeModelKey("mk-columns")
	if err := env.Client.Create(ctx, key); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, key) })
	key.Status.Provider = mlv1alpha1.ModelKeyProviderSecret
	key.Status.KeyID = "kek:0123456789abcdef"
	meta.SetStatusCondition(&key.Status.Conditions, metav1.Condition{Type: mlv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: mlv1alpha1.ReasonSelfTestPassed, Message: "ok", ObservedGeneration: key.Generation})
	if err := env.Client.Status().Update(ctx, key); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		columns []string
		want    map[string]string
	}{
		{[]string{"get", "mk", "mk-columns"}, []string{"NAME", "PROVIDER", "READY", "AGE"},
			map[string]string{"NAME": "mk-columns", "PROVIDER": "Secret", "READY": "True"}},
		{[]string{"get", "modelkeys", "mk-columns", "-o", "wide"}, []string{"NAME", "PROVIDER", "READY", "KEY", "AGE"},
			map[string]string{"NAME": "mk-columns", "PROVIDER": "Secret", "READY": "True", "KEY": "kek:0123456789abcdef"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := k.run(tc.args...)
			if err != nil {
				t.Fatalf("kubectl %s: %v\n%s", strings.Join(tc.args, " "), err, out)
			}
			header, rows := parseTable(out)
			if diff := cmp.Diff(tc.columns, header); diff != "" {
				t.Errorf("columns (-want +got):\n%s\n%s", diff, out)
			}
			if len(rows) != 1 {
				t.Fatalf("want 1 row, got %d:\n%s", len(rows), out)
			}
			delete(rows[0], "AGE")
			if diff := cmp.Diff(tc.want, rows[0]); diff != "" {
				t.Errorf("row (-want +got):\n%s\n%s", diff, out)
			}
		})
	}
	t.Run("category modelguard includes ModelKeys", func(t *testing.T) {
		out, err := k.run("get", "modelguard", "-o", "name")
		if err != nil {
			t.Fatalf("kubectl get modelguard: %v\n%s", err, out)
		}
		if !strings.Contains(out, "modelkey.ml.modelguard.dev/mk-columns") {
			t.Errorf("kubectl get modelguard does not list the ModelKey:\n%s", out)
		}
	})
}
