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

func TestModelKeyUsable(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "nlp", Labels: map[string]string{"team": "nlp"}}}
	key := func(generation int64, selector map[string]string, ready ...metav1.Condition) *mlv1alpha1.ModelKey {
		return &mlv1alpha1.ModelKey{
			ObjectMeta: metav1.ObjectMeta{Name: "models", Generation: generation},
			Spec:       mlv1alpha1.ModelKeySpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: selector}},
			Status:     mlv1alpha1.ModelKeyStatus{Conditions: ready},
		}
	}
	readyAt := func(generation int64) metav1.Condition {
		return metav1.Condition{Type: mlv1alpha1.ConditionReady, Status: metav1.ConditionTrue, ObservedGeneration: generation, Reason: mlv1alpha1.ReasonSelfTestPassed}
	}
	failed := metav1.Condition{Type: mlv1alpha1.ConditionReady, Status: metav1.ConditionFalse, ObservedGeneration: 2,
		Reason: mlv1alpha1.ReasonKeySecretNotFound, Message: "Secret kek named by spec.provider.secret does not exist"}
	tests := []struct {
		name            string
		mk              *mlv1alpha1.ModelKey
		reason, message string
	}{
		{"usable", key(2, map[string]string{"team": "nlp"}, readyAt(2)), "", ""},
		{"missing", nil, mlv1alpha1.ReasonModelKeyNotFound, "ModelKey models does not exist"},
		{"no status yet", key(2, nil), mlv1alpha1.ReasonModelKeyNotReady, "ModelKey models is not Ready: its self-test has not run for its current spec"},
		{"Ready for an older spec", key(3, nil, readyAt(2)), mlv1alpha1.ReasonModelKeyNotReady, "ModelKey models is not Ready: its self-test has not run for its current spec"},
		{"self-test failed", key(2, nil, failed), mlv1alpha1.ReasonModelKeyNotReady,
			"ModelKey models is not Ready: SecretNotFound: Secret kek named by spec.provider.secret does not exist"},
		{"another team's key, Ready", key(2, map[string]string{"team": "vision"}, readyAt(2)), mlv1alpha1.ReasonKeyNotPermitted,
			"ModelKey models does not select namespace nlp (spec.namespaceSelector: team=vision)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reason, message := policy.ModelKeyUsable("models", tc.mk, ns)
			if diff := cmp.Diff([2]string{tc.reason, tc.message}, [2]string{reason, message}); diff != "" {
				t.Errorf("ModelKeyUsable (-want +got):\n%s", diff)
			}
		})
	}
}
