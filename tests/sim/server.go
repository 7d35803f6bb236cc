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
	// cache holds the remote bags read during this hook: like Juju, a hook
	// sees one consistent snapshot of each bag it reads.
	cache map[string]map[string]string
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
	}
	m.contexts[hc.id] = hc
	return hc
}

type hookFault struct {
	unit, hook, tool string
	fired            bool
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
	m.mu.Unlock()
	if hc == nil {
		return toolResponse{Code: 1, Stderr: []byte(fmt.Sprintf("ERROR bad request: unknown context %q\n", req.ContextID))}
	}
	return m.runToolCommand(hc, req)
}
