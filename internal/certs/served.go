package certs

import (
	"crypto/tls"
	"errors"
	"slices"
	"sync/atomic"
)

// served is what either certificate source serves: the current serving
// certificate and CA bundle, swapped atomically as they are renewed, so that
// every TLS handshake and every reader sees one consistent version.
type served struct {
	cert   atomic.Pointer[tls.Certificate]
	bundle atomic.Pointer[[]byte]
}

// GetCertificate serves the current certificate, for tls.Config.
func (s *served) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c := s.cert.Load()
	if c == nil {
		return nil, errors.New("no serving certificate loaded yet")
	}
	return c, nil
}

// TLSConfig returns a server configuration that always serves the current
// certificate. TLS 1.2 is the floor because the API server calls webhooks.
func (s *served) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12}
}

// CABundle returns the CA bundle (PEM) last loaded, e.g. for a webhook
// configuration's caBundle or the unseal containers; nil before the first.
func (s *served) CABundle() []byte {
	b := s.bundle.Load()
	if b == nil {
		return nil
	}
	return slices.Clone(*b)
}
