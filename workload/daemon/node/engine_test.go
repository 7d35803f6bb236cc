package node

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/controllerconf"
)

// Transition rules against a fake go-dqlite: no processes, every answer
// chosen by the test. The process-level scenarios in
// workload/cmd/controllerd try the same rules on real nodes.

type fakeEngine struct {
	mu           sync.Mutex
	answers      map[string]Answer
	started      []startCall
	reconfigured [][]client.NodeInfo
	observe      func() (*Observation, error)
	listed       []string                // controller_listed; nil: unreadable
	failStarts   int                     // so many Starts fail first, leaving no node
	openDB       func() (*sql.DB, error) // nil: no database
	handovers    int                     // Node.Handover calls
	removes      []string                // Engine.Remove calls, "id via leader"
}

type startCall struct {
	address string
	join    []string
}

func (e *fakeEngine) Start(dir, address string, join []string) (Node, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = append(e.started, startCall{address, join})
	if e.failStarts > 0 {
		e.failStarts--
		return nil, errors.New("start node: listen @dqlite-3297041220608546238: address already in use")
	}
	id := uint64(100 + len(e.started))
	if info, ok, _ := readInfo(dir); ok {
		id = info.ID
	} else {
		os.MkdirAll(dir, 0o700)
		writeInfo(dir, client.NodeInfo{ID: id, Address: address})
	}
	return &fakeNode{e: e, id: id, address: address}, nil
}

func (e *fakeEngine) Reconfigure(dir string, nodes []client.NodeInfo) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reconfigured = append(e.reconfigured, nodes)
	return nil
}

func (e *fakeEngine) Ask(_ context.Context, address string) Answer {
	e.mu.Lock()
	defer e.mu.Unlock()
	if a, ok := e.answers[address]; ok {
		a.Address = address
		return a
	}
	return Answer{Address: address}
}

func (e *fakeEngine) Remove(_ context.Context, leader string, id uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.removes = append(e.removes, fmt.Sprintf("%d via %s", id, leader))
	return nil
}

func (e *fakeEngine) Listed(context.Context, []string) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.listed == nil {
		return nil, errors.New("no leader")
	}
	return e.listed, nil
}

func (e *fakeEngine) set(address string, a Answer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.answers[address] = a
}

type fakeNode struct {
	e       *fakeEngine
	id      uint64
	address string
}

func (n *fakeNode) ID() uint64      { return n.id }
func (n *fakeNode) Address() string { return n.address }
func (n *fakeNode) Ready(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}
func (n *fakeNode) Observe(context.Context) (*Observation, error) {
	if n.e.observe == nil {
		return nil, errors.New("no leader")
	}
	return n.e.observe()
}
func (n *fakeNode) Handover(context.Context) error {
	n.e.mu.Lock()
	defer n.e.mu.Unlock()
	n.e.handovers++
	return nil
}
func (n *fakeNode) OpenDB() (*sql.DB, error) {
	if n.e.openDB != nil {
		return n.e.openDB()
	}
	return nil, errors.New("no database in this test")
}
func (n *fakeNode) LeaderClient(context.Context) (*client.Client, error) {
	return nil, errors.New("no leader in this test")
}
func (n *fakeNode) Close() error { return nil }

const (
	addr0 = "10.9.0.1:17666"
	addr1 = "10.9.0.2:17666"
	addr2 = "10.9.0.3:17666"
)

// newFakeDaemon returns controller 0's daemon with the given config, its
// node dir holding node 1 at addr0 in a 3-voter configuration when data.
func newFakeDaemon(t *testing.T, cfg *controllerconf.Config, data bool) (*Daemon, *fakeEngine) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "controller.conf")
	if _, err := controllerconf.Write(path, cfg); err != nil {
		t.Fatal(err)
	}
	e := &fakeEngine{answers: map[string]Answer{}}
	d := newDaemon(Options{
		ControllerID: "0", ConfigPath: path, DataDir: filepath.Join(dir, "data"), Port: 17666,
		Log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		RecoverConfirm: time.Nanosecond, AwayWindow: 50 * time.Millisecond,
	}, e)
	if err := os.MkdirAll(d.o.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if data {
		nd := filepath.Join(dir, "data", nodeDirName)
		if err := os.MkdirAll(nd, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := writeInfo(nd, client.NodeInfo{ID: 1, Address: addr0}); err != nil {
			t.Fatal(err)
		}
		if err := writeStore(nd, threeVoters()); err != nil {
			t.Fatal(err)
		}
	}
	d.readConfig()
	return d, e
}

func threeVoters() []client.NodeInfo {
	return []client.NodeInfo{{ID: 1, Address: addr0, Role: client.Voter}, {ID: 2, Address: addr1, Role: client.Voter}, {ID: 3, Address: addr2, Role: client.Voter}}
}

func conf(pairs ...string) *controllerconf.Config {
	c := &controllerconf.Config{DBBindAddresses: map[string]string{}, BootstrapAgentID: "0"}
	for i := 0; i+1 < len(pairs); i += 2 {
		c.DBBindAddresses[pairs[i]] = pairs[i+1]
	}
	return c
}

func (d *Daemon) passes(n int) {
	for i := 0; i < n; i++ {
		d.reconcile(context.Background())
	}
}

// The bootstrap agent's first start fails (go-dqlite's socket still
// taken): no node ran, so the next pass bootstraps again. It used to
// record the data dir as a member's before the start, and then, with its
// marker and no data, tried to join a cluster that never existed.
func TestTransition_FailedBootstrapStartBootstrapsAgain(t *testing.T) {
	for _, tc := range []struct {
		summary string
		cfg     *controllerconf.Config
	}{
		{"sole controller", conf("0", "10.9.0.1")},
		{"first of three", conf("0", "10.9.0.1", "1", "10.9.0.2", "2", "10.9.0.3")},
	} {
		t.Run(tc.summary, func(t *testing.T) {
			d, e := newFakeDaemon(t, tc.cfg, false)
			e.failStarts = 1
			d.passes(1)
			if len(e.started) != 1 || d.state != StateError {
				t.Fatalf("first pass: starts %+v, state %s: %s", e.started, d.state, d.message)
			}
			d.retryAt = time.Time{} // skip failStart's back-off
			d.passes(1)
			if len(e.started) != 2 {
				t.Fatalf("second pass did not start again: starts %+v, state %s: %s", e.started, d.state, d.message)
			}
			if again := e.started[1]; again.address != addr0 || len(again.join) != 0 {
				t.Fatalf("second start %+v, want a bootstrap at %s (no join addresses)", again, addr0)
			}
			if d.state != StateBootstrapping || !fileExists(filepath.Join(d.o.DataDir, markerName)) {
				t.Fatalf("state %s (%s), marker written: %v", d.state, d.message, fileExists(filepath.Join(d.o.DataDir, markerName)))
			}
		})
	}
}

func TestTransition_OldVotersAcceptingConnectionsAreNeverReplaced(t *testing.T) {
	// Config lists controller 0 alone; a member answers it is one of us.
	d, e := newFakeDaemon(t, conf("0", "10.9.0.1"), true)
	e.set(addr1, Answer{Accepted: true, Answered: true, Members: threeVoters()})
	d.passes(1)
	if len(e.started) != 1 {
		t.Fatalf("node not started on its data: %+v (%s: %s)", e.started, d.state, d.message)
	}
	// Now nobody leads; the two other voters are paused: their sockets
	// accept, nothing answers.
	e.set(addr1, Answer{Accepted: true})
	e.set(addr2, Answer{Accepted: true})
	d.passes(10)
	if len(e.reconfigured) != 0 {
		t.Fatalf("reconfigured while the old voters accept connections: %+v", e.reconfigured)
	}
	if d.state != StateNoQuorum || !strings.Contains(d.message, "still accept connections") {
		t.Fatalf("state %s: %s", d.state, d.message)
	}
	// One of them is gone for good, the other still accepts: wait.
	e.set(addr1, Answer{})
	d.passes(3)
	if len(e.reconfigured) != 0 {
		t.Fatalf("reconfigured while an old voter accepts connections")
	}
	// Both gone: reconfigure with this node the only voter.
	e.set(addr2, Answer{})
	d.passes(1)
	if len(e.reconfigured) != 1 || len(e.reconfigured[0]) != 1 || e.reconfigured[0][0].ID != 1 || e.reconfigured[0][0].Role != client.Voter {
		t.Fatalf("reconfigured = %+v (%s: %s)", e.reconfigured, d.state, d.message)
	}
	if len(e.started) != 2 {
		t.Fatalf("node not restarted after the reconfiguration: %+v", e.started)
	}
}

func TestTransition_FewFailuresNeverReconfigure(t *testing.T) {
	d, e := newFakeDaemon(t, conf("0", "10.9.0.1"), true)
	e.set(addr1, Answer{Accepted: true, Answered: true, Members: threeVoters()})
	d.passes(1)
	e.set(addr1, Answer{})
	d.passes(DefaultRecoverFailures - 1)
	if len(e.reconfigured) != 0 {
		t.Fatalf("reconfigured after %d failed observations", DefaultRecoverFailures-1)
	}
	d.passes(1)
	if len(e.reconfigured) != 1 {
		t.Fatalf("not reconfigured after %d failed observations with the old voters gone (%s)", DefaultRecoverFailures, d.message)
	}
}

func TestTransition_RemovedWhileAwayWipesAndDoesNotRejoinOnTheSameConfig(t *testing.T) {
	// The config still lists all three (a dead machine's file); the
	// leader's configuration lacks node 1.
	cfg := conf("0", "10.9.0.1", "1", "10.9.0.2", "2", "10.9.0.3")
	d, e := newFakeDaemon(t, cfg, true)
	leader := client.NodeInfo{ID: 2, Address: addr1}
	e.set(addr1, Answer{Accepted: true, Answered: true, Leader: leader, Members: []client.NodeInfo{leader}})
	d.passes(1)
	if d.state != StateRemoved || len(e.started) != 0 {
		t.Fatalf("state %s (%s), started %+v", d.state, d.message, e.started)
	}
	if _, ok, _ := readInfo(d.nodeDir); ok {
		t.Fatalf("node dir not wiped")
	}
	d.rejoinAt = time.Time{}
	d.passes(3)
	if len(e.started) != 0 || d.state != StateRemoved {
		t.Fatalf("rejoined on the same config: %+v (%s: %s)", e.started, d.state, d.message)
	}
	// The config changes (the operator adds the controller back): join.
	cfg.APIHosts = []string{"10.9.0.1"}
	if _, err := controllerconf.Write(d.o.ConfigPath, cfg); err != nil {
		t.Fatal(err)
	}
	d.readConfig()
	d.passes(1)
	if len(e.started) != 1 || len(e.started[0].join) == 0 {
		t.Fatalf("did not join after the config changed: %+v (%s: %s)", e.started, d.state, d.message)
	}
}

func TestTransition_UnansweredStartFailsClosedWhenUnlisted(t *testing.T) {
	d, e := newFakeDaemon(t, conf("1", "10.9.0.2"), true)
	for i := 0; i < 5; i++ {
		d.passes(1)
		time.Sleep(20 * time.Millisecond)
	}
	if len(e.started) != 0 {
		t.Fatalf("an unlisted node started on its data with nobody answering")
	}
	// Listed: it starts once the away window has passed.
	d2, e2 := newFakeDaemon(t, conf("0", "10.9.0.1", "1", "10.9.0.2"), true)
	d2.passes(1)
	if len(e2.started) != 0 {
		t.Fatalf("started at once with nobody answering")
	}
	time.Sleep(60 * time.Millisecond)
	d2.passes(1)
	if len(e2.started) != 1 {
		t.Fatalf("a listed node did not start after the away window: %s", d2.message)
	}
}

func TestTransition_BootstrapAgentJoinsAListedPeersCluster(t *testing.T) {
	d, e := newFakeDaemon(t, conf("0", "10.9.0.1", "1", "10.9.0.2"), false)
	e.set(addr1, Answer{Accepted: true, Answered: true, Leader: client.NodeInfo{ID: 2, Address: addr1}, Members: []client.NodeInfo{{ID: 2, Address: addr1}}})
	d.passes(1)
	if len(e.started) != 1 || len(e.started[0].join) != 1 || e.started[0].join[0] != addr1 {
		t.Fatalf("started = %+v, want a join through %s", e.started, addr1)
	}
	// A peer that accepts without answering: wait, never bootstrap.
	d2, e2 := newFakeDaemon(t, conf("0", "10.9.0.1", "1", "10.9.0.2"), false)
	e2.set(addr1, Answer{Accepted: true})
	d2.passes(2)
	if len(e2.started) != 0 || d2.state != StateWaiting {
		t.Fatalf("started = %+v (%s: %s)", e2.started, d2.state, d2.message)
	}
	// Nobody there: bootstrap.
	e2.set(addr1, Answer{})
	d2.passes(1)
	if len(e2.started) != 1 || len(e2.started[0].join) != 0 {
		t.Fatalf("started = %+v, want a bootstrap (%s: %s)", e2.started, d2.state, d2.message)
	}
}

func TestRemoveMember_RefusedUnlessLeading(t *testing.T) {
	d, e := newFakeDaemon(t, conf("0", "10.9.0.1"), true)
	e.set(addr1, Answer{Accepted: true, Answered: true, Members: threeVoters()})
	d.passes(1)
	if err := d.removeMember(context.Background(), 2); err == nil || !strings.Contains(err.Error(), "not a member") {
		t.Fatalf("removal by a node that is not a member yet: %v", err)
	}
	d.run.member = true
	e.observe = func() (*Observation, error) {
		return &Observation{Leader: client.NodeInfo{ID: 2, Address: addr1}, Members: threeVoters()}, nil
	}
	if err := d.removeMember(context.Background(), 3); err == nil || !strings.Contains(err.Error(), "does not lead") {
		t.Fatalf("removal by a follower: %v", err)
	}
	e.observe = func() (*Observation, error) {
		return &Observation{Leader: client.NodeInfo{ID: 1, Address: addr0}, Members: threeVoters()}, nil
	}
	if err := d.removeMember(context.Background(), 1); err == nil || !strings.Contains(err.Error(), "this node") {
		t.Fatalf("removal of the leader itself: %v", err)
	}
	// Without the controller_node table nobody can tell whose node it is.
	if err := d.removeMember(context.Background(), 3); err == nil || !strings.Contains(err.Error(), "cannot tell which controller") {
		t.Fatalf("removal without controller_node: %v", err)
	}
}

func TestTransition_RemovedButListedByTheLeaderRejoins(t *testing.T) {
	cfg := conf("0", "10.9.0.1", "1", "10.9.0.2", "2", "10.9.0.3")
	d, e := newFakeDaemon(t, cfg, true)
	leader := client.NodeInfo{ID: 2, Address: addr1}
	e.set(addr1, Answer{Accepted: true, Answered: true, Leader: leader, Members: []client.NodeInfo{leader}})
	d.passes(1)
	if d.state != StateRemoved {
		t.Fatalf("state %s: %s", d.state, d.message)
	}
	d.rejoinAt = time.Time{}
	// The leader's config does not list it (a departing unit): stay.
	e.listed = []string{"1", "2"}
	d.passes(1)
	if len(e.started) != 0 {
		t.Fatalf("a departing unit rejoined: %+v", e.started)
	}
	// The leader's config lists it (it was removed while that config
	// lagged): rejoin as a new node.
	e.listed = []string{"0", "1", "2"}
	d.listedAt = time.Time{}
	d.passes(1)
	if len(e.started) != 1 || len(e.started[0].join) == 0 {
		t.Fatalf("a wanted node did not rejoin: %+v (%s: %s)", e.started, d.state, d.message)
	}
}

// A db-port change (tests/e2e/rolling TestRollingRestart_DBPortChange):
// controller 0 restarts with port 17777 while its node is at 17666, and
// the leader removed that node while it was down, before any peer serves
// at 17777. It wipes and joins through its peers at the new port and then
// where they served when it was removed (its cluster.yaml), never through
// its own addresses; a restart before the rejoin still knows where they
// served; once a member again it forgets them. It used to join through
// the new port only and wait in "joining" for ever.
func TestTransition_MovedNodeRemovedWhileDownJoinsWhereItsPeersServed(t *testing.T) {
	cfg := conf("0", "10.9.0.1", "1", "10.9.0.2", "2", "10.9.0.3")
	d, e := newFakeDaemon(t, cfg, true)
	d.o.Port = 17777
	leader := client.NodeInfo{ID: 2, Address: addr1, Role: client.Voter}
	after := []client.NodeInfo{leader, {ID: 3, Address: addr2, Role: client.Voter}}
	e.set(addr1, Answer{Accepted: true, Answered: true, Leader: leader, Members: after})
	d.passes(1)
	if d.state != StateRemoved || len(e.started) != 0 {
		t.Fatalf("state %s (%s), started %+v; want removed, not started on its old data", d.state, d.message, e.started)
	}
	if _, ok, _ := readInfo(d.nodeDir); ok {
		t.Fatalf("node dir not wiped")
	}
	want := []string{"10.9.0.2:17777", "10.9.0.3:17777", addr1, addr2}
	check := func(e *fakeEngine, d *Daemon) {
		t.Helper()
		if len(e.started) != 1 || e.started[0].address != "10.9.0.1:17777" || strings.Join(e.started[0].join, ",") != strings.Join(want, ",") {
			t.Fatalf("started %+v (%s: %s), want a join at 10.9.0.1:17777 through %v", e.started, d.state, d.message, want)
		}
	}

	// Restarted before the rejoin (on a copy of the data dir): the wiped
	// node dir's cluster.yaml is gone, the data dir still says where the
	// peers served.
	o2 := d.o
	o2.DataDir = filepath.Join(t.TempDir(), "data")
	if err := os.CopyFS(o2.DataDir, os.DirFS(d.o.DataDir)); err != nil {
		t.Fatal(err)
	}
	d2 := newDaemon(o2, &fakeEngine{answers: map[string]Answer{}})
	d2.readConfig()
	d2.passes(1)
	check(d2.engine.(*fakeEngine), d2)

	d.rejoinAt = time.Time{}
	d.passes(1)
	check(e, d)
	if d.state != StateJoining {
		t.Fatalf("state %s: %s", d.state, d.message)
	}
	// The leader adds it; a member again, it forgets the old addresses.
	joined := append(after, client.NodeInfo{ID: d.run.node.ID(), Address: "10.9.0.1:17777", Role: client.Spare})
	e.observe = func() (*Observation, error) {
		return &Observation{Leader: leader, Members: joined}, nil
	}
	d.run.started = true
	d.passes(1)
	if !d.run.member || d.joinHints != nil || fileExists(filepath.Join(d.o.DataDir, hintsName)) {
		t.Fatalf("member %v, hints %v (file kept: %v); state %s: %s", d.run.member, d.joinHints, fileExists(filepath.Join(d.o.DataDir, hintsName)), d.state, d.message)
	}
}
