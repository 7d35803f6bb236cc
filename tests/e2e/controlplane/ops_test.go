package controlplane_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// Three controllers: cluster-status lists them all online with their
// controller ids and the leader; create-backup run on a unit that does not
// hold the singular-controller lease is taken by the holder, and
// list-backups shows it on the holder's unit only; remove-member refuses a
// member whose unit is still in the relation, and a machine that died is
// removed with force=true, leaving one cluster of the two survivors.
func TestOps_ClusterStatusBackupsAndRemoveMember(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	v := simtest.WaitCluster(t, m)
	us := simtest.Units(m)
	holder := waitOneHolder(t, m, us)
	leader := simtest.DqliteLeaderUnit(t, m, v)

	res := simtest.RunAction(t, m, us[0], "cluster-status")
	simtest.WantCompleted(t, res)
	if !strings.HasPrefix(res.Results["summary"].(string), "3 members, 3 online") {
		t.Fatalf("summary = %q", res.Results["summary"])
	}
	members := res.Results["members"].(map[string]any)
	seen := map[string]bool{}
	for _, raw := range members {
		mem := raw.(map[string]any)
		if mem["online"] != "true" {
			t.Fatalf("member %v not online", mem)
		}
		seen[app+"/"+mem["controller-id"].(string)] = true
	}
	for _, u := range us {
		if !seen[u] {
			t.Fatalf("cluster-status members %v lack %s", members, u)
		}
	}
	if !strings.Contains(res.Results["leader"].(string), "(controller "+strings.TrimPrefix(leader, app+"/")+")") {
		t.Fatalf("leader = %q, want %s", res.Results["leader"], leader)
	}

	asker := others(us, holder)[0]
	res = simtest.RunAction(t, m, asker, "create-backup")
	simtest.WantCompleted(t, res)
	holderID := strings.TrimPrefix(holder, app+"/")
	if res.Results["controller-id"] != holderID {
		t.Fatalf("create-backup on %s was taken by controller %v, want the lease holder %s", asker, res.Results["controller-id"], holderID)
	}
	if n, _ := strconv.Atoi(res.Results["size"].(string)); n <= 0 {
		t.Fatalf("backup size %v", res.Results["size"])
	}
	id := res.Results["backup-id"].(string)
	list := simtest.RunAction(t, m, holder, "list-backups")
	simtest.WantCompleted(t, list)
	if !strings.Contains(list.Results["summary"].(string), id) {
		t.Fatalf("list-backups on the holder %s does not show %s:\n%s", holder, id, list.Results["summary"])
	}
	if list = simtest.RunAction(t, m, asker, "list-backups"); strings.Contains(list.Results["summary"].(string), id) {
		t.Fatalf("list-backups on %s shows the holder's backup %s", asker, id)
	}

	// Juju validates parameters before queueing (a string agent-id is not
	// an integer); the charm refuses what the schema cannot express.
	if _, err := m.RunAction(simtest.CtxFor(t, time.Minute), us[0], "remove-member", "agent-id=one"); err == nil {
		t.Fatal("a non-integer agent-id was queued")
	}
	simtest.WantFailed(t, simtest.RunAction(t, m, us[0], "remove-member"), "no member named")
	victim := others(us, leader)[0]
	if victim == us[0] {
		victim = others(us, leader)[1]
	}
	victimID := strings.TrimPrefix(victim, app+"/")
	if victim == leader || victim == us[0] {
		t.Fatalf("no victim: leader %s, asker %s", leader, us[0])
	}
	simtest.WantFailed(t, simtest.RunAction(t, m, us[0], "remove-member", "agent-id="+victimID), "still in the db-cluster relation")

	if err := m.KillMachine(victim); err != nil {
		t.Fatal(err)
	}
	simtest.WantFailed(t, simtest.RunAction(t, m, us[0], "remove-member", "agent-id="+victimID), "still in the db-cluster relation")
	res = simtest.RunAction(t, m, us[0], "remove-member", "agent-id="+victimID, "force=true")
	simtest.WantCompleted(t, res)
	if res.Results["controller-id"] != victimID || res.Results["role"] != "voter" {
		t.Fatalf("remove-member results %v", res.Results)
	}
	survivors := others(us, victim)
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		v := probe.Look(simtest.CtxFor(t, 30*time.Second), m)
		lo, hi := probe.VoterRange(len(survivors))
		return v.OneCluster(survivors, lo, hi)
	})
	if err != nil {
		t.Fatalf("after the forced removal: %v", err)
	}
	simtest.WantFailed(t, simtest.RunAction(t, m, us[0], "remove-member", "agent-id="+victimID, "force=true"), "no member has agent id "+victimID)
}

// raftIndex is `controllerd raft-position` on a unit: its log's last index.
func raftIndex(t *testing.T, m *sim.Model, unit string) uint64 {
	t.Helper()
	out, stderr, err := m.Exec(simtest.CtxFor(t, 30*time.Second), unit, probe.Controllerd(m, unit), "raft-position", "--format=json")
	if err != nil {
		t.Fatalf("raft-position on %s: %v: %s", unit, err, stderr)
	}
	var ri struct {
		Index uint64 `json:"index"`
	}
	if err := json.Unmarshal(out, &ri); err != nil {
		t.Fatalf("raft-position on %s: %v", unit, err)
	}
	return ri.Index
}

// 5 → 2 with stand-by survivors, one of them behind: stand-by B is cut off
// while ten more rows are written, stand-by A has caught up; then the three
// voters' machines die (the leader among them) and B's network comes back.
// recover-from-quorum-loss refuses without confirm and while a leader is
// reachable; after the loss both survivors publish their Raft position; run
// on B it names A, whose log is newer; run on A it makes A's node the only
// voter with every row, and B wipes its stale data and rejoins: exactly one
// cluster of the two survivors, all 30 rows on both.
func TestOps_RecoverFromQuorumLossFiveToTwo(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(5); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	v := simtest.WaitCluster(t, m)
	us := simtest.Units(m)
	simtest.MustSQL(t, m, us[0], "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	for i := 1; i <= 20; i++ {
		simtest.MustSQL(t, m, us[i%len(us)], "INSERT INTO t (id) VALUES ("+strconv.Itoa(i)+") ON CONFLICT DO NOTHING")
	}
	simtest.WantFailed(t, simtest.RunAction(t, m, us[0], "recover-from-quorum-loss"), "confirm=true is required")
	simtest.WantFailed(t, simtest.RunAction(t, m, us[0], "recover-from-quorum-loss", "confirm=true"), "a Dqlite leader is reachable")

	var voters, survivors []string
	for _, u := range us {
		if v.Nodes[u].Role == "voter" {
			voters = append(voters, u)
		} else {
			survivors = append(survivors, u)
		}
	}
	if len(voters) != 3 || len(survivors) != 2 {
		t.Fatalf("voters %v, others %v; want 3 and 2", voters, survivors)
	}
	best, behind := survivors[0], survivors[1]
	oldBehind := v.Nodes[behind].NodeID
	if err := m.Partition(behind, true); err != nil {
		t.Fatal(err)
	}
	for i := 21; i <= 30; i++ {
		simtest.MustSQL(t, m, voters[0], "INSERT INTO t (id) VALUES ("+strconv.Itoa(i)+") ON CONFLICT DO NOTHING")
	}
	// A stand-by is replicated to asynchronously: wait until best has the
	// leader's whole log, so that the rows are on a survivor at all.
	err := probe.Eventually(simtest.CtxFor(t, time.Minute), 200*time.Millisecond, func() error {
		if b, l := raftIndex(t, m, best), raftIndex(t, m, voters[0]); b < l {
			return fmt.Errorf("%s at index %d, %s at %d", best, b, voters[0], l)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("indexes before the voters die: %s %d (cut off), %s %d, leader-side %s %d", behind, raftIndex(t, m, behind), best, raftIndex(t, m, best), voters[0], raftIndex(t, m, voters[0]))
	for _, u := range voters {
		// Cut first: a killed machine's network namespace outlives its
		// processes, and its kernel would retransmit the leader's last
		// unacknowledged appends to the survivor once it is back.
		if err := m.Partition(u, true); err != nil {
			t.Fatal(err)
		}
		if err := m.KillMachine(u); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Partition(behind, false); err != nil {
		t.Fatal(err)
	}
	// Each survivor publishes its position at its next hook (update-status).
	positions := map[string]string{}
	err = probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		data := m.RelationData("db-cluster")
		for _, u := range survivors {
			p := data[u]["db-raft-position"]
			if !strings.Contains(p, `"state":"no-quorum"`) {
				return fmt.Errorf("%s published %q", u, p)
			}
			positions[u] = p
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("published positions: %v", positions)
	// RunRecovery retries while the unit's view of the relation lacks the
	// other survivor's position.
	simtest.WantFailed(t, simtest.RunRecovery(t, m, behind), "run recover-from-quorum-loss on its unit ("+best+") instead")

	res := simtest.RunRecovery(t, m, best)
	simtest.WantCompleted(t, res)
	if res.Results["survivors"] != strings.TrimPrefix(behind, app+"/") {
		t.Fatalf("survivors %v, want %s", res.Results["survivors"], behind)
	}
	if !strings.Contains(res.Results["summary"].(string), "juju remove-unit --force") {
		t.Fatalf("summary does not say what to do next: %q", res.Results["summary"])
	}
	err = probe.Eventually(simtest.CtxFor(t, 3*time.Minute), time.Second, func() error {
		v := probe.Look(simtest.CtxFor(t, 30*time.Second), m)
		lo, hi := probe.VoterRange(len(survivors))
		if err := v.OneCluster(survivors, lo, hi); err != nil {
			return err
		}
		if v.Nodes[behind].NodeID == oldBehind {
			return fmt.Errorf("%s still runs its old node %s", behind, oldBehind)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after the recovery: %v", err)
	}
	for _, u := range survivors {
		if n := simtest.CountRows(t, m, u, "t"); n != 30 {
			t.Fatalf("%s sees %d rows after the recovery, want 30", u, n)
		}
	}
	if !strings.Contains(m.ServiceLog(behind), "action=wipe") {
		t.Fatalf("%s never wiped its stale data:\n%s", behind, simtest.Tail(m.ServiceLog(behind), 40))
	}
}
