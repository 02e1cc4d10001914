// Package webhook tests the admission guard against a real kube-apiserver:
// the handler is served over TLS on loopback, a ValidatingWebhookConfiguration
// registers webhook.Rules() for namespaces labelled protected, and users,
// controllers and nodes are impersonated. There is no kube-controller-manager
// and no kubelet: tests create the ReplicaSet and the pod as the Deployment
// and ReplicaSet controllers would, and sessions that the guard allows then
// fail reaching a kubelet, which shows that admission let them through.
package webhook

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/controllers"
	"github.com/modelguard/modelguard/internal/webhook"
	"github.com/modelguard/modelguard/test/testenv"
)

const (
	operatorNamespace = "modelguard-system"
	operatorUser      = "system:serviceaccount:" + operatorNamespace + ":modelguard"
)

var (
	env *testenv.Env
	// admin is the test's own uncached client (system:masters).
	admin client.Client
	// guardURL is the handler's URL, and guardClient a client that trusts
	// its certificate, for the benchmark.
	guardURL    string
	guardClient *http.Client
	// serverCert is the loopback serving certificate, for the baseline
	// server of the benchmark.
	serverCert tls.Certificate
)

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "webhook:", err)
		os.Exit(1)
	}
	admin = env.Client
	ctx, cancel := context.WithCancel(context.Background())
	stop, err := setUp(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "webhook: setting up:", err)
		cancel()
		_ = env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	cancel()
	stop()
	_ = env.Stop()
	os.Exit(code)
}

// setUp starts a manager-like cache and recorder, serves the guard over
// TLS, registers it, and creates the roles the tests' users are bound to.
func setUp(ctx context.Context) (stop func(), err error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(logOutput())))
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}); err != nil {
		return nil, err
	}
	if err := createRoles(ctx); err != nil {
		return nil, fmt.Errorf("creating roles: %w", err)
	}

	// The manager the guard will be wired into: the production cache
	// options, its client as Reader, its API reader, its recorder.
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 env.Scheme,
		Cache:                  controllers.CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, err
	}
	handler, err := webhook.NewHandler(webhook.Options{
		Reader:                 mgr.GetClient(),
		APIReader:              mgr.GetAPIReader(),
		Recorder:               mgr.GetEventRecorder("modelguard"),
		OperatorServiceAccount: operatorUser,
		Log:                    ctrl.Log.WithName("admission-guard"),
	})
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "webhook: manager stopped:", err)
		}
	}()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("the manager's cache did not sync")
	}

	caPEM, cert, err := loopbackCertificate()
	if err != nil {
		return nil, err
	}
	serverCert = cert
	mux := http.NewServeMux()
	mux.Handle(webhook.Path, handler)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	guardURL = srv.URL + webhook.Path
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	guardClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 4}}

	if err := admin.Create(ctx, configuration(guardURL, caPEM)); err != nil {
		srv.Close()
		return nil, fmt.Errorf("registering the guard: %w", err)
	}
	return func() { srv.Close(); <-done }, nil
}

// logOutput is where the manager and the guard log: nowhere unless
// WEBHOOK_TEST_VERBOSE is set, since the guard logs every denial.
func logOutput() io.Writer {
	if os.Getenv("WEBHOOK_TEST_VERBOSE") != "" {
		return os.Stderr
	}
	return io.Discard
}

// configuration is the ValidatingWebhookConfiguration the chart is to
// render: Rules(), namespaces labelled protected except the operator's,
// failing closed, no side effects on dry runs (the guard records Events,
// but not for dry runs).
func configuration(url string, caPEM []byte) *admissionregistrationv1.ValidatingWebhookConfiguration {
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "modelguard-admission-guard"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    mlv1alpha1.AdmissionWebhookName,
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM},
			Rules:                   webhook.Rules(),
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			MatchPolicy:             ptr.To(admissionregistrationv1.Equivalent),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNoneOnDryRun),
			TimeoutSeconds:          ptr.To[int32](5),
			AdmissionReviewVersions: []string{"v1"},
			NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{mlv1alpha1.LabelProtectedNamespace: "true"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{operatorNamespace},
				}},
			},
		}},
	}
}

// Roles. envtest runs no kube-controller-manager, so the built-in edit and
// admin ClusterRoles, which are aggregated by its clusterrole-aggregation
// controller, have no rules here. These copy the rules of edit (and, for
// admin, of the RBAC objects admin adds) that the guard's rules concern:
// the rights that RBAC cannot take away from a tenant. The API server's own
// bootstrap roles for the controllers (system:controller:*) are real.
const (
	editRole     = "test-edit"
	adminRole    = "test-admin"
	operatorRole = "cluster-admin"
	nodeRole     = "system:node"
)

func editRules() []rbacv1.PolicyRule {
	all := []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy",
			"services", "services/proxy", "serviceaccounts", "persistentvolumeclaims", "configmaps", "secrets"}, Verbs: all},
		{APIGroups: []string{""}, Resources: []string{"pods/ephemeralcontainers"}, Verbs: []string{"patch", "update"}},
		{APIGroups: []string{""}, Resources: []string{"pods/eviction", "serviceaccounts/token"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"impersonate"}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets", "daemonsets"}, Verbs: all},
		{APIGroups: []string{"batch"}, Resources: []string{"jobs", "cronjobs"}, Verbs: all},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: all},
		{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: all},
		{APIGroups: []string{mlv1alpha1.GroupVersion.Group}, Resources: []string{"protectedmodels", "trainingjobs"}, Verbs: []string{"get", "list", "watch"}},
	}
}

func createRoles(ctx context.Context) error {
	adminRules := append(editRules(),
		rbacv1.PolicyRule{APIGroups: []string{"rbac.authorization.k8s.io"}, Resources: []string{"roles", "rolebindings"}, Verbs: []string{"*"}})
	objs := []client.Object{
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: editRole}, Rules: editRules()},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: adminRole}, Rules: adminRules},
		// The operator's ServiceAccount may do anything here: the guard,
		// not RBAC, is under test.
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "test-operator"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: operatorRole},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: operatorNamespace, Name: "modelguard"}}},
		// Nodes: envtest authorizes with RBAC alone (no Node authorizer),
		// so the nodes group gets the bootstrap system:node role.
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "test-nodes"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: nodeRole},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"}}},
	}
	for _, o := range objs {
		if err := admin.Create(ctx, o); err != nil {
			return err
		}
	}
	return nil
}

// bindTenants binds the tests' users in ns: alice to edit, bob to admin,
// carol (the break-glass member) to edit.
func bindTenants(ctx context.Context, ns string) error {
	bind := func(name, role, user string) *rbacv1.RoleBinding {
		return &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}
	}
	for _, rb := range []*rbacv1.RoleBinding{bind("alice-edit", editRole, "alice"), bind("bob-admin", adminRole, "bob"), bind("carol-edit", editRole, "carol")} {
		if err := admin.Create(ctx, rb); err != nil {
			return err
		}
	}
	return nil
}

// identity is someone the tests act as.
type identity struct {
	name   string
	user   string
	groups []string
}

var (
	editUser   = identity{"edit tenant", "alice", []string{"dev"}}
	adminUser  = identity{"admin tenant", "bob", []string{"dev"}}
	breakGlass = identity{"break-glass member", "carol", []string{"sre-oncall"}}
	operator   = identity{"operator", operatorUser, nil}
	rsCtrl     = identity{"ReplicaSet controller", "system:serviceaccount:kube-system:replicaset-controller", nil}
	depCtrl    = identity{"Deployment controller", "system:serviceaccount:kube-system:deployment-controller", nil}
	gc         = identity{"garbage collector", "system:serviceaccount:kube-system:generic-garbage-collector", nil}
	hpa        = identity{"HorizontalPodAutoscaler controller", "system:serviceaccount:kube-system:horizontal-pod-autoscaler", nil}
	node       = identity{"node", "system:node:gpu-1", []string{"system:nodes"}}
)

// clients returns a controller-runtime client and a clientset that act as
// id, by impersonation.
func (id identity) clients() (client.Client, kubernetes.Interface, error) {
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: id.user, Groups: id.groups}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	return c, cs, err
}

// loopbackCertificate makes a CA and a serving certificate for 127.0.0.1.
func loopbackCertificate() (caPEM []byte, cert tls.Certificate, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, cert, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "admission guard test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, cert, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, cert, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, cert, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, cert, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
