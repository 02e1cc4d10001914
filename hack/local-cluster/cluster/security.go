package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"sigs.k8s.io/yaml"
)

// What a hardened API server has and the local cluster now has too: Secrets
// encrypted before they reach etcd, and an audit log.

// SecretsEncryptionProvider is the EncryptionConfiguration provider; etcd
// values it wrote start with "k8s:enc:secretbox:v1:<key name>:".
const SecretsEncryptionProvider = "secretbox"

// renderEncryptionConfig returns an EncryptionConfiguration that encrypts
// Secrets with XSalsa20-Poly1305 (secretbox) under a fresh 32-byte key. There
// is no identity provider: every Secret of a fresh cluster is written
// encrypted, and a plaintext one in etcd would be refused rather than read.
// A real cluster would use a KMS v2 provider so that the key is not in a file
// on the control-plane node.
func renderEncryptionConfig() ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating the Secrets encryption key: %w", err)
	}
	conf := map[string]any{
		"apiVersion": "apiserver.config.k8s.io/v1",
		"kind":       "EncryptionConfiguration",
		"resources": []any{map[string]any{
			"resources": []string{"secrets"},
			"providers": []any{map[string]any{
				SecretsEncryptionProvider: map[string]any{
					"keys": []any{map[string]string{"name": "key1", "secret": base64.StdEncoding.EncodeToString(key)}},
				},
			}},
		}},
	}
	out, err := yaml.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("rendering the encryption config: %w", err)
	}
	return out, nil
}

// AuditPolicy returns the API server's audit policy. Rules match in order;
// every rule is at Metadata level, which records who did what to which
// object and never a request or response body, so no Secret value or token
// reaches the log.
//
//  1. exec, attach, port-forward and proxy: the ways into a running pod;
//  2. reads of Secrets (get, list, watch), by anyone;
//  3. nothing else from the node's own components (their status writes and
//     leases are noise);
//  4. every write in namespaces that may hold protected workloads. The local
//     cluster's tests create those namespaces with random names, so here that
//     is every namespace; a real cluster lists its model namespaces in
//     `namespaces:` (see hack/local-cluster/README.md);
//  5. nothing else.
func AuditPolicy(protectedNamespaces []string) map[string]any {
	writes := map[string]any{
		"level": "Metadata",
		"verbs": []string{"create", "update", "patch", "delete", "deletecollection"},
	}
	if len(protectedNamespaces) > 0 {
		writes["namespaces"] = protectedNamespaces
	}
	return map[string]any{
		"apiVersion": "audit.k8s.io/v1",
		"kind":       "Policy",
		// The RequestReceived stage would log each request twice.
		"omitStages": []string{"RequestReceived"},
		"rules": []any{
			map[string]any{
				"level": "Metadata",
				"resources": []any{
					map[string]any{"group": "", "resources": []string{"pods/exec", "pods/attach", "pods/portforward", "pods/proxy", "services/proxy", "nodes/proxy"}},
				},
			},
			map[string]any{
				"level":     "Metadata",
				"verbs":     []string{"get", "list", "watch"},
				"resources": []any{map[string]any{"group": "", "resources": []string{"secrets"}}},
			},
			map[string]any{
				"level": "None",
				"users": []string{"system:kube-controller-manager", "system:kube-scheduler", "system:kube-proxy", "system:apiserver", KubeRouterUser, ProvisionerUser},
			},
			// users and userGroups in one rule must both match: two rules.
			map[string]any{
				"level": "None",
				// Kubernetes' own controllers run as ServiceAccounts of kube-system.
				"userGroups": []string{"system:nodes", "system:serviceaccounts:kube-system"},
			},
			map[string]any{
				"level":     "None",
				"resources": []any{map[string]any{"group": "", "resources": []string{"events"}}, map[string]any{"group": "coordination.k8s.io", "resources": []string{"leases"}}},
			},
			writes,
			map[string]any{"level": "None"},
		},
	}
}

func renderAuditPolicy() ([]byte, error) {
	out, err := yaml.Marshal(AuditPolicy(nil))
	if err != nil {
		return nil, fmt.Errorf("rendering the audit policy: %w", err)
	}
	return out, nil
}
