package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	ctrl "sigs.k8s.io/controller-runtime"
)

// inClusterNamespaceFile is where a pod finds its own namespace, which is
// where the manager's leader-election Lease lives unless a flag says
// otherwise.
const inClusterNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func leaseNamespace(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	data, err := os.ReadFile(inClusterNamespaceFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// deleteReleasedLease removes the leader-election Lease after this manager
// has released it on exit, so that uninstalling the operator leaves no Lease
// behind. It leaves a Lease that another replica holds, and the
// preconditions keep it from deleting one that another replica acquired
// between the read and the delete; that replica then cleans up when it exits.
func deleteReleasedLease(ctx context.Context, leases coordinationv1client.LeaseInterface, name string) error {
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading Lease %s: %w", name, err)
	}
	if holder := lease.Spec.HolderIdentity; holder != nil && *holder != "" {
		return nil
	}
	err = leases.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{
		UID: &lease.UID, ResourceVersion: &lease.ResourceVersion,
	}})
	if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return fmt.Errorf("deleting released Lease %s: %w", name, err)
}

// Environment variables, set from the downward API, that name the manager's
// own pod.
const (
	podNameEnv = "POD_NAME"
	podUIDEnv  = "POD_UID"
	// podNamespaceEnv is the manager's namespace, where ModelKey Secrets
	// live.
	podNamespaceEnv = "POD_NAMESPACE"
)

// leaseOwnerRunnable makes the leader's pod the owner of the leader-election
// Lease once this manager leads. Deleting the operator then garbage-collects
// the Lease even when the manager cannot delete it itself on exit, e.g. after
// `helm uninstall` has already removed its RBAC. A new leader re-creates the
// Lease if the garbage collector got there first.
type leaseOwnerRunnable struct {
	leases          coordinationv1client.LeaseInterface
	name            string
	podName, podUID string
}

// NeedLeaderElection runs it only in the leader.
func (r *leaseOwnerRunnable) NeedLeaderElection() bool { return true }

func (r *leaseOwnerRunnable) Start(ctx context.Context) error {
	patch := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Pod","name":%q,"uid":%q}]}}`, r.podName, r.podUID)
	if _, err := r.leases.Patch(ctx, r.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "modelguard"}); err != nil {
		// Not fatal: the manager still deletes the Lease on a clean exit.
		ctrl.Log.WithName("setup").Error(err, "Could not make the manager's pod own its leader-election Lease")
	}
	<-ctx.Done()
	return nil
}
