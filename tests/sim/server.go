package sim

import (
	"encoding/json"
	"fmt"
	"net"
	"syscall"
	"time"
)

// hookContext is the per-hook state behind JUJU_CONTEXT_ID: relation
// settings written by relation-set stay here until the hook exits 0.
type hookContext struct {
	id        string
	unit      *unit
	hook      *hookInfo
	pid       int
	unitDelta map[int]map[string]*string
	appDelta  map[int]map[string]*string
	// cache holds the bags of non-members (the unit's own, a departed
	// unit's) read during this hook, and appCache the application bags:
	// Juju keeps those for one hook (runner/context/cache.go Prune, called
	// for every new context). Members' bags live in the unit's relCache.
	cache    map[string]map[string]string
	appCache map[int]map[string]string
	// minion sticks once is-leader (or a leader-only tool) found the unit
	// not the leader: Juju does not claim again in the same hook
	// (runner/context/leader.go ensureLeader).
	minion bool
	// cutOff is set when the unit's machine is partitioned during the
	// hook: its agent lost the API connection.
	cutOff bool
	// ports are the hook's pending open-port and close-port requests,
	// sent only if it exits 0 (ports.go).
	ports portChanges
}

func (m *Model) newContextLocked(u *unit, h *hookInfo) *hookContext {
	m.ctxSeq++
	hc := &hookContext{
		id:        fmt.Sprintf("%s-%s-%d", u.name, h.name, m.ctxSeq),
		unit:      u,
		hook:      h,
		unitDelta: map[int]map[string]*string{},
		appDelta:  map[int]map[string]*string{},
		cache:     map[string]map[string]string{},
		appCache:  map[int]map[string]string{},
		ports:     portChanges{open: groupedPorts{}, close: groupedPorts{}},
	}
	m.contexts[hc.id] = hc
	m.pruneRelationCacheLocked(u, h)
	return hc
}

// pruneRelationCacheLocked is what Juju's context factory does to the
// agent's relation caches for every new hook context
// (runner/context/contextfactory.go getContextRelations and HookContext):
// keep the cached bags of current members only, forget the hook's remote
// unit (a departed one leaves the cache; a joined or changed one is read
// afresh). Every other member's bag stays as it was last read, however
// long ago, until its own relation hook runs.
func (m *Model) pruneRelationCacheLocked(u *unit, h *hookInfo) {
	for rid, bags := range u.relCache {
		for name := range bags {
			if !u.joined[rid][name] {
				delete(bags, name)
			}
		}
	}
	if h.rel != nil && h.remoteUnit != "" && u.relCache[h.rel.id] != nil {
		delete(u.relCache[h.rel.id], h.remoteUnit)
	}
}

type hookFault struct {
	unit, hook, tool string
	// moveLeader, when set, moves leadership away from the unit at the
	// tool call instead of killing the hook.
	moveLeader bool
	fired      bool
}

// MoveLeadershipAt arranges for the unit to lose its leadership the next
// time hook calls tool, just before the tool answers: the lease moved to a
// random other unit mid-hook, so application data the hook wrote makes its
// commit fail.
func (m *Model) MoveLeadershipAt(unitName, hook, tool string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.faults = append(m.faults, &hookFault{unit: unitName, hook: hook, tool: tool, moveLeader: true})
}

// KillHookAt arranges for the next run of hook on unit to be SIGKILLed when
// it calls tool, before the tool answers: a hook killed half-way, whose
// relation data must therefore not be committed.
func (m *Model) KillHookAt(unitName, hook, tool string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.faults = append(m.faults, &hookFault{unit: unitName, hook: hook, tool: tool})
}

func (m *Model) serve() {
	defer m.wg.Done()
	for {
		conn, err := m.listener.Accept()
		if err != nil {
			return
		}
		go m.handleConn(conn)
	}
}

func (m *Model) handleConn(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Minute))
	var req toolRequest
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		return
	}
	resp := m.handle(req)
	_ = json.NewEncoder(conn).Encode(resp)
}

func (m *Model) handle(req toolRequest) toolResponse {
	if req.Tool == toolSystemctl {
		m.mu.Lock()
		mc := m.machineByInode(req.NetNS)
		m.mu.Unlock()
		if mc == nil {
			return toolResponse{Code: 1, Stderr: []byte("System has not been booted with systemd as init system (PID 1). Can't operate.\nFailed to connect to bus: Host is down\n")}
		}
		return mc.sd.systemctl(req.Args)
	}
	m.mu.Lock()
	hc := m.contexts[req.ContextID]
	if hc != nil {
		for _, f := range m.faults {
			if !f.fired && f.unit == hc.unit.name && f.hook == hc.hook.name && f.tool == req.Tool && f.moveLeader {
				f.fired = true
				m.mu.Unlock()
				if err := m.MoveLeadership(""); err != nil {
					m.log.Warn("cannot move leadership mid-hook", "unit", f.unit, "err", err)
				}
				m.mu.Lock()
				continue
			}
			if !f.fired && f.unit == hc.unit.name && f.hook == hc.hook.name && f.tool == req.Tool {
				f.fired = true
				pid := hc.pid
				m.mu.Unlock()
				m.log.Info("killing hook half-way", "unit", f.unit, "hook", f.hook, "tool", f.tool)
				if pid > 0 {
					_ = syscall.Kill(-pid, syscall.SIGKILL)
				}
				return toolResponse{Code: 1, Stderr: []byte("ERROR connection is shut down\n")}
			}
		}
	}
	if hc != nil && (hc.cutOff || hc.unit.machine.partitioned) && req.Tool != "juju-log" {
		// The agent lost its API connection: every tool that needs the
		// controller fails (juju-log goes to the agent's local log).
		hc.cutOff = true
		m.mu.Unlock()
		return toolResponse{Code: 1, Stderr: []byte("ERROR connection is shut down\n")}
	}
	m.mu.Unlock()
	if hc == nil {
		return toolResponse{Code: 1, Stderr: []byte(fmt.Sprintf("ERROR bad request: unknown context %q\n", req.ContextID))}
	}
	return m.runToolCommand(hc, req)
}
