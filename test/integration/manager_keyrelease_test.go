package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/certs"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/keys"
	"github.com/modelguard/modelguard/internal/seal"
	"github.com/modelguard/modelguard/test/builders"
)

// bogusToken is shaped like a JWT, so the server's request checks pass and
// the TokenReview rejects it. The test looks for it in the Event and the
// logs, where it must never appear.
const bogusToken = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlbmFudCJ9.eyJzdWIiOiJ0ZW5hbnQtZm9yZ2VkIn0.bm90LWEtcmVhbC1zaWduYXR1cmU"

// TestManagerServesKeyRelease runs the real manager binary (built as the
// Dockerfile builds it) as the Helm chart's ServiceAccount, with the chart's
// RBAC and arguments, released into and watching one namespace, and checks
// the key-release endpoint from the outside: the manager issues its serving
// certificate into a Secret and publishes the CA to a ConfigMap, the port
// speaks TLS 1.3 only with a certificate for the Service's name under that
// CA, a request with a forged token is refused as TokenRejected and leaves
// an Event on the model it named, and the model's pods are generated to call
// that Service and trust that CA.
func TestManagerServesKeyRelease(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	bin := filepath.Join(binariesFromDockerfile(t), "manager")
	install := installChartRBAC(t, ns)

	// The model exists before the manager starts, as after an upgrade. Its
	// ModelKey is Ready once the manager's self-test reads the KEK from the
	// operator's namespace, which the chart's namespace Role allows.
	kek := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kek"},
		Data:       map[string][]byte{"kek": []byte(keys.EncodeDEK(randomBytes(t, keys.KEKSize)))},
	}
	if err := env.Client.Create(ctx, kek); err != nil {
		t.Fatal(err)
	}
	mk := &mlv1alpha1.ModelKey{ObjectMeta: metav1.ObjectMeta{Name: ns + "-models"},
		Spec: mlv1alpha1.ModelKeySpec{
			Provider:          mlv1alpha1.ModelKeyProvider{Secret: &mlv1alpha1.ModelKeySecret{Name: kek.Name, Key: "kek"}},
			NamespaceSelector: &metav1.LabelSelector{},
		}}
	if err := env.Client.Create(ctx, mk); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), mk) })
	pm := builders.MakeProtectedModel("llm", ns).ModelKey(mk.Name).Obj()
	if err := env.Client.Create(ctx, pm); err != nil {
		t.Fatal(err)
	}

	keyReleaseAddr, probeAddr := freeLoopbackAddr(t), freeLoopbackAddr(t)
	args := withManagerFlags(install.managerArgs, map[string]string{
		"kubeconfig":                install.kubeconfig,
		"health-probe-bind-address": probeAddr,
		"metrics-bind-address":      "0",
		"key-release-bind-address":  keyReleaseAddr,
	})
	// POD_NAMESPACE is what the chart's downward API sets.
	logs := startManagerWithEnv(t, []string{"POD_NAMESPACE=" + ns}, bin, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("manager log:\n%s", logs.String())
		}
	})
	eventuallyNoError(t, "the manager is ready, serving certificate loaded", func() error {
		resp, err := http.Get("http://" + probeAddr + "/readyz?verbose")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s\n%s", resp.Status, body)
		}
		if !strings.Contains(string(body), "key-release-certificate ok") {
			return fmt.Errorf("readyz does not check the serving certificate:\n%s", body)
		}
		return nil
	})

	secret := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: install.servingCertSecret}, secret); err != nil {
		t.Fatalf("the manager issued no serving-certificate Secret %s: %v", install.servingCertSecret, err)
	}
	if secret.Type != corev1.SecretTypeTLS || len(secret.Data[certs.SecretCert]) == 0 || len(secret.Data[certs.SecretKey]) == 0 {
		t.Errorf("Secret %s: type %s, keys %v; want a kubernetes.io/tls Secret", secret.Name, secret.Type, slices.Sorted(maps.Keys(secret.Data)))
	}
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: install.caConfigMap}, cm); err != nil {
		t.Fatalf("the manager published no CA ConfigMap %s: %v", install.caConfigMap, err)
	}
	bundle := []byte(cm.Data[certs.ConfigMapBundle])
	if !bytes.Equal(bundle, secret.Data[certs.SecretCACert]) {
		t.Error("the ConfigMap's CA bundle is not the Secret's CA")
	}
	if bytes.Contains(bundle, []byte("PRIVATE KEY")) {
		t.Fatal("the CA ConfigMap holds a private key")
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		t.Fatalf("the CA ConfigMap holds no certificate: %q", bundle)
	}
	serviceDNS := install.keyReleaseService + "." + ns + ".svc"

	t.Run("TLS 1.3 with a certificate for the Service under the published CA", func(t *testing.T) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", keyReleaseAddr,
			&tls.Config{RootCAs: roots, ServerName: serviceDNS, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("handshake as %s trusting the ConfigMap: %v", serviceDNS, err)
		}
		defer conn.Close()
		state := conn.ConnectionState()
		if state.Version != tls.VersionTLS13 {
			t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(state.Version))
		}
		leaf := state.PeerCertificates[0]
		for _, name := range []string{serviceDNS, serviceDNS + ".cluster.local"} {
			if !slices.Contains(leaf.DNSNames, name) {
				t.Errorf("the serving certificate names %v, not %s", leaf.DNSNames, name)
			}
		}
		if _, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", keyReleaseAddr,
			&tls.Config{RootCAs: roots, ServerName: serviceDNS, MaxVersion: tls.VersionTLS12}); err == nil {
			t.Error("a TLS 1.2 client completed a handshake")
		}
	})

	t.Run("a forged token is refused and leaves an Event on the model", func(t *testing.T) {
		status, reply := postRelease(t, keyReleaseAddr, serviceDNS, roots, keyrelease.ModelRef{
			Kind: keyrelease.KindProtectedModel, Namespace: ns, Name: pm.Name})
		if status != http.StatusForbidden && status != http.StatusUnauthorized {
			t.Errorf("status %d, want 403 or 401; reply %+v", status, reply)
		}
		if reply.Reason != mlv1alpha1.ReasonTokenRejected {
			t.Errorf("reason %q, want %s; message %q", reply.Reason, mlv1alpha1.ReasonTokenRejected, reply.Message)
		}
		if !strings.Contains(reply.Message, ns+"/"+pm.Name) {
			t.Errorf("the reply %q does not name the model", reply.Message)
		}

		var event *eventsv1.Event
		eventuallyNoError(t, "the denial is an Event on the model", func() error {
			list := &eventsv1.EventList{}
			if err := env.Client.List(ctx, list, client.InNamespace(ns)); err != nil {
				return err
			}
			for i, e := range list.Items {
				if e.Regarding.Kind == "ProtectedModel" && e.Regarding.Name == pm.Name && e.Reason == mlv1alpha1.ReasonTokenRejected {
					event = &list.Items[i]
					return nil
				}
			}
			return fmt.Errorf("no %s Event regarding %s among %d Events", mlv1alpha1.ReasonTokenRejected, pm.Name, len(list.Items))
		})
		if event.Type != corev1.EventTypeWarning || event.Regarding.UID != pm.UID || event.Action != "KeyRelease" {
			t.Errorf("Event %s %s action %s regarding UID %s; want Warning, KeyRelease, regarding the model's UID %s",
				event.Type, event.Reason, event.Action, event.Regarding.UID, pm.UID)
		}
		if !strings.Contains(event.Note, "denied") || !strings.Contains(event.Note, mlv1alpha1.ReasonTokenRejected) {
			t.Errorf("Event note %q does not say the release was denied and why", event.Note)
		}
		for _, where := range map[string]string{"the Event": event.Note, "the reply": reply.Message, "the manager log": logs.String()} {
			if strings.Contains(where, bogusToken) || strings.Contains(where, strings.Split(bogusToken, ".")[2]) {
				t.Errorf("the token appears in %s", where)
			}
		}
	})

	t.Run("the model's pods call the Service and trust the published CA", func(t *testing.T) {
		var unseal *corev1.Container
		eventuallyNoError(t, "the model's Deployment carries the CA bundle", func() error {
			d := &appsv1.Deployment{}
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: pm.Name}, d); err != nil {
				return err
			}
			for i, c := range d.Spec.Template.Spec.InitContainers {
				if c.Name == mlv1alpha1.ContainerUnseal {
					unseal = &d.Spec.Template.Spec.InitContainers[i]
				}
			}
			if unseal == nil {
				return fmt.Errorf("no %s init container", mlv1alpha1.ContainerUnseal)
			}
			return nil
		})
		var ca string
		for _, e := range unseal.Env {
			if e.Name == mlv1alpha1.EnvKeyReleaseCA {
				ca = e.Value
			}
		}
		if ca != string(bundle) {
			t.Errorf("the unseal container trusts %q, not the published CA bundle", ca)
		}
		if !slices.Contains(unseal.Command, "https://"+serviceDNS) {
			t.Errorf("the unseal container does not call https://%s: %v", serviceDNS, unseal.Command)
		}

		// The model's NetworkPolicy lets its pods reach the manager pods in
		// the operator's namespace on the key-release port.
		policy := &networkingv1.NetworkPolicy{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: pm.Name}, policy); err != nil {
			t.Fatalf("the model's NetworkPolicy: %v", err)
		}
		if !egressToOperator(policy, ns) {
			t.Errorf("the model's NetworkPolicy has no egress to the manager pods of %s on port %d: %+v", ns, mlv1alpha1.KeyReleasePort, policy.Spec.Egress)
		}
	})
}

// egressToOperator reports whether a NetworkPolicy admits egress to the
// manager pods (OperatorPodLabels) in namespace ns on the key-release port.
func egressToOperator(p *networkingv1.NetworkPolicy, ns string) bool {
	for _, rule := range p.Spec.Egress {
		port := slices.ContainsFunc(rule.Ports, func(pp networkingv1.NetworkPolicyPort) bool {
			return pp.Port != nil && pp.Port.IntValue() == mlv1alpha1.KeyReleasePort
		})
		peer := slices.ContainsFunc(rule.To, func(peer networkingv1.NetworkPolicyPeer) bool {
			if peer.NamespaceSelector == nil || peer.PodSelector == nil {
				return false
			}
			if peer.NamespaceSelector.MatchLabels[corev1.LabelMetadataName] != ns {
				return false
			}
			for k, v := range mlv1alpha1.OperatorPodLabels() {
				if peer.PodSelector.MatchLabels[k] != v {
					return false
				}
			}
			return true
		})
		if port && peer {
			return true
		}
	}
	return false
}

// postRelease sends a well-formed release request with bogusToken to the
// key-release endpoint at addr, as the pod's client would send it to the
// Service, and returns the status and the error reply.
func postRelease(t *testing.T, addr, serverName string, roots *x509.CertPool, model keyrelease.ModelRef) (int, keyrelease.ErrorResponse) {
	t.Helper()
	eph, err := keyrelease.NewEphemeralKey()
	if err != nil {
		t.Fatal(err)
	}
	req := keyrelease.ReleaseRequest{
		Version:     keyrelease.ProtocolVersion,
		Token:       bogusToken,
		Model:       model,
		PodUID:      "0b6c1f3e-9a57-4c1e-8d4f-5b2a7c9e1d03",
		ModelDigest: builders.DefaultDigest,
		Bundle:      keyrelease.BundleRef{FormatVersion: seal.FormatVersion, BundleID: strings.Repeat("ab", 16)},
		Key:         seal.KeyInfo{Provider: keys.KindKEK, ID: "kek:sha256:0123456789abcdef", WrappedDEK: randomBytes(t, 60)},
		PublicKey:   eph.PublicKey(),
	}
	body, err := json.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS13},
		Proxy:           nil,
	}}
	resp, err := c.Post("https://"+addr+keyrelease.ReleasePath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", keyrelease.ReleasePath, err)
	}
	defer resp.Body.Close()
	var reply keyrelease.ErrorResponse
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &reply); err != nil {
		t.Fatalf("reply %d is not an ErrorResponse: %v\n%s", resp.StatusCode, err, data)
	}
	return resp.StatusCode, reply
}

// withManagerFlags returns args with each --name=value of set replacing the
// chart's, or added when the chart passes none.
func withManagerFlags(args []string, set map[string]string) []string {
	out := make([]string, 0, len(args)+len(set))
	done := map[string]bool{}
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if v, ok := set[name]; ok {
			a, done[name] = "--"+name+"="+v, true
		}
		out = append(out, a)
	}
	for _, name := range slices.Sorted(maps.Keys(set)) {
		if !done[name] {
			out = append(out, "--"+name+"="+set[name])
		}
	}
	return out
}
