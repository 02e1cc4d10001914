package policy

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"
)

// restrictedEvaluator checks pods against Pod Security "restricted" with the
// same library the API server's admission plugin uses.
var restrictedEvaluator = func() psapolicy.Evaluator {
	e, err := psapolicy.NewEvaluator(psapolicy.DefaultChecks(), nil)
	if err != nil {
		panic(fmt.Sprintf("building the Pod Security evaluator: %v", err))
	}
	return e
}()

// PodSecurityViolations lists how a generated pod template fails Pod
// Security "restricted" (latest); none means it passes.
func PodSecurityViolations(template *corev1ac.PodTemplateSpecApplyConfiguration) []string {
	data, err := json.Marshal(template)
	if err != nil {
		return []string{fmt.Sprintf("pod template cannot be checked: %v", err)}
	}
	var pod corev1.PodTemplateSpec
	if err := json.Unmarshal(data, &pod); err != nil {
		return []string{fmt.Sprintf("pod template cannot be checked: %v", err)}
	}
	var violations []string
	for _, result := range restrictedEvaluator.EvaluatePod(api.LevelVersion{Level: api.LevelRestricted, Version: api.LatestVersion()}, &pod.ObjectMeta, &pod.Spec) {
		if !result.Allowed {
			violations = append(violations, result.ForbiddenReason+": "+result.ForbiddenDetail)
		}
	}
	return violations
}
