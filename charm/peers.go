package charm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/juju/dqlite-controller/charm/bindaddr"
	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/charm/peers"
	"github.com/juju/dqlite-controller/controllerconf"
)

// Status texts an operator acts on.
const (
	msgMultipleAddresses = "multiple possible DB bind addresses; set a suitable db-cluster network binding"
	msgNoAddress         = "no DB bind address in the db-cluster binding's space; bind db-cluster to a space with one address per machine"
	msgNotListed         = "waiting for the leader to add this unit's DB bind address to the cluster list"
)

// reconcilePeers publishes this unit's address, lets the leader aggregate
// every unit's, and returns the cluster part of controller.conf as the
// application data gives it (nil: keep the file's, see clusterConfig).
func (h *hook) reconcilePeers(ctx context.Context, relID string) (*controllerconf.Config, error) {
	own, err := h.publishAddress(ctx, relID)
	if err != nil {
		return nil, err
	}
	app, err := h.tools.RelationGetApp(ctx, relID, h.env.AppName())
	if err != nil {
		return nil, err
	}
	leader, err := h.tools.IsLeader(ctx)
	if err != nil {
		return nil, err
	}
	if leader {
		// controller.conf follows the committed application data only,
		// never this hook's own writes: Juju refuses them at commit if
		// the lease was lost meanwhile, and a bootstrap-agent-id that
		// never committed must not reach controllerd (two clusters).
		// The write comes back as an application relation-changed.
		if _, err = h.aggregate(ctx, relID, own, app); err != nil {
			return nil, err
		}
	}
	if h.agentIDClaimedBy != "" {
		// The cluster list's entry for this agent id is the other
		// unit's node: controllerd here must never get it as its own
		// (it would dial, and answer for, another controller). The
		// file keeps what it had, which the first relation hook
		// found empty (the collision shows from then on).
		return nil, nil
	}
	cluster := h.clusterConfig(app)
	if own != "" && (cluster == nil || cluster.DBBindAddresses[h.agentID] != own) {
		h.status.add(hooktools.StatusWaiting, msgNotListed)
	}
	return cluster, nil
}

// publishAddress resolves this unit's bind address and writes it with the
// agent id into the unit's relation data when they differ from what is
// there (peers.Publish). It returns the address the unit data holds
// afterwards ("" if none valid).
func (h *hook) publishAddress(ctx context.Context, relID string) (string, error) {
	bag, err := h.tools.RelationGet(ctx, relID, h.env.UnitName)
	if err != nil {
		return "", err
	}
	addr, err := h.resolveAddress(ctx, relID)
	if err != nil {
		return "", err
	}
	if other, err := h.agentIDCollision(ctx, relID); err != nil { // agentid.go
		return "", err
	} else if other != "" {
		h.agentIDClaimedBy = other
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("agent id %s (from %s) is also claimed by %s; this unit does not join the cluster under another controller's id", h.agentID, h.cfg.agentSocket(), other))
		return "", nil
	}
	write, own := peers.Publish(bag, h.agentID, addr)
	if write != nil {
		if err := h.tools.RelationSet(ctx, relID, false, write); err != nil {
			return "", err
		}
		h.log.Info("published DB bind address", "address", own, "agent-id", h.agentID)
	}
	return own, nil
}

// resolveAddress returns this unit's bind address, or "" with a blocked
// status saying why there is none (the choice is bindaddr.Choose).
func (h *hook) resolveAddress(ctx context.Context, relID string) (string, error) {
	network, err := h.tools.NetworkGet(ctx, Endpoint, relID)
	if err != nil {
		var exitErr *hooktools.ExitError
		if errors.As(err, &exitErr) {
			// Juju answered: the binding itself is the problem.
			h.log.Error("cannot get the db-cluster binding's addresses", "err", err)
			h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot get the db-cluster binding's addresses (%s); check juju bind", strings.TrimPrefix(exitErr.Stderr, "ERROR ")))
			return "", nil
		}
		if errors.Is(err, hooktools.ErrBadOutput) {
			h.log.Error("cannot read the db-cluster binding's addresses", "err", err)
			h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot read network-get db-cluster's answer (%v); check juju bind", err))
			return "", nil
		}
		return "", err
	}
	binding := bindaddr.Binding{Ingress: network.IngressAddresses}
	for _, dev := range network.BindAddresses {
		for _, a := range dev.Addresses {
			binding.Devices = append(binding.Devices, a.Value)
		}
	}
	binding.Local, binding.LocalErr = h.localAddresses()
	sel, err := bindaddr.Choose(binding)
	for _, s := range sel.Skipped {
		h.log.Debug("not a DB bind address candidate", "candidate", s)
	}
	var (
		amb      *bindaddr.AmbiguousError
		localErr *bindaddr.LocalError
		notLocal *bindaddr.NotLocalError
	)
	switch {
	case err == nil:
		return sel.Address.String(), nil
	case errors.As(err, &amb):
		h.log.Warn("cannot choose a DB bind address; bind db-cluster to a space where this machine has one address", "err", amb)
		h.status.add(hooktools.StatusBlocked, msgMultipleAddresses)
	case errors.As(err, &localErr):
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot check this machine's addresses: %v", localErr.Err))
	case errors.As(err, &notLocal):
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("DB bind address %s (db-cluster binding) is not configured on this machine; bind db-cluster to a space this machine has an address in", notLocal.Address))
	default:
		h.log.Warn("no DB bind address in the db-cluster binding", "offered", strings.Join(sel.Candidates, ", "))
		h.status.add(hooktools.StatusBlocked, msgNoAddress)
	}
	return "", nil
}

// aggregate is the leader's part: it reads every peer's unit data and the
// departed markers, lets peers.Aggregate build the application data, writes
// what differs, and returns the application data as it will be committed.
func (h *hook) aggregate(ctx context.Context, relID, own string, app map[string]string) (map[string]string, error) {
	units, err := h.tools.RelationList(ctx, relID)
	if err != nil {
		return nil, err
	}
	view := peers.View{
		App: h.env.AppName(), AgentID: h.agentID, Unit: h.env.UnitName, Own: own,
		Units: units, Departing: h.env.DepartingUnit, AppData: app,
		PeerData: map[string]map[string]string{},
	}
	for _, unit := range units {
		if unit == h.env.DepartingUnit || unit == h.env.UnitName {
			continue
		}
		if view.PeerData[unit], err = h.tools.RelationGet(ctx, relID, unit); err != nil {
			return nil, err
		}
	}
	h.peerData = view.PeerData
	if view.Departed, err = h.departedPeers(); err != nil {
		return nil, err
	}
	agg, err := peers.Aggregate(view)
	if err != nil {
		return nil, err
	}
	for _, ig := range agg.Ignored {
		h.log.Warn("ignoring db-cluster data of "+ig.Unit, "err", ig.Err)
	}
	for _, id := range agg.Kept {
		h.log.Info("keeping agent "+id+" in db-bind-addresses: this unit has not seen its unit join or depart yet", "unit", h.env.AppName()+"/"+id)
	}
	for _, d := range agg.Duplicates {
		h.log.Warn("ignoring db-cluster data of agent "+d.AgentID+": its address is already used", "address", d.Address, "used-by", d.KeptAgentID)
	}
	if agg.Bootstrap != "" {
		h.log.Info("chose the bootstrap node", "bootstrap-agent-id", agg.Bootstrap)
	}
	if len(agg.Set) == 0 {
		return app, nil
	}
	if err := h.tools.RelationSet(ctx, relID, true, agg.Set); err != nil {
		return nil, err
	}
	h.log.Info("updated the db-cluster application data", "db-bind-addresses", agg.Set[KeyBindAddresses])
	return agg.AppData, nil
}

// departedPeers lists the agent ids whose departure this unit recorded
// (peerDepartedMarker).
func (h *hook) departedPeers() (map[string]bool, error) {
	names, err := os.ReadDir(h.cfg.stateDir())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cannot list the charm state directory: %w", err)
	}
	departed := map[string]bool{}
	for _, e := range names {
		id, ok := strings.CutPrefix(e.Name(), "peer-")
		if id, ok = strings.CutSuffix(id, ".departed"); ok {
			departed[id] = true
		}
	}
	return departed, nil
}

// clusterConfig returns the cluster part of controller.conf from the
// application data (peers.ReadCluster; nil: keep the file's), logging what
// was wrong with it.
func (h *hook) clusterConfig(app map[string]string) *controllerconf.Config {
	cluster, problems := peers.ReadCluster(app)
	if problems.List != nil {
		h.log.Warn("ignoring invalid application data", "err", problems.List)
		if cluster == nil {
			h.log.Error("keeping the cluster list of controller.conf: the application data has no usable db-bind-addresses")
		}
	}
	if problems.BootstrapAgentID != "" {
		h.log.Error("ignoring an invalid bootstrap-agent-id in the application data", "bootstrap-agent-id", problems.BootstrapAgentID)
	}
	return cluster
}
