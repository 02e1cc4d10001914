package policy

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
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

// NamespaceEnforcement says why ns does not enforce Pod Security baseline or
// restricted, or "" when it does. Without either, a tenant may run a
// privileged or hostPath pod on the model's node and read the plaintext in
// its memory-backed volume, which no check of the model's own pods can stop.
// The label is the namespace's, which tenants bound to edit or admin cannot
// change.
func NamespaceEnforcement(ns *corev1.Namespace) string {
	level := ns.Labels[mlv1alpha1.LabelPodSecurityEnforce]
	switch api.Level(level) {
	case api.LevelBaseline, api.LevelRestricted:
		return ""
	case "":
		return fmt.Sprintf("namespace %s does not enforce Pod Security: label it %s=restricted (or baseline), so that no privileged or hostPath pod can run beside the model",
			ns.Name, mlv1alpha1.LabelPodSecurityEnforce)
	}
	return fmt.Sprintf("namespace %s enforces Pod Security %q: models need %s=restricted (or baseline), so that no privileged or hostPath pod can run beside them",
		ns.Name, level, mlv1alpha1.LabelPodSecurityEnforce)
}
