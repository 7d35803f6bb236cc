package main_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/clustertls"
)

// A CA rotation on a running 3-node cluster with a writer running, in the
// three steps the charm takes (trust the new CA everywhere, re-issue every
// node certificate from it, drop the old CA), one node at a time: the
// daemons pick each step up from their TLS files without restarting, no
// write fails, and afterwards a certificate of the old CA is refused.
func TestRotation_CAReplacedLiveWithAWriterRunning(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.writeUntilOK("0", "CREATE TABLE r (id INTEGER PRIMARY KEY)")
	oldCA := c.ca
	oldCert := c.material("1")
	newCA, err := clustertls.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, id := range ids(3) {
		pids[id] = c.node(id).cmd.Process.Pid
	}

	var (
		mu       sync.Mutex
		failures []string
		writes   int
		slowest  time.Duration
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			at := time.Now()
			_, err := c.sql(strconv.Itoa(i%3), fmt.Sprintf("INSERT INTO r (id) VALUES (%d)", i))
			mu.Lock()
			writes++
			slowest = max(slowest, time.Since(at))
			if err != nil {
				failures = append(failures, err.Error())
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()

	step := func(what string, ca *clustertls.CA, bundle []byte, cas int) {
		t.Helper()
		for _, id := range ids(3) {
			d := c.node(id)
			at := time.Now()
			if _, _, err := clustertls.Provision(clustertls.Dir(d.conf), ca, bundle, id, []net.IP{net.ParseIP(d.host)}, time.Now()); err != nil {
				t.Fatal(err)
			}
			c.waitFor(fmt.Sprintf("controller %s to load the material of step %q", id, what), func() (bool, string) {
				_, ok := d.lineAfter(at, fmt.Sprintf("cas=%d", cas))
				return ok, ""
			})
		}
	}
	both := clustertls.Bundle(oldCA.CertPEM, newCA.CertPEM)
	step("trust the new CA", oldCA, both, 2)
	step("re-issue from the new CA", newCA, both, 2)
	step("drop the old CA", newCA, newCA.CertPEM, 1)
	time.Sleep(time.Second)
	close(stop)
	<-done

	mu.Lock()
	t.Logf("%d writes during the rotation, %d failed, slowest %s", writes, len(failures), slowest)
	if len(failures) > 0 {
		t.Errorf("writes failed during the rotation: %v", failures)
	}
	mu.Unlock()
	for _, id := range ids(3) {
		d := c.node(id)
		if d.cmd.Process.Pid != pids[id] || strings.Count(d.logs(), "Dqlite node started") != 1 {
			t.Fatalf("controller %s restarted during the rotation", id)
		}
		if m := c.material(id); m.Cert.Leaf.CheckSignatureFrom(newCA.Cert) != nil || len(m.CAs) != 1 {
			t.Fatalf("controller %s's material is not the new CA's", id)
		}
	}
	// A certificate of the dropped CA is refused; one of the new CA works.
	addr := net.JoinHostPort(c.node("0").host, strconv.Itoa(dqlitePort))
	if err := dqliteAttack(addr, attackerDial(&oldCert.Cert)); err == nil {
		t.Fatal("a certificate of the dropped CA got in")
	}
	cur := c.material("1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := client.New(ctx, addr, client.WithDialFunc(client.DialFuncWithTLS(client.DefaultDialFunc, app.SimpleDialTLSConfig(cur.Cert, cur.Pool))))
	if err != nil {
		t.Fatalf("a certificate of the new CA was refused: %v", err)
	}
	cli.Close()
	c.ca = newCA // for the harness's own HTTPS client
	if st := c.mustStatus("0"); len(st.Members) != 3 || st.Voters != 3 {
		t.Fatalf("members after the rotation: %+v", st.Members)
	}
}
