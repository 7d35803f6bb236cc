package charm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/juju/dqlite-controller/charm/bindaddr"
	"github.com/juju/dqlite-controller/charm/hooktools"
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
		if app, err = h.aggregate(ctx, relID, own, app); err != nil {
			return nil, err
		}
	}
	cluster := h.clusterConfig(app)
	if own != "" && (cluster == nil || cluster.DBBindAddresses[h.agentID] != own) {
		h.status.add(hooktools.StatusWaiting, msgNotListed)
	}
	return cluster, nil
}

// publishAddress resolves this unit's bind address and writes it with the
// agent id into the unit's relation data when they differ from what is
// there. It returns the address the unit data holds afterwards ("" if none
// valid): when resolution fails the last published address is kept, so a
// transient or operator-caused problem does not drop a working node from the
// cluster; the blocked status tells the operator.
func (h *hook) publishAddress(ctx context.Context, relID string) (string, error) {
	bag, err := h.tools.RelationGet(ctx, relID, h.env.UnitName)
	if err != nil {
		return "", err
	}
	addr, err := h.resolveAddress(ctx, relID)
	if err != nil {
		return "", err
	}
	if addr != "" && (bag[KeyBindAddress] != addr || bag[KeyAgentID] != h.agentID) {
		if err := h.tools.RelationSet(ctx, relID, false, map[string]string{KeyBindAddress: addr, KeyAgentID: h.agentID}); err != nil {
			return "", err
		}
		h.log.Info("published DB bind address", "address", addr, "agent-id", h.agentID)
		return addr, nil
	}
	if bag[KeyAgentID] != h.agentID || controllerconf.ValidateHost(bag[KeyBindAddress]) != nil {
		return "", nil
	}
	return bag[KeyBindAddress], nil
}

// resolveAddress returns this unit's bind address, or "" with a blocked
// status saying why there is none.
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
		return "", err
	}
	candidates := network.IngressAddresses
	if len(candidates) == 0 {
		// As network-get --ingress-address does: without ingress addresses,
		// fall back to the binding's device addresses.
		for _, dev := range network.BindAddresses {
			for _, a := range dev.Addresses {
				candidates = append(candidates, a.Value)
			}
		}
	}
	sel, err := bindaddr.Select(candidates)
	for _, s := range sel.Skipped {
		h.log.Debug("not a DB bind address candidate", "candidate", s)
	}
	var amb *bindaddr.AmbiguousError
	switch {
	case errors.As(err, &amb):
		h.log.Warn("cannot choose a DB bind address: " + amb.Error() + "; bind db-cluster to a space where this machine has one address")
		h.status.add(hooktools.StatusBlocked, msgMultipleAddresses)
		return "", nil
	case err != nil:
		h.log.Warn("no DB bind address in the db-cluster binding", "offered", strings.Join(candidates, ", "))
		h.status.add(hooktools.StatusBlocked, msgNoAddress)
		return "", nil
	}
	local, err := h.isLocal(sel.Address)
	if err != nil {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot check this machine's addresses: %v", err))
		return "", nil
	}
	if !local {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("DB bind address %s (db-cluster binding) is not configured on this machine; bind db-cluster to a space this machine has an address in", sel.Address))
		return "", nil
	}
	return sel.Address.String(), nil
}

func (h *hook) isLocal(addr netip.Addr) (bool, error) {
	addrs, err := h.localAddresses()
	if err != nil {
		return false, err
	}
	return slices.Contains(addrs, addr), nil
}

// aggregate is the leader's part: it builds db-bind-addresses from every
// unit with valid data (itself included, the departing unit excluded),
// chooses bootstrap-agent-id if none was ever chosen, writes what differs,
// and returns the application data as it will be committed.
func (h *hook) aggregate(ctx context.Context, relID, own string, app map[string]string) (map[string]string, error) {
	units, err := h.tools.RelationList(ctx, relID)
	if err != nil {
		return nil, err
	}
	current, currentErr := decodeAddresses(app[KeyBindAddresses])
	entries := map[string]string{}
	if own != "" {
		entries[h.agentID] = own
	}
	for _, unit := range units {
		if unit == h.env.DepartingUnit || unit == h.env.UnitName {
			continue
		}
		bag, err := h.tools.RelationGet(ctx, relID, unit)
		if err != nil {
			return nil, err
		}
		id, addr, err := peerEntry(h.env.AppName(), unit, bag)
		if err != nil {
			h.log.Warn(fmt.Sprintf("ignoring db-cluster data of %s: %v", unit, err))
			continue
		}
		if id == "" {
			continue // not published yet
		}
		entries[id] = addr
	}
	// Keep listed units this leader has not seen join yet (package comment).
	inView := map[string]bool{}
	for _, unit := range units {
		inView[unit] = true
	}
	for _, id := range sortedIDs(current) {
		unit := h.env.AppName() + "/" + id
		if _, ok := entries[id]; ok || id == h.agentID || inView[unit] || unit == h.env.DepartingUnit {
			continue
		}
		gone, err := markerExists(h.cfg.peerDepartedMarker(id))
		if err != nil {
			return nil, err
		}
		if !gone {
			h.log.Info(fmt.Sprintf("keeping agent %s in db-bind-addresses: this unit has not seen %s join or depart yet", id, unit))
			entries[id] = current[id]
		}
	}
	// Two nodes on one address cannot both be members. Keep the one the
	// cluster list already has (else the lowest id) and leave the others out.
	byAddr := map[string][]string{}
	for _, id := range sortedIDs(entries) {
		byAddr[entries[id]] = append(byAddr[entries[id]], id)
	}
	for addr, ids := range byAddr {
		if len(ids) < 2 {
			continue
		}
		keep := ids[0]
		for _, id := range ids {
			if current[id] == addr {
				keep = id
				break
			}
		}
		for _, id := range ids {
			if id != keep {
				h.log.Warn(fmt.Sprintf("ignoring db-cluster data of agent %s: address %s is already used by agent %s", id, addr, keep))
				delete(entries, id)
			}
		}
	}

	want := map[string]string{}
	_, hasList := app[KeyBindAddresses]
	if (hasList || len(entries) > 0) && (currentErr != nil || !maps.Equal(current, entries)) {
		encoded, err := json.Marshal(entries) // map keys come out sorted
		if err != nil {
			return nil, fmt.Errorf("cannot encode db-bind-addresses: %w", err)
		}
		want[KeyBindAddresses] = string(encoded)
	}
	if app[KeyBootstrapAgentID] == "" && len(entries) > 0 {
		// Chosen once, with the first non-empty list; never changed.
		choice := sortedIDs(entries)[0]
		if _, ok := entries[h.agentID]; ok {
			choice = h.agentID
		}
		want[KeyBootstrapAgentID] = choice
		h.log.Info("chose the bootstrap node", "bootstrap-agent-id", choice)
	}
	if len(want) == 0 {
		return app, nil
	}
	if err := h.tools.RelationSet(ctx, relID, true, want); err != nil {
		return nil, err
	}
	h.log.Info("updated the db-cluster application data", "db-bind-addresses", want[KeyBindAddresses])
	updated := maps.Clone(app)
	maps.Copy(updated, want)
	return updated, nil
}

// peerEntry validates one peer's unit data. It returns an empty id and no
// error when the unit has not published both keys yet.
func peerEntry(app, unit string, bag map[string]string) (id, addr string, err error) {
	id, addr = bag[KeyAgentID], bag[KeyBindAddress]
	if id == "" || addr == "" {
		return "", "", nil
	}
	if err := controllerconf.ValidateAgentID(id); err != nil {
		return "", "", err
	}
	unitApp, _, _ := strings.Cut(unit, "/")
	number, err := unitNumber(unit)
	if err != nil || unitApp != app {
		return "", "", fmt.Errorf("%q is not a unit of %s", unit, app)
	}
	if id != number {
		return "", "", fmt.Errorf("agent id %q does not match the unit number %s", id, number)
	}
	if err := controllerconf.ValidateHost(addr); err != nil {
		return "", "", err
	}
	return id, addr, nil
}

// decodeAddresses parses db-bind-addresses, keeping only valid entries.
func decodeAddresses(raw string) (map[string]string, error) {
	if raw == "" {
		return map[string]string{}, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return map[string]string{}, fmt.Errorf("db-bind-addresses is not a JSON object of strings: %w", err)
	}
	var bad []string
	for id, addr := range m {
		if controllerconf.ValidateAgentID(id) != nil || controllerconf.ValidateHost(addr) != nil {
			bad = append(bad, fmt.Sprintf("%q: %q", id, addr))
			delete(m, id)
		}
	}
	if m == nil {
		m = map[string]string{}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return m, fmt.Errorf("db-bind-addresses has invalid entries %s", strings.Join(bad, ", "))
	}
	return m, nil
}

func sortedIDs(m map[string]string) []string {
	ids := slices.Collect(maps.Keys(m))
	slices.SortFunc(ids, func(a, b string) int {
		na, _ := strconv.Atoi(a)
		nb, _ := strconv.Atoi(b)
		return na - nb
	})
	return ids
}

// clusterConfig returns the cluster part of controller.conf
// (db-bind-addresses, bootstrap-agent-id) from the application data. It
// returns nil, meaning "keep what the file has", when the application data
// has no db-bind-addresses (no leader has aggregated yet) or none usable.
func (h *hook) clusterConfig(app map[string]string) *controllerconf.Config {
	raw, ok := app[KeyBindAddresses]
	if !ok {
		return nil
	}
	addrs, err := decodeAddresses(raw)
	if err != nil {
		h.log.Warn("application data: " + err.Error())
		if len(addrs) == 0 && strings.TrimSpace(raw) != "{}" {
			h.log.Error("keeping the cluster list of controller.conf: the application data has no usable db-bind-addresses")
			return nil
		}
	}
	bootstrap := app[KeyBootstrapAgentID]
	if bootstrap != "" && controllerconf.ValidateAgentID(bootstrap) != nil {
		h.log.Error(fmt.Sprintf("ignoring invalid bootstrap-agent-id %q in the application data", bootstrap))
		bootstrap = ""
	}
	return &controllerconf.Config{DBBindAddresses: addrs, BootstrapAgentID: bootstrap}
}
