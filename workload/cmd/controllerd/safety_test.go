package main_test

// Scenarios that try to split the cluster or lose an acknowledged write
// with real processes: paused voters (SIGSTOP), wiped data dirs, nodes
// returning on old data while the survivor is down, a departing unit whose
// frozen config still lists itself, a reused address. The configs are the
// ones the charm writes: a departing unit's file stays as it was (the charm
// stops changing it, charm/peers.go), a dead machine's file is never
// rewritten.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// pause stops controller id's process (SIGSTOP): its sockets still accept
// connections (the kernel completes the handshake), it answers nothing.
func (c *cluster) pause(id string) {
	c.t.Helper()
	if err := c.node(id).cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		c.t.Fatalf("cannot pause controller %s: %v", id, err)
	}
}

func (c *cluster) resume(id string) {
	c.t.Helper()
	if err := c.node(id).cmd.Process.Signal(syscall.SIGCONT); err != nil {
		c.t.Fatalf("cannot resume controller %s: %v", id, err)
	}
}

// quickStatus is status with a short deadline (a paused daemon never
// answers).
func (c *cluster) quickStatus(id string) (control.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return control.NewClient(c.node(id).data).Status(ctx)
}

// monitorLeaders samples the running controllers' statuses and records
// the samples in which two different nodes each said they lead.
func (c *cluster) monitorLeaders(ids ...string) *monitor {
	return startMonitor(200*time.Millisecond, func() (string, bool) {
		var leaders []string
		for _, id := range ids {
			st, err := c.quickStatus(id)
			if err == nil && st.Leader != nil && st.NodeID != "" && st.Leader.NodeID == st.NodeID && st.Member {
				leaders = append(leaders, id+"="+st.NodeID)
			}
		}
		return fmt.Sprintf("%s %v", time.Now().Format("15:04:05.000"), leaders), len(leaders) > 1
	})
}

// persistent reports whether two leaders were seen in more than n
// consecutive-ish samples: a deposed leader may say so for one election
// timeout (300-600 ms) after its successor won, which is at most a couple
// of samples; a second cluster says so for good.
func persistent(both []string, n int) bool { return len(both) > n }

// Node 0's config lists only itself (the charm dropped the others) while
// the two other voters are paused for 6 s, not dead. Before the fix node 0
// counted the no-leader time from its last good pass and reconfigured
// itself as the sole voter within ~3 s although the old majority was alive
// (their sockets still accepted connections); it acknowledged writes alone,
// and when the pair resumed, they elected a leader of the old configuration:
// two leaders, and node 0's rows were truncated. Now no old voter that still
// accepts a connection or answers as a member is replaced: node 0 waits,
// and every row it acknowledged survives.
func TestForcedReconfigure_OldVotersPausedNotReplaced(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE p (id INTEGER PRIMARY KEY)")
	mon := c.monitorLeaders("0", "1", "2")
	c.pause("1")
	c.pause("2")
	c.writeConfig(c.config("0"), "0")
	paused := time.Now()

	// A writer through node 0 for the pause and a while after it.
	var (
		mu    sync.Mutex
		acked []int
	)
	stopW := make(chan struct{})
	doneW := make(chan struct{})
	go func() {
		defer close(doneW)
		for i := 1; ; i++ {
			select {
			case <-stopW:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := control.NewClient(c.node("0").data).SQL(ctx, fmt.Sprintf("INSERT INTO p VALUES (%d)", i))
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, i)
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	time.Sleep(6 * time.Second)
	reconfigured, early := c.node("0").lineAfter(paused, "reconfiguring this node as the sole voter")
	c.resume("1")
	c.resume("2")
	time.Sleep(4 * time.Second)
	close(stopW)
	<-doneW
	both := mon.finish()
	if early {
		t.Errorf("node 0 reconfigured itself as the sole voter %s after the pair was paused, while both still accepted connections", reconfigured.Sub(paused).Round(100*time.Millisecond))
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("rows acknowledged through node 0: %d", len(acked))
	var rows map[float64]bool
	c.waitFor("node 0 to read the table", func() (bool, string) {
		res, err := c.sql("0", "SELECT id FROM p")
		if err != nil {
			return false, err.Error()
		}
		rows = map[float64]bool{}
		for _, r := range res.Rows {
			rows[r[0].(float64)] = true
		}
		return true, ""
	})
	var lost []int
	for _, i := range acked {
		if !rows[float64(i)] {
			lost = append(lost, i)
		}
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d rows acknowledged by node 0 are gone: %v", len(lost), len(acked), lost)
	}
	if persistent(both, 3) {
		t.Errorf("two nodes said they lead in %d samples: %v", len(both), both)
	}
}

// The bootstrap unit's data dir is wiped (disk replaced, operator
// mistake) while the other two run on. Before the fix the only guard was
// the was-member marker inside that data dir: the node bootstrapped a
// second, empty cluster beside the real one. Now it asks the listed peers
// first, joins their cluster (its old node id, at the same address, is
// removed) and reads the old rows.
func TestBootstrap_WipedBootstrapNodeJoinsExistingCluster(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("1", "CREATE TABLE w (id INTEGER PRIMARY KEY)")
	c.mustSQL("1", "INSERT INTO w VALUES (1), (2), (3)")
	if err := c.stop("0"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(c.node("0").data); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	c.start("0")
	c.waitFor("node 0 to be a member of the one cluster of 3", func() (bool, string) {
		st, err := c.status("0")
		if err != nil {
			return false, err.Error()
		}
		other := c.mustStatus("1")
		if st.NodeID == bootstrapNodeID && len(st.Members) == 1 {
			return false, "node 0 bootstrapped a cluster of its own"
		}
		return st.State == "running" && st.Member && len(st.Members) == 3 && len(other.Members) == 3 &&
				st.Leader != nil && other.Leader != nil && st.Leader.NodeID == other.Leader.NodeID,
			fmt.Sprintf("node 0 %s (%s) node %s, %d members; node 1 sees %d", st.State, st.Message, st.NodeID, len(st.Members), len(other.Members))
	})
	// With the bootstrap id at its old address, a second cluster's node
	// is even taken for the old member by the others: a voter with no
	// memory of what it acknowledged.
	if _, ok := c.node("0").lineAfter(restarted, "action=bootstrap"); ok {
		t.Errorf("node 0 bootstrapped a new cluster on its wiped data dir")
	}
	if st := c.mustStatus("0"); st.NodeID == bootstrapNodeID {
		t.Errorf("node 0 runs with the bootstrap node id again: it did not join as a new node")
	}
	if n, err := c.count("0", "w"); err != nil || n != 3 {
		t.Fatalf("rows read through node 0 = %d, %v; want the 3 old rows", n, err)
	}
}

// Nodes 1 and 2 died; the survivor reconfigured itself as the sole voter
// and was stopped. The dead machines come back on their old data, their
// config files as they were (listing all three: nobody rewrote them), and
// the survivor starts 5 s after them. Before the fix their check "was I
// removed while away?" failed open at once (nobody answered) and asked only
// their own cluster.yaml: they started on old data, formed a majority of
// the old configuration, and the survivor's later write was at their mercy.
// Now they keep asking every address they know until a member answers;
// the survivor's configuration lacks them, so they wipe, and they do not
// rejoin (their config did not change since they were removed).
func TestRemovedWhileAway_SurvivorStartsAfterReturningPair(t *testing.T) {
	c := survivorOfKilledPair(t)
	if err := c.stop("0"); err != nil {
		t.Fatal(err)
	}
	c.start("1")
	c.start("2")
	time.Sleep(5 * time.Second)
	c.start("0")
	for _, id := range []string{"1", "2"} {
		st := c.waitState(id, "removed")
		if st.Member {
			t.Fatalf("controller %s came back as a member: %+v", id, st)
		}
	}
	c.waitState("0", "running")
	time.Sleep(3 * time.Second)
	st := c.mustStatus("0")
	if st.State != "running" || len(st.Members) != 1 {
		t.Fatalf("survivor after the old nodes came back: %s (%s), %d members", st.State, st.Message, len(st.Members))
	}
	if n, err := c.count("0", "z"); err != nil || n != 2 {
		t.Fatalf("rows after the old nodes came back = %d, %v (a rollback?)", n, err)
	}
	for _, id := range []string{"1", "2"} {
		if st := c.mustStatus(id); st.State != "removed" || st.Member {
			t.Fatalf("controller %s after removal: %s (%s)", id, st.State, st.Message)
		}
	}
}

// remove-unit of controller 2: the others' configs drop it, its own file
// stays as the charm froze it (still listing itself). Before the fix the
// daemon, found removed, wiped and rejoined as a new node because its
// config listed it, and was removed again, over and over. Now, once
// removed, it never rejoins at the same address until its config changes.
func TestDepartingUnit_FrozenConfigNeverRejoins(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.writeConfig(c.config("0", "1"), "0", "1")
	st := c.waitState("2", "removed")
	if st.Member {
		t.Fatalf("departed node says it is a member: %+v", st)
	}
	removedAt := time.Now()
	host := c.node("2").host + ":"
	for time.Since(removedAt) < 6*time.Second {
		for _, id := range []string{"0", "1"} {
			st, err := c.status(id)
			if err != nil {
				continue
			}
			for _, m := range st.Members {
				if strings.HasPrefix(m.Address, host) {
					t.Fatalf("the departed unit's node %s is a member again %s after its removal (its frozen config lists it)",
						m.NodeID, time.Since(removedAt).Round(100*time.Millisecond))
				}
			}
		}
		if st, err := c.status("2"); err == nil && st.State != "removed" {
			t.Fatalf("the departed unit went on to %s: %s", st.State, st.Message)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, ok := c.node("2").lineAfter(removedAt, "action=join"); ok {
		t.Fatalf("the departed unit decided to join again")
	}
}

// A non-bootstrap unit's data dir is wiped and its daemon restarted: it
// joins with a new node id at the address where its old node id is still a
// voter. Before the fix the leader matched members by address only (every
// member sat at a listed address, so nothing looked departed) and the join
// looped on "server address already in use" for ever. Now members are
// resolved by node id: the dead old id is removed and the node joins.
func TestAddressReuse_WipedNodeRejoinsOldIDRemoved(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE u (id INTEGER PRIMARY KEY)")
	c.mustSQL("0", "INSERT INTO u VALUES (1)")
	old := c.mustStatus("2").NodeID
	if err := c.stop("2"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(c.node("2").data); err != nil {
		t.Fatal(err)
	}
	c.start("2")
	c.waitFor("node 2 to be a member again with a new node id", func() (bool, string) {
		st, err := c.status("2")
		if err != nil {
			return false, err.Error()
		}
		lead := c.mustStatus("0")
		for _, m := range lead.Members {
			if m.NodeID == old {
				return false, fmt.Sprintf("old node id %s still a member; node 2 %s: %s", old, st.State, st.Message)
			}
		}
		return st.State == "running" && st.Member && st.NodeID != old && len(lead.Members) == 3,
			fmt.Sprintf("node 2 %s: %s; %d members", st.State, st.Message, len(lead.Members))
	})
	c.waitRoles("0", 3, 3, 0)
	if n, err := c.count("2", "u"); err != nil || n != 1 {
		t.Fatalf("rows read through the rejoined node = %d, %v", n, err)
	}
}

// The demo's step 5: the Dqlite leader's unit is removed from three (the
// others' configs drop it, its stop hook stops its daemon).
// Before the fix the survivors were voter + spare (go-dqlite's roles for
// fewer than 3 nodes): the spare is not replicated to, so the voter's
// machine dying would leave no copy, and 2 -> 1 recovery refused. Now the
// non-voter of a 2-member cluster is a stand-by, and a third member makes
// it 3 voters again.
func TestTwoMembers_NonVoterIsStandByThirdMakesThreeVoters(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	leader := c.leaderID("0")
	var keep []string
	for _, id := range ids(3) {
		if id != leader {
			keep = append(keep, id)
		}
	}
	// The departing unit's own file stays as it was; its stop hook stops
	// its daemon (SIGTERM: it hands over).
	c.writeConfig(c.config(keep...), keep...)
	if err := c.stop(leader); err != nil {
		t.Fatal(err)
	}
	st := c.waitRoles(keep[0], 2, 1, 1)
	for _, m := range st.Members {
		if m.Role == "spare" {
			t.Fatalf("a 2-member cluster has a spare: %+v", st.Members)
		}
	}
	// A new unit (controller 3) joins: three voters.
	all := append(append([]string{}, keep...), "3")
	c.writeConfig(c.config(all...), all...)
	c.start("3")
	c.waitRoles(keep[0], 3, 3, 0)
}

// A 5-node cluster (3 voters, 2 stand-bys) loses 2 voters at once (kill
// -9) and the charm lists the 3 survivors. Before the fix the survivors
// waited for ever: only a config listing one controller alone was ever
// recovered. Now the surviving voter, whose config lists no other old
// voter and whose other old voters are gone, forces a configuration of
// itself (voter) and the listed survivors (stand-bys hold replicated
// data): the cluster serves again with every row.
func TestRecover_FiveLoseTwoVotersListedSurvivorsServe(t *testing.T) {
	c := newCluster(t)
	c.form(5)
	c.mustSQL("0", "CREATE TABLE f5 (id INTEGER PRIMARY KEY)")
	for i := 0; i < 20; i++ {
		c.mustSQL(fmt.Sprint(i%5), fmt.Sprintf("INSERT INTO f5 VALUES (%d) ON CONFLICT DO NOTHING", i))
	}
	st := c.mustStatus("0")
	roleOf := map[string]string{}
	for _, m := range st.Members {
		for id, d := range c.nodes {
			if strings.HasPrefix(m.Address, d.host+":") {
				roleOf[id] = m.Role
			}
		}
	}
	var voters, standbys []string
	for _, id := range ids(5) {
		switch roleOf[id] {
		case "voter":
			voters = append(voters, id)
		case "stand-by":
			standbys = append(standbys, id)
		}
	}
	if len(voters) != 3 || len(standbys) != 2 {
		t.Fatalf("roles = %v", roleOf)
	}
	survivors := append([]string{voters[0]}, standbys...)
	c.kill(voters[1])
	c.kill(voters[2])
	lost := time.Now()
	c.writeConfig(c.config(survivors...), survivors...)
	for _, id := range survivors {
		c.waitFor("controller "+id+" to serve again", func() (bool, string) {
			st, err := c.status(id)
			if err != nil {
				return false, err.Error()
			}
			return st.State == "running" && st.Member && len(st.Members) == 3, fmt.Sprintf("%s: %s (%d members)", st.State, st.Message, len(st.Members))
		})
	}
	t.Logf("5 -> 3 recovery: survivors serve %s after 2 of 3 voters were killed", time.Since(lost).Round(100*time.Millisecond))
	c.waitRoles(survivors[0], 3, 3, 0)
	for _, id := range survivors {
		if n, err := c.count(id, "f5"); err != nil || n != 20 {
			t.Fatalf("controller %s reads %d rows, %v", id, n, err)
		}
	}
}

// Controller 2's machine dies and a new unit, controller 3, comes up on
// the same IP; the charm lists 0, 1 and 3. Before the fix the leader
// matched members to the config by address only: the dead node sat at a
// listed address, so nothing looked departed, and the new node's join
// looped on "server address already in use". Now members are resolved by
// node id through controller_node: the dead node of controller 2 is
// removed and controller 3 joins.
func TestAddressReuse_NewUnitOnDeadUnitsAddressJoins(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	old := c.mustStatus("2").NodeID
	c.kill("2")
	c.node("3").host = c.node("2").host
	// Its certificate names the address it is given, as the charm issues it.
	c.provision(c.node("3"))
	c.writeConfig(c.config("0", "1", "3"), "0", "1", "3")
	c.start("3")
	c.waitFor("controller 3 to be a member at the reused address", func() (bool, string) {
		st, err := c.status("3")
		if err != nil {
			return false, err.Error()
		}
		lead := c.mustStatus("0")
		for _, m := range lead.Members {
			if m.NodeID == old {
				return false, fmt.Sprintf("controller 2's node %s still a member; controller 3 %s: %s", old, st.State, st.Message)
			}
		}
		return st.State == "running" && st.Member && len(lead.Members) == 3, fmt.Sprintf("controller 3 %s: %s", st.State, st.Message)
	})
	c.waitRoles("0", 3, 3, 0)
}
