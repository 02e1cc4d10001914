// Package testenv starts a real etcd and kube-apiserver (built by
// `make envtest-assets` into bin/k8s) with the ModelGuard CRDs installed, for
// integration tests.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	kruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// Env is a running control plane.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *kruntime.Scheme
	// RepoRoot is the repository's top directory, for tests that need files
	// such as config/samples or bin/k8s.
	RepoRoot string

	env *envtest.Environment
}

// NewScheme returns a scheme with the built-in and ModelGuard types.
func NewScheme() *kruntime.Scheme {
	s := kruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(mlv1alpha1.AddToScheme(s))
	return s
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Start launches etcd and kube-apiserver with the CRDs from config/crd/bases.
// It fails, rather than skips, when the binaries are missing, because a test
// suite that silently skips its integration tests proves nothing.
func Start() (*Env, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set: run the integration tests through `make test`, " +
			"which builds etcd and kube-apiserver into bin/k8s/ and points KUBEBUILDER_ASSETS at them")
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return nil, fmt.Errorf("KUBEBUILDER_ASSETS=%s has no %s: run `make envtest-assets`: %w", assets, bin, err)
		}
	}
	root := RepoRoot()
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting etcd and kube-apiserver from %s: %w", assets, err)
	}
	scheme := NewScheme()
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("creating client: %w", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, RepoRoot: root, env: env}, nil
}

// KubectlPath is the kubectl built alongside the control plane.
func (e *Env) KubectlPath() string {
	return filepath.Join(e.env.BinaryAssetsDirectory, "kubectl")
}

// Kubeconfig writes a kubeconfig for the control plane to a file in dir and
// returns its path, for running kubectl against it.
func (e *Env) Kubeconfig(dir string) (string, error) {
	user, err := e.env.ControlPlane.AddUser(envtest.User{Name: "testenv-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("adding admin user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("rendering kubeconfig: %w", err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", fmt.Errorf("writing kubeconfig: %w", err)
	}
	return path, nil
}

// ServiceAccountSigningKeyFile is the PEM private key with which the API
// server signs ServiceAccount tokens, for tests that need a token the real
// API server would have issued but cannot be asked for (e.g. one that has
// already expired: TokenRequest refuses expirations under 10 minutes).
func (e *Env) ServiceAccountSigningKeyFile() string {
	return filepath.Join(e.env.ControlPlane.APIServer.CertDir, "sa-signer.key")
}

// Stop stops the control plane and removes its temporary directories.
func (e *Env) Stop() error { return e.env.Stop() }
