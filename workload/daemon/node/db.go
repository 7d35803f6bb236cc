package node

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

const schema = `CREATE TABLE IF NOT EXISTS controller_node (
    controller_id       TEXT PRIMARY KEY,
    dqlite_node_id      TEXT UNIQUE,
    dqlite_bind_address TEXT UNIQUE
)`

// inTx runs f in an explicit transaction with a deadline (dbtx.Run):
// retried when another writer holds the database lock (Dqlite answers
// "database is locked" at once instead of waiting) and when the connection
// broke or reaches a former leader, after flushing the pool's idle
// connections (a pooled connection to a removed leader otherwise fails
// with EOF on every use). f must be idempotent: a commit that fails with a
// lost leadership may still have been applied.
func (d *Daemon) inTx(ctx context.Context, timeout time.Duration, f func(context.Context, *sql.Tx) error) error {
	d.mu.RLock()
	db, state := d.db, d.status.State
	d.mu.RUnlock()
	if db == nil {
		return fmt.Errorf("%w: this node is %s", dbtx.ErrNoDatabase, state)
	}
	ctx, cancel := context.WithTimeout(dbtx.WithObserver(ctx, d.o.Metrics), timeout)
	defer cancel()
	return dbtx.Run(ctx, db, f)
}

// register upserts this node's row in controller_node, first deleting rows
// of other controllers that claim this node id or address (left behind by a
// controller that was removed).
func (d *Daemon) register(ctx context.Context) error {
	id := strconv.FormatUint(d.run.node.ID(), 10)
	addr := d.run.node.Address()
	return d.inTx(ctx, 5*time.Second, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return fmt.Errorf("cannot create controller_node: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM controller_node
WHERE controller_id <> ? AND (dqlite_node_id = ? OR dqlite_bind_address = ?)`, d.o.ControllerID, id, addr); err != nil {
			return fmt.Errorf("cannot clear stale controller_node rows: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO controller_node (controller_id, dqlite_node_id, dqlite_bind_address)
VALUES (?, ?, ?)
ON CONFLICT (controller_id) DO UPDATE SET
    dqlite_node_id = excluded.dqlite_node_id,
    dqlite_bind_address = excluded.dqlite_bind_address`, d.o.ControllerID, id, addr); err != nil {
			return fmt.Errorf("cannot upsert controller_node: %w", err)
		}
		return nil
	})
}

// listedSchema is the leader's view of which controllers the charm lists:
// a removed node whose frozen config still lists it rejoins at the same
// address only if the leader's config lists it too (removedAt).
const listedSchema = `CREATE TABLE IF NOT EXISTS controller_listed (
    controller_id TEXT PRIMARY KEY
)`

// publishListed runs on the leader: it replaces controller_listed with the
// controllers its config lists (never with an empty config).
func (d *Daemon) publishListed(ctx context.Context) error {
	ids := d.cfg.AgentIDs()
	if len(ids) == 0 {
		return nil
	}
	return d.inTx(ctx, 2*time.Second, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, listedSchema); err != nil {
			return fmt.Errorf("cannot create controller_listed: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM controller_listed`); err != nil {
			return fmt.Errorf("cannot clear controller_listed: %w", err)
		}
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, `INSERT INTO controller_listed (controller_id) VALUES (?)`, id); err != nil {
				return fmt.Errorf("cannot fill controller_listed: %w", err)
			}
		}
		return nil
	})
}

// readListed reads controller_listed through db.
func readListed(ctx context.Context, db *sql.DB) ([]string, error) {
	var ids []string
	err := dbtx.Run(ctx, db, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		ids, err = dbtx.Strings(ctx, tx, `SELECT controller_id FROM controller_listed`)
		return err
	})
	return ids, err
}

// controllerNodes maps Dqlite node id to controller id.
func controllerNodes(ctx context.Context, src dbtx.Source) (map[uint64]string, error) {
	db, err := src()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out := map[uint64]string{}
	err = dbtx.Run(ctx, db, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT controller_id, dqlite_node_id FROM controller_node`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var cid, nid string
			if err := rows.Scan(&cid, &nid); err != nil {
				return err
			}
			if n, err := strconv.ParseUint(nid, 10, 64); err == nil {
				out[n] = cid
			}
		}
		return rows.Err()
	})
	return out, err
}

// removalInput gathers what the leader needs to decide on removals.
func (d *Daemon) removalInput(ctx context.Context, obs *Observation) (decide.RemovalInput, error) {
	rows, err := controllerNodes(ctx, d.dbSource)
	if err != nil {
		return decide.RemovalInput{}, err
	}
	members := make([]decide.Member, 0, len(obs.Members))
	for _, m := range obs.Members {
		members = append(members, decide.Member{ID: m.ID, Address: m.Address, Role: decide.Role(m.Role), ControllerID: rows[m.ID]})
	}
	registered := map[string]bool{}
	for _, cid := range rows {
		registered[cid] = true
	}
	return decide.RemovalInput{
		ControllerID: d.o.ControllerID,
		Config:       d.cfg,
		SelfID:       d.run.node.ID(),
		Members:      members,
		EverListed:   d.everListed,
		CandidateFor: map[uint64]time.Duration{},
		Grace:        d.o.RemovalGrace,
		Port:         d.o.Port,
		Registered:   registered,
	}, nil
}

// probeVoters marks which voters answer, so that quorum is judged on who
// is actually online.
func (d *Daemon) probeVoters(ctx context.Context, in *decide.RemovalInput, candidates []decide.Member) {
	for i := range in.Members {
		if in.Members[i].Role == decide.Voter && in.Members[i].ID != in.SelfID {
			in.Members[i].Online = d.probe(ctx, in.Members[i].Address)
		}
	}
	for i := range candidates {
		for _, m := range in.Members {
			if m.ID == candidates[i].ID {
				candidates[i].Online = m.Online
			}
		}
	}
}

// removeDeparted runs on the leader: it removes at most one member per
// pass, keeping quorum: first a member whose controller left the config
// (decide.PickRemoval), otherwise one whose controller moved to another
// address (decide.PickMove), which then rejoins there. Members are
// resolved through controller_node by node id, not by address alone: an
// address may be reused (a new unit on a dead one's IP). It reports
// whether it removed a member (obs is stale then), and the error that
// kept it from reading controller_node.
func (d *Daemon) removeDeparted(ctx context.Context, obs *Observation) (bool, error) {
	in, err := d.removalInput(ctx, obs)
	if err != nil {
		d.log.Warn("cannot read controller_node; not removing anybody this round", "err", err)
		return false, err
	}
	unwanted := decide.Unwanted(in)
	now := time.Now()
	keep := map[uint64]bool{}
	for _, m := range unwanted {
		keep[m.ID] = true
		if _, ok := d.candidates[m.ID]; !ok {
			d.candidates[m.ID] = now
		}
		in.CandidateFor[m.ID] = now.Sub(d.candidates[m.ID])
	}
	for id := range d.candidates {
		if !keep[id] {
			delete(d.candidates, id)
		}
	}
	var dec decide.RemovalDecision
	action := "remove-member"
	if len(unwanted) > 0 {
		d.probeVoters(ctx, &in, unwanted)
		dec = decide.PickRemoval(in, unwanted)
	}
	if !dec.Remove {
		if moved := decide.Moved(in); len(moved) > 0 {
			d.probeVoters(ctx, &in, moved)
			dec = decide.PickMove(in, moved)
			action = "move-member"
		}
	}
	if !dec.Remove {
		if dec.Reason != "" {
			d.decision("keep-members", dec.Reason)
		}
		return false, nil
	}
	d.decision(action, dec.Reason, "node-id", strconv.FormatUint(dec.Victim.ID, 10), "address", dec.Victim.Address)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := obs.Client.Remove(rctx, dec.Victim.ID); err != nil {
		d.log.Warn("cannot remove member; will retry", "node-id", strconv.FormatUint(dec.Victim.ID, 10), "err", err)
		return false, nil
	}
	d.log.Info("removed member from the Raft configuration", "node-id", strconv.FormatUint(dec.Victim.ID, 10),
		"address", dec.Victim.Address, "controller-id", dec.Victim.ControllerID)
	delete(d.candidates, dec.Victim.ID)
	d.plane.configChanged()
	if action == "move-member" {
		// The moved controller's row stays until it registers its new
		// node: it tells every later leader (decide.Settled) that this
		// controller was a member and is not back yet, so that no
		// second member moves meanwhile.
		return true, nil
	}
	id := strconv.FormatUint(dec.Victim.ID, 10)
	if err := d.inTx(ctx, 2*time.Second, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM controller_node WHERE dqlite_node_id = ?`, id)
		return err
	}); err != nil {
		d.log.Warn("cannot delete the removed node's controller_node row", "err", err)
	}
	return true, nil
}

// stepAside runs on a leader whose own controller moved: once no other
// member is moving and the cluster is settled, it hands leadership over so
// that the next leader moves it.
func (d *Daemon) stepAside(ctx context.Context, obs *Observation) {
	in, err := d.removalInput(ctx, obs)
	if err != nil {
		d.log.Warn("cannot read controller_node", "err", err)
		return
	}
	if len(decide.Unwanted(in)) > 0 || len(decide.Moved(in)) > 0 || !decide.Settled(in) || len(obs.Members) < 2 {
		d.removeDeparted(ctx, obs)
		return
	}
	d.decision("step-aside", "this leader's controller moved and every other member is settled: handing leadership over so the next leader moves this node")
	hctx, cancel := context.WithTimeout(ctx, d.o.HandoverTimeout)
	defer cancel()
	if err := d.run.node.Handover(hctx); err != nil {
		d.log.Warn("hand-over failed; will retry", "err", err)
	}
}

func (d *Daemon) probe(ctx context.Context, address string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cli, err := client.New(ctx, address, client.WithDialFunc(d.dialPeer))
	if err != nil {
		return false
	}
	cli.Close()
	return true
}

// SQL runs one statement on the controller database in an explicit
// transaction. A transaction refused with "database is locked" (Dqlite
// does not wait for another writer, and the daemon's lease claims and
// address publishing write every few hundred milliseconds) did not
// commit, so it is tried again until the deadline. So is one whose
// connection broke or reached a former leader before its COMMIT was sent
// (the pool's idle connections are flushed first: they may point at the
// same dead leader); a failed COMMIT is reported as of unknown outcome,
// never re-run (the statement need not be idempotent).
func (d *Daemon) SQL(ctx context.Context, statement string) (control.SQLResult, error) {
	d.mu.RLock()
	db, state := d.db, d.status.State
	d.mu.RUnlock()
	if db == nil {
		return control.SQLResult{}, fmt.Errorf("the controller database is not available: this node is %s", state)
	}
	if state == string(StateRestoring) {
		// Whatever it wrote would be lost with the database it restores.
		return control.SQLResult{}, fmt.Errorf("the controller database is not available: this controller takes part in a restore-backup (see controllerd status); retry once it is running")
	}
	return d.sqlOn(ctx, db, statement)
}

// sqlOn is SQL's retry loop on db, the daemon's database when SQL began.
func (d *Daemon) sqlOn(ctx context.Context, db *sql.DB, statement string) (control.SQLResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	backoff := 10 * time.Millisecond
	for {
		res, committing, err := runSQL(ctx, db, statement)
		if err != nil && !committing {
			if state, closed := d.dbClosedSince(db); closed {
				// The node stopped under the statement ("sql: database
				// is closed"): nothing was committed.
				return res, fmt.Errorf("the controller database is not available: this node closed it while the statement ran (now %s); the statement was not applied", state)
			}
		}
		stale := dbtx.StaleConn(err)
		if stale {
			dbtx.Flush(db)
		}
		if !dbtx.Busy(err) && (!stale || committing) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return res, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// dbClosedSince reports whether db is no longer the daemon's database
// (closeRun closed it), with the node's state now.
func (d *Daemon) dbClosedSince(db *sql.DB) (state string, closed bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.status.State, d.db != db
}

// runSQL runs statement in a transaction; committing says whether the
// error came from the COMMIT (whose outcome is then unknown).
func runSQL(ctx context.Context, db *sql.DB, statement string) (res control.SQLResult, committing bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return control.SQLResult{}, false, fmt.Errorf("cannot begin transaction: %w", err)
	}
	defer tx.Rollback()
	if !isQuery(statement) {
		r, err := tx.ExecContext(ctx, statement)
		if err != nil {
			return control.SQLResult{}, false, fmt.Errorf("%w", err)
		}
		n, _ := r.RowsAffected()
		if err := tx.Commit(); err != nil {
			return control.SQLResult{}, true, fmt.Errorf("cannot commit: %w: %w", control.ErrOutcomeUnknown, err)
		}
		return control.SQLResult{RowsAffected: &n}, false, nil
	}
	res, err = readRows(ctx, tx, statement)
	if err != nil {
		return control.SQLResult{}, false, fmt.Errorf("%w", err)
	}
	// Nothing was written: the COMMIT only ends the read.
	if err := tx.Commit(); err != nil {
		return control.SQLResult{}, false, fmt.Errorf("%w", err)
	}
	return res, false, nil
}

func readRows(ctx context.Context, tx *sql.Tx, statement string) (control.SQLResult, error) {
	rows, err := tx.QueryContext(ctx, statement)
	if err != nil {
		return control.SQLResult{}, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return control.SQLResult{}, err
	}
	res := control.SQLResult{Columns: cols, Rows: [][]any{}, IsQuery: true}
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return control.SQLResult{}, err
		}
		for i, v := range vals {
			if b, ok := v.([]byte); ok {
				vals[i] = string(b)
			}
		}
		res.Rows = append(res.Rows, vals)
	}
	if err := rows.Err(); err != nil {
		return control.SQLResult{}, err
	}
	return res, nil
}

// isQuery reports whether a statement returns rows, from its first keyword.
func isQuery(statement string) bool {
	s := strings.TrimSpace(statement)
	for strings.HasPrefix(s, "--") {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			return false
		}
		s = strings.TrimSpace(s[i+1:])
	}
	s = strings.TrimLeft(s, "( \t\n")
	end := strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	})
	if end >= 0 {
		s = s[:end]
	}
	switch strings.ToUpper(s) {
	case "SELECT", "WITH", "PRAGMA", "EXPLAIN", "VALUES":
		return true
	}
	return false
}
