// Package recovery_test runs recover-from-quorum-loss on the simulator in
// the cases the automatic 3 → 1 path does not cover (README "Operating the
// cluster"): two voters of three split apart, a survivor the cluster had
// demoted to spare, survivors re-bound to another space. Each asserts that
// the chosen survivor's rows are kept, that exactly one cluster remains and
// that the other survivors never serve their stale data.
package recovery_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

const app = "dqlite-controller"

func id(unit string) string { return strings.TrimPrefix(unit, app+"/") }

func without(us []string, drop ...string) []string {
	var out []string
	for _, u := range us {
		if !slices.Contains(drop, u) {
			out = append(out, u)
		}
	}
	return out
}

func insert(t *testing.T, m *sim.Model, unit string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		simtest.MustSQL(t, m, unit, "INSERT INTO t (id) VALUES ("+strconv.Itoa(i)+") ON CONFLICT DO NOTHING")
	}
}

// waitCaughtUp waits until unit's log reaches the leader's last index (a
// stand-by is replicated to asynchronously).
func waitCaughtUp(t *testing.T, m *sim.Model, unit, leader string) {
	t.Helper()
	err := probe.Eventually(simtest.CtxFor(t, time.Minute), 200*time.Millisecond, func() error {
		if u, l := simtest.Position(t, m, unit).Index, simtest.Position(t, m, leader).Index; u < l {
			return fmt.Errorf("%s at index %d, leader %s at %d", unit, u, leader, l)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// afterRecovery waits for exactly one cluster of the survivors, in which
// every other survivor runs a new node (it wiped its stale one), then reads
// the rows through each survivor: all of want, as the chosen one had them.
func afterRecovery(t *testing.T, m *sim.Model, chosen string, others []string, oldNodes map[string]string, want int) probe.View {
	t.Helper()
	survivors := append([]string{chosen}, others...)
	v := simtest.WaitOneCluster(t, m, survivors, func(v probe.View) error {
		for _, u := range others {
			if v.Nodes[u].NodeID == oldNodes[u] {
				return fmt.Errorf("%s still runs its old node %s", u, oldNodes[u])
			}
		}
		if v.Nodes[chosen].NodeID != oldNodes[chosen] {
			return fmt.Errorf("the chosen survivor %s runs node %s, not its own %s", chosen, v.Nodes[chosen].NodeID, oldNodes[chosen])
		}
		return nil
	})
	for _, u := range survivors {
		if n := simtest.CountRows(t, m, u, "t"); n != want {
			t.Fatalf("%s reads %d rows after the recovery, want the %d the chosen survivor %s had", u, n, want, chosen)
		}
	}
	for _, u := range others {
		if !strings.Contains(m.ServiceLog(u), "action=wipe") {
			t.Fatalf("%s never wiped its stale data:\n%s", u, simtest.Tail(m.ServiceLog(u), 40))
		}
	}
	return v
}

// Two voters of three survive but cannot reach each other: voter B is cut
// off from the other two machines (blackhole routes; its unit agent still
// reaches Juju) while rows 21-30 are committed by A and C, then C's
// machine dies. Neither survivor has a quorum, and each publishes its
// position. Run on B, whose log is behind, the recovery must refuse and
// name A even though A does not answer B; run on A it keeps all 30 rows,
// and once the split heals B wipes its 20-row log and rejoins.
func TestRecovery_TwoVotersOfThreeSplitApart(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	v := simtest.WaitCluster(t, m)
	us := simtest.Units(m)
	a := simtest.DqliteLeaderUnit(t, m, v)
	b, c := without(us, a)[0], without(us, a)[1]
	old := map[string]string{a: v.Nodes[a].NodeID, b: v.Nodes[b].NodeID}
	simtest.MustSQL(t, m, a, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	insert(t, m, a, 1, 20)
	waitCaughtUp(t, m, b, a)

	heal := simtest.Split(t, m, b, []string{a, c})
	insert(t, m, a, 21, 30)
	waitCaughtUp(t, m, c, a)
	simtest.KillMachines(t, m, c)

	pos := simtest.WaitPublishedPositions(t, m, []string{a, b})
	if pos[a].Index <= pos[b].Index {
		t.Fatalf("A (%s) at %+v is not ahead of the cut-off B (%s) at %+v", a, pos[a], b, pos[b])
	}
	simtest.WantFailed(t, simtest.RunRecovery(t, m, b),
		"run recover-from-quorum-loss on its unit ("+a+") instead")
	res := simtest.RunRecovery(t, m, a)
	simtest.WantCompleted(t, res)
	if res.Results["survivors"] != id(b) || res.Results["unreachable"] != id(c) {
		t.Fatalf("survivors %q, unreachable %q; want %s and %s", res.Results["survivors"], res.Results["unreachable"], id(b), id(c))
	}
	heal()
	afterRecovery(t, m, a, []string{b}, old, 30)
}

// A survivor the cluster demoted to spare: voter X's machine is cut off,
// Dqlite promotes a stand-by and demotes X to spare, rows 21-30 are
// written; then the three current voters die and X comes back, still
// believing it is a voter. The survivors are X (a spare, 20 rows) and the
// remaining stand-by S (30 rows). Run on X the recovery refuses and names
// S; run on S it keeps the 30 rows and X wipes and rejoins.
func TestRecovery_SpareSurvivorBehindIsNeverChosen(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(5); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	v := simtest.WaitCluster(t, m)
	us := simtest.Units(m)
	leader := simtest.DqliteLeaderUnit(t, m, v)
	old := map[string]string{}
	for _, u := range us {
		old[u] = v.Nodes[u].NodeID
	}
	var x string
	for _, u := range us {
		if u != leader && v.Nodes[u].Role == "voter" {
			x = u
			break
		}
	}
	simtest.MustSQL(t, m, leader, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	insert(t, m, leader, 1, 20)
	waitCaughtUp(t, m, x, leader)

	if err := m.Partition(x, true); err != nil {
		t.Fatal(err)
	}
	xAddr := v.Nodes[x].Address
	var voters []string
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		s, ok := probe.Look(simtest.CtxFor(t, 30*time.Second), m).Nodes[leader]
		if !ok {
			return fmt.Errorf("no status from %s", leader)
		}
		voters = voters[:0]
		xRole := ""
		for _, mem := range s.Members {
			if mem.Address == xAddr {
				xRole = mem.Role
			} else if mem.Role == "voter" {
				voters = append(voters, probe.UnitOfAddress(m, mem.Address))
			}
		}
		if xRole != "spare" || len(voters) != 3 {
			return fmt.Errorf("%s is %q, other voters %v", x, xRole, voters)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the cut-off voter was never demoted to spare: %v", err)
	}
	insert(t, m, leader, 21, 30)
	s := without(us, append(voters, x)...)
	if len(s) != 1 {
		t.Fatalf("voters %v, spare %s: want one stand-by left, have %v", voters, x, s)
	}
	standby := s[0]
	waitCaughtUp(t, m, standby, leader)
	simtest.KillMachines(t, m, voters...)
	if err := m.Partition(x, false); err != nil {
		t.Fatal(err)
	}

	pos := simtest.WaitPublishedPositions(t, m, []string{standby, x})
	if pos[standby].Index <= pos[x].Index {
		t.Fatalf("stand-by %s at %+v is not ahead of the spare %s at %+v", standby, pos[standby], x, pos[x])
	}
	simtest.WantFailed(t, simtest.RunRecovery(t, m, x),
		"run recover-from-quorum-loss on its unit ("+standby+") instead")
	res := simtest.RunRecovery(t, m, standby)
	simtest.WantCompleted(t, res)
	if res.Results["survivors"] != id(x) {
		t.Fatalf("survivors %q, want %s", res.Results["survivors"], id(x))
	}
	afterRecovery(t, m, standby, []string{x}, old, 30)
}

// Survivors at changed addresses: five machines with a NIC in space alpha
// (db-cluster's binding) and one in beta; the three voters die, then the
// operator moves db-cluster to beta (juju bind), so the survivors' config
// gives them new addresses while their nodes still run at the old ones.
// The recovery on the more up-to-date stand-by must count the other as a
// survivor (not as gone), and afterwards one cluster of the two serves at
// the beta addresses with every row.
func TestRecovery_SurvivorsAtChangedAddresses(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{
		Subnets:        []sim.SubnetSpec{{Name: "net0", Space: "alpha"}, {Name: "net1", Space: "beta"}},
		DefaultSubnets: []string{"net0", "net1"},
		Bindings:       map[string]string{"db-cluster": "alpha"},
	})
	if _, err := m.Deploy(5); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	v := simtest.WaitCluster(t, m)
	us := simtest.Units(m)
	leader := simtest.DqliteLeaderUnit(t, m, v)
	old := map[string]string{}
	var voters, standbys []string
	for _, u := range us {
		old[u] = v.Nodes[u].NodeID
		if v.Nodes[u].Role == "voter" {
			voters = append(voters, u)
		} else {
			standbys = append(standbys, u)
		}
	}
	if len(voters) != 3 || len(standbys) != 2 {
		t.Fatalf("voters %v, others %v; want 3 and 2", voters, standbys)
	}
	simtest.MustSQL(t, m, leader, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	insert(t, m, leader, 1, 20)
	for _, u := range standbys {
		waitCaughtUp(t, m, u, leader)
	}
	simtest.KillMachines(t, m, voters...)
	if err := m.Bind("db-cluster", "beta"); err != nil {
		t.Fatal(err)
	}
	beta := map[string]string{}
	st := m.Status()
	for _, u := range standbys {
		us, _ := st.Unit(u)
		for _, mc := range st.Machines {
			if mc.ID == us.Machine {
				beta[u] = mc.Addresses[1]
			}
		}
	}
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		list := m.RelationData("db-cluster")[app]["db-bind-addresses"]
		for _, u := range standbys {
			if !strings.Contains(list, `"`+beta[u]+`"`) {
				return fmt.Errorf("db-bind-addresses %s lacks %s's beta address %s", list, u, beta[u])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pos := simtest.WaitPublishedPositions(t, m, standbys)
	chosen, other := standbys[0], standbys[1]
	if pos[other].Index > pos[chosen].Index {
		chosen, other = other, chosen
	}
	res := simtest.RunRecovery(t, m, chosen)
	simtest.WantCompleted(t, res)
	if res.Results["survivors"] != id(other) {
		t.Fatalf("survivors %q, unreachable %q: %s, alive at its old address, is not counted as a survivor", res.Results["survivors"], res.Results["unreachable"], other)
	}
	v = afterRecovery(t, m, chosen, []string{other}, old, 20)
	for _, u := range standbys {
		if want := beta[u] + ":17666"; v.Nodes[u].Address != want {
			t.Fatalf("%s serves at %s after the recovery, want its beta address %s", u, v.Nodes[u].Address, want)
		}
	}
}
