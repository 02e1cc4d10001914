package controllers

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
)

func TestComputeModelKeyStatus(t *testing.T) {
	kek, err := keys.NewKEK(make([]byte, keys.KEKSize))
	if err != nil {
		t.Fatal(err)
	}
	mk := &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: "models", Generation: 3},
		Spec: mlv1alpha1.ModelKeySpec{Provider: mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: "kek", Key: "kek"}}}}
	ready := func(s metav1.ConditionStatus, reason, message string) []metav1.Condition {
		return []metav1.Condition{{Type: mlv1alpha1.ConditionReady, Status: s, Reason: reason, Message: message, ObservedGeneration: 3}}
	}
	tests := []struct {
		name     string
		provider keys.Provider
		err      error
		want     mlv1alpha1.ModelKeyStatus
	}{{
		name: "self-test passed", provider: kek,
		want: mlv1alpha1.ModelKeyStatus{Provider: mlv1alpha1.ModelKeyProviderSecret, KeyID: kek.ID(),
			Conditions: ready(metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed, "a fresh data key was wrapped and unwrapped with the key-encryption key")},
	}, {
		name: "provider not loaded", err: &keys.ProviderError{Reason: mlv1alpha1.ReasonKeySecretNotFound, Message: "Secret kek named by spec.provider.secret does not exist"},
		want: mlv1alpha1.ModelKeyStatus{Provider: mlv1alpha1.ModelKeyProviderSecret,
			Conditions: ready(metav1.ConditionFalse, mlv1alpha1.ReasonKeySecretNotFound, "Secret kek named by spec.provider.secret does not exist")},
	}, {
		name: "self-test failed", provider: kek, err: &selfTestError{fmt.Errorf("unwrapping the test data key with %s: %w", kek.ID(), keys.ErrWrongKey)},
		want: mlv1alpha1.ModelKeyStatus{Provider: mlv1alpha1.ModelKeyProviderSecret, KeyID: kek.ID(),
			Conditions: ready(metav1.ConditionFalse, mlv1alpha1.ReasonSelfTestFailed, "unwrapping the test data key with "+kek.ID()+": "+keys.ErrWrongKey.Error())},
	}, {
		name: "anything else: provider unavailable", err: errors.New("connection refused"),
		want: mlv1alpha1.ModelKeyStatus{Provider: mlv1alpha1.ModelKeyProviderSecret,
			Conditions: ready(metav1.ConditionFalse, mlv1alpha1.ReasonKeyProviderUnavailable, "connection refused")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := computeModelKeyStatus(mk, tc.provider, tc.err)
			if diff := cmp.Diff(tc.want, got, ignoreTransitionTime); diff != "" {
				t.Errorf("status (-want +got):\n%s", diff)
			}
		})
	}
}

// wrongUnwrap is a provider whose unwrap gives other bytes back.
type wrongUnwrap struct{ keys.Provider }

func (w wrongUnwrap) Unwrap(context.Context, []byte, keys.Binding) ([]byte, error) {
	return make([]byte, keys.DEKSize), nil
}

func TestSelfTest(t *testing.T) {
	kek, err := keys.NewKEK(make([]byte, keys.KEKSize))
	if err != nil {
		t.Fatal(err)
	}
	if err := selfTest(context.Background(), kek); err != nil {
		t.Errorf("self-test of a working KEK: %v", err)
	}
	var failure *selfTestError
	if err := selfTest(context.Background(), wrongUnwrap{kek}); !errors.As(err, &failure) {
		t.Errorf("self-test of a provider that unwraps to other bytes: %v, want a self-test failure", err)
	}
}
