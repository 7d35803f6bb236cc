package simtest

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
)

// RunAction is `juju run <unit> <action> args...`, failing t when the
// action cannot be queued (Juju's parameter validation refused it).
func RunAction(t *testing.T, m *sim.Model, unit, action string, args ...string) *sim.ActionResult {
	t.Helper()
	res, err := m.RunAction(CtxFor(t, 5*time.Minute), unit, action, args...)
	if err != nil {
		t.Fatalf("juju run %s %s %v: %v", unit, action, args, err)
	}
	t.Logf("juju run %s %s %s:\n%s", unit, action, strings.Join(args, " "), res)
	return res
}

// WantFailed fails t unless the action failed with a message containing
// contains.
func WantFailed(t *testing.T, res *sim.ActionResult, contains string) {
	t.Helper()
	if res.Status != sim.ActionFailed || !strings.Contains(res.Message, contains) {
		t.Fatalf("%s: status %s, message %q; want failed with a message containing %q", res.Action, res.Status, res.Message, contains)
	}
}

// WantCompleted fails t unless the action completed.
func WantCompleted(t *testing.T, res *sim.ActionResult) {
	t.Helper()
	if res.Status != sim.ActionCompleted {
		t.Fatalf("%s: status %s, message %q, stderr %q; want completed", res.Action, res.Status, res.Message, res.Stderr)
	}
}

// RaftPosition is `controllerd raft-position --format=json` on a unit.
type RaftPosition struct {
	NodeID string `json:"node-id"`
	State  string `json:"state"`
	Role   string `json:"role"`
	Term   uint64 `json:"term"`
	Index  uint64 `json:"index"`
}

// Position runs `controllerd raft-position` on a unit.
func Position(t *testing.T, m *sim.Model, unit string) RaftPosition {
	t.Helper()
	out, stderr, err := m.Exec(CtxFor(t, 30*time.Second), unit, probe.Controllerd(m, unit), "raft-position", "--format=json")
	if err != nil {
		t.Fatalf("raft-position on %s: %v: %s", unit, err, stderr)
	}
	var p RaftPosition
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("raft-position on %s: %v: %s", unit, err, out)
	}
	return p
}

// WaitPublishedPositions waits until every given unit has published its
// Raft position in state no-quorum (db-raft-position in its db-cluster
// unit data, written at its next hook) and returns them.
func WaitPublishedPositions(t *testing.T, m *sim.Model, units []string) map[string]RaftPosition {
	t.Helper()
	out := map[string]RaftPosition{}
	err := probe.Eventually(CtxFor(t, 2*time.Minute), time.Second, func() error {
		data := m.RelationData("db-cluster")
		for _, u := range units {
			var p RaftPosition
			raw := data[u]["db-raft-position"]
			if json.Unmarshal([]byte(raw), &p) != nil || p.State != "no-quorum" {
				return fmt.Errorf("%s published %q", u, raw)
			}
			out[u] = p
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("published positions: %+v", out)
	return out
}

// RunRecovery runs recover-from-quorum-loss confirm=true on unit and
// returns its result, running it again while it refuses because a
// survivor "has not published its Raft position": the action reads the
// positions from its unit's view of the relation, which Juju's uniter
// refreshes for a remote unit only at that unit's relation-changed hook
// (worker/uniter/runner/context/cache.go), so the refusal is right and
// says to retry, and WaitPublishedPositions (the model's view) can be
// ahead of it.
func RunRecovery(t *testing.T, m *sim.Model, unit string) *sim.ActionResult {
	t.Helper()
	var res *sim.ActionResult
	err := probe.Eventually(CtxFor(t, 2*time.Minute), time.Second, func() error {
		res = RunAction(t, m, unit, "recover-from-quorum-loss", "confirm=true")
		if res.Status == sim.ActionFailed && strings.Contains(res.Message, "has not published its Raft position") {
			return fmt.Errorf("%s: %s", unit, res.Message)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// Split cuts the network between unit's machine and the machines of peers
// both ways (blackhole routes in each namespace, to the other side's
// addresses) while every unit agent still reaches the controller: a split
// between machines rather than a partition from Juju. One-way routes are
// not enough, as a node appends what it receives even when its answers are
// dropped. It returns the undo.
func Split(t *testing.T, m *sim.Model, unit string, peers []string) func() {
	t.Helper()
	st := m.Status()
	machine := func(u string) sim.MachineStatus {
		us, ok := st.Unit(u)
		if !ok {
			t.Fatalf("no unit %s", u)
		}
		for _, mc := range st.Machines {
			if mc.ID == us.Machine {
				return mc
			}
		}
		t.Fatalf("no machine for %s", u)
		return sim.MachineStatus{}
	}
	type route struct{ netns, to string }
	var added []route
	undo := func() {
		for _, r := range added {
			if out, err := exec.Command("ip", "-n", r.netns, "route", "del", "blackhole", r.to).CombinedOutput(); err != nil {
				t.Logf("cannot delete the blackhole route to %s in %s: %v: %s", r.to, r.netns, err, out)
			}
		}
		added = nil
		t.Logf("%s reaches %v again", unit, peers)
	}
	add := func(from, to sim.MachineStatus) {
		for _, a := range to.Addresses {
			if out, err := exec.Command("ip", "-n", from.NetNS, "route", "add", "blackhole", a).CombinedOutput(); err != nil {
				undo()
				t.Fatalf("cannot add a blackhole route to %s in %s: %v: %s", a, from.NetNS, err, out)
			}
			added = append(added, route{from.NetNS, a})
		}
	}
	self := machine(unit)
	for _, p := range peers {
		add(self, machine(p))
		add(machine(p), self)
	}
	t.Logf("%s and %v cannot reach each other any more", unit, peers)
	return undo
}

// KillMachines partitions, then kills, the machines of units: cut first,
// because a killed machine's network namespace outlives its processes and
// its kernel would retransmit a dead leader's last unacknowledged appends
// to a survivor.
func KillMachines(t *testing.T, m *sim.Model, units ...string) {
	t.Helper()
	for _, u := range units {
		if err := m.Partition(u, true); err != nil {
			t.Fatal(err)
		}
		if err := m.KillMachine(u); err != nil {
			t.Fatal(err)
		}
	}
}

// WaitOneCluster waits until exactly the given units form one cluster
// (Dqlite's voter count for their number).
func WaitOneCluster(t *testing.T, m *sim.Model, units []string, extra func(probe.View) error) probe.View {
	t.Helper()
	var v probe.View
	err := probe.Eventually(CtxFor(t, 3*time.Minute), time.Second, func() error {
		v = probe.Look(CtxFor(t, 30*time.Second), m)
		lo, hi := probe.VoterRange(len(units))
		if err := v.OneCluster(units, lo, hi); err != nil {
			return err
		}
		if extra != nil {
			return extra(v)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("units %v never formed one cluster: %v", units, err)
	}
	return v
}
