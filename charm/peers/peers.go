// Package peers is the charm's policy over the db-cluster peer relation,
// without I/O: what a unit publishes, which peer data is valid, what the
// leader writes into the application data (the cluster list and, once, the
// bootstrap node) and what every unit reads back for controller.conf. The
// hook (package charm) makes the hook tool calls and hands their answers to
// these functions, so every rule can be tested with a table (peers_test.go),
// as go-dqlite's app/roles.go does for role adjustment.
//
// docs/architecture.md describes the flow these rules are part of, and
// docs/juju.md the Juju behaviours they rely on.
package peers

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/juju/dqlite-controller/controllerconf"
)

// The relation data keys.
const (
	// KeyBindAddress is the unit data key holding the unit's bind address.
	KeyBindAddress = "db-bind-address"
	// KeyAgentID is the unit data key holding the unit's agent id.
	KeyAgentID = "agent-id"
	// KeyBindAddresses is the application data key holding the cluster list.
	KeyBindAddresses = "db-bind-addresses"
	// KeyBootstrapAgentID is the application data key naming the bootstrap node.
	KeyBootstrapAgentID = "bootstrap-agent-id"
	// KeyAgentUnits is the application data key mapping the listed agent
	// ids that are not their unit's number (a unit whose configchange.socket
	// answered another id) to their unit: JSON {"<agent-id>": "<unit>"};
	// absent when every listed id is its unit's number.
	KeyAgentUnits = "db-agent-units"
)

// UnitAgentID returns the agent id of a unit name "app/N": its unit number,
// validated as an agent id.
func UnitAgentID(unit string) (string, error) {
	_, n, ok := strings.Cut(unit, "/")
	if !ok {
		return "", fmt.Errorf("unit name %q has no unit number", unit)
	}
	if err := controllerconf.ValidateAgentID(n); err != nil {
		return "", fmt.Errorf("unit name %q: %w", unit, err)
	}
	return n, nil
}

// Entry validates one peer's unit data. It returns an empty id and no error
// when the unit has not published both keys yet. The agent id is the unit
// number unless the unit's configchange.socket answered another one (Juju
// 4's controller agent id, which the unit cannot prove), so any valid id
// is accepted here; Aggregate keeps one unit per id.
func Entry(app, unit string, data map[string]string) (id, addr string, err error) {
	id, addr = data[KeyAgentID], data[KeyBindAddress]
	if id == "" || addr == "" {
		return "", "", nil
	}
	if err := controllerconf.ValidateAgentID(id); err != nil {
		return "", "", err
	}
	unitApp, _, _ := strings.Cut(unit, "/")
	if _, err := UnitAgentID(unit); err != nil || unitApp != app {
		return "", "", fmt.Errorf("%q is not a unit of %s", unit, app)
	}
	if err := controllerconf.ValidateHost(addr); err != nil {
		return "", "", err
	}
	return id, addr, nil
}

// Publish is a unit's rule for its own unit data: data is what the bag
// holds, resolved the bind address this hook resolved ("" when it could
// not). It returns the keys to write (nil when the bag is right) and the
// address the bag holds afterwards ("" when none is valid). A unit that
// cannot resolve an address keeps the last one it published, so that an
// operator's mistake (a bad binding) or a transient failure never drops a
// working node from the cluster; its status says what to fix.
func Publish(data map[string]string, agentID, resolved string) (write map[string]string, own string) {
	if resolved != "" {
		if data[KeyBindAddress] != resolved || data[KeyAgentID] != agentID {
			write = map[string]string{KeyBindAddress: resolved, KeyAgentID: agentID}
		}
		return write, resolved
	}
	if data[KeyAgentID] != agentID || controllerconf.ValidateHost(data[KeyBindAddress]) != nil {
		return nil, ""
	}
	return nil, data[KeyBindAddress]
}

// DecodeAddresses parses db-bind-addresses, keeping only valid entries. The
// map is never nil; the error lists what was dropped.
func DecodeAddresses(raw string) (map[string]string, error) {
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

// View is what the leader knows when it aggregates: its own identity, its
// view of the relation and the application data as it stands.
type View struct {
	// App is the application name; AgentID and Unit are this unit's.
	App, AgentID, Unit string
	// Own is the address this unit's data holds ("" if none valid).
	Own string
	// Units is relation-list: the peers this unit has seen join and not
	// seen depart.
	Units []string
	// Departing is the unit leaving in this hook (JUJU_DEPARTING_UNIT).
	Departing string
	// PeerData holds the unit data of every unit of Units but this one and
	// the departing one.
	PeerData map[string]map[string]string
	// AppData is the application data as this hook read it.
	AppData map[string]string
	// Departed holds the unit numbers of the peers this unit saw depart,
	// in this hook or an earlier one.
	Departed map[string]bool
}

// Ignored is a peer whose unit data the leader left out, and why.
type Ignored struct {
	Unit string
	Err  error
}

// Duplicate is an agent left out because another one claims its address.
type Duplicate struct {
	AgentID, Address, KeptAgentID string
}

// Aggregation is the outcome of Aggregate.
type Aggregation struct {
	// Entries is the cluster list, agent id to address.
	Entries map[string]string
	// Set holds the application data keys to write; empty when the
	// application data is already right.
	Set map[string]string
	// AppData is the application data as it will be committed.
	AppData map[string]string
	// Ignored lists the peers with invalid data, in relation-list order.
	Ignored []Ignored
	// Kept lists the agent ids kept although this unit does not see their
	// unit, in numeric order.
	Kept []string
	// Duplicates lists the agents left out for a reused address.
	Duplicates []Duplicate
	// Bootstrap is the bootstrap node chosen by this aggregation ("" when
	// none was chosen now: one was chosen before, or the list is empty).
	Bootstrap string
}

// Aggregate is the leader's rule: db-bind-addresses lists every unit with
// valid data (itself included, the departing unit excluded), keeps the
// listed units this leader has neither seen join nor seen depart, and never
// lists one address twice; bootstrap-agent-id is chosen once, with the first
// non-empty list, and never changed.
//
// Safe because Juju commits application data only from a hook that exits 0
// while its unit leads, one leader at a time (docs/juju.md): the first
// committed bootstrap-agent-id is the only one, and it is written together
// with a list that names it, so every unit's controller.conf names the same
// node as the one that may bootstrap.
func Aggregate(v View) (Aggregation, error) {
	var out Aggregation
	current, currentErr := DecodeAddresses(v.AppData[KeyBindAddresses])
	currentUnits := decodeAgentUnits(v.AppData[KeyAgentUnits])
	entries := map[string]string{}
	owners := map[string]string{} // agent id → unit
	if v.Own != "" {
		entries[v.AgentID], owners[v.AgentID] = v.Own, v.Unit
	}
	for _, unit := range v.Units {
		if unit == v.Departing || unit == v.Unit {
			continue
		}
		id, addr, err := Entry(v.App, unit, v.PeerData[unit])
		if err != nil {
			out.Ignored = append(out.Ignored, Ignored{Unit: unit, Err: err})
			continue
		}
		if id == "" {
			continue // not published yet
		}
		if other, taken := owners[id]; taken {
			keep, drop := claimant(id, other, unit, current[id] == entries[id], current[id] == addr)
			out.Ignored = append(out.Ignored, Ignored{Unit: drop, Err: fmt.Errorf("agent id %s is also claimed by %s", id, keep)})
			if keep == other {
				continue
			}
		}
		entries[id], owners[id] = addr, unit
	}
	out.Kept = keepUnseen(v, current, currentUnits, entries)
	out.Duplicates = dropDuplicates(current, entries)
	agentUnits := map[string]string{}
	for id := range entries {
		unit, ok := owners[id]
		if !ok {
			unit, ok = currentUnits[id] // kept: as listed
		}
		if ok && unit != v.App+"/"+id {
			agentUnits[id] = unit
		}
	}

	out.Set = map[string]string{}
	_, hasList := v.AppData[KeyBindAddresses]
	if (hasList || len(entries) > 0) && (currentErr != nil || !maps.Equal(current, entries)) {
		encoded, err := json.Marshal(entries) // map keys come out sorted
		if err != nil {
			return Aggregation{}, fmt.Errorf("cannot encode db-bind-addresses: %w", err)
		}
		out.Set[KeyBindAddresses] = string(encoded)
	}
	if !maps.Equal(agentUnits, currentUnits) {
		encoded := ""
		if len(agentUnits) > 0 {
			b, err := json.Marshal(agentUnits)
			if err != nil {
				return Aggregation{}, fmt.Errorf("cannot encode db-agent-units: %w", err)
			}
			encoded = string(b)
		}
		out.Set[KeyAgentUnits] = encoded
	}
	out.Bootstrap = chooseBootstrap(v, entries)
	if out.Bootstrap != "" {
		out.Set[KeyBootstrapAgentID] = out.Bootstrap
	}
	out.Entries = entries
	out.AppData = maps.Clone(v.AppData)
	if out.AppData == nil {
		out.AppData = map[string]string{}
	}
	maps.Copy(out.AppData, out.Set)
	if out.AppData[KeyAgentUnits] == "" {
		delete(out.AppData, KeyAgentUnits)
	}
	return out, nil
}

// claimant decides between two units claiming one agent id: the unit whose
// number it is (the default agent id, which needs no socket to vouch for
// it), else the one the current list has at its address, else the lower
// unit. It returns the unit kept and the one dropped.
func claimant(id, a, b string, aListed, bListed bool) (keep, drop string) {
	_, na, _ := strings.Cut(a, "/")
	_, nb, _ := strings.Cut(b, "/")
	switch {
	case na == id && nb != id:
		return a, b
	case nb == id && na != id:
		return b, a
	case aListed && !bListed:
		return a, b
	case bListed && !aListed:
		return b, a
	case compareUnits(a, b) <= 0:
		return a, b
	}
	return b, a
}

// decodeAgentUnits parses db-agent-units, keeping only valid entries.
func decodeAgentUnits(raw string) map[string]string {
	out := map[string]string{}
	var m map[string]string
	if raw == "" || json.Unmarshal([]byte(raw), &m) != nil {
		return out
	}
	for id, unit := range m {
		if controllerconf.ValidateAgentID(id) == nil && validUnitName(unit) {
			out[id] = unit
		}
	}
	return out
}

// keepUnseen adds to entries the listed agents whose unit this leader
// neither sees in the relation nor saw depart: a leader elected before it
// processed every peer's relation-joined must not drop live members. It
// returns the ids it kept.
func keepUnseen(v View, current, units, entries map[string]string) []string {
	inView := map[string]bool{}
	for _, unit := range v.Units {
		inView[unit] = true
	}
	var kept []string
	for _, id := range controllerconf.SortedAgentIDs(current) {
		unit := v.App + "/" + id
		if u, ok := units[id]; ok {
			unit = u
		}
		_, number, _ := strings.Cut(unit, "/")
		if _, ok := entries[id]; ok || id == v.AgentID || inView[unit] || unit == v.Departing || v.Departed[number] {
			continue
		}
		entries[id] = current[id]
		kept = append(kept, id)
	}
	return kept
}

// dropDuplicates leaves out all but one agent per address, since two nodes
// on one address cannot both be members: the one the current list already
// has, else the lowest id.
func dropDuplicates(current, entries map[string]string) []Duplicate {
	byAddr := map[string][]string{}
	for _, id := range controllerconf.SortedAgentIDs(entries) {
		byAddr[entries[id]] = append(byAddr[entries[id]], id)
	}
	var dropped []Duplicate
	for _, addr := range slices.Sorted(maps.Keys(byAddr)) {
		ids := byAddr[addr]
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
				dropped = append(dropped, Duplicate{AgentID: id, Address: addr, KeptAgentID: keep})
				delete(entries, id)
			}
		}
	}
	return dropped
}

// chooseBootstrap returns the bootstrap node to write now: none when one was
// ever chosen or the list is empty, else the leader itself if listed, else
// the lowest listed id.
func chooseBootstrap(v View, entries map[string]string) string {
	if v.AppData[KeyBootstrapAgentID] != "" || len(entries) == 0 {
		return ""
	}
	if _, ok := entries[v.AgentID]; ok {
		return v.AgentID
	}
	return controllerconf.SortedAgentIDs(entries)[0]
}

// ClusterProblems are what ReadCluster found wrong in the application data.
type ClusterProblems struct {
	// List says which db-bind-addresses entries were dropped, or why none
	// could be read.
	List error
	// BootstrapAgentID is an invalid bootstrap-agent-id that was ignored.
	BootstrapAgentID string
}

// ReadCluster returns the cluster part of controller.conf
// (db-bind-addresses, bootstrap-agent-id) from the application data, as
// every unit writes it. It returns nil, meaning "keep what the file has",
// when the application data has no db-bind-addresses (no leader has
// aggregated yet) or none usable: an unreadable list is never written as an
// empty one, which would make the daemons remove every peer.
func ReadCluster(app map[string]string) (*controllerconf.Config, ClusterProblems) {
	var p ClusterProblems
	raw, ok := app[KeyBindAddresses]
	if !ok {
		return nil, p
	}
	addrs, err := DecodeAddresses(raw)
	p.List = err
	if err != nil && len(addrs) == 0 && strings.TrimSpace(raw) != "{}" {
		return nil, p
	}
	bootstrap := app[KeyBootstrapAgentID]
	if bootstrap != "" && controllerconf.ValidateAgentID(bootstrap) != nil {
		p.BootstrapAgentID = bootstrap
		bootstrap = ""
	}
	return &controllerconf.Config{DBBindAddresses: addrs, BootstrapAgentID: bootstrap}, p
}
