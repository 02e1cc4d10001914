package builder_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/test/builders"
)

// objectBuilders are every builder of a child object, each called the way
// the controller calls it. TestEveryObjectBuilderIsSwept keeps the list
// complete.
var objectBuilders = map[string]func(*mlv1alpha1.ProtectedModel) any{
	"ServiceAccount": func(pm *mlv1alpha1.ProtectedModel) any { return builder.ServiceAccount(builder.ForProtectedModel(pm)) },
	"Service":        func(pm *mlv1alpha1.ProtectedModel) any { return builder.Service(pm) },
	"NetworkPolicy": func(pm *mlv1alpha1.ProtectedModel) any {
		return builder.NetworkPolicy(builder.ForProtectedModel(pm), builder.Isolation{ServingPort: ptr.To[int32](8080), SameWorkloadPeers: true})
	},
	"ModelNetworkPolicy": func(pm *mlv1alpha1.ProtectedModel) any {
		return builder.ModelNetworkPolicy(pm, testOperatorNamespace)
	},
	"Deployment": func(pm *mlv1alpha1.ProtectedModel) any { return builder.Deployment(pm, servingFacts(2)) },
}

// ownershipSpecs vary everything that could make a builder take another path.
var ownershipSpecs = map[string]func(*builders.ProtectedModelWrapper){
	"minimal, optional ownership fields empty": func(w *builders.ProtectedModelWrapper) {},
	"every ownership field": func(w *builders.ProtectedModelWrapper) {
		w.Copyright("Copyright 2026 Acme Corp").Classification(mlv1alpha1.ClassificationConfidential).
			Patents("US1234567", "EP7654321").Contact("ml-legal@acme.example")
	},
	"gpu, runtime class, network, https": func(w *builders.ProtectedModelWrapper) {
		w.HTTPSource("https://models.example.com/v3/").Digest(otherDigest).GPUs(2).GPUProducts("NVIDIA-L4").
			RuntimeClass("kata-cc").AllowClientPods(map[string]string{"app": "web"}).AllowEgress("203.0.113.0/24", 443).
			Toleration(corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpExists})
	},
}

// TestEveryChildCarriesOwnership checks every object each builder makes, and
// every pod template inside it, for all ownership annotations and common
// labels, with the values taken from the spec.
func TestEveryChildCarriesOwnership(t *testing.T) {
	for specName, edit := range ownershipSpecs {
		pm := model(edit)
		o := pm.Spec.Ownership
		wantAnnotations := map[string]string{
			"modelguard.dev/owner":          o.Owner,
			"modelguard.dev/license":        o.License,
			"modelguard.dev/copyright":      o.Copyright,
			"modelguard.dev/classification": string(o.Classification),
			"modelguard.dev/patents":        strings.Join(o.Patents, "; "),
			"modelguard.dev/weights-digest": pm.Spec.Weights.Digest,
		}
		wantLabels := map[string]string{
			"app.kubernetes.io/managed-by": "modelguard",
			"app.kubernetes.io/name":       "m",
			"modelguard.dev/model":         "m",
			"modelguard.dev/protected":     "true",
		}
		wantOwner := []metav1.OwnerReference{{
			APIVersion: "ml.modelguard.dev/v1alpha1", Kind: "ProtectedModel", Name: "m", UID: testUID,
			Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
		}}
		for builderName, build := range objectBuilders {
			t.Run(specName+"/"+builderName, func(t *testing.T) {
				obj := asUnstructured(t, build(pm))
				if obj.GetNamespace() != testNamespace {
					t.Errorf("namespace = %q, want %q", obj.GetNamespace(), testNamespace)
				}
				if diff := cmp.Diff(wantOwner, obj.GetOwnerReferences()); diff != "" {
					t.Errorf("ownerReferences (-want +got):\n%s", diff)
				}
				metas := map[string]metav1.Object{"object": obj}
				for path, template := range podTemplates(t, obj.Object, "") {
					metas[path] = template
				}
				if builderName == "Deployment" {
					if len(metas) != 2 {
						t.Fatalf("found %d pod templates, want 1", len(metas)-1)
					}
				}
				for where, m := range metas {
					if diff := cmp.Diff(wantAnnotations, subset(m.GetAnnotations(), wantAnnotations)); diff != "" {
						t.Errorf("%s annotations (-want +got):\n%s", where, diff)
					}
					if diff := cmp.Diff(wantLabels, subset(m.GetLabels(), wantLabels)); diff != "" {
						t.Errorf("%s labels (-want +got):\n%s", where, diff)
					}
				}
			})
		}
	}
}

// TestEveryObjectBuilderIsSwept fails when the builder package gains an
// exported function returning an object's applyconfiguration that the
// ownership sweep does not call, so that a new child cannot skip it.
func TestEveryObjectBuilderIsSwept(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var found []string
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !fn.Name.IsExported() || fn.Type.Results == nil {
				continue
			}
			for _, result := range fn.Type.Results.List {
				star, ok := result.Type.(*ast.StarExpr)
				if !ok {
					continue
				}
				sel, ok := star.X.(*ast.SelectorExpr)
				if !ok || !strings.HasSuffix(sel.Sel.Name, "ApplyConfiguration") {
					continue
				}
				// A top-level object's applyconfiguration has a constructor
				// taking a name (and a namespace); parts such as
				// ResourceRequirements do not have ObjectMeta.
				if isObjectApplyConfiguration(sel.Sel.Name) {
					found = append(found, fn.Name.Name)
				}
			}
		}
	}
	sort.Strings(found)
	var swept []string
	for name := range objectBuilders {
		swept = append(swept, name)
	}
	sort.Strings(swept)
	if diff := cmp.Diff(swept, found); diff != "" {
		t.Errorf("object builders in package builder vs. the ownership sweep (-swept +found):\n%s", diff)
	}
}

func isObjectApplyConfiguration(name string) bool {
	switch strings.TrimSuffix(name, "ApplyConfiguration") {
	case "ServiceAccount", "Secret", "Service", "NetworkPolicy", "Deployment", "Job", "ConfigMap",
		"StatefulSet", "DaemonSet", "Pod", "PersistentVolumeClaim", "Role", "RoleBinding", "CronJob",
		"PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress", "ServiceMonitor":
		return true
	}
	return false
}

func asUnstructured(t *testing.T, applyConfiguration any) *unstructured.Unstructured {
	t.Helper()
	data, err := json.Marshal(applyConfiguration)
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		t.Fatalf("%T: %v", applyConfiguration, err)
	}
	return obj
}

// podTemplates finds every pod template in an object, whatever its kind: any
// "template" whose spec has containers.
func podTemplates(t *testing.T, node any, path string) map[string]metav1.Object {
	t.Helper()
	out := map[string]metav1.Object{}
	fields, ok := node.(map[string]any)
	if !ok {
		return out
	}
	for key, value := range fields {
		child, ok := value.(map[string]any)
		if !ok {
			continue
		}
		p := path + "." + key
		if spec, ok := child["spec"].(map[string]any); ok && key == "template" {
			if _, ok := spec["containers"]; ok {
				meta, _ := child["metadata"].(map[string]any)
				out[p] = &unstructured.Unstructured{Object: map[string]any{"metadata": meta}}
			}
		}
		for k, v := range podTemplates(t, child, p) {
			out[k] = v
		}
	}
	return out
}

func subset(m, keys map[string]string) map[string]string {
	out := map[string]string{}
	for k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}
