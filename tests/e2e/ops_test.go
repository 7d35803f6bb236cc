package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
)

// runAction is `juju run <unit> <action> args...`, failing the test when
// the action cannot be queued.
func runAction(t *testing.T, m *sim.Model, unit, action string, args ...string) *sim.ActionResult {
	t.Helper()
	res, err := m.RunAction(ctxFor(t, 5*time.Minute), unit, action, args...)
	if err != nil {
		t.Fatalf("juju run %s %s %v: %v", unit, action, args, err)
	}
	t.Logf("juju run %s %s %s:\n%s", unit, action, strings.Join(args, " "), res)
	return res
}

func wantFailed(t *testing.T, res *sim.ActionResult, contains string) {
	t.Helper()
	if res.Status != sim.ActionFailed || !strings.Contains(res.Message, contains) {
		t.Fatalf("%s: status %s, message %q; want failed with a message containing %q", res.Action, res.Status, res.Message, contains)
	}
}

func wantCompleted(t *testing.T, res *sim.ActionResult) {
	t.Helper()
	if res.Status != sim.ActionCompleted {
		t.Fatalf("%s: status %s, message %q, stderr %q; want completed", res.Action, res.Status, res.Message, res.Stderr)
	}
}

// Three controllers: cluster-status lists them all online with their
// controller ids and the leader; create-backup run on a unit that does not
// hold the singular-controller lease is taken by the holder, and
// list-backups shows it on the holder's unit only; remove-member refuses a
// member whose unit is still in the relation, and a machine that died is
// removed with force=true, leaving one cluster of the two survivors.
func TestOps_ClusterStatusBackupsAndRemoveMember(t *testing.T) {
	m := newModel(t, sim.Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	v := waitCluster(t, m)
	us := units(m)
	holder := waitOneHolder(t, m, us)
	leader := dqliteLeaderUnit(t, m, v)

	res := runAction(t, m, us[0], "cluster-status")
	wantCompleted(t, res)
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
	res = runAction(t, m, asker, "create-backup")
	wantCompleted(t, res)
	holderID := strings.TrimPrefix(holder, app+"/")
	if res.Results["controller-id"] != holderID {
		t.Fatalf("create-backup on %s was taken by controller %v, want the lease holder %s", asker, res.Results["controller-id"], holderID)
	}
	if n, _ := strconv.Atoi(res.Results["size"].(string)); n <= 0 {
		t.Fatalf("backup size %v", res.Results["size"])
	}
	id := res.Results["backup-id"].(string)
	list := runAction(t, m, holder, "list-backups")
	wantCompleted(t, list)
	if !strings.Contains(list.Results["summary"].(string), id) {
		t.Fatalf("list-backups on the holder %s does not show %s:\n%s", holder, id, list.Results["summary"])
	}
	if list = runAction(t, m, asker, "list-backups"); strings.Contains(list.Results["summary"].(string), id) {
		t.Fatalf("list-backups on %s shows the holder's backup %s", asker, id)
	}

	// Juju validates parameters before queueing (a string agent-id is not
	// an integer); the charm refuses what the schema cannot express.
	if _, err := m.RunAction(ctxFor(t, time.Minute), us[0], "remove-member", "agent-id=one"); err == nil {
		t.Fatal("a non-integer agent-id was queued")
	}
	wantFailed(t, runAction(t, m, us[0], "remove-member"), "no member named")
	victim := others(us, leader)[0]
	if victim == us[0] {
		victim = others(us, leader)[1]
	}
	victimID := strings.TrimPrefix(victim, app+"/")
	if victim == leader || victim == us[0] {
		t.Fatalf("no victim: leader %s, asker %s", leader, us[0])
	}
	wantFailed(t, runAction(t, m, us[0], "remove-member", "agent-id="+victimID), "still in the db-cluster relation")

	if err := m.KillMachine(victim); err != nil {
		t.Fatal(err)
	}
	wantFailed(t, runAction(t, m, us[0], "remove-member", "agent-id="+victimID), "still in the db-cluster relation")
	res = runAction(t, m, us[0], "remove-member", "agent-id="+victimID, "force=true")
	wantCompleted(t, res)
	if res.Results["controller-id"] != victimID || res.Results["role"] != "voter" {
		t.Fatalf("remove-member results %v", res.Results)
	}
	survivors := others(us, victim)
	err := probe.Eventually(ctxFor(t, 2*time.Minute), time.Second, func() error {
		v := probe.Look(ctxFor(t, 30*time.Second), m)
		lo, hi := probe.VoterRange(len(survivors))
		return v.OneCluster(survivors, lo, hi)
	})
	if err != nil {
		t.Fatalf("after the forced removal: %v", err)
	}
	wantFailed(t, runAction(t, m, us[0], "remove-member", "agent-id="+victimID, "force=true"), "no member has agent id "+victimID)
}
