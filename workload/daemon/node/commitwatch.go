package node

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/canonical/go-dqlite/client"
	"golang.org/x/sys/unix"
)

// The commit watchdog: a Dqlite leader that keeps leading but cannot
// commit. libraft 0.15 gets there after a full disk: a follower that failed
// to store entries keeps them in its in-memory log but counts them as never
// stored, and once it leads it commits only up to that short count, so its
// writes wait for ever while its heartbeats keep every follower loyal
// (docs/dqlite-behaviour.md#a-full-disk). Nothing in Raft ends that: the
// leader must give the leadership away itself.

// Commit watchdog defaults.
const (
	// DefaultCommitProbeInterval is how often the leader commits its
	// heartbeat row.
	DefaultCommitProbeInterval = 2 * time.Second
	// DefaultCommitProbeTimeout bounds each heartbeat transaction.
	DefaultCommitProbeTimeout = 3 * time.Second
	// DefaultCommitStall is how long a leader may go without a successful
	// commit before it hands leadership over. It must exceed two election
	// timeouts (a leader that lost its quorum steps down within one: 15x
	// NetworkLatency, 0.3-0.6 s by default, docs/dqlite-behaviour.md#failover),
	// so that a leader still leading after it has its quorum and the
	// stall is its own; and several probe timeouts, so that one slow
	// transaction on a loaded host does not count as a stall.
	DefaultCommitStall = 12 * time.Second
	// commitNoteFor is how long the status keeps saying that this node
	// handed leadership over because it could not commit.
	commitNoteFor = 10 * time.Minute
	// lowDiskBytes: with less free space than this on the data dir's
	// filesystem libraft 0.15 cannot prepare its next segment (it keeps
	// two of 8 MiB ready: canonical/raft src/uv_prepare.c).
	lowDiskBytes = 16 << 20
)

const commitProbeSchema = `CREATE TABLE IF NOT EXISTS controller_commit_probe (
    controller_id TEXT PRIMARY KEY,
    dqlite_node_id TEXT NOT NULL,
    committed_at   TEXT NOT NULL
)`

// commitWatch is one run's view of its own leadership: since when it
// leads, when it last committed, and what the last probe said.
type commitWatch struct {
	leadingSince time.Time // zero while another node leads
	committedAt  time.Time // last successful probe while leading
	probedAt     time.Time
	lastErr      error
	// tookFrom is the last other node seen leading before this one: a
	// step-down tries it last, so that two nodes that both cannot commit
	// do not hand the leadership back and forth while a third could.
	tookFrom uint64
}

// commitNote is what the status says after a step-down (for
// commitNoteFor), and since when the data dir's filesystem was seen short
// of space (zero: never, in this process).
type commitNote struct {
	text      string
	at        time.Time
	diskLowAt time.Time
	diskFree  uint64 // bytes free on the data dir's filesystem at the last pass
	// replaceWait says why a node with a suspect log is not replaced
	// yet (replace.go).
	replaceWait string
	// markerReady is set once the empty file that becomes the
	// suspect-log marker by a rename is in the data dir (replace.go).
	markerReady bool
}

func (o *Options) commitWatchDefaults() {
	orDefault(&o.CommitProbeInterval, DefaultCommitProbeInterval)
	orDefault(&o.CommitProbeTimeout, DefaultCommitProbeTimeout)
	orDefault(&o.CommitStall, DefaultCommitStall)
}

// validateCommitWatch checks the invariants of the watchdog's options (with
// defaults set).
func (o Options) validateCommitWatch() error {
	electionTimeout := 15 * o.NetworkLatency
	if o.CommitStall <= 2*electionTimeout || o.CommitStall <= 2*o.CommitProbeTimeout || o.CommitStall <= o.CommitProbeInterval {
		return fmt.Errorf("commit stall %s must exceed two election timeouts (%s), two commit probe timeouts (%s) and the probe interval (%s)",
			o.CommitStall, 2*electionTimeout, 2*o.CommitProbeTimeout, o.CommitProbeInterval)
	}
	return nil
}

// stalledFor is how long a leader has gone without a commit (zero when it
// committed or does not lead). Policy only: no I/O.
func (w *commitWatch) stalledFor(now time.Time) time.Duration {
	if w.leadingSince.IsZero() {
		return 0
	}
	since := w.committedAt
	if since.Before(w.leadingSince) {
		since = w.leadingSince
	}
	return now.Sub(since)
}

// watchCommits runs every pass of a ready member: while this node leads it
// commits a heartbeat row every CommitProbeInterval, and once it could not
// for CommitStall it steps down (becomeSteppingDown). It reports whether it
// did, which ends the pass (the observation is stale then).
func (d *Daemon) watchCommits(ctx context.Context, obs *Observation) bool {
	r := d.run
	w := &r.commits
	if obs.Leader.ID != r.node.ID() {
		*w = commitWatch{tookFrom: obs.Leader.ID}
		return false
	}
	now := time.Now()
	if w.leadingSince.IsZero() {
		w.leadingSince = now
	}
	if now.Sub(w.probedAt) >= d.o.CommitProbeInterval {
		w.probedAt = now
		err := d.probeCommit(ctx)
		if err == nil {
			w.committedAt, w.lastErr = time.Now(), nil
			return false
		}
		if w.lastErr == nil {
			d.log.Warn("the Dqlite leader cannot commit its heartbeat row", "node-id", strconv.FormatUint(r.node.ID(), 10), "err", err)
		}
		w.lastErr = err
	}
	stalled := w.stalledFor(time.Now())
	if stalled < d.o.CommitStall || ctx.Err() != nil {
		return false
	}
	d.becomeSteppingDown(ctx, obs, stalled)
	return true
}

// probeCommit commits this controller's heartbeat row (idempotent upsert)
// in an explicit transaction bounded by CommitProbeTimeout.
func (d *Daemon) probeCommit(ctx context.Context) error {
	id := strconv.FormatUint(d.run.node.ID(), 10)
	return d.inTx(ctx, d.o.CommitProbeTimeout, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, commitProbeSchema); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO controller_commit_probe (controller_id, dqlite_node_id, committed_at)
VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f','now'))
ON CONFLICT (controller_id) DO UPDATE SET dqlite_node_id = excluded.dqlite_node_id, committed_at = excluded.committed_at`, d.o.ControllerID, id)
		return err
	})
}

// transferrer is the one leader call the step-down needs (go-dqlite's
// client.Client has it).
type transferrer interface {
	Transfer(ctx context.Context, id uint64) error
}

// becomeSteppingDown hands the leadership of a leader that cannot commit to
// another voter that answers (go-dqlite's Transfer, each attempt bounded by
// HandoverTimeout). No membership changes: the node stays a voter on its
// data and follows the new leader.
//
// It does not restart its own node on the same data. A restart would end
// the stall (a kill -9 did, in the campaign), but after a full disk
// libraft 0.15's log on disk lacks the entries the node failed to store and
// holds later ones at their indices; the restarted node crashed with a
// segmentation fault when it next led (docs/dqlite-behaviour.md#a-full-disk).
// When no voter takes the leadership, the node keeps leading, says so and
// tries again next pass; once its disk has room again it has itself
// replaced (replace.go).
func (d *Daemon) becomeSteppingDown(ctx context.Context, obs *Observation, stalled time.Duration) {
	r := d.run
	selfID := r.node.ID()
	why := fmt.Sprintf("leader could not commit for %s", stalled.Round(time.Second))
	if r.commits.lastErr != nil {
		why += " (" + r.commits.lastErr.Error() + ")"
	}
	t, ok := obs.Client.(transferrer)
	if !ok {
		d.stuck(why + "; this engine cannot transfer leadership")
		return
	}
	var voters []client.NodeInfo
	for _, m := range obs.Members {
		if m.ID != selfID && m.Role == client.Voter {
			voters = append(voters, m)
		}
	}
	// The node this one took the leadership from goes last.
	slices.SortStableFunc(voters, func(a, b client.NodeInfo) int {
		return cmp.Compare(boolInt(a.ID == r.commits.tookFrom), boolInt(b.ID == r.commits.tookFrom))
	})
	var tried []string
	for _, m := range voters {
		if !d.engine.Ask(ctx, m.Address).Answered {
			tried = append(tried, m.Address+": does not answer")
			continue
		}
		tctx, cancel := context.WithTimeout(ctx, d.o.HandoverTimeout)
		err := t.Transfer(tctx, m.ID)
		cancel()
		if err != nil {
			tried = append(tried, m.Address+": "+err.Error())
			continue
		}
		reason := fmt.Sprintf("%s: handed leadership to %s (node %d)", why, m.Address, m.ID)
		d.decision("step-down", reason, "node-id", strconv.FormatUint(selfID, 10), "to", m.Address)
		d.setState(StateSteppingDown, reason)
		d.commitNote.text, d.commitNote.at = reason, time.Now()
		r.commits = commitWatch{tookFrom: m.ID}
		r.leader = nil
		// The pool's connections reach this node as leader.
		d.flushDB()
		return
	}
	if len(tried) == 0 {
		d.stuck(why + "; no other voter to hand leadership to")
		return
	}
	d.stuck(why + "; no voter took the leadership: " + strings.Join(tried, "; "))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// stuck reports a leader that cannot commit and could not step down.
func (d *Daemon) stuck(why string) {
	d.decision("wait", why+"; still leading: not restarting on this data dir (docs/dqlite-behaviour.md#a-full-disk); trying again")
	d.setState(StateSteppingDown, why)
	d.commitNote.text, d.commitNote.at = why, time.Now()
}

// noteDisk runs every pass: it notes when the data dir's filesystem is
// first seen with less than lowDiskBytes free. A follower that failed to
// store entries serves on, lagging, and cannot tell; the note is the
// operator's only sign before it leads. The note reaches the data dir at
// once by renaming the empty file prepared while there was room into the
// marker (a rename takes no data blocks, which a full disk has none of), so
// that a controllerd killed before the disk has room again still knows
// after its restart; writing the marker waits for room only when that
// rename failed. A disk filled and emptied between two passes goes unseen.
func (d *Daemon) noteDisk() {
	free, err := d.freeSpace(d.o.DataDir)
	if err != nil {
		return
	}
	d.commitNote.diskFree = free
	if free < lowDiskBytes && d.commitNote.diskLowAt.IsZero() {
		d.commitNote.diskLowAt = time.Now()
		d.log.Warn("the data dir's filesystem is short of space: Dqlite cannot store new Raft entries, and this node's Raft log may lack entries from now on", "dir", d.o.DataDir, "free-bytes", free)
		d.markSuspectLog()
		return
	}
	if d.commitNote.diskLowAt.IsZero() && !d.commitNote.markerReady {
		d.prepareSuspectMarker()
	}
}

// statfsFree returns the bytes an unprivileged writer may still allocate
// on dir's filesystem.
func statfsFree(dir string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	return fs.Bavail * uint64(fs.Bsize), nil
}

// commitNoteSuffix is the running status message's tail: a step-down (for
// commitNoteFor), a data dir short of space, and, once it was, that this
// node's Raft log may lack entries.
func (d *Daemon) commitNoteSuffix() string {
	n := &d.commitNote
	var parts []string
	if n.text != "" && time.Since(n.at) <= commitNoteFor {
		parts = append(parts, fmt.Sprintf("at %s: %s", n.at.UTC().Format(time.RFC3339), n.text))
	}
	if !n.diskLowAt.IsZero() && n.diskFree < lowDiskBytes {
		parts = append(parts, fmt.Sprintf("the data dir's filesystem has %d KiB free: Dqlite cannot store new Raft entries; free some space", n.diskFree>>10))
	}
	if !n.diskLowAt.IsZero() {
		next := "the node has itself replaced once the filesystem has room"
		if n.replaceWait != "" {
			next = n.replaceWait + "; add a unit, or replace this one (add-unit, then remove-unit)"
		}
		parts = append(parts, fmt.Sprintf("the data dir ran short of space at %s, so this node's Raft log may lack entries (docs/dqlite-behaviour.md#a-full-disk): %s", n.diskLowAt.UTC().Format(time.RFC3339), next))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, "; ")
}
