package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/controlplane/apiserver"
	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// The control plane on top of the Dqlite node: the singular-controller
// lease and its single-instance workers (backups, lease expiry), and the
// API addresses this controller publishes and serves. The node calls it
// through controlPlane when a run becomes a running member, on each pass
// as a member and as the Dqlite leader, and before the run closes.
type controlPlane interface {
	// start runs the singular worker on run's node (once per run).
	start(run *nodeRun)
	// running reports whether the singular worker runs.
	running() bool
	// stop cancels the singular worker and waits (bounded) until it has
	// revoked the lease; the run's node closes after it.
	stop(wait time.Duration, why string)
	// serve runs on every pass of a running member: it publishes this
	// controller's API addresses when they changed.
	serve(ctx context.Context, cfg *controllerconf.Config)
	// lead runs on the Dqlite leader's passes: it removes the API
	// addresses of controllers that are neither listed nor members.
	lead(ctx context.Context, cfg *controllerconf.Config, obs *Observation)
	// configChanged asks for a prune on the leader's next pass.
	configChanged()
	// closed forgets what this run published (the next run publishes again).
	closed()
	// watch starts serving the address lists from the database (once),
	// until ctx ends.
	watch(ctx context.Context)
	// statusInto adds the live control-plane parts to a status.
	statusInto(st *control.Status)
	// lease is the singular-controller lease as the singular worker last
	// saw it (state says what the node is, for the error without one).
	lease(state State) (apiserver.Lease, error)
	// handler is the HTTP API's handler over backend.
	handler(backend apiserver.Backend) http.Handler
}

// plane is the controlPlane of a Daemon.
type plane struct {
	o   Options
	log *slog.Logger
	db  dbtx.Source

	leases      *lease.Store
	addrs       *apiaddr.Store
	watcher     *apiaddr.Watcher
	watching    bool                // the watcher runs (from the first ready on)
	published   *apiaddr.Controller // last published own addresses; nil: publish
	publishedAt time.Time
	pruneDue    bool
	prunedAt    time.Time

	mu      sync.RWMutex
	sing    *singularRun
	apiNote string
	// baton keeps a restarted singular worker's workers from starting
	// before the previous run's have returned.
	baton singular.Baton
}

func newPlane(o Options, db dbtx.Source) *plane {
	p := &plane{o: o, log: o.Log, db: db}
	p.leases = lease.NewFrom(db)
	p.addrs = apiaddr.NewStoreFrom(db)
	p.watcher = apiaddr.NewWatcher(p.addrs, o.AddressPoll, o.Log.With("component", "api-addresses"))
	return p
}

// Holder is this controller's name in the singular-controller lease.
func (p *plane) Holder() string { return "controller-" + p.o.ControllerID }

func (o Options) singularOptions(workers map[string]singular.Worker) singular.Options {
	return singular.Options{
		Holder:         "controller-" + o.ControllerID,
		Namespace:      lease.NamespaceSingularController,
		Duration:       o.LeaseDuration,
		ExtendInterval: o.LeaseExtendInterval,
		Margin:         o.LeaseMargin,
		Workers:        workers,
		Log:            o.Log,
	}
}

// singularRun is one run of the singular worker.
type singularRun struct {
	s      *singular.Singular
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *plane) start(r *nodeRun) {
	if p.running() {
		return
	}
	node := r.node
	log := p.log.With("component", "singular")
	workers := map[string]singular.Worker{
		"lease-expiry": singular.Periodic{
			Name:     "lease-expiry",
			Interval: p.o.LeaseExpiryInterval,
			Timeout:  5 * time.Second,
			Log:      log,
			Func: func(ctx context.Context) error {
				n, err := p.leases.ExpireLeases(ctx)
				if n > 0 {
					log.Info("expired leases deleted", "count", n)
				}
				return err
			},
		},
	}
	if p.o.BackupDir != "" {
		// Dump from the leader: the most up-to-date copy, found through
		// this run's node; the singular stops before it closes.
		dumper := backup.LeaderDumper(node.LeaderClient)
		bw, err := backup.NewFrom(dumper, p.db, backup.Options{
			Dir:          p.o.BackupDir,
			ControllerID: p.o.ControllerID,
			Database:     databaseName,
			Interval:     p.o.BackupInterval,
			Keep:         p.o.BackupKeep,
			RecordDelay:  p.o.BackupRecordDelay,
			Log:          p.log.With("component", "backup"),
		})
		if err != nil {
			p.log.Error("backups disabled", "err", err)
		} else {
			workers["backup"] = bw
		}
	}
	o := p.o.singularOptions(workers)
	o.Log = log
	o.Baton = &p.baton
	s, err := singular.New(p.leases, o)
	if err != nil {
		p.log.Error("cannot start the singular worker", "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	run := &singularRun{s: s, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(run.done)
		s.Run(ctx)
	}()
	p.mu.Lock()
	p.sing = run
	p.mu.Unlock()
	p.log.Info("singular worker started", "holder", p.Holder(), "lease", lease.NamespaceSingularController)
}

// stop cancels the singular worker and waits (bounded) until it
// has stopped its workers and revoked the lease, so that another
// controller takes over at once.
func (p *plane) stop(wait time.Duration, why string) {
	p.mu.Lock()
	run := p.sing
	p.sing = nil
	p.mu.Unlock()
	if run == nil {
		return
	}
	run.cancel()
	if wait <= 0 {
		p.log.Info("singular worker stopping in the background", "reason", why)
		return
	}
	select {
	case <-run.done:
		p.log.Info("singular worker stopped", "reason", why)
	case <-time.After(wait):
		p.log.Warn("singular worker still stopping; going on (its lease expires by itself)", "reason", why, "waited", wait)
	}
}

func (p *plane) running() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.sing != nil
}

func (p *plane) configChanged() { p.pruneDue = true }

func (p *plane) closed() { p.published = nil }

func (p *plane) watch(ctx context.Context) {
	if !p.watching {
		// From now on the served lists are re-read from the database for
		// the life of the process; while it cannot be read (the node
		// restarts, is removed) the last known ones stay.
		p.watching = true
		go p.watcher.Run(ctx)
	}
}

// ownAPIAddresses are the addresses this controller publishes, from the
// config the charm writes, and a note for status when they need one.
func (p *plane) ownAPIAddresses(cfg *controllerconf.Config) (apiaddr.Controller, string, error) {
	in := apiaddr.Input{
		Port:      p.o.APIPort,
		Hosts:     cfg.APIHosts,
		MgmtSpace: len(cfg.APIHosts) > 0,
		MgmtHosts: cfg.APIAgentHosts,
	}
	note := ""
	if len(cfg.APIHosts) == 0 {
		// An older charm: the db bind address is the one address known.
		in.Hosts = []string{cfg.DBBindAddresses[p.o.ControllerID]}
		note = "the config gives no api-hosts: publishing the db bind address as this controller's only API address"
	}
	c, err := apiaddr.Build(p.o.ControllerID, in)
	if err != nil {
		return c, "", err
	}
	if c.AgentFallback {
		note = "no address of this controller is in the api binding's space: agents get all of its addresses (per-controller fallback)"
	}
	return c, note, nil
}

// serve publishes this controller's API addresses when they
// changed (config change, first pass after (re)joining) and every
// RepublishInterval.
func (p *plane) serve(ctx context.Context, cfg *controllerconf.Config) {
	c, note, err := p.ownAPIAddresses(cfg)
	if err != nil {
		if p.note() != err.Error() {
			p.log.Warn("cannot build this controller's API addresses; keeping the published ones", "err", err)
		}
		p.setNote(err.Error())
		return
	}
	p.setNote(note)
	same := p.published != nil && p.published.AgentFallback == c.AgentFallback && slices.Equal(p.published.Addresses, c.Addresses)
	if same && time.Since(p.publishedAt) < p.o.RepublishInterval {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := p.addrs.Publish(pctx, c); err != nil {
		p.log.Warn("cannot publish API addresses; will retry", "err", err)
		return
	}
	if !same {
		var list []string
		for _, a := range c.Addresses {
			list = append(list, fmt.Sprintf("%s(%s,agent=%t)", a.HostPort, a.Scope, a.IsAgent))
		}
		p.log.Info("published API addresses", "addresses", list, "agent-fallback", c.AgentFallback)
	}
	p.published, p.publishedAt = &c, time.Now()
}

// lead runs on the Dqlite leader, with the member removals: it
// removes the API addresses of controllers that are neither in the config
// nor a member (a controller that just joined is a member before it is in
// everybody's config). An empty config never removes anyone.
func (p *plane) lead(ctx context.Context, cfg *controllerconf.Config, obs *Observation) {
	if len(cfg.DBBindAddresses) == 0 {
		return
	}
	if !p.pruneDue && time.Since(p.prunedAt) < p.o.AddressPrune {
		return
	}
	rows, err := controllerNodes(ctx, p.db)
	if err != nil {
		p.log.Warn("cannot read controller_node; not pruning API addresses this round", "err", err)
		return
	}
	var keep []string
	for id := range cfg.DBBindAddresses {
		keep = append(keep, id)
	}
	for _, m := range obs.Members {
		if cid, ok := rows[m.ID]; ok && !slices.Contains(keep, cid) {
			keep = append(keep, cid)
		}
	}
	sort.Strings(keep)
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	removed, err := p.addrs.RemoveExcept(pctx, keep)
	if err != nil {
		p.log.Warn("cannot remove the API addresses of departed controllers; will retry", "err", err)
		return
	}
	p.pruneDue, p.prunedAt = false, time.Now()
	if len(removed) > 0 {
		p.log.Info("removed the API addresses of departed controllers", "controller-ids", removed, "kept", keep)
	}
}

func (p *plane) note() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.apiNote
}

func (p *plane) setNote(n string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.apiNote = n
}

// memberGate tells the HTTP API whether this node is a member (it serves
// the address lists only then) and wakes long polls when that changes.
type memberGate struct {
	member  bool
	changed chan struct{}
}

func (d *Daemon) setMember(m bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gate.member == m {
		return
	}
	d.gate.member = m
	close(d.gate.changed)
	d.gate.changed = make(chan struct{})
}

// Member implements apiserver.Backend.
func (d *Daemon) Member() (bool, <-chan struct{}) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.gate.member, d.gate.changed
}

// Health implements apiserver.Backend.
func (d *Daemon) Health(ctx context.Context) apiserver.Health {
	st := d.Status(ctx)
	h := apiserver.Health{
		ControllerID: st.ControllerID,
		State:        st.State,
		Member:       st.Member,
		Role:         st.Role,
		Message:      st.Message,
	}
	if st.Leader != nil {
		h.Leader = st.Leader.Address
	}
	if st.Lease != nil {
		h.LeaseHolder = st.Lease.Holder
	}
	return h
}

// Lease implements apiserver.Backend: the singular-controller lease as
// this node's singular worker last saw it (no database request).
func (d *Daemon) Lease() (apiserver.Lease, error) {
	d.mu.RLock()
	state := d.status.State
	d.mu.RUnlock()
	return d.plane.lease(State(state))
}

func (p *plane) lease(state State) (apiserver.Lease, error) {
	out := apiserver.Lease{Namespace: lease.NamespaceSingularController, Name: singular.DefaultName}
	p.mu.RLock()
	run := p.sing
	p.mu.RUnlock()
	if run == nil {
		return out, fmt.Errorf("the lease is not known here: the singular worker is not running (this node is %s)", state)
	}
	l, age, ok := run.s.View()
	if !ok {
		return out, errors.New("the lease is not known here yet: no claim has been answered")
	}
	out.AgeMS = age.Milliseconds()
	if l.Holder == "" {
		out.Expired = true
		return out, nil
	}
	start, expiry := l.Start, l.Expiry
	out.Holder, out.Start, out.Expiry, out.Tenure = l.Holder, &start, &expiry, l.Tenure
	out.Expired, out.RemainingMS = l.Expired(), l.Remaining.Milliseconds()
	return out, nil
}

// APIHandler is the HTTP API's handler.
func (d *Daemon) APIHandler() http.Handler { return d.plane.handler(d) }

func (p *plane) handler(backend apiserver.Backend) http.Handler {
	return apiserver.Handler(backend, p.watcher)
}

// SetAPIError records why the HTTP API does not listen ("" when it does).
func (d *Daemon) SetAPIError(msg string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.apiErr = msg
}

// controlPlaneStatus adds the daemon's and the control plane's live parts
// to a status. Called with d.mu held for reading.
func (d *Daemon) controlPlaneStatus(st *control.Status) {
	st.APIPort = d.o.APIPort
	st.APIError = d.apiErr
	d.plane.statusInto(st)
}

func (p *plane) statusInto(st *control.Status) {
	st.APINote = p.note()
	if l, ok := p.watcher.Current(); ok {
		st.APIAddresses = &control.APIAddresses{Agents: l.Agents, Clients: l.Clients, AgentFallback: l.AgentFallback, Version: l.Version}
	}
	p.mu.RLock()
	sing := p.sing
	p.mu.RUnlock()
	if sing == nil {
		return
	}
	ss := sing.s.Status()
	if ss.Holder == "" && !ss.Holding {
		return
	}
	ls := &control.LeaseStatus{Holder: ss.Holder, HeldByMe: ss.Holding}
	if !ss.Expiry.IsZero() {
		ls.Expiry = ss.Expiry.UTC().Format(time.RFC3339Nano)
	}
	st.Lease = ls
}
