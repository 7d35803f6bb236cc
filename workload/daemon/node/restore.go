package node

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// Restoring the whole cluster to a backup (restore-backup).
//
// Backups stay on the unit that took them, so the daemon holding the
// backup (the source) drives the restore. go-dqlite v1.11.5 cannot load a
// database file into a node, so the source becomes the only voter of its
// cluster and replays the backup into it (backup.Snapshot.Replay) while
// nobody else runs; the other nodes then wipe their data dirs (a safety
// copy first) and join it as new nodes. The steps:
//
//  1. marking: with quorum, the source records the restore in table
//     controller_restore (state marking) and in its data dir; every other
//     member, at its next pass, writes the same record in its own data dir
//     (restoreRecordName) and only then acknowledges in table
//     controller_restore_ack. From then on it serves nothing (its control
//     plane stops: no lease, no backups, no API addresses) and never starts
//     its old node unless the restore is cancelled. The source waits for
//     every other member's acknowledgement; without all of them within
//     RestoreAckTimeout (60 s) it cancels (state cancelled): nothing has changed.
//  2. stopping: the source sets state stopping; each marked member closes
//     its node (also when it sees no leader: a marked node never waits out a
//     lost quorum nor recovers from one). The source waits until no other
//     member's Dqlite address accepts a connection (a paused machine does,
//     and is waited for).
//  3. restoring: the source copies its node dir aside and forces its Raft
//     configuration to itself alone (forceConfiguration, as
//     recover-from-quorum-loss does), restarts, replays the backup and, in
//     the replay's last transaction, sets state done.
//  4. rejoining: a marked member whose node is closed asks the source; once
//     the source leads a configuration without this node and its
//     controller_restore row says done, it copies its node dir aside, wipes
//     it and joins as a new node. The source's restore-backup answer waits
//     for them.
//
// An interruption resumes from the records: a daemon restarted mid-restore
// reads its data dir's record before it does anything else. The source
// resumes from its step (in step 1 it waits for the acknowledgements
// again, and cancels without them); a marked
// member restarts its old node only when the source's cluster still lists
// it and says marking. Status says `restoring` and which step every node
// is in, and a second restore-backup on the source reports it.

// StateRestoring is a node taking part in a restore.
const StateRestoring State = "restoring"

const (
	restoreRecordName  = "restore.json"
	restoreSteps       = 4
	restoreAckTimeout  = 60 * time.Second
	restoreRejoinWait  = 3 * time.Minute
	restorePoll        = 300 * time.Millisecond
	restoreCheckPeriod = time.Second
	restoreStartWait   = 90 * time.Second
	// restoreNoLeaderGrace is how long a marked member goes without a
	// leader before it closes its node (restoreNoLeader): longer than an
	// election on a loaded machine.
	restoreNoLeaderGrace = 10 * time.Second
)

// Restore states in controller_restore and steps of a record.
const (
	restoreMarking   = "marking"
	restoreStopping  = "stopping"
	restoreForced    = "forced" // the source only: its configuration is forced
	restoreDone      = "done"
	restoreCancelled = "cancelled"
	restoreMarked    = "marked" // a member's record
)

const restoreSchema = `CREATE TABLE IF NOT EXISTS controller_restore (
    id             TEXT PRIMARY KEY,
    backup         TEXT NOT NULL,
    source         TEXT NOT NULL,
    source_address TEXT NOT NULL,
    state          TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS controller_restore_ack (
    id            TEXT NOT NULL,
    controller_id TEXT NOT NULL,
    PRIMARY KEY (id, controller_id)
)`

// daemonTable reports whether a table is the daemon's own bookkeeping,
// which a restore keeps as the live cluster has it (membership, leases and
// their fencing counter, API addresses, backup records and requests, the
// restore itself): the backup's copies describe nodes that no longer run.
func daemonTable(name string) bool {
	return strings.HasPrefix(name, "controller_") || name == "lease" || name == "lease_tenure"
}

// restoreRecord is a node's durable note that it takes part in a restore
// (restoreRecordName in its data dir, outside node/).
type restoreRecord struct {
	ID            string `json:"id"`
	Backup        string `json:"backup"`
	Source        string `json:"source"`
	SourceAddress string `json:"source-address"`
	Step          string `json:"step"`
}

func (r *restoreRecord) isSource(self string) bool { return r != nil && r.Source == self }

// errRestoreFinished: the source's record names a restore whose row says
// done (a record left behind by a daemon stopped between the replay's last
// transaction and removing its record): nothing is left to do, and
// replaying again would lose what was written since.
var errRestoreFinished = errors.New("the restore is done already")

// restorer is the daemon's restore state: the record (the loop's copy)
// and, on the source, the driver's progress (shared with the op).
type restorer struct {
	loaded    bool
	rec       *restoreRecord
	checkedAt time.Time

	mu         sync.Mutex
	driving    bool
	failedAt   time.Time
	step       int
	progress   string
	transcript []string
	result     control.RestoreResult
	done       chan struct{}
	err        error
}

func (d *Daemon) restoreRecordPath() string { return filepath.Join(d.o.DataDir, restoreRecordName) }

// record returns the restore record (read from the data dir once).
func (d *Daemon) record() *restoreRecord {
	rs := &d.rs
	if !rs.loaded {
		rs.loaded = true
		data, err := os.ReadFile(d.restoreRecordPath())
		if err == nil {
			var rec restoreRecord
			if json.Unmarshal(data, &rec) == nil && rec.ID != "" {
				rs.rec = &rec
			} else {
				d.log.Error("unreadable restore record: not starting the old node until it is fixed or removed", "path", d.restoreRecordPath())
				rs.rec = &restoreRecord{ID: "unreadable", Step: restoreMarked}
			}
		}
	}
	return rs.rec
}

// writeRecord writes rec durably (file synced, then its directory).
func (d *Daemon) writeRecord(rec restoreRecord) error {
	data, _ := json.Marshal(rec)
	tmp := d.restoreRecordPath() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("cannot write the restore record: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("cannot write the restore record: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("cannot write the restore record: %w", err)
	}
	f.Close()
	if err := os.Rename(tmp, d.restoreRecordPath()); err != nil {
		return fmt.Errorf("cannot write the restore record: %w", err)
	}
	if err := syncDir(d.o.DataDir); err != nil {
		return fmt.Errorf("cannot write the restore record: %w", err)
	}
	d.rs.loaded, d.rs.rec = true, &rec
	return nil
}

func (d *Daemon) clearRecord() error {
	if err := os.Remove(d.restoreRecordPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot remove the restore record: %w", err)
	}
	d.rs.loaded, d.rs.rec = true, nil
	return syncDir(d.o.DataDir)
}

func (d *Daemon) restoreMessage(rec *restoreRecord, step int, what string) string {
	return fmt.Sprintf("restoring backup %s (restore %s, driven by controller %s): step %d/%d: %s", rec.Backup, rec.ID, rec.Source, step, restoreSteps, what)
}

// restoreRow reads controller_restore's row id ("" when there is none).
func restoreRow(ctx context.Context, tx *sql.Tx, id string) (string, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'controller_restore'`).Scan(&n); err != nil || n == 0 {
		return "", err
	}
	var state string
	err := tx.QueryRowContext(ctx, `SELECT state FROM controller_restore WHERE id = ?`, id).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return state, err
}

// restoreRunning is a running member's share of a restore, called on every
// pass before it serves; it reports whether the pass ends here (the node
// takes part in a restore and must not serve).
func (d *Daemon) restoreRunning(ctx context.Context) bool {
	rec := d.record()
	now := time.Now()
	if rec == nil {
		if now.Before(d.rs.checkedAt) {
			return false
		}
		d.rs.checkedAt = now.Add(restoreCheckPeriod)
		return d.joinRestore(ctx)
	}
	if rec.isSource(d.o.ControllerID) {
		d.ensureDriver(*rec)
		d.setState(StateRestoring, d.sourceProgress(rec))
		return true
	}
	// A marked member: it serves nothing and follows the source's row.
	var state string
	err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		state, err = restoreRow(ctx, tx, rec.ID)
		return err
	})
	switch {
	case err != nil:
		d.setState(StateRestoring, d.restoreMessage(rec, 1, "stopped serving; cannot read the restore's state: "+err.Error()))
	case state == restoreMarking:
		d.ackRestore(ctx, rec)
		d.decision("restore-wait", "marked for a restore: serving nothing until the source stops the cluster")
		d.setState(StateRestoring, d.restoreMessage(rec, 1, "stopped serving; waiting for every other controller to stop serving"))
	case state == restoreStopping:
		d.becomeRestoreStopped(rec, "the source stops the cluster")
	case state == restoreDone:
		// Only the restored cluster ever says done: this node is a
		// member of it already.
		d.log.Info("the restore is done and this node is a member of the restored cluster", "restore", rec.ID)
		if err := d.clearRecord(); err != nil {
			d.log.Warn("cannot clear the restore record", "err", err)
		}
	default: // cancelled, or no row: nothing was changed
		d.log.Info("the restore was cancelled; serving again", "restore", rec.ID, "state", state)
		if err := d.clearRecord(); err != nil {
			d.log.Warn("cannot clear the restore record", "err", err)
			return true
		}
		return false
	}
	return true
}

// joinRestore looks for a restore another controller started and takes
// part: record first, acknowledgement second, so that an acknowledgement
// proves the record is on disk. It reports whether this node now takes
// part.
func (d *Daemon) joinRestore(ctx context.Context) bool {
	var rec *restoreRecord
	err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		rec = nil
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'controller_restore'`).Scan(&n); err != nil || n == 0 {
			return err
		}
		var r restoreRecord
		err := tx.QueryRowContext(ctx, `SELECT id, backup, source, source_address FROM controller_restore
WHERE state IN ('marking', 'stopping') AND source != ? ORDER BY started_at LIMIT 1`, d.o.ControllerID).Scan(&r.ID, &r.Backup, &r.Source, &r.SourceAddress)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		rec = &r
		return err
	})
	if err != nil || rec == nil {
		return false
	}
	rec.Step = restoreMarked
	d.decision("restore-mark", "controller "+rec.Source+" restores backup "+rec.Backup+": this node stops serving and never starts on its current data again unless the restore is cancelled", "restore", rec.ID)
	if err := d.writeRecord(*rec); err != nil {
		d.log.Error("cannot take part in the restore; it waits for this node", "err", err)
		return false
	}
	d.plane.stop(singularStopWait, "restoring a backup")
	if err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO controller_restore_ack (id, controller_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, rec.ID, d.o.ControllerID)
		return err
	}); err != nil {
		d.log.Warn("cannot acknowledge the restore; will retry", "err", err)
	}
	d.setState(StateRestoring, d.restoreMessage(rec, 1, "stopped serving; waiting for every other controller to stop serving"))
	return true
}

// ackRestore re-sends the acknowledgement (idempotent) of a marked node.
func (d *Daemon) ackRestore(ctx context.Context, rec *restoreRecord) {
	_ = d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO controller_restore_ack (id, controller_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, rec.ID, d.o.ControllerID)
		return err
	})
}

// becomeRestoreStopped closes a marked member's node. Safe because closing
// a node never changes membership, and the record keeps it closed: it
// starts again only as a new node of the restored cluster, or on its old
// data when the source's cluster still lists it in step 1.
func (d *Daemon) becomeRestoreStopped(rec *restoreRecord, why string) {
	d.decision("restore-stop", why+": closing this node; it rejoins the restored cluster as a new node", "restore", rec.ID)
	d.closeRun()
	d.setState(StateRestoring, d.restoreMessage(rec, 2, "this node is stopped; waiting for controller "+rec.Source+" to restore the backup"))
}

// restoreNoLeader is called when a running node finds no leader; it
// reports whether the restore decides instead of the quorum-loss logic
// (which must never force a configuration during a restore).
//
// A marked member closes its node once no leader has answered for
// restoreNoLeaderGrace: in step 2 the last members may no longer form a
// quorum to read "stopping" from, and the source waits for them to close.
// Not at once: when the leader was another member that died, the source
// and this node elect a new one within seconds, and the source needs that
// quorum to read the acknowledgements and move to step 2 (closing at once
// stalled a restore at step 1 with "no Dqlite leader reachable" until it
// was cancelled). Staying open a little longer changes nothing: the node
// serves nothing, and only the source forces a configuration, once every
// other node is closed.
func (d *Daemon) restoreNoLeader() bool {
	rec := d.record()
	if rec == nil {
		return false
	}
	if rec.isSource(d.o.ControllerID) {
		d.ensureDriver(*rec)
		d.setState(StateRestoring, d.sourceProgress(rec)+" (no Dqlite leader reachable)")
		return true
	}
	if without := time.Since(d.run.leaderSeen); without < restoreNoLeaderGrace {
		d.setState(StateRestoring, d.restoreMessage(rec, 1, fmt.Sprintf("stopped serving; no Dqlite leader reachable for %s: closing this node after %s without one (the cluster may be electing a new leader)",
			without.Round(100*time.Millisecond), restoreNoLeaderGrace)))
		return true
	}
	d.becomeRestoreStopped(rec, fmt.Sprintf("no leader for %s while marked for a restore", restoreNoLeaderGrace))
	return true
}

// restoreStopped is a stopped node's share of a restore; it reports
// whether it decided (true) or the node starts as usual (false).
func (d *Daemon) restoreStopped(ctx context.Context) bool {
	rec := d.record()
	if rec == nil {
		return false
	}
	if rec.isSource(d.o.ControllerID) {
		d.ensureDriver(*rec)
		if rec.Step != restoreForced {
			// Still the old configuration: start as usual.
			return false
		}
		info, ok, err := readInfo(d.nodeDir)
		if err != nil || !ok {
			d.setState(StateError, fmt.Sprintf("restore %s: this node's configuration was forced but its node dir is unreadable (%v); the safety copy is in %s/recovery-*", rec.ID, err, d.o.DataDir))
			d.retryAt = time.Now().Add(5 * time.Second)
			return true
		}
		// Safe: this node is the only voter of its forced configuration
		// and every other node is closed for good (step 2).
		d.decision("start", "restore: this node is the only voter of the configuration it forced", "restore", rec.ID)
		d.setState(StateRestoring, d.sourceProgress(rec))
		d.startRun(false, info.Address, nil)
		return true
	}
	d.retryAt = time.Now().Add(time.Second)
	a := d.engine.Ask(ctx, rec.SourceAddress)
	info, hasData, _ := readInfo(d.nodeDir)
	// The source's cluster may be led by another node by now (a member
	// that joined it, after the source restarted): what counts is that it
	// has a leader and what its controller_restore row says.
	leads := a.Answered && a.Leader.ID != 0 && len(a.Members) > 0
	if !leads {
		d.decision("restore-wait", "the restore's source is in no cluster with a leader yet")
		d.setState(StateRestoring, d.restoreMessage(rec, 2, fmt.Sprintf("this node is stopped; waiting for controller %s (%s) to restore the backup (it sees no leader yet)", rec.Source, rec.SourceAddress)))
		return true
	}
	state, err := d.sourceRestoreState(ctx, rec)
	if err != nil {
		d.setState(StateRestoring, d.restoreMessage(rec, 2, "this node is stopped; cannot read the restore's state from controller "+rec.Source+": "+err.Error()))
		return true
	}
	switch {
	case hasData && a.Knows(info.ID) && (state == restoreMarking):
		// The source has not stopped the cluster: this node may run on
		// its old data as a marked member (it serves nothing).
		d.decision("restore-start", "the restore's source still lists this node and has not stopped the cluster", "restore", rec.ID)
		return false
	case (state == restoreCancelled || state == "") && hasData && a.Knows(info.ID):
		d.log.Info("the restore was cancelled; starting as usual", "restore", rec.ID)
		if err := d.clearRecord(); err != nil {
			d.log.Warn("cannot clear the restore record", "err", err)
			return true
		}
		return false
	case state == restoreDone && (!hasData || !a.Knows(info.ID)):
		d.becomeRestoreWiped(rec)
		return true
	case state == restoreDone && hasData && a.Knows(info.ID):
		// A record left behind (the daemon stopped between joining and
		// removing it): the restored cluster lists this node's id, and
		// node ids are random, so its data is the restored cluster's.
		d.log.Info("the restore is done and the restored cluster lists this node; removing the record left behind", "restore", rec.ID, "node-id", info.ID)
		if err := d.clearRecord(); err != nil {
			d.log.Warn("cannot clear the restore record", "err", err)
			return true
		}
		return false
	}
	d.setState(StateRestoring, d.restoreMessage(rec, 3, fmt.Sprintf("this node is stopped; controller %s is restoring the backup (state %s)", rec.Source, orUnknown(state))))
	return true
}

// becomeRestoreWiped wipes a marked member's node dir (a copy first) so
// that it joins the restored cluster as a new node. Safe because the
// source's cluster says the restore is done (only the restored cluster
// ever does: the replay's last transaction sets it) and its configuration
// lacks this node (it can never be a member under its old id again), so
// the node joins a complete database.
func (d *Daemon) becomeRestoreWiped(rec *restoreRecord) {
	copyDir := ""
	if _, ok, _ := readInfo(d.nodeDir); ok {
		dir, err := d.copyNodeDir()
		if err != nil {
			d.setState(StateError, fmt.Sprintf("restore %s: cannot copy the node dir aside before wiping it: %v; nothing was wiped", rec.ID, err))
			return
		}
		copyDir = dir
	}
	d.decision("wipe", "restore: the source leads the restored cluster without this node; wiping to join it as a new node", "restore", rec.ID, "safety-copy", copyDir)
	if err := os.RemoveAll(d.nodeDir); err != nil {
		d.failStart(fmt.Errorf("cannot wipe node dir: %w", err))
		return
	}
	if err := d.clearRecord(); err != nil {
		d.failStart(err)
		return
	}
	d.retryAt = time.Time{}
	d.setState(StateWaiting, "restore: wiped the node dir (copy in "+copyDir+"); joining the restored cluster")
}

// sourceRestoreState reads the restore's row through the source, as a
// client (this node's own node is closed).
func (d *Daemon) sourceRestoreState(ctx context.Context, rec *restoreRecord) (string, error) {
	store := newPeerStore("", filepath.Join(d.o.DataDir, "no-node"))
	store.setMembers([]client.NodeInfo{{Address: rec.SourceAddress}})
	db, err := d.openDB(store)
	if err != nil {
		return "", err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: false})
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	return restoreRow(ctx, tx, rec.ID)
}

// sourceProgress is the source's status message.
func (d *Daemon) sourceProgress(rec *restoreRecord) string {
	d.rs.mu.Lock()
	defer d.rs.mu.Unlock()
	step, what := d.rs.step, d.rs.progress
	if step == 0 {
		step, what = 1, "starting"
	}
	return d.restoreMessage(rec, step, what)
}

func (d *Daemon) note(step int, msg string) {
	d.rs.mu.Lock()
	defer d.rs.mu.Unlock()
	if d.rs.step == step && d.rs.progress == msg {
		return
	}
	d.rs.step, d.rs.progress = step, msg
	d.rs.transcript = append(d.rs.transcript, fmt.Sprintf("%s step %d/%d: %s", time.Now().UTC().Format("15:04:05.000Z"), step, restoreSteps, msg))
	d.log.Info("restore", "step", step, "progress", msg)
}

// ensureDriver starts the source's driver once per process (on the
// operator's request, or to resume after a restart).
func (d *Daemon) ensureDriver(rec restoreRecord) {
	d.rs.mu.Lock()
	if d.rs.driving || time.Since(d.rs.failedAt) < 10*time.Second {
		d.rs.mu.Unlock()
		return
	}
	d.rs.driving, d.rs.done, d.rs.err = true, make(chan struct{}), nil
	d.rs.result = control.RestoreResult{RestoreID: rec.ID, BackupID: rec.Backup, ControllerID: d.o.ControllerID}
	d.rs.mu.Unlock()
	go d.drive(rec)
}

// Restore implements control.Restorer: it checks that the cluster can be
// restored to the backup, records the restore and waits for its driver.
func (d *Daemon) Restore(ctx context.Context, req control.RestoreRequest) (control.RestoreResult, error) {
	res := control.RestoreResult{BackupID: req.BackupID, ControllerID: d.o.ControllerID}
	if !req.Confirm {
		return res, errors.New("cannot restore: confirm=true is required: every controller stops, this unit's node restarts alone with the backup's data, and the others wipe their data (after a safety copy) and join it; everything written since the backup is lost")
	}
	if d.rs.mu.Lock(); d.rs.driving {
		r, step, what := d.rs.result, d.rs.step, d.rs.progress
		d.rs.mu.Unlock()
		return res, fmt.Errorf("cannot restore: restore %s of backup %s is under way on this controller (step %d/%d: %s); it continues by itself: watch juju status, or run restore-backup again to see where it is", r.RestoreID, r.BackupID, step, restoreSteps, what)
	}
	d.rs.mu.Unlock()
	if data, err := os.ReadFile(d.restoreRecordPath()); err == nil {
		// A restore this process has not resumed yet (it just restarted).
		var rec restoreRecord
		_ = json.Unmarshal(data, &rec)
		return res, fmt.Errorf("cannot restore: restore %s of backup %s (driven by controller %s) is under way, at %s; it resumes by itself: watch juju status, or run restore-backup again to see where it is", orUnknown(rec.ID), orUnknown(rec.Backup), orUnknown(rec.Source), orUnknown(rec.Step))
	}
	if st := d.Status(ctx); st.State == string(StateRestoring) {
		return res, fmt.Errorf("cannot restore: this controller takes part in another restore: %s", st.Message)
	}
	if req.BackupID == "" || filepath.Base(req.BackupID) != req.BackupID || !strings.HasPrefix(req.BackupID, "backup-") {
		return res, fmt.Errorf("cannot restore: invalid backup-id %q: give an id list-backups shows, like backup-20261201T205156.468Z", req.BackupID)
	}
	have, _ := d.ListBackups(ctx)
	var ids []string
	found := false
	for _, b := range have {
		ids = append(ids, b.ID)
		found = found || b.ID == req.BackupID
	}
	if !found {
		listed := "it has none"
		if len(ids) > 0 {
			listed = "it has " + strings.Join(ids, ", ")
		}
		return res, fmt.Errorf("cannot restore: unknown backup %s on this unit (controller %s; %s): backups stay on the unit whose controller took them; run list-backups on each unit and restore-backup on the one that lists it", req.BackupID, d.o.ControllerID, listed)
	}
	st := d.Status(ctx)
	if !st.Member || st.Leader == nil || st.State != string(StateRunning) {
		return res, d.restoreNoQuorum(ctx, st)
	}
	ids2 := d.controllerIDs(ctx, nil)
	listedNow := d.configSnapshot()
	var others []string
	for _, m := range st.Members {
		if m.NodeID == st.NodeID {
			continue
		}
		cid := ids2.lookup(m.NodeID, m.Address)
		if _, listed := listedNow[cid]; cid == "" || !listed {
			return res, fmt.Errorf("cannot restore: member %s (node %s) belongs to no unit in the db-cluster relation; it could not take part in the restore and would keep the old data: remove it with remove-member force=true first", m.Address, m.NodeID)
		}
		if !d.answers(ctx, m.Address) {
			return res, fmt.Errorf("cannot restore: member %s (controller %s) does not answer; every member must take part (a node that missed the restore could come back with the old data); bring it back, or remove it with remove-member force=true, then retry", m.Address, cid)
		}
		others = append(others, cid)
	}
	sort.Strings(others)
	snap, err := backup.Open(filepath.Join(d.o.BackupDir, req.BackupID), daemonTable)
	if err != nil {
		return res, fmt.Errorf("cannot restore: %w; nothing was changed", err)
	}
	snap.Close()
	id, err := randomID()
	if err != nil {
		return res, err
	}
	rec := restoreRecord{ID: id, Backup: req.BackupID, Source: d.o.ControllerID, SourceAddress: st.Address, Step: restoreMarking}
	err = d.call(ctx, func(ctx context.Context) error {
		if err := d.writeRecord(rec); err != nil {
			return err
		}
		err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, restoreSchema); err != nil {
				return err
			}
			var busy string
			err := tx.QueryRowContext(ctx, `SELECT id || ' of ' || backup || ' by controller ' || source FROM controller_restore WHERE state IN ('marking', 'stopping') AND id != ?`, id).Scan(&busy)
			if err == nil {
				return fmt.Errorf("restore %s is under way", busy)
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO controller_restore (id, backup, source, source_address, state, started_at, updated_at)
VALUES (?, ?, ?, ?, 'marking', strftime('%Y-%m-%d %H:%M:%f','now'), strftime('%Y-%m-%d %H:%M:%f','now')) ON CONFLICT (id) DO NOTHING`, id, rec.Backup, rec.Source, rec.SourceAddress)
			return err
		})
		if err != nil {
			if cerr := d.clearRecord(); cerr != nil {
				d.log.Warn("cannot clear the restore record", "err", cerr)
			}
			return err
		}
		d.rs.mu.Lock()
		d.rs.transcript, d.rs.step, d.rs.progress = nil, 0, ""
		d.rs.mu.Unlock()
		d.decision("restore", "the operator restores backup "+rec.Backup+": this controller drives the restore", "restore", id, "others", others)
		d.ensureDriver(rec)
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("cannot restore: cannot record the restore: %w; nothing was changed", err)
	}
	d.rs.mu.Lock()
	done := d.rs.done
	d.rs.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		d.rs.mu.Lock()
		step, what := d.rs.step, d.rs.progress
		d.rs.mu.Unlock()
		return res, fmt.Errorf("%w: restore %s of backup %s continues by itself: step %d/%d: %s; watch juju status, or run restore-backup again to see where it is", control.ErrOutcomeUnknown, id, rec.Backup, step, restoreSteps, what)
	}
	d.rs.mu.Lock()
	defer d.rs.mu.Unlock()
	out := d.rs.result
	out.Transcript = slices.Clone(d.rs.transcript)
	return out, d.rs.err
}

// restoreNoQuorum is the refusal of a restore asked while this node sees
// no leader (or is no running member): it names the members that do not
// answer, by controller id from the config alone (without a leader
// controller_node cannot be read).
func (d *Daemon) restoreNoQuorum(ctx context.Context, st control.Status) error {
	ids := nodeControllers{byNode: map[string]string{}, byHost: map[string]string{}}
	for id, host := range d.configSnapshot() {
		ids.byHost[host] = id
	}
	members := st.Members
	if len(members) == 0 {
		store, _ := readStore(d.nodeDir)
		for _, n := range store {
			members = append(members, control.Member{NodeID: strconv.FormatUint(n.ID, 10), Address: n.Address})
		}
	}
	var silent []string
	for _, m := range members {
		if m.NodeID == st.NodeID || m.Address == st.Address || d.answers(ctx, m.Address) {
			continue
		}
		silent = append(silent, fmt.Sprintf("controller %s (%s)", orUnknown(ids.lookup(m.NodeID, m.Address)), m.Address))
	}
	sort.Strings(silent)
	msg := fmt.Sprintf("cannot restore: no quorum: controller %s is %s (%s)", d.o.ControllerID, st.State, st.Message)
	if len(silent) > 0 {
		msg += "; " + strings.Join(silent, ", ") + " do not answer: start their controllerd (or bring their machines back) and retry once cluster-status shows a leader"
	} else {
		msg += "; retry once cluster-status shows a leader"
	}
	msg += "; a restore needs every member running and a leader, so that each stops before this node restarts alone; if quorum is lost for good, run recover-from-quorum-loss first; nothing was changed"
	return errors.New(msg)
}

// drive is the source's driver: it runs the restore from the record's
// step to the end, then leaves the result for Restore.
func (d *Daemon) drive(rec restoreRecord) {
	err := d.driveSteps(&rec)
	d.rs.mu.Lock()
	if err != nil && d.watchCtx != nil && d.watchCtx.Err() != nil {
		// controllerd is stopping: the restore goes on from its record
		// when it starts again.
		err = fmt.Errorf("%w: controllerd stopped during restore %s of backup %s (step %d/%d: %s): it resumes from its record when controllerd starts again; watch juju status, or run restore-backup again to see where it is", control.ErrOutcomeUnknown, rec.ID, rec.Backup, d.rs.step, restoreSteps, d.rs.progress)
	}
	d.rs.err = err
	if err != nil {
		d.rs.transcript = append(d.rs.transcript, time.Now().UTC().Format("15:04:05.000Z")+" failed: "+err.Error())
		d.log.Error("restore failed", "restore", rec.ID, "err", err)
		d.rs.failedAt = time.Now()
	}
	d.rs.driving = false
	close(d.rs.done)
	d.rs.mu.Unlock()
}

func (d *Daemon) driveSteps(rec *restoreRecord) error {
	ctx := d.watchCtx
	if ctx == nil {
		ctx = context.Background()
	}
	err := d.driveFrom(ctx, rec)
	if !errors.Is(err, errRestoreFinished) {
		return err
	}
	if err := d.onLoop(ctx, func(context.Context) error { return d.clearRecord() }); err != nil {
		return err
	}
	d.note(restoreSteps, "the restore was done already (controller_restore says so); removed the record left behind")
	d.rs.mu.Lock()
	r := &d.rs.result
	r.Step = fmt.Sprintf("%d/%d", restoreSteps, restoreSteps)
	r.Message = fmt.Sprintf("restore %s of backup %s was done already; nothing was replayed again", rec.ID, rec.Backup)
	d.rs.mu.Unlock()
	return nil
}

// driveFrom runs the restore from the record's step.
func (d *Daemon) driveFrom(ctx context.Context, rec *restoreRecord) error {
	if rec.Step == restoreMarking {
		others, err := d.waitAcks(ctx, rec)
		if err != nil {
			return err
		}
		if len(others) == 0 {
			d.note(2, "no other controller takes part (a single-node cluster)")
		} else {
			d.note(2, "every other controller stopped serving ("+strings.Join(others, ", ")+"); stopping their nodes")
		}
		if err := d.onLoop(ctx, func(ctx context.Context) error {
			next := *rec
			next.Step = restoreStopping
			return d.writeRecord(next)
		}); err != nil {
			return d.cancelRestore(ctx, rec, err)
		}
		rec.Step = restoreStopping
	}
	if rec.Step == restoreStopping {
		d.note(2, "waiting for every other node to stop")
		if err := d.waitOthersClosed(ctx, rec); err != nil {
			return err
		}
		var copyDir string
		if err := d.onLoop(ctx, func(ctx context.Context) error {
			// Safe: every other member acknowledged the restore (its
			// record is on disk, so it never starts its old node
			// again) and its address accepts no connection (closed), so
			// no majority of the old configuration can form without
			// this node; the node dir is copied aside first.
			d.decision("reconfigure", "restore: every other node is closed for good; this node becomes the only voter", "restore", rec.ID)
			err := d.forceConfiguration(d.restoreMessage(rec, 3, "forcing this node's configuration to itself alone"), nil, func() error {
				dir, err := d.copyNodeDir()
				copyDir = dir
				return err
			})
			if err != nil {
				return err
			}
			next := *rec
			next.Step = restoreForced
			return d.writeRecord(next)
		}); err != nil {
			return fmt.Errorf("cannot force this node's configuration: %w; it retries when controllerd restarts", err)
		}
		rec.Step = restoreForced
		d.rs.mu.Lock()
		d.rs.result.SafetyCopy = copyDir
		d.rs.mu.Unlock()
		d.note(3, "this node is the only voter (its node dir was copied to "+copyDir+"); replaying the backup")
	}
	if err := d.replay(ctx, rec); err != nil {
		return err
	}
	if err := d.onLoop(ctx, func(context.Context) error { return d.clearRecord() }); err != nil {
		return err
	}
	return d.waitRejoined(ctx, rec)
}

// onLoop runs f on the loop with a generous deadline.
func (d *Daemon) onLoop(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return d.call(ctx, f)
}

// waitAcks waits for every other member's acknowledgement, then sets the
// row to stopping; without them it cancels.
func (d *Daemon) waitAcks(ctx context.Context, rec *restoreRecord) ([]string, error) {
	d.note(1, "recorded the restore; waiting for every other controller to stop serving")
	deadline := time.Now().Add(d.o.RestoreAckTimeout)
	for {
		st := d.Status(ctx)
		ids := d.controllerIDs(ctx, nil)
		var want []string
		for _, m := range st.Members {
			if m.NodeID != st.NodeID {
				want = append(want, orUnknown(ids.lookup(m.NodeID, m.Address)))
			}
		}
		var acked []string
		state := ""
		err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
			var err error
			if state, err = restoreRow(ctx, tx, rec.ID); err != nil || state == "" {
				return err
			}
			acked, err = dbtx.Strings(ctx, tx, `SELECT controller_id FROM controller_restore_ack WHERE id = ?`, rec.ID)
			return err
		})
		switch {
		case err != nil:
		case state == restoreDone:
			return nil, errRestoreFinished
		case state == restoreCancelled:
			if err := d.onLoop(ctx, func(context.Context) error { return d.clearRecord() }); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("cannot restore: restore %s was cancelled; nothing was changed", rec.ID)
		case state == "":
			// The record is on disk but the restore never was in
			// controller_restore: nobody took part.
			return nil, d.cancelRestore(ctx, rec, errors.New("the restore was never recorded in controller_restore"))
		}
		var missing []string
		for _, w := range want {
			if !slices.Contains(acked, w) {
				missing = append(missing, w)
			}
		}
		if err == nil && len(missing) == 0 && len(st.Members) > 0 {
			err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, `UPDATE controller_restore SET state = 'stopping', updated_at = strftime('%Y-%m-%d %H:%M:%f','now') WHERE id = ? AND state IN ('marking', 'stopping')`, rec.ID)
				return err
			})
			if err == nil {
				sort.Strings(want)
				return want, nil
			}
			d.log.Warn("cannot set the restore to stopping; will retry", "err", err)
		}
		if time.Now().After(deadline) {
			why := fmt.Errorf("controllers %s did not stop serving within %s", strings.Join(missing, ", "), d.o.RestoreAckTimeout)
			if err != nil {
				why = fmt.Errorf("cannot read the acknowledgements within %s: %w", d.o.RestoreAckTimeout, err)
			}
			return nil, d.cancelRestore(ctx, rec, why)
		}
		time.Sleep(restorePoll)
	}
}

// cancelRestore ends a restore still in step 1: nothing has changed.
func (d *Daemon) cancelRestore(ctx context.Context, rec *restoreRecord, why error) error {
	// An upsert: a row whose insert is still unknown ends cancelled too.
	err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, restoreSchema); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO controller_restore (id, backup, source, source_address, state, started_at, updated_at)
VALUES (?, ?, ?, ?, 'cancelled', strftime('%Y-%m-%d %H:%M:%f','now'), strftime('%Y-%m-%d %H:%M:%f','now'))
ON CONFLICT (id) DO UPDATE SET state = 'cancelled', updated_at = excluded.updated_at WHERE state = 'marking'`, rec.ID, rec.Backup, rec.Source, rec.SourceAddress)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot restore: %w; and cannot cancel the restore (%v): it is retried when controllerd restarts", why, err)
	}
	if err := d.onLoop(ctx, func(context.Context) error { return d.clearRecord() }); err != nil {
		return err
	}
	d.note(1, "cancelled: "+why.Error())
	return fmt.Errorf("cannot restore: %w; the restore was cancelled and nothing was changed: every controller serves again", why)
}

// waitOthersClosed waits until no other member of the old configuration
// accepts a connection, re-sending the stopping state meanwhile.
func (d *Daemon) waitOthersClosed(ctx context.Context, rec *restoreRecord) error {
	for {
		store, _ := readStore(d.nodeDir)
		st := d.Status(ctx)
		seen := map[string]bool{}
		var addrs []string
		for _, n := range store {
			if n.Address != rec.SourceAddress && !seen[n.Address] {
				seen[n.Address] = true
				addrs = append(addrs, n.Address)
			}
		}
		for _, m := range st.Members {
			if m.Address != rec.SourceAddress && !seen[m.Address] {
				seen[m.Address] = true
				addrs = append(addrs, m.Address)
			}
		}
		var open []string
		for _, a := range addrs {
			cctx, cancel := context.WithTimeout(ctx, DialTimeout)
			conn, err := dialNode(cctx, a)
			cancel()
			if err == nil {
				conn.Close()
				open = append(open, a)
			}
		}
		if len(open) == 0 {
			return nil
		}
		sort.Strings(open)
		d.note(2, fmt.Sprintf("waiting for the nodes at %s to stop (they accept connections; a paused machine does too)", strings.Join(open, ", ")))
		if st.Leader != nil {
			state := ""
			_ = d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
				var err error
				if state, err = restoreRow(ctx, tx, rec.ID); err != nil || state == restoreDone {
					return err
				}
				_, err = tx.ExecContext(ctx, `UPDATE controller_restore SET state = 'stopping' WHERE id = ? AND state IN ('marking', 'stopping')`, rec.ID)
				return err
			})
			if state == restoreDone {
				return errRestoreFinished
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// replay waits for this node to lead its forced configuration and replays
// the backup; the last transaction sets the row to done.
func (d *Daemon) replay(ctx context.Context, rec *restoreRecord) error {
	deadline := time.Now().Add(restoreStartWait)
	for {
		st := d.Status(ctx)
		d.mu.RLock()
		ready := d.db != nil
		d.mu.RUnlock()
		if st.Member && st.Leader != nil && ready {
			state := ""
			_ = d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
				var err error
				state, err = restoreRow(ctx, tx, rec.ID)
				return err
			})
			if state == restoreDone {
				return errRestoreFinished
			}
			if st.Leader.NodeID == st.NodeID {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("this node does not lead its forced configuration after %s (%s: %s); the restore resumes when controllerd restarts", restoreStartWait, st.State, st.Message)
		}
		time.Sleep(restorePoll)
	}
	snap, err := backup.Open(filepath.Join(d.o.BackupDir, rec.Backup), daemonTable)
	if err != nil {
		return fmt.Errorf("cannot open the backup to replay it: %w; this node is the only voter with the data from before the restore (safety copy in %s/recovery-*)", err, d.o.DataDir)
	}
	defer snap.Close()
	d.note(3, fmt.Sprintf("replaying %d tables, %d rows", len(snap.Rows), snap.Total()))
	err = snap.Replay(ctx, d.dbSource, backup.ReplayOptions{
		Progress: func(m string) { d.note(3, m) },
		Final: func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, restoreSchema); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `UPDATE controller_restore SET state = 'done', updated_at = strftime('%Y-%m-%d %H:%M:%f','now') WHERE id = ?`, rec.ID)
			return err
		},
	})
	if err != nil {
		return fmt.Errorf("cannot replay the backup: %w; the restore resumes when controllerd restarts", err)
	}
	d.rs.mu.Lock()
	d.rs.result.Tables, d.rs.result.Rows = len(snap.Rows), snap.Total()
	d.rs.mu.Unlock()
	d.note(4, fmt.Sprintf("backup replayed and counted (%d tables, %d rows); serving again; waiting for the other controllers to wipe and join", len(snap.Rows), snap.Total()))
	return nil
}

// waitRejoined waits (bounded) for every other listed controller to be a
// member of the restored cluster.
func (d *Daemon) waitRejoined(ctx context.Context, rec *restoreRecord) error {
	deadline := time.Now().Add(restoreRejoinWait)
	for {
		var want []string
		for id := range d.configSnapshot() {
			if id != d.o.ControllerID {
				want = append(want, id)
			}
		}
		sort.Strings(want)
		st := d.Status(ctx)
		ids := d.controllerIDs(ctx, nil)
		in := map[string]bool{}
		for _, m := range st.Members {
			if m.NodeID != st.NodeID {
				in[ids.lookup(m.NodeID, m.Address)] = true
			}
		}
		var joined, waiting []string
		for _, w := range want {
			if in[w] {
				joined = append(joined, w)
			} else {
				waiting = append(waiting, w)
			}
		}
		if len(waiting) == 0 || time.Now().After(deadline) {
			d.rs.mu.Lock()
			r := &d.rs.result
			r.Rejoined, r.Waiting, r.Step = joined, waiting, fmt.Sprintf("%d/%d", restoreSteps, restoreSteps)
			r.Message = fmt.Sprintf("restored backup %s: controller %s replayed %d tables (%d rows) as the only voter", rec.Backup, d.o.ControllerID, r.Tables, r.Rows)
			if len(joined) > 0 {
				r.Message += fmt.Sprintf(", then controllers %s wiped their data and joined", strings.Join(joined, ", "))
			}
			if r.SafetyCopy != "" {
				r.Message += "; this node's data dir before the restore is in " + r.SafetyCopy
			}
			if len(waiting) > 0 {
				r.Message += fmt.Sprintf("; controllers %s have not joined yet after %s: see their juju status (they join by themselves)", strings.Join(waiting, ", "), restoreRejoinWait)
			}
			d.rs.mu.Unlock()
			if len(joined) > 0 {
				d.note(4, "done: "+strings.Join(joined, ", ")+" joined")
			} else {
				d.note(4, "done")
			}
			return nil
		}
		d.note(4, "waiting for controllers "+strings.Join(waiting, ", ")+" to wipe and join")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// configSnapshot reads the listed controllers from the config file (the
// loop owns d.cfg).
func (d *Daemon) configSnapshot() map[string]string {
	cfg, err := controllerconf.Read(d.o.ConfigPath)
	if err != nil || cfg == nil {
		return map[string]string{}
	}
	return cfg.DBBindAddresses
}
