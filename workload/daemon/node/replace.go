package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/canonical/go-dqlite/client"
)

// A node whose data dir ran short of space may hold a Raft log with
// entries missing and later ones written in their place (libraft 0.15,
// docs/dqlite-behaviour.md#a-full-disk): it counts those entries as never
// stored, so it cannot commit once it leads, and restarted on that log it
// crashed each time it led again, and may serve a state that differs from
// the cluster's. Its data dir cannot be repaired, only replaced: once
// space is back and it follows a leader that keeps a majority of voters
// without it, it asks that leader to remove it, wipes, and joins again as
// a new node (becomeReplacing).

// suspectLogName marks a data dir whose node ran short of space, so that
// the knowledge survives a restart of controllerd (renamed from a file
// prepared while there was room: a full disk cannot take a new one).
const suspectLogName = "raft-log-suspect"

// suspectMarkerReadyName is the empty file that becomes the marker by a
// rename when the disk runs short (noteDisk).
const suspectMarkerReadyName = suspectLogName + ".ready"

// prepareSuspectMarker creates the empty file that markSuspectLog renames
// into the marker (in the data dir, once it exists).
func (d *Daemon) prepareSuspectMarker() {
	f, err := os.OpenFile(filepath.Join(d.o.DataDir, suspectMarkerReadyName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return // no data dir yet: the next pass tries again
	}
	f.Close()
	d.commitNote.markerReady = true
}

// markSuspectLog turns the prepared file into the marker, dated when the
// disk was first seen short. Without it (the data dir was wiped since) the
// marker is written once there is room (recordSuspectLog).
func (d *Daemon) markSuspectLog() {
	d.commitNote.markerReady = false
	path := filepath.Join(d.o.DataDir, suspectLogName)
	if err := os.Rename(filepath.Join(d.o.DataDir, suspectMarkerReadyName), path); err != nil {
		d.log.Warn("cannot record the suspect Raft log in the data dir yet; it is recorded once there is room", "err", err)
		return
	}
	os.Chtimes(path, d.commitNote.diskLowAt, d.commitNote.diskLowAt)
}

// replaceMinFree is the free space on the data dir's filesystem before a
// node with a suspect log has itself replaced: a new node needs room for
// its log segments and a snapshot.
const replaceMinFree = 2 * lowDiskBytes

// loadSuspectLog reads the marker into the disk note, once when the
// daemon is created (after a restart of controllerd).
func (d *Daemon) loadSuspectLog() {
	if !d.commitNote.diskLowAt.IsZero() {
		return
	}
	if fi, err := os.Stat(filepath.Join(d.o.DataDir, suspectLogName)); err == nil {
		d.commitNote.diskLowAt = fi.ModTime()
	}
}

// recordSuspectLog writes the marker once there is room for it.
func (d *Daemon) recordSuspectLog() {
	path := filepath.Join(d.o.DataDir, suspectLogName)
	if d.commitNote.diskLowAt.IsZero() || fileExists(path) {
		return
	}
	msg := fmt.Sprintf("this data dir's filesystem ran short of space at %s: its node's Raft log may lack entries (docs/dqlite-behaviour.md#a-full-disk); the node has itself replaced\n",
		d.commitNote.diskLowAt.UTC().Format(time.RFC3339))
	if err := os.WriteFile(path, []byte(msg), 0o600); err == nil {
		os.Chtimes(path, d.commitNote.diskLowAt, d.commitNote.diskLowAt)
	}
}

// replaceSuspectLog runs every pass of a ready member and reports whether
// it acted (which ends the pass).
//
// A leader hands over at once, room or not. libraft 0.15 rolls a leader's
// on-disk index back over the appends that failed, while its in-memory log
// keeps them and has sent them to the followers; the entries it appends
// once there is room again are then sent at indices the followers already
// hold other entries at, in the same term, so the followers keep theirs and
// report them stored, and the leader commits and acknowledges a write that
// no other node has (TestFullDisk_LeaderDiskFillsAndEmpties lost one that
// way when the hand-over waited for room). Leadership must leave such a
// node before its disk has room again.
func (d *Daemon) replaceSuspectLog(ctx context.Context, obs *Observation) bool {
	if d.commitNote.diskLowAt.IsZero() {
		return false // nothing suspect
	}
	room := d.commitNote.diskFree >= replaceMinFree
	if room {
		d.recordSuspectLog()
	}
	r := d.run
	selfID := r.node.ID()
	if obs.Leader.ID == selfID {
		// The removal goes through another leader, whose log is not
		// this one.
		hctx, cancel := context.WithTimeout(ctx, d.o.HandoverTimeout)
		err := r.node.Handover(hctx)
		cancel()
		d.decision("hand-over", "this node's Raft log may lack entries (its data dir ran short of space): handing the leadership over at once, before its disk has room again, and then having it replaced", "err", err)
		return true
	}
	if !room {
		return false // no room yet (the status says so)
	}
	others := otherVoters(obs.Members, selfID)
	if others < 2 {
		// With one other voter left, that voter alone would hold the
		// cluster until the new node is promoted: keep this one.
		d.commitNote.replaceWait = fmt.Sprintf("not replacing it while the cluster has %d other voter(s): it needs at least 2", others)
		return false
	}
	d.commitNote.replaceWait = ""
	d.becomeReplacing(ctx, obs, selfID)
	return true
}

// waitForRoom runs before a stopped node starts on its data dir and
// reports whether the node must stay stopped: a node whose marker says
// its log may lack entries does not start while its filesystem is still
// short of space. It could store nothing there, and libraft 0.15 crashed
// with a segmentation fault each time such a node started on a full disk
// (TestFullDisk_LeaderDiskFillsAndEmpties).
func (d *Daemon) waitForRoom(info client.NodeInfo) bool {
	if d.commitNote.diskLowAt.IsZero() {
		return false
	}
	free, err := d.freeSpace(d.o.DataDir)
	if err != nil || free >= replaceMinFree {
		return false
	}
	why := fmt.Sprintf("not starting node %d: its data dir ran short of space at %s, so its Raft log may lack entries (docs/dqlite-behaviour.md#a-full-disk), and its filesystem is still short of space; free at least %d MiB there, then the node is replaced by a new one",
		info.ID, d.commitNote.diskLowAt.UTC().Format(time.RFC3339), replaceMinFree>>20)
	// The figure changes from pass to pass: in the status, not in the
	// decision, which is logged once.
	d.decision("wait", why, "free-bytes", free)
	d.setState(StateWaiting, fmt.Sprintf("%s (%d KiB free now)", why, free>>10))
	d.retryAt = time.Now().Add(time.Second)
	return true
}

// replaceStopped runs before a stopped node starts on its data dir and
// reports whether it acted. A node whose marker says its log may lack
// entries (controllerd restarted after a crash or kill on the full disk)
// is not started on that log when it can be replaced at once: restarted,
// it could win an election before its first pass and lead on the shifted
// log (the crash and the lost writes of docs/dqlite-behaviour.md#a-full-disk).
// It is removed through the leader that answered and wiped, on the same
// condition as becomeReplacing: the leader is another node and keeps at
// least two voters without this one. Otherwise (one other voter) it
// starts as before, and the running node's pass decides.
func (d *Daemon) replaceStopped(ctx context.Context, info client.NodeInfo, leader Answer) bool {
	if d.commitNote.diskLowAt.IsZero() || leader.Leader.ID == info.ID {
		return false
	}
	if otherVoters(leader.Members, info.ID) < 2 {
		return false
	}
	reason := fmt.Sprintf("this node's data dir ran short of space at %s, so its Raft log may lack entries (docs/dqlite-behaviour.md#a-full-disk): not starting it on that log; removing node %d through the leader %s, wiping it and joining again as a new node",
		d.commitNote.diskLowAt.UTC().Format(time.RFC3339), info.ID, leader.Address)
	d.decision("replace", reason, "node-id", strconv.FormatUint(info.ID, 10))
	d.setState(StateLeaving, reason)
	rctx, cancel := context.WithTimeout(ctx, d.o.HandoverTimeout)
	err := d.engine.Remove(rctx, leader.Address, info.ID)
	cancel()
	if err != nil {
		why := fmt.Sprintf("cannot have node %d removed through the leader %s for its replacement, and not starting it on its suspect log: %v; will retry", info.ID, leader.Address, err)
		d.log.Warn(why)
		d.setState(StateWaiting, why)
		d.retryAt = time.Now().Add(time.Second)
		return true
	}
	d.forgetSuspectLog()
	d.becomeRemoved(info.Address, reason)
	return true
}

// otherVoters counts the voters among members other than node self: a
// replacement needs two, so that the cluster keeps a majority without it.
func otherVoters(members []client.NodeInfo, self uint64) int {
	n := 0
	for _, m := range members {
		if m.ID != self && m.Role == client.Voter {
			n++
		}
	}
	return n
}

// forgetSuspectLog drops the marker with the data it described.
func (d *Daemon) forgetSuspectLog() {
	if err := os.Remove(filepath.Join(d.o.DataDir, suspectLogName)); err != nil && !os.IsNotExist(err) {
		d.log.Warn("cannot remove the suspect-log marker", "err", err)
	}
	d.commitNote.diskLowAt = time.Time{}
}

// becomeReplacing removes this node through the leader, wipes its data
// dir and lets it join again as a new node (new id). Safe because the
// leader is another node and keeps at least two voters without this one,
// so Raft commits the removal with a majority of the configuration that
// holds every committed entry, and no committed entry depends on this
// node's log; the node never restarts on that log (it is removed, and
// becomeRemoved wipes it). The config still lists this controller, so the
// leader wants it back (wantedByLeader) and it joins after becomeRemoved's
// back-off. The marker goes with the data it described.
func (d *Daemon) becomeReplacing(ctx context.Context, obs *Observation, selfID uint64) {
	r := d.run
	reason := fmt.Sprintf("this node's data dir ran short of space at %s, so its Raft log may lack entries (docs/dqlite-behaviour.md#a-full-disk): removing node %d through the leader %s, wiping it and joining again as a new node",
		d.commitNote.diskLowAt.UTC().Format(time.RFC3339), selfID, obs.Leader.Address)
	d.decision("replace", reason, "node-id", strconv.FormatUint(selfID, 10))
	d.setState(StateLeaving, reason)
	rctx, cancel := context.WithTimeout(ctx, d.o.HandoverTimeout)
	err := obs.Client.Remove(rctx, selfID)
	cancel()
	if err != nil {
		d.log.Warn("cannot have this node removed for its replacement; will retry", "err", err)
		return
	}
	d.forgetSuspectLog()
	d.becomeRemoved(r.node.Address(), reason)
}
