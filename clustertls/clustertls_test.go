package clustertls_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"

	"github.com/juju/dqlite-controller/clustertls"
)

var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newCA(t *testing.T) *clustertls.CA {
	t.Helper()
	ca, err := clustertls.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// node provisions a node directory for id at ip and loads it.
func node(t *testing.T, ca *clustertls.CA, bundle []byte, id, ip string) *clustertls.Material {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if _, _, err := clustertls.Provision(dir, ca, bundle, id, []net.IP{net.ParseIP(ip)}, now); err != nil {
		t.Fatal(err)
	}
	m, err := clustertls.Load(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCA_ParseChecksKeyAndCAFlag(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	if _, err := clustertls.ParseCA(ca.CertPEM, ca.KeyPEM); err != nil {
		t.Fatalf("own CA: %v", err)
	}
	if _, err := clustertls.ParseCA(ca.CertPEM, other.KeyPEM); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("CA with another CA's key: got %v", err)
	}
	m := node(t, ca, ca.CertPEM, "1", "10.0.0.2")
	if _, err := clustertls.ParseCA(ca.CertPEM, nil); err == nil {
		t.Fatal("CA without key accepted")
	}
	if m.Cert.Leaf.IsCA {
		t.Fatal("node certificate is a CA")
	}
}

// go-dqlite's SimpleDialTLSConfig pins DNSNames[0] as server name and
// panics without a DNS SAN (go-dqlite v1.11.5 app/tls.go): every node
// certificate must carry ServerName first.
func TestNodeCert_CarriesIdentityAddressesAndPinnedName(t *testing.T) {
	ca := newCA(t)
	m := node(t, ca, ca.CertPEM, "7", "fd00::7")
	leaf := m.Cert.Leaf
	if leaf.Subject.CommonName != "controller-7" || m.ControllerID != "7" {
		t.Fatalf("subject %q, id %q", leaf.Subject.CommonName, m.ControllerID)
	}
	if len(leaf.DNSNames) == 0 || leaf.DNSNames[0] != clustertls.ServerName {
		t.Fatalf("DNS names %v", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != "fd00::7" {
		t.Fatalf("IP SANs %v", leaf.IPAddresses)
	}
	dial := app.SimpleDialTLSConfig(m.Cert, m.Pool)
	if dial.ServerName != clustertls.ServerName {
		t.Fatalf("SimpleDialTLSConfig pins %q", dial.ServerName)
	}
}

func TestNeedsReissue(t *testing.T) {
	ca, next := newCA(t), newCA(t)
	m := node(t, ca, ca.CertPEM, "1", "10.0.0.2")
	ip := []net.IP{net.ParseIP("10.0.0.2")}
	for _, tc := range []struct {
		summary string
		id      string
		ips     []net.IP
		ca      *clustertls.CA
		at      time.Time
		want    string
	}{
		{"current certificate", "1", ip, ca, now, ""},
		{"another controller's certificate", "2", ip, ca, now, "not this controller's"},
		{"bind address changed (juju bind)", "1", []net.IP{net.ParseIP("10.0.1.2")}, ca, now, "bind address changed"},
		{"same address written differently", "1", []net.IP{net.ParseIP("10.0.0.2").To16()}, ca, now, ""},
		{"inside the renewal window", "1", ip, ca, now.Add(clustertls.NodeValidity - clustertls.RenewBefore + time.Hour), "expires"},
		{"just before the renewal window", "1", ip, ca, now.Add(clustertls.NodeValidity - clustertls.RenewBefore - 2*time.Hour), ""},
		{"signed by the old CA after a rotation", "1", ip, next, now, "not signed by the current CA"},
	} {
		got := clustertls.NeedsReissue(m.Cert.Leaf, tc.id, tc.ips, tc.ca.Cert, tc.at)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.summary, got, tc.want)
		}
	}
}

func TestProvision_KeyStaysCertFollowsAddress(t *testing.T) {
	ca := newCA(t)
	dir := filepath.Join(t.TempDir(), "tls")
	ip1 := []net.IP{net.ParseIP("10.0.0.2")}
	reason, changed, err := clustertls.Provision(dir, ca, ca.CertPEM, "1", ip1, now)
	if err != nil || !changed || reason == "" {
		t.Fatalf("first provision: %q %v %v", reason, changed, err)
	}
	st, err := os.Stat(filepath.Join(dir, clustertls.KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode: %v %v", st.Mode(), err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", st.Mode())
	}
	key1, _, _ := clustertls.ReadKey(dir)
	if reason, changed, err := clustertls.Provision(dir, ca, ca.CertPEM, "1", ip1, now); err != nil || changed || reason != "" {
		t.Fatalf("unchanged provision rewrote: %q %v %v", reason, changed, err)
	}
	reason, changed, err = clustertls.Provision(dir, ca, ca.CertPEM, "1", []net.IP{net.ParseIP("10.0.9.2")}, now)
	if err != nil || !changed || !strings.Contains(reason, "bind address") {
		t.Fatalf("moved provision: %q %v %v", reason, changed, err)
	}
	key2, _, _ := clustertls.ReadKey(dir)
	if string(key1) != string(key2) {
		t.Fatal("re-issuing replaced the node key")
	}
	m, err := clustertls.Load(dir, now)
	if err != nil || m.Cert.Leaf.IPAddresses[0].String() != "10.0.9.2" {
		t.Fatalf("after move: %v", err)
	}
}

func TestLoad_Refuses(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	for _, tc := range []struct {
		summary string
		break_  func(dir string)
		want    string
	}{
		{"key readable by others", func(dir string) { os.Chmod(filepath.Join(dir, clustertls.KeyFile), 0o644) }, "mode"},
		{"bundle of another CA", func(dir string) {
			os.WriteFile(filepath.Join(dir, clustertls.CAFile), other.CertPEM, 0o644)
		}, "does not verify"},
		{"no certificate", func(dir string) { os.Remove(filepath.Join(dir, clustertls.CertFile)) }, "node certificate"},
		{"garbage bundle", func(dir string) { os.WriteFile(filepath.Join(dir, clustertls.CAFile), []byte("junk"), 0o644) }, "CA bundle"},
	} {
		dir := filepath.Join(t.TempDir(), "tls")
		if _, _, err := clustertls.Provision(dir, ca, ca.CertPEM, "1", nil, now); err != nil {
			t.Fatal(err)
		}
		tc.break_(dir)
		if _, err := clustertls.Load(dir, now); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.summary, err, tc.want)
		}
	}
}

func TestAuthorise(t *testing.T) {
	ips := func(s ...string) []net.IP {
		var out []net.IP
		for _, a := range s {
			out = append(out, net.ParseIP(a))
		}
		return out
	}
	listed := map[string]string{"0": "10.0.0.1", "1": "10.0.0.2"}
	for _, tc := range []struct {
		summary string
		view    clustertls.View
		id      string
		ips     []net.IP
		ok      bool
	}{
		{"self, even with an empty config", clustertls.View{Self: "0"}, "0", nil, true},
		{"listed controller", clustertls.View{Self: "0", Listed: listed}, "1", ips("10.0.0.2"), true},
		{"listed controller at a new address (juju bind)", clustertls.View{Self: "0", Listed: listed}, "1", ips("10.0.5.2"), true},
		{"removed unit, no longer a member", clustertls.View{Self: "0", Listed: listed, MemberHosts: []string{"10.0.0.1", "10.0.0.2"}}, "2", ips("10.0.0.3"), false},
		{"removed unit still a member (removal in flight)", clustertls.View{Self: "0", Listed: listed, MemberHosts: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}}, "2", ips("10.0.0.3"), true},
		{"removed unit whose address a listed controller now has", clustertls.View{Self: "0", Listed: map[string]string{"0": "10.0.0.1", "3": "10.0.0.3"}, MemberHosts: []string{"10.0.0.1", "10.0.0.3"}}, "2", ips("10.0.0.3"), false},
		{"IPv6 member in flight", clustertls.View{Self: "0", Listed: map[string]string{"0": "fd00::1"}, MemberHosts: []string{"fd00::9"}}, "9", ips("fd00::9"), true},
		{"unknown controller with no addresses", clustertls.View{Self: "0", Listed: listed, MemberHosts: []string{"10.0.0.3"}}, "5", nil, false},
		{"empty view trusts nobody else", clustertls.View{}, "1", ips("10.0.0.2"), false},
	} {
		err := tc.view.Authorise(tc.id, tc.ips)
		if (err == nil) != tc.ok {
			t.Errorf("%s: got %v, want ok=%v", tc.summary, err, tc.ok)
		}
	}
}

// handshake runs a TLS handshake between a server and a client config
// over loopback and returns both sides' errors.
func handshake(t *testing.T, server, client *tls.Config) (srvErr, cliErr error, srvConn net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	var sc *tls.Conn
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		sc = tls.Server(c, server)
		done <- sc.Handshake()
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), client)
	if err == nil {
		// TLS 1.3: the client finishes before the server has checked the
		// client certificate; a read tells.
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, rerr := c.Read(make([]byte, 1))
		if rerr != nil && !isTimeout(rerr) {
			err = rerr
		}
		defer c.Close()
	}
	srvErr = <-done
	return srvErr, err, sc
}

// trusting is a guard of m that trusts controllers 0 to 9 (the tests'
// dialling side; what the server decides is under test).
func trusting(m *clustertls.Material) *clustertls.Guard {
	g := clustertls.NewGuard(m, nil)
	listed := map[string]string{}
	for i := range 10 {
		listed[fmt.Sprint(i)] = fmt.Sprintf("10.0.0.%d", i+1)
	}
	g.SetView(clustertls.View{Self: m.ControllerID, Listed: listed})
	return g
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestPeerHandshakes(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	bundle := ca.CertPEM
	srv := node(t, ca, bundle, "0", "10.0.0.1")
	listed := node(t, ca, bundle, "1", "10.0.0.2")
	removed := node(t, ca, bundle, "2", "10.0.0.3")
	foreign := node(t, other, other.CertPEM, "1", "10.0.0.2")
	g := clustertls.NewGuard(srv, nil)
	g.SetView(clustertls.View{Self: "0", Listed: map[string]string{"0": "10.0.0.1", "1": "10.0.0.2"}})

	dialer := func(m *clustertls.Material) *tls.Config {
		return trusting(m).PeerDialConfig()
	}
	for _, tc := range []struct {
		summary string
		client  *tls.Config
		ok      bool
		want    string
	}{
		{"listed controller", dialer(listed), true, ""},
		{"go-dqlite's own dial config of a listed controller", app.SimpleDialTLSConfig(listed.Cert, listed.Pool), true, ""},
		{"no client certificate", clustertls.ClientConfig(srv.Pool), false, "certificate"},
		{"certificate of another CA", app.SimpleDialTLSConfig(foreign.Cert, foreign.Pool), false, "certificate"},
		{"valid certificate of a removed unit", dialer(removed), false, "neither in the controller config nor a current member"},
		{"TLS 1.1", &tls.Config{MaxVersion: tls.VersionTLS11, InsecureSkipVerify: true, Certificates: []tls.Certificate{listed.Cert}}, false, "version"},
	} {
		srvErr, cliErr, _ := handshake(t, g.PeerServerConfig(), tc.client)
		if tc.ok {
			if srvErr != nil || cliErr != nil {
				t.Errorf("%s: refused: server %v, client %v", tc.summary, srvErr, cliErr)
			}
			continue
		}
		if srvErr == nil && cliErr == nil {
			t.Errorf("%s: accepted", tc.summary)
		} else if both := fmt.Sprint(srvErr, cliErr); !strings.Contains(both, tc.want) {
			t.Errorf("%s: errors %s, want %q", tc.summary, both, tc.want)
		}
	}

	// The dialling side refuses a server of another CA, and one that the
	// view does not authorise.
	gl := clustertls.NewGuard(listed, nil)
	gl.SetView(clustertls.View{Self: "1", Listed: map[string]string{"0": "10.0.0.1", "1": "10.0.0.2"}})
	foreignSrv := clustertls.NewGuard(foreign, nil)
	if _, cliErr, _ := handshake(t, foreignSrv.PeerServerConfig(), gl.PeerDialConfig()); cliErr == nil || !strings.Contains(cliErr.Error(), "unknown authority") {
		t.Errorf("dial to a server of another CA: %v", cliErr)
	}
	removedSrv := clustertls.NewGuard(removed, nil)
	removedSrv.SetView(clustertls.View{Self: "2", Listed: map[string]string{"1": "10.0.0.2", "2": "10.0.0.3"}})
	if _, cliErr, _ := handshake(t, removedSrv.PeerServerConfig(), gl.PeerDialConfig()); cliErr == nil || !strings.Contains(cliErr.Error(), "neither") {
		t.Errorf("dial to a removed unit: %v", cliErr)
	}
}

// SetView closes the accepted connections of a peer that loses trust: a
// unit removed from the config and then from Raft.
func TestSetView_ClosesConnectionsOfRemovedPeer(t *testing.T) {
	ca := newCA(t)
	srv := node(t, ca, ca.CertPEM, "0", "10.0.0.1")
	leaving := node(t, ca, ca.CertPEM, "2", "10.0.0.3")
	g := clustertls.NewGuard(srv, nil)
	g.SetView(clustertls.View{Self: "0", Listed: map[string]string{"0": "10.0.0.1", "2": "10.0.0.3"}})
	srvErr, cliErr, sc := handshake(t, g.PeerServerConfig(), trusting(leaving).PeerDialConfig())
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake: %v %v", srvErr, cliErr)
	}
	if g.Connections() != 1 {
		t.Fatalf("tracked %d connections", g.Connections())
	}
	// Out of the config but still a member: kept.
	if closed := g.SetView(clustertls.View{Self: "0", Listed: map[string]string{"0": "10.0.0.1"}, MemberHosts: []string{"10.0.0.1", "10.0.0.3"}}); len(closed) != 0 {
		t.Fatalf("closed %v while the removal is in flight", closed)
	}
	// Removed from Raft: closed.
	closed := g.SetView(clustertls.View{Self: "0", Listed: map[string]string{"0": "10.0.0.1"}, MemberHosts: []string{"10.0.0.1"}})
	if len(closed) != 1 || closed[0] != "2" {
		t.Fatalf("closed %v", closed)
	}
	if _, err := sc.Read(make([]byte, 1)); err == nil || err == io.EOF {
		// a closed conn reports "use of closed network connection"
		if err == nil {
			t.Fatal("connection still readable")
		}
	}
	if g.Connections() != 0 {
		t.Fatalf("still tracking %d", g.Connections())
	}
}

// During a rotation the bundle holds both CAs: nodes with certificates of
// either are accepted, and after the old CA is dropped only the new one.
func TestRotationBundle(t *testing.T) {
	oldCA, newCA_ := newCA(t), newCA(t)
	both := clustertls.Bundle(oldCA.CertPEM, newCA_.CertPEM, oldCA.CertPEM)
	if strings.Count(string(both), "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("bundle: %s", both)
	}
	view := clustertls.View{Self: "0", Listed: map[string]string{"0": "10.0.0.1", "1": "10.0.0.2"}}
	srv := node(t, oldCA, both, "0", "10.0.0.1")
	g := clustertls.NewGuard(srv, nil)
	g.SetView(view)
	for _, ca := range []*clustertls.CA{oldCA, newCA_} {
		peer := node(t, ca, both, "1", "10.0.0.2")
		if srvErr, cliErr, _ := handshake(t, g.PeerServerConfig(), trusting(peer).PeerDialConfig()); srvErr != nil || cliErr != nil {
			t.Fatalf("peer of one CA during rotation: %v %v", srvErr, cliErr)
		}
	}
	// Drop the old CA: the server's live config follows SetMaterial.
	g.SetMaterial(node(t, newCA_, newCA_.CertPEM, "0", "10.0.0.1"))
	oldPeer := node(t, oldCA, both, "1", "10.0.0.2")
	if srvErr, cliErr, _ := handshake(t, g.PeerServerConfig(), trusting(oldPeer).PeerDialConfig()); srvErr == nil && cliErr == nil {
		t.Fatal("a certificate of the dropped CA was accepted")
	}
}

func TestAPIServer_AcceptsClientsWithoutCertificate(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	srv := node(t, ca, ca.CertPEM, "0", "10.0.0.1")
	g := clustertls.NewGuard(srv, nil)
	g.SetView(clustertls.View{Self: "0", Listed: map[string]string{"0": "10.0.0.1"}})
	if srvErr, cliErr, _ := handshake(t, g.APIServerConfig(), clustertls.ClientConfig(srv.Pool)); srvErr != nil || cliErr != nil {
		t.Fatalf("agent: %v %v", srvErr, cliErr)
	}
	removed := node(t, ca, ca.CertPEM, "4", "10.0.0.5")
	if srvErr, cliErr, _ := handshake(t, g.APIServerConfig(), trusting(removed).PeerDialConfig()); srvErr == nil && cliErr == nil {
		t.Fatal("a removed unit's certificate was accepted at the API")
	}
	foreign := node(t, other, other.CertPEM, "0", "10.0.0.1")
	if _, cliErr, _ := handshake(t, clustertls.NewGuard(foreign, nil).APIServerConfig(), clustertls.ClientConfig(srv.Pool)); cliErr == nil {
		t.Fatal("an agent accepted a server of another CA")
	}
}
