package sim

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// UnitStatus is one unit's line of `juju status`.
type UnitStatus struct {
	Name      string
	Machine   int
	Leader    bool
	Workload  string
	Message   string
	Agent     string
	Address   string
	Version   string
	Dying     bool
	Executing string // hook being run, if any
}

// MachineStatus is one machine's line of `juju status`.
type MachineStatus struct {
	ID          int
	NetNS       string
	Addresses   []string
	Down        bool
	Partitioned bool
	// Agent marks an agent machine (AddAgentMachine): no unit of the
	// application, `controllerd agent` keeping its agent.conf current.
	Agent bool
}

// Status is a snapshot of the model.
type Status struct {
	App    string
	Leader string
	// AppStatus and AppMessage are what the leader set with status-set
	// --application ("" until it does).
	AppStatus, AppMessage string
	Units                 []UnitStatus
	Machines              []MachineStatus
}

// Unit finds a unit's status by name.
func (s Status) Unit(name string) (UnitStatus, bool) {
	for _, u := range s.Units {
		if u.Name == name {
			return u, true
		}
	}
	return UnitStatus{}, false
}

// UnitNames lists the units, in unit-number order.
func (s Status) UnitNames() []string {
	var names []string
	for _, u := range s.Units {
		names = append(names, u.Name)
	}
	return names
}

// Status returns the model's current status.
func (m *Model) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{App: m.app, Leader: m.leader, AppStatus: m.appStatus[0], AppMessage: m.appStatus[1]}
	var names []string
	for name, u := range m.units {
		if u.life != lifeDead {
			names = append(names, name)
		}
	}
	for _, name := range sortedUnitNames(names) {
		u := m.units[name]
		us := UnitStatus{Name: name, Machine: u.machine.id, Leader: m.leader == name, Workload: u.workload,
			Message: u.message, Agent: u.agent, Version: u.version, Dying: u.life == lifeDying}
		if u.running {
			us.Executing = strings.TrimPrefix(u.agentMsg, "running ")
		}
		if addrs := u.machine.addresses(); len(addrs) > 0 {
			us.Address = addrs[0]
		}
		st.Units = append(st.Units, us)
	}
	var ids []int
	for id := range m.machines {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		mc := m.machines[id]
		st.Machines = append(st.Machines, MachineStatus{ID: id, NetNS: mc.netns, Addresses: mc.addresses(), Down: mc.dead, Partitioned: mc.partitioned, Agent: mc.agent})
	}
	return st
}

// History returns the hooks a unit has run so far, in order.
func (m *Model) History(unitName string) []HookRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u := m.units[unitName]; u != nil {
		return append([]HookRecord(nil), u.history...)
	}
	return nil
}

// RelationData returns the committed data bags of the peer relation of an
// endpoint: unit name → bag, and the app bag under the application's name.
func (m *Model) RelationData(endpoint string) map[string]map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]map[string]string{}
	for _, r := range m.relations {
		if r.endpoint != endpoint {
			continue
		}
		for u, bag := range r.unitData {
			out[u] = copyMap(bag)
		}
		out[m.app] = copyMap(r.appData)
	}
	return out
}

func copyMap(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// idleLocked says whether every live unit has nothing left to do; failed
// lists units in error.
func (m *Model) idleLocked() (idle bool, failed []string) {
	idle = true
	anyAlive := false
	for name, u := range m.units {
		if u.life == lifeDead || u.machine.dead || u.machine.partitioned {
			continue
		}
		anyAlive = anyAlive || u.life == lifeAlive
		if u.failed != nil && (u.resolved || m.opts.AutoRetryHooks > 0) {
			// Resolved, or Juju retries it by itself: not idle yet.
			idle = false
			continue
		}
		if u.failed != nil {
			failed = append(failed, fmt.Sprintf("%s (%s)", name, u.message))
			continue
		}
		if u.running || u.agent != "idle" || u.life == lifeDying {
			idle = false
			continue
		}
		// nextOpLocked has side effects; ask a read-only question instead.
		if m.hasPendingLocked(u) {
			idle = false
		}
	}
	if anyAlive && m.leader == "" {
		idle = false
	}
	sort.Strings(failed)
	return idle, failed
}

func (m *Model) hasPendingLocked(u *unit) bool {
	if !u.installed || !u.started || u.interrupted != nil || u.charmRev != m.charmRev || u.leaderElectedPending && m.leader == u.name {
		return true
	}
	for _, r := range m.relations {
		if !u.created[r.id] || u.pendingChanged[r.id] != "" || r.appVer != u.seenApp[r.id] {
			return true
		}
		for remote := range r.scope {
			if m.seesLocked(r, u, remote) && !u.joined[r.id][remote] {
				return true
			}
		}
		for remote := range u.joined[r.id] {
			if !r.scope[remote] || r.unitVer[remote] != u.seenUnit[r.id][remote] {
				return true
			}
		}
	}
	return m.configHashLocked(u) != u.seenConfig
}

// WaitIdle waits until every live unit has run all its hooks and the model
// has a leader, and stays so for a moment; units on a cut-off machine are
// not waited for. It fails at once if a unit is in error and hooks are not
// retried automatically (use WaitFor to wait through errors).
func (m *Model) WaitIdle(ctx context.Context) error {
	stableSince := time.Time{}
	for {
		m.mu.Lock()
		idle, failed := m.idleLocked()
		ch := m.changed
		m.mu.Unlock()
		if len(failed) > 0 {
			return fmt.Errorf("cannot wait for idle: units in error: %s", strings.Join(failed, ", "))
		}
		if idle {
			if stableSince.IsZero() {
				stableSince = time.Now()
			}
			if time.Since(stableSince) >= 300*time.Millisecond {
				return nil
			}
		} else {
			stableSince = time.Time{}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cannot wait for idle: %w\n%s", ctx.Err(), m.StatusTable())
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitFor polls the status until cond holds.
func (m *Model) WaitFor(ctx context.Context, what string, cond func(Status) bool) error {
	for {
		st := m.Status()
		if cond(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cannot wait for %s: %w\n%s", what, ctx.Err(), m.StatusTable())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// StatusTable renders the status like `juju status`.
func (m *Model) StatusTable() string {
	var b strings.Builder
	WriteStatusTable(&b, m.Status(), nil)
	return b.String()
}

// WriteStatusTable writes st like `juju status`; extra, when non-nil, adds
// columns per unit (header → value), e.g. the Dqlite role.
func WriteStatusTable(w io.Writer, st Status, extra func(unit string) []string, extraHeaders ...string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if st.AppStatus != "" {
		// juju status shows the application status the leader set.
		fmt.Fprintf(tw, "App\tStatus\tMessage\n%s\t%s\t%s\n\n", st.App, st.AppStatus, st.AppMessage)
	}
	fmt.Fprintf(tw, "Unit\tWorkload\tAgent\tMachine\tAddress\t%sMessage\n", joinCols(extraHeaders))
	for _, u := range st.Units {
		name := u.Name
		if u.Leader {
			name += "*"
		}
		agent := u.Agent
		if u.Executing != "" {
			agent = "executing"
		}
		var cols []string
		if extra != nil {
			cols = extra(u.Name)
		}
		msg := u.Message
		if u.Executing != "" {
			msg = "(" + u.Executing + ") " + msg
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s%s\n", name, u.Workload, agent, u.Machine, u.Address, joinCols(cols), msg)
	}
	fmt.Fprintf(tw, "\nMachine\tState\tAddresses\tNetwork namespace\tRuns\n")
	for _, mc := range st.Machines {
		runs := "unit"
		if mc.Agent {
			runs = "controllerd agent"
		}
		state := "started"
		if mc.Down {
			state = "down"
		} else if mc.Partitioned {
			state = "partitioned"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", strconv.Itoa(mc.ID), state, strings.Join(mc.Addresses, ","), mc.NetNS, runs)
	}
	tw.Flush()
}

func joinCols(cols []string) string {
	if len(cols) == 0 {
		return ""
	}
	return strings.Join(cols, "\t") + "\t"
}
