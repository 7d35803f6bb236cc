package node

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// The operator's operations (control.Operations): cluster-status,
// create-backup, list-backups and remove-member. They run on the control
// socket's goroutines, never on the node's loop: they read the published
// status and the database, and reach the Dqlite leader through a node store
// of their own built from the published members.

const (
	// opTimeout bounds each read an operation makes of the cluster.
	opTimeout = 3 * time.Second
	// backupRequestTimeout bounds how long create-backup waits for the
	// lease holder to take the backup.
	backupRequestTimeout = 2 * time.Minute
	// backupRequestPoll is how often the holder looks for requests, and
	// the requester for the answer.
	backupRequestPoll = 300 * time.Millisecond
	// removeTimeout bounds the Raft configuration change of remove-member.
	removeTimeout = 10 * time.Second
	backupLayout  = "backup-20060102T150405.000Z"
)

const backupRequestSchema = `CREATE TABLE IF NOT EXISTS controller_backup_request (
    id           TEXT PRIMARY KEY,
    requested_by TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    state        TEXT NOT NULL,
    holder       TEXT NOT NULL DEFAULT '',
    name         TEXT NOT NULL DEFAULT '',
    path         TEXT NOT NULL DEFAULT '',
    bytes        INTEGER NOT NULL DEFAULT 0,
    error        TEXT NOT NULL DEFAULT ''
)`

// ClusterStatus implements control.Operations: the members as the leader
// last reported them, each probed for being online, with their controller
// ids, the lease holder and the last backup. Without a leader it still
// answers with what this node knows, and says what it could not read.
func (d *Daemon) ClusterStatus(ctx context.Context) (control.ClusterStatus, error) {
	st := d.Status(ctx)
	out := control.ClusterStatus{ControllerID: d.o.ControllerID, State: st.State, Members: []control.ClusterMember{}, Problems: []string{}}
	ids := d.controllerIDs(ctx, &out.Problems)
	leader := ""
	if st.Leader != nil {
		leader = st.Leader.Address
	} else {
		out.Problems = append(out.Problems, fmt.Sprintf("no Dqlite leader reachable from controller %s (%s: %s); the members are the last ones a leader reported", d.o.ControllerID, st.State, st.Message))
	}
	online := d.probeAll(ctx, st.Members)
	for _, m := range st.Members {
		cm := control.ClusterMember{NodeID: m.NodeID, ControllerID: ids.lookup(m.NodeID, m.Address), Address: m.Address,
			Role: m.Role, Online: online[m.Address], Leader: m.Address == leader}
		out.Members = append(out.Members, cm)
		if cm.Leader {
			l := cm
			out.Leader = &l
		}
	}
	if st.Leader != nil {
		// As this node's singular worker last saw it (no transaction).
		l, err := d.Lease()
		switch {
		case err != nil:
			out.Problems = append(out.Problems, "cannot read the singular-controller lease: "+err.Error())
		case !l.Expired && l.Expiry != nil:
			out.LeaseHolder, out.LeaseExpiry = l.Holder, l.Expiry.UTC().Format(time.RFC3339Nano)
		}
		b, err := d.lastBackup(ctx)
		if err != nil {
			out.Problems = append(out.Problems, "cannot read the last backup: "+err.Error())
		}
		out.LastBackup = b
	}
	return out, nil
}

// nodeControllers maps Dqlite nodes to controller ids: by node id from
// controller_node, else by address host from the config.
type nodeControllers struct {
	byNode map[string]string
	byHost map[string]string
}

func (n nodeControllers) lookup(nodeID, address string) string {
	if id := n.byNode[nodeID]; id != "" {
		return id
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	return n.byHost[host]
}

func (d *Daemon) controllerIDs(ctx context.Context, problems *[]string) nodeControllers {
	out := nodeControllers{byNode: map[string]string{}, byHost: map[string]string{}}
	if cfg, err := controllerconf.Read(d.o.ConfigPath); err == nil {
		for id, host := range cfg.DBBindAddresses {
			out.byHost[host] = id
		}
	}
	err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT controller_id, dqlite_node_id FROM controller_node`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var cid, nid sql.NullString
			if err := rows.Scan(&cid, &nid); err != nil {
				return err
			}
			if nid.Valid {
				out.byNode[nid.String] = cid.String
			}
		}
		return rows.Err()
	})
	if err != nil && problems != nil {
		*problems = append(*problems, "cannot read controller_node (controller ids come from the config): "+err.Error())
	}
	return out
}

func (d *Daemon) probeAll(ctx context.Context, members []control.Member) map[string]bool {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]bool{}
	for _, m := range members {
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			ok := d.answers(ctx, addr)
			mu.Lock()
			out[addr] = ok
			mu.Unlock()
		}(m.Address)
	}
	wg.Wait()
	return out
}

// answers reports whether a Dqlite node answers a request at address
// within a second. A dial alone is not enough: the kernel accepts the
// connection of a frozen (SIGSTOPped) process.
func (d *Daemon) answers(ctx context.Context, address string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cli, err := client.New(ctx, address, client.WithDialFunc(d.dialPeer))
	if err != nil {
		return false
	}
	defer cli.Close()
	_, err = cli.Leader(ctx)
	return err == nil
}

func (d *Daemon) lastBackup(ctx context.Context) (*control.BackupInfo, error) {
	var b *control.BackupInfo
	err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'controller_backup'`).Scan(&n); err != nil || n == 0 {
			return err
		}
		var name, cid, at string
		var bytes int64
		err := tx.QueryRowContext(ctx, `SELECT name, controller_id, taken_at, bytes FROM controller_backup ORDER BY taken_at DESC LIMIT 1`).Scan(&name, &cid, &at, &bytes)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		b = &control.BackupInfo{ID: strings.TrimPrefix(name, cid+"/"), ControllerID: cid, Time: dbTimeRFC3339(at), Size: bytes}
		return nil
	})
	return b, err
}

// dbTimeRFC3339 turns SQLite's "YYYY-MM-DD HH:MM:SS.SSS" (UTC) into RFC 3339.
func dbTimeRFC3339(s string) string {
	t, err := time.Parse("2006-01-02 15:04:05.999", s)
	if err != nil {
		return s
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// CreateBackup implements control.Operations: a backup now, taken by the
// singular-controller lease holder wherever it is asked. The request goes
// through the database (table controller_backup_request), which every
// controller reaches, and the holder's backup-requests worker takes it; so
// exactly the one controller that takes the periodic backups takes this
// one too, and a change of holder hands the request over.
func (d *Daemon) CreateBackup(ctx context.Context) (control.BackupInfo, error) {
	st := d.Status(ctx)
	if !st.Member || st.Leader == nil {
		return control.BackupInfo{}, fmt.Errorf("cannot create a backup: controller %s is %s (%s), so it cannot reach the lease holder; run create-backup on a unit whose controllerd is running, or restore quorum first (cluster-status shows which members answer)", d.o.ControllerID, st.State, st.Message)
	}
	id, err := randomID()
	if err != nil {
		return control.BackupInfo{}, err
	}
	err = d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, backupRequestSchema); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO controller_backup_request (id, requested_by, requested_at, state)
VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f','now'), 'pending') ON CONFLICT (id) DO NOTHING`, id, d.o.ControllerID)
		return err
	})
	if err != nil {
		return control.BackupInfo{}, fmt.Errorf("cannot request a backup: %w; retry when cluster-status shows a leader", err)
	}
	deadline := time.Now().Add(backupRequestTimeout)
	for {
		b, state, msg, err := d.backupRequest(ctx, id)
		switch {
		case err == nil && state == "done":
			return b, nil
		case err == nil && state == "failed":
			return control.BackupInfo{}, fmt.Errorf("cannot create a backup: the lease holder controller %s failed: %s", b.ControllerID, msg)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			// Withdraw the request unless the holder took it meanwhile.
			var withdrawn bool
			werr := d.inTx(context.Background(), opTimeout, func(ctx context.Context, tx *sql.Tx) error {
				res, err := tx.ExecContext(ctx, `DELETE FROM controller_backup_request WHERE id = ? AND state = 'pending'`, id)
				if err != nil {
					return err
				}
				n, _ := res.RowsAffected()
				withdrawn = n > 0
				return nil
			})
			holder := "nobody"
			if st := d.Status(ctx); st.Lease != nil && st.Lease.Holder != "" {
				holder = st.Lease.Holder
			}
			if werr == nil && !withdrawn {
				if b, state, _, err := d.backupRequest(context.Background(), id); err == nil && state == "done" {
					return b, nil
				}
			}
			return control.BackupInfo{}, fmt.Errorf("cannot create a backup: no lease holder took the request within %s (lease held by %s); check cluster-status and retry", backupRequestTimeout, holder)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backupRequestPoll):
		}
	}
}

func (d *Daemon) backupRequest(ctx context.Context, id string) (b control.BackupInfo, state, msg string, err error) {
	err = d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		var at string
		return tx.QueryRowContext(ctx, `SELECT state, holder, name, path, bytes, error, requested_at FROM controller_backup_request WHERE id = ?`, id).
			Scan(&state, &b.ControllerID, &b.ID, &b.Path, &b.Size, &msg, &at)
	})
	if t, perr := time.Parse(backupLayout, b.ID); perr == nil {
		b.Time = t.UTC().Format(time.RFC3339Nano)
	}
	return b, state, msg, err
}

// backupRequests is the holder's worker for create-backup: it takes the
// pending requests, oldest first, with the same backup worker as the
// periodic backups (nil: backups are disabled here, and requests fail
// saying so).
func (d *Daemon) backupRequests(bw *backup.Worker) singular.Worker {
	return singular.WorkerFunc(func(ctx context.Context, tok lease.Token) error {
		return d.backupRequestsPeriodic(bw, tok).Run(ctx, tok)
	})
}

// backupRequestsPeriodic polls for requests under one tenure of the lease
// (tok fences the backup record and the answers).
func (d *Daemon) backupRequestsPeriodic(bw *backup.Worker, tok lease.Token) singular.Periodic {
	return singular.Periodic{
		Name:     "backup-requests",
		Interval: backupRequestPoll,
		Timeout:  backup.DefaultTimeout,
		Log:      d.log.With("component", "backup"),
		Func: func(ctx context.Context) error {
			var ids []string
			err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
				ids = nil
				// Read only: this runs every poll on the holder, and a write
				// would take the database's write lock each time.
				var n int
				if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'controller_backup_request'`).Scan(&n); err != nil || n == 0 {
					return err
				}
				var err error
				ids, err = dbtx.Strings(ctx, tx, `SELECT id FROM controller_backup_request WHERE state = 'pending' ORDER BY requested_at`)
				return err
			})
			if err != nil || len(ids) == 0 {
				return err
			}
			state, errMsg := "done", ""
			var b backup.Backup
			if bw == nil {
				state, errMsg = "failed", "backups are disabled on it (controllerd runs with --backup-dir \"\")"
			} else if b, err = bw.Take(ctx, tok); err != nil && b.Name == "" {
				state, errMsg = "failed", err.Error()
			}
			if state == "failed" {
				d.o.Metrics.BackupFailed()
			}
			if state == "done" {
				d.log.Info("backup taken on request", "path", b.Path, "bytes", b.Bytes, "requests", len(ids))
			}
			// One backup answers every request pending when it began;
			// answered requests older than a day are of no use to anyone.
			return d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
				if err := tok.Assert(ctx, tx); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `DELETE FROM controller_backup_request WHERE state != 'pending'
AND julianday('now') - julianday(requested_at) > 1`); err != nil {
					return err
				}
				for _, id := range ids {
					if _, err := tx.ExecContext(ctx, `UPDATE controller_backup_request SET state = ?, holder = ?, name = ?, path = ?, bytes = ?, error = ?
WHERE id = ? AND state = 'pending'`, state, d.o.ControllerID, b.Name, b.Path, b.Bytes, errMsg, id); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
}

func randomID() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("cannot generate a request id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// ListBackups implements control.Operations: the complete backups in this
// controller's backup directory, oldest first.
func (d *Daemon) ListBackups(ctx context.Context) ([]control.BackupInfo, error) {
	out := []control.BackupInfo{}
	if d.o.BackupDir == "" {
		return out, nil
	}
	names, err := backup.List(d.o.BackupDir)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		b := control.BackupInfo{ID: n, ControllerID: d.o.ControllerID, Path: filepath.Join(d.o.BackupDir, n)}
		if t, err := time.Parse(backupLayout, n); err == nil {
			b.Time = t.UTC().Format(time.RFC3339Nano)
		}
		entries, _ := os.ReadDir(b.Path)
		for _, e := range entries {
			if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
				b.Size += info.Size()
			}
		}
		out = append(out, b)
	}
	return out, nil
}

// RemoveMember implements control.Operations: it removes one member from
// the Raft configuration through the Dqlite leader. It runs on the node's
// loop (call), like the daemon's own membership changes, through this
// run's node and its leader observation.
//
// Safe because: the change goes through the leader (Raft commits it only
// with a majority of the new configuration); it is refused unless the
// voters left keep an online majority, so the cluster never loses quorum by
// it; neither the leader (it would have to step down first) nor this node
// (it would serve on until it noticed) is removed; without force, only a
// member whose controller is gone from the relation (the config) and that
// is not a voter that stopped answering (whose data may be the newest) is
// removed. The removed node can never rejoin on its old data: a running
// one finds itself missing from the leader's configuration and wipes its
// data dir, and one that was down asks the members before it starts
// (removedWhileAway) and wipes. RemoveNode is the leader-only, by-id form
// under the daemon's own removal rules (decide.PickRemoval).
func (d *Daemon) RemoveMember(ctx context.Context, req control.RemoveMemberRequest) (control.RemoveMemberResult, error) {
	if (req.AgentID == "") == (req.Address == "") {
		return control.RemoveMemberResult{}, errors.New("cannot remove a member: give exactly one of agent-id and address")
	}
	type result struct {
		res control.RemoveMemberResult
		err error
	}
	out := make(chan result, 1)
	err := d.call(ctx, func(ctx context.Context) error {
		res, err := d.removeMemberByOperator(ctx, req)
		out <- result{res, err}
		return err
	})
	select {
	case r := <-out:
		return r.res, r.err
	default:
	}
	if ctx.Err() != nil {
		// The request may have reached the loop before ctx ended.
		return control.RemoveMemberResult{}, fmt.Errorf("%w: remove-member did not finish: %w; run cluster-status to see whether the member is still there, then retry", control.ErrOutcomeUnknown, err)
	}
	return control.RemoveMemberResult{}, fmt.Errorf("cannot remove a member: %w", err)
}

// removeMemberByOperator runs on the loop.
func (d *Daemon) removeMemberByOperator(ctx context.Context, req control.RemoveMemberRequest) (control.RemoveMemberResult, error) {
	var res control.RemoveMemberResult
	st := d.Status(ctx)
	r := d.run
	if r == nil || !r.member || r.leader == nil {
		return res, fmt.Errorf("cannot remove a member: no quorum: controller %s reaches no Dqlite leader (%s: %s); a Raft membership change needs a majority of the voters; if they are lost for good, run recover-from-quorum-loss", d.o.ControllerID, st.State, st.Message)
	}
	lctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	obs, err := r.node.Observe(lctx)
	if err != nil {
		return res, fmt.Errorf("cannot remove a member: no quorum: cannot reach the Dqlite leader: %v; retry, or run recover-from-quorum-loss if a majority of voters is lost for good", err)
	}
	defer obs.Close()
	cli, leader, members := obs.Client, &obs.Leader, obs.Members
	ids := d.controllerIDs(ctx, nil)
	var target *client.NodeInfo
	for i, m := range members {
		nid := strconv.FormatUint(m.ID, 10)
		if req.AgentID != "" && ids.lookup(nid, m.Address) == req.AgentID {
			target = &members[i]
		}
		if req.Address != "" {
			host, _, _ := net.SplitHostPort(m.Address)
			if m.Address == req.Address || host == req.Address {
				target = &members[i]
			}
		}
	}
	which := "agent id " + req.AgentID
	if req.Address != "" {
		which = "address " + req.Address
	}
	if target == nil {
		var names []string
		for _, m := range members {
			names = append(names, fmt.Sprintf("%s (agent %s)", m.Address, orUnknown(ids.lookup(strconv.FormatUint(m.ID, 10), m.Address))))
		}
		sort.Strings(names)
		return res, fmt.Errorf("cannot remove a member: no member has %s (members: %s); it may be removed already; cluster-status lists the members", which, strings.Join(names, ", "))
	}
	res = control.RemoveMemberResult{NodeID: strconv.FormatUint(target.ID, 10), ControllerID: ids.lookup(strconv.FormatUint(target.ID, 10), target.Address),
		Address: target.Address, Role: decide.Role(target.Role).String()}
	if target.ID == leader.ID {
		return res, fmt.Errorf("cannot remove a member: %s (node %s) is the Dqlite leader; remove its unit with juju remove-unit (it hands leadership over), or stop its controllerd so another member leads, then retry", target.Address, res.NodeID)
	}
	if target.ID == r.node.ID() {
		return res, fmt.Errorf("cannot remove a member: %s (node %s) is this controller's own node; run remove-member on another unit, or remove this unit with juju remove-unit", target.Address, res.NodeID)
	}
	listed := false
	if cfg, err := controllerconf.Read(d.o.ConfigPath); err == nil {
		host, _, _ := net.SplitHostPort(target.Address)
		for id, h := range cfg.DBBindAddresses {
			listed = listed || (res.ControllerID != "" && id == res.ControllerID) || h == host
		}
	}
	res.WasOnline = d.answers(ctx, target.Address)
	if !req.Force && listed {
		return res, fmt.Errorf("cannot remove a member: controller %s (%s) is still in the db-cluster relation; remove its unit with juju remove-unit (the cluster then removes the member by itself), or pass force=true if its machine is gone for good", orUnknown(res.ControllerID), target.Address)
	}
	if !req.Force && target.Role == client.Voter && !res.WasOnline {
		return res, fmt.Errorf("cannot remove a member: %s (controller %s) is a voter that does not answer; its data may be the newest, so removing it needs force=true once you know its machine is gone for good", target.Address, orUnknown(res.ControllerID))
	}
	// The voters left must keep an online majority, or the change would
	// leave the cluster without quorum (and could not even commit).
	voters, online := 0, 0
	for _, m := range members {
		if m.Role != client.Voter || m.ID == target.ID {
			continue
		}
		voters++
		if m.ID == leader.ID || d.answers(ctx, m.Address) {
			online++
		}
	}
	if target.Role == client.Voter && voters > 0 && online <= voters/2 {
		return res, fmt.Errorf("cannot remove a member: without %s the %d voters left have only %d online, which is no majority; bring the others back first", target.Address, voters, online)
	}
	rctx, rcancel := context.WithTimeout(ctx, removeTimeout)
	defer rcancel()
	if err := cli.Remove(rctx, target.ID); err != nil {
		if errors.Is(rctx.Err(), context.DeadlineExceeded) {
			return res, fmt.Errorf("%w: the removal of %s was sent but not answered within %s: %v; run cluster-status to see whether it is still a member, then retry", control.ErrOutcomeUnknown, target.Address, removeTimeout, err)
		}
		return res, fmt.Errorf("cannot remove %s: %w; run cluster-status and retry", target.Address, err)
	}
	d.decision("remove-member", "requested by the operator", "node-id", res.NodeID, "address", res.Address, "controller-id", res.ControllerID, "force", req.Force, "was-online", res.WasOnline)
	nid := res.NodeID
	if err := d.inTx(ctx, opTimeout, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM controller_node WHERE dqlite_node_id = ?`, nid)
		return err
	}); err != nil {
		d.log.Warn("cannot delete the removed node's controller_node row; the leader's clean-up retries", "err", err)
	}
	d.plane.configChanged()
	res.Message = fmt.Sprintf("removed %s %s (node %s, controller %s) from the Raft configuration; it wipes its data dir if it ever runs again", res.Role, res.Address, res.NodeID, orUnknown(res.ControllerID))
	if listed {
		res.Message += "; its unit is still in the relation: remove it with juju remove-unit --force, or it rejoins as a new node"
	}
	return res, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
