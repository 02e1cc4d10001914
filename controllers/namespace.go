package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
)

// namespaceGuardManager is the field manager of the namespace label, apart
// from the children's: applying the Namespace with nothing removes exactly
// the label this manager set, and nobody else's.
const namespaceGuardManager = mlv1alpha1.FieldManager + "-namespace-guard"

// +kubebuilder:rbac:groups=core,resources=namespaces,verbs=get;list;watch;patch

// guardNamespace puts LabelProtectedNamespace on ns before any child of a
// workload exists in it, so that the admission guard covers the workload's
// pods from their first moment. It writes only when the label is missing.
func guardNamespace(ctx context.Context, c client.Client, ns *corev1.Namespace) error {
	if ns.Labels[mlv1alpha1.LabelProtectedNamespace] == "true" {
		return nil
	}
	return applyNamespaceGuard(ctx, c, ns.Name, map[string]string{mlv1alpha1.LabelProtectedNamespace: "true"})
}

// unguardNamespaceIfEmpty removes LabelProtectedNamespace from namespace once
// no protected workload is left in it; a namespace with a workload keeps it.
func unguardNamespaceIfEmpty(ctx context.Context, c client.Client, namespace string) error {
	ns := &corev1.Namespace{}
	if err := c.Get(ctx, client.ObjectKey{Name: namespace}, ns); err != nil {
		return client.IgnoreNotFound(err)
	}
	if _, labelled := ns.Labels[mlv1alpha1.LabelProtectedNamespace]; !labelled {
		return nil
	}
	models := &mlv1alpha1.ProtectedModelList{}
	if err := c.List(ctx, models, client.InNamespace(namespace), client.Limit(1)); err != nil {
		return fmt.Errorf("listing the models left in namespace %s: %w", namespace, err)
	}
	if len(models.Items) > 0 {
		return nil
	}
	return applyNamespaceGuard(ctx, c, namespace, nil)
}

func applyNamespaceGuard(ctx context.Context, c client.Client, namespace string, labels map[string]string) error {
	ns := corev1ac.Namespace(namespace)
	if labels != nil {
		ns.WithLabels(labels)
	}
	if err := c.Apply(ctx, ns, client.FieldOwner(namespaceGuardManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("labelling namespace %s for the admission guard: %w", namespace, err)
	}
	return nil
}
