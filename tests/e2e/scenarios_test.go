package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/demo"
	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// The demo's steps (issue 4): deploy one, add two, write and read, remove
// the Dqlite leader, remove one more, multi-address unit healed by bind.
func TestDemo_NarratedSession(t *testing.T) {
	requireRoot(t)
	var out bytes.Buffer
	start := time.Now()
	err := demo.Run(context.Background(), demo.Config{CharmDir: simtest.CharmDir(t), Out: &out, NoSignalHandler: true, StepTimeout: 5 * time.Minute})
	t.Logf("demo output:\n%s", out.String())
	t.Logf("scenario took %s", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatal(err)
	}
}

func insertRows(t *testing.T, m *sim.Model, unit string, from, n int) {
	t.Helper()
	var vals []string
	for i := from; i < from+n; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 'row %d')", i, i))
	}
	// Idempotent, so a retry after an ambiguous failure is harmless.
	simtest.MustSQL(t, m, unit, "INSERT INTO t (id, note) VALUES "+strings.Join(vals, ", ")+" ON CONFLICT (id) DO NOTHING")
}

func createTable(t *testing.T, m *sim.Model, unit string) {
	t.Helper()
	simtest.MustSQL(t, m, unit, "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
}

func checkRowsEverywhere(t *testing.T, m *sim.Model, want int) {
	t.Helper()
	for _, u := range simtest.Units(m) {
		if got := simtest.CountRows(t, m, u, "t"); got != want {
			t.Fatalf("%s reads %d rows, want %d (a committed row was lost)", u, got, want)
		}
	}
}

// Scale 1 → 5 → 3 → 1 with writes at every size: no committed row is lost
// and every size settles into one cluster.
func TestScale_OneFiveThreeOne_NoCommittedRowLost(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	createTable(t, m, "dqlite-controller/0")
	insertRows(t, m, "dqlite-controller/0", 0, 10)
	rows := 10
	if _, err := m.AddUnit(4); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	insertRows(t, m, "dqlite-controller/3", rows, 10)
	rows += 10
	checkRowsEverywhere(t, m, rows)
	for _, target := range []int{3, 1} {
		for len(simtest.Units(m)) > target {
			us := simtest.Units(m)
			victim := us[len(us)-1]
			t.Logf("remove-unit %s (%d → %d units)", victim, len(us), len(us)-1)
			if err := m.RemoveUnit(victim, false); err != nil {
				t.Fatal(err)
			}
			simtest.WaitIdle(t, m)
		}
		simtest.WaitCluster(t, m)
		insertRows(t, m, simtest.Units(m)[0], rows, 10)
		rows += 10
		checkRowsEverywhere(t, m, rows)
	}
	simtest.WaitActive(t, m)
}

// restartDaemon restarts controllerd on a unit with the machine's systemctl
// (juju exec -- systemctl restart controllerd): a Dqlite leader hands its
// leadership over when stopped.
func restartDaemon(t *testing.T, m *sim.Model, unit string) {
	t.Helper()
	out, errOut, err := m.Exec(simtest.CtxFor(t, 2*time.Minute), unit, m.ToolsDir()+"/systemctl", "restart", "controllerd")
	if err != nil {
		t.Fatalf("systemctl restart controllerd on %s: %v: %s %s", unit, err, out, errOut)
	}
}

// moveDqliteLeaderOff makes sure the Dqlite leader is not on unit.
func moveDqliteLeaderOff(t *testing.T, m *sim.Model, unit string) {
	t.Helper()
	for i := 0; i < 5; i++ {
		v := simtest.WaitCluster(t, m)
		if simtest.DqliteLeaderUnit(t, m, v) != unit {
			return
		}
		restartDaemon(t, m, unit)
	}
	t.Fatalf("the Dqlite leader stays on %s after five restarts", unit)
}

// Remove the Juju leader unit (not the Dqlite leader), then the Dqlite
// leader (not the Juju leader): the cluster and its rows survive both.
func TestRemove_JujuLeaderThenDqliteLeader(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(4); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	createTable(t, m, "dqlite-controller/1")
	insertRows(t, m, "dqlite-controller/1", 0, 20)

	jujuLeader := m.Status().Leader
	moveDqliteLeaderOff(t, m, jujuLeader)
	t.Logf("remove-unit %s (the Juju leader, not the Dqlite leader)", jujuLeader)
	if err := m.RemoveUnit(jujuLeader, false); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	if l := m.Status().Leader; l == "" || l == jujuLeader {
		t.Fatalf("Juju leader after removal = %q", l)
	}
	simtest.WaitCluster(t, m)
	checkRowsEverywhere(t, m, 20)
	insertRows(t, m, simtest.Units(m)[0], 20, 5)

	jujuLeader = m.Status().Leader
	moveDqliteLeaderOff(t, m, jujuLeader)
	v := simtest.WaitCluster(t, m)
	dq := simtest.DqliteLeaderUnit(t, m, v)
	t.Logf("remove-unit %s (the Dqlite leader, not the Juju leader %s)", dq, jujuLeader)
	if err := m.RemoveUnit(dq, false); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	checkRowsEverywhere(t, m, 25)
	simtest.WaitActive(t, m)
}

// A hook SIGKILLed half-way (at its relation-set) leaves the unit in error;
// juju resolved retries it and the unit joins the cluster. The first
// relation-set a unit can make is in its relation-created hook: before
// that it is not in the relation's scope.
func TestKilledHook_RetriedAndUnitJoins(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{AutoRetryHooks: -1})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	m.KillHookAt("dqlite-controller/1", "db-cluster-relation-created", "relation-set")
	if _, err := m.AddUnit(1); err != nil {
		t.Fatal(err)
	}
	err := m.WaitFor(simtest.CtxFor(t, 2*time.Minute), "dqlite-controller/1 in error (its relation-created killed at relation-set)", func(st sim.Status) bool {
		u, _ := st.Unit("dqlite-controller/1")
		return u.Workload == "error"
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.RelationData("db-cluster")["dqlite-controller/1"]["db-bind-address"]; got != "" {
		t.Fatalf("the killed hook's relation data was committed: %q", got)
	}
	if err := m.Resolve("dqlite-controller/1"); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	simtest.WaitActive(t, m)
}

// IPv6-only subnets: the Dqlite port runs over TLS (Go owns the sockets;
// libdqlite 1.11.1 alone binds IPv4 only), so three units on an IPv6-only
// space form a 3-voter cluster and serve SQL.
func TestIPv6Only_ThreeVotersServeSQL(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{Subnets: []sim.SubnetSpec{{Name: "v6", Space: "alpha", IPv6: true}}})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	var v probe.View
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		v = probe.Look(context.Background(), m)
		return v.OneCluster(simtest.Units(m), 3, 3)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, m.StatusTable())
	}
	for _, u := range simtest.Units(m) {
		if addr := v.Nodes[u].Address; !strings.HasPrefix(addr, "[") {
			t.Fatalf("%s serves on %q, not an IPv6 address", u, addr)
		}
	}
	names := simtest.Units(m)
	simtest.MustSQL(t, m, names[0], "CREATE TABLE v6 (id INTEGER PRIMARY KEY)")
	simtest.MustSQL(t, m, names[1], "INSERT INTO v6 (id) VALUES (6)")
	if res := simtest.MustSQL(t, m, names[2], "SELECT count(*) FROM v6"); fmt.Sprint(res.Rows) != "[[1]]" {
		t.Fatalf("rows seen on %s: %v", names[2], res.Rows)
	}
	t.Logf("IPv6-only cluster:\n%s", m.StatusTable())
}

// A unit's machine dies (every process SIGKILLed): the survivors keep
// serving with quorum; juju remove-unit --force then drops it from the
// cluster, rows intact.
func TestKillMachine_SurvivorsServeThenForceRemoveShrinks(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	createTable(t, m, "dqlite-controller/0")
	insertRows(t, m, "dqlite-controller/0", 0, 10)
	if err := m.KillMachine("dqlite-controller/2"); err != nil {
		t.Fatal(err)
	}
	insertRows(t, m, "dqlite-controller/1", 10, 10)
	for _, u := range []string{"dqlite-controller/0", "dqlite-controller/1"} {
		if got := simtest.CountRows(t, m, u, "t"); got != 20 {
			t.Fatalf("%s reads %d rows with one machine dead, want 20", u, got)
		}
	}
	if err := m.RemoveUnit("dqlite-controller/2", true); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	checkRowsEverywhere(t, m, 20)
	simtest.WaitActive(t, m)
}
