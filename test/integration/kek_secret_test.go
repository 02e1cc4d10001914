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

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/modelguard/modelguard/internal/keys"
)

// TestSecretKEKProvider reads KEKs from Secrets through the real API server.
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

// TestCLIWithSecretKEK builds the modelguard binary and seals and unseals
// with --kek-secret against the real API server, as a least-privileged user
// who may only get that one Secret.
func TestCLIWithSecretKEK(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	kek := randomKey(t)
	createSecret(t, ns, "model-kek", map[string][]byte{"kek": []byte(hex.EncodeToString(kek))})
	createSecret(t, ns, "other", map[string][]byte{"kek": []byte(hex.EncodeToString(randomKey(t)))})
	grantGetSecret(t, ns, "sealer", "model-kek")

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

	// The same KEK from a file opens a bundle sealed with the Secret.
	kekFile := filepath.Join(dir, "kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	runBinary(t, bin, kek, nil, "verify", bundle, "--kek-file", kekFile, "--expect-digest", digest, "--progress", "none")

	failures := []struct {
		name, ref, want string
	}{
		{name: "missing Secret", ref: ns + "/absent:kek", want: `secrets "absent" is forbidden`},
		{name: "Secret the user may not read", ref: ns + "/other:kek", want: `User "sealer" cannot get resource "secrets"`},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.CommandContext(ctx, bin, "verify", bundle, "--kek-secret", tt.ref, "--kubeconfig", kubeconfig)
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
