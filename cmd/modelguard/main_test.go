package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
	"github.com/modelguard/modelguard/internal/version"
)

// result is what one in-process run of the CLI printed.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs modelguard in-process with the given environment.
func runCLI(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr, func(k string) string { return env[k] })
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

func mustRun(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	r := runCLI(t, env, args...)
	if r.code != exitOK {
		t.Fatalf("modelguard %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, p string, data []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memDir is a fresh tmpfs directory, as in a pod's memory-backed emptyDir.
func memDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "modelguard-cli-test-")
	if err != nil {
		t.Fatalf("this test needs a tmpfs at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// diskDir is a fresh directory on a disk file system.
func diskDir(t *testing.T) string {
	t.Helper()
	for _, parent := range []string{"", "."} {
		dir, err := os.MkdirTemp(parent, "modelguard-disk-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if mem, _, err := seal.MemoryBacked(dir); err == nil && !mem {
			return dir
		}
	}
	t.Fatal("found no disk-backed directory for this test")
	return ""
}

func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fixture is a sealed model and its keys.
type fixture struct {
	src, bundle, kekFile string
	kek, dek             []byte
	digest               string
	files                map[string][]byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{
		src:     filepath.Join(dir, "src"),
		bundle:  filepath.Join(dir, "bundle"),
		kek:     randomBytes(t, keys.KEKSize),
		kekFile: filepath.Join(dir, "kek"),
		files: map[string][]byte{
			"config.json":               []byte(`{"model_type":"llama"}`),
			"weights/model.safetensors": randomBytes(t, 3<<20+17),
		},
	}
	for p, data := range f.files {
		writeFile(t, filepath.Join(f.src, p), data)
	}
	writeFile(t, f.kekFile, []byte(base64.StdEncoding.EncodeToString(f.kek)+"\n"))
	r := mustRun(t, nil, "seal", f.src, f.bundle, "--kek-file", f.kekFile, "--owner", "Acme Corp",
		"--license", "LicenseRef-Acme", "--classification", "Confidential", "--progress", "none")
	f.digest = strings.TrimSpace(r.stdout)
	m, err := seal.ReadManifest(context.Background(), f.bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := keys.NewKEK(f.kek)
	if err != nil {
		t.Fatal(err)
	}
	if f.dek, err = seal.UnwrapDEK(context.Background(), m.Key, m.Binding(), kek); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) checkUnsealed(t *testing.T, dest string) {
	t.Helper()
	for p, want := range f.files {
		if got := readFile(t, filepath.Join(dest, p)); !bytes.Equal(got, want) {
			t.Errorf("%s differs after unseal", p)
		}
	}
}

func TestVersion(t *testing.T) {
	old := version.Version
	version.Version = "v9.8.7-test"
	t.Cleanup(func() { version.Version = old })
	r := mustRun(t, nil, "version")
	if r.stdout != "v9.8.7-test\n" {
		t.Errorf("stdout %q, want the version", r.stdout)
	}
}

func TestSealUnsealVerifyInspect(t *testing.T) {
	f := newFixture(t)
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(f.digest) {
		t.Fatalf("seal printed %q on stdout, want only the model digest", f.digest)
	}
	dekFile := writeFile(t, filepath.Join(t.TempDir(), "dek"), []byte(keys.EncodeDEK(f.dek)))

	keyCases := map[string]struct {
		args []string
		env  map[string]string
	}{
		"kek file":   {args: []string{"--kek-file", f.kekFile}},
		"dek file":   {args: []string{"--dek-file", dekFile}},
		"dek in env": {env: map[string]string{keys.DEKEnvVar: keys.EncodeDEK(f.dek)}},
		// A key flag wins over the environment variable.
		"flag over env": {args: []string{"--kek-file", f.kekFile}, env: map[string]string{keys.DEKEnvVar: "garbage"}},
	}
	for name, kc := range keyCases {
		t.Run(name, func(t *testing.T) {
			dest := memDir(t)
			args := append([]string{"unseal", f.bundle, dest, "--expect-digest", f.digest, "--progress", "none"}, kc.args...)
			r := mustRun(t, kc.env, args...)
			f.checkUnsealed(t, dest)
			if r.stdout != "" {
				t.Errorf("unseal printed %q on stdout", r.stdout)
			}
			mustMatch(t, r.stderr, `^unsealed 2 files \(3\.0 MiB\) of sha256:[0-9a-f]{64} into .* in \S+ \(.*/s\)\n$`)

			v := mustRun(t, kc.env, append([]string{"verify", f.bundle, "--expect-digest", f.digest, "--progress", "none"}, kc.args...)...)
			if v.stdout != f.digest+"\n" {
				t.Errorf("verify printed %q, want the digest", v.stdout)
			}
		})
	}

	t.Run("inspect", func(t *testing.T) {
		table := mustRun(t, nil, "inspect", f.bundle).stdout
		for _, want := range []string{
			"Model digest:      " + f.digest,
			"Format:            modelguard.dev/sealed-bundle, format v2\n",
			"Owner:             Acme Corp",
			"Classification:    Confidential",
			"Key provider:      kek",
			"Authenticated:     no",
			"weights/model.safetensors  3.0 MiB  3145745  1.0 MiB  sha256:",
		} {
			if !strings.Contains(table, want) {
				t.Errorf("inspect table lacks %q:\n%s", want, table)
			}
		}
		m, err := seal.ReadManifest(context.Background(), f.bundle, nil)
		if err != nil {
			t.Fatal(err)
		}
		var fromJSON seal.Manifest
		if err := json.Unmarshal([]byte(mustRun(t, nil, "inspect", "-o", "json", f.bundle).stdout), &fromJSON); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(*m, fromJSON, cmpopts.IgnoreUnexported(seal.Manifest{})); diff != "" {
			t.Errorf("inspect -o json (-manifest +json):\n%s", diff)
		}
		keyLine := mustRun(t, nil, "inspect", "-o", "key", f.bundle).stdout
		var info seal.KeyInfo
		if err := json.Unmarshal([]byte(keyLine), &info); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(m.Key, info); diff != "" {
			t.Errorf("inspect -o key (-manifest +printed):\n%s", diff)
		}
		if strings.Count(keyLine, "\n") != 1 {
			t.Errorf("inspect -o key is not one line: %q", keyLine)
		}
		if raw := mustRun(t, nil, "inspect", "-o", "raw", f.bundle).stdout; raw != string(readFile(t, filepath.Join(f.bundle, seal.ManifestName))) {
			t.Error("inspect -o raw differs from the manifest file")
		}
	})
}

// cancelOnWrite cancels a context at the first progress line, so that a
// test can interrupt an unseal in the middle, as SIGTERM does.
type cancelOnWrite struct {
	bytes.Buffer
	cancel context.CancelFunc
}

func (c *cancelOnWrite) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("unseal: ")) {
		c.cancel()
	}
	return c.Buffer.Write(p)
}

func TestUnsealInterrupted(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFile(t, filepath.Join(src, "a.bin"), randomBytes(t, 64<<20))
	writeFile(t, filepath.Join(src, "b.bin"), randomBytes(t, 64<<20))
	kekFile := writeFile(t, filepath.Join(dir, "kek"), randomBytes(t, 32))
	mustRun(t, nil, "seal", src, filepath.Join(dir, "bundle"), "--kek-file", kekFile, "--progress", "none")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &cancelOnWrite{cancel: cancel}
	dest := memDir(t)
	termLog := filepath.Join(dir, "termination-log")
	code := run(ctx, []string{"unseal", filepath.Join(dir, "bundle"), dest, "--kek-file", kekFile, "--workers", "1",
		"--progress", "log", "--progress-interval", "1ms", "--termination-log", termLog}, io.Discard, stderr, os.Getenv)
	if code != exitFail {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitFail, stderr.String())
	}
	if got := listTree(t, dest); len(got) != 0 {
		t.Errorf("interrupted unseal left %v", got)
	}
	mustMatch(t, string(readFile(t, termLog)), `^interrupted; the plaintext written so far was removed: context canceled\n$`)
}

func mustMatch(t *testing.T, s, re string) {
	t.Helper()
	if !regexp.MustCompile(re).MatchString(s) {
		t.Errorf("%q does not match %q", s, re)
	}
}

func TestUnsealTerminationLog(t *testing.T) {
	f := newFixture(t)
	termLog := filepath.Join(t.TempDir(), "termination-log")

	dest := memDir(t)
	mustRun(t, nil, "unseal", f.bundle, dest, "--kek-file", f.kekFile, "--termination-log", termLog, "--progress", "none")
	mustMatch(t, string(readFile(t, termLog)), `^ok digest=`+f.digest+` files=2 bytes=3145767 seconds=\d+\.\d{3} format=2\n$`)

	// A tampered chunk: the reason names the file and chunk, and no
	// plaintext is left.
	tampered := filepath.Join(t.TempDir(), "bundle")
	copyTree(t, f.bundle, tampered)
	sealed := filepath.Join(tampered, "weights", "model.safetensors.sealed")
	data := readFile(t, sealed)
	data[seal.HeaderSize+2*(1<<20+seal.TagSize)+5] ^= 1
	writeFile(t, sealed, data)
	tests := []struct {
		name   string
		args   []string
		reason string
	}{
		{name: "tampered chunk", args: []string{"unseal", tampered, memDir(t), "--kek-file", f.kekFile},
			reason: "chunk 2 of weights/model.safetensors failed authentication\n"},
		{name: "wrong digest", args: []string{"unseal", f.bundle, memDir(t), "--kek-file", f.kekFile, "--expect-digest", "sha256:" + strings.Repeat("0", 64)},
			reason: "model digest mismatch: the bundle holds " + f.digest + ", expected sha256:" + strings.Repeat("0", 64) + "\n"},
		{name: "disk destination", args: []string{"unseal", f.bundle, diskDir(t), "--kek-file", f.kekFile},
			reason: "not on a memory-backed file system (tmpfs or ramfs)"},
		{name: "no key", args: []string{"unseal", f.bundle, memDir(t)},
			reason: "no key: give --dek-file, --kek-file or --kek-secret, or set $MODELGUARD_DEK\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, nil, append(tt.args, "--termination-log", termLog, "--progress", "none")...)
			if r.code == exitOK {
				t.Fatal("unseal succeeded")
			}
			reason := string(readFile(t, termLog))
			if !strings.Contains(reason, tt.reason) || strings.Count(reason, "\n") != 1 {
				t.Errorf("termination log %q, want one line containing %q", reason, tt.reason)
			}
			if !strings.Contains(r.stderr, strings.TrimSuffix(tt.reason, "\n")) {
				t.Errorf("stderr %q lacks the reason", r.stderr)
			}
			if dest := tt.args[2]; strings.HasPrefix(dest, "/dev/shm") {
				if got := listTree(t, dest); len(got) != 0 {
					t.Errorf("failed unseal left %v", got)
				}
			}
		})
	}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		writeFile(t, filepath.Join(dst, rel), readFile(t, p))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	kekFile := writeFile(t, filepath.Join(dir, "kek"), randomBytes(t, 32))
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown command", args: []string{"bogus"}, want: `unknown command "bogus"`},
		{name: "seal without arguments", args: []string{"seal"}, want: "want 2 argument(s) (SRC_DIR OUT_DIR), got 0"},
		{name: "unknown flag", args: []string{"unseal", "a", "b", "--frobnicate"}, want: "unknown flag: --frobnicate"},
		{name: "seal without a key", args: []string{"seal", dir, dir + "/out"}, want: "no key: give --kek-file or --kek-secret"},
		{name: "two KEKs", args: []string{"seal", dir, dir + "/out", "--kek-file", kekFile, "--kek-secret", "ns/s:k"}, want: "not both"},
		{name: "bad secret reference", args: []string{"seal", dir, dir + "/out", "--kek-secret", "just-a-name"}, want: "want namespace/name:key"},
		{name: "DEK and KEK", args: []string{"unseal", "a", "b", "--kek-file", kekFile, "--dek-file", kekFile}, want: "give one of --dek-file, --kek-file or --kek-secret"},
		{name: "bad chunk size", args: []string{"seal", dir, dir + "/out", "--kek-file", kekFile, "--chunk-size", "big"}, want: `--chunk-size "big"`},
		{name: "bad output format", args: []string{"inspect", "-o", "yaml", dir}, want: `-o "yaml": want table, json, key or raw`},
		{name: "bad progress mode", args: []string{"verify", dir, "--kek-file", kekFile, "--progress", "fancy"}, want: `progress mode "fancy"`},
		{name: "version takes no arguments", args: []string{"version", "x"}, want: "takes no arguments"},
		// The operator no longer runs a key-resolve Job.
		{name: "resolve-key is gone", args: []string{"resolve-key", dir}, want: `unknown command "resolve-key"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, nil, tt.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d (usage); stderr %q", r.code, exitUsage, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "--help' for usage") {
				t.Errorf("stderr %q, want %q and a pointer to --help", r.stderr, tt.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	root := mustRun(t, nil, "--help").stdout
	for _, sub := range []string{"seal", "unseal", "verify", "inspect", "version"} {
		if !regexp.MustCompile(`(?m)^  ` + sub + ` `).MatchString(root) {
			t.Errorf("root help does not list %s:\n%s", sub, root)
		}
	}
	for sub, flags := range map[string][]string{
		"seal": {"--kek-file", "--kek-secret", "--owner", "--license", "--classification", "--chunk-size", "--progress"},
		"unseal": {"--dek-file", "--kek-file", "--kek-secret", "--expect-digest", "--allow-disk", "--termination-log", "--ca-file", keys.DEKEnvVar,
			"--key-release", "--model", "--token-file", mlv1alpha1.EnvKeyReleaseCA, mlv1alpha1.EnvPodUID,
			// The example is the command the operator generates.
			"modelguard unseal --key-release https://", "--model ProtectedModel/"},
		"verify":  {"--dek-file", "--kek-file", "--expect-digest"},
		"inspect": {"--output", "table", "json", "key", "raw"},
	} {
		help := mustRun(t, nil, sub, "--help").stdout
		for _, flag := range flags {
			if !strings.Contains(help, flag) {
				t.Errorf("%s --help lacks %s", sub, flag)
			}
		}
	}
}

func TestProgressLines(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFile(t, filepath.Join(src, "big.bin"), randomBytes(t, 96<<20))
	kekFile := writeFile(t, filepath.Join(dir, "kek"), randomBytes(t, 32))
	r := mustRun(t, nil, "seal", src, filepath.Join(dir, "bundle"), "--kek-file", kekFile,
		"--progress", "log", "--progress-interval", "1ms", "--workers", "1")
	// Off a terminal: plain lines for pod logs, no carriage returns or
	// escape sequences.
	mustMatch(t, r.stderr, `(?m)^seal: [0-9.]+ [KMG]?i?B of 96\.0 MiB \(\d+%\), [0-9.]+ [KMG]?i?B/s, ETA \S+$`)
	if strings.ContainsAny(r.stderr, "\r\x1b") {
		t.Errorf("log-mode progress contains terminal control characters: %q", r.stderr)
	}
}

// TestNoKeyMaterialInOutput runs every command, succeeding and failing,
// including unseal through the real key-release server, and scans everything
// printed (every termination log, and the server's log) for the KEK, the DEK
// and the ServiceAccount token, raw, hex and base64.
func TestNoKeyMaterialInOutput(t *testing.T) {
	kf := newKeyReleaseFixture(t)
	f := kf.fixture
	dir := t.TempDir()
	dekFile := writeFile(t, filepath.Join(dir, "dek"), []byte(keys.EncodeDEK(f.dek)))
	rawDEKFile := writeFile(t, filepath.Join(dir, "dek.raw"), f.dek)
	shortKEK := writeFile(t, filepath.Join(dir, "short-kek"), f.kek[:31])
	kekAsDEK := writeFile(t, filepath.Join(dir, "kek-as-dek"), f.kek)
	dekAsKEK := writeFile(t, filepath.Join(dir, "dek-as-kek"), f.dek)
	otherKEK := writeFile(t, filepath.Join(dir, "other-kek"), randomBytes(t, 32))
	badDEKEnv := map[string]string{keys.DEKEnvVar: base64.StdEncoding.EncodeToString(f.dek)[:20]}
	dekEnv := map[string]string{keys.DEKEnvVar: keys.EncodeDEK(f.dek)}
	wrongDEK := bytes.Clone(f.dek)
	wrongDEK[0] ^= 1
	wrongDEKEnv := map[string]string{keys.DEKEnvVar: keys.EncodeDEK(wrongDEK)}
	tampered := filepath.Join(dir, "tampered")
	copyTree(t, f.bundle, tampered)
	manifest := filepath.Join(tampered, seal.ManifestName)
	writeFile(t, manifest, bytes.Replace(readFile(t, manifest), []byte("Acme Corp"), []byte("Evil Corp"), 1))
	termLog := filepath.Join(dir, "termination-log")

	released := kf.service(t, allow(kf.token))
	denied := kf.service(t, deny(mlv1alpha1.ReasonPodSpecMismatch, "pod spec differs from the generated template"))
	otherKEKService := newKeyService(t, kf.ca, allow(kf.token), randomBytes(t, keys.KEKSize))
	otherKEKService.start(nil)
	unavailable := kf.service(t, verifierFunc(func(context.Context, keyrelease.Claim) (keyrelease.Decision, error) {
		return keyrelease.Decision{}, errors.New("the API server did not answer")
	}))
	services := []*keyService{released, denied, otherKEKService, unavailable}
	keyRelease := func(url string, extra ...string) []string {
		return append([]string{"unseal", f.bundle, memDir(t), "--key-release", url, "--model", testModelArg,
			"--token-file", kf.tokenFile, "--expect-digest", f.digest, "--progress", "log", "--progress-interval", "1ms"}, extra...)
	}
	// Gives up after a few retries, each of which logs a line.
	shortBackoff := keyrelease.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond, MaxElapsed: 150 * time.Millisecond}

	runs := []struct {
		env     map[string]string
		args    []string
		backoff keyrelease.Backoff
	}{
		{nil, []string{"seal", f.src, filepath.Join(dir, "b1"), "--kek-file", f.kekFile, "--progress", "log", "--progress-interval", "1ms"}, testBackoff},
		{nil, []string{"seal", f.src, filepath.Join(dir, "b2"), "--kek-file", shortKEK}, testBackoff},
		{nil, []string{"seal", f.src, filepath.Join(dir, "b3"), "--kek-file", dekAsKEK}, testBackoff},
		{nil, []string{"inspect", f.bundle}, testBackoff},
		{nil, []string{"inspect", "-o", "json", f.bundle}, testBackoff},
		{nil, []string{"inspect", "-o", "key", f.bundle}, testBackoff},
		{nil, []string{"unseal", f.bundle, memDir(t), "--kek-file", f.kekFile, "--progress", "log", "--progress-interval", "1ms"}, testBackoff},
		{nil, []string{"unseal", f.bundle, memDir(t), "--dek-file", dekFile}, testBackoff},
		{nil, []string{"unseal", f.bundle, memDir(t), "--dek-file", rawDEKFile}, testBackoff},
		{dekEnv, []string{"unseal", f.bundle, memDir(t)}, testBackoff},
		{dekEnv, []string{"verify", f.bundle}, testBackoff},
		{nil, []string{"unseal", f.bundle, memDir(t), "--kek-file", otherKEK}, testBackoff},
		{nil, []string{"unseal", f.bundle, memDir(t), "--kek-file", dekAsKEK}, testBackoff},
		{nil, []string{"unseal", f.bundle, memDir(t), "--dek-file", kekAsDEK}, testBackoff},
		{nil, []string{"unseal", f.bundle, memDir(t), "--kek-file", shortKEK}, testBackoff},
		{badDEKEnv, []string{"unseal", f.bundle, memDir(t)}, testBackoff},
		{wrongDEKEnv, []string{"unseal", f.bundle, memDir(t)}, testBackoff},
		{wrongDEKEnv, []string{"verify", f.bundle}, testBackoff},
		{dekEnv, []string{"unseal", tampered, memDir(t)}, testBackoff},
		{dekEnv, []string{"unseal", f.bundle, memDir(t), "--expect-digest", "sha256:" + strings.Repeat("1", 64)}, testBackoff},
		{dekEnv, []string{"unseal", f.bundle, diskDir(t)}, testBackoff},
		{dekEnv, []string{"unseal", "https://127.0.0.1:1/none", memDir(t)}, testBackoff},
		{dekEnv, []string{"unseal", "--help"}, testBackoff},
		// Key release: released, denied, a ModelKey with another KEK, the
		// checks unavailable until the client gives up, nothing listening,
		// an untrusted certificate, a digest mismatch, and a conflict with
		// the DEK in the environment.
		{kf.env, keyRelease(released.url()), testBackoff},
		{kf.env, keyRelease(denied.url()), testBackoff},
		{kf.env, keyRelease(otherKEKService.url()), testBackoff},
		{kf.env, keyRelease(unavailable.url()), shortBackoff},
		{kf.env, keyRelease("https://127.0.0.1:1"), shortBackoff},
		{map[string]string{mlv1alpha1.EnvKeyReleaseCA: newTestCA(t).pem, mlv1alpha1.EnvPodUID: testPodUID}, keyRelease(released.url()), testBackoff},
		{kf.env, replaceFlagValues(keyRelease(released.url()), map[string]string{"--expect-digest": "sha256:" + strings.Repeat("1", 64)}), testBackoff},
		{map[string]string{keys.DEKEnvVar: keys.EncodeDEK(f.dek), mlv1alpha1.EnvKeyReleaseCA: kf.ca.pem, mlv1alpha1.EnvPodUID: testPodUID},
			keyRelease(released.url()), testBackoff},
	}
	var all strings.Builder
	var failures int
	for _, r := range runs {
		args := r.args
		if args[0] == "unseal" && args[1] != "--help" {
			args = append(args, "--termination-log", termLog)
		}
		os.Remove(termLog)
		res := runCLIWith(t, r.backoff, r.env, args...)
		if res.code != exitOK {
			failures++
		}
		all.WriteString(res.stdout + res.stderr)
		if data, err := os.ReadFile(termLog); err == nil {
			all.Write(data)
		}
	}
	if failures < 18 {
		t.Errorf("only %d runs failed; the scan is meant to cover failure paths", failures)
	}
	for _, s := range services {
		all.WriteString(s.serverLog())
	}
	text := all.String()
	// The key-release runs did what they are in the scan for.
	for _, want := range []string{
		"key release: data key for ProtectedModel nlp/sentiment released in",
		"key release denied (PodSpecMismatch)",
		"key release denied (UnwrapFailed)",
		"Key-release service unavailable, retrying",
		"the key-release service is unavailable",
		"certificate signed by unknown authority",
		"no key was requested",
		"--key-release excludes",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the scanned output lacks %q", want)
		}
	}
	secrets := kf.secrets()
	secrets["wrong DEK"] = wrongDEK
	for name, key := range secrets {
		for _, form := range keyForms(key) {
			if strings.Contains(text, form) {
				t.Errorf("the %s appears in CLI output as %q", name, form)
			}
		}
	}
	if len(text) < 2000 {
		t.Errorf("only %d bytes of output scanned; the runs did not produce what they should", len(text))
	}
}

// keyForms are the forms in which key bytes could be printed.
func keyForms(key []byte) []string {
	return []string{
		string(key),
		hex.EncodeToString(key),
		strings.ToUpper(hex.EncodeToString(key)),
		base64.StdEncoding.EncodeToString(key),
		base64.RawStdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key),
		base64.RawURLEncoding.EncodeToString(key),
		// A prefix catches truncated or wrapped renderings.
		hex.EncodeToString(key)[:16],
		base64.StdEncoding.EncodeToString(key)[:16],
	}
}

// TestV1Bundle reads the format version 1 bundle checked in under
// internal/seal: inspect says its key wrap is unbound, and it still unseals
// with its KEK (the seal package's test KEK).
func TestV1Bundle(t *testing.T) {
	bundle := filepath.Join("..", "..", "internal", "seal", "testdata", "v1-bundle")
	table := mustRun(t, nil, "inspect", bundle).stdout
	if want := "Format:            modelguard.dev/sealed-bundle, format v1 (unbound key wrap)\n"; !strings.Contains(table, want) {
		t.Errorf("inspect table lacks %q:\n%s", want, table)
	}
	kek := bytes.Repeat([]byte{0x5a, 0xc3}, keys.KEKSize/2)
	kekFile := writeFile(t, filepath.Join(t.TempDir(), "kek"), []byte(base64.StdEncoding.EncodeToString(kek)))
	dest := memDir(t)
	termLog := filepath.Join(t.TempDir(), "termination-log")
	mustRun(t, nil, "unseal", bundle, dest, "--kek-file", kekFile, "--progress", "none", "--termination-log", termLog,
		"--expect-digest", "sha256:70264abfe1a8dc9c18c4f8128f053d347eda37bfc1313b9c3a74674adee59872")
	if got := string(readFile(t, filepath.Join(dest, "config.json"))); got != `{"model_type":"test"}` {
		t.Errorf("config.json is %q", got)
	}
	mustMatch(t, string(readFile(t, termLog)), ` format=1\n$`)
}

// TestPassphraseKEKRefused checks that a 32-character passphrase given as a
// KEK file is refused, pointing to the base64 form.
func TestPassphraseKEKRefused(t *testing.T) {
	f := newFixture(t)
	pass := writeFile(t, filepath.Join(t.TempDir(), "kek"), []byte("correct horse battery staple!!!!"))
	r := runCLI(t, nil, "verify", f.bundle, "--kek-file", pass, "--progress", "none")
	if r.code != exitFail {
		t.Errorf("exit %d, want %d", r.code, exitFail)
	}
	for _, want := range []string{"look like a passphrase", "base64"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q lacks %q", r.stderr, want)
		}
	}
	if strings.Contains(r.stderr, "correct horse") {
		t.Errorf("the error shows the passphrase: %q", r.stderr)
	}
}
