package clustertls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio"
)

// The on-disk layout of a node's TLS material, in one directory (mode
// 0700) next to controller.conf: /var/lib/juju/agents/controller-<id>/tls/.
const (
	// DirName is the directory's name inside the controller's agent dir.
	DirName = "tls"
	// CertFile is the node certificate (PEM).
	CertFile = "node.crt"
	// KeyFile is the node key (PEM, mode 0600). It is generated on the
	// machine and never sent anywhere.
	KeyFile = "node.key"
	// CAFile is the CA bundle (PEM): the cluster CA, or the old and the
	// new one during a rotation. Peers are verified against every CA in it.
	CAFile = "ca.crt"
)

// Dir returns the TLS directory next to a controller config file.
func Dir(configPath string) string {
	return filepath.Join(filepath.Dir(configPath), DirName)
}

// Material is a node's loaded TLS material.
type Material struct {
	// Cert is the node certificate with its key (Leaf set).
	Cert tls.Certificate
	// ControllerID is the id the certificate names.
	ControllerID string
	// CAs are the trusted CAs, Pool the same as a pool.
	CAs  []*x509.Certificate
	Pool *x509.CertPool
	// CAPEM is the CA bundle as read (PEM), as the HTTP API publishes it
	// to agents.
	CAPEM []byte
	// Stamp identifies the files' content (reloaded when it changes).
	Stamp string
}

// ReadKey reads the node key of dir; ok is false when there is none.
func ReadKey(dir string) (keyPEM []byte, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("cannot read the node key: %w", err)
	}
	if _, err := ParseKey(data); err != nil {
		return nil, false, fmt.Errorf("cannot parse the node key %s: %w", filepath.Join(dir, KeyFile), err)
	}
	return data, true, nil
}

// WriteKey writes the node key (mode 0600), creating dir (mode 0700).
func WriteKey(dir string, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create the TLS directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("cannot set the TLS directory's mode: %w", err)
	}
	return writeIfChanged(filepath.Join(dir, KeyFile), keyPEM, 0o600)
}

// WriteCerts writes the node certificate and the CA bundle, each
// atomically and only when its content changes; changed reports whether
// anything was written. The CA bundle is written first, so a reader never
// sees a certificate its bundle does not trust.
func WriteCerts(dir string, certPEM, caBundlePEM []byte) (changed bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("cannot create the TLS directory: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{CAFile, caBundlePEM}, {CertFile, certPEM}} {
		path := filepath.Join(dir, f.name)
		old, err := os.ReadFile(path)
		if err == nil && bytes.Equal(old, f.data) {
			continue
		}
		if err := writeIfChanged(path, f.data, 0o644); err != nil {
			return changed, err
		}
		changed = true
	}
	return changed, nil
}

func writeIfChanged(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == mode {
			return nil
		}
	}
	if err := renameio.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return nil
}

// Stamp returns a cheap identity of dir's three files (sizes and
// modification times), to decide whether to Load again.
func Stamp(dir string) string {
	var b bytes.Buffer
	for _, name := range []string{CAFile, CertFile, KeyFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			b.WriteString("-;")
			continue
		}
		fmt.Fprintf(&b, "%d/%d;", st.Size(), st.ModTime().UnixNano())
	}
	return b.String()
}

// Load reads and checks dir's material: the key is mode 0600 and matches
// the certificate, the certificate names a controller and verifies
// against the bundle, now is within its validity.
func Load(dir string, now time.Time) (*Material, error) {
	stamp := Stamp(dir)
	keyPath := filepath.Join(dir, KeyFile)
	st, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("cannot read the node key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("node key %s has mode %04o; want 0600", keyPath, st.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("cannot read the node key: %w", err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("cannot read the node certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("cannot read the CA bundle: %w", err)
	}
	return Parse(certPEM, keyPEM, caPEM, now, stamp)
}

// Parse builds Material from PEM data (see Load).
func Parse(certPEM, keyPEM, caPEM []byte, now time.Time, stamp string) (*Material, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("cannot load the node certificate and key: %w", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("cannot parse the node certificate: %w", err)
		}
	}
	id, err := ControllerID(cert.Leaf)
	if err != nil {
		return nil, err
	}
	cas, err := ParseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, DNSName: ServerName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("node certificate does not verify against the CA bundle: %w", err)
	}
	return &Material{Cert: cert, ControllerID: id, CAs: cas, Pool: pool, CAPEM: bytes.Clone(caPEM), Stamp: stamp}, nil
}

// Provision makes dir hold a node key and a current certificate for
// controller id at ips, issued by ca, and the CA bundle: the key is
// generated on first use (mode 0600; it never leaves the machine), the
// certificate is issued again when NeedsReissue says so (another
// controller's, a changed bind address, near expiry, or not signed by ca),
// and the bundle is written when it differs. It returns why it issued a
// certificate ("" when it did not) and whether anything changed.
func Provision(dir string, ca *CA, bundlePEM []byte, id string, ips []net.IP, now time.Time) (reason string, changed bool, err error) {
	keyPEM, ok, err := ReadKey(dir)
	if err != nil {
		return "", false, err
	}
	if !ok {
		key, err := NewKey()
		if err != nil {
			return "", false, err
		}
		if keyPEM, err = EncodeKey(key); err != nil {
			return "", false, err
		}
		if err := WriteKey(dir, keyPEM); err != nil {
			return "", false, err
		}
		changed = true
	} else if err := WriteKey(dir, keyPEM); err != nil { // fixes the modes
		return "", false, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return "", changed, err
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	reason = "no node certificate yet"
	if err == nil {
		certs, perr := ParseCerts(certPEM)
		switch {
		case perr != nil:
			reason = "the node certificate cannot be parsed"
		case !key.PublicKey.Equal(certs[0].PublicKey):
			reason = "the node certificate is not for this node's key"
		default:
			reason = NeedsReissue(certs[0], id, ips, ca.Cert, now)
		}
	}
	if reason != "" {
		if certPEM, err = ca.Issue(NodeRequest{ControllerID: id, IPs: ips, PublicKey: &key.PublicKey, Now: now}); err != nil {
			return "", changed, err
		}
	}
	wrote, err := WriteCerts(dir, certPEM, bundlePEM)
	return reason, changed || wrote, err
}
