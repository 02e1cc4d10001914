package protectedmodel

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/keys"
)

// newKEK returns 32 random bytes, a KEK as a ModelKey's Secret holds it.
func newKEK(t *testing.T) []byte {
	t.Helper()
	kek := make([]byte, keys.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	return kek
}

// createOperatorSecret puts data under key in a Secret of the operator's
// namespace, where a ModelKey's spec.provider.secret points.
func createOperatorSecret(t *testing.T, name, key string, data []byte) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: name}, Data: map[string][]byte{key: data}}
	if err := k8s.Create(context.Background(), s); err != nil {
		t.Fatalf("creating Secret %s/%s: %v", operatorNamespace, name, err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), s) })
}

// createModelKey creates a ModelKey with the given provider and selector
// ({} when nil).
func createModelKey(t *testing.T, name string, provider mlv1alpha1.ModelKeyProvider, selector *metav1.LabelSelector) *mlv1alpha1.ModelKey {
	t.Helper()
	if selector == nil {
		selector = &metav1.LabelSelector{}
	}
	mk := &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: mlv1alpha1.ModelKeySpec{Provider: provider, NamespaceSelector: selector}}
	if err := k8s.Create(context.Background(), mk); err != nil {
		t.Fatalf("creating ModelKey %s: %v", name, err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), mk) })
	return mk
}

func secretProvider(name, key string) mlv1alpha1.ModelKeyProvider {
	return mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: name, Key: key}}
}

// waitForModelKey waits until the ModelKey's Ready condition has the status
// and reason, for its current generation, and returns the ModelKey.
func waitForModelKey(t *testing.T, name string, status metav1.ConditionStatus, reason string) *mlv1alpha1.ModelKey {
	t.Helper()
	mk := &mlv1alpha1.ModelKey{}
	eventually(t, fmt.Sprintf("ModelKey %s is Ready=%s/%s", name, status, reason), func() error {
		if err := k8s.Get(context.Background(), client.ObjectKey{Name: name}, mk); err != nil {
			return err
		}
		c := meta.FindStatusCondition(mk.Status.Conditions, mlv1alpha1.ConditionReady)
		if c == nil {
			return fmt.Errorf("no Ready condition")
		}
		if c.Status != status || c.Reason != reason || c.ObservedGeneration != mk.Generation {
			return fmt.Errorf("Ready is %s/%s for generation %d (generation %d): %s", c.Status, c.Reason, c.ObservedGeneration, mk.Generation, c.Message)
		}
		return nil
	})
	return mk
}

// modelKeyEventNotes are the notes of the events regarding ModelKey name.
// Events of cluster-scoped objects go to the default namespace.
func modelKeyEventNotes(t *testing.T, name string) []string {
	t.Helper()
	events := &eventsv1.EventList{}
	if err := k8s.List(context.Background(), events, client.InNamespace(metav1.NamespaceDefault)); err != nil {
		t.Fatal(err)
	}
	var notes []string
	for _, ev := range events.Items {
		if ev.Regarding.Kind == "ModelKey" && ev.Regarding.Name == name {
			notes = append(notes, ev.Type+" "+ev.Reason+" "+ev.Note)
		}
	}
	return notes
}

func TestModelKeyReadyComesFromTheSelfTest(t *testing.T) {
	goodKEK := newKEK(t)
	kek, err := keys.NewKEK(goodKEK)
	if err != nil {
		t.Fatal(err)
	}
	passphrase := []byte("correct horse battery staple 123") // 32 printable bytes
	shortKEK := newKEK(t)[:16]
	tests := []struct {
		name        string
		secret      map[string][]byte // nil: no Secret
		provider    mlv1alpha1.ModelKeyProvider
		wantStatus  metav1.ConditionStatus
		wantReason  string
		wantKeyID   string
		wantMessage []string
		leaks       [][]byte
	}{{
		name: "KEK in the operator's Secret", secret: map[string][]byte{"kek": []byte(keys.EncodeDEK(goodKEK))},
		provider: secretProvider("mk-good", "kek"), wantStatus: metav1.ConditionTrue, wantReason: mlv1alpha1.ReasonSelfTestPassed,
		wantKeyID: kek.ID(), leaks: [][]byte{goodKEK},
	}, {
		name: "Secret missing", provider: secretProvider("mk-missing", "kek"),
		wantStatus: metav1.ConditionFalse, wantReason: mlv1alpha1.ReasonKeySecretNotFound,
		wantMessage: []string{"Secret mk-missing", "spec.provider.secret", "does not exist"},
	}, {
		name: "no such entry in the Secret", secret: map[string][]byte{"other": []byte(keys.EncodeDEK(goodKEK))},
		provider: secretProvider("mk-entry", "kek"), wantStatus: metav1.ConditionFalse, wantReason: mlv1alpha1.ReasonKeyNotInSecret,
		wantMessage: []string{"Secret mk-entry", `no key "kek"`}, leaks: [][]byte{goodKEK},
	}, {
		name: "KEK of the wrong length", secret: map[string][]byte{"kek": []byte(keys.EncodeDEK(shortKEK))},
		provider: secretProvider("mk-short", "kek"), wantStatus: metav1.ConditionFalse, wantReason: mlv1alpha1.ReasonKeyUnwrapFailed,
		wantMessage: []string{"Secret mk-short", "invalid key material"}, leaks: [][]byte{shortKEK},
	}, {
		name: "a passphrase, not a key", secret: map[string][]byte{"kek": passphrase},
		provider: secretProvider("mk-passphrase", "kek"), wantStatus: metav1.ConditionFalse, wantReason: mlv1alpha1.ReasonKeyUnwrapFailed,
		wantMessage: []string{"Secret mk-passphrase", "passphrase"}, leaks: [][]byte{passphrase},
	}, {
		name:       "AWS KMS is not built yet: fail closed",
		provider:   mlv1alpha1.ModelKeyProvider{AWSKMS: &mlv1alpha1.AWSKMSKey{KeyID: "alias/models", Region: "eu-west-1"}},
		wantStatus: metav1.ConditionFalse, wantReason: mlv1alpha1.ReasonKeyProviderUnavailable,
		wantMessage: []string{"not supported", "AWSKMS"},
	}}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("selftest-%d", i)
			if tc.secret != nil {
				for k, v := range tc.secret {
					createOperatorSecret(t, tc.provider.Secret.Name, k, v)
				}
			}
			createModelKey(t, name, tc.provider, nil)
			mk := waitForModelKey(t, name, tc.wantStatus, tc.wantReason)
			if mk.Status.Provider != tc.provider.Kind() {
				t.Errorf("status.provider is %q, want %q", mk.Status.Provider, tc.provider.Kind())
			}
			if mk.Status.KeyID != tc.wantKeyID {
				t.Errorf("status.keyId is %q, want %q", mk.Status.KeyID, tc.wantKeyID)
			}
			ready := meta.FindStatusCondition(mk.Status.Conditions, mlv1alpha1.ConditionReady)
			for _, part := range tc.wantMessage {
				if !strings.Contains(ready.Message, part) {
					t.Errorf("Ready message %q does not mention %q", ready.Message, part)
				}
			}
			var notes []string
			eventually(t, "an event for the Ready transition", func() error {
				notes = modelKeyEventNotes(t, name)
				for _, n := range notes {
					if strings.Contains(n, tc.wantReason) && strings.Contains(n, "Ready="+string(tc.wantStatus)) {
						return nil
					}
				}
				return fmt.Errorf("events: %q", notes)
			})
			status, err := json.Marshal(mk.Status)
			if err != nil {
				t.Fatal(err)
			}
			for _, secret := range tc.leaks {
				for _, form := range secretForms(secret) {
					for where, text := range map[string]string{"status": string(status), "events": strings.Join(notes, "\n"), "manager logs": logs.String()} {
						if strings.Contains(text, form) {
							t.Errorf("key material (%d-byte form) appears in the %s", len(form), where)
						}
					}
				}
			}
		})
	}
}

func TestModelKeyStatusIsNotRewrittenOnResync(t *testing.T) {
	createOperatorSecret(t, "mk-steady", "kek", []byte(keys.EncodeDEK(newKEK(t))))
	createModelKey(t, "steady", secretProvider("mk-steady", "kek"), nil)
	waitForModelKey(t, "steady", metav1.ConditionTrue, mlv1alpha1.ReasonSelfTestPassed)
	statusPath := "/modelkeys/steady/status"
	before, reconciles := countWrites(statusPath), modelKeyReconciles("steady")
	// The harness's cache resyncs every 2 s, and each resync reconciles.
	eventually(t, "two more reconciles of the ModelKey", func() error {
		if n := modelKeyReconciles("steady"); n < reconciles+2 {
			return fmt.Errorf("%d reconciles, want at least %d", n, reconciles+2)
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)
	if after := countWrites(statusPath); after != before {
		t.Errorf("%d status writes to ModelKey steady during resyncs of an unchanged key, want 0", after-before)
	}
}

// countWrites counts the manager's writes to paths ending in suffix.
func countWrites(suffix string) int {
	writes.mu.Lock()
	defer writes.mu.Unlock()
	n := 0
	for _, w := range writes.all {
		if strings.HasSuffix(w, suffix) {
			n++
		}
	}
	return n
}

// modelKeyReconciles counts the manager's "Reconciling" debug lines for
// ModelKey name.
func modelKeyReconciles(name string) int {
	n := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "Reconciling") && strings.Contains(line, `"controller": "modelkey"`) && strings.Contains(line, `"name": "`+name+`"`) {
			n++
		}
	}
	return n
}
