//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// auditEvent is the part of an audit.k8s.io/v1 Event the test reads.
type auditEvent struct {
	Level string                    `json:"level"`
	Stage string                    `json:"stage"`
	Verb  string                    `json:"verb"`
	User  struct{ Username string } `json:"user"`
	// ImpersonatedUser is who the request acted as, for an impersonated
	// request (kubectl --as).
	ImpersonatedUser struct{ Username string } `json:"impersonatedUser"`
	ObjectRef        struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	RequestObject  json.RawMessage `json:"requestObject"`
	ResponseObject json.RawMessage `json:"responseObject"`
}

func readAuditLog(path string) ([]auditEvent, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	var events []auditEvent
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev auditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, "", fmt.Errorf("parsing an audit line %q: %w", sc.Text(), err)
		}
		events = append(events, ev)
	}
	return events, string(data), sc.Err()
}

// The API server's audit log records an exec into a pod, a Secret read and a
// write in the workload's namespace, each with who did it, at Metadata level:
// no request or response body, so the Secret's value is not in the log.
func TestAuditLogRecordsExecAndSecretReads(t *testing.T) {
	t.Parallel()
	workDir, err := clusterWorkDir()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(workDir, "logs", "kube-apiserver-audit.log")
	ns := newNamespace(t, "e2e-audit")
	ctx := context.Background()
	value := "audit-secret-" + randomSuffix() + randomSuffix()
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "model-kek"},
		StringData: map[string]string{"kek": value},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Secrets(ns).Get(ctx, "model-kek", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	createPod(t, restrictedPod(ns, "target", nil, restrictedContainer("main", "idle")))
	waitForRunning(t, ns, "target")
	if _, err := execIn(ns, "target", "main", "/demo-server", "env", "HOSTNAME"); err != nil {
		t.Fatal(err)
	}

	type want struct{ verb, resource, subresource, name string }
	wants := []want{
		// kubectl exec connects with a GET (WebSocket) or a POST (SPDY).
		{"", "pods", "exec", "target"},
		{"get", "secrets", "", "model-kek"},
		{"create", "secrets", "", "model-kek"},
		{"create", "pods", "", "target"},
	}
	var missing []want
	var raw string
	err = eventually(20*time.Second, func() error {
		events, data, err := readAuditLog(logPath)
		if err != nil {
			return err
		}
		raw = data
		missing = nil
		for _, w := range wants {
			ok := false
			for _, ev := range events {
				r := ev.ObjectRef
				if (w.verb == "" || ev.Verb == w.verb) && r.Resource == w.resource && r.Subresource == w.subresource && r.Namespace == ns && r.Name == w.name && ev.User.Username != "" {
					ok = true
					if ev.Level != "Metadata" || len(ev.RequestObject) > 0 || len(ev.ResponseObject) > 0 {
						t.Errorf("audit event for %+v is at level %s with bodies; want Metadata only", w, ev.Level)
					}
				}
			}
			if !ok {
				missing = append(missing, w)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no audit event yet for %+v", missing)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the audit log %s: %v", logPath, err)
	}
	if strings.Contains(raw, value) {
		t.Errorf("the audit log holds the Secret's value")
	}
}
