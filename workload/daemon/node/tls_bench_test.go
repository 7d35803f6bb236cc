package node_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/node"
)

// benchCluster is three daemons in this process on loopback addresses
// 127.X.Y.1-3, built from Options directly: with TLS material (as
// controllerd run always has) or, for the comparison only, without.
type benchCluster struct {
	daemons []*node.Daemon
	cancel  context.CancelFunc
	done    chan struct{}
}

func startBenchCluster(b *testing.B, withTLS bool) *benchCluster {
	b.Helper()
	dir := b.TempDir()
	prefix := fmt.Sprintf("127.%d.%d.", 10+rand.IntN(240), 1+rand.IntN(250))
	cfg := &controllerconf.Config{DBBindAddresses: map[string]string{}, BootstrapAgentID: "0"}
	for i := range 3 {
		cfg.DBBindAddresses[fmt.Sprint(i)] = prefix + fmt.Sprint(i+1)
	}
	ca, err := clustertls.NewCA(time.Now())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	bc := &benchCluster{cancel: cancel, done: make(chan struct{})}
	running := make(chan struct{}, 3)
	for i := range 3 {
		id := fmt.Sprint(i)
		conf := filepath.Join(dir, "agents", "controller-"+id, controllerconf.FileName)
		if _, err := controllerconf.Write(conf, cfg); err != nil {
			b.Fatal(err)
		}
		o := node.Options{
			ControllerID: id, ConfigPath: conf, DataDir: filepath.Join(dir, "data-"+id), Port: 17666,
			Log: slog.New(slog.DiscardHandler),
		}
		if withTLS {
			o.TLSDir = clustertls.Dir(conf)
			if _, _, err := clustertls.Provision(o.TLSDir, ca, ca.CertPEM, id, []net.IP{net.ParseIP(cfg.DBBindAddresses[id])}, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
		d := node.New(o)
		bc.daemons = append(bc.daemons, d)
		go func() {
			d.Run(ctx)
			running <- struct{}{}
		}()
	}
	go func() {
		for range 3 {
			<-running
		}
		close(bc.done)
	}()
	b.Cleanup(func() { bc.cancel(); <-bc.done })
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok := 0
		for _, d := range bc.daemons {
			st := d.Status(context.Background())
			if st.State == string(node.StateRunning) && st.Voters == 3 {
				ok++
			}
		}
		if ok == 3 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("cluster (tls=%v) did not form 3 voters", withTLS)
		}
		time.Sleep(50 * time.Millisecond)
	}
	bc.sql(b, "CREATE TABLE IF NOT EXISTS w (id INTEGER PRIMARY KEY, v TEXT)")
	return bc
}

func (bc *benchCluster) sql(b *testing.B, stmt string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := bc.daemons[1].SQL(ctx, stmt); err != nil {
		b.Fatalf("%s: %v", stmt, err)
	}
}

// rate writes n single-row transactions through controller 1 (the
// daemon's own path: an explicit transaction to the leader) and returns
// transactions per second.
func (bc *benchCluster) rate(b *testing.B, n int) float64 {
	payload := strings.Repeat("x", 100)
	at := time.Now()
	for range n {
		bc.sql(b, "INSERT INTO w (v) VALUES ('"+payload+"')")
	}
	return float64(n) / time.Since(at).Seconds()
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkWriteThroughput_TLSvsPlain runs a 3-node cluster with TLS and
// one without side by side in this process and alternates rounds of 500
// sequential single-row transactions on each, so that both see the same
// machine load; it reports both medians and their ratio (goal >= 80 %).
func BenchmarkWriteThroughput_TLSvsPlain(b *testing.B) {
	for range b.N {
		plain := startBenchCluster(b, false)
		secure := startBenchCluster(b, true)
		var pr, tr []float64
		for range 5 {
			pr = append(pr, plain.rate(b, 500))
			tr = append(tr, secure.rate(b, 500))
		}
		p, t := median(pr), median(tr)
		b.ReportMetric(p, "plain-tx/s")
		b.ReportMetric(t, "tls-tx/s")
		b.ReportMetric(100*t/p, "tls-%-of-plain")
	}
}
