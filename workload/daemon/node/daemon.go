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

	dqlite "github.com/canonical/go-dqlite"
	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// States reported in status.
const (
	StateWaiting         = "waiting"
	StateRefused         = "refused"
	StateBootstrapping   = "bootstrapping"
	StateJoining         = "joining"
	StateStarting        = "starting"
	StateRunning         = "running"
	StateNoQuorum        = "no-quorum"
	StateLeaving         = "leaving"
	StateRemoved         = "removed"
	StateReconfiguring   = "reconfiguring"
	StateRebinding       = "rebinding"
	StateAddressMismatch = "address-mismatch"
	StateMoving          = "moving"
	StateError           = "error"
	StateStopping        = "stopping"
)

// Daemon owns one Dqlite node. Run's loop is the only writer of the fields
// above mu; the control socket reads the published status and the database
// handle under mu.
type Daemon struct {
	o       Options
	log     *slog.Logger
	nodeDir string

	cfg         *controllerconf.Config
	configErr   string
	everListed  map[string]bool
	app         *app.App
	peers       *peerStore // how the daemon reaches the running node's cluster
	fresh       bool       // started by bootstrap/join in this process, never member
	ready       bool
	member      bool
	role        string
	leader      *client.NodeInfo
	members     []client.NodeInfo
	state       string
	message     string
	registered  string
	noLeader    time.Time // zero while a leader is reachable
	leaderSeen  time.Time // last successful observation (or node start)
	candidates  map[uint64]time.Time
	decided     map[string]bool // decisions of this pass
	prevDecided map[string]bool // decisions of the previous pass
	removed     bool
	removals    int
	rejoinAt    time.Time
	retryAt     time.Time
	handedOver  bool
	joinHints   []string // addresses of the members when this node was removed
	readyCh     chan *app.App
	quit        chan struct{}

	// Control plane (plane.go).
	leases      *lease.Store
	addrs       *apiaddr.Store
	watcher     *apiaddr.Watcher
	watchCtx    context.Context // ends with Run; the watcher starts at the first ready
	watching    bool
	published   *apiaddr.Controller // last published own addresses; nil: publish
	publishedAt time.Time
	pruneDue    bool
	prunedAt    time.Time
	apiNote     string

	mu     sync.RWMutex
	db     *sql.DB
	status control.Status
	sing   *singularRun // written by the loop under mu
	// baton keeps a restarted singular worker's workers from starting
	// before the previous run's have returned.
	baton  singular.Baton
	gate   memberGate
	apiErr string

	tls tlsState // tls.go
}

// New returns a daemon; Run starts it.
func New(o Options) *Daemon {
	o.setDefaults()
	d := &Daemon{
		o:          o,
		log:        o.Log,
		nodeDir:    filepath.Join(o.DataDir, nodeDirName),
		cfg:        &controllerconf.Config{DBBindAddresses: map[string]string{}},
		everListed: map[string]bool{},
		candidates: map[uint64]time.Time{},
		readyCh:    make(chan *app.App, 4),
		quit:       make(chan struct{}),
		state:      StateWaiting,
		gate:       memberGate{changed: make(chan struct{})},
	}
	d.leases = lease.NewFrom(d.dbSource)
	d.addrs = apiaddr.NewStoreFrom(d.dbSource)
	d.watcher = apiaddr.NewWatcher(d.addrs, o.AddressPoll, o.Log.With("component", "api-addresses"))
	d.publish()
	return d
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
			d.syncSingular()
		}
		d.publish()
		select {
		case <-ctx.Done():
			d.shutdown()
			return nil
		case <-d.o.Changes:
			d.readConfig()
		case a := <-d.readyCh:
			d.onReady(a)
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
	d.pruneDue = true
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
	d.log.Info("decision", append([]any{"action", action, "reason", reason}, attrs...)...)
}

func (d *Daemon) setState(state, message string) {
	d.state, d.message = state, message
}

func (d *Daemon) reconcile(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	d.prevDecided, d.decided = d.decided, map[string]bool{}
	if d.app == nil {
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

func (d *Daemon) reconcileStopped(ctx context.Context) {
	now := time.Now()
	if now.Before(d.retryAt) {
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
	dec := decide.Start(decide.StartInput{
		ControllerID:  d.o.ControllerID,
		Config:        d.cfg,
		Port:          d.o.Port,
		HasData:       hasData,
		StoredAddress: info.Address,
		SoleMember:    sole,
		WasMember:     fileExists(filepath.Join(d.o.DataDir, markerName)),
	})
	switch dec.Action {
	case decide.Wait, decide.Refuse:
		d.decision(dec.Action.String(), dec.Reason)
		switch {
		case d.removed:
			d.setState(StateRemoved, "this node was removed from the cluster and its data dir wiped; "+dec.Reason)
		case dec.Action == decide.Refuse:
			d.setState(StateRefused, dec.Reason)
		default:
			d.setState(StateWaiting, dec.Reason)
		}
	case decide.Bootstrap:
		d.decision(dec.Action.String(), dec.Reason, "address", dec.Address)
		if err := d.markMember(); err != nil {
			d.failStart(err)
			return
		}
		d.setState(StateBootstrapping, "bootstrapping a new cluster at "+dec.Address)
		d.start(true, app.WithAddress(dec.Address))
	case decide.Join:
		if d.removed && now.Before(d.rejoinAt) {
			d.decision("wait", "removed from the cluster; rejoining as a new node after a back-off")
			d.setState(StateRemoved, fmt.Sprintf("this node was removed from the cluster and its data dir wiped; rejoining as a new node in %s", time.Until(d.rejoinAt).Round(100*time.Millisecond)))
			return
		}
		peers := dec.Peers
		for _, h := range d.joinHints {
			// The old members' addresses help when the peers moved too
			// and do not serve at their new addresses yet.
			if h != dec.Address && !slices.Contains(peers, h) {
				peers = append(peers, h)
			}
		}
		d.decision(dec.Action.String(), dec.Reason, "address", dec.Address, "peers", peers)
		d.setState(StateJoining, fmt.Sprintf("joining the cluster through %v", peers))
		d.start(true, app.WithAddress(dec.Address), app.WithCluster(peers))
	case decide.StartExisting:
		if leader, gone := d.removedWhileAway(ctx, info, store); gone {
			d.handleRemoved(fmt.Sprintf("node %d is not a member of the cluster led by %s (removed while it was down); wiping its data dir instead of starting it on stale state", info.ID, leader))
			return
		}
		d.decision(dec.Action.String(), dec.Reason, "node-id", strconv.FormatUint(info.ID, 10), "address", info.Address)
		d.setState(StateStarting, dec.Reason)
		// A node whose join never completed is still joining, not a
		// member that was removed.
		d.start(fileExists(filepath.Join(d.nodeDir, "join")), app.WithAddress(info.Address))
	case decide.Rebind:
		d.decision(dec.Action.String(), dec.Reason)
		d.rebind(info, dec.Address)
	}
}

// removedWhileAway asks the peers an existing node knows of (cluster.yaml
// and the config) whether it is still a member, before the node starts: a
// node removed while it was down must not rejoin Raft with its old
// configuration (it could help old members outvote a reconfigured one).
func (d *Daemon) removedWhileAway(ctx context.Context, info client.NodeInfo, store []client.NodeInfo) (string, bool) {
	seen := map[string]bool{info.Address: true}
	var nodes []client.NodeInfo
	for _, n := range store {
		if !seen[n.Address] {
			seen[n.Address] = true
			nodes = append(nodes, client.NodeInfo{Address: n.Address})
		}
	}
	// Only when cluster.yaml names nobody else, ask the configured peers:
	// they are the cluster this node was told to be part of.
	if len(nodes) == 0 {
		for id, host := range d.cfg.DBBindAddresses {
			addr := decide.JoinHostPort(host, d.o.Port)
			if id != d.o.ControllerID && !seen[addr] {
				seen[addr] = true
				nodes = append(nodes, client.NodeInfo{Address: addr})
			}
		}
	}
	if len(nodes) == 0 {
		return "", false
	}
	probe := client.NewInmemNodeStore()
	probe.Set(ctx, nodes)
	asked := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cli, err := d.findLeader(ctx, probe)
	if err != nil {
		if by, out := d.lockedOut(asked); out {
			return "peers that refuse this node (" + by + ")", true
		}
		return "", false
	}
	defer cli.Close()
	leader, err := cli.Leader(ctx)
	if err != nil || leader == nil {
		return "", false
	}
	members, err := cli.Cluster(ctx)
	if err != nil || len(members) == 0 {
		return "", false
	}
	for _, m := range members {
		if m.ID == info.ID {
			return "", false
		}
	}
	return leader.Address, true
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
		d.log.Error(msg, "component", "dqlite")
	}
}

func (d *Daemon) start(fresh bool, opts ...app.Option) {
	if err := os.MkdirAll(d.nodeDir, 0o700); err != nil {
		d.failStart(fmt.Errorf("cannot create node dir: %w", err))
		return
	}
	tlsOpts, err := d.tlsOptions()
	if err != nil {
		d.decision("wait", err.Error())
		d.setState(StateWaiting, err.Error())
		d.retryAt = time.Now().Add(time.Second)
		return
	}
	a, err := app.New(d.nodeDir, append(append(d.appOptions(), opts...), tlsOpts...)...)
	if err != nil {
		d.failStart(fmt.Errorf("cannot start Dqlite node: %w", err))
		return
	}
	d.app, d.fresh, d.ready, d.member, d.handedOver = a, fresh, false, false, false
	d.peers = newPeerStore(a.Address(), d.nodeDir)
	d.noLeader, d.leaderSeen = time.Time{}, time.Now()
	d.log.Info("Dqlite node started", "node-id", strconv.FormatUint(a.ID(), 10), "address", a.Address())
	go func() {
		// Ready returns when the node is ready or closed; the loop
		// ignores a node it has closed in the meantime.
		a.Ready(context.Background())
		select {
		case d.readyCh <- a:
		case <-d.quit:
		}
	}()
}

func (d *Daemon) failStart(err error) {
	d.log.Error("cannot start the node; retrying", "err", err)
	d.setState(StateError, err.Error())
	d.retryAt = time.Now().Add(2 * time.Second)
}

func (d *Daemon) onReady(a *app.App) {
	if a != d.app || d.ready {
		return
	}
	db, err := d.openDB(d.peers)
	if err != nil {
		d.log.Error("cannot open the controller database", "err", err)
		return
	}
	db.SetMaxIdleConns(dbtx.IdleConns) // what dbtx.Flush restores
	d.ready = true
	d.mu.Lock()
	d.db = db
	d.mu.Unlock()
	if !d.watching {
		// From now on the served lists are re-read from the database for
		// the life of the process; while it cannot be read (the node
		// restarts, is removed) the last known ones stay.
		d.watching = true
		go d.watcher.Run(d.watchCtx)
	}
	d.log.Info("Dqlite node ready", "node-id", strconv.FormatUint(a.ID(), 10), "address", a.Address())
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

// closeApp stops the node (no hand-over), after the singular worker.
func (d *Daemon) closeApp() {
	wait := singularStopWait
	if !d.noLeader.IsZero() {
		// Without a leader the revoke cannot succeed: do not delay a
		// recovery for it (the flag drops at once either way).
		wait = 0
	}
	d.stopSingular(wait, "the Dqlite node is closing")
	d.published = nil
	d.mu.Lock()
	db := d.db
	d.db = nil
	d.mu.Unlock()
	if db != nil {
		db.Close()
	}
	if d.app != nil {
		if err := d.app.Close(); err != nil {
			d.log.Warn("cannot close Dqlite node cleanly", "err", err)
		}
	}
	d.app, d.peers, d.ready, d.member, d.leader, d.members, d.role, d.registered = nil, nil, false, false, nil, nil, "", ""
}

// observation is what the leader says about the cluster.
type observation struct {
	cli     *client.Client
	leader  *client.NodeInfo
	members []client.NodeInfo
}

func (d *Daemon) observe(ctx context.Context) (*observation, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cli, err := d.leaderClient(ctx, d.peers)
	if err != nil {
		return nil, err
	}
	leader, err := cli.Leader(ctx)
	if err != nil || leader == nil || leader.ID == 0 {
		cli.Close()
		return nil, fmt.Errorf("cannot get leader: %v", err)
	}
	members, err := cli.Cluster(ctx)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("cannot list cluster members: %w", err)
	}
	d.peers.setMembers(members)
	return &observation{cli: cli, leader: leader, members: members}, nil
}

func (d *Daemon) reconcileRunning(ctx context.Context) {
	began := time.Now()
	obs, err := d.observe(ctx)
	if err != nil {
		d.noLeaderReachable(began, err)
		return
	}
	defer obs.cli.Close()
	if d.leader == nil || d.leader.ID != obs.leader.ID {
		// Pooled connections reach a former leader (or nobody): one whose
		// machine vanished never sends a FIN, and each use would wait for
		// its caller's whole deadline before the pool dropped it.
		d.flushDB()
	}
	d.noLeader, d.leaderSeen = time.Time{}, time.Now()
	d.leader, d.members = obs.leader, obs.members
	selfID := d.app.ID()
	var self *client.NodeInfo
	for i := range obs.members {
		if obs.members[i].ID == selfID {
			self = &obs.members[i]
		}
	}
	if self == nil {
		if d.fresh && !d.ready {
			// A joining node is not a member until its join lands.
			d.setState(StateJoining, "waiting for the leader to add this node")
			return
		}
		d.handleRemoved(fmt.Sprintf("node %d is not in the Raft configuration of the cluster led by %s (Ready does not mean member); stopping it and wiping its data dir so it never serves stale state", selfID, obs.leader.Address))
		return
	}
	d.member, d.fresh = true, false
	if role := decide.Role(self.Role).String(); role != d.role {
		// Dqlite assigns roles itself; say so when it does.
		d.log.Info("role", "role", role, "was", d.role, "leader", obs.leader.Address)
		d.role = role
	}
	if err := d.markMember(); err != nil {
		d.log.Warn("cannot record membership", "err", err)
	}
	if !d.ready {
		d.setState(StateStarting, "member; waiting for the node to be ready")
		return
	}
	if d.registered != d.app.Address() {
		if err := d.register(ctx); err != nil {
			d.log.Warn("cannot register this node in controller_node; will retry", "err", err)
		} else {
			d.registered = d.app.Address()
			d.log.Info("registered in controller_node", "controller-id", d.o.ControllerID,
				"node-id", strconv.FormatUint(selfID, 10), "address", d.app.Address())
		}
	}
	if _, listed := d.cfg.DBBindAddresses[d.o.ControllerID]; !listed && len(d.cfg.DBBindAddresses) > 0 {
		d.leave(ctx, self)
		return
	}
	d.handedOver = false
	if want, listed := d.ownAddress(); listed && want != d.app.Address() {
		sole := len(obs.members) == 1
		dec := decide.Start(decide.StartInput{ControllerID: d.o.ControllerID, Config: d.cfg, Port: d.o.Port,
			HasData: true, StoredAddress: d.app.Address(), SoleMember: sole, WasMember: true})
		if dec.Action == decide.Rebind {
			d.decision(dec.Action.String(), dec.Reason)
			d.rebind(client.NodeInfo{ID: selfID, Address: d.app.Address()}, dec.Address)
			return
		}
		reason := fmt.Sprintf("config moves this node from %s to %s: it serves on %s until the leader removes it, then rejoins at %s with a new node id", d.app.Address(), want, d.app.Address(), want)
		d.decision("move", reason)
		d.setState(StateMoving, reason)
		if obs.leader.ID == selfID {
			d.stepAside(ctx, obs)
		}
		return
	}
	d.publishAddresses(ctx)
	if obs.leader.ID == selfID {
		// The member removals and the API address clean-up stay with
		// the Dqlite leader: Raft makes it exclusive already.
		if !d.removeDeparted(ctx, obs) {
			d.pruneAddresses(ctx, obs)
		}
	}
	d.decision("serve", "member of the cluster", "role", d.role, "leader", obs.leader.Address)
	d.setState(StateRunning, d.runningMessage())
}

func (d *Daemon) runningMessage() string {
	voters := 0
	for _, m := range d.members {
		if m.Role == client.Voter {
			voters++
		}
	}
	switch {
	case len(d.members) == 1:
		return "single-node cluster: no redundancy"
	case voters == 1:
		return fmt.Sprintf("%d-node cluster has 1 voter: no redundancy until a third node joins", len(d.members))
	}
	return fmt.Sprintf("member (%s) of a %d-node cluster with %d voters", d.role, len(d.members), voters)
}

// noLeaderReachable counts the time without a leader from the last
// successful observation (a leader that lost its quorum may still answer
// for a moment, and database calls block until their deadline meanwhile).
func (d *Daemon) noLeaderReachable(since time.Time, err error) {
	if by, out := d.lockedOut(d.leaderSeen); out && !d.fresh {
		d.handleRemoved(fmt.Sprintf("node %d is locked out: the config does not list this controller and its peers (%s) refuse its certificate, so they removed it; wiping its data dir so it never serves stale state", d.app.ID(), by))
		return
	}
	now := time.Now()
	if d.noLeader.IsZero() {
		d.noLeader = since
		d.log.Warn("no Dqlite leader reachable", "err", err)
	}
	d.leader = nil
	// The members last reported by a leader are the best knowledge;
	// cluster.yaml lags by up to the roles adjustment period.
	known := d.members
	if len(known) == 0 {
		known, _ = readStore(d.nodeDir)
	}
	var lastRole decide.Role = decide.Voter
	for _, n := range known {
		if n.ID == d.app.ID() {
			lastRole = decide.Role(n.Role)
		}
	}
	dec := decide.Recover(decide.RecoverInput{
		ControllerID: d.o.ControllerID,
		Config:       d.cfg,
		HasData:      true,
		Fresh:        d.fresh,
		NoLeaderFor:  now.Sub(d.leaderSeen),
		Confirm:      d.o.RecoverConfirm,
		LastRole:     lastRole,
		KnownMembers: len(known),
	})
	if dec.Recover {
		d.decision("reconfigure", dec.Reason)
		d.recoverAlone()
		return
	}
	d.decision("wait", dec.Reason)
	switch {
	case d.fresh && d.state == StateBootstrapping:
	case d.fresh:
		d.setState(StateJoining, "waiting for a leader to join: "+dec.Reason)
	default:
		d.setState(StateNoQuorum, dec.Reason)
	}
}

// recoverAlone makes this node the sole voter of its cluster: stop it,
// force a Raft configuration with only itself (keeping every committed
// entry), fix cluster.yaml, and start it again.
func (d *Daemon) recoverAlone() {
	self := client.NodeInfo{ID: d.app.ID(), Address: d.app.Address(), Role: client.Voter}
	d.setState(StateReconfiguring, "reconfiguring this node as the sole voter")
	d.publish()
	d.closeApp()
	if err := dqlite.ReconfigureMembershipExt(d.nodeDir, []dqlite.NodeInfo{self}); err != nil {
		d.failStart(fmt.Errorf("cannot reconfigure membership: %w", err))
		return
	}
	if err := writeStore(d.nodeDir, []client.NodeInfo{self}); err != nil {
		d.failStart(err)
		return
	}
	d.log.Info("reconfigured this node as the sole voter; restarting it", "node-id", strconv.FormatUint(self.ID, 10))
	d.start(false, app.WithAddress(self.Address))
}

// rebind moves a single-member cluster to a new address: the address is in
// info.yaml, cluster.yaml and the Raft configuration, so all three change
// while the node is stopped.
func (d *Daemon) rebind(info client.NodeInfo, address string) {
	d.setState(StateRebinding, fmt.Sprintf("moving this single-member cluster from %s to %s", info.Address, address))
	d.publish()
	if d.app != nil {
		d.closeApp()
	}
	self := client.NodeInfo{ID: info.ID, Address: address, Role: client.Voter}
	if err := dqlite.ReconfigureMembershipExt(d.nodeDir, []dqlite.NodeInfo{self}); err != nil {
		d.failStart(fmt.Errorf("cannot reconfigure membership: %w", err))
		return
	}
	if err := writeInfo(d.nodeDir, client.NodeInfo{ID: info.ID, Address: address}); err != nil {
		d.failStart(err)
		return
	}
	if err := writeStore(d.nodeDir, []client.NodeInfo{self}); err != nil {
		d.failStart(err)
		return
	}
	d.log.Info("rebound the node; restarting it", "node-id", strconv.FormatUint(info.ID, 10), "address", address)
	d.start(false, app.WithAddress(address))
}

// handleRemoved stops a node that is not a member any more and wipes its
// node dir; it rejoins as a new node (new id) only while the config lists
// it, after a back-off that grows with repeated removals.
func (d *Daemon) handleRemoved(reason string) {
	d.decision("wipe", reason)
	d.joinHints = nil
	for _, m := range d.members {
		if d.app == nil || m.ID != d.app.ID() {
			d.joinHints = append(d.joinHints, m.Address)
		}
	}
	if d.app != nil {
		d.closeApp()
	}
	if err := d.markMember(); err != nil {
		d.log.Warn("cannot record membership", "err", err)
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

// leave runs on a member whose controller left the config: it hands its
// role over (once) and waits for the leader to remove it.
func (d *Daemon) leave(ctx context.Context, self *client.NodeInfo) {
	d.decision("leave", "this controller is not in the config any more: handing over and waiting for the leader to remove this node")
	if !d.handedOver && (self.Role != client.Spare || (d.leader != nil && d.leader.ID == self.ID)) {
		hctx, cancel := context.WithTimeout(ctx, d.o.HandoverTimeout)
		err := d.app.Handover(hctx)
		cancel()
		if err != nil {
			d.log.Warn("hand-over failed; will retry", "err", err)
		} else {
			d.log.Info("handed over", "node-id", strconv.FormatUint(self.ID, 10))
			d.handedOver = true
		}
	}
	d.setState(StateLeaving, "this controller is not in the config: handed over, waiting to be removed")
}

func (d *Daemon) markMember() error {
	path := filepath.Join(d.o.DataDir, markerName)
	if fileExists(path) {
		return nil
	}
	return os.WriteFile(path, []byte("this data dir belonged to a Dqlite cluster member; it never bootstraps again\n"), 0o600)
}

func (d *Daemon) shutdown() {
	d.setState(StateStopping, "shutting down")
	d.publish()
	// Stop the single-instance work and revoke the lease first, so that
	// another controller takes over at once rather than after its expiry.
	d.stopSingular(d.o.HandoverTimeout, "shutting down")
	if d.app == nil {
		d.log.Info("shutting down; no Dqlite node running")
		return
	}
	if d.member && d.noLeader.IsZero() {
		d.log.Info("shutting down Dqlite node: handing over", "timeout", d.o.HandoverTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), d.o.HandoverTimeout)
		start := time.Now()
		err := d.app.Handover(ctx)
		cancel()
		if err != nil {
			d.log.Warn("hand-over failed; closing anyway", "err", err)
		} else {
			d.log.Info("handed over", "took", time.Since(start).Round(time.Millisecond))
		}
	} else {
		d.log.Info("shutting down Dqlite node: skipping hand-over (not a member or no leader reachable)")
	}
	d.closeApp()
	d.log.Info("Dqlite node closed")
}

func (d *Daemon) publish() {
	st := control.Status{
		ControllerID: d.o.ControllerID,
		State:        d.state,
		Message:      d.message,
		ConfigError:  d.configErr,
		Member:       d.member,
		Role:         d.role,
		Members:      []control.Member{},
		ConfigPath:   d.o.ConfigPath,
		DataDir:      d.o.DataDir,
		APINote:      d.apiNote,
	}
	if d.app != nil {
		st.NodeID = strconv.FormatUint(d.app.ID(), 10)
		st.Address = d.app.Address()
	}
	if d.leader != nil {
		st.Leader = &control.NodeRef{NodeID: strconv.FormatUint(d.leader.ID, 10), Address: d.leader.Address}
	}
	for _, m := range d.members {
		role := decide.Role(m.Role).String()
		st.Members = append(st.Members, control.Member{NodeID: strconv.FormatUint(m.ID, 10), Address: m.Address, Role: role})
		switch m.Role {
		case client.Voter:
			st.Voters++
		case client.StandBy:
			st.StandBys++
		}
	}
	d.mu.Lock()
	d.status = st
	d.mu.Unlock()
	d.setMember(d.member && d.app != nil)
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
