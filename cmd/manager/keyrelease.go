package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	mlv1alpha1 "github.com/modelguard/modelguard/api/v1alpha1"
	"github.com/modelguard/modelguard/internal/builder"
	"github.com/modelguard/modelguard/internal/certs"
	"github.com/modelguard/modelguard/internal/keyrelease"
	"github.com/modelguard/modelguard/internal/keys"
)

// keyReleaseOptions are the flags of the key-release endpoint and of its
// serving certificate.
type keyReleaseOptions struct {
	// bindAddress is where the endpoint listens; "0" disables it.
	bindAddress string
	// service is the Service in front of every replica's endpoint, in the
	// operator's namespace; the serving certificate names it.
	service string
	// servingCertSecret holds the serving certificate: the one the manager
	// issues, with its CA, or the one cert-manager issues.
	servingCertSecret string
	// caConfigMap publishes the CA bundle.
	caConfigMap string
	// certSource says who issues the serving certificate.
	certSource certSource
}

// certSource names who issues the serving certificate. The zero value is
// certSourceSelfSigned, the default.
type certSource string

const (
	// certSourceSelfSigned: the manager issues a self-signed CA and the
	// serving certificate into the Secret, and rotates them (certs.Rotator).
	certSourceSelfSigned certSource = "self-signed"
	// certSourceCertManager: cert-manager issues them into the Secret, and
	// the manager only reads it (certs.External).
	certSourceCertManager certSource = "cert-manager"
)

var certSources = []certSource{certSourceSelfSigned, certSourceCertManager}

// String is the flag's value.
func (s *certSource) String() string {
	if s == nil || *s == "" {
		return string(certSourceSelfSigned)
	}
	return string(*s)
}

// Set accepts one of certSources.
func (s *certSource) Set(v string) error {
	if !slices.Contains(certSources, certSource(v)) {
		return fmt.Errorf("%q is not a certificate source: use %s or %s", v, certSourceSelfSigned, certSourceCertManager)
	}
	*s = certSource(v)
	return nil
}

func (k *keyReleaseOptions) bindFlags(fs *flag.FlagSet) {
	fs.StringVar(&k.bindAddress, "key-release-bind-address", fmt.Sprintf(":%d", mlv1alpha1.KeyReleasePort),
		"Address the HTTPS key-release endpoint binds to, on every replica; the admission guard is served there too. The models' NetworkPolicies admit egress to the manager pods on port "+
			fmt.Sprint(mlv1alpha1.KeyReleasePort)+" only. 0 disables it, and with it every model's pods (for tests, with --admission-guard=false).")
	fs.StringVar(&k.service, "key-release-service", mlv1alpha1.KeyReleaseServiceName,
		"Name of the Service, in the operator's namespace, in front of the key-release endpoints; the serving certificate is issued for it.")
	fs.StringVar(&k.servingCertSecret, "serving-cert-secret", "modelguard-serving-cert",
		"Secret in the operator's namespace holding the serving certificate. With --cert-source=self-signed the manager creates it and "+
			"keeps its self-signed CA and serving certificate rotated; with --cert-source=cert-manager it is the Certificate's "+
			"spec.secretName (keys tls.crt, tls.key, ca.crt), which the manager only reads.")
	fs.StringVar(&k.caConfigMap, "ca-configmap", "modelguard-ca",
		"ConfigMap in the operator's namespace to which the manager publishes the CA bundle (key ca.crt).")
	fs.Var(&k.certSource, "cert-source",
		"Who issues the key-release serving certificate: self-signed (the manager, the default) or cert-manager "+
			"(a Certificate of a cert-manager CA issuer writes --serving-cert-secret; the manager follows its renewals).")
}

func (k *keyReleaseOptions) enabled() bool { return k.bindAddress != "0" }

// validate checks the flags; operatorNamespace is where the Service, the
// Secret and the ConfigMap live.
func (k *keyReleaseOptions) validate(operatorNamespace string) error {
	if problems := validation.IsDNS1035Label(k.service); len(problems) > 0 {
		return fmt.Errorf("--key-release-service %q is not a Service name: %s", k.service, strings.Join(problems, "; "))
	}
	if problems := validation.IsDNS1123Subdomain(k.servingCertSecret); len(problems) > 0 {
		return fmt.Errorf("--serving-cert-secret %q is not a Secret name: %s", k.servingCertSecret, strings.Join(problems, "; "))
	}
	if problems := validation.IsDNS1123Subdomain(k.caConfigMap); len(problems) > 0 {
		return fmt.Errorf("--ca-configmap %q is not a ConfigMap name: %s", k.caConfigMap, strings.Join(problems, "; "))
	}
	if k.certSource != "" && !slices.Contains(certSources, k.certSource) {
		return fmt.Errorf("--cert-source %q: use %s or %s", string(k.certSource), certSourceSelfSigned, certSourceCertManager)
	}
	if !k.enabled() {
		return nil
	}
	if _, _, err := net.SplitHostPort(k.bindAddress); err != nil {
		return fmt.Errorf("--key-release-bind-address %q: %w", k.bindAddress, err)
	}
	if operatorNamespace == "" {
		return fmt.Errorf("--key-release-bind-address %q: serving key release needs the operator's namespace: set --operator-namespace or $%s", k.bindAddress, podNamespaceEnv)
	}
	return nil
}

// dnsNames are the names the serving certificate is issued for: the
// Service's, as the unseal containers call it, and its fully qualified form.
func (k *keyReleaseOptions) dnsNames(namespace string) []string {
	return []string{
		fmt.Sprintf("%s.%s.svc", k.service, namespace),
		fmt.Sprintf("%s.%s.svc.cluster.local", k.service, namespace),
	}
}

// endpoint returns what the unseal containers are given: the Service's URL,
// the CA bundle they trust and the namespace their NetworkPolicy admits
// egress to. Without a certificate source, or before its first certificate,
// the CA bundle is empty and the controller starts no model pod.
func (k *keyReleaseOptions) endpoint(namespace string, source certs.Source) func() builder.KeyRelease {
	url := "https://" + k.dnsNames(namespace)[0]
	return func() builder.KeyRelease {
		kr := builder.KeyRelease{URL: url, Namespace: namespace}
		if source != nil {
			kr.CABundle = string(source.CABundle())
		}
		return kr
	}
}

// newCertSource returns the certificate source of the key-release listener,
// as --cert-source says: the rotator that issues it, or the follower of the
// Secret cert-manager writes. Either runs on every replica. The certificate
// names the key-release Service, then extraDNSNames (the admission guard's
// Service, which shares the listener). c must not be cached: the operator
// never caches Secrets.
func (k *keyReleaseOptions) newCertSource(c client.Client, namespace string, extraDNSNames ...string) (certs.Source, error) {
	if k.certSource != certSourceCertManager {
		return k.newRotator(c, namespace, extraDNSNames...)
	}
	e, err := certs.NewExternal(c, certs.ExternalOptions{
		Namespace:     namespace,
		SecretName:    k.servingCertSecret,
		ConfigMapName: k.caConfigMap,
		DNSNames:      slices.Concat(k.dnsNames(namespace), extraDNSNames),
		FieldOwner:    mlv1alpha1.FieldManager,
		Log:           ctrl.Log.WithName("certs"),
	})
	if err != nil {
		return nil, fmt.Errorf("serving certificates from cert-manager: %w", err)
	}
	return e, nil
}

// newRotator returns the serving-certificate rotator of the key-release
// listener, for its names and then extraDNSNames; it runs on every replica.
// c must not be cached: the operator never caches Secrets.
func (k *keyReleaseOptions) newRotator(c client.Client, namespace string, extraDNSNames ...string) (*certs.Rotator, error) {
	r, err := certs.New(c, certs.Options{
		Namespace:     namespace,
		SecretName:    k.servingCertSecret,
		ConfigMapName: k.caConfigMap,
		DNSNames:      slices.Concat(k.dnsNames(namespace), extraDNSNames),
		FieldOwner:    mlv1alpha1.FieldManager,
		Log:           ctrl.Log.WithName("certs"),
	})
	if err != nil {
		return nil, fmt.Errorf("serving certificates: %w", err)
	}
	return r, nil
}

// keyReleaseDeps are what the endpoint needs from the manager.
type keyReleaseDeps struct {
	// reader reads models, pods, ModelKeys and Secrets from the API server,
	// uncached.
	reader client.Reader
	// tokenReviews creates TokenReviews.
	tokenReviews client.Writer
	// facts are the builders' inputs, as the ProtectedModel controller uses
	// them.
	facts func() builder.ProtectedModelFacts
	// recorder records an Event on the model for each outcome.
	recorder events.EventRecorder
	// operatorNamespace holds the Secrets that ModelKeys name.
	operatorNamespace string
}

// newKeyReleaseHandler wires the verifier, the key provider and the Events
// into the key-release server.
func newKeyReleaseHandler(d keyReleaseDeps) (http.Handler, error) {
	verifier := &keyrelease.ProtectedModelVerifier{
		Reader:       d.reader,
		TokenReviews: d.tokenReviews,
		Facts:        d.facts,
		ModelKeyFor: func(pm *mlv1alpha1.ProtectedModel) (string, error) {
			if pm.Spec.Weights.Key.ModelKey == "" {
				return "", fmt.Errorf("%s/%s names no ModelKey in spec.weights.key.modelKey", pm.Namespace, pm.Name)
			}
			return pm.Spec.Weights.Key.ModelKey, nil
		},
	}
	srv, err := keyrelease.NewServer(keyrelease.ServerOptions{
		Verifier:  verifier,
		Keys:      modelKeyProviders(d.reader, d.operatorNamespace, ctrl.Log.WithName("key-release")),
		Log:       ctrl.Log.WithName("key-release"),
		OnOutcome: outcomeRecorder(d.reader, d.recorder, ctrl.Log.WithName("key-release")),
	})
	if err != nil {
		return nil, fmt.Errorf("key-release server: %w", err)
	}
	return srv, nil
}

// modelKeyProviders loads a ModelKey's key-encryption key for each request,
// from the API server: a ModelKey, or the Secret it names, that changed is
// used at once, and no KEK stays in memory between requests.
func modelKeyProviders(reader client.Reader, operatorNamespace string, log logr.Logger) keyrelease.ProviderKeys {
	getSecret := keys.SecretsFrom(reader)
	return func(ctx context.Context, name string) (keys.Provider, error) {
		mk := &mlv1alpha1.ModelKey{}
		if err := reader.Get(ctx, types.NamespacedName{Name: name}, mk); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, &keyrelease.Denial{Reason: mlv1alpha1.ReasonModelKeyNotFound, Message: fmt.Sprintf("ModelKey %s does not exist", name)}
			}
			return nil, fmt.Errorf("reading ModelKey %s: %w", name, err)
		}
		// The verifier checked this a moment ago; checking again here
		// keeps a key whose self-test failed since then from being used.
		ready := meta.FindStatusCondition(mk.Status.Conditions, mlv1alpha1.ConditionReady)
		if ready == nil || ready.Status != metav1.ConditionTrue || ready.ObservedGeneration != mk.Generation {
			return nil, &keyrelease.Denial{Reason: mlv1alpha1.ReasonModelKeyNotReady,
				Message: fmt.Sprintf("ModelKey %s is not Ready for its current spec", name)}
		}
		p, err := keys.ModelKeyProvider(ctx, mk, operatorNamespace, getSecret)
		var pe *keys.ProviderError
		switch {
		case err == nil:
			return p, nil
		case errors.As(err, &pe) && pe.Reason != mlv1alpha1.ReasonKeyProviderUnavailable:
			// A missing Secret, or a key missing from it, is the platform
			// team's to fix, and the ModelKey's status will say so; the
			// pod is told why instead of being left to retry.
			return nil, &keyrelease.Denial{Reason: pe.Reason, Message: fmt.Sprintf("ModelKey %s: %s", name, pe.Message)}
		default:
			// The server tells the pod only "unavailable; retry", so the
			// cause is logged here. Provider errors name Secrets and key
			// IDs, never key bytes.
			log.Error(err, "Key provider unavailable", "modelKey", name)
			return nil, fmt.Errorf("ModelKey %s: %w", name, err)
		}
	}
}

// maxEventNote is the longest note events.k8s.io/v1 accepts.
const maxEventNote = 1024

// outcomeRecorder records every release and every denial as an Event on the
// model, naming the pod and the reason, so that `kubectl describe` shows the
// latest. Outcome messages hold no token or key bytes (the server redacts
// them), and the Event is made from the outcome alone.
func outcomeRecorder(reader client.Reader, recorder events.EventRecorder, log logr.Logger) func(context.Context, keyrelease.Outcome) {
	return func(ctx context.Context, o keyrelease.Outcome) {
		if o.Result == keyrelease.ResultError {
			// Neither a release nor a denial: the pod retries, and the
			// server has logged why.
			return
		}
		model, err := modelObject(ctx, reader, o.Model)
		if err != nil {
			// The request named a model that does not exist, or one the
			// operator may not read: there is nothing to attach the Event
			// to. The server has logged the outcome.
			log.V(1).Info("No Event for a key request", "model", o.Model.String(), "reason", o.Reason, "error", err.Error())
			return
		}
		pod := "unknown (the request names no verified pod)"
		var related runtime.Object
		if o.Pod.Name != "" {
			pod = o.Pod.String()
			related = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: o.Pod.Namespace, Name: o.Pod.Name}}
		}
		action := "KeyRelease"
		if o.Operation == keyrelease.OperationWrap {
			action = "KeyWrap"
		}
		var eventType, note string
		switch o.Result {
		case keyrelease.ResultReleased:
			eventType, note = corev1.EventTypeNormal, fmt.Sprintf("Data key released to pod %s", pod)
		case keyrelease.ResultWrapped:
			eventType, note = corev1.EventTypeNormal, fmt.Sprintf("Data key wrapped for pod %s", pod)
		default:
			eventType, note = corev1.EventTypeWarning, fmt.Sprintf("Key %s denied to pod %s (%s): %s", o.Operation, pod, o.Reason, o.Message)
		}
		if len(note) > maxEventNote {
			note = note[:maxEventNote-3] + "..."
		}
		recorder.Eventf(model, related, eventType, o.Reason, action, "%s", note)
	}
}

// modelObject reads the model a request named, for the Event's reference:
// `kubectl describe` finds Events by the model's UID.
func modelObject(ctx context.Context, reader client.Reader, ref keyrelease.ModelRef) (client.Object, error) {
	var obj client.Object
	switch ref.Kind {
	case keyrelease.KindProtectedModel:
		obj = &mlv1alpha1.ProtectedModel{}
	case keyrelease.KindTrainingJob:
		obj = &mlv1alpha1.TrainingJob{}
	default:
		return nil, fmt.Errorf("unknown model kind %q", ref.Kind)
	}
	if err := reader.Get(ctx, types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}, obj); err != nil {
		return nil, fmt.Errorf("reading %s: %w", ref, err)
	}
	return obj, nil
}

// keyReleaseServer serves the key-release handler, and with it the
// admission guard, over TLS 1.3 on every replica: a pod, or the API server,
// may reach any of them through a Service, and both must answer during a
// leader change.
type keyReleaseServer struct {
	addr    string
	handler http.Handler
	cert    func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	log     logr.Logger
	// listening, if set, is called with the bound address, for tests.
	listening func(net.Addr)
}

var (
	_ manager.Runnable               = (*keyReleaseServer)(nil)
	_ manager.LeaderElectionRunnable = (*keyReleaseServer)(nil)
)

// keyReleaseShutdownTimeout bounds the wait for requests in flight on stop;
// the pod's termination grace period is 10 seconds.
const keyReleaseShutdownTimeout = 5 * time.Second

// NeedLeaderElection is false: every replica serves.
func (s *keyReleaseServer) NeedLeaderElection() bool { return false }

// Start serves until ctx ends, then lets requests in flight finish.
func (s *keyReleaseServer) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("key-release endpoint: %w", err)
	}
	srv := &http.Server{
		Handler: s.handler,
		TLSConfig: &tls.Config{
			// The only clients are ModelGuard's own init containers and
			// the API server calling the admission guard, which all speak
			// TLS 1.3.
			MinVersion:     tls.VersionTLS13,
			GetCertificate: s.cert,
			// HTTP/2 is off because of the rapid-reset CVEs
			// (GHSA-qppj-fm5r-hxr3), as on the metrics endpoint.
			NextProtos: []string{"http/1.1"},
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// Handshake failures (probes, scanners) go to the structured log.
		ErrorLog: log.New(logWriter{s.log.V(1)}, "", 0),
	}
	s.log.Info("Serving key release", "address", ln.Addr().String())
	if s.listening != nil {
		s.listening(ln.Addr())
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), keyReleaseShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			s.log.Error(err, "Key-release endpoint did not shut down cleanly")
		}
	}()
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("key-release endpoint: %w", err)
	}
	<-stopped
	return nil
}

// logWriter turns the http.Server's error log lines into logr lines.
type logWriter struct{ log logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info("Key-release endpoint", "error", strings.TrimSpace(string(p)))
	return len(p), nil
}

// addKeyRelease adds the serving-certificate source and the key-release
// endpoint to mgr, with a readiness check that passes once a certificate
// is loaded.
func addKeyRelease(mgr manager.Manager, source certs.Source, addr string, handler http.Handler) error {
	if err := mgr.Add(source); err != nil {
		return fmt.Errorf("adding the serving-certificate source: %w", err)
	}
	if err := mgr.AddReadyzCheck("key-release-certificate", source.ReadyzCheck); err != nil {
		return fmt.Errorf("adding the key-release ready check: %w", err)
	}
	if err := mgr.Add(&keyReleaseServer{addr: addr, handler: handler, cert: source.GetCertificate, log: ctrl.Log.WithName("key-release")}); err != nil {
		return fmt.Errorf("adding the key-release endpoint: %w", err)
	}
	return nil
}
