package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
)

// defaultTokenFile is where the operator mounts the unseal container's
// projected ServiceAccount token.
var defaultTokenFile = path.Join(mlv1alpha1.KeyReleaseTokenDir, mlv1alpha1.KeyReleaseTokenFile)

// keyReleaseFlags are unseal's flags for getting the bundle's data key from
// the operator's key-release service, as a protected pod's unseal init
// container does.
type keyReleaseFlags struct {
	url       string
	model     string
	tokenFile string
}

func (f *keyReleaseFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "key-release", "",
		"https URL of the operator's key-release service, which releases the bundle's data key to a pod it has verified "+
			"(needs --model, --expect-digest, $"+mlv1alpha1.EnvKeyReleaseCA+" and $"+mlv1alpha1.EnvPodUID+")")
	fs.StringVar(&f.model, "model", "",
		"With --key-release: the model the pod belongs to, as Kind/namespace/name (Kind is "+
			keyrelease.KindProtectedModel+" or "+keyrelease.KindTrainingJob+")")
	fs.StringVar(&f.tokenFile, "token-file", defaultTokenFile,
		"With --key-release: the pod's projected ServiceAccount token for audience "+mlv1alpha1.KeyReleaseAudience+
			", read again for every attempt")
}

// keyRelease is a checked key-release configuration.
type keyRelease struct {
	url       string
	model     keyrelease.ModelRef
	tokenFile string
	podUID    string
	roots     *x509.CertPool
}

// expectDigestPattern is the form of --expect-digest that key release needs:
// the digest is sent to the service, which compares it with the model's spec.
var expectDigestPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// parse checks the key-release flags and environment, before anything is
// read or sent. It returns nil without --key-release.
func (f *keyReleaseFlags) parse(cmd *cobra.Command, open *openFlags, getenv func(string) string) (*keyRelease, error) {
	if f.url == "" {
		var stray []string
		for _, name := range []string{"model", "token-file"} {
			if cmd.Flags().Changed(name) {
				stray = append(stray, "--"+name)
			}
		}
		switch len(stray) {
		case 1:
			return nil, usagef("%s needs --key-release", stray[0])
		case 2:
			return nil, usagef("%s and %s need --key-release", stray[0], stray[1])
		}
		return nil, nil
	}

	// The data key comes from the service alone: a key given beside it would
	// either be ignored or bypass the operator's checks.
	var conflicts []string
	if open.dekFile != "" {
		conflicts = append(conflicts, "--dek-file")
	}
	if open.kek.kekFile != "" {
		conflicts = append(conflicts, "--kek-file")
	}
	if open.kek.kekSecret != "" {
		conflicts = append(conflicts, "--kek-secret")
	}
	if getenv(keys.DEKEnvVar) != "" {
		conflicts = append(conflicts, "$"+keys.DEKEnvVar)
	}
	if len(conflicts) > 0 {
		return nil, usagef("--key-release excludes --dek-file, --kek-file, --kek-secret and $%s; got %s",
			keys.DEKEnvVar, strings.Join(conflicts, ", "))
	}

	caPEM, podUID := getenv(mlv1alpha1.EnvKeyReleaseCA), getenv(mlv1alpha1.EnvPodUID)
	var missing []string
	for _, need := range []struct{ name, value string }{
		{"--model", f.model},
		{"--expect-digest", open.expectDigest},
		{"--token-file", f.tokenFile},
		{"$" + mlv1alpha1.EnvKeyReleaseCA, caPEM},
		{"$" + mlv1alpha1.EnvPodUID, podUID},
	} {
		if need.value == "" {
			missing = append(missing, need.name)
		}
	}
	if len(missing) > 0 {
		return nil, usagef("--key-release needs %s", strings.Join(missing, ", "))
	}

	u, err := url.Parse(f.url)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, usagef("--key-release %q: want an https URL with a host", f.url)
	}
	model, err := parseModelRef(f.model)
	if err != nil {
		return nil, usageError{fmt.Errorf("--model %q: %w", f.model, err)}
	}
	if !expectDigestPattern.MatchString(open.expectDigest) {
		return nil, usagef("--expect-digest %q: want sha256:<64 lowercase hex>", open.expectDigest)
	}
	// Only the CAs in the pod spec are trusted, never the system roots: the
	// spec is what the operator verified before releasing anything.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, usagef("$%s holds no PEM certificate", mlv1alpha1.EnvKeyReleaseCA)
	}
	return &keyRelease{url: f.url, model: model, tokenFile: f.tokenFile, podUID: podUID, roots: roots}, nil
}

// parseModelRef parses "Kind/namespace/name", the form the operator's
// builders write.
func parseModelRef(s string) (keyrelease.ModelRef, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return keyrelease.ModelRef{}, errors.New("want Kind/namespace/name")
	}
	m := keyrelease.ModelRef{Kind: parts[0], Namespace: parts[1], Name: parts[2]}
	if m.Kind != keyrelease.KindProtectedModel && m.Kind != keyrelease.KindTrainingJob {
		return keyrelease.ModelRef{}, fmt.Errorf("kind must be %s or %s", keyrelease.KindProtectedModel, keyrelease.KindTrainingJob)
	}
	if errs := validation.IsDNS1123Label(m.Namespace); len(errs) > 0 {
		return keyrelease.ModelRef{}, fmt.Errorf("namespace: %s", strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1035Label(m.Name); len(errs) > 0 {
		return keyrelease.ModelRef{}, fmt.Errorf("name: %s", strings.Join(errs, "; "))
	}
	return m, nil
}

// errKeyDenied marks a final refusal by the key-release service; the unseal
// report files it under seal.ReasonKeyDenied.
var errKeyDenied = seal.ErrKeyDenied

// keyDeniedError is a refusal worded for the termination log, where the
// operator and `kubectl describe` show it: the reason, then the service's
// message, which names the model.
type keyDeniedError struct{ denied *keyrelease.DeniedError }

func (e *keyDeniedError) Error() string {
	reason := e.denied.Reason
	if reason == "" {
		reason = "HTTP " + strconv.Itoa(e.denied.StatusCode)
	}
	return fmt.Sprintf("%s (%s): %s", errKeyDenied, reason, e.denied.Message)
}

func (e *keyDeniedError) Unwrap() []error { return []error{errKeyDenied, e.denied} }

// releaseKey reads the bundle's key record and asks the key-release service
// for its data key, which the caller must clear.
func (c *cli) releaseKey(ctx context.Context, kr *keyRelease, bundle, expectDigest string, client seal.HTTPDoer) ([]byte, error) {
	m, err := seal.ReadManifest(ctx, bundle, client)
	if err != nil {
		return nil, err
	}
	// A release is counted, recorded on the model and given once per pod:
	// do not spend it on a bundle this run would refuse anyway.
	if m.ModelDigest != expectDigest {
		return nil, fmt.Errorf("%w: the bundle holds %s, expected %s; no key was requested",
			seal.ErrDigestMismatch, m.ModelDigest, expectDigest)
	}
	rc, err := keyrelease.NewClient(keyrelease.ClientOptions{
		URL:     kr.url,
		RootCAs: kr.roots,
		Backoff: c.keyReleaseBackoff,
		Log:     logr.New(&lineSink{w: c.stderr, prefix: "key release: "}),
	})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	dek, err := rc.Release(ctx, keyrelease.ReleaseParams{
		Token:       keyrelease.TokenFile(kr.tokenFile),
		Model:       kr.model,
		PodUID:      kr.podUID,
		ModelDigest: m.ModelDigest,
		Bundle:      keyrelease.BundleRefOf(m.Binding()),
		Key:         m.Key,
	})
	var denied *keyrelease.DeniedError
	switch {
	case errors.As(err, &denied):
		return nil, &keyDeniedError{denied}
	case err != nil:
		return nil, fmt.Errorf("key release for %s: %w", kr.model, err)
	}
	fmt.Fprintf(c.stderr, "key release: data key for %s released in %s\n", kr.model, time.Since(start).Round(time.Millisecond))
	return dek, nil
}

// lineSink is a logr sink that writes each entry as one line: the message,
// then key=value pairs. The key-release client logs a line per retry.
type lineSink struct {
	w      io.Writer
	prefix string
	values []any
}

func (s *lineSink) Init(logr.RuntimeInfo)  {}
func (s *lineSink) Enabled(level int) bool { return level == 0 }
func (s *lineSink) Info(_ int, msg string, kv ...any) {
	s.write(msg, kv)
}

func (s *lineSink) Error(err error, msg string, kv ...any) {
	s.write(msg, append(slices.Clip(kv), "error", err))
}

func (s *lineSink) WithValues(kv ...any) logr.LogSink {
	c := *s
	c.values = append(slices.Clip(s.values), kv...)
	return &c
}

func (s *lineSink) WithName(name string) logr.LogSink {
	c := *s
	c.prefix += name + ": "
	return &c
}

func (s *lineSink) write(msg string, kv []any) {
	var b strings.Builder
	b.WriteString(s.prefix)
	b.WriteString(msg)
	all := append(slices.Clip(s.values), kv...)
	for i := 0; i+1 < len(all); i += 2 {
		fmt.Fprintf(&b, " %v=%s", all[i], logValue(all[i+1]))
	}
	fmt.Fprintln(s.w, b.String())
}

// logValue renders a value so that the line stays one line and parseable.
func logValue(v any) string {
	if m, ok := v.(logr.Marshaler); ok {
		v = m.MarshalLog()
	}
	s := fmt.Sprint(v)
	if err, ok := v.(error); ok {
		s = err.Error()
	}
	if s == "" || strings.ContainsAny(s, " \t\r\n\"=") {
		return strconv.Quote(s)
	}
	return s
}
