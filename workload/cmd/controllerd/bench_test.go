package main_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"

	"github.com/juju/dqlite-controller/workload/dbtx"
)

// Benchmarks run with -benchtime 1x: each measures several repetitions
// itself and reports the median with b.ReportMetric.

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// reportSpread reports the median of xs as name-unit and its spread as
// name-min-unit and name-max-unit (make bench prints them as one row).
func reportSpread(b *testing.B, xs []float64, name, unit string) {
	b.Helper()
	if len(xs) == 0 {
		return
	}
	b.ReportMetric(median(xs), name+"-"+unit)
	b.ReportMetric(slices.Min(xs), name+"-min-"+unit)
	b.ReportMetric(slices.Max(xs), name+"-max-"+unit)
}

// waitLine waits for a log line containing s written after t.
func waitLine(b *testing.B, d *daemon, t time.Time, s string) time.Time {
	b.Helper()
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		if at, ok := d.lineAfter(t, s); ok {
			return at
		}
		time.Sleep(2 * time.Millisecond)
	}
	b.Fatalf("no log line %q from controller %s", s, d.id)
	return time.Time{}
}

// BenchmarkConfigChangeToAction measures how fast a config write turns into
// a decision: on a waiting node (a decision log line per write), and on a
// 3-node cluster's leader removing a departed member.
func BenchmarkConfigChangeToAction(b *testing.B) {
	for i := 0; i < b.N; i++ {
		c := newCluster(b)
		c.start("1")
		c.waitState("1", "waiting")
		var decisions []float64
		for r := 0; r < 11; r++ {
			cfg := c.config("1")
			if r%2 == 1 {
				cfg = c.config("1", "5")
				cfg.DBBindAddresses = map[string]string{"5": c.node("5").host}
			}
			time.Sleep(50 * time.Millisecond)
			at := time.Now()
			c.writeConfig(cfg, "1")
			decisions = append(decisions, ms(waitLine(b, c.node("1"), at, "msg=decision").Sub(at)))
		}
		reportSpread(b, decisions, "decision", "ms")
		c.stop("1")

		c2 := newCluster(b)
		c2.form(3)
		var removals []float64
		for r := 0; r < 3; r++ {
			leader := c2.leaderID("0")
			var victim string
			for _, id := range ids(3) {
				if id != leader {
					victim = id
				}
			}
			var keep []string
			for _, id := range ids(3) {
				if id != victim {
					keep = append(keep, id)
				}
			}
			at := time.Now()
			c2.writeConfig(c2.config(keep...), ids(3)...)
			removals = append(removals, ms(waitLine(b, c2.node(leader), at, "removed member").Sub(at)))
			c2.waitState(victim, "removed")
			c2.writeConfig(c2.config(ids(3)...), ids(3)...)
			c2.waitRoles(leader, 3, 3, 0)
			c2.waitState(victim, "running")
		}
		reportSpread(b, removals, "removal", "ms")
	}
}

// BenchmarkAddNodeToVoter measures a third node's start to its becoming a
// voter (two-node cluster has one voter; the third makes three).
func BenchmarkAddNodeToVoter(b *testing.B) {
	for i := 0; i < b.N; i++ {
		var runs []float64
		for r := 0; r < 3; r++ {
			c := newCluster(b)
			c.form(2)
			c.writeConfig(c.config(ids(3)...), ids(3)...)
			at := time.Now()
			c.start("2")
			for {
				st, err := c.status("2")
				if err == nil && st.Role == "voter" {
					break
				}
				if time.Since(at) > patience {
					b.Fatalf("node 2 not a voter: %+v %v", st, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			runs = append(runs, ms(time.Since(at)))
			for _, id := range ids(3) {
				c.stop(id)
			}
		}
		reportSpread(b, runs, "add-to-voter", "ms")
	}
}

// writeLoop retries an idempotent insert through controller id until it
// succeeds and returns the time it took.
func writeLoop(b *testing.B, c *cluster, id, stmt string) time.Duration {
	b.Helper()
	at := time.Now()
	for {
		if _, err := c.sql(id, stmt); err == nil {
			return time.Since(at)
		}
		if time.Since(at) > patience {
			b.Fatalf("no successful write through controller %s", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkLeaderKillToWritable measures kill -9 of the leader to the first
// successful write through a survivor.
func BenchmarkLeaderKillToWritable(b *testing.B) {
	for i := 0; i < b.N; i++ {
		c := newCluster(b)
		c.form(3)
		c.mustSQL("0", "CREATE TABLE k (id INTEGER PRIMARY KEY)")
		var runs []float64
		for r := 0; r < 5; r++ {
			leader := c.leaderID("0")
			survivor := ids(3)[(mustAtoi(leader)+1)%3]
			c.kill(leader)
			runs = append(runs, ms(writeLoop(b, c, survivor, fmt.Sprintf("INSERT INTO k VALUES (%d) ON CONFLICT DO NOTHING", r))))
			c.start(leader)
			c.waitState(leader, "running")
			c.waitRoles(survivor, 3, 3, 0)
		}
		reportSpread(b, runs, "kill-to-write", "ms")
	}
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

// BenchmarkReconfigureToWritable measures 3 -> 1 with the two others dead:
// from the config listing only the survivor to its first successful write
// (includes the 3 s confirmation period).
func BenchmarkReconfigureToWritable(b *testing.B) {
	for i := 0; i < b.N; i++ {
		var runs []float64
		for r := 0; r < 3; r++ {
			c := newCluster(b)
			c.form(3)
			c.mustSQL("0", "CREATE TABLE q (id INTEGER PRIMARY KEY)")
			c.kill("1")
			c.kill("2")
			at := time.Now()
			c.writeConfig(c.config("0"), "0")
			for {
				if _, err := c.sql("0", "INSERT INTO q VALUES (1) ON CONFLICT DO NOTHING"); err == nil {
					break
				}
				if time.Since(at) > patience {
					b.Fatalf("survivor never writable")
				}
				time.Sleep(20 * time.Millisecond)
			}
			runs = append(runs, ms(time.Since(at)))
			c.stop("0")
		}
		reportSpread(b, runs, "reconfigure-to-write", "ms")
	}
}

var driverSeq atomic.Int64

// openDirect opens the cluster's controller database with go-dqlite's
// driver from the benchmark process, the way a controller's API server
// would, so the figure is Dqlite's and not the control socket's. It
// connects over TLS with controller 0's certificate (go-dqlite's own
// SimpleDialTLSConfig), as a process on that controller would.
func openDirect(b *testing.B, c *cluster, n int) *sql.DB {
	b.Helper()
	store := client.NewInmemNodeStore()
	var nodes []client.NodeInfo
	for _, id := range ids(n) {
		nodes = append(nodes, client.NodeInfo{Address: c.node(id).host + ":" + strconv.Itoa(dqlitePort)})
	}
	store.Set(context.Background(), nodes)
	m := c.material("0")
	drv, err := driver.New(store, driver.WithDialFunc(client.DialFuncWithTLS(client.DefaultDialFunc, app.SimpleDialTLSConfig(m.Cert, m.Pool))))
	if err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("dqlite-bench-%d", driverSeq.Add(1))
	sql.Register(name, drv)
	db, err := sql.Open(name, "controller")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// insertTx writes rows [from, to) one explicit transaction each.
func insertTx(b *testing.B, db *sql.DB, table string, from, to int) {
	b.Helper()
	payload := strings.Repeat("x", 100)
	for i := from; i < to; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		// The daemons' own writers (lease claims every few hundred ms)
		// share the database, and Dqlite answers a second writer with
		// "database is locked" at once: retry, as any client must.
		err := dbtx.Run(ctx, db, func(ctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO "+table+" (id, v) VALUES (?, ?) ON CONFLICT DO NOTHING", i, payload)
			return err
		})
		cancel()
		if err != nil {
			b.Fatalf("insert %d: %v", i, err)
		}
	}
}

// insertBatches writes rows [from, to) in explicit transactions of batch
// rows each (one multi-row INSERT per transaction).
func insertBatches(b *testing.B, db *sql.DB, table string, from, to, batch int) {
	b.Helper()
	payload := strings.Repeat("x", 100)
	for i := from; i < to; i += batch {
		n := min(batch, to-i)
		args := make([]any, 0, 2*n)
		for j := i; j < i+n; j++ {
			args = append(args, j, payload)
		}
		stmt := "INSERT INTO " + table + " (id, v) VALUES " + strings.TrimSuffix(strings.Repeat("(?, ?), ", n), ", ") + " ON CONFLICT DO NOTHING"
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := dbtx.Run(ctx, db, func(ctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, stmt, args...)
			return err
		})
		cancel()
		if err != nil {
			b.Fatalf("insert batch at %d: %v", i, err)
		}
	}
}

// BenchmarkWriteThroughputBatches measures 100-row transactions (one
// multi-row INSERT each, 100-byte rows) on 1 and 3 nodes, in rows/s.
func BenchmarkWriteThroughputBatches(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				c := newCluster(b)
				c.form(n)
				db := openDirect(b, c, n)
				if _, err := db.Exec("CREATE TABLE wb (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
					b.Fatal(err)
				}
				const rows = 10000
				var rates []float64
				for r := 0; r < 3; r++ {
					at := time.Now()
					insertBatches(b, db, "wb", r*rows, (r+1)*rows, 100)
					rates = append(rates, rows/time.Since(at).Seconds())
				}
				reportSpread(b, rates, "rows", "per-s")
			}
		})
	}
}

// BenchmarkWriteThroughput measures sequential single-row transactions
// (100-byte rows) on 1 and 3 nodes.
func BenchmarkWriteThroughput(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				c := newCluster(b)
				c.form(n)
				db := openDirect(b, c, n)
				if _, err := db.Exec("CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
					b.Fatal(err)
				}
				const rows = 1000
				var rates []float64
				for r := 0; r < 3; r++ {
					at := time.Now()
					insertTx(b, db, "w", r*rows, (r+1)*rows)
					rates = append(rates, rows/time.Since(at).Seconds())
				}
				reportSpread(b, rates, "tx", "per-s")
			}
		})
	}
}

func rssMB(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkRSS reports a single node's resident memory when idle, after
// 10,000 small single-row transactions and after 100,000 rows (the
// snapshot parameters bound the last two figures).
func BenchmarkRSS(b *testing.B) {
	for i := 0; i < b.N; i++ {
		c := newCluster(b)
		c.form(1)
		time.Sleep(2 * time.Second)
		pid := c.node("0").cmd.Process.Pid
		b.ReportMetric(rssMB(b, pid), "idle-MB")
		db := openDirect(b, c, 1)
		if _, err := db.Exec("CREATE TABLE m (id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
			b.Fatal(err)
		}
		insertTx(b, db, "m", 0, 10000)
		time.Sleep(2 * time.Second)
		b.ReportMetric(rssMB(b, pid), "after-10k-writes-MB")
		// 100,000 rows: the next 90,000 in 100-row transactions (as many
		// single-row ones would take minutes here).
		insertBatches(b, db, "m", 10000, 100000, 100)
		time.Sleep(2 * time.Second)
		b.ReportMetric(rssMB(b, pid), "after-100k-writes-MB")
	}
}

// waitNewHolder polls the running controllers until one other than old
// holds the singular-controller lease, and returns when it saw that.
func waitNewHolder(b *testing.B, c *cluster, old string) time.Time {
	b.Helper()
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		if held, _ := c.holders(); len(held) == 1 && held[0] != old {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatalf("no controller took the lease over from controller %s", old)
	return time.Time{}
}

// BenchmarkLeaseHolderFailover measures, on a 3-node cluster with the
// default lease timing (6 s duration, extended every 2 s), how long after
// the singular-controller holder dies another controller holds the lease:
// kill -9 (the lease must expire: duration minus the time since the last
// extension, plus at most one poll) and SIGTERM (the holder revokes, so
// the next claim succeeds at once).
func BenchmarkLeaseHolderFailover(b *testing.B) {
	for i := 0; i < b.N; i++ {
		c := newCluster(b)
		c.form(3)
		var kills, terms []float64
		for r := 0; r < 10; r++ {
			holder := c.waitOneHolder("")
			// A random phase against the holder's extensions (every 2 s):
			// the restarts below would otherwise line the kills up.
			time.Sleep(time.Duration(rand.Int64N(int64(2 * time.Second))))
			at := time.Now()
			if r%2 == 0 {
				c.kill(holder)
				kills = append(kills, ms(waitNewHolder(b, c, holder).Sub(at)))
			} else {
				// Measured from the signal, not from the exit: the
				// holder revokes before it hands over and closes.
				d := c.node(holder)
				d.expectExit()
				d.cmd.Process.Signal(syscall.SIGTERM)
				terms = append(terms, ms(waitNewHolder(b, c, holder).Sub(at)))
				<-d.exited
			}
			c.start(holder)
			c.waitState(holder, "running")
			c.waitRoles(holder, 3, 3, 0)
		}
		reportSpread(b, kills, "kill9-to-new-holder", "ms")
		reportSpread(b, terms, "sigterm-to-new-holder", "ms")
	}
}

// BenchmarkRemovalToRefused measures, on a 4-node cluster, the time from a
// unit's removal from every config to its certificate being refused at a
// remaining node's Dqlite port (a fresh connection every 10 ms), and to
// its established connection there being closed.
func BenchmarkRemovalToRefused(b *testing.B) {
	for i := 0; i < b.N; i++ {
		var refused, closed []float64
		for r := 0; r < 3; r++ {
			c := newCluster(b)
			c.form(4)
			gone := c.material("3")
			dial := client.DialFuncWithTLS(client.DefaultDialFunc, app.SimpleDialTLSConfig(gone.Cert, gone.Pool))
			addr := c.node("0").host + ":" + strconv.Itoa(dqlitePort)
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			held, err := client.New(ctx, addr, client.WithDialFunc(dial))
			if err != nil {
				b.Fatalf("controller 3's certificate refused before its removal: %v", err)
			}
			at := time.Now()
			c.writeConfig(c.config("0", "1", "2"), "0", "1", "2", "3")
			var refusedAt, closedAt time.Time
			for (refusedAt.IsZero() || closedAt.IsZero()) && ctx.Err() == nil {
				if refusedAt.IsZero() {
					cctx, ccancel := context.WithTimeout(ctx, time.Second)
					cli, err := client.New(cctx, addr, client.WithDialFunc(dial))
					if err == nil {
						_, err = cli.Leader(cctx)
						cli.Close()
					}
					ccancel()
					if err != nil {
						refusedAt = time.Now()
					}
				}
				if closedAt.IsZero() {
					cctx, ccancel := context.WithTimeout(ctx, time.Second)
					if _, err := held.Leader(cctx); err != nil {
						closedAt = time.Now()
					}
					ccancel()
				}
				time.Sleep(10 * time.Millisecond)
			}
			held.Close()
			cancel()
			// Two TLS bootstrap nodes cannot share a network namespace
			// (go-dqlite names the node's socket after its id): end this
			// cluster before the next.
			for _, id := range ids(4) {
				if c.node(id).running() {
					c.kill(id)
				}
			}
			if refusedAt.IsZero() || closedAt.IsZero() {
				b.Fatalf("controller 3 still trusted %s after its removal", patience)
			}
			refused = append(refused, ms(refusedAt.Sub(at)))
			closed = append(closed, ms(closedAt.Sub(at)))
		}
		b.ReportMetric(median(refused), "removal-to-refused-ms")
		b.ReportMetric(median(closed), "removal-to-closed-ms")
	}
}
