// Package clustertls is the cluster's trust contract, shared by the charm
// and controllerd: the cluster CA, node certificates, their on-disk layout,
// the TLS configurations of the Dqlite port, the HTTP API and their
// clients, and the authorisation rule that keeps removed units out.
//
// Every node certificate is issued by the cluster CA (ECDSA P-256) and
// carries:
//
//   - Subject CommonName "controller-<id>": the controller (Juju unit
//     number) it belongs to; the authorisation rule reads it;
//   - DNS name ServerName: every dial pins it as the TLS server name
//     (go-dqlite's app.SimpleDialTLSConfig does the same with the first DNS
//     name of the certificate, and panics without one: go-dqlite v1.11.5
//     app/tls.go), so a node is verified by the CA alone, whatever address
//     it was dialled at (Juju pins "juju-apiserver" the same way for its
//     API: juju/juju api/apiclient.go);
//   - the node's bind address(es) as IP SANs, which identify a Raft member
//     that left the config but is still being removed (see View).
package clustertls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
)

// ServerName is the DNS name every node certificate carries and every dial
// pins as the server name.
const ServerName = "dqlite-controller.cluster"

// commonNamePrefix precedes the controller id in a node certificate's
// CommonName.
const commonNamePrefix = "controller-"

// organization marks certificates of this project.
const organization = "dqlite-controller"

// Validity periods.
const (
	// CAValidity is how long a cluster CA is valid. Long: replacing it is a
	// rotation (trust the new CA everywhere, re-issue, drop the old one).
	CAValidity = 10 * 365 * 24 * time.Hour
	// NodeValidity is how long a node certificate is valid; the charm
	// renews it once less than RenewBefore remains (update-status runs
	// every 5 minutes), without an operator.
	NodeValidity = 90 * 24 * time.Hour
	// RenewBefore is the remaining validity under which a node
	// certificate is re-issued.
	RenewBefore = 30 * 24 * time.Hour
	// clockSkew back-dates NotBefore so that a machine whose clock is a
	// little behind the issuer's accepts a fresh certificate.
	clockSkew = time.Hour
)

// CA is a cluster certificate authority: its certificate and key.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA creates a CA valid from now for CAValidity.
func NewCA(now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cannot generate the CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{organization},
			CommonName:   "dqlite-controller cluster CA " + serial.Text(16)[:8],
		},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("cannot create the CA certificate: %w", err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, err
	}
	return ParseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM)
}

// ParseCA parses a CA from its PEM certificate and key, checking that they
// belong together and that the certificate is a CA.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the CA certificate: %w", err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("cannot parse the CA certificate: want one certificate, got %d", len(certs))
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, errors.New("cannot use the CA certificate: it is not a CA")
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("cannot use the CA: its key does not match its certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: bytes.Clone(certPEM), KeyPEM: bytes.Clone(keyPEM)}, nil
}

// NodeRequest describes a node certificate.
type NodeRequest struct {
	ControllerID string
	// IPs are the node's bind address(es).
	IPs []net.IP
	// PublicKey is the node key's public half (the key never leaves the
	// node's machine).
	PublicKey crypto.PublicKey
	// Now is the issuing time (NotBefore is back-dated by an hour).
	Now time.Time
}

// Issue signs a node certificate and returns it as PEM.
func (ca *CA) Issue(r NodeRequest) ([]byte, error) {
	if err := controllerconf.ValidateAgentID(r.ControllerID); err != nil {
		return nil, fmt.Errorf("cannot issue a node certificate: invalid controller id: %w", err)
	}
	if r.PublicKey == nil {
		return nil, errors.New("cannot issue a node certificate: no public key")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := r.Now.Add(NodeValidity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{organization},
			CommonName:   commonNamePrefix + r.ControllerID,
		},
		DNSNames:    []string{ServerName},
		IPAddresses: r.IPs,
		NotBefore:   r.Now.Add(-clockSkew),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, r.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("cannot issue a node certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// NewKey generates a node key.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cannot generate a key: %w", err)
	}
	return key, nil
}

// EncodeKey encodes a key as PEM (PKCS #8).
func EncodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("cannot encode a key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey parses a PEM ECDSA key (PKCS #8 or SEC 1).
func ParseKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is a %T, want ECDSA", k)
	}
	return ek, nil
}

// ParseCerts parses every CERTIFICATE block of a PEM bundle (at least one).
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM data")
	}
	return out, nil
}

// Bundle concatenates PEM certificates into one CA bundle, each once, in
// the order given (during a rotation the bundle holds the old and the new
// CA).
func Bundle(certPEMs ...[]byte) []byte {
	var b bytes.Buffer
	var seen [][]byte
	for _, p := range certPEMs {
		p = bytes.TrimSpace(p)
		if len(p) == 0 || slices.ContainsFunc(seen, func(s []byte) bool { return bytes.Equal(s, p) }) {
			continue
		}
		seen = append(seen, p)
		b.Write(p)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ControllerID returns the controller id a node certificate names.
func ControllerID(cert *x509.Certificate) (string, error) {
	id, ok := strings.CutPrefix(cert.Subject.CommonName, commonNamePrefix)
	if !ok || !slices.Contains(cert.Subject.Organization, organization) {
		return "", fmt.Errorf("certificate %q is not a node certificate of this cluster", cert.Subject.CommonName)
	}
	if err := controllerconf.ValidateAgentID(id); err != nil {
		return "", fmt.Errorf("certificate %q names an invalid controller id: %w", cert.Subject.CommonName, err)
	}
	return id, nil
}

// NeedsReissue says why a node certificate must be issued again (or "" if
// it need not): it is for another controller, its bind addresses differ
// (juju bind), it expires within RenewBefore, or it is not signed by the
// newest CA of the bundle (a rotation).
func NeedsReissue(cert *x509.Certificate, controllerID string, ips []net.IP, ca *x509.Certificate, now time.Time) string {
	if id, err := ControllerID(cert); err != nil || id != controllerID {
		return "the certificate is not this controller's"
	}
	if !sameIPs(cert.IPAddresses, ips) {
		return "the bind address changed"
	}
	if now.Add(RenewBefore).After(cert.NotAfter) {
		return "the certificate expires at " + cert.NotAfter.UTC().Format(time.RFC3339)
	}
	if ca != nil && cert.CheckSignatureFrom(ca) != nil {
		return "the certificate is not signed by the current CA"
	}
	return ""
}

func sameIPs(a, b []net.IP) bool {
	norm := func(ips []net.IP) []string {
		out := make([]string, 0, len(ips))
		for _, ip := range ips {
			out = append(out, ip.String())
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return slices.Equal(norm(a), norm(b))
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("cannot generate a serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}
