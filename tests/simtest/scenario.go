package simtest

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
)

// NewModel creates a simulated model running the built charm, with the
// scenarios' shortened timings unless opts sets them, and tears it down
// (dumping statuses and logs first if t failed) when t ends.
func NewModel(t *testing.T, opts sim.Options) *sim.Model {
	t.Helper()
	RequireRoot(t, "the end-to-end tests need root (network namespaces)")
	opts.CharmDir = CharmDir(t)
	opts.Logger = slog.New(slog.NewTextHandler(LogWriter{T: t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
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
			Dump(t, m)
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

// Dump logs the model's status table, every controllerd's status and the
// tail of every unit's and service's log.
func Dump(t *testing.T, m *sim.Model) {
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
		t.Logf("unit log of %s (tail):\n%s", u.Name, Tail(m.UnitLog(u.Name), 60))
		t.Logf("service log of %s (tail):\n%s", u.Name, Tail(m.ServiceLog(u.Name), 60))
	}
}

// Tail is the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// CtxFor is a context that ends after d or with t.
func CtxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// WaitIdle waits until no unit has a hook queued or running.
func WaitIdle(t *testing.T, m *sim.Model) {
	t.Helper()
	if err := m.WaitIdle(CtxFor(t, 3*time.Minute)); err != nil {
		t.Fatal(err)
	}
}

// Units are the model's unit names.
func Units(m *sim.Model) []string { return m.Status().UnitNames() }

// WaitActive waits until every unit's workload is active (statuses catch
// up with controllerd at the next hook, e.g. update-status).
func WaitActive(t *testing.T, m *sim.Model) {
	t.Helper()
	err := m.WaitFor(CtxFor(t, 2*time.Minute), "every unit active", func(st sim.Status) bool {
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

// WaitCluster waits until the live units form one cluster with the
// expected number of voters (Dqlite assigns up to three).
func WaitCluster(t *testing.T, m *sim.Model) probe.View {
	t.Helper()
	var v probe.View
	us := Units(m)
	// Generous: after a machine vanishes, survivors may need minutes
	// before connections to its address fail fast (kernel ARP/TCP timers).
	err := probe.Eventually(CtxFor(t, 5*time.Minute), time.Second, func() error {
		v = probe.Look(context.Background(), m)
		lo, hi := probe.VoterRange(len(us))
		return v.OneCluster(us, lo, hi)
	})
	if err != nil {
		t.Fatalf("units %v never formed one cluster: %v", us, err)
	}
	return v
}

// MustSQL runs stmt through unit, retrying for up to a minute.
func MustSQL(t *testing.T, m *sim.Model, unit, stmt string) probe.SQLResult {
	t.Helper()
	var res probe.SQLResult
	err := probe.Eventually(CtxFor(t, time.Minute), time.Second, func() error {
		var err error
		res, err = probe.SQL(context.Background(), m, unit, stmt)
		return err
	})
	if err != nil {
		t.Fatalf("sql %q on %s: %v", stmt, unit, err)
	}
	return res
}

// CountRows reads SELECT count(*) FROM table through a unit.
func CountRows(t *testing.T, m *sim.Model, unit, table string) int {
	t.Helper()
	res := MustSQL(t, m, unit, "SELECT count(*) FROM "+table)
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		t.Fatalf("count on %s: unexpected result %+v", unit, res)
	}
	return int(res.Rows[0][0].(float64))
}

// DqliteLeaderUnit is the unit whose address the nodes in v name as the
// Dqlite leader.
func DqliteLeaderUnit(t *testing.T, m *sim.Model, v probe.View) string {
	t.Helper()
	for _, s := range v.Nodes {
		if u := probe.UnitOfAddress(m, s.LeaderAddress()); u != "" {
			return u
		}
	}
	t.Fatalf("no unit holds the Dqlite leader's address")
	return ""
}
