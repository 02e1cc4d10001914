package main

import (
	"context"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func TestDeleteReleasedLease(t *testing.T) {
	const ns, name = "modelguard-system", "modelguard.ml.modelguard.dev"
	tests := []struct {
		name       string
		holder     *string
		exists     bool
		wantExists bool
	}{
		{name: "released by this manager: deleted", holder: ptr.To(""), exists: true, wantExists: false},
		{name: "no holder recorded: deleted", holder: nil, exists: true, wantExists: false},
		{name: "held by another replica: kept", holder: ptr.To("replica-b"), exists: true, wantExists: true},
		{name: "already gone: no error", exists: false, wantExists: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clientset := fake.NewClientset()
			leases := clientset.CoordinationV1().Leases(ns)
			if tc.exists {
				lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: "uid-1"},
					Spec: coordinationv1.LeaseSpec{HolderIdentity: tc.holder}}
				if _, err := leases.Create(context.Background(), lease, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if err := deleteReleasedLease(context.Background(), leases, name); err != nil {
				t.Fatalf("deleteReleasedLease: %v", err)
			}
			_, err := leases.Get(context.Background(), name, metav1.GetOptions{})
			if exists := err == nil; exists != tc.wantExists {
				t.Errorf("Lease exists = %v (err %v), want %v", exists, err, tc.wantExists)
			}
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
}

func TestLeaseNamespace(t *testing.T) {
	if got := leaseNamespace("ops"); got != "ops" {
		t.Errorf("leaseNamespace(ops) = %q", got)
	}
}
