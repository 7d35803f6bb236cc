package clustertls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// MinVersion is the lowest TLS version any endpoint accepts.
const MinVersion = tls.VersionTLS12

// Guard holds a node's live TLS material and trust view and hands out the
// tls.Configs of its endpoints. The configs read both at every handshake,
// so a re-issued certificate, a CA bundle with a new CA (rotation) or a
// config change takes effect without restarting the node; SetView also
// closes the accepted connections of peers it no longer trusts.
type Guard struct {
	material atomic.Pointer[Material]
	view     atomic.Pointer[View]
	log      *slog.Logger
	now      func() time.Time

	mu    sync.Mutex
	conns map[net.Conn]peer // accepted, authenticated peer connections
}

type peer struct {
	id  string
	ips []net.IP
}

// NewGuard returns a guard over m, trusting only m's own controller until
// SetView is called.
func NewGuard(m *Material, log *slog.Logger) *Guard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Guard{log: log, now: time.Now, conns: map[net.Conn]peer{}}
	g.material.Store(m)
	g.view.Store(&View{Self: m.ControllerID})
	return g
}

// Material returns the current material.
func (g *Guard) Material() *Material { return g.material.Load() }

// SetMaterial replaces the material (certificate, key and CA bundle) for
// the handshakes that follow.
func (g *Guard) SetMaterial(m *Material) { g.material.Store(m) }

// SetView replaces the trust view and closes the accepted connections of
// peers the new view does not authorise; it returns the controller ids
// whose connections it closed.
func (g *Guard) SetView(v View) []string {
	g.view.Store(&v)
	g.mu.Lock()
	defer g.mu.Unlock()
	var closed []string
	for c, p := range g.conns {
		if !alive(c) {
			delete(g.conns, c)
			continue
		}
		if err := v.Authorise(p.id, p.ips); err != nil {
			c.Close()
			delete(g.conns, c)
			closed = append(closed, p.id)
			g.log.Warn("closed the connection of a peer no longer trusted", "peer", p.id, "remote", c.RemoteAddr().String(), "err", err)
		}
	}
	return closed
}

// Connections returns how many accepted peer connections are tracked.
func (g *Guard) Connections() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

// alive reports whether c is still open: a closed connection refuses a
// deadline change (clearing the write deadline is a no-op otherwise; the
// proxies never set one).
func alive(c net.Conn) bool {
	return c.SetWriteDeadline(time.Time{}) == nil
}

func (g *Guard) track(c net.Conn, p peer) {
	if c == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for o := range g.conns {
		if !alive(o) {
			delete(g.conns, o)
		}
	}
	g.conns[c] = p
}

// PeerServerConfig is the Dqlite port's server config: TLS 1.2 or later,
// a client certificate of the cluster CA required and verified, and the
// peer authorised by the current view.
func (g *Guard) PeerServerConfig() *tls.Config {
	return g.serverConfig(tls.RequireAndVerifyClientCert)
}

// APIServerConfig is the HTTP API's server config: agents and clients
// verify the server against the CA and present no certificate (Juju's
// agents authenticate with a password, which this API does not model: it
// serves read-only lists); a certificate that is presented must verify
// against the CA, and a node certificate must be authorised.
func (g *Guard) APIServerConfig() *tls.Config {
	return g.serverConfig(tls.VerifyClientCertIfGiven)
}

func (g *Guard) serverConfig(auth tls.ClientAuthType) *tls.Config {
	m := g.material.Load()
	return &tls.Config{
		MinVersion: MinVersion,
		// go-dqlite's proxy tells a server config from a client one by
		// ClientCAs (app/proxy.go); the handshake uses GetConfigForClient's.
		ClientCAs:    m.Pool,
		ClientAuth:   auth,
		Certificates: []tls.Certificate{m.Cert},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			m := g.material.Load()
			return &tls.Config{
				MinVersion:   MinVersion,
				Certificates: []tls.Certificate{m.Cert},
				ClientCAs:    m.Pool,
				ClientAuth:   auth,
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 {
						return nil // only with VerifyClientCertIfGiven
					}
					p, err := g.authorise(cs.PeerCertificates[0])
					if err != nil {
						g.log.Warn("refused a peer", "remote", remote(hello.Conn), "err", err)
						return err
					}
					g.track(hello.Conn, p)
					return nil
				},
			}, nil
		},
	}
}

// PeerDialConfig is the config for dialling a Dqlite node: our node
// certificate as client certificate, the server name pinned to
// ServerName, the server's certificate verified against the current CA
// bundle and the server authorised by the current view. (The standard
// verification is replaced by VerifyConnection only so that it reads the
// live bundle; it checks the same: chain, name, key usage, validity.)
func (g *Guard) PeerDialConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         MinVersion,
		ServerName:         ServerName,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := g.material.Load().Cert
			return &c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := verifyChain(cs, g.material.Load().Pool, g.now()); err != nil {
				return err
			}
			_, err := g.authorise(cs.PeerCertificates[0])
			return err
		},
	}
}

func (g *Guard) authorise(cert *x509.Certificate) (peer, error) {
	id, err := ControllerID(cert)
	if err != nil {
		return peer{}, err
	}
	if err := g.view.Load().Authorise(id, cert.IPAddresses); err != nil {
		return peer{}, err
	}
	return peer{id: id, ips: cert.IPAddresses}, nil
}

func verifyChain(cs tls.ConnectionState, pool *x509.CertPool, now time.Time) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, DNSName: ServerName, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("cannot verify the server's certificate: %w", err)
	}
	return nil
}

// ClientConfig is the config of an agent or a client of the HTTP API: the
// server is verified against the CA bundle pool with the server name
// pinned; no client certificate.
func ClientConfig(pool *x509.CertPool) *tls.Config {
	return &tls.Config{MinVersion: MinVersion, RootCAs: pool, ServerName: ServerName}
}

// PoolFromPEM returns a pool of the CA certificates in a PEM bundle.
func PoolFromPEM(data []byte) (*x509.CertPool, error) {
	cas, err := ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return pool, nil
}

func remote(c net.Conn) string {
	if c == nil {
		return ""
	}
	return c.RemoteAddr().String()
}
