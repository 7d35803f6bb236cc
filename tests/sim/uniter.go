package sim

// The uniter: its resolver (which hook a unit runs next, in the order of
// juju/juju: internal/worker/uniter/resolver.go and relation/resolver.go),
// the agent loop that runs one hook at a time, and the commit at hook exit.

import (
	"encoding/json"
	"fmt"
	"maps"
	mathrand "math/rand/v2"
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
	// remote is the other application of a non-peer relation
	// (remoteapp.go); nil for a peer relation.
	remote *remoteApp
	// unitData survives a unit's departure: departed units' data stays
	// readable for the relation's lifetime (docs/juju.md#hook-tools, relation-get).
	unitData map[string]map[string]string
	unitVer  map[string]int
	appData  map[string]string
	appVer   int
}

func (r *relation) idString() string { return fmt.Sprintf("%s:%d", r.endpoint, r.id) }

// hookInfo is one hook to run, with the relation variables of docs/juju.md#hook-dispatch-and-environment.
type hookInfo struct {
	name       string
	rel        *relation
	remoteUnit string
	remoteApp  string
	departing  string
	configHash string
	// charmRev and charmSrc are the charm an upgrade-charm hook deploys
	// before it runs.
	charmRev int
	charmSrc string
	// secret is set for secret-changed and secret-rotate (secrethooks.go).
	secret *secretHook
}

// HookRecord is one hook a unit ran, for tests of hook order.
type HookRecord struct {
	Hook          string
	RemoteUnit    string
	RemoteApp     string
	DepartingUnit string
	ExitCode      int
	// CommitError is why the controller refused the hook's changes
	// (the hook then failed although its process exited 0).
	CommitError string
	Leader      bool
	// Started is when the hook's process started.
	Started time.Time
}

type unit struct {
	name    string
	num     int
	machine *machine
	life    life

	installed, started, stopped bool
	// charmRev is the charm revision this unit's agent has deployed.
	charmRev int
	// related holds the relations in this unit's hook contexts: those it
	// has entered the scope of. Juju enters scope after install and before
	// relation-created (internal/worker/uniter/relation/statetracker.go
	// SynchronizeScopes, called by the created-relations resolver only once
	// the unit is installed), and lists only those relations in a hook
	// context (runner/context/contextfactory.go getContextRelations).
	related              map[int]bool
	created              map[int]bool
	leaderElectedPending bool
	seenConfig           string
	joined               map[int]map[string]bool
	seenUnit             map[int]map[string]int
	seenApp              map[int]int
	pendingChanged       map[int]string

	workload, message string
	statusSet         bool
	agent, agentMsg   string
	version           string
	savedWorkload     [2]string
	// ports are the unit's committed opened ports (ports.go).
	ports groupedPorts

	lastUpdateStatus time.Time

	failed   *hookInfo
	resolved bool
	// hold (tests only) keeps the agent from starting a hook, to set up
	// states that need a unit to lag behind.
	hold bool
	// interrupted is a hook whose agent lost the API (a partition) before
	// it could commit: it runs again first once the agent reconnects, as
	// Juju's uniter re-runs a hook its operation state records as pending
	// (internal/worker/uniter/operation/runhook.go).
	interrupted *hookInfo
	// relCache is the agent's relation settings cache of its members'
	// bags, relation id → unit → bag, kept across hooks
	// (runner/context/cache.go RelationCache).
	relCache map[int]map[string]map[string]string
	retryAt  time.Time
	// retryDelay is the wait before the next retry of a failed hook:
	// Juju's back-off (see nextRetryDelay); zero while no hook failed.
	retryDelay time.Duration
	running    bool
	history    []HookRecord
}

// maxRetryDelay caps the back-off between retries of a failed hook
// (apiserver/facades/agent/retrystrategy: MaxRetryTime = 5 minutes).
const maxRetryDelay = 5 * time.Minute

// nextRetryDelay is Juju's back-off for automatically retried hooks: the
// first retry after min (MinRetryTime, 5 s in Juju), each next one after
// twice the previous, with ±3 % jitter, at most 5 minutes
// (internal/worker/uniter/uniter.go builds a utils.BackoffTimer from the
// retry strategy with Factor 2 and Jitter; juju/utils timer.go
// increaseDuration). r is uniform in [0, 1).
func nextRetryDelay(prev, min time.Duration, r float64) time.Duration {
	if prev <= 0 {
		return min
	}
	next := 2 * prev
	next += time.Duration(float64(next) * (2*r - 1) * 0.03)
	if next > maxRetryDelay {
		next = maxRetryDelay
	}
	return next
}

func (m *Model) newUnitLocked(mc *machine) *unit {
	u := &unit{
		name: fmt.Sprintf("%s/%d", m.app, m.nextUnit), num: m.nextUnit, machine: mc,
		related: map[int]bool{}, created: map[int]bool{}, relCache: map[int]map[string]map[string]string{}, joined: map[int]map[string]bool{}, seenUnit: map[int]map[string]int{},
		seenApp: map[int]int{}, pendingChanged: map[int]string{}, charmRev: m.charmRev,
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
// the machine's addresses and the endpoint bindings (docs/juju.md#juju-bind-and-config-changed, #hook-order).
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

// nextOpLocked is the simulator's version of the uniter's resolver: it
// returns the next hook to run, applying the hook's "prepare" bookkeeping,
// or nil when the unit has nothing to do. The order is Juju's
// (internal/worker/uniter/resolver.go nextOp, relation/resolver.go
// nextHookForRelation).
func (m *Model) nextOpLocked(u *unit) *hookInfo {
	if h := u.interrupted; h != nil {
		u.interrupted = nil
		return h
	}
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
				// peer, naming itself as the departing unit (docs/juju.md#removing-a-unit).
				delete(u.joined[r.id], remote)
				return &hookInfo{name: r.endpoint + "-relation-departed", rel: r, remoteUnit: remote, remoteApp: m.remoteAppOf(r), departing: u.name}
			}
		}
		// Stop runs only on a started unit, remove on an installed one
		// (resolver.go nextOp, case life.Dying).
		if u.started && !u.stopped {
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
			// Entering scope comes first: peers see this unit join even
			// if its relation-created hook then fails.
			if !u.related[r.id] {
				u.related[r.id] = true
				m.enterScopeLocked(u, r)
				m.publishNetworkLocked(u, r)
				m.notifyLocked()
			}
			return &hookInfo{name: r.endpoint + "-relation-created", rel: r, remoteApp: m.remoteAppOf(r)}
		}
	}
	if u.leaderElectedPending {
		if m.leader != u.name {
			u.leaderElectedPending = false
		} else {
			return &hookInfo{name: "leader-elected"}
		}
	}
	if h := m.nextSecretHookLocked(u); h != nil {
		return h
	}
	if u.charmRev != m.charmRev {
		return &hookInfo{name: "upgrade-charm", charmRev: m.charmRev, charmSrc: m.charmSrc}
	}
	if h := m.configHashLocked(u); h != u.seenConfig {
		return &hookInfo{name: "config-changed", configHash: h}
	}
	if !u.started {
		return &hookInfo{name: "start"}
	}
	for _, r := range m.relations {
		if h := m.nextRelationHookLocked(u, r); h != nil {
			return h
		}
	}
	if !time.Now().Before(u.lastUpdateStatus.Add(m.opts.UpdateStatusInterval)) {
		u.lastUpdateStatus = time.Now()
		return &hookInfo{name: "update-status"}
	}
	return nil
}

// nextRelationHookLocked follows relation/resolver.go nextHookForRelation:
// the relation-changed that always follows a joined, then departures, then
// the application bag, then joins, then changed unit bags; units in sorted
// name order within each step. So a replacement (one unit leaving, one
// arriving) shows the charm the smaller membership first.
func (m *Model) nextRelationHookLocked(u *unit, r *relation) *hookInfo {
	if remote := u.pendingChanged[r.id]; remote != "" {
		delete(u.pendingChanged, r.id)
		u.seenUnit[r.id][remote] = r.unitVer[remote]
		return &hookInfo{name: r.endpoint + "-relation-changed", rel: r, remoteUnit: remote, remoteApp: m.remoteAppOf(r)}
	}
	for _, remote := range sortedKeys(u.joined[r.id]) {
		if !r.scope[remote] {
			delete(u.joined[r.id], remote)
			delete(u.seenUnit[r.id], remote)
			return &hookInfo{name: r.endpoint + "-relation-departed", rel: r, remoteUnit: remote, remoteApp: m.remoteAppOf(r), departing: remote}
		}
	}
	if r.appVer != u.seenApp[r.id] {
		// An app-data change reaches every unit, the writer included,
		// with no remote unit (docs/juju.md#hook-order).
		u.seenApp[r.id] = r.appVer
		return &hookInfo{name: r.endpoint + "-relation-changed", rel: r, remoteApp: m.remoteAppOf(r)}
	}
	for _, remote := range sortedKeys(r.scope) {
		if m.seesLocked(r, u, remote) && !u.joined[r.id][remote] {
			u.joined[r.id][remote] = true
			u.pendingChanged[r.id] = remote
			return &hookInfo{name: r.endpoint + "-relation-joined", rel: r, remoteUnit: remote, remoteApp: m.remoteAppOf(r)}
		}
	}
	for _, remote := range sortedKeys(u.joined[r.id]) {
		if r.unitVer[remote] != u.seenUnit[r.id][remote] {
			u.seenUnit[r.id][remote] = r.unitVer[remote]
			return &hookInfo{name: r.endpoint + "-relation-changed", rel: r, remoteUnit: remote, remoteApp: m.remoteAppOf(r)}
		}
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
		if !u.machine.dead && !u.machine.partitioned && m.runQueuedActionLocked(u) {
			m.mu.Unlock()
			continue
		}
		var h *hookInfo
		if !u.machine.dead && !u.machine.partitioned && !u.hold {
			// A partitioned machine's agent has no API connection: it
			// learns of no change and runs no hook until it reconnects.
			h = m.nextOpLocked(u)
		}
		if h == nil {
			if u.life == lifeDead {
				m.notifyLocked()
				m.mu.Unlock()
				return
			}
			if !u.machine.dead && !u.machine.partitioned && u.agent != "idle" {
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

		started := time.Now()
		code := 0
		if h.charmSrc != "" {
			if err := m.deployCharm(u, h.charmSrc); err != nil {
				m.appendUnitLog(u, err.Error())
				code = 1
			}
		}
		if code == 0 {
			code = m.runHook(u, hc)
		}

		m.mu.Lock()
		delete(m.contexts, hc.id)
		u.running = false
		rec := HookRecord{Hook: h.name, RemoteUnit: h.remoteUnit, DepartingUnit: h.departing, ExitCode: code, Leader: m.leader == u.name, Started: started}
		if h.rel != nil {
			rec.RemoteApp = h.remoteApp
		}
		commitErr := ""
		if code == 0 && !hc.cutOff && !u.machine.partitioned {
			commitErr = m.checkCommitLocked(u, hc)
		}
		rec.CommitError = commitErr
		u.history = append(u.history, rec)
		switch {
		case m.closed || u.machine.dead:
			// The agent died with its machine: nothing is committed.
			m.discardSecretsLocked(hc)
		case hc.cutOff || u.machine.partitioned:
			// The agent lost its API connection during the hook: nothing
			// is committed, and the hook runs again once it reconnects.
			m.appendUnitLog(u, fmt.Sprintf("%s hook interrupted: the agent lost its API connection; it will run again", h.name))
			m.discardSecretsLocked(hc)
			u.interrupted = h
		case code == 0 && commitErr == "":
			// A hook that succeeds clears the error: the next failure
			// waits the shortest delay again (the uniter's
			// StopRetryHookTimer resets the back-off timer).
			u.retryDelay = 0
			m.commitLocked(u, h, hc)
			m.commitSecretsLocked(hc)
			m.commitPortsLocked(hc)
		default:
			m.discardSecretsLocked(hc)
			if commitErr != "" {
				m.appendUnitLog(u, fmt.Sprintf("%s hook failed to commit: %s", h.name, commitErr))
			}
			m.log.Warn("hook failed", "unit", u.name, "hook", h.name, "code", code, "commit", commitErr)
			u.failed = h
			u.retryDelay = nextRetryDelay(u.retryDelay, m.opts.AutoRetryHooks, mathrand.Float64())
			u.retryAt = time.Now().Add(u.retryDelay)
			u.savedWorkload = [2]string{u.workload, u.message}
			u.workload, u.message = "error", fmt.Sprintf("hook failed: %q", h.name)
			u.agent, u.agentMsg = "idle", ""
		}
		m.notifyLocked()
		m.mu.Unlock()
	}
}

// checkCommitLocked is the controller's check when the agent commits a
// hook's changes: application settings are accepted only from the current
// leader, in the same transaction as the rest, so a unit that lost its
// lease during the hook fails the hook and commits nothing
// (apiserver/facades/agent/uniter CommitHookChanges checks a leadership
// token; runner/context/context.go Flush sends every change at once).
func (m *Model) checkCommitLocked(u *unit, hc *hookContext) string {
	for _, delta := range hc.appDelta {
		if len(delta) > 0 && m.leader != u.name {
			return fmt.Sprintf("cannot apply changes: %q is not leader of %q", u.name, m.app)
		}
	}
	if msg := m.checkSecretsCommitLocked(u, hc); msg != "" {
		return msg
	}
	return m.checkPortsLocked(hc)
}

// commitLocked applies a hook's effects once it exited 0: relation data
// written with relation-set becomes visible only now (docs/juju.md#relation-data).
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
	case h.name == "upgrade-charm":
		u.charmRev = h.charmRev
		// Committing upgrade-charm queues config-changed.
		u.seenConfig = ""
	case h.name == "config-changed":
		u.seenConfig = h.configHash
		// Juju refreshes ingress-address and egress-subnets in the unit's
		// relation data after every config-changed (docs/juju.md#relation-data).
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
		if m.opts.Juju36 {
			// Juju 3.6 still maintains private-address; 4.0 dropped it.
			delta["private-address"] = &v
		}
	} else {
		delta["ingress-address"], delta["egress-subnets"], delta["private-address"] = nil, nil, nil
	}
	if applyDelta(r.unitData, u.name, delta) || r.unitVer[u.name] == 0 {
		r.unitVer[u.name]++
	}
}
