package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
)

// tlsState is the daemon's TLS material and trust (package clustertls):
// the node's certificate, key and CA bundle from Options.TLSDir, re-read
// whenever the files change (the charm re-issues on juju bind, renews
// before expiry, rotates the CA), and the trust view rebuilt from the
// config and the members after every pass of the loop.
type tlsState struct {
	guard atomic.Pointer[clustertls.Guard] // nil until the material first loads
	stamp string
	err   string // why the material cannot be used, "" when it can
	view  string // last view set, to log changes once

	mu      sync.Mutex
	refused map[string]time.Time // peer address -> last time it refused our certificate
}

// TLSEnabled reports whether the daemon carries its connections over TLS
// (always, except where a test builds the options without a TLS dir).
func (o Options) TLSEnabled() bool { return o.TLSDir != "" }

// loadTLS (re-)reads the material when its files changed. A bad or
// missing set keeps the last good one (a half-written renewal never takes
// a running node down); before the first good one the node does not start.
func (d *Daemon) loadTLS() {
	if !d.o.TLSEnabled() {
		return
	}
	stamp := clustertls.Stamp(d.o.TLSDir)
	if stamp == d.tls.stamp {
		return
	}
	m, err := clustertls.Load(d.o.TLSDir, time.Now())
	if err != nil {
		if d.tls.err != err.Error() {
			d.log.Warn("cannot load the TLS material; keeping the last good one", "dir", d.o.TLSDir, "err", err)
		}
		d.tls.err = err.Error()
		return
	}
	d.tls.stamp, d.tls.err = stamp, ""
	if m.ControllerID != d.o.ControllerID {
		d.tls.err = fmt.Sprintf("the node certificate in %s is controller %s's, not this controller's", d.o.TLSDir, m.ControllerID)
		d.log.Error("cannot use the TLS material", "err", d.tls.err)
		return
	}
	if g := d.tls.guard.Load(); g != nil {
		g.SetMaterial(m)
	} else {
		d.tls.guard.Store(clustertls.NewGuard(m, d.log.With("component", "tls")))
	}
	d.log.Info("TLS material loaded", "dir", d.o.TLSDir, "certificate-expiry", m.Cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
		"ips", m.Cert.Leaf.IPAddresses, "cas", len(m.CAs))
}

// errNoTLSMaterial: the node's certificate has not loaded yet.
var errNoTLSMaterial = errors.New("waiting for the node's TLS certificate")

// tlsReady loads the material and sets the trust view (the view before
// the node starts: its first dials, a join or the questions of
// stillMember, must not find only itself trusted). It fails while no
// material has loaded: then no peer can be dialled, and a stopped node
// waits rather than take the silence for "nobody answered".
func (d *Daemon) tlsReady() error {
	if !d.o.TLSEnabled() {
		return nil // a test's plaintext node
	}
	d.updateTrust()
	if d.tls.guard.Load() == nil {
		msg := "no TLS material yet"
		if d.tls.err != "" {
			msg = d.tls.err
		}
		return fmt.Errorf("%w in %s (the charm writes it): %s", errNoTLSMaterial, d.o.TLSDir, msg)
	}
	return nil
}

// tlsOptions are the app options that carry the Dqlite port over TLS
// (app.WithTLS: Go owns the sockets and proxies to the C node on an
// abstract Unix socket, which is also what lets an IPv6 address work).
// It fails while no material has loaded.
func (d *Daemon) tlsOptions() ([]app.Option, error) {
	if !d.o.TLSEnabled() {
		return nil, nil // a test's plaintext node
	}
	if err := d.tlsReady(); err != nil {
		return nil, err
	}
	g := d.tls.guard.Load()
	return []app.Option{app.WithTLS(g.PeerServerConfig(), g.PeerDialConfig())}, nil
}

// updateTrust reloads changed material and gives the guard the current
// trust view: the config's controllers, plus the hosts of the members the
// last leader reported (cluster.yaml before the first report), so that a
// member whose unit left the config stays a peer until it is removed.
// The guard closes the connections of peers that lost trust.
func (d *Daemon) updateTrust() {
	d.loadTLS()
	g := d.tls.guard.Load()
	if g == nil {
		return
	}
	v := clustertls.View{Self: d.o.ControllerID, Listed: d.cfg.DBBindAddresses}
	var members []client.NodeInfo
	if d.run != nil {
		members = d.run.members
		if len(members) == 0 {
			members, _ = readStore(d.nodeDir)
		}
	}
	for _, m := range members {
		if host, _, err := net.SplitHostPort(m.Address); err == nil {
			if ip := net.ParseIP(host); ip != nil {
				host = ip.String()
			}
			v.MemberHosts = append(v.MemberHosts, host)
		}
	}
	sort.Strings(v.MemberHosts)
	if closed := g.SetView(v); len(closed) > 0 {
		d.log.Info("closed connections of peers no longer trusted", "controllers", closed)
	}
	if key := fmt.Sprint(v.Listed, v.MemberHosts); key != d.tls.view {
		d.tls.view = key
		d.log.Debug("trust view", "listed", v.Listed, "member-hosts", v.MemberHosts)
	}
}

// dialPeer connects to a Dqlite node (dialNode) and, with TLS, completes
// the handshake within the same deadline: the peer must present a
// certificate of the cluster CA for a controller the view trusts.
func (d *Daemon) dialPeer(ctx context.Context, address string) (net.Conn, error) {
	conn, err := dialNode(ctx, address)
	if err != nil || !d.o.TLSEnabled() {
		return conn, err
	}
	g := d.tls.guard.Load()
	if g == nil {
		conn.Close()
		return nil, errors.New("cannot dial a Dqlite node: no TLS material yet")
	}
	hctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	cfg := g.PeerDialConfig()
	// TLS 1.2 here (not for Raft's own dials), so that a peer refusing our
	// certificate says so in the handshake: in TLS 1.3 the client
	// finishes first and would learn of it only at its first read, deep
	// inside go-dqlite, which retries without telling.
	cfg.MaxVersion = tls.VersionTLS12
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(hctx); err != nil {
		conn.Close()
		if refusedOurCertificate(err) {
			d.noteRefusal(address)
		}
		return nil, fmt.Errorf("cannot complete the TLS handshake with %s: %w", address, err)
	}
	return tc, nil
}

// refusedOurCertificate reports whether a handshake failed because the
// peer refused our certificate (its alert), not for a network reason.
func refusedOurCertificate(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && strings.Contains(op.Err.Error(), "bad certificate")
}

func (d *Daemon) noteRefusal(address string) {
	d.tls.mu.Lock()
	defer d.tls.mu.Unlock()
	if d.tls.refused == nil {
		d.tls.refused = map[string]time.Time{}
	}
	d.tls.refused[address] = time.Now()
}

// lockedOut tells a running node that its peers have locked it out: its
// own config does not list it (its unit is being removed), and since the
// time given no leader was reached while peers answered its handshakes by
// refusing its certificate, which (the chain being the cluster CA's, as
// Load checked) a peer does only when its config does not list this
// controller and the Raft configuration does not hold it (rule of
// clustertls.View.Authorise). Such a node was removed from the cluster:
// it must not serve stale state, exactly as when a leader answers
// without it.
//
// A node whose own config still lists it (a departing unit's config is
// frozen with itself in it) is locked out only when every other listed
// peer refused it: then none of them lists it or holds it as a member.
func (d *Daemon) lockedOut(since time.Time) (string, bool) {
	if len(d.cfg.DBBindAddresses) == 0 {
		return "", false
	}
	if _, listed := d.cfg.DBBindAddresses[d.o.ControllerID]; !listed {
		return d.refusedBy(since, nil)
	}
	var peers []string
	for id, host := range d.cfg.DBBindAddresses {
		if id != d.o.ControllerID {
			peers = append(peers, decide.JoinHostPort(host, d.o.Port))
		}
	}
	by, out := d.refusedBy(since, peers)
	if !out || len(peers) == 0 || len(strings.Split(by, ", ")) < len(peers) {
		return "", false
	}
	return by, true
}

// refusedBy lists the peers (among the given addresses; any, when nil)
// that refused this node's certificate since the time given.
func (d *Daemon) refusedBy(since time.Time, among []string) (string, bool) {
	d.tls.mu.Lock()
	defer d.tls.mu.Unlock()
	var by []string
	for addr, at := range d.tls.refused {
		if !at.Before(since) && (among == nil || slices.Contains(among, addr)) {
			by = append(by, addr)
		}
	}
	if len(by) == 0 {
		return "", false
	}
	sort.Strings(by)
	return strings.Join(by, ", "), true
}

// APITLSConfig is the HTTP API's TLS config (nil without TLS): the same
// CA, a certificate presented by a client must verify and, if it is a node
// certificate, be trusted. Until the material loads, handshakes fail.
func (d *Daemon) APITLSConfig() *tls.Config {
	if !d.o.TLSEnabled() {
		return nil
	}
	return &tls.Config{
		MinVersion: clustertls.MinVersion,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			g := d.tls.guard.Load()
			if g == nil {
				return nil, errors.New("no TLS material yet")
			}
			return g.APIServerConfig().GetConfigForClient(hello)
		},
	}
}

// CABundle implements apiserver.Backend: the CA bundle of the loaded TLS
// material (nil before it loads, and without TLS), which the HTTP API
// publishes so that agents follow a CA rotation.
func (d *Daemon) CABundle() []byte {
	if g := d.tls.guard.Load(); g != nil {
		return g.Material().CAPEM
	}
	return nil
}
