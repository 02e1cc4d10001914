package policy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/policy"
)

func TestKeyPermits(t *testing.T) {
	team := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Labels: map[string]string{"team": "a", "tier": "prod"}}}
	unlabelled := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "scratch"}}
	tests := []struct {
		name        string
		selector    *metav1.LabelSelector
		ns          *corev1.Namespace
		wantOK      bool
		wantMessage string
	}{{
		name: "{} selects every namespace", selector: &metav1.LabelSelector{}, ns: unlabelled, wantOK: true,
	}, {
		name: "matching labels", selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}, ns: team, wantOK: true,
	}, {
		name:     "matching expression",
		selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod"}}}},
		ns:       team, wantOK: true,
	}, {
		name: "another team's namespace", selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}, ns: team,
		wantMessage: "ModelKey models does not select namespace team-a (spec.namespaceSelector: team=b)",
	}, {
		name: "a namespace without labels", selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}, ns: unlabelled,
		wantMessage: "ModelKey models does not select namespace scratch (spec.namespaceSelector: team=a)",
	}, {
		name: "no selector permits nothing", ns: team,
		wantMessage: "ModelKey models has no namespaceSelector, so no namespace may use it",
	}, {
		name:     "an invalid selector permits nothing",
		selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Near"}}},
		ns:       team,
		wantMessage: `ModelKey models has an invalid namespaceSelector ("Near" is not a valid label selector operator), ` +
			"so no namespace may use it",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mk := &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: "models"}, Spec: mlv1alpha1.ModelKeySpec{NamespaceSelector: tt.selector}}
			ok, message := policy.KeyPermits(mk, tt.ns)
			if diff := cmp.Diff(struct {
				OK      bool
				Message string
			}{tt.wantOK, tt.wantMessage}, struct {
				OK      bool
				Message string
			}{ok, message}); diff != "" {
				t.Errorf("KeyPermits (-want +got):\n%s", diff)
			}
		})
	}
}
