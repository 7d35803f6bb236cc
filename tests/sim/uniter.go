package sim

// The uniter: its resolver (which hook a unit runs next, in the order of
// juju/juju: internal/worker/uniter/resolver.go and relation/resolver.go),
// the agent loop that runs one hook at a time, and the commit at hook exit.

import (
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"
)

type life int

const (
	lifeAlive life = iota
	lifeDying
	lifeDead
)

// relation is a peer relation of the application (the simulator models one
// application, so every relation is a peer relation).
type relation struct {
	id       int
	endpoint string
	peer     bool
	// scope holds the units that have entered the relation and not left.
	scope map[string]bool
	// unitData survives a unit's departure: departed units' data stays
	// readable for the relation's lifetime (§5.3 relation-get).
	unitData map[string]map[string]string
	unitVer  map[string]int
	appData  map[string]string
	appVer   int
}

func (r *relation) idString() string { return fmt.Sprintf("%s:%d", r.endpoint, r.id) }

// hookInfo is one hook to run, with the relation variables of §5.2.
type hookInfo struct {
	name       string
	rel        *relation
	remoteUnit string
	remoteApp  string
	departing  string
	configHash string
}

// HookRecord is one hook a unit ran, for tests of hook order.
type HookRecord struct {
	Hook          string
	RemoteUnit    string
	RemoteApp     string
	DepartingUnit string
	ExitCode      int
	Leader        bool
}

type unit struct {
	name    string
	num     int
	machine *machine
	life    life

	installed, started, stopped bool
	created                     map[int]bool
	leaderElectedPending        bool
	seenConfig                  string
	joined                      map[int]map[string]bool
	seenUnit                    map[int]map[string]int
	seenApp                     map[int]int
	pendingChanged              map[int]string

	workload, message string
	statusSet         bool
	agent, agentMsg   string
	version           string
	savedWorkload     [2]string

	lastUpdateStatus time.Time

	failed   *hookInfo
	resolved bool
	retryAt  time.Time
	running  bool
	history  []HookRecord
}

func (m *Model) newUnitLocked(mc *machine) *unit {
	u := &unit{
		name: fmt.Sprintf("%s/%d", m.app, m.nextUnit), num: m.nextUnit, machine: mc,
		created: map[int]bool{}, joined: map[int]map[string]bool{}, seenUnit: map[int]map[string]int{},
		seenApp: map[int]int{}, pendingChanged: map[int]string{},
		workload: "waiting", message: "waiting for machine", agent: "allocating",
	}
	for _, r := range m.relations {
		u.joined[r.id] = map[string]bool{}
		u.seenUnit[r.id] = map[string]int{}
	}
	m.nextUnit++
	m.units[u.name] = u
	mc.units = append(mc.units, u)
	return u
}

// configHashLocked covers what makes Juju queue config-changed: the config,
// the machine's addresses and the endpoint bindings (§1.9, §5.4).
func (m *Model) configHashLocked(u *unit) string {
	cfg, _ := json.Marshal(m.effectiveConfigLocked())
	b, _ := json.Marshal(m.bindings)
	return string(cfg) + "|" + string(b) + "|" + strings.Join(u.machine.addresses(), ",")
}

func sortedKeys[V any](mp map[string]V) []string {
	keys := make([]string, 0, len(mp))
	for k := range mp {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// nextOpLocked is the simulator's version of the uniter's resolver
// (§5.4, §5.5): it returns the next hook to run, applying the hook's
// "prepare" bookkeeping, or nil when the unit has nothing to do.
func (m *Model) nextOpLocked(u *unit) *hookInfo {
	if u.failed != nil {
		if u.resolved || (m.opts.AutoRetryHooks > 0 && !time.Now().Before(u.retryAt)) {
			h := u.failed
			u.failed, u.resolved = nil, false
			u.workload, u.message = u.savedWorkload[0], u.savedWorkload[1]
			return h
		}
		return nil
	}
	if u.life == lifeDying {
		for _, r := range m.relations {
			for _, remote := range sortedKeys(u.joined[r.id]) {
				// The departing unit runs departed once per remaining
				// peer, naming itself as the departing unit (§5.5).
				delete(u.joined[r.id], remote)
				return &hookInfo{name: r.endpoint + "-relation-departed", rel: r, remoteUnit: remote, remoteApp: m.app, departing: u.name}
			}
		}
		if u.installed && !u.stopped {
			return &hookInfo{name: "stop"}
		}
		if u.installed {
			return &hookInfo{name: "remove"}
		}
		m.finishUnitLocked(u)
		return nil
	}
	if !u.installed {
		return &hookInfo{name: "install"}
	}
	for _, r := range m.relations {
		if !u.created[r.id] {
			return &hookInfo{name: r.endpoint + "-relation-created", rel: r, remoteApp: m.app}
		}
	}
	if u.leaderElectedPending {
		if m.leader != u.name {
			u.leaderElectedPending = false
		} else {
			return &hookInfo{name: "leader-elected"}
		}
	}
	if h := m.configHashLocked(u); h != u.seenConfig {
		return &hookInfo{name: "config-changed", configHash: h}
	}
	if !u.started {
		return &hookInfo{name: "start"}
	}
	for _, r := range m.relations {
		if remote := u.pendingChanged[r.id]; remote != "" {
			// relation-changed always follows relation-joined (§5.4).
			delete(u.pendingChanged, r.id)
			u.seenUnit[r.id][remote] = r.unitVer[remote]
			return &hookInfo{name: r.endpoint + "-relation-changed", rel: r, remoteUnit: remote, remoteApp: m.app}
		}
		if r.appVer != u.seenApp[r.id] {
			// An app-data change reaches every unit, the writer included,
			// with no remote unit (§5.4).
			u.seenApp[r.id] = r.appVer
			return &hookInfo{name: r.endpoint + "-relation-changed", rel: r, remoteApp: m.app}
		}
		for _, remote := range sortedKeys(r.scope) {
			if remote != u.name && !u.joined[r.id][remote] {
				u.joined[r.id][remote] = true
				u.pendingChanged[r.id] = remote
				return &hookInfo{name: r.endpoint + "-relation-joined", rel: r, remoteUnit: remote, remoteApp: m.app}
			}
		}
		for _, remote := range sortedKeys(u.joined[r.id]) {
			if !r.scope[remote] {
				delete(u.joined[r.id], remote)
				delete(u.seenUnit[r.id], remote)
				return &hookInfo{name: r.endpoint + "-relation-departed", rel: r, remoteUnit: remote, remoteApp: m.app, departing: remote}
			}
		}
		for _, remote := range sortedKeys(u.joined[r.id]) {
			if r.unitVer[remote] != u.seenUnit[r.id][remote] {
				u.seenUnit[r.id][remote] = r.unitVer[remote]
				return &hookInfo{name: r.endpoint + "-relation-changed", rel: r, remoteUnit: remote, remoteApp: m.app}
			}
		}
	}
	if !time.Now().Before(u.lastUpdateStatus.Add(m.opts.UpdateStatusInterval)) {
		u.lastUpdateStatus = time.Now()
		return &hookInfo{name: "update-status"}
	}
	return nil
}

// runAgent is a unit agent: one hook at a time for this unit; units run in
// parallel.
func (m *Model) runAgent(u *unit) {
	defer m.wg.Done()
	for {
		m.mu.Lock()
		if m.closed || u.life == lifeDead {
			m.mu.Unlock()
			return
		}
		var h *hookInfo
		if !u.machine.dead {
			h = m.nextOpLocked(u)
		}
		if h == nil {
			if u.life == lifeDead {
				m.notifyLocked()
				m.mu.Unlock()
				return
			}
			if !u.machine.dead && u.agent != "idle" {
				u.agent, u.agentMsg = "idle", ""
				m.notifyLocked()
			}
			ch := m.changed
			var retry <-chan time.Time
			if u.failed != nil && m.opts.AutoRetryHooks > 0 {
				retry = time.After(time.Until(u.retryAt))
			} else if u.started && u.life == lifeAlive && u.failed == nil {
				retry = time.After(time.Until(u.lastUpdateStatus.Add(m.opts.UpdateStatusInterval)))
			}
			m.mu.Unlock()
			select {
			case <-ch:
			case <-retry:
			case <-m.closing:
			}
			continue
		}
		hc := m.newContextLocked(u, h)
		u.running = true
		u.agent, u.agentMsg = "executing", "running "+h.name+" hook"
		if h.name == "install" && !u.statusSet {
			u.workload, u.message = "maintenance", "installing charm software"
		}
		m.notifyLocked()
		m.mu.Unlock()

		code := m.runHook(u, hc)

		m.mu.Lock()
		delete(m.contexts, hc.id)
		u.running = false
		rec := HookRecord{Hook: h.name, RemoteUnit: h.remoteUnit, DepartingUnit: h.departing, ExitCode: code, Leader: m.leader == u.name}
		if h.rel != nil {
			rec.RemoteApp = h.remoteApp
		}
		u.history = append(u.history, rec)
		switch {
		case m.closed || u.machine.dead:
			// The agent died with its machine: nothing is committed.
		case code == 0:
			m.commitLocked(u, h, hc)
		default:
			m.log.Warn("hook failed", "unit", u.name, "hook", h.name, "code", code)
			u.failed = h
			u.retryAt = time.Now().Add(m.opts.AutoRetryHooks)
			u.savedWorkload = [2]string{u.workload, u.message}
			u.workload, u.message = "error", fmt.Sprintf("hook failed: %q", h.name)
			u.agent, u.agentMsg = "idle", ""
		}
		m.notifyLocked()
		m.mu.Unlock()
	}
}

// commitLocked applies a hook's effects once it exited 0: relation data
// written with relation-set becomes visible only now (§5.1).
func (m *Model) commitLocked(u *unit, h *hookInfo, hc *hookContext) {
	for rid, delta := range hc.unitDelta {
		r := m.relations[rid]
		if applyDelta(r.unitData, u.name, delta) {
			r.unitVer[u.name]++
		}
	}
	for rid, delta := range hc.appDelta {
		r := m.relations[rid]
		bag := map[string]map[string]string{"": r.appData}
		if applyDelta(bag, "", delta) {
			r.appData = bag[""]
			r.appVer++
		}
	}
	switch {
	case h.name == "install":
		u.installed = true
		if !u.statusSet {
			u.workload, u.message = "unknown", ""
		}
	case h.name == "leader-elected":
		u.leaderElectedPending = false
	case h.name == "config-changed":
		u.seenConfig = h.configHash
		// Juju refreshes ingress-address and egress-subnets in the unit's
		// relation data after every config-changed (§1.6).
		for _, r := range m.relations {
			if r.scope[u.name] {
				m.publishNetworkLocked(u, r)
			}
		}
	case h.name == "start":
		u.started = true
		u.lastUpdateStatus = time.Now()
	case h.name == "stop":
		u.stopped = true
	case h.name == "remove":
		m.finishUnitLocked(u)
	case h.rel != nil && h.name == h.rel.endpoint+"-relation-created":
		u.created[h.rel.id] = true
		if u.life == lifeAlive {
			// Entering scope: peers now see this unit join (§5.4).
			h.rel.scope[u.name] = true
			m.publishNetworkLocked(u, h.rel)
		}
	}
}

func applyDelta(bags map[string]map[string]string, key string, delta map[string]*string) bool {
	bag := maps.Clone(bags[key])
	if bag == nil {
		bag = map[string]string{}
	}
	changed := false
	for k, v := range delta {
		old, had := bag[k]
		if v == nil {
			if had {
				delete(bag, k)
				changed = true
			}
		} else if !had || old != *v {
			bag[k] = *v
			changed = true
		}
	}
	bags[key] = bag
	return changed
}

// publishNetworkLocked writes Juju's own keys into the unit's relation data.
func (m *Model) publishNetworkLocked(u *unit, r *relation) {
	info := m.networkInfoLocked(u, r.endpoint)
	delta := map[string]*string{}
	if len(info.Ingress) > 0 {
		v := info.Ingress[0]
		e := strings.Join(info.Egress, ",")
		delta["ingress-address"], delta["egress-subnets"] = &v, &e
	} else {
		delta["ingress-address"], delta["egress-subnets"] = nil, nil
	}
	if applyDelta(r.unitData, u.name, delta) || r.unitVer[u.name] == 0 {
		r.unitVer[u.name]++
	}
}
