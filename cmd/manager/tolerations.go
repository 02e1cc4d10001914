package main

import (
	"encoding/json"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// parseTolerations reads a JSON list of tolerations, strictly, so that a typo
// in a Helm value fails the manager's start instead of being ignored.
func parseTolerations(s string) ([]corev1.Toleration, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	var tolerations []corev1.Toleration
	if err := dec.Decode(&tolerations); err != nil {
		return nil, fmt.Errorf("want a JSON list of tolerations: %w", err)
	}
	for i, t := range tolerations {
		switch t.Operator {
		case "", corev1.TolerationOpEqual, corev1.TolerationOpExists:
		default:
			return nil, field.NotSupported(field.NewPath("").Index(i).Child("operator"), t.Operator, []string{"Equal", "Exists"})
		}
		switch t.Effect {
		case "", corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		default:
			return nil, field.NotSupported(field.NewPath("").Index(i).Child("effect"), t.Effect, []string{"NoSchedule", "PreferNoSchedule", "NoExecute"})
		}
		if t.Operator == corev1.TolerationOpExists && t.Value != "" {
			return nil, field.Invalid(field.NewPath("").Index(i).Child("value"), t.Value, "must be empty when operator is Exists")
		}
		if t.Key == "" && t.Operator != corev1.TolerationOpExists {
			return nil, field.Invalid(field.NewPath("").Index(i).Child("operator"), t.Operator, "must be Exists when key is empty")
		}
	}
	return tolerations, nil
}
