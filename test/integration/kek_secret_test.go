package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// TestSecretKEKProvider reads KEKs from Secrets through the real API server,
// as `modelguard seal --kek-secret` does (keys.FetchSecretKEK).
func TestSecretKEKProvider(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	kek := randomKey(t)
	createSecret(t, ns, "model-kek", map[string][]byte{
		"kek":   []byte(base64.StdEncoding.EncodeToString(kek)),
		"raw":   kek,
		"short": kek[:16],
		// Finding 8 of issue 16: 32 bytes of text are a passphrase.
		"passphrase": []byte("correct horse battery staple!!!!"),
	})
	secrets, err := corev1client.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := keys.NewKEK(kek)
	if err != nil {
		t.Fatal(err)
	}

	for _, entry := range []string{"kek", "raw"} {
		got, err := keys.FetchSecretKEK(ctx, secrets, keys.SecretRef{Namespace: ns, Name: "model-kek", Key: entry})
		if err != nil {
			t.Fatalf("entry %s: %v", entry, err)
		}
		// Where the KEK is kept does not change the key: its ID matches.
		if got.ID() != fromFile.ID() {
			t.Errorf("entry %s: ID %s, want %s", entry, got.ID(), fromFile.ID())
		}
	}

	failures := []struct {
		name  string
		ref   keys.SecretRef
		check func(error) bool
		want  string
	}{
		{name: "missing Secret", ref: keys.SecretRef{Namespace: ns, Name: "nope", Key: "kek"},
			check: apierrors.IsNotFound, want: `secrets "nope" not found`},
		{name: "missing entry", ref: keys.SecretRef{Namespace: ns, Name: "model-kek", Key: "other"},
			check: func(err error) bool { return errors.Is(err, keys.ErrKeyNotInSecret) }, want: `has no such key "other"`},
		{name: "short key", ref: keys.SecretRef{Namespace: ns, Name: "model-kek", Key: "short"},
			check: func(err error) bool { return errors.Is(err, keys.ErrInvalidKey) }, want: "got 16 bytes"},
		{name: "passphrase", ref: keys.SecretRef{Namespace: ns, Name: "model-kek", Key: "passphrase"},
			check: func(err error) bool { return errors.Is(err, keys.ErrInvalidKey) }, want: "look like a passphrase"},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			_, err := keys.FetchSecretKEK(ctx, secrets, tt.ref)
			if err == nil || !tt.check(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			assertNoKey(t, err.Error(), kek)
		})
	}
}

// TestModelKeySecretProvider loads the KEK a ModelKey names the way the
// operator does (keys.ModelKeyProvider), through the real API server: from
// the operator's own namespace only, so that a Secret of the same name that
// a tenant plants in its namespace is never used, with the API server's own
// NotFound and Forbidden errors classified into KeyAvailable reasons.
func TestModelKeySecretProvider(t *testing.T) {
	ctx := context.Background()
	operatorNS, tenantNS := newNamespace(t), newNamespace(t)
	kek, planted := randomKey(t), randomKey(t)
	createSecret(t, operatorNS, "model-kek", map[string][]byte{
		"kek":        []byte(hex.EncodeToString(kek)),
		"passphrase": []byte("correct horse battery staple!!!!"),
	})
	// A tenant may create Secrets in its own namespace: this one names the
	// same Secret and entry, and must be ignored.
	createSecret(t, tenantNS, "model-kek", map[string][]byte{"kek": []byte(hex.EncodeToString(planted))})
	want, err := keys.NewKEK(kek)
	if err != nil {
		t.Fatal(err)
	}

	admin := secretGetter(t, env.Config)
	modelKey := func(secret, entry string) *mlv1alpha1.ModelKey {
		k := makeModelKey("models")
		k.Spec.Provider.Secret = &mlv1alpha1.ModelKeySecret{Name: secret, Key: entry}
		return k
	}

	t.Run("KEK from the operator's namespace", func(t *testing.T) {
		var read []string
		get := func(ctx context.Context, ns, name string) (*corev1.Secret, error) {
			read = append(read, ns+"/"+name)
			return admin(ctx, ns, name)
		}
		p, err := keys.ModelKeyProvider(ctx, modelKey("model-kek", "kek"), operatorNS, get)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID() != want.ID() {
			t.Errorf("key %s, want %s, the KEK in %s/model-kek", p.ID(), want.ID(), operatorNS)
		}
		if diff := cmp.Diff([]string{operatorNS + "/model-kek"}, read); diff != "" {
			t.Errorf("Secrets read (-want +got):\n%s", diff)
		}
	})

	failures := []struct {
		name       string
		mk         *mlv1alpha1.ModelKey
		namespace  string
		get        keys.SecretGetter
		wantReason string
		wantMsg    string
	}{
		{"Secret only in a tenant's namespace", modelKey("model-kek", "kek"), newNamespace(t), admin,
			mlv1alpha1.ReasonKeySecretNotFound, "Secret model-kek named by spec.provider.secret does not exist"},
		{"no such Secret", modelKey("absent", "kek"), operatorNS, admin,
			mlv1alpha1.ReasonKeySecretNotFound, "Secret absent named by spec.provider.secret does not exist"},
		{"no such entry", modelKey("model-kek", "other"), operatorNS, admin,
			mlv1alpha1.ReasonKeyNotInSecret, `Secret model-kek has no key "other" named by spec.provider.secret.key`},
		{"a passphrase, not a key", modelKey("model-kek", "passphrase"), operatorNS, admin,
			mlv1alpha1.ReasonKeyUnwrapFailed, "look like a passphrase"},
		{"reader without rights", modelKey("model-kek", "kek"), operatorNS, secretGetter(t, impersonatingConfig("nobody")),
			mlv1alpha1.ReasonKeyProviderUnavailable, "reading Secret model-kek: Forbidden"},
	}
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			_, err := keys.ModelKeyProvider(ctx, tc.mk, tc.namespace, tc.get)
			var pe *keys.ProviderError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a *keys.ProviderError", err)
			}
			if pe.Reason != tc.wantReason || !strings.Contains(pe.Message, tc.wantMsg) {
				t.Errorf("got %s: %q, want %s: %q", pe.Reason, pe.Message, tc.wantReason, tc.wantMsg)
			}
			assertNoKey(t, pe.Message, kek)
			assertNoKey(t, pe.Message, planted)
		})
	}
}

// secretGetter reads Secrets through the API server with cfg, as the
// operator's uncached reader does.
func secretGetter(t *testing.T, cfg *rest.Config) keys.SecretGetter {
	t.Helper()
	c, err := corev1client.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, ns, name string) (*corev1.Secret, error) {
		return c.Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	}
}

// impersonatingConfig is the admin's client config acting as user.
func impersonatingConfig(user string) *rest.Config {
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	return cfg
}

// TestCLIWithSecretKEK builds the modelguard binary and seals and unseals
// with --kek-secret against the real API server, as a least-privileged user
// who may only get that one Secret. The KEK is where a ModelKey keeps it, in
// the operator's namespace: the platform team seals with --kek-secret, and
// the operator opens the bundle through the ModelKey. A tenant, who may read
// the Secrets of its own namespace, cannot read it.
func TestCLIWithSecretKEK(t *testing.T) {
	ctx := context.Background()
	ns, tenantNS := newNamespace(t), newNamespace(t) // ns is the operator's
	kek := randomKey(t)
	createSecret(t, ns, "model-kek", map[string][]byte{"kek": []byte(hex.EncodeToString(kek))})
	createSecret(t, ns, "other", map[string][]byte{"kek": []byte(hex.EncodeToString(randomKey(t)))})
	grantGetSecret(t, ns, "sealer", "model-kek")
	grantSecretsInNamespace(t, tenantNS, "tenant")

	dir := t.TempDir()
	bin := buildCLI(t, dir, "v0.0.0-integration")
	admin, err := env.Kubeconfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := impersonating(t, admin, "sealer")

	if out := runBinary(t, bin, kek, nil, "version"); out != "v0.0.0-integration\n" {
		t.Errorf("modelguard version printed %q, want the version stamped at build time", out)
	}

	src := filepath.Join(dir, "src")
	files := map[string][]byte{"config.json": []byte(`{}`), "weights/model.bin": randomBytes(t, 5<<20+3)}
	for p, data := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, p), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ref := ns + "/model-kek:kek"
	bundle := filepath.Join(dir, "bundle")
	digest := strings.TrimSpace(runBinary(t, bin, kek, nil, "seal", src, bundle, "--kek-secret", ref, "--kubeconfig", kubeconfig, "--progress", "none"))
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != 71 {
		t.Fatalf("seal printed %q, want the model digest", digest)
	}

	dest, err := os.MkdirTemp("/dev/shm", "modelguard-it-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dest) })
	// KUBECONFIG from the environment works as well as --kubeconfig.
	runBinary(t, bin, kek, []string{"KUBECONFIG=" + kubeconfig}, "unseal", bundle, dest, "--kek-secret", ref,
		"--expect-digest", digest, "--progress", "none")
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join(dest, p))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs after unseal (%v)", p, err)
		}
	}

	// The operator opens it through a ModelKey that names the Secret: the
	// manifest records the KEK the ModelKey loads, and the data key unwraps
	// bound to this bundle and digest.
	manifest, err := seal.ReadManifest(ctx, bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	modelKey := makeModelKey("models")
	provider, err := keys.ModelKeyProvider(ctx, modelKey, ns, secretGetter(t, env.Config))
	if err != nil {
		t.Fatalf("the operator cannot load ModelKey %s: %v", modelKey.Name, err)
	}
	if manifest.Key.ID != provider.ID() {
		t.Errorf("the bundle records key %s, ModelKey %s loads %s", manifest.Key.ID, modelKey.Name, provider.ID())
	}
	dek, err := seal.UnwrapDEK(ctx, manifest.Key, manifest.Binding(), provider)
	if err != nil {
		t.Errorf("the ModelKey's KEK does not unwrap the data key: %v", err)
	}
	clear(dek)

	// The same KEK from a file opens a bundle sealed with the Secret.
	kekFile := filepath.Join(dir, "kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	runBinary(t, bin, kek, nil, "verify", bundle, "--kek-file", kekFile, "--expect-digest", digest, "--progress", "none")

	failures := []struct {
		name, user, ref, want string
	}{
		{name: "missing Secret", ref: ns + "/absent:kek", want: `secrets "absent" is forbidden`},
		{name: "Secret the user may not read", ref: ns + "/other:kek", want: `User "sealer" cannot get resource "secrets"`},
		{name: "tenant reads the operator's KEK", user: "tenant", ref: ns + "/model-kek:kek",
			want: `User "tenant" cannot get resource "secrets" in API group "" in the namespace "` + ns + `"`},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			user := kubeconfig
			if tt.user != "" {
				user = impersonating(t, admin, tt.user)
			}
			cmd := exec.CommandContext(ctx, bin, "verify", bundle, "--kek-secret", tt.ref, "--kubeconfig", user)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("got %v, want exit code 1; output:\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("output %q lacks %q", out, tt.want)
			}
			assertNoKey(t, string(out), kek)
		})
	}
	// With admin rights a missing Secret is reported as not found.
	cmd := exec.CommandContext(ctx, bin, "verify", bundle, "--kek-secret", ns+"/absent:kek", "--kubeconfig", admin)
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), `reading secret `+ns+`/absent: secrets "absent" not found`) {
		t.Errorf("output %q does not say the Secret is missing", out)
	}
}

func randomKey(t *testing.T) []byte { return randomBytes(t, keys.KEKSize) }

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func createSecret(t *testing.T, ns, name string, data map[string][]byte) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatalf("creating Secret %s: %v", name, err)
	}
}

// grantGetSecret lets user get one Secret, and nothing else: all that
// --kek-secret needs.
func grantGetSecret(t *testing.T, ns, user, secret string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "read-kek"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{secret}, Verbs: []string{"get"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "read-kek"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := env.Client.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
}

// grantSecretsInNamespace lets user read every Secret of ns, as the built-in
// edit and admin ClusterRoles do (envtest runs no controller manager to
// aggregate their rules, so the grant is spelled out).
func grantSecretsInNamespace(t *testing.T, ns, user string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tenant-secrets"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tenant-secrets"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := env.Client.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
}

// impersonating writes a copy of the admin kubeconfig that acts as user.
func impersonating(t *testing.T, adminKubeconfig, user string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(adminKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range cfg.AuthInfos {
		auth.Impersonate = user
	}
	path := filepath.Join(t.TempDir(), "kubeconfig-"+user)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// buildCLI builds cmd/modelguard with its version stamped as the Makefile
// does.
func buildCLI(t *testing.T, dir, version string) string {
	t.Helper()
	bin := filepath.Join(dir, "modelguard")
	cmd := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X github.com/modelguard/modelguard/internal/version.Version="+version, "./cmd/modelguard")
	cmd.Dir = env.RepoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building modelguard: %v\n%s", err, out)
	}
	return bin
}

// runBinary runs the CLI, fails the test if it fails, checks that its output
// holds no form of key, and returns its stdout.
func runBinary(t *testing.T, bin string, key []byte, extraEnv []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("modelguard %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
	}
	assertNoKey(t, stdout.String()+stderr.String(), key)
	return stdout.String()
}

func assertNoKey(t *testing.T, text string, key []byte) {
	t.Helper()
	for _, form := range []string{string(key), hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key)} {
		if strings.Contains(text, form) {
			t.Errorf("key material appears in %q", text)
		}
	}
}
