package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/progress"
	"github.com/modelguard/modelguard/internal/seal"
)

// kekFlags select a key-encryption key: a file, or a Kubernetes Secret read
// through a kubeconfig (or the in-cluster service account).
type kekFlags struct {
	kekFile    string
	kekSecret  string
	kubeconfig string
}

func (f *kekFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.kekFile, "kek-file", "",
		"File holding the 256-bit key-encryption key: 32 raw bytes, 64 hex characters or base64")
	fs.StringVar(&f.kekSecret, "kek-secret", "",
		"Kubernetes Secret entry holding the key-encryption key, as namespace/name:key")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "",
		"kubeconfig for --kek-secret (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account)")
}

func (f *kekFlags) given() bool { return f.kekFile != "" || f.kekSecret != "" }

// provider loads the KEK the flags name.
func (f *kekFlags) provider(ctx context.Context) (keys.Provider, error) {
	switch {
	case f.kekFile != "" && f.kekSecret != "":
		return nil, usagef("give --kek-file or --kek-secret, not both")
	case f.kekFile != "":
		return keys.LoadKEKFile(f.kekFile)
	case f.kekSecret != "":
		ref, err := keys.ParseSecretRef(f.kekSecret)
		if err != nil {
			return nil, usageError{fmt.Errorf("--kek-secret: %w", err)}
		}
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		rules.ExplicitPath = f.kubeconfig
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig for --kek-secret: %w", err)
		}
		client, err := corev1client.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("creating Kubernetes client: %w", err)
		}
		return keys.FetchSecretKEK(ctx, client, ref)
	}
	return nil, usagef("no key: give --kek-file or --kek-secret")
}

// openFlags are the flags of unseal and verify: the key (a DEK or a KEK),
// the expected digest, the CA for https bundles, and performance knobs.
type openFlags struct {
	kek          kekFlags
	dekFile      string
	expectDigest string
	caFile       string
	workers      int
	progress     string
	interval     time.Duration
}

func (f *openFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dekFile, "dek-file", "",
		"File holding the bundle's data key: 32 raw bytes, 64 hex characters or base64")
	f.kek.register(fs)
	fs.StringVar(&f.expectDigest, "expect-digest", "",
		"Fail unless the bundle's model digest is this sha256:<64 hex> (checked before any plaintext is written)")
	fs.StringVar(&f.caFile, "ca-file", "",
		"PEM file of extra CA certificates to trust for an https BUNDLE")
	registerPerfFlags(fs, &f.workers, &f.progress, &f.interval)
}

func registerPerfFlags(fs *pflag.FlagSet, workers *int, mode *string, interval *time.Duration) {
	fs.IntVar(workers, "workers", 0, "Parallel workers (default: the number of usable CPUs)")
	fs.StringVar(mode, "progress", "auto",
		"Progress on stderr: auto (a bar on a terminal, else log lines), bar, log or none")
	fs.DurationVar(interval, "progress-interval", 5*time.Second, "Time between progress lines in log mode")
}

// key returns the bundle key the flags (or $MODELGUARD_DEK) give. Key flags
// win over the environment variable, which is only the init container's
// default.
func (f *openFlags) key(ctx context.Context, getenv func(string) string) (seal.Key, error) {
	if f.dekFile != "" && f.kek.given() {
		return seal.Key{}, usagef("give one of --dek-file, --kek-file or --kek-secret")
	}
	switch {
	case f.dekFile != "":
		data, err := os.ReadFile(f.dekFile)
		if err != nil {
			return seal.Key{}, fmt.Errorf("reading --dek-file: %w", err)
		}
		defer clear(data)
		dek, err := keys.ParseDEK(data)
		if err != nil {
			return seal.Key{}, fmt.Errorf("--dek-file %s: %w", f.dekFile, err)
		}
		return seal.Key{DEK: dek}, nil
	case f.kek.given():
		p, err := f.kek.provider(ctx)
		if err != nil {
			return seal.Key{}, err
		}
		return seal.Key{Provider: p}, nil
	}
	if v := getenv(keys.DEKEnvVar); v != "" {
		dek, err := keys.ParseDEK([]byte(v))
		if err != nil {
			return seal.Key{}, fmt.Errorf("$%s: %w", keys.DEKEnvVar, err)
		}
		return seal.Key{DEK: dek}, nil
	}
	return seal.Key{}, usagef("no key: give --dek-file, --kek-file or --kek-secret, or set $%s", keys.DEKEnvVar)
}

// httpClient returns a client trusting the system roots plus --ca-file.
func (f *openFlags) httpClient() (*http.Client, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("reading --ca-file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", f.caFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return seal.DefaultHTTPClient(transport), nil
}

func (c *cli) meter(label, mode string, interval time.Duration) (*progress.Meter, error) {
	m, err := progress.ParseMode(mode)
	if err != nil {
		return nil, usageError{err}
	}
	if interval <= 0 {
		return nil, usagef("--progress-interval must be positive")
	}
	return progress.New(c.stderr, label, m, interval), nil
}

// parseSize parses a byte count with an optional KiB or MiB suffix.
func parseSize(s string) (int, error) {
	mult := 1
	num := s
	for suffix, m := range map[string]int{"KiB": 1 << 10, "MiB": 1 << 20, "K": 1 << 10, "M": 1 << 20} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			num, mult = n, m
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n <= 0 {
		return 0, errors.New("want a positive size such as 1MiB, 256KiB or 65536")
	}
	return n * mult, nil
}
