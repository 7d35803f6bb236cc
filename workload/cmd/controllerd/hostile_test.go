package main_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/clustertls"
)

// material loads controller id's TLS material as the harness provisioned it.
func (c *cluster) material(id string) *clustertls.Material {
	c.t.Helper()
	m, err := clustertls.Load(clustertls.Dir(c.node(id).conf), time.Now())
	if err != nil {
		c.t.Fatal(err)
	}
	return m
}

// foreignMaterial is a node certificate of another CA, for controller id
// at the right address: everything right but the issuer.
func foreignMaterial(t testing.TB, id, host string) *clustertls.Material {
	t.Helper()
	ca, err := clustertls.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "foreign")
	if _, _, err := clustertls.Provision(dir, ca, ca.CertPEM, id, []net.IP{net.ParseIP(host)}, time.Now()); err != nil {
		t.Fatal(err)
	}
	m, err := clustertls.Load(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// attackerTLS is the TLS config of a hostile peer holding cert (nil:
// none): it does not check the server (it wants in, not safety) and sends
// its certificate whatever CAs the server asks for (Go's client would
// otherwise send none that the server does not name).
func attackerTLS(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

func attackerDial(cert *tls.Certificate) client.DialFunc {
	return client.DialFuncWithTLS(client.DefaultDialFunc, attackerTLS(cert))
}

// dqliteAttack connects to a Dqlite port with dial and tries what a peer
// that got in could do: list the cluster, then add a node. It returns the
// first error (nil: the attack got in).
func dqliteAttack(addr string, dial client.DialFunc) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cli, err := client.New(ctx, addr, client.WithDialFunc(dial))
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.Cluster(ctx); err != nil {
		return err
	}
	return cli.Add(ctx, client.NodeInfo{ID: 4242, Address: "127.0.0.1:1", Role: client.Spare})
}

// apiAttack GETs the address lists from an API port with the given TLS
// client config (nil: plain HTTP) and returns an error unless it got 200.
func apiAttack(addr string, cfg *tls.Config) error {
	scheme := "https"
	tr := &http.Transport{TLSClientConfig: cfg}
	if cfg == nil {
		scheme = "http"
	}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := hc.Get(scheme + "://" + addr + "/v1/api-addresses")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Hostile peers at the Dqlite port and at the API port: a plaintext
// client, a TLS client whose certificate is of another CA, and a client
// holding the valid certificate of a unit that was removed. Each is
// refused at both ports; the cluster's membership and data are unchanged.
func TestHostilePeers_RefusedAtDqliteAndAPIPorts(t *testing.T) {
	c := newCluster(t)
	c.form(4)
	c.mustSQL("0", "CREATE TABLE h (id INTEGER PRIMARY KEY)")
	c.mustSQL("0", "INSERT INTO h VALUES (1)")
	// remove-unit of controller 3: every config drops it, the leader
	// removes its node. Its certificate stays valid (same CA, not expired).
	removed := c.material("3")
	c.writeConfig(c.config("0", "1", "2"), "0", "1", "2", "3")
	c.waitState("3", "removed")
	c.stop("3")
	c.waitRoles("0", 3, 3, 0)
	before := c.mustStatus("0").Members

	listed := c.material("1")
	foreign := foreignMaterial(t, "1", c.node("1").host)
	cases := []struct {
		summary string
		dial    client.DialFunc
		api     *tls.Config
	}{
		{"plaintext client", client.DefaultDialFunc, nil},
		{"TLS client without a certificate", attackerDial(nil), attackerTLS(nil)},
		{"TLS client with a certificate of another CA", attackerDial(&foreign.Cert), attackerTLS(&foreign.Cert)},
		{"valid certificate of a removed unit", attackerDial(&removed.Cert), attackerTLS(&removed.Cert)},
	}
	for _, id := range []string{"0", "1", "2"} {
		dq := net.JoinHostPort(c.node(id).host, strconv.Itoa(dqlitePort))
		for _, tc := range cases {
			if err := dqliteAttack(dq, tc.dial); err == nil {
				t.Errorf("%s got into controller %s's Dqlite port", tc.summary, id)
			} else {
				t.Logf("%s at controller %s's Dqlite port: %v", tc.summary, id, err)
			}
			if tc.summary == "TLS client without a certificate" {
				continue // agents connect so to the API (read-only lists)
			}
			if err := apiAttack(c.apiAddress(id), tc.api); err == nil {
				t.Errorf("%s got an answer from controller %s's API", tc.summary, id)
			} else {
				t.Logf("%s at controller %s's API: %v", tc.summary, id, err)
			}
		}
	}
	// The control: a listed controller's certificate, through go-dqlite's
	// own TLS helpers, and an agent verifying the server, get in.
	dq := net.JoinHostPort(c.node("0").host, strconv.Itoa(dqlitePort))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := client.New(ctx, dq, client.WithDialFunc(client.DialFuncWithTLS(client.DefaultDialFunc, app.SimpleDialTLSConfig(listed.Cert, listed.Pool))))
	if err != nil {
		t.Fatalf("a listed controller's certificate was refused: %v", err)
	}
	cli.Close()
	if err := apiAttack(c.apiAddress("0"), clustertls.ClientConfig(listed.Pool)); err != nil {
		t.Fatalf("an agent verifying the server was refused: %v", err)
	}

	// A flood: 200 plaintext connections in a row at controller 2's
	// Dqlite port. go-dqlite's proxy logs each at ERROR; the daemon
	// summarises them (one line per 10 s window plus a count), so a
	// hostile client cannot fill the log.
	dq2 := net.JoinHostPort(c.node("2").host, strconv.Itoa(dqlitePort))
	proxyLines := func() int {
		n := 0
		for _, l := range strings.Split(c.node("2").logs(), "\n") {
			if strings.Contains(l, "proxy: ") || strings.Contains(l, "peer connection") {
				n++
			}
		}
		return n
	}
	linesBefore := proxyLines()
	for i := 0; i < 200; i++ {
		if conn, err := net.DialTimeout("tcp", dq2, time.Second); err == nil {
			conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			io.Copy(io.Discard, conn)
			conn.Close()
		}
	}
	if n := proxyLines() - linesBefore; n > 10 {
		t.Errorf("200 plaintext connections added %d log lines about peer connections, want a summary (<= 10)", n)
	} else {
		t.Logf("200 plaintext connections added %d log lines about peer connections", n)
	}

	after := c.mustStatus("0").Members
	if !slices.Equal(before, after) {
		t.Fatalf("membership changed: %v -> %v", before, after)
	}
	if n, err := c.count("1", "h"); err != nil || n != 1 {
		t.Fatalf("rows = %d, %v", n, err)
	}
	for _, id := range []string{"0", "1", "2"} {
		if !c.node(id).running() {
			t.Fatalf("controller %s died", id)
		}
	}
}

// garbagePeer accepts connections on addr and answers each with bytes
// that, read as a go-dqlite message header, announce a huge body (go-dqlite
// v1.11.5 sizes its buffer from the first bytes a peer sends); it also
// sends them unasked. It returns how many connections it served.
func garbagePeer(t *testing.T, addr string) func() int {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan int, 1)
	count := 0
	go func() {
		defer func() { served <- count }()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			count++
			go func() {
				defer conn.Close()
				junk := make([]byte, 64<<10)
				for i := range junk {
					junk[i] = 0xff
				}
				conn.SetDeadline(time.Now().Add(3 * time.Second))
				for {
					if _, err := conn.Write(junk); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return func() int { l.Close(); return <-served }
}

func procRSSMB(t testing.TB, pid int) float64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// A peer that answers with garbage: the config lists a controller whose
// address is a non-Dqlite service spraying 0xff (as a go-dqlite header:
// a body of gigabytes). A new controller whose only listed peer is the
// liar tries to join through it every second; garbage is also sent at
// every daemon's Dqlite and API ports.
// Over TLS the garbage never reaches go-dqlite's decoder: every daemon's
// RSS stays under 100 MB and the real members keep serving.
func TestHostilePeer_GarbageAnswersKeepRSSBounded(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	// Controller 5 is listed, but a garbage service holds its address.
	liar := c.node("5")
	done := garbagePeer(t, net.JoinHostPort(liar.host, strconv.Itoa(dqlitePort)))
	// A new controller whose only peer in its config is the liar: it
	// tries to join through it (every second) and gets garbage.
	c.writeConfig(c.config("3", "5"), "3")
	c.start("3")
	// And garbage at every daemon's ports.
	stop := make(chan struct{})
	defer close(stop)
	for _, id := range []string{"0", "1", "2", "3"} {
		for _, addr := range []string{net.JoinHostPort(c.node(id).host, strconv.Itoa(dqlitePort)), c.apiAddress(id)} {
			go func() {
				junk := make([]byte, 16<<10)
				for i := range junk {
					junk[i] = 0xff
				}
				for {
					select {
					case <-stop:
						return
					default:
					}
					conn, err := net.DialTimeout("tcp", addr, time.Second)
					if err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					conn.SetDeadline(time.Now().Add(time.Second))
					for range 64 {
						if _, err := conn.Write(junk); err != nil {
							break
						}
					}
					conn.Close()
				}
			}()
		}
	}
	peak := map[string]float64{}
	sample := func(d time.Duration) {
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			for _, id := range []string{"0", "1", "2", "3"} {
				peak[id] = max(peak[id], procRSSMB(t, c.node(id).cmd.Process.Pid))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	sample(8 * time.Second)
	served := done()
	t.Logf("garbage peer served %d connections; peak RSS (MB): %v", served, peak)
	if served == 0 {
		t.Fatal("no daemon ever dialled the garbage peer: the scenario did not run")
	}
	for id, mb := range peak {
		if mb >= 100 {
			t.Errorf("controller %s reached %.1f MB RSS", id, mb)
		}
	}
	if st := c.mustStatus("3"); st.Member || st.State != "joining" {
		t.Fatalf("controller 3 joined through a garbage peer: %+v", st)
	}
	if st := c.mustStatus("0"); len(st.Members) != 3 {
		t.Fatalf("members = %v", st.Members)
	}
	c.mustSQL("0", "CREATE TABLE g (id INTEGER PRIMARY KEY)")
	c.mustSQL("1", "INSERT INTO g VALUES (1)")
}
