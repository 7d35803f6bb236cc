package node

import (
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/client"
)

// followingDaemon is controller 0's daemon whose node 1 follows node 2 in
// the given configuration, ready and running.
func followingDaemon(t *testing.T, members []client.NodeInfo) (*Daemon, *fakeEngine, *fakeLeader) {
	t.Helper()
	var stuckDB atomic.Bool
	d, e := newFakeDaemon(t, conf("0", "10.9.0.1", "1", "10.9.0.2", "2", "10.9.0.3"), true)
	e.openDB = func() (*sql.DB, error) { return sql.OpenDB(probeConnector{stuck: &stuckDB}), nil }
	leader := &fakeLeader{}
	e.observe = func() (*Observation, error) {
		return &Observation{Leader: client.NodeInfo{ID: 2, Address: addr1}, Members: members, Client: leader}, nil
	}
	e.set(addr1, Answer{Accepted: true, Answered: true, Leader: client.NodeInfo{ID: 2, Address: addr1}, Members: members})
	d.watchCtx = t.Context()
	d.passes(1)
	if d.run == nil {
		t.Fatalf("node not started: %s: %s", d.state, d.message)
	}
	d.run.started = true
	d.passes(1)
	if d.state != StateRunning {
		t.Fatalf("state %s: %s", d.state, d.message)
	}
	return d, e, leader
}

// A follower whose data dir ran short of space (so its Raft log may lack
// entries, libraft 0.15) has itself replaced once space is back: removed
// through the leader, its node dir wiped, marked to rejoin as a new node.
// The marker written meanwhile makes a restarted controllerd remember.
func TestTransition_SuspectLogIsReplacedThroughTheLeader(t *testing.T) {
	d, _, leader := followingDaemon(t, threeVoters())
	d.commitNote.diskLowAt = time.Now().Add(-time.Minute) // as noteDisk sets it
	d.passes(1)
	if len(leader.removes) != 1 || leader.removes[0] != 1 {
		t.Fatalf("removes = %v, want node 1 removed through the leader (%s: %s)", leader.removes, d.state, d.message)
	}
	if d.state != StateRemoved || d.run != nil || fileExists(filepath.Join(d.nodeDir, "info.yaml")) {
		t.Fatalf("after the removal: state %s (%s), run %v, node dir kept: %v", d.state, d.message, d.run != nil, fileExists(filepath.Join(d.nodeDir, "info.yaml")))
	}
	if fileExists(filepath.Join(d.o.DataDir, suspectLogName)) {
		t.Errorf("the suspect-log marker outlived the data it described")
	}
}

// With only one other voter, the node is kept (that voter alone would
// hold the cluster), and the status says why and what to do.
func TestTransition_SuspectLogKeptWithOneOtherVoter(t *testing.T) {
	two := []client.NodeInfo{{ID: 1, Address: addr0, Role: client.Voter}, {ID: 2, Address: addr1, Role: client.Voter}, {ID: 3, Address: addr2, Role: client.Spare}}
	d, _, leader := followingDaemon(t, two)
	d.commitNote.diskLowAt = time.Now().Add(-time.Minute)
	d.passes(3)
	if len(leader.removes) != 0 || d.state != StateRunning {
		t.Fatalf("removed with one other voter: %v (%s: %s)", leader.removes, d.state, d.message)
	}
	if !strings.Contains(d.message, "not replacing it while the cluster has 1 other voter(s)") {
		t.Errorf("status does not say why: %s", d.message)
	}
	if !fileExists(filepath.Join(d.o.DataDir, suspectLogName)) {
		t.Errorf("no marker written once space was back")
	}
	// A restarted controllerd reads the marker back.
	d2, _ := newFakeDaemon(t, conf("0", "10.9.0.1"), false)
	d2.o.DataDir = d.o.DataDir
	d2.loadSuspectLog()
	if d2.commitNote.diskLowAt.IsZero() {
		t.Errorf("the marker was not read back after a restart")
	}
	if _, err := os.Stat(filepath.Join(d.o.DataDir, suspectLogName)); err != nil {
		t.Fatal(err)
	}
}

// A leader whose data dir runs short of space hands the leadership over
// at once, while its disk is still full: once there is room again a
// libraft 0.15 leader writes new entries at indices its followers hold
// others at, and commits a write no other node has.
func TestTransition_LeaderShortOfSpaceHandsOverBeforeRoomReturns(t *testing.T) {
	d, e, leader := leadingDaemon(t, false)
	d.freeSpace = func(string) (uint64, error) { return 1 << 20, nil } // full
	d.passes(1)
	if d.commitNote.diskLowAt.IsZero() {
		t.Fatal("the full disk was not noted")
	}
	e.mu.Lock()
	handovers := e.handovers
	e.mu.Unlock()
	if handovers == 0 {
		t.Fatalf("a leader on a full disk kept its leadership (%s: %s)", d.state, d.message)
	}
	if len(leader.removes) != 0 {
		t.Errorf("removed itself while its disk had no room for a new node: %v", leader.removes)
	}
}

// The marker reaches the data dir when the disk runs short, without room
// for a new file: the file prepared while there was room is renamed, so a
// controllerd killed before the disk empties knows after its restart.
func TestTransition_SuspectMarkerRecordedWhileTheDiskIsFull(t *testing.T) {
	d, _, _ := followingDaemon(t, []client.NodeInfo{{ID: 1, Address: addr0, Role: client.Voter}, {ID: 2, Address: addr1, Role: client.Voter}})
	if !fileExists(filepath.Join(d.o.DataDir, suspectMarkerReadyName)) {
		t.Fatal("no marker prepared while there was room")
	}
	d.freeSpace = func(string) (uint64, error) { return 0, nil }
	d.passes(1)
	if fileExists(filepath.Join(d.o.DataDir, suspectMarkerReadyName)) {
		t.Error("the prepared file is still there: the marker was not made by a rename")
	}
	fi, err := os.Stat(filepath.Join(d.o.DataDir, suspectLogName))
	if err != nil {
		t.Fatalf("no marker on the full disk: %v", err)
	}
	if !fi.ModTime().Equal(d.commitNote.diskLowAt) {
		t.Errorf("marker dated %s, want %s (when the disk was seen short)", fi.ModTime(), d.commitNote.diskLowAt)
	}
	d2, _ := newFakeDaemon(t, conf("0", "10.9.0.1"), false)
	d2.o.DataDir = d.o.DataDir
	d2.loadSuspectLog()
	if d2.commitNote.diskLowAt.IsZero() {
		t.Errorf("a restarted controllerd does not know its log is suspect")
	}
}

// controllerd restarted (after a crash or kill -9 on the full disk) with
// the marker in its data dir does not start the node on that log when a
// leader with two other voters answers and there is room: it has the node
// removed through that leader and wipes it, so that the node cannot lead
// on the shifted log before its first pass. Without room it does not start
// at all (libraft crashed each time it did) and the status says to free
// space.
func TestTransition_SuspectNodeRestartedIsReplacedWithoutStarting(t *testing.T) {
	for _, room := range []bool{true, false} {
		d, e := newFakeDaemon(t, conf("0", "10.9.0.1", "1", "10.9.0.2", "2", "10.9.0.3"), true)
		free := uint64(1 << 20)
		if room {
			free = 1 << 30
		}
		d.freeSpace = func(string) (uint64, error) { return free, nil }
		os.WriteFile(filepath.Join(d.o.DataDir, suspectLogName), nil, 0o600)
		d.loadSuspectLog()
		e.set(addr1, Answer{Accepted: true, Answered: true, Leader: client.NodeInfo{ID: 2, Address: addr1}, Members: threeVoters()})
		d.passes(1)
		if !room {
			if len(e.removes) != 0 || len(e.started) != 0 || d.state != StateWaiting || !strings.Contains(d.message, "free at least 32 MiB there") {
				t.Fatalf("without room: removes %v, starts %v, state %s (%s); want it waiting, saying to free space", e.removes, e.started, d.state, d.message)
			}
			continue
		}
		if len(e.started) != 0 {
			t.Fatalf("the node was started on its suspect log: %v (%s: %s)", e.started, d.state, d.message)
		}
		if len(e.removes) != 1 || e.removes[0] != "1 via "+addr1 {
			t.Fatalf("removes = %v, want node 1 removed through the leader %s", e.removes, addr1)
		}
		if d.state != StateRemoved || fileExists(filepath.Join(d.nodeDir, "info.yaml")) || fileExists(filepath.Join(d.o.DataDir, suspectLogName)) {
			t.Fatalf("after the removal: state %s (%s), node dir kept %v, marker kept %v", d.state, d.message,
				fileExists(filepath.Join(d.nodeDir, "info.yaml")), fileExists(filepath.Join(d.o.DataDir, suspectLogName)))
		}
	}
}
