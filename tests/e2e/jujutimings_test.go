package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// The core scenarios under Juju's real timings (sim.JujuTimings: a
// one-minute leadership lease, hooks retried after 5 s): deploy 3, remove
// the Dqlite leader's unit and one more (scale 3 → 1), then a blocked
// multi-address unit healed by juju bind (its status names the binding
// to fix; afterwards every node serves in the bound space). Stricter still, update-status
// never runs here (a 5-minute interval could fall inside a slow run), so
// every step must converge on the hooks its operator verb fires. One
// model, to keep make test lean.
func TestJujuTimings_CoreScenarios(t *testing.T) {
	opts := sim.JujuTimings(sim.Options{
		Subnets:        []sim.SubnetSpec{{Name: "a0", Space: "alpha"}, {Name: "a1", Space: "alpha"}, {Name: "d", Space: "db"}},
		DefaultSubnets: []string{"a0", "d"},
	})
	opts.UpdateStatusInterval = 24 * time.Hour
	m := simtest.NewModel(t, opts)
	start := time.Now()
	step := func(what string) { t.Logf("%s (at %s)", what, time.Since(start).Round(time.Second)) }

	step("deploy -n 3")
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	v := simtest.WaitCluster(t, m)
	simtest.WaitActive(t, m)
	createTable(t, m, "dqlite-controller/0")
	insertRows(t, m, "dqlite-controller/0", 0, 10)

	dq := simtest.DqliteLeaderUnit(t, m, v)
	step("remove-unit " + dq + " (the Dqlite leader; Juju leader " + m.Status().Leader + ")")
	if err := m.RemoveUnit(dq, false); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	checkRowsEverywhere(t, m, 10)
	insertRows(t, m, simtest.Units(m)[0], 10, 10)

	victim := simtest.Units(m)[0]
	if victim == m.Status().Leader {
		victim = simtest.Units(m)[1]
	}
	step("remove-unit " + victim + " (2 → 1)")
	if err := m.RemoveUnit(victim, false); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	simtest.WaitActive(t, m)
	checkRowsEverywhere(t, m, 20)

	step("add-unit on a machine with two addresses in space alpha")
	names, err := m.AddUnit(1, sim.MachineSpec{Subnets: []string{"a0", "a1", "d"}})
	if err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	if u, _ := m.Status().Unit(names[0]); u.Workload != "blocked" || !strings.Contains(u.Message, "multiple possible DB bind addresses") || !strings.Contains(u.Message, "db-cluster") {
		t.Fatalf("%s: %s %q, want blocked on its two addresses", names[0], u.Workload, u.Message)
	}
	step("bind db-cluster=db")
	if err := m.Bind("db-cluster", "db"); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	v = simtest.WaitCluster(t, m)
	// Every node now serves on its machine's address in space db (the
	// last subnet of every machine here).
	st := m.Status()
	for un, s := range v.Nodes {
		u, _ := st.Unit(un)
		for _, mc := range st.Machines {
			if mc.ID == u.Machine && !strings.HasPrefix(s.Address, mc.Addresses[len(mc.Addresses)-1]+":") {
				t.Errorf("%s serves on %s, want its space-db address %s", un, s.Address, mc.Addresses[len(mc.Addresses)-1])
			}
		}
	}
	simtest.WaitActive(t, m)
	checkRowsEverywhere(t, m, 20)
	step("done")
}
