//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// etcdClientURL is the local cluster's etcd, on loopback only.
const etcdClientURL = "http://127.0.0.1:12379"

// etcdGet reads a key straight from etcd through its v3 JSON gateway, under
// the API server: what anyone who can read etcd or its data dir gets.
func etcdGet(key string) ([]byte, error) {
	body, _ := json.Marshal(map[string]string{"key": base64.StdEncoding.EncodeToString([]byte(key))})
	httpClient := &http.Client{Timeout: 5 * time.Second}
	resp, err := httpClient.Post(etcdClientURL+"/v3/kv/range", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("reading %s from etcd: %w", key, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading %s from etcd: %s: %s", key, resp.Status, data)
	}
	var out struct {
		KVs []struct {
			Value []byte `json:"value"` // base64 in JSON, decoded here
		} `json:"kvs"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("parsing etcd's answer %s: %w", data, err)
	}
	if len(out.KVs) != 1 {
		return nil, fmt.Errorf("etcd has %d values under %s, want 1", len(out.KVs), key)
	}
	return out.KVs[0].Value, nil
}

// A Secret's value is encrypted before it reaches etcd: its key in etcd holds
// secretbox ciphertext and not the value, while a ConfigMap (not encrypted)
// holding the same kind of marker shows the value in the clear, which proves
// the read would have found it.
func TestSecretsAreEncryptedInEtcd(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t, "e2e-secrets")
	ctx := context.Background()
	secretValue := "kek-" + randomSuffix() + randomSuffix() + randomSuffix()
	configValue := "config-" + randomSuffix() + randomSuffix() + randomSuffix()
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "kek"},
		StringData: map[string]string{"kek.b64": secretValue},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "control"},
		Data:       map[string]string{"value": configValue},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	stored, err := etcdGet("/registry/secrets/" + ns + "/kek")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(stored, []byte(secretValue)) || bytes.Contains(stored, []byte(base64.StdEncoding.EncodeToString([]byte(secretValue)))) {
		t.Errorf("etcd holds the Secret's value in plaintext")
	}
	if !strings.HasPrefix(string(stored), "k8s:enc:secretbox:v1:key1:") {
		t.Errorf("etcd's Secret value starts %q, want the secretbox envelope k8s:enc:secretbox:v1:key1:", stored[:min(len(stored), 32)])
	}
	control, err := etcdGet("/registry/configmaps/" + ns + "/control")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(control, []byte(configValue)) {
		t.Errorf("the ConfigMap's value is not visible in etcd either: this read cannot tell plaintext from ciphertext")
	}
	// The API server still decrypts for those allowed to read it.
	got, err := client.CoreV1().Secrets(ns).Get(ctx, "kek", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Data["kek.b64"]) != secretValue {
		t.Errorf("the API server returns %d bytes for the Secret, want the value written", len(got.Data["kek.b64"]))
	}
}
