package main_test

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// remove-member --force of a voter whose process is frozen (SIGSTOP: its
// machine looks dead) while its controller is still listed: refused without
// --force, done with it; writes go on with the two others; when the frozen
// process wakes up on its old data it finds itself missing from the
// leader's configuration, wipes its node dir and rejoins as a new node (the
// config still lists it), never serving its stale state as a member.
func TestRemoveMember_ForcedRemovalOfAFrozenVoterNeverServesOldData(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE o (id INTEGER PRIMARY KEY)")
	c.mustSQL("0", "INSERT INTO o VALUES (1)")
	leader := c.leaderID("0")
	victim, asker := "", ""
	for _, id := range ids(3) {
		switch {
		case id == leader:
		case victim == "":
			victim = id
		default:
			asker = id
		}
	}
	old := c.mustStatus(victim).NodeID
	proc := c.node(victim).cmd.Process
	proc.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { proc.Signal(syscall.SIGCONT) })

	data := c.node(asker).data
	_, stderr, err := runCLI(t, "remove-member", "--data-dir", data, "--agent-id", victim)
	if !isExitCode(err, 1) || !strings.Contains(stderr, "is still in the db-cluster relation") {
		t.Fatalf("remove-member without --force: err %v, stderr %q", err, stderr)
	}
	_, stderr, err = runCLI(t, "remove-member", "--data-dir", data, "--address", c.node(leader).host)
	if !isExitCode(err, 1) || !strings.Contains(stderr, "is the Dqlite leader") {
		t.Fatalf("remove-member of the leader: err %v, stderr %q", err, stderr)
	}
	_, stderr, err = runCLI(t, "remove-member", "--data-dir", data, "--agent-id", asker, "--force")
	if !isExitCode(err, 1) || !strings.Contains(stderr, "is this controller's own node") {
		t.Fatalf("remove-member of the asking node itself: err %v, stderr %q", err, stderr)
	}
	stdout, stderr, err := runCLI(t, "remove-member", "--data-dir", data, "--agent-id", victim, "--force", "--format=json")
	if err != nil {
		t.Fatalf("remove-member --force: %v: %s", err, stderr)
	}
	var res control.RemoveMemberResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("cannot parse %q: %v", stdout, err)
	}
	if res.NodeID != old || res.ControllerID != victim || res.WasOnline {
		t.Fatalf("remove-member result %+v (old node %s)", res, old)
	}
	c.writeUntilOK(asker, "INSERT INTO o VALUES (2) ON CONFLICT DO NOTHING")

	proc.Signal(syscall.SIGCONT)
	c.waitFor("the woken node to rejoin as a new node", func() (bool, string) {
		st, err := c.status(victim)
		if err != nil {
			return false, err.Error()
		}
		return st.State == "running" && st.NodeID != old && st.NodeID != "", st.State + " " + st.NodeID
	})
	if _, ok := c.node(victim).lineAfter(time.Time{}, "is not in the Raft configuration"); !ok {
		t.Fatalf("the woken node did not report finding itself removed:\n%s", c.node(victim).logs())
	}
	if n, err := c.count(victim, "o"); err != nil || n != 2 {
		t.Fatalf("rows seen by the rejoined node = %d, %v", n, err)
	}
	_, stderr, err = runCLI(t, "remove-member", "--data-dir", data, "--agent-id", "99")
	if !isExitCode(err, 1) || !strings.Contains(stderr, "no member has agent id 99") {
		t.Fatalf("remove-member of an unknown id: err %v, stderr %q", err, stderr)
	}
}
