package node

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/client"
)

// A database whose transactions begin and commit at once (committing) or
// wait for their deadline (a leader that cannot commit).
type probeConnector struct{ stuck *atomic.Bool }

func (c probeConnector) Connect(context.Context) (driver.Conn, error) { return probeConn(c), nil }
func (c probeConnector) Driver() driver.Driver                        { return nil }

type probeConn probeConnector

func (c probeConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("not supported") }
func (c probeConn) Close() error                        { return nil }
func (c probeConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}
func (c probeConn) BeginTx(ctx context.Context, _ driver.TxOptions) (driver.Tx, error) {
	if c.stuck.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return probeTx{}, nil
}
func (c probeConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(1), nil
}

type probeTx struct{}

func (probeTx) Commit() error   { return nil }
func (probeTx) Rollback() error { return nil }

// fakeLeader is the leader connection of a fake observation.
type fakeLeader struct {
	mu        sync.Mutex
	transfers []uint64
	removes   []uint64
	refuse    bool
}

func (f *fakeLeader) Remove(_ context.Context, id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removes = append(f.removes, id)
	return nil
}

func (f *fakeLeader) Assign(context.Context, uint64, client.NodeRole) error { return nil }
func (f *fakeLeader) Close() error                                          { return nil }
func (f *fakeLeader) Transfer(_ context.Context, id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.transfers = append(f.transfers, id)
	if f.refuse {
		return errors.New("leadership transfer failed")
	}
	return nil
}

// leadingDaemon is controller 0's daemon whose node 1 leads a 3-voter
// cluster on a database that commits and, once it runs, stays stuck when
// stuck is set.
func leadingDaemon(t *testing.T, stuck bool) (*Daemon, *fakeEngine, *fakeLeader) {
	var stuckDB atomic.Bool
	d, e := newFakeDaemon(t, conf("0", "10.9.0.1", "1", "10.9.0.2", "2", "10.9.0.3"), true)
	e.openDB = func() (*sql.DB, error) { return sql.OpenDB(probeConnector{stuck: &stuckDB}), nil }
	leader := &fakeLeader{}
	e.observe = func() (*Observation, error) {
		return &Observation{Leader: client.NodeInfo{ID: 1, Address: addr0}, Members: threeVoters(), Client: leader}, nil
	}
	e.set(addr1, Answer{Accepted: true, Answered: true, Leader: client.NodeInfo{ID: 1, Address: addr0}, Members: threeVoters()})
	d.o.CommitProbeInterval, d.o.CommitProbeTimeout, d.o.CommitStall = time.Millisecond, 20*time.Millisecond, 200*time.Millisecond
	d.watchCtx = t.Context()
	d.passes(1)
	if d.run == nil {
		t.Fatalf("node not started: %s: %s", d.state, d.message)
	}
	d.run.started = true // Ready returned
	d.passes(1)
	if d.state != StateRunning {
		t.Fatalf("state %s: %s", d.state, d.message)
	}
	stuckDB.Store(stuck)
	return d, e, leader
}

// passFor runs passes for about dur.
func (d *Daemon) passFor(dur time.Duration) {
	for end := time.Now().Add(dur); time.Now().Before(end); {
		d.passes(1)
		time.Sleep(5 * time.Millisecond)
	}
}

// passUntil runs passes until cond holds, for at most 30 s (a stuck
// database makes each pass wait for its deadlines).
func (d *Daemon) passUntil(cond func() bool) {
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end) && !cond(); {
		d.passes(1)
	}
}

func (f *fakeLeader) tried() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.transfers)
}

// A leader whose heartbeat commits keeps its leadership.
func TestTransition_CommittingLeaderKeepsLeading(t *testing.T) {
	d, _, leader := leadingDaemon(t, false)
	d.passFor(600 * time.Millisecond)
	if len(leader.transfers) != 0 || d.state != StateRunning {
		t.Fatalf("a committing leader transferred its leadership: %v (%s: %s)", leader.transfers, d.state, d.message)
	}
}

// A leader that cannot commit for CommitStall hands its leadership to a
// voter that answers, stays a member on its data and says why.
func TestTransition_StuckLeaderHandsLeadershipOver(t *testing.T) {
	d, e, leader := leadingDaemon(t, true)
	d.passUntil(func() bool { return leader.tried() > 0 })
	if len(leader.transfers) == 0 || leader.transfers[0] != 2 {
		t.Fatalf("transfers = %v, want one to node 2 (the voter that answers) (%s: %s)", leader.transfers, d.state, d.message)
	}
	if d.state != StateSteppingDown || !strings.Contains(d.message, "leader could not commit for") || !strings.Contains(d.message, "handed leadership to 10.9.0.2:17666 (node 2)") {
		t.Errorf("status does not say what happened: %s: %s", d.state, d.message)
	}
	if !strings.Contains(d.commitNoteSuffix(), "handed leadership to 10.9.0.2:17666") {
		t.Errorf("running status lacks the step-down note: %q", d.commitNoteSuffix())
	}
	if len(e.started) != 1 || len(e.reconfigured) != 0 || d.run == nil {
		t.Fatalf("restarted or reconfigured: started %v, reconfigured %v", e.started, e.reconfigured)
	}
	if _, ok, _ := readInfo(d.nodeDir); !ok {
		t.Fatal("node dir wiped")
	}
}

// With no voter taking the leadership, a stuck leader keeps leading and
// says so: it never restarts on its data (docs/dqlite-behaviour.md "A full
// disk") and never wipes.
func TestTransition_StuckLeaderWithoutTakerWaits(t *testing.T) {
	d, e, leader := leadingDaemon(t, true)
	leader.refuse = true
	e.set(addr2, Answer{})
	d.passUntil(func() bool { return leader.tried() > 1 })
	if len(leader.transfers) == 0 {
		t.Fatalf("no transfer tried (%s: %s)", d.state, d.message)
	}
	for _, id := range leader.transfers {
		if id != 2 {
			t.Fatalf("transfer to node %d, which does not answer", id)
		}
	}
	if d.state != StateSteppingDown || !strings.Contains(d.message, "no voter took the leadership") {
		t.Fatalf("state %s: %s", d.state, d.message)
	}
	if len(e.started) != 1 || d.run == nil {
		t.Fatalf("restarted: %v", e.started)
	}
	if _, ok, _ := readInfo(d.nodeDir); !ok {
		t.Fatal("node dir wiped")
	}
}

// Two nodes that both cannot commit must not hand the leadership back and
// forth: the node this one took it from is tried last.
func TestTransition_StuckLeaderTriesTheNodeItTookLeadershipFromLast(t *testing.T) {
	d, e, leader := leadingDaemon(t, true)
	e.set(addr2, Answer{Accepted: true, Answered: true})
	var mu sync.Mutex
	leaderID := uint64(2)
	e.observe = func() (*Observation, error) {
		mu.Lock()
		defer mu.Unlock()
		l := client.NodeInfo{ID: leaderID, Address: addr1}
		if leaderID == 1 {
			l.Address = addr0
		}
		return &Observation{Leader: l, Members: threeVoters(), Client: leader}, nil
	}
	d.passes(1) // node 2 leads
	mu.Lock()
	leaderID = 1 // then this node does, and cannot commit
	mu.Unlock()
	d.passUntil(func() bool { return leader.tried() > 0 })
	if len(leader.transfers) == 0 || leader.transfers[0] != 3 {
		t.Fatalf("transfers = %v, want node 3 first (node 2 handed the leadership over) (%s: %s)", leader.transfers, d.state, d.message)
	}
}
