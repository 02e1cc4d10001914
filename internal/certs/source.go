package certs

import (
	"crypto/tls"
	"net/http"

	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Source is where the operator's serving certificate comes from: the
// built-in Rotator, which issues it, or External, which follows a Secret
// that cert-manager issues. The manager picks one when it starts and uses
// both alike.
type Source interface {
	// Start keeps the certificate current until ctx ends. It runs on every
	// replica: NeedLeaderElection is false.
	manager.Runnable
	manager.LeaderElectionRunnable
	// GetCertificate serves the current certificate, for tls.Config.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// TLSConfig is a server configuration that always serves the current
	// certificate.
	TLSConfig() *tls.Config
	// CABundle is the PEM bundle that clients trust; nil before the first
	// certificate is loaded.
	CABundle() []byte
	// Ready is closed once a certificate is loaded.
	Ready() <-chan struct{}
	// ReadyzCheck is a healthz.Checker that fails until a certificate is
	// loaded.
	ReadyzCheck(*http.Request) error
}

var (
	_ Source = (*Rotator)(nil)
	_ Source = (*External)(nil)
)
