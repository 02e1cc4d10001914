package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/modelguard/modelguard/test/argocd"
)

// The Argo CD health checks live in config/argocd in Argo CD's own
// resource_customizations layout: <group>/<kind>/health.lua, with
// health_test.yaml cases whose inputs are in testdata/. The tests below run
// them with gopher-lua, the interpreter Argo CD embeds, the way Argo CD's own
// harness does: the object is decoded into the global `obj`, the script runs,
// and the table it returns must carry the expected status and message.

const argoCustomizations = "config/argocd/resource_customizations"

// argoHealthTests is the layout of a health_test.yaml.
type argoHealthTests struct {
	Tests []struct {
		HealthStatus argocd.HealthStatus `json:"healthStatus"`
		InputPath    string              `json:"inputPath"`
	} `json:"tests"`
}

// argoCheck is one <group>/<kind> directory.
type argoCheck struct {
	group, kind, dir string
	script           string
}

func argoChecks(t *testing.T) []argoCheck {
	t.Helper()
	scripts, err := filepath.Glob(filepath.Join(env.RepoRoot, argoCustomizations, "*", "*", "health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	var checks []argoCheck
	for _, s := range scripts {
		dir := filepath.Dir(s)
		data, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		checks = append(checks, argoCheck{group: filepath.Base(filepath.Dir(dir)), kind: filepath.Base(dir), dir: dir, script: string(data)})
	}
	var kinds []string
	for _, c := range checks {
		kinds = append(kinds, c.group+"/"+c.kind)
	}
	if diff := cmp.Diff([]string{"ml.modelguard.dev/ProtectedModel", "ml.modelguard.dev/TrainingJob"}, kinds); diff != "" {
		t.Fatalf("health checks in %s (-want +got):\n%s", argoCustomizations, diff)
	}
	return checks
}

func readYAMLObject(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	return obj
}

func argoTestCases(t *testing.T, c argoCheck) argoHealthTests {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.dir, "health_test.yaml"))
	if err != nil {
		t.Fatalf("%s/%s has no health_test.yaml: %v", c.group, c.kind, err)
	}
	var tests argoHealthTests
	if err := yaml.UnmarshalStrict(data, &tests); err != nil {
		t.Fatalf("parsing %s/%s/health_test.yaml: %v", c.group, c.kind, err)
	}
	return tests
}

func TestArgoCDHealthChecks(t *testing.T) {
	for _, c := range argoChecks(t) {
		tests := argoTestCases(t, c)
		covered := map[string]bool{}
		for _, tc := range tests.Tests {
			obj := readYAMLObject(t, filepath.Join(c.dir, tc.InputPath))
			if obj["kind"] != c.kind {
				t.Errorf("%s is a %v, not a %s", tc.InputPath, obj["kind"], c.kind)
			}
			covered[tc.HealthStatus.Status] = true
			if _, hasStatus := obj["status"]; !hasStatus {
				covered["missing status"] = true
			}
			for _, openLibs := range []bool{true, false} {
				name := fmt.Sprintf("%s/%s/openLibs=%v", c.kind, tc.InputPath, openLibs)
				t.Run(name, func(t *testing.T) {
					got, err := argocd.RunHealthLua(c.script, obj, openLibs)
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(tc.HealthStatus, got); diff != "" {
						t.Errorf("health (-want +got):\n%s", diff)
					}
				})
			}
		}
		want := []string{"Degraded", "Healthy", "Progressing", "missing status"}
		if c.kind == "TrainingJob" {
			want = append(want, "Suspended")
		}
		for _, w := range want {
			if !covered[w] {
				t.Errorf("%s health_test.yaml has no %s case", c.kind, w)
			}
		}
	}
}

// TestArgoCDHealthTestdataIsAccepted writes every testdata object, status
// included, through the real API server, so that the cases describe objects
// the CRDs accept (enums, required condition fields) and not invented ones.
// The status read back must equal the testdata's: nothing pruned.
func TestArgoCDHealthTestdataIsAccepted(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	for _, c := range argoChecks(t) {
		for _, tc := range argoTestCases(t, c).Tests {
			t.Run(c.kind+"/"+tc.InputPath, func(t *testing.T) {
				obj := &unstructured.Unstructured{Object: readYAMLObject(t, filepath.Join(c.dir, tc.InputPath))}
				status, hasStatus := obj.Object["status"]
				delete(obj.Object, "status")
				obj.SetNamespace(ns)
				// e.g. pm-degraded-bundle-tampered
				prefix := map[string]string{"ProtectedModel": "pm-", "TrainingJob": "tj-"}[c.kind]
				obj.SetName(prefix + strings.TrimSuffix(filepath.Base(tc.InputPath), ".yaml"))
				unstructured.RemoveNestedField(obj.Object, "metadata", "generation")
				if err := env.Client.Create(ctx, obj); err != nil {
					t.Fatalf("the API server rejects the spec of %s: %v", tc.InputPath, err)
				}
				if !hasStatus {
					return
				}
				obj.Object["status"] = status
				if err := env.Client.Status().Update(ctx, obj); err != nil {
					t.Fatalf("the API server rejects the status of %s: %v", tc.InputPath, err)
				}
				back := &unstructured.Unstructured{}
				back.SetGroupVersionKind(obj.GroupVersionKind())
				if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), back); err != nil {
					t.Fatal(err)
				}
				// Compare as JSON values: the API server returns int64 where
				// the YAML decoder made float64.
				if diff := cmp.Diff(jsonValue(t, status), jsonValue(t, back.Object["status"])); diff != "" {
					t.Errorf("status changed on the way through the API server (-testdata +stored):\n%s", diff)
				}
				// And the script judges the stored object as it judges the
				// file, apart from generations, which restart at 1 here.
				if _, err := argocd.RunHealthLua(c.script, back.Object, false); err != nil {
					t.Errorf("health.lua on the stored object: %v", err)
				}
			})
		}
	}
}

func jsonValue(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestArgoCDHealthChecksClassifyEveryReason keeps each script's table of
// failure reasons complete: every Reason constant of the API must be listed,
// true (Degraded) or false (still working), and nothing else.
func TestArgoCDHealthChecksClassifyEveryReason(t *testing.T) {
	apiReasons := apiReasonValues(t)
	tablePattern := regexp.MustCompile(`(?s)local failureReasons = \{(.*?)\n\}`)
	entryPattern := regexp.MustCompile(`(?m)^\s*(\w+) = (true|false),\s*$`)
	for _, c := range argoChecks(t) {
		m := tablePattern.FindStringSubmatch(c.script)
		if m == nil {
			t.Fatalf("%s health.lua has no failureReasons table", c.kind)
		}
		var listed []string
		for _, e := range entryPattern.FindAllStringSubmatch(m[1], -1) {
			listed = append(listed, e[1])
		}
		if got := strings.Count(m[1], "="); got != len(listed) {
			t.Errorf("%s failureReasons has %d entries but only %d are `Name = true|false,` lines", c.kind, got, len(listed))
		}
		sort.Strings(listed)
		if diff := cmp.Diff(apiReasons, listed); diff != "" {
			t.Errorf("%s health.lua failureReasons vs api/v1alpha1 Reason constants (-api +lua):\n%s", c.kind, diff)
		}
	}
}

// apiReasonValues returns the values of the Reason* constants declared in
// api/v1alpha1, read from the source so that a new reason cannot be missed.
func apiReasonValues(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, filepath.Join(env.RepoRoot, "api/v1alpha1"), func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			for _, decl := range f.Decls {
				gen, ok := decl.(*ast.GenDecl)
				if !ok || gen.Tok != token.CONST {
					continue
				}
				for _, spec := range gen.Specs {
					vs := spec.(*ast.ValueSpec)
					for i, name := range vs.Names {
						if !strings.HasPrefix(name.Name, "Reason") || i >= len(vs.Values) {
							continue
						}
						lit, ok := vs.Values[i].(*ast.BasicLit)
						if !ok || lit.Kind != token.STRING {
							t.Fatalf("%s is not a string literal", name.Name)
						}
						v, err := strconv.Unquote(lit.Value)
						if err != nil {
							t.Fatal(err)
						}
						seen[v] = true
					}
				}
			}
		}
	}
	if len(seen) < 10 {
		t.Fatalf("found only %d Reason constants in api/v1alpha1", len(seen))
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// TestArgoCDConfigMapPatch checks that the shipped argocd-cm patch holds
// exactly the tested scripts under the keys Argo CD reads, is what
// hack/argocd-cm.sh generates, and is a ConfigMap the API server accepts.
func TestArgoCDConfigMapPatch(t *testing.T) {
	path := filepath.Join(env.RepoRoot, "config/argocd/argocd-cm-patch.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	generated := runTool(t, nil, "hack/argocd-cm.sh")
	if generated != string(data) {
		t.Errorf("config/argocd/argocd-cm-patch.yaml is stale: run `make argocd-cm`")
	}
	cm := &corev1.ConfigMap{}
	if err := yaml.UnmarshalStrict(data, cm); err != nil {
		t.Fatalf("parsing the patch: %v", err)
	}
	if cm.Name != "argocd-cm" || cm.Namespace != "argocd" {
		t.Errorf("patch targets ConfigMap %s/%s, want argocd/argocd-cm", cm.Namespace, cm.Name)
	}
	want := map[string]string{}
	for _, c := range argoChecks(t) {
		want["resource.customizations.health."+c.group+"_"+c.kind] = c.script
	}
	if diff := cmp.Diff(want, cm.Data); diff != "" {
		t.Errorf("argocd-cm data (-health.lua files +patch):\n%s", diff)
	}

	ensureNamespace(t, env.Client, "argocd", nil)
	objs := splitYAML(t, string(data))
	assertAllApplied(t, objs, serverDryRunApply(t, newKubectl(t), string(data)))
}
