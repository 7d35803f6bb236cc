package node

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/canonical/go-dqlite/client"

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
// API addresses this controller publishes and serves.

// Holder is this controller's name in the singular-controller lease.
func (d *Daemon) Holder() string { return "controller-" + d.o.ControllerID }

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

// dbSource gives the current database handle to the control-plane stores:
// the handle changes when the node restarts or rejoins.
func (d *Daemon) dbSource() (*sql.DB, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.db == nil {
		return nil, fmt.Errorf("the controller database is not open: this node is %s", d.status.State)
	}
	return d.db, nil
}

// singularRun is one run of the singular worker.
type singularRun struct {
	s      *singular.Singular
	cancel context.CancelFunc
	done   chan struct{}
}

// syncSingular runs the singular worker while, and only while, this node
// is a running member: Ready does not mean member, and a removed node's
// driver could still reach the leader and claim. A member that lost its
// quorum keeps it running: it drops the flag by itself when it cannot
// extend, and a Dqlite leader election must not cost the lease.
func (d *Daemon) syncSingular() {
	running := d.sing != nil
	want := d.app != nil && d.ready && d.member &&
		(d.state == StateRunning || (running && d.state == StateNoQuorum))
	switch {
	case want && !running:
		d.startSingular()
	case !want && running:
		d.stopSingular(singularStopWait, "this node is "+d.state)
	}
}

func (d *Daemon) startSingular() {
	peers := d.peers
	log := d.log.With("component", "singular")
	workers := map[string]singular.Worker{
		"lease-expiry": singular.Periodic{
			Name:     "lease-expiry",
			Interval: d.o.LeaseExpiryInterval,
			Timeout:  5 * time.Second,
			Log:      log,
			Func: func(ctx context.Context) error {
				n, err := d.leases.ExpireLeases(ctx)
				if n > 0 {
					log.Info("expired leases deleted", "count", n)
				}
				return err
			},
		},
	}
	var bw *backup.Worker
	if d.o.BackupDir != "" {
		// Dump from the leader: the most up-to-date copy. The peers are
		// those of this run's node; the singular stops before it closes.
		dumper := backup.LeaderDumper(func(ctx context.Context) (*client.Client, error) { return d.leaderClient(ctx, peers) })
		w, err := backup.NewFrom(dumper, d.dbSource, backup.Options{
			Dir:          d.o.BackupDir,
			ControllerID: d.o.ControllerID,
			Database:     databaseName,
			Interval:     d.o.BackupInterval,
			Keep:         d.o.BackupKeep,
			RecordDelay:  d.o.BackupRecordDelay,
			Log:          d.log.With("component", "backup"),
		})
		if err != nil {
			d.log.Error("backups disabled", "err", err)
		} else {
			bw = w
			workers["backup"] = bw
		}
	}
	workers["backup-requests"] = d.backupRequests(bw) // create-backup (ops.go)
	o := d.o.singularOptions(workers)
	o.Log = log
	o.Baton = &d.baton
	s, err := singular.New(d.leases, o)
	if err != nil {
		d.log.Error("cannot start the singular worker", "err", err)
		return
	}
	ctx, cancel := context.WithCancel(dbtx.WithObserver(context.Background(), d.o.Metrics))
	run := &singularRun{s: s, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(run.done)
		s.Run(ctx)
	}()
	d.mu.Lock()
	d.sing = run
	d.mu.Unlock()
	d.log.Info("singular worker started", "holder", d.Holder(), "lease", lease.NamespaceSingularController)
}

// stopSingular cancels the singular worker and waits (bounded) until it
// has stopped its workers and revoked the lease, so that another
// controller takes over at once.
func (d *Daemon) stopSingular(wait time.Duration, why string) {
	run := d.sing
	if run == nil {
		return
	}
	d.mu.Lock()
	d.sing = nil
	d.mu.Unlock()
	run.cancel()
	if wait <= 0 {
		d.log.Info("singular worker stopping in the background", "reason", why)
		return
	}
	select {
	case <-run.done:
		d.log.Info("singular worker stopped", "reason", why)
	case <-time.After(wait):
		d.log.Warn("singular worker still stopping; going on (its lease expires by itself)", "reason", why, "waited", wait)
	}
}

// ownAPIAddresses are the addresses this controller publishes, from the
// config the charm writes, and a note for status when they need one.
func (d *Daemon) ownAPIAddresses() (apiaddr.Controller, string, error) {
	in := apiaddr.Input{
		Port:      d.o.APIPort,
		Hosts:     d.cfg.APIHosts,
		MgmtSpace: len(d.cfg.APIHosts) > 0,
		MgmtHosts: d.cfg.APIAgentHosts,
	}
	note := ""
	if len(d.cfg.APIHosts) == 0 {
		// An older charm: the db bind address is the one address known.
		in.Hosts = []string{d.cfg.DBBindAddresses[d.o.ControllerID]}
		note = "the config gives no api-hosts: publishing the db bind address as this controller's only API address"
	}
	c, err := apiaddr.Build(d.o.ControllerID, in)
	if err != nil {
		return c, "", err
	}
	if c.AgentFallback {
		note = "no address of this controller is in the api binding's space: agents get all of its addresses (per-controller fallback)"
	}
	return c, note, nil
}

// publishAddresses publishes this controller's API addresses when they
// changed (config change, first pass after (re)joining) and every
// RepublishInterval.
func (d *Daemon) publishAddresses(ctx context.Context) {
	c, note, err := d.ownAPIAddresses()
	if err != nil {
		if d.apiNote != err.Error() {
			d.log.Warn("cannot build this controller's API addresses; keeping the published ones", "err", err)
		}
		d.apiNote = err.Error()
		return
	}
	d.apiNote = note
	same := d.published != nil && d.published.AgentFallback == c.AgentFallback && slices.Equal(d.published.Addresses, c.Addresses)
	if same && time.Since(d.publishedAt) < d.o.RepublishInterval {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := d.addrs.Publish(pctx, c); err != nil {
		d.log.Warn("cannot publish API addresses; will retry", "err", err)
		return
	}
	if !same {
		var list []string
		for _, a := range c.Addresses {
			list = append(list, fmt.Sprintf("%s(%s,agent=%t)", a.HostPort, a.Scope, a.IsAgent))
		}
		d.log.Info("published API addresses", "addresses", list, "agent-fallback", c.AgentFallback)
	}
	d.published, d.publishedAt = &c, time.Now()
}

// pruneAddresses runs on the Dqlite leader, with the member removals: it
// removes the API addresses of controllers that are neither in the config
// nor a member (a controller that just joined is a member before it is in
// everybody's config). An empty config never removes anyone.
func (d *Daemon) pruneAddresses(ctx context.Context, obs *observation) {
	if len(d.cfg.DBBindAddresses) == 0 {
		return
	}
	if !d.pruneDue && time.Since(d.prunedAt) < d.o.AddressPrune {
		return
	}
	rows, err := d.controllerNodes(ctx)
	if err != nil {
		d.log.Warn("cannot read controller_node; not pruning API addresses this round", "err", err)
		return
	}
	var keep []string
	for id := range d.cfg.DBBindAddresses {
		keep = append(keep, id)
	}
	for _, m := range obs.members {
		if cid, ok := rows[m.ID]; ok && !slices.Contains(keep, cid) {
			keep = append(keep, cid)
		}
	}
	sort.Strings(keep)
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	removed, err := d.addrs.RemoveExcept(pctx, keep)
	if err != nil {
		d.log.Warn("cannot remove the API addresses of departed controllers; will retry", "err", err)
		return
	}
	d.pruneDue, d.prunedAt = false, time.Now()
	if len(removed) > 0 {
		d.log.Info("removed the API addresses of departed controllers", "controller-ids", removed, "kept", keep)
	}
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
	out := apiserver.Lease{Namespace: lease.NamespaceSingularController, Name: singular.DefaultName}
	d.mu.RLock()
	run, state := d.sing, d.status.State
	d.mu.RUnlock()
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
func (d *Daemon) APIHandler() http.Handler {
	return apiserver.Handler(d, d.watcher)
}

// SetAPIError records why the HTTP API does not listen ("" when it does).
func (d *Daemon) SetAPIError(msg string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.apiErr = msg
}

// controlPlaneStatus adds the live control-plane parts to a status.
// Called with d.mu held for reading.
func (d *Daemon) controlPlaneStatus(st *control.Status) {
	st.APIPort = d.o.APIPort
	st.APIError = d.apiErr
	if l, ok := d.watcher.Current(); ok {
		st.APIAddresses = &control.APIAddresses{Agents: l.Agents, Clients: l.Clients, AgentFallback: l.AgentFallback, Version: l.Version}
	}
	if d.sing == nil {
		return
	}
	ss := d.sing.s.Status()
	if ss.Holder == "" && !ss.Holding {
		return
	}
	ls := &control.LeaseStatus{Holder: ss.Holder, HeldByMe: ss.Holding}
	if !ss.Expiry.IsZero() {
		ls.Expiry = ss.Expiry.UTC().Format(time.RFC3339Nano)
	}
	st.Lease = ls
}
