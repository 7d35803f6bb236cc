package node

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// Daemon owns one Dqlite node. Run's loop is the only writer of its fields
// (and of its run's); the control socket and the HTTP API read the
// published status and the database handle under mu.
type Daemon struct {
	o       Options
	log     *slog.Logger
	nodeDir string
	engine  Engine
	plane   controlPlane
	// freeSpace returns the bytes free on a filesystem (statfs; tests
	// give a full disk without one).
	freeSpace func(dir string) (uint64, error)

	cfg        *controllerconf.Config
	configErr  string
	everListed map[string]bool
	state      State
	message    string
	// run is everything from one Engine.Start to its Close; nil while no
	// node runs.
	run *nodeRun

	// Across runs.
	candidates  map[uint64]time.Time // removal candidates (leader) since
	decided     map[string]bool      // decisions of this pass
	prevDecided map[string]bool      // decisions of the previous pass
	removed     bool                 // this process found its node removed
	removals    int
	rejoinAt    time.Time
	retryAt     time.Time
	joinHints   []string        // addresses of the members when this node was removed (lastKnown)
	awaySince   time.Time       // first unanswered "still a member?" round before a start
	watchCtx    context.Context // ends with Run: the address lists' watcher
	listedAt    time.Time       // when a removed node may next ask whether the leader lists it
	readyCh     chan Node
	requests    chan request
	quit        chan struct{}

	mu     sync.RWMutex
	db     *sql.DB
	status control.Status
	gate   memberGate
	apiErr string

	tls        tlsState   // tls.go
	commitNote commitNote // commitwatch.go

	proxyLog *proxyLog // go-dqlite's per-connection errors, summarised
	rs       restorer  // restore.go
}

// nodeRun is one run of the Dqlite node: from Engine.Start to Close.
type nodeRun struct {
	node  Node
	fresh bool // started by bootstrap or join in this run, never a member yet
	// readyCancel ends the goroutine waiting for Ready when the run
	// closes before the node was ready.
	readyCancel context.CancelFunc
	started     bool // Ready returned
	ready       bool // and the database is open
	db          *sql.DB
	member      bool
	role        string
	leader      *client.NodeInfo
	members     []client.NodeInfo
	registered  string
	handedOver  bool
	// listed is the config digest last published to controller_listed
	// (leader), listedAt when.
	listed   string
	listedAt time.Time
	// failingSince is the first of the failed observations in a row,
	// failures their number (zero while a leader answers).
	failingSince time.Time
	failures     int
	// leaderSeen is the last successful observation (or the start of
	// the run): certificate refusals since then lock this node out
	// (lockedOut).
	leaderSeen time.Time
	commits    commitWatch // commitwatch.go
}

// New returns a daemon; Run starts it.
func New(o Options) *Daemon {
	return newDaemon(o, nil)
}

func newDaemon(o Options, engine Engine) *Daemon {
	o.setDefaults()
	d := &Daemon{
		o:          o,
		log:        o.Log,
		nodeDir:    filepath.Join(o.DataDir, nodeDirName),
		cfg:        &controllerconf.Config{DBBindAddresses: map[string]string{}},
		everListed: map[string]bool{},
		candidates: map[uint64]time.Time{},
		readyCh:    make(chan Node, 4),
		requests:   make(chan request),
		quit:       make(chan struct{}),
		state:      StateWaiting,
		gate:       memberGate{changed: make(chan struct{})},
		engine:     engine,
		freeSpace:  statfsFree,
	}
	d.proxyLog = newProxyLog(d.log, time.Now)
	d.loadSuspectLog() // replace.go
	if d.engine == nil {
		d.engine = goDqlite{d: d}
	}
	plane := newPlane(o, d.dbSource)
	plane.backupRequests = d.backupRequests // create-backup (ops.go)
	d.plane = plane
	d.publish()
	return d
}

// dbSource gives the current database handle to the control-plane stores:
// the handle changes when the node restarts or rejoins.
func (d *Daemon) dbSource() (*sql.DB, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.db == nil {
		return nil, fmt.Errorf("%w: this node is %s", dbtx.ErrNoDatabase, d.status.State)
	}
	return d.db, nil
}

// Run drives the node until ctx is done, then hands over (bounded) and
// closes it.
func (d *Daemon) Run(ctx context.Context) error {
	defer close(d.quit)
	if err := os.MkdirAll(d.o.DataDir, 0o700); err != nil {
		return fmt.Errorf("cannot create data dir: %w", err)
	}
	if err := os.Chmod(d.o.DataDir, 0o700); err != nil {
		return fmt.Errorf("cannot set data dir mode: %w", err)
	}
	d.log.Info("controllerd starting", "controller-id", d.o.ControllerID, "config", d.o.ConfigPath,
		"data-dir", d.o.DataDir, "port", d.o.Port, "network-latency", d.o.NetworkLatency,
		"snapshot-threshold", d.o.Snapshot.Threshold, "snapshot-trailing", d.o.Snapshot.Trailing,
		"roles-frequency", d.o.RolesFrequency)
	d.readConfig()
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	d.watchCtx = wctx
	tick := time.NewTicker(d.o.Tick)
	defer tick.Stop()
	for {
		d.reconcile(ctx)
		if ctx.Err() == nil {
			d.syncPlane()
		}
		d.publish()
		select {
		case <-ctx.Done():
			d.becomeStopping()
			return nil
		case <-d.o.Changes:
			d.readConfig()
		case n := <-d.readyCh:
			d.onReady(n)
		case req := <-d.requests:
			req.done <- req.do(ctx)
		case <-tick.C:
		}
	}
}

// readConfig reads the config file; a malformed file keeps the last good
// config and is reported in status.
func (d *Daemon) readConfig() {
	c, err := controllerconf.Read(d.o.ConfigPath)
	if errors.Is(err, fs.ErrNotExist) {
		c, err = &controllerconf.Config{DBBindAddresses: map[string]string{}}, nil
	}
	if err != nil {
		if d.configErr != err.Error() {
			d.log.Warn("config file is malformed; keeping the last good config", "path", d.o.ConfigPath, "err", err)
		}
		d.configErr = err.Error()
		d.o.Metrics.ConfigRejected()
		return
	}
	if d.configErr != "" {
		d.log.Info("config file is valid again", "path", d.o.ConfigPath)
	}
	d.configErr = ""
	if c.Equal(d.cfg) {
		return
	}
	d.cfg = c
	d.o.Metrics.ConfigReloaded()
	d.plane.configChanged()
	for id := range c.DBBindAddresses {
		d.everListed[id] = true
	}
	d.log.Info("config changed", "db-bind-addresses", c.DBBindAddresses, "bootstrap-agent-id", c.BootstrapAgentID)
}

// decision logs one line per decision, not one per pass: a decision that
// was also made in the previous pass is not repeated.
func (d *Daemon) decision(action, reason string, attrs ...any) {
	key := action + "\x00" + reason
	d.decided[key] = true
	if d.prevDecided[key] {
		return
	}
	d.o.Metrics.Decision(action)
	d.log.Info("decision", append([]any{"action", action, "reason", reason}, attrs...)...)
}

func (d *Daemon) setState(state State, message string) {
	d.state, d.message = state, message
}

func (d *Daemon) reconcile(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	d.prevDecided, d.decided = d.decided, map[string]bool{}
	d.noteDisk() // commitwatch.go
	if d.run == nil {
		d.reconcileStopped(ctx)
		return
	}
	d.reconcileRunning(ctx)
}

func (d *Daemon) ownAddress() (string, bool) {
	host, ok := d.cfg.DBBindAddresses[d.o.ControllerID]
	if !ok {
		return "", false
	}
	return decide.JoinHostPort(host, d.o.Port), true
}

// reconcileStopped decides what a stopped node does: wait, bootstrap,
// join, start on its data, or rebind.
func (d *Daemon) reconcileStopped(ctx context.Context) {
	now := time.Now()
	if now.Before(d.retryAt) {
		return
	}
	// Every dial below (asking the members, joining) is over TLS: without
	// this node's certificate no peer can be asked, and no answer must not
	// read as "nobody knows".
	if err := d.tlsReady(); err != nil {
		d.decision("wait", err.Error())
		d.setState(StateWaiting, err.Error())
		d.retryAt = now.Add(time.Second)
		return
	}
	if d.restoreStopped(ctx) {
		return
	}
	info, hasData, err := readInfo(d.nodeDir)
	if err != nil {
		d.decision("wait", err.Error())
		d.setState(StateError, err.Error())
		d.retryAt = now.Add(5 * time.Second)
		return
	}
	store, _ := readStore(d.nodeDir)
	sole := len(store) == 1 && store[0].ID == info.ID
	in := decide.StartInput{
		ControllerID:  d.o.ControllerID,
		Config:        d.cfg,
		Port:          d.o.Port,
		HasData:       hasData,
		StoredAddress: info.Address,
		SoleMember:    sole,
		WasMember:     fileExists(filepath.Join(d.o.DataDir, markerName)),
	}
	if own, ok := d.ownAddress(); ok && !hasData {
		in.RemovedHere = d.removedAt(own) && !d.wantedByLeader(ctx)
	}
	dec := decide.Start(in)
	switch dec.Action {
	case decide.Wait, decide.Refuse:
		d.decision(dec.Action.String(), dec.Reason)
		switch {
		case d.removed || in.RemovedHere:
			d.setState(StateRemoved, "this node was removed from the cluster and its data dir wiped; "+dec.Reason)
		case dec.Action == decide.Refuse:
			d.setState(StateRefused, dec.Reason)
		default:
			d.setState(StateWaiting, dec.Reason)
		}
	case decide.Bootstrap:
		d.bootstrapOrJoin(ctx, dec)
	case decide.Join:
		if d.removed && now.Before(d.rejoinAt) {
			d.decision("wait", "removed from the cluster; rejoining as a new node after a back-off")
			d.setState(StateRemoved, fmt.Sprintf("this node was removed from the cluster and its data dir wiped; rejoining as a new node in %s", time.Until(d.rejoinAt).Round(100*time.Millisecond)))
			return
		}
		d.becomeJoining(ctx, dec.Address, dec.Peers, dec.Reason)
	case decide.StartExisting:
		d.startExisting(ctx, info, store, dec)
	case decide.Rebind:
		d.decision(dec.Action.String(), dec.Reason)
		d.becomeRebinding(info, dec.Address)
	}
}

// bootstrapOrJoin runs when decide.Start says bootstrap: the config names
// this controller the bootstrap agent and its data dir never belonged to a
// cluster. That marker lives in the data dir, so a wiped or replaced disk
// loses it: before bootstrapping, the listed peers are asked directly.
// If any of them is or knows a cluster, this node joins it instead; if one
// accepts a connection but does not answer (paused, overloaded), the node
// waits rather than risk a second cluster.
func (d *Daemon) bootstrapOrJoin(ctx context.Context, dec decide.StartDecision) {
	var peers []string
	for id, host := range d.cfg.DBBindAddresses {
		if id != d.o.ControllerID {
			peers = append(peers, decide.JoinHostPort(host, d.o.Port))
		}
	}
	slices.Sort(peers)
	answers := d.askAll(ctx, peers)
	var silent []string
	for _, a := range answers {
		if a.Leader.ID != 0 || len(a.Members) > 0 {
			d.becomeJoining(ctx, dec.Address, peers, fmt.Sprintf("this controller is the bootstrap agent, but listed peer %s is a member of a cluster (leader %q): joining it instead of bootstrapping a second one", a.Address, a.Leader.Address))
			return
		}
		if a.Accepted && !a.Answered {
			silent = append(silent, a.Address)
		}
	}
	if len(silent) > 0 {
		reason := fmt.Sprintf("this controller is the bootstrap agent, but listed peer(s) %v accept connections without answering: not bootstrapping while they may hold a cluster", silent)
		d.decision("wait", reason)
		d.setState(StateWaiting, reason)
		return
	}
	d.becomeBootstrapping(dec.Address, dec.Reason)
}

// askAll asks every address at once (each bounded by askNode's deadline).
func (d *Daemon) askAll(ctx context.Context, addresses []string) []Answer {
	out := make([]Answer, len(addresses))
	var wg sync.WaitGroup
	for i, a := range addresses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = d.engine.Ask(ctx, a)
		}()
	}
	wg.Wait()
	return out
}

// becomeBootstrapping starts a new single-node cluster. Safe because the
// config names exactly one bootstrap agent (the charm writes it once,
// README "Exactly one bootstrap"), this data dir never belonged to a
// cluster (the was-member marker) and no listed peer is or knows a
// cluster (bootstrapOrJoin).
//
// The was-member marker is written once the node has started, not before:
// a start that fails (the port or go-dqlite's socket still taken, a
// transient disk error) started no node, so nothing can have joined it or
// been acknowledged by it, and the next pass bootstraps again. Marked
// before the start, that failure made the bootstrap agent a would-be
// joiner of a cluster that did not exist, waiting for ever. A crash
// between the start and the marker leaves info.yaml, so the node restarts
// as the stored node; the first member observation writes the marker too.
func (d *Daemon) becomeBootstrapping(address, reason string) {
	d.decision("bootstrap", reason, "address", address)
	d.setState(StateBootstrapping, "bootstrapping a new cluster at "+address)
	d.startRun(true, address, nil)
	if d.run == nil {
		return // failStart said why; the next pass decides again
	}
	if err := d.markMember(); err != nil {
		d.log.Error("cannot record that this data dir bootstrapped a cluster; stopping the node until it can", "err", err)
		d.closeRun()
		d.failStart(fmt.Errorf("cannot record membership: %w", err))
	}
}

// becomeJoining starts a brand new node (new id) that joins through peers.
// Safe because a new node joins as a spare and only the leader's Raft
// configuration change makes it a member. A member still registered at
// this very address (the node of a wiped data dir, or of a dead machine
// whose address this one now has) is removed first: see removeFormerNode.
//
// The peers are the listed ones and, after them, the addresses of the
// members this data dir last knew (decide.JoinPeers, which names the
// condition that keeps a join through them safe): after a db-port change
// or `juju bind` the listed addresses serve nothing until the peers moved
// too, and the peers move only once this node is back.
func (d *Daemon) becomeJoining(ctx context.Context, address string, peers []string, reason string) {
	listed := len(peers)
	peers = decide.JoinPeers(peers, d.lastKnown(), address)
	if extra := len(peers) - listed; extra > 0 {
		reason += fmt.Sprintf(", then %d address(es) where members served when this node was removed", extra)
	}
	if !d.removeFormerNode(ctx, address, peers) {
		return
	}
	d.decision("join", reason, "address", address, "peers", peers)
	d.setState(StateJoining, fmt.Sprintf("joining the cluster through %v", peers))
	d.startRun(true, address, peers)
}

// startExisting starts the node on its data dir, unless a leader says it
// was removed while it was down (then it wipes), or nobody could say yet,
// or its log is suspect (replace.go: it waits for room, then is replaced).
func (d *Daemon) startExisting(ctx context.Context, info client.NodeInfo, store []client.NodeInfo, dec decide.StartDecision) {
	if d.waitForRoom(info) {
		return
	}
	verdict, reason, leader := d.stillMember(ctx, info, store)
	switch verdict {
	case memberVerdict:
		if leader != nil && d.replaceStopped(ctx, info, *leader) {
			return
		}
	case removedVerdict:
		d.awaySince = time.Time{}
		d.becomeRemoved(info.Address, reason)
		return
	case unknownVerdict:
		if d.awaySince.IsZero() {
			d.awaySince = time.Now()
		}
		waited := time.Since(d.awaySince)
		_, listed := d.cfg.DBBindAddresses[d.o.ControllerID]
		if !listed || waited < d.o.AwayWindow {
			why := fmt.Sprintf("%s; asking again before starting on this data dir (%s of %s)", reason, waited.Round(100*time.Millisecond), d.o.AwayWindow)
			if !listed {
				why = reason + "; this controller is not in the config: not starting on this data dir until a member answers"
			}
			d.decision("wait", why)
			d.setState(StateWaiting, why)
			return
		}
		dec.Reason += fmt.Sprintf(" (no member answered for %s and the config lists this controller: the whole cluster may be restarting)", waited.Round(100*time.Millisecond))
	}
	d.awaySince = time.Time{}
	d.becomeStarting(info, dec)
}

// becomeStarting starts the node on its data dir. Safe because the node
// is, as far as any member could tell, still in the Raft configuration
// (stillMember): a leader that no longer lists it would have made it wipe.
func (d *Daemon) becomeStarting(info client.NodeInfo, dec decide.StartDecision) {
	d.decision(dec.Action.String(), dec.Reason, "node-id", strconv.FormatUint(info.ID, 10), "address", info.Address)
	d.setState(StateStarting, dec.Reason)
	// A node whose join never completed is still joining, not a member
	// that was removed.
	d.startRun(fileExists(filepath.Join(d.nodeDir, "join")), info.Address, nil)
}

func (d *Daemon) appOptions() []app.Option {
	return []app.Option{
		app.WithNetworkLatency(d.o.NetworkLatency),
		app.WithSnapshotParams(d.o.Snapshot),
		app.WithRolesAdjustmentFrequency(d.o.RolesFrequency),
		app.WithVoters(3),
		app.WithStandBys(3),
		app.WithLogFunc(d.dqliteLog),
	}
}

func (d *Daemon) dqliteLog(l client.LogLevel, format string, a ...interface{}) {
	msg := fmt.Sprintf(format, a...)
	switch l {
	case client.LogDebug:
		if d.o.DqliteDebug {
			d.log.Debug(msg, "component", "dqlite")
		}
	case client.LogInfo:
		d.log.Info(msg, "component", "dqlite")
	case client.LogWarn:
		d.log.Warn(msg, "component", "dqlite")
	default:
		if isProxyError(msg) {
			d.proxyLog.report(msg)
			return
		}
		d.log.Error(msg, "component", "dqlite")
	}
}

// startRun starts a node and a run around it.
func (d *Daemon) startRun(fresh bool, address string, join []string) {
	n, err := d.engine.Start(d.nodeDir, address, join)
	if errors.Is(err, errNoTLSMaterial) {
		d.decision("wait", err.Error())
		d.setState(StateWaiting, err.Error())
		d.retryAt = time.Now().Add(time.Second)
		return
	}
	if err != nil {
		d.failStart(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.run = &nodeRun{node: n, fresh: fresh, readyCancel: cancel, leaderSeen: time.Now()}
	d.log.Info("Dqlite node started", "node-id", strconv.FormatUint(n.ID(), 10), "address", n.Address())
	go func() {
		// Ready returns when the node is ready or the run closed (the
		// context ends then: go-dqlite's Ready does not watch Close);
		// the loop ignores a node of a run it has closed.
		if n.Ready(ctx) != nil {
			return
		}
		select {
		case d.readyCh <- n:
		case <-d.quit:
		case <-ctx.Done():
		}
	}()
}

func (d *Daemon) failStart(err error) {
	d.log.Error("cannot start the node; retrying", "err", err)
	d.setState(StateError, err.Error())
	d.retryAt = time.Now().Add(2 * time.Second)
}

func (d *Daemon) onReady(n Node) {
	r := d.run
	if r == nil || r.node != n || r.started {
		return
	}
	r.started = true
	d.log.Info("Dqlite node ready", "node-id", strconv.FormatUint(n.ID(), 10), "address", n.Address())
	d.openRunDB()
}

// openRunDB opens the run's database once its node is ready; an error is
// retried on the next pass.
func (d *Daemon) openRunDB() {
	r := d.run
	db, err := r.node.OpenDB()
	if err != nil {
		d.log.Error("cannot open the controller database; will retry", "err", err)
		return
	}
	db.SetMaxIdleConns(dbtx.IdleConns) // what dbtx.Flush restores
	r.db, r.ready = db, true
	d.mu.Lock()
	d.db = db
	d.mu.Unlock()
	d.plane.watch(d.watchCtx)
}

// flushDB closes the database pool's idle connections, so that the next
// transaction dials the current leader.
func (d *Daemon) flushDB() {
	d.mu.RLock()
	db := d.db
	d.mu.RUnlock()
	if db != nil {
		dbtx.Flush(db)
	}
}

// closeRun stops the node (no hand-over), after the control plane, and
// ends the run.
func (d *Daemon) closeRun() {
	r := d.run
	if r == nil {
		return
	}
	wait := singularStopWait
	if r.failures > 0 {
		// Without a leader the revoke cannot succeed: do not delay a
		// recovery for it (the flag drops at once either way).
		wait = 0
	}
	d.plane.stop(wait, "the Dqlite node is closing")
	d.plane.closed()
	d.mu.Lock()
	d.db = nil
	d.mu.Unlock()
	if r.db != nil {
		r.db.Close()
	}
	r.readyCancel()
	if err := r.node.Close(); err != nil {
		d.log.Warn("cannot close Dqlite node cleanly", "err", err)
	}
	d.run = nil
}

func (d *Daemon) reconcileRunning(ctx context.Context) {
	r := d.run
	// The leader search asks every peer at once (leadersearch.go), so the
	// observation's deadline does not grow with the members: dead peers
	// listed ahead of the leader no longer hide it.
	octx, cancel := context.WithTimeout(ctx, LeaderSearchTimeout+AttemptTimeout)
	obs, err := r.node.Observe(octx)
	cancel()
	if err != nil {
		d.noLeaderReachable(ctx, err)
		return
	}
	defer obs.Close()
	if r.leader == nil || r.leader.ID != obs.Leader.ID {
		// Pooled connections reach a former leader (or nobody): one whose
		// machine vanished never sends a FIN, and each use would wait for
		// its caller's whole deadline before the pool dropped it.
		d.flushDB()
	}
	r.failures, r.failingSince, r.leaderSeen = 0, time.Time{}, time.Now()
	leader := obs.Leader
	r.leader, r.members = &leader, obs.Members
	selfID := r.node.ID()
	var self *client.NodeInfo
	for i := range obs.Members {
		if obs.Members[i].ID == selfID {
			self = &obs.Members[i]
		}
	}
	if self == nil {
		if r.fresh && !r.started {
			// A joining node is not a member until its join lands.
			d.setState(StateJoining, "waiting for the leader to add this node")
			return
		}
		d.becomeRemoved(r.node.Address(), fmt.Sprintf("node %d is not in the Raft configuration of the cluster led by %s (Ready does not mean member); stopping it and wiping its data dir so it never serves stale state", selfID, obs.Leader.Address))
		return
	}
	if r.fresh {
		// Joined: its own store lists the members now.
		d.forgetJoinHints()
	}
	r.member, r.fresh = true, false
	if role := decide.Role(self.Role).String(); role != r.role {
		// Dqlite assigns roles itself; say so when it does.
		d.log.Info("role", "role", role, "was", r.role, "leader", obs.Leader.Address)
		r.role = role
	}
	if err := d.markMember(); err != nil {
		d.log.Warn("cannot record membership", "err", err)
	}
	if r.started && !r.ready {
		d.openRunDB()
	}
	if !r.ready {
		d.setState(StateStarting, "member; waiting for the node to be ready")
		return
	}
	if d.watchCommits(ctx, obs) || d.replaceSuspectLog(ctx, obs) {
		return
	}
	if r.registered != r.node.Address() {
		if err := d.register(ctx); err != nil {
			d.log.Warn("cannot register this node in controller_node; will retry", "err", err)
		} else {
			r.registered = r.node.Address()
			d.log.Info("registered in controller_node", "controller-id", d.o.ControllerID,
				"node-id", strconv.FormatUint(selfID, 10), "address", r.node.Address())
		}
	}
	if _, listed := d.cfg.DBBindAddresses[d.o.ControllerID]; !listed && len(d.cfg.DBBindAddresses) > 0 {
		d.becomeLeaving(ctx, self)
		return
	}
	r.handedOver = false
	if want, listed := d.ownAddress(); listed && want != r.node.Address() {
		d.addressChanged(ctx, obs, want)
		return
	}
	if d.restoreRunning(ctx) {
		return
	}
	d.plane.serve(ctx, d.cfg)
	if obs.Leader.ID == selfID {
		d.leaderPass(ctx, obs)
	}
	d.becomeRunning(obs)
}

// leaderPass is the Dqlite leader's share of a pass: the member removals,
// the 2-member stand-by and the API address clean-up stay with it (Raft
// makes its membership changes exclusive already). Which controllers it
// lists is published first, so that a member it removes can tell whether
// it is wanted back. A leader that just lost its quorum still answers as
// leader for a moment while its database calls block until their
// deadlines: the first one that fails ends the pass, so that the next
// observation comes soon.
func (d *Daemon) leaderPass(ctx context.Context, obs *Observation) {
	if err := d.publishListedDue(ctx); err != nil {
		return
	}
	removed, err := d.removeDeparted(ctx, obs)
	if removed || err != nil || d.keepStandBy(ctx, obs) {
		return
	}
	d.plane.lead(ctx, d.cfg, obs)
}

// publishListedDue publishes controller_listed when this leader's config
// changed since it last did, and every RepublishInterval.
func (d *Daemon) publishListedDue(ctx context.Context) error {
	r := d.run
	digest := configDigest(d.cfg)
	if r.listed == digest && time.Since(r.listedAt) < d.o.RepublishInterval {
		return nil
	}
	if err := d.publishListed(ctx); err != nil {
		d.log.Warn("cannot publish the listed controllers; will retry", "err", err)
		return err
	}
	r.listed, r.listedAt = digest, time.Now()
	return nil
}

// becomeRunning: the leader lists this node, it is ready and listed at its
// address. Nothing changes membership here.
func (d *Daemon) becomeRunning(obs *Observation) {
	d.decision("serve", "member of the cluster", "role", d.run.role, "leader", obs.Leader.Address)
	d.setState(StateRunning, d.runningMessage()+d.commitNoteSuffix())
}

// addressChanged handles a member whose config gives it another address:
// a single-member cluster rebinds in place, a member of a bigger cluster
// waits to be removed (stepping aside first if it leads) and rejoins.
func (d *Daemon) addressChanged(ctx context.Context, obs *Observation, want string) {
	r := d.run
	sole := len(obs.Members) == 1
	dec := decide.Start(decide.StartInput{ControllerID: d.o.ControllerID, Config: d.cfg, Port: d.o.Port,
		HasData: true, StoredAddress: r.node.Address(), SoleMember: sole, WasMember: true})
	if dec.Action == decide.Rebind {
		d.decision(dec.Action.String(), dec.Reason)
		d.becomeRebinding(client.NodeInfo{ID: r.node.ID(), Address: r.node.Address()}, dec.Address)
		return
	}
	// IPv6 moves like IPv4: over TLS (app.WithTLS) go-dqlite proxies the
	// C node on an abstract Unix socket, so its address may be IPv6.
	reason := fmt.Sprintf("config moves this node from %s to %s: it serves on %s until the leader removes it, then rejoins at %s with a new node id", r.node.Address(), want, r.node.Address(), want)
	d.decision("move", reason)
	d.setState(StateMoving, reason)
	if obs.Leader.ID == r.node.ID() {
		d.stepAside(ctx, obs)
	}
}

func (d *Daemon) runningMessage() string {
	voters, standbys := 0, 0
	for _, m := range d.run.members {
		switch m.Role {
		case client.Voter:
			voters++
		case client.StandBy:
			standbys++
		}
	}
	switch {
	case len(d.run.members) == 1:
		return "single-node cluster: no redundancy"
	case voters == 1 && len(d.run.members) == 2 && standbys == 1:
		return "2-node cluster has 1 voter and 1 stand-by: no quorum without the voter until a third node joins"
	case voters == 1:
		return fmt.Sprintf("%d-node cluster has 1 voter: no redundancy until a third node joins", len(d.run.members))
	}
	return fmt.Sprintf("member (%s) of a %d-node cluster with %d voters", d.run.role, len(d.run.members), voters)
}

// noLeaderReachable counts failed observations from the first one in a
// row (not from the last good pass: one slow pass must not count as time
// without a leader) and asks decide.Recover whether to force a new
// configuration.
func (d *Daemon) noLeaderReachable(ctx context.Context, err error) {
	r := d.run
	// Peers refusing this node's certificate while no leader answers it
	// (all of them, if its config lists it): they removed it (lockedOut), as
	// surely as a leader answering without it. A node never a member in
	// this run (fresh) has nothing stale to wipe.
	if by, out := d.lockedOut(r.leaderSeen); out && !r.fresh {
		d.becomeRemoved(r.node.Address(), fmt.Sprintf("node %d is locked out: its peers (%s) refuse its certificate, so their configs and Raft configuration no longer hold it; wiping its data dir so it never serves stale state", r.node.ID(), by))
		return
	}
	if d.restoreNoLeader() {
		return
	}
	if at, out := d.excludedAtNewAddress(ctx, r.members, r.node.ID()); out && !r.fresh {
		d.becomeRemoved(r.node.Address(), fmt.Sprintf("node %d is not in the Raft configuration of the cluster led by %s, an address the config lists that none of its known members had (the cluster was recovered or moved without it); wiping its data dir so it never serves stale state", r.node.ID(), at))
		return
	}
	now := time.Now()
	if r.failures == 0 {
		r.failingSince = now
		d.log.Warn("no Dqlite leader reachable", "err", err)
	}
	r.failures++
	r.leader = nil
	// The members last reported by a leader are the best knowledge;
	// cluster.yaml lags by up to the roles adjustment period.
	known := r.members
	if len(known) == 0 {
		known, _ = readStore(d.nodeDir)
	}
	if !r.fresh && d.peersMovedAway(known) {
		if v, reason, _ := d.stillMember(ctx, client.NodeInfo{ID: r.node.ID(), Address: r.node.Address()}, known); v == removedVerdict {
			d.becomeRemoved(r.node.Address(), "no leader answers at the addresses of the Raft configuration this node knows, but the config lists peers elsewhere (juju bind): "+reason)
			return
		}
	}
	in := decide.RecoverInput{
		ControllerID: d.o.ControllerID,
		Config:       d.cfg,
		Port:         d.o.Port,
		HasData:      true,
		Fresh:        r.fresh,
		SelfID:       r.node.ID(),
		FailingFor:   now.Sub(r.failingSince),
		Failures:     r.failures,
		Confirm:      d.o.RecoverConfirm,
		MinFailures:  d.o.RecoverFailures,
	}
	for _, n := range known {
		in.Members = append(in.Members, decide.Member{ID: n.ID, Address: n.Address, Role: decide.Role(n.Role)})
	}
	dec := decide.Recover(in)
	if dec.Probe {
		var voters []string
		for _, m := range in.Members {
			if m.Role == decide.Voter && m.ID != in.SelfID {
				voters = append(voters, m.Address)
			}
		}
		answers := d.askAll(ctx, voters)
		byAddress := map[string]Answer{}
		for _, a := range answers {
			byAddress[a.Address] = a
		}
		in.Probes = map[uint64]decide.Probe{}
		for _, m := range in.Members {
			if a, ok := byAddress[m.Address]; ok {
				in.Probes[m.ID] = decide.Probe{Accepted: a.Accepted, Answered: a.Answered}
			}
		}
		// A follower keeps naming a dead leader for a while (a stand-by
		// for ever): only a leader that says so itself counts.
		if la, ok := d.leaderView(ctx, answers); ok {
			in.LeaderAt = la.Address
		}
		in.Probed = true
		dec = decide.Recover(in)
	}
	if dec.Recover {
		d.decision("reconfigure", dec.Reason)
		d.becomeReconfiguring(dec.Nodes)
		return
	}
	d.decision("wait", dec.Reason)
	switch {
	case r.fresh && d.state == StateBootstrapping:
	case r.fresh:
		d.setState(StateJoining, "waiting for a leader to join: "+dec.Reason)
	default:
		d.setState(StateNoQuorum, dec.Reason)
	}
}

// peersMovedAway reports whether the config lists a peer at an address no
// member of the Raft configuration this node knows has: after `juju bind`
// the cluster may have removed this node and moved on to the new
// addresses (its leader rebound in place as the sole member, say), where
// this node, asking only the old addresses, would never hear from a
// leader again. Then it also asks the listed addresses (stillMember), and
// becomes removed only on stillMember's evidence: a leader that says so
// itself and whose configuration lacks this node's id, or its peers
// refusing its certificate, exactly what the same wipe needs when a
// leader answers at the old addresses.
func (d *Daemon) peersMovedAway(known []client.NodeInfo) bool {
	addrs := map[string]bool{}
	for _, n := range known {
		addrs[n.Address] = true
	}
	for id, host := range d.cfg.DBBindAddresses {
		if id != d.o.ControllerID && !addrs[decide.JoinHostPort(host, d.o.Port)] {
			return true
		}
	}
	return false
}

// becomeReconfiguring forces a Raft configuration in which this node is
// the only voter (the other listed members keep their non-voting roles):
// stop the node, ReconfigureMembershipExt (every committed entry stays),
// fix cluster.yaml, start it again. Safe only under decide.Recover's
// conditions: the config dropped every other old voter and none of them
// accepts a connection, so no old majority can come back and outvote the
// new configuration; nodes that return later on their old data find that
// a leader's configuration lacks them and wipe (stillMember).
func (d *Daemon) becomeReconfiguring(members []decide.Member) {
	if err := d.forceConfiguration("reconfiguring this node as the sole voter", members, nil); err != nil {
		d.failStart(err)
	}
}

// forceConfiguration closes the run, calls before (a safety copy of the
// node dir, say; its error restarts the node unchanged), forces a Raft
// configuration with this node as the only voter plus the given other
// members with their roles, and starts the node again. It runs on the
// loop; the caller answers for the safety of the forced configuration
// (decide.Recover's conditions, or an operator's explicit request).
func (d *Daemon) forceConfiguration(message string, members []decide.Member, before func() error) error {
	r := d.run
	if r == nil {
		return fmt.Errorf("cannot reconfigure: no Dqlite node runs (this node is %s)", d.state)
	}
	self := client.NodeInfo{ID: r.node.ID(), Address: r.node.Address(), Role: client.Voter}
	nodes := []client.NodeInfo{self}
	for _, m := range members {
		if m.ID != self.ID {
			nodes = append(nodes, client.NodeInfo{ID: m.ID, Address: m.Address, Role: client.NodeRole(m.Role)})
		}
	}
	d.setState(StateReconfiguring, message)
	d.publish()
	d.closeRun()
	if before != nil {
		if err := before(); err != nil {
			d.startRun(false, self.Address, nil)
			return err
		}
	}
	if err := d.engine.Reconfigure(d.nodeDir, nodes); err != nil {
		d.startRun(false, self.Address, nil)
		return err
	}
	d.log.Info("reconfigured this node as the sole voter; restarting it", "node-id", strconv.FormatUint(self.ID, 10), "members", len(nodes))
	d.startRun(false, self.Address, nil)
	return nil
}

// becomeRebinding moves a single-member cluster to a new address: the
// address is in info.yaml, cluster.yaml and the Raft configuration, so all
// three change while the node is stopped. Safe because the node is the
// only member: no other node holds the old address in its configuration.
func (d *Daemon) becomeRebinding(info client.NodeInfo, address string) {
	d.setState(StateRebinding, fmt.Sprintf("moving this single-member cluster from %s to %s", info.Address, address))
	d.publish()
	d.closeRun()
	self := client.NodeInfo{ID: info.ID, Address: address, Role: client.Voter}
	if err := d.engine.Reconfigure(d.nodeDir, []client.NodeInfo{self}); err != nil {
		d.failStart(err)
		return
	}
	if err := writeInfo(d.nodeDir, client.NodeInfo{ID: info.ID, Address: address}); err != nil {
		d.failStart(err)
		return
	}
	d.log.Info("rebound the node; restarting it", "node-id", strconv.FormatUint(info.ID, 10), "address", address)
	d.startRun(false, address, nil)
}

// becomeRemoved stops a node that is not a member any more and wipes its
// node dir. Safe because a leader's configuration lacks its id: a removed
// node restarted on its old data could help old members outvote the
// current configuration (the hazard in docs/dqlite-behaviour.md#removing-members-and-losing-quorum), and it can never be a
// member again under that id. It rejoins as a new node (new id) only
// while the config lists it, after a back-off that grows with repeated
// removals, and never at the same address until the config changes (the
// charm freezes a departing unit's file, which still lists it: see
// removedAt).
func (d *Daemon) becomeRemoved(address, reason string) {
	d.decision("wipe", reason)
	// Where the members served, for the rejoin (becomeJoining): the
	// leader's last report, then cluster.yaml (all a node removed while
	// it was down knows), kept outside the node dir it wipes.
	var known []string
	if r := d.run; r != nil {
		for _, m := range r.members {
			if m.ID != r.node.ID() {
				known = append(known, m.Address)
			}
		}
		d.closeRun()
	}
	store, _ := readStore(d.nodeDir)
	for _, n := range store {
		known = append(known, n.Address)
	}
	d.joinHints = decide.JoinPeers(nil, known, address)
	if d.joinHints == nil {
		d.joinHints = []string{}
	}
	if err := writeJoinHints(d.o.DataDir, d.joinHints); err != nil {
		d.log.Warn("cannot keep the members' addresses for the rejoin", "err", err)
	}
	if err := d.markMember(); err != nil {
		d.log.Warn("cannot record membership", "err", err)
	}
	if err := d.recordRemoval(address); err != nil {
		d.log.Warn("cannot record the removal", "err", err)
	}
	if err := os.RemoveAll(d.nodeDir); err != nil {
		d.failStart(fmt.Errorf("cannot wipe node dir: %w", err))
		return
	}
	d.removed = true
	d.removals++
	backoff := time.Second << min(d.removals-1, 5)
	d.rejoinAt = time.Now().Add(backoff)
	d.setState(StateRemoved, "this node was removed from the cluster; its data dir was wiped")
}

// becomeLeaving runs on a member whose controller left the config: it
// hands its role over (once) and waits for the leader to remove it.
func (d *Daemon) becomeLeaving(ctx context.Context, self *client.NodeInfo) {
	r := d.run
	d.decision("leave", "this controller is not in the config any more: handing over and waiting for the leader to remove this node")
	if !r.handedOver && (self.Role != client.Spare || (r.leader != nil && r.leader.ID == self.ID)) {
		hctx, cancel := context.WithTimeout(ctx, d.o.HandoverTimeout)
		err := r.node.Handover(hctx)
		cancel()
		if err != nil {
			d.log.Warn("hand-over failed; will retry", "err", err)
		} else {
			d.log.Info("handed over", "node-id", strconv.FormatUint(self.ID, 10))
			r.handedOver = true
		}
	}
	d.setState(StateLeaving, "this controller is not in the config: handed over, waiting to be removed")
}

// lastKnown returns the addresses of the members this data dir knew when
// its node was last removed (becomeRemoved), from memory or, after a
// restart, from the data dir.
func (d *Daemon) lastKnown() []string {
	if d.joinHints == nil {
		d.joinHints = readJoinHints(d.o.DataDir)
	}
	return d.joinHints
}

func (d *Daemon) forgetJoinHints() {
	if d.joinHints == nil && !fileExists(filepath.Join(d.o.DataDir, hintsName)) {
		return
	}
	d.joinHints = nil
	if err := writeJoinHints(d.o.DataDir, nil); err != nil {
		d.log.Warn("cannot forget the members' addresses of the last removal", "err", err)
	}
}

func (d *Daemon) markMember() error {
	path := filepath.Join(d.o.DataDir, markerName)
	if fileExists(path) {
		return nil
	}
	return os.WriteFile(path, []byte("this data dir belonged to a Dqlite cluster member; it never bootstraps again\n"), 0o600)
}

// becomeStopping hands over (bounded) and closes the node on SIGTERM.
func (d *Daemon) becomeStopping() {
	d.setState(StateStopping, "shutting down")
	d.publish()
	// Stop the single-instance work and revoke the lease first, so that
	// another controller takes over at once rather than after its expiry.
	d.plane.stop(d.o.HandoverTimeout, "shutting down")
	r := d.run
	if r == nil {
		d.log.Info("shutting down; no Dqlite node running")
		return
	}
	// One failed leader search is not a lost quorum: on a loaded host
	// the search's deadline can pass while this very node leads (the
	// last CI run skipped the hand-over of a leader that way); a lost
	// quorum fails pass after pass. The hand-over is bounded either way.
	if r.member && r.failures < 2 {
		d.log.Info("shutting down Dqlite node: handing over", "timeout", d.o.HandoverTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), d.o.HandoverTimeout)
		start := time.Now()
		err := r.node.Handover(ctx)
		cancel()
		if err != nil {
			d.log.Warn("hand-over failed; closing anyway", "err", err)
		} else {
			d.log.Info("handed over", "took", time.Since(start).Round(time.Millisecond))
		}
	} else {
		d.log.Info("shutting down Dqlite node: skipping hand-over (not a member, or no leader reachable on the last passes)")
	}
	d.closeRun()
	d.log.Info("Dqlite node closed")
}

// syncPlane runs the singular worker while, and only while, this node is
// a running member: Ready does not mean member, and a removed node's
// driver could still reach the leader and claim. A member that lost its
// quorum keeps it running: it drops the flag by itself when it cannot
// extend, and a Dqlite leader election must not cost the lease.
func (d *Daemon) syncPlane() {
	r := d.run
	running := d.plane.running()
	want := r != nil && r.ready && r.member &&
		(d.state == StateRunning || (running && d.state == StateNoQuorum))
	switch {
	case want && !running:
		d.plane.start(r)
	case !want && running:
		d.plane.stop(singularStopWait, "this node is "+string(d.state))
	}
}

func (d *Daemon) publish() {
	st := control.Status{
		ControllerID: d.o.ControllerID,
		State:        string(d.state),
		Message:      d.message,
		ConfigError:  d.configErr,
		Members:      []control.Member{},
		ConfigPath:   d.o.ConfigPath,
		DataDir:      d.o.DataDir,
	}
	member := false
	if r := d.run; r != nil {
		st.NodeID = strconv.FormatUint(r.node.ID(), 10)
		st.Address = r.node.Address()
		st.Member, st.Role, member = r.member, r.role, r.member
		if r.leader != nil {
			// r.leader is set by a pass's successful observation and
			// cleared by a failed one: the leader answered this pass.
			d.o.Metrics.LeaderContact(time.Now())
			st.Leader = &control.NodeRef{NodeID: strconv.FormatUint(r.leader.ID, 10), Address: r.leader.Address}
		}
		for _, m := range r.members {
			role := decide.Role(m.Role).String()
			st.Members = append(st.Members, control.Member{NodeID: strconv.FormatUint(m.ID, 10), Address: m.Address, Role: role})
			switch m.Role {
			case client.Voter:
				st.Voters++
			case client.StandBy:
				st.StandBys++
			}
		}
	}
	d.mu.Lock()
	d.status = st
	d.mu.Unlock()
	d.setMember(member)
	d.updateTrust()
}

// Status returns the last published status.
func (d *Daemon) Status(context.Context) control.Status {
	d.mu.RLock()
	defer d.mu.RUnlock()
	st := d.status
	d.controlPlaneStatus(&st)
	return st
}
