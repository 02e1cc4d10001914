package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certSpec describes one certificate signed by the cluster CA.
type certSpec struct {
	// Name is the file stem: <Name>.crt and <Name>.key.
	Name string
	// CommonName and Organizations are what the API server's x509
	// authenticator reads as user and groups.
	CommonName    string
	Organizations []string
	Server        bool
	Client        bool
	DNSNames      []string
	IPs           []net.IP
}

// certSpecs lists the cluster's certificates. Every component has its own
// identity so that the API server's RBAC and Node authorizers see who calls;
// only the admin and the API server's kubelet client are system:masters.
func (c Config) certSpecs() []certSpec {
	bridge := net.ParseIP(c.BridgeIP)
	loopback := net.ParseIP("127.0.0.1")
	return []certSpec{
		{
			Name: "kube-apiserver", CommonName: "kube-apiserver", Server: true,
			DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", c.NodeName},
			IPs:      []net.IP{loopback, bridge, net.ParseIP(c.APIServiceIP)},
		},
		{Name: "kube-apiserver-kubelet-client", CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"}, Client: true},
		{Name: "admin", CommonName: "modelguard-admin", Organizations: []string{"system:masters"}, Client: true},
		{Name: "kubelet", CommonName: "system:node:" + c.NodeName, Organizations: []string{"system:nodes"}, Client: true},
		{Name: "kubelet-serving", CommonName: "system:node:" + c.NodeName, Server: true,
			DNSNames: []string{c.NodeName, "localhost"}, IPs: []net.IP{loopback, bridge}},
		{Name: "kube-scheduler", CommonName: "system:kube-scheduler", Client: true},
		{Name: "kube-controller-manager", CommonName: "system:kube-controller-manager", Client: true},
		{Name: "kube-proxy", CommonName: "system:kube-proxy", Client: true},
		{Name: "kube-router", CommonName: KubeRouterUser, Client: true},
		{Name: "local-volume-provisioner", CommonName: ProvisionerUser, Client: true},
	}
}

// KubeRouterUser is kube-router's identity; a ClusterRole created at Up
// grants it only the reads its NetworkPolicy controller needs.
const KubeRouterUser = "modelguard:kube-router"

// generatePKI writes a fresh CA, the certificates of certSpecs and the
// service-account signing key pair into dir. ECDSA P-256 keeps this to
// milliseconds, so every Up gets new keys.
func (c Config) generatePKI(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating the CA key: %w", err)
	}
	caTemplate := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "modelguard-local-cluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, caKey.Public(), caKey)
	if err != nil {
		return fmt.Errorf("self-signing the CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("parsing the CA: %w", err)
	}
	if err := writeCertAndKey(dir, "ca", caDER, caKey); err != nil {
		return err
	}
	for _, spec := range c.certSpecs() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("generating the %s key: %w", spec.Name, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: randomSerial(),
			Subject:      pkix.Name{CommonName: spec.CommonName, Organization: spec.Organizations},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(365 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			DNSNames:     spec.DNSNames,
			IPAddresses:  spec.IPs,
		}
		if spec.Server {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
		if spec.Client {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			return fmt.Errorf("signing the %s certificate: %w", spec.Name, err)
		}
		if err := writeCertAndKey(dir, spec.Name, der, key); err != nil {
			return err
		}
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating the service-account key: %w", err)
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), saKey); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return fmt.Errorf("encoding the service-account public key: %w", err)
	}
	return writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		// crypto/rand does not fail on Linux; a fixed serial would still
		// produce valid, if less tidy, certificates.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func writeCertAndKey(dir, name string, der []byte, key crypto.Signer) error {
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writeKey(filepath.Join(dir, name+".key"), key)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, blockType string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
