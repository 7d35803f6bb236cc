package node

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/decide"
)

// Requests from other goroutines (an operator action through the control
// socket, say): the loop is the only one that acts on the node, so they
// run there, between passes.

type request struct {
	do   func(ctx context.Context) error
	done chan error
}

// call runs f on the loop and returns its error, or ctx's.
func (d *Daemon) call(ctx context.Context, f func(ctx context.Context) error) error {
	req := request{do: f, done: make(chan error, 1)}
	select {
	case d.requests <- req:
	case <-d.quit:
		return errors.New("controllerd is shutting down")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RemoveNode removes node id from the Raft configuration at an
// operator's request. Safe under the same rules as the leader's own
// removals (decide.PickRemoval): it runs only on the Dqlite leader (Raft
// makes a deposed leader's Remove fail), never removes this node or a
// member whose controller the config lists (the daemons would undo the
// operator: remove its unit instead), and removes a voter only when the
// remaining voters keep an online majority.
func (d *Daemon) RemoveNode(ctx context.Context, id uint64) error {
	return d.call(ctx, func(ctx context.Context) error { return d.removeMember(ctx, id) })
}

func (d *Daemon) removeMember(ctx context.Context, id uint64) error {
	r := d.run
	if r == nil || !r.member {
		return fmt.Errorf("cannot remove node %d: this node is %s, not a member", id, d.state)
	}
	octx, cancel := context.WithTimeout(ctx, time.Second)
	obs, err := r.node.Observe(octx)
	cancel()
	if err != nil {
		return fmt.Errorf("cannot remove node %d: %w", id, err)
	}
	defer obs.Close()
	if obs.Leader.ID != r.node.ID() {
		return fmt.Errorf("cannot remove node %d: this node does not lead; ask the leader at %s", id, obs.Leader.Address)
	}
	if id == r.node.ID() {
		return fmt.Errorf("cannot remove node %d: it is this node (remove its unit, or stop it and ask another controller)", id)
	}
	in, err := d.removalInput(ctx, obs)
	if err != nil {
		return fmt.Errorf("cannot remove node %d: cannot tell which controller it belongs to: %w", id, err)
	}
	var victim *decide.Member
	for i := range in.Members {
		if in.Members[i].ID == id {
			victim = &in.Members[i]
		}
	}
	if victim == nil {
		return fmt.Errorf("cannot remove node %d: it is not a member", id)
	}
	listed := true
	for _, m := range decide.Unwanted(in) {
		if m.ID == id {
			listed = false
		}
	}
	if listed {
		return fmt.Errorf("cannot remove node %d: its controller is listed in the config (remove its unit instead)", id)
	}
	in.CandidateFor[id] = in.Grace // the operator's word ends any grace
	d.probeVoters(ctx, &in, nil)
	for _, m := range in.Members {
		if m.ID == id {
			victim = &m
		}
	}
	dec := decide.PickRemoval(in, []decide.Member{*victim})
	if !dec.Remove || dec.Victim.ID != id {
		return fmt.Errorf("cannot remove node %d: %s", id, dec.Reason)
	}
	d.decision("remove-member", "requested by the operator: "+dec.Reason, "node-id", strconv.FormatUint(id, 10), "address", victim.Address)
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if err := obs.Client.Remove(rctx, id); err != nil {
		return fmt.Errorf("cannot remove node %d: %w", id, err)
	}
	if err := d.inTx(ctx, 2*time.Second, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM controller_node WHERE dqlite_node_id = ?`, strconv.FormatUint(id, 10))
		return err
	}); err != nil {
		d.log.Warn("cannot delete the removed node's controller_node row", "err", err)
	}
	d.plane.configChanged()
	return nil
}
