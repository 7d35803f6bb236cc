package main_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/control"
	"golang.org/x/sys/unix"
)

// onTmpfs mounts a small tmpfs of its own on every listed controller's
// data dir (before it first starts), so that one node's disk can be
// filled without touching the others'.
func (c *cluster) onTmpfs(size string, ids ...string) {
	c.t.Helper()
	for _, id := range ids {
		dir := c.node(id).data
		if err := os.MkdirAll(dir, 0o700); err != nil {
			c.t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
			c.t.Fatalf("cannot mount a tmpfs on %s: %v: %s", dir, err, out)
		}
		c.t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	}
}

// superviseCrashesInC has the harness restart a daemon that crashes, as
// systemd does: libraft 0.15 may crash a node on a full disk, which is
// outside this project's code and is what the unit's Restart=always is
// for. A crash in Go code (a panic of ours) still fails the test; each
// crash is logged.
func superviseCrashesInC(t *testing.T, c *cluster) {
	c.superviseCrashes = true
	t.Cleanup(func() {
		for _, cr := range c.crashReports() {
			if cr.inC {
				t.Logf("restarted as systemd would: %s", cr)
			} else {
				t.Errorf("%s", cr)
			}
		}
	})
}

// fillDisk fills controller id's tmpfs to the last byte (fallocate) and
// returns the function that empties it again.
func (c *cluster) fillDisk(id string) (empty func()) {
	c.t.Helper()
	dir := c.node(id).data
	balloon := filepath.Join(dir, "balloon")
	f, err := os.Create(balloon)
	if err != nil {
		c.t.Fatal(err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		c.t.Fatal(err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	for free > 0 && unix.Fallocate(int(f.Fd()), 0, 0, free) != nil {
		free -= 4 << 10
	}
	f.Close()
	unix.Statfs(dir, &fs)
	c.t.Logf("filled controller %s's tmpfs with %d MiB (%d bytes left)", id, free>>20, int64(fs.Bavail)*fs.Bsize)
	return func() {
		if err := os.Remove(balloon); err != nil {
			c.t.Errorf("cannot empty controller %s's tmpfs: %v", id, err)
		}
	}
}

// nodeID is controller id's Dqlite node id as it reports it.
func (c *cluster) nodeID(id string) uint64 {
	c.t.Helper()
	n, err := strconv.ParseUint(c.mustStatus(id).NodeID, 10, 64)
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

// A follower whose disk filled up while the leader wrote: libraft 0.15
// keeps the entries it failed to store in its in-memory log but counts
// them as never stored, and writes later entries in their place on disk
// (docs/dqlite-behaviour.md "A full disk"; the Jepsen campaign's 14-minute
// outage came from such a node leading, and one restarted on that log
// crashed when it led again). Once its disk has room again, it must have
// itself replaced: removed through the leader, wiped, joined again as a
// new node (new id), with every row, and never leading on that log.
func TestFullDisk_FollowerIsReplaced(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (tmpfs) and CI is set")
		}
		t.Skip("skipped: needs root (tmpfs mounts)")
	}
	c := newCluster(t)
	superviseCrashesInC(t, c)
	ids := ids(3)
	c.onTmpfs("128m", ids...)
	c.form(3)
	leader := c.leaderID("0")
	var victim string
	for _, id := range ids {
		if id != leader {
			victim = id
			break
		}
	}
	oldID := c.nodeID(victim)
	c.mustSQL(leader, "CREATE TABLE IF NOT EXISTS fill (id INTEGER PRIMARY KEY, payload BLOB)")
	empty := c.fillDisk(victim)
	// About 400 KiB of WAL frames per write: the victim's open segment
	// and its prepared ones (8 MiB each) run out within 100 writes, and
	// preparing the next fails with ENOSPC. The leader and the third node
	// keep committing.
	for i := 0; i < 100; i++ {
		c.mustSQL(leader, fmt.Sprintf("INSERT INTO fill (id, payload) VALUES (%d, randomblob(400000))", i))
	}
	t.Logf("100 writes acknowledged through controller %s while controller %s's disk was full", leader, victim)
	if st := c.mustStatus(victim); !strings.Contains(st.Message, "may lack entries") {
		t.Errorf("controller %s's status does not say its log may lack entries: %s: %s", victim, st.State, st.Message)
	}
	empty()
	emptied := time.Now()
	c.waitFor("the victim replaced by a new node", func() (bool, string) {
		st, err := c.status(victim)
		if err != nil {
			return false, err.Error()
		}
		return st.Member && st.State == "running" && st.NodeID != strconv.FormatUint(oldID, 10), st.State + ": " + st.Message
	})
	t.Logf("controller %s replaced its node %d by %s, %s after the disk was emptied", victim, oldID, c.mustStatus(victim).NodeID, time.Since(emptied).Round(time.Millisecond))
	if _, ok := c.node(victim).lineAfter(emptied, "action=replace"); !ok {
		t.Errorf("controller %s's log does not record the replace decision", victim)
	}
	for _, id := range ids {
		c.writeUntilOK(id, fmt.Sprintf("INSERT INTO fill (id, payload) VALUES (%d, 'after') ON CONFLICT (id) DO NOTHING", 1000+int(id[0]-'0')))
	}
	for _, id := range ids {
		if n, err := c.count(id, "fill"); err != nil || n != 103 {
			t.Errorf("fill through controller %s has %d rows (%v); want the 100 written while the disk was full and 3 after", id, n, err)
		}
	}
	c.waitRoles(leader, 3, 3, 0)
	if st := c.mustStatus(victim); strings.Contains(st.Message, "may lack entries") {
		t.Errorf("controller %s's new node still says its log may lack entries: %s", victim, st.Message)
	}
}

// A leader whose own disk fills while it writes: libraft 0.15 rolls its
// on-disk index back over the appends that failed while its in-memory log
// keeps them (and has sent them to the followers), so the entries it
// writes once there is room again land at indices the followers hold other
// entries at, in the same term; the followers keep theirs and say they
// stored them, and the leader acknowledges writes no other node has
// (docs/dqlite-behaviour.md "A full disk"). Before the fix, the node
// handed its leadership over only once its disk had room again, and this
// test lost an acknowledged write: "acknowledged write 60 missing while
// controller 1 leads" (and 0 and 2). Now leadership leaves it while its
// disk is still full, and it has itself replaced once there is room, never
// leading on that log: also when controllerd is killed -9 on the full disk
// and restarted on it one second later, as systemd restarts a daemon that
// crashed (libraft 0.15 can crash a leader on a full disk: CI saw
// controller 0 exit within two seconds of the fill), then emptied. Every
// node in turn then leads and holds every acknowledged write and no failed
// one.
func TestFullDisk_LeaderDiskFillsAndEmpties(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (tmpfs) and CI is set")
		}
		t.Skip("skipped: needs root (tmpfs mounts)")
	}
	for _, killed := range []bool{false, true} {
		name := "emptied while it runs"
		if killed {
			name = "killed -9 on the full disk, restarted on it, then emptied"
		}
		t.Run(name, func(t *testing.T) { leaderDiskFillsAndEmpties(t, killed) })
	}
}

func leaderDiskFillsAndEmpties(t *testing.T, killed bool) {
	c := newCluster(t)
	superviseCrashesInC(t, c)
	ids := ids(3)
	c.onTmpfs("128m", ids...)
	c.form(3)
	victim := c.leaderID("0")
	oldID := c.nodeID(victim)
	c.mustSQL(victim, "CREATE TABLE IF NOT EXISTS fill (id INTEGER PRIMARY KEY, payload BLOB)")

	// Writes one at a time: acknowledged, failed (certainly not
	// applied) or of unknown outcome.
	outcome := map[int]string{}
	write := func(via string, id int) string {
		_, err := c.sql(via, fmt.Sprintf("INSERT INTO fill (id, payload) VALUES (%d, randomblob(400000))", id))
		switch {
		case err == nil:
			outcome[id] = "acked"
		case errors.Is(err, control.ErrOutcomeUnknown):
			outcome[id] = "unknown"
		default:
			outcome[id] = "failed"
		}
		return outcome[id]
	}
	filled := time.Now()
	empty := c.fillDisk(victim)
	// Through the leader until a write is not acknowledged at once (the
	// open and prepared segments hold a few dozen of these) or
	// leadership has left it.
	id := 0
	for ; id < 200; id++ {
		start := time.Now()
		if write(victim, id) != "acked" || time.Since(start) > 5*time.Second {
			break
		}
		if id%5 == 4 && c.leaderID(c.other(victim)) != victim {
			break
		}
	}
	t.Logf("%d writes through controller %s, the leader when its disk filled, until %s (last %s)", id+1, victim,
		map[bool]string{true: "the leadership left it", false: "one was not acknowledged at once"}[outcome[id] == "acked"], outcome[id])
	var restarted time.Time
	marked := false
	if killed {
		c.kill(victim)
		// The marker (raft-log-suspect) is there when the daemon saw its
		// disk short before the kill; then it must not start its node
		// on that log again.
		_, err := os.Stat(filepath.Join(c.node(victim).data, "raft-log-suspect"))
		marked = err == nil
		time.Sleep(time.Second) // systemd's RestartSec
		restarted = time.Now()
		c.start(victim)
		c.waitFor("controller "+victim+" answering on the full disk", func() (bool, string) {
			st, err := c.status(victim)
			if err != nil {
				return false, err.Error()
			}
			return true, st.State + ": " + st.Message
		})
		st := c.mustStatus(victim)
		t.Logf("controller %s restarted on its full disk: %s: %s", victim, st.State, st.Message)
	}
	empty()
	emptied := time.Now()
	for i := 0; i < 5; i++ {
		id++
		write(victim, id)
	}
	c.waitFor("controller "+victim+" replaced by a new node", func() (bool, string) {
		st, err := c.status(victim)
		if err != nil {
			return false, err.Error()
		}
		return st.Member && st.State == "running" && st.NodeID != strconv.FormatUint(oldID, 10), st.State + ": " + st.Message
	})
	t.Logf("controller %s replaced node %d by %s, %s after its disk was emptied", victim, oldID, c.mustStatus(victim).NodeID, time.Since(emptied).Round(time.Millisecond))
	if _, ok := c.node(victim).lineAfter(filled, "action=replace"); !ok {
		t.Errorf("controller %s's log does not record the replace decision", victim)
	}
	if marked {
		if _, ok := c.node(victim).lineAfter(restarted, "action=start-existing"); ok {
			t.Errorf("controller %s restarted its node on the log marked suspect", victim)
		}
	}
	c.waitRoles(c.other(victim), 3, 3, 0)

	counts := map[string]int{}
	for _, v := range outcome {
		counts[v]++
	}
	t.Logf("writes: %v", counts)
	for _, want := range ids {
		c.makeLeader(want)
		res := c.mustSQL(want, "SELECT id FROM fill ORDER BY id")
		have := map[int]bool{}
		for _, r := range res.Rows {
			have[int(r[0].(float64))] = true
		}
		for id, o := range outcome {
			switch {
			case o == "acked" && !have[id]:
				t.Errorf("acknowledged write %d missing while controller %s leads", id, want)
			case o == "failed" && have[id]:
				t.Errorf("failed write %d present while controller %s leads", id, want)
			}
		}
		t.Logf("controller %s leading: %d rows", want, len(have))
	}
}
