package integration

import (
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"

	"github.com/modelguard/modelguard/internal/builder"
)

// Docker cannot run here, so these tests check what can be checked without
// it: the Dockerfile's build commands produce static executables, and its
// paths agree with the Makefile, the manifests and the operator.

// dockerfile is the part of the Dockerfile the tests check.
type dockerfile struct {
	buildStageCopies []string          // source paths copied into the build stage
	buildEnv         map[string]string // ENV of the build stage
	builds           []goBuild         // `go build` commands of the build stage
	finalFrom        string
	finalCopies      map[string]string // COPY --from=build source -> destination
	user             string
	entrypoint       []string
}

// goBuild is one `go build` command.
type goBuild struct {
	args   []string // every argument after `go build`
	output string   // -o
	pkg    string   // the package built
}

func (b goBuild) flag(name string) (string, bool) {
	for i, a := range b.args {
		if a == name && i+1 < len(b.args) {
			return b.args[i+1], true
		}
	}
	return "", false
}

func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(env.RepoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments.
	var lines []string
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		lines = append(lines, cur.String())
		cur.Reset()
	}

	df := dockerfile{buildEnv: map[string]string{}, finalCopies: map[string]string{}}
	stages := 0
	for _, line := range lines {
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			stages++
			df.finalFrom = strings.Fields(rest)[0]
		case "ENV":
			if stages == 1 {
				k, v, _ := strings.Cut(rest, "=")
				df.buildEnv[k] = v
			}
		case "COPY":
			fields := strings.Fields(rest)
			if stages == 1 {
				df.buildStageCopies = append(df.buildStageCopies, fields[:len(fields)-1]...)
				continue
			}
			if len(fields) == 3 && fields[0] == "--from=build" {
				df.finalCopies[fields[1]] = fields[2]
			} else {
				t.Errorf("final stage copies %q from outside the build stage", rest)
			}
		case "RUN":
			if stages != 1 {
				t.Errorf("final stage runs %q: a distroless image has no shell", rest)
			}
			for _, command := range strings.Split(rest, "&&") {
				words := shellWords(t, command)
				if len(words) < 2 || words[0] != "go" || words[1] != "build" {
					continue
				}
				b := goBuild{args: words[2:], pkg: words[len(words)-1]}
				b.output, _ = b.flag("-o")
				df.builds = append(df.builds, b)
			}
		case "USER":
			df.user = rest
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &df.entrypoint); err != nil {
				t.Errorf("ENTRYPOINT %s is not exec form: %v", rest, err)
			}
		}
	}
	if stages != 2 {
		t.Errorf("Dockerfile has %d stages, want 2 (build, then run)", stages)
	}
	return df
}

// shellWords splits a command line the way sh does for the quoting the
// Dockerfile uses: whitespace, with double- and single-quoted words.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// makefileBuilds returns binary name -> package of the Makefile's build
// target, and the ldflags it uses.
func makefileBuilds(t *testing.T) (map[string]string, string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(env.RepoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	ldflags := regexp.MustCompile(`(?m)^GO_LDFLAGS :?= (.*)$`).FindStringSubmatch(text)
	if ldflags == nil {
		t.Fatal("Makefile has no GO_LDFLAGS")
	}
	recipe := regexp.MustCompile(`(?ms)^build:[^\n]*\n((?:\t[^\n]*\n)+)`).FindStringSubmatch(text)
	if recipe == nil {
		t.Fatal("Makefile has no build target")
	}
	builds := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(recipe[1]), "\n") {
		m := regexp.MustCompile(`^CGO_ENABLED=0 go build -trimpath -ldflags '\$\(GO_LDFLAGS\)' -o \$\(BIN\)/(\S+) (\S+)$`).FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			t.Errorf("Makefile build line %q is not a static, trimmed, version-stamped build of one package", strings.TrimSpace(line))
			continue
		}
		builds[m[1]] = m[2]
	}
	return builds, ldflags[1]
}

func TestDockerfileMatchesMakefileAndManifests(t *testing.T) {
	df := parseDockerfile(t)
	makeBuilds, makeLDFlags := makefileBuilds(t)

	dockerBuilds := map[string]string{}
	for _, b := range df.builds {
		if !strings.HasPrefix(b.output, "/out/") {
			t.Errorf("go build -o %s: want outputs in /out/", b.output)
		}
		dockerBuilds[filepath.Base(b.output)] = b.pkg
		ldflags, _ := b.flag("-ldflags")
		if got, want := strings.ReplaceAll(ldflags, "${VERSION}", "VERSION"), strings.ReplaceAll(makeLDFlags, "$(VERSION)", "VERSION"); got != want {
			t.Errorf("%s: Dockerfile ldflags %q, Makefile %q", b.pkg, got, want)
		}
		if !slices.Contains(b.args, "-trimpath") {
			t.Errorf("%s: Dockerfile build lacks -trimpath", b.pkg)
		}
	}
	if diff := cmp.Diff(makeBuilds, dockerBuilds); diff != "" {
		t.Errorf("binaries built by the Makefile and by the Dockerfile differ (-make +docker):\n%s", diff)
	}
	if df.buildEnv["CGO_ENABLED"] != "0" {
		t.Errorf("build stage ENV CGO_ENABLED=%q, want 0: the runtime image has no libc", df.buildEnv["CGO_ENABLED"])
	}

	// The run stage: distroless static, a numeric non-root user (the
	// kubelet can only check runAsNonRoot against a numeric user), every
	// binary at the root of the image.
	if !strings.HasPrefix(df.finalFrom, "gcr.io/distroless/static") || !strings.HasSuffix(df.finalFrom, ":nonroot") {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static…:nonroot", df.finalFrom)
	}
	if df.user != "65532:65532" {
		t.Errorf("USER %q, want the numeric nonroot user 65532:65532", df.user)
	}
	wantCopies := map[string]string{}
	for name := range makeBuilds {
		wantCopies["/out/"+name] = "/" + name
	}
	if diff := cmp.Diff(wantCopies, df.finalCopies); diff != "" {
		t.Errorf("final stage copies (-want +got):\n%s", diff)
	}
	inImage := false
	for _, dst := range df.finalCopies {
		inImage = inImage || dst == builder.ModelguardBinary
	}
	if !inImage {
		t.Errorf("image has %v, but unseal init containers run %s", df.finalCopies, builder.ModelguardBinary)
	}

	// The entrypoint is the manager, and both install methods run it.
	if diff := cmp.Diff([]string{"/manager"}, df.entrypoint); diff != "" {
		t.Errorf("ENTRYPOINT (-want +got):\n%s", diff)
	}
	for _, source := range []struct{ name, manifests string }{
		{"helm chart", runTool(t, helmEnv(t), helmPath(t), "template", "modelguard", "charts/modelguard")},
		{"kustomize config/default", runTool(t, nil, kustomizePath(t), "build", "config/default")},
	} {
		// Both name it modelguard-controller-manager: the release name and
		// the kustomize namePrefix are "modelguard".
		d := fromRendered[appsv1.Deployment](t, findRendered(t, splitYAML(t, source.manifests), "Deployment", "modelguard-controller-manager"))
		var command []string
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name == "manager" {
				command = c.Command
			}
		}
		if diff := cmp.Diff(df.entrypoint, command); diff != "" {
			t.Errorf("%s runs a manager command other than the image's ENTRYPOINT (-entrypoint +command):\n%s", source.name, diff)
		}
	}

	// Every package the binaries need is inside a directory the build
	// stage copies; otherwise `docker build` fails where `go build` here
	// succeeds.
	pkgs := make([]string, 0, len(df.builds))
	for _, b := range df.builds {
		pkgs = append(pkgs, b.pkg)
	}
	out := runTool(t, nil, "go", append([]string{"list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}"}, pkgs...)...)
	for _, dir := range strings.Fields(out) {
		rel, err := filepath.Rel(env.RepoRoot, dir)
		if err != nil {
			t.Fatal(err)
		}
		copied := false
		for _, src := range df.buildStageCopies {
			if src = strings.TrimSuffix(src, "/"); rel == src || strings.HasPrefix(rel, src+"/") {
				copied = true
			}
		}
		if !copied {
			t.Errorf("package directory %s is needed by %v but the Dockerfile does not copy it (copies %v)", rel, pkgs, df.buildStageCopies)
		}
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if !slices.Contains(df.buildStageCopies, f) {
			t.Errorf("build stage does not copy %s", f)
		}
	}
}

var (
	dockerBuildOnce sync.Once
	dockerBuildDir  string
	dockerBuildErr  string
)

// dockerfileVersion is what the tests pass as the VERSION build argument.
const dockerfileVersion = "v0.0.0-dockerfile-test"

// binariesFromDockerfile runs the Dockerfile's own `go build` commands, with
// its ENV, outside Docker, once per test binary, into bin/integration (the
// binaries are large, so they are kept out of the temporary directory).
func binariesFromDockerfile(t *testing.T) string {
	t.Helper()
	dockerBuildOnce.Do(func() {
		df := parseDockerfile(t)
		dockerBuildDir = filepath.Join(env.RepoRoot, "bin", "integration")
		if err := os.MkdirAll(dockerBuildDir, 0o755); err != nil {
			dockerBuildErr = err.Error()
			return
		}
		for _, b := range df.builds {
			args := []string{"build"}
			for _, a := range b.args {
				a = strings.ReplaceAll(a, "${VERSION}", dockerfileVersion)
				a = strings.Replace(a, "/out/", dockerBuildDir+"/", 1)
				args = append(args, a)
			}
			cmd := exec.Command("go", args...)
			cmd.Dir = env.RepoRoot
			cmd.Env = os.Environ()
			for k, v := range df.buildEnv {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				dockerBuildErr = "go " + strings.Join(args, " ") + ": " + err.Error() + "\n" + string(out)
				return
			}
		}
	})
	if dockerBuildErr != "" {
		t.Fatalf("building the binaries as the Dockerfile does: %s", dockerBuildErr)
	}
	return dockerBuildDir
}

func TestDockerfileBuildsStaticExecutables(t *testing.T) {
	dir := binariesFromDockerfile(t)
	for _, b := range parseDockerfile(t).builds {
		name := filepath.Base(b.output)
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			f, err := elf.Open(path)
			if err != nil {
				t.Fatalf("%s is not an ELF executable: %v", name, err)
			}
			defer f.Close()
			if f.Type != elf.ET_EXEC {
				t.Errorf("ELF type %v, want ET_EXEC (a static, non-PIE executable)", f.Type)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("program header %v present: the binary needs a dynamic loader, which distroless static lacks", p.Type)
				}
			}
			if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
				t.Errorf("imported libraries %v (err %v), want none", libs, err)
			}

			info, err := buildinfo.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			settings := map[string]string{}
			for _, s := range info.Settings {
				settings[s.Key] = s.Value
			}
			if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
				t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q, want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
			}
		})
	}
	// Go does not record -ldflags in the build info of a -trimpath build,
	// so the stamp is checked by asking the binary.
	out := runTool(t, nil, filepath.Join(dir, "manager"), "--version")
	if strings.TrimSpace(out) != dockerfileVersion {
		t.Errorf("manager --version = %q, want %q", strings.TrimSpace(out), dockerfileVersion)
	}
}
