package builder

import (
	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// This file composes the kind-neutral builders for a TrainingJob; its
// controller adds the trainer Job here.

// ForTrainingJob is the workload of a TrainingJob. Its weights digest is that
// of the base weights it starts from, if any.
func ForTrainingJob(tj *mlv1alpha1.TrainingJob) Workload {
	w := Workload{
		Kind: "TrainingJob", Name: tj.Name, Namespace: tj.Namespace, UID: tj.UID,
		NameLabel:        mlv1alpha1.LabelTrainingJob,
		Ownership:        tj.Spec.Ownership,
		GPU:              tj.Spec.GPU,
		Network:          derefOrZero(tj.Spec.Network),
		Access:           derefOrZero(tj.Spec.Access),
		RuntimeClassName: tj.Spec.RuntimeClassName,
	}
	if tj.Spec.BaseWeights != nil {
		w.WeightsDigest = tj.Spec.BaseWeights.Digest
	}
	return w
}
