// Package e2e runs the built charm (build/charm, unchanged) and its real
// controllerd on simulated machines (tests/sim), scenario by scenario.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

const app = "dqlite-controller"

func requireRoot(t *testing.T) {
	simtest.RequireRoot(t, "the end-to-end tests need root (network namespaces)")
}

func charmDir(t *testing.T) string { return simtest.CharmDir(t) }

// logWriter sends the simulator's log to the test.
type logWriter = simtest.LogWriter

func newModel(t *testing.T, opts sim.Options) *sim.Model {
	t.Helper()
	requireRoot(t)
	opts.CharmDir = charmDir(t)
	opts.Logger = slog.New(slog.NewTextHandler(logWriter{T: t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts.NoSignalHandler = true
	// DQC_KEEP_RUN=1 keeps the machines' files and logs for a post-mortem.
	opts.KeepRunDir = os.Getenv("DQC_KEEP_RUN") != ""
	if opts.LeaseExpiry == 0 {
		opts.LeaseExpiry = 2 * time.Second
	}
	if opts.AutoRetryHooks == 0 {
		// Juju's default model config automatically-retry-hooks=true
		// retries a failed hook after 5 s at first.
		opts.AutoRetryHooks = 5 * time.Second
	}
	if opts.UpdateStatusInterval == 0 {
		// Juju's default is 5 minutes; the charm's status catches up with
		// controllerd at the next hook, so the scenarios shorten it.
		opts.UpdateStatusInterval = 5 * time.Second
	}
	m, err := sim.New(opts)
	if err != nil {
		t.Fatalf("cannot create model: %v", err)
	}
	start := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			dump(t, m)
		}
		if err := m.Close(); err != nil {
			t.Errorf("cannot tear down model: %v", err)
		}
		if opts.KeepRunDir {
			t.Logf("run directory kept: %s", m.RunDir())
		}
		t.Logf("scenario took %s", time.Since(start).Round(time.Second))
	})
	return m
}

func dump(t *testing.T, m *sim.Model) {
	t.Logf("status:\n%s", m.StatusTable())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := probe.Look(ctx, m)
	for u, s := range v.Nodes {
		t.Logf("controllerd status on %s: %+v", u, s)
	}
	for u, err := range v.Errors {
		t.Logf("controllerd status on %s: %v", u, err)
	}
	for _, u := range m.Status().Units {
		t.Logf("unit log of %s (tail):\n%s", u.Name, tail(m.UnitLog(u.Name), 60))
		t.Logf("service log of %s (tail):\n%s", u.Name, tail(m.ServiceLog(u.Name), 60))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitIdle(t *testing.T, m *sim.Model) {
	t.Helper()
	if err := m.WaitIdle(ctxFor(t, 3*time.Minute)); err != nil {
		t.Fatal(err)
	}
}

func units(m *sim.Model) []string { return m.Status().UnitNames() }

// waitActive waits until every unit's workload is active (statuses catch
// up with controllerd at the next hook, e.g. update-status).
func waitActive(t *testing.T, m *sim.Model) {
	t.Helper()
	err := m.WaitFor(ctxFor(t, 2*time.Minute), "every unit active", func(st sim.Status) bool {
		for _, u := range st.Units {
			if u.Workload != "active" {
				return false
			}
		}
		return len(st.Units) > 0
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitCluster waits until the live units form one cluster with the expected
// number of voters (Dqlite assigns up to three).
func waitCluster(t *testing.T, m *sim.Model) probe.View {
	t.Helper()
	var v probe.View
	us := units(m)
	// Generous: after a machine vanishes, survivors may need minutes
	// before connections to its address fail fast (kernel ARP/TCP timers).
	err := probe.Eventually(ctxFor(t, 5*time.Minute), time.Second, func() error {
		v = probe.Look(context.Background(), m)
		lo, hi := probe.VoterRange(len(us))
		return v.OneCluster(us, lo, hi)
	})
	if err != nil {
		t.Fatalf("units %v never formed one cluster: %v", us, err)
	}
	return v
}

func mustSQL(t *testing.T, m *sim.Model, unit, stmt string) probe.SQLResult {
	t.Helper()
	var res probe.SQLResult
	err := probe.Eventually(ctxFor(t, time.Minute), time.Second, func() error {
		var err error
		res, err = probe.SQL(context.Background(), m, unit, stmt)
		return err
	})
	if err != nil {
		t.Fatalf("sql %q on %s: %v", stmt, unit, err)
	}
	return res
}

// countRows reads SELECT count(*) FROM t through a unit.
func countRows(t *testing.T, m *sim.Model, unit string) int {
	t.Helper()
	res := mustSQL(t, m, unit, "SELECT count(*) FROM t")
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		t.Fatalf("count on %s: unexpected result %+v", unit, res)
	}
	return int(res.Rows[0][0].(float64))
}

func dqliteLeaderUnit(t *testing.T, m *sim.Model, v probe.View) string {
	t.Helper()
	for _, s := range v.Nodes {
		if u := probe.UnitOfAddress(m, s.LeaderAddress()); u != "" {
			return u
		}
	}
	t.Fatalf("no unit holds the Dqlite leader's address")
	return ""
}

var _ = fmt.Sprintf
