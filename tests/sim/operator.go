package sim

import (
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The operator's verbs: juju deploy, add-unit, remove-unit, bind, config,
// resolved, exec, and the faults a test can inject (a killed machine, a
// partition).

// Deploy deploys the application with n units, each on a new machine
// (juju deploy -n N). specs, when given, place the units' machines.
func (m *Model) Deploy(n int, specs ...MachineSpec) ([]string, error) {
	m.mu.Lock()
	if len(m.units) > 0 || m.nextUnit > 0 {
		m.mu.Unlock()
		return nil, errors.New("cannot deploy: application already deployed")
	}
	m.relations = nil
	for ep := range m.meta.Peers {
		m.relations = append(m.relations, &relation{id: len(m.relations), endpoint: ep, peer: true,
			scope: map[string]bool{}, unitData: map[string]map[string]string{}, unitVer: map[string]int{}, appData: map[string]string{}})
	}
	sort.Slice(m.relations, func(i, j int) bool { return m.relations[i].endpoint < m.relations[j].endpoint })
	for i, r := range m.relations {
		r.id = i
	}
	m.mu.Unlock()
	return m.addUnits(n, specs)
}

// AddUnit adds n units on new machines (juju add-unit -n N).
func (m *Model) AddUnit(n int, specs ...MachineSpec) ([]string, error) {
	m.mu.Lock()
	deployed := m.nextUnit > 0
	m.mu.Unlock()
	if !deployed {
		return nil, errors.New("cannot add unit: application not deployed")
	}
	return m.addUnits(n, specs)
}

func (m *Model) addUnits(n int, specs []MachineSpec) ([]string, error) {
	var names []string
	var created []*unit
	m.mu.Lock()
	for i := 0; i < n; i++ {
		var spec MachineSpec
		if i < len(specs) {
			spec = specs[i]
		}
		mc, err := m.addMachineLocked(spec)
		if err != nil {
			m.mu.Unlock()
			return names, fmt.Errorf("cannot add machine: %w", err)
		}
		u := m.newUnitLocked(mc)
		names = append(names, u.name)
		created = append(created, u)
	}
	// The cloud's firewall covers a new machine before anything runs on it.
	m.updateFirewallLocked()
	if m.leader == "" && !m.electing && len(created) > 0 {
		u := created[mathrand.IntN(len(created))]
		if m.opts.FirstUnitLeads {
			u = created[0]
		}
		m.leader = u.name
		u.leaderElectedPending = true
	}
	m.notifyLocked()
	m.mu.Unlock()
	for _, u := range created {
		if err := m.prepareUnitFiles(u); err != nil {
			return names, err
		}
	}
	for _, u := range created {
		m.wg.Add(1)
		go m.runAgent(u)
	}
	return names, nil
}

// prepareUnitFiles copies the charm into the unit's agent directory on its
// machine, where Juju's unit agent keeps it.
func (m *Model) prepareUnitFiles(u *unit) error {
	dst := filepath.Join(u.machine.dir, "var-lib-juju", "agents", "unit-"+strings.ReplaceAll(u.name, "/", "-"), "charm")
	m.mu.Lock()
	src := m.charmSrc
	m.mu.Unlock()
	if err := copyTree(src, dst); err != nil {
		return fmt.Errorf("cannot install charm for %s: %w", u.name, err)
	}
	return nil
}

func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, info.Mode().Perm())
	})
}

// Refresh upgrades the application to the charm in dir (juju refresh
// --path): every unit's agent, between two hooks, swaps its charm directory
// for the new one under the running workload, then runs upgrade-charm and,
// as Juju queues it on committing upgrade-charm, config-changed
// (internal/worker/uniter/resolver.go nextOp: install, then upgrade if the
// charm changed, then config-changed; operation/runhook.go Commit).
func (m *Model) Refresh(dir string) error {
	meta, options, err := readCharm(dir)
	if err != nil {
		return fmt.Errorf("cannot refresh: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if meta.Name != m.app {
		return fmt.Errorf("cannot refresh: charm %q is not %q", meta.Name, m.app)
	}
	m.meta, m.options, m.charmSrc = meta, options, dir
	m.charmRev++
	m.notifyLocked()
	return nil
}

// deployCharm swaps a unit's charm directory for the model's current charm:
// the new tree is written beside it and renamed into place, so a running
// workload keeps the files it has open.
func (m *Model) deployCharm(u *unit, src string) error {
	dst := filepath.Join(u.machine.dir, "var-lib-juju", "agents", "unit-"+strings.ReplaceAll(u.name, "/", "-"), "charm")
	next, old := dst+".new", dst+".old"
	_ = os.RemoveAll(next)
	_ = os.RemoveAll(old)
	if err := copyTree(src, next); err != nil {
		return fmt.Errorf("cannot deploy charm for %s: %w", u.name, err)
	}
	if err := os.Rename(dst, old); err != nil {
		return fmt.Errorf("cannot deploy charm for %s: %w", u.name, err)
	}
	if err := os.Rename(next, dst); err != nil {
		return fmt.Errorf("cannot deploy charm for %s: %w", u.name, err)
	}
	return os.RemoveAll(old)
}

// RemoveUnit removes a unit (juju remove-unit): it departs the relation on
// both sides, runs stop and remove, then its machine is removed. With force
// on a dead machine no hook runs on it (juju remove-unit --force).
func (m *Model) RemoveUnit(name string, force bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.units[name]
	if u == nil || u.life == lifeDead {
		return fmt.Errorf("cannot remove unit: unit %q not found", name)
	}
	if u.life == lifeDying && !force {
		return nil
	}
	u.life = lifeDying
	for _, r := range m.relations {
		delete(r.scope, name)
	}
	if force && u.machine.dead {
		m.finishUnitLocked(u)
	}
	m.notifyLocked()
	return nil
}

// finishUnitLocked removes a unit whose remove hook has run (or that was
// force-removed), its machine, and its leadership.
func (m *Model) finishUnitLocked(u *unit) {
	u.life = lifeDead
	u.agent, u.agentMsg = "", ""
	mc := u.machine
	delete(m.machines, mc.id)
	m.updateFirewallLocked()
	if m.leader == u.name {
		m.leader = ""
		m.scheduleElectionLocked()
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		mc.sd.shutdown(true)
		if err := killNetns(mc.netns); err != nil {
			m.log.Warn("cannot remove machine namespace", "machine", mc.id, "err", err)
		}
		m.log.Info("machine removed", "machine", mc.id)
	}()
}

// scheduleElectionLocked elects a new leader once the old leader's lease
// has expired (it is not extended any more: its agent is gone or cut off).
func (m *Model) scheduleElectionLocked() {
	if m.electing {
		return
	}
	m.electing = true
	time.AfterFunc(m.leaseLeft(), func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.electing = false
		if m.closed || m.leader != "" {
			return
		}
		m.electLocked()
	})
}

// electLocked gives the vacant leadership to a unit whose agent can reach
// the controller. In Juju every unit agent's leadership tracker claims the
// vacant lease and whichever claim arrives first wins
// (internal/worker/leadership/tracker.go), so the simulator picks at
// random, never by unit number.
func (m *Model) electLocked() {
	var cands []*unit
	for _, u := range m.units {
		if u.life == lifeAlive && !u.machine.dead && !u.machine.partitioned {
			cands = append(cands, u)
		}
	}
	if len(cands) == 0 {
		return
	}
	u := cands[mathrand.IntN(len(cands))]
	m.leader = u.name
	u.leaderElectedPending = true
	m.log.Info("leader elected", "unit", m.leader)
	m.notifyLocked()
}

// MoveLeadership is a fault: the leader's lease is lost now (as when its
// agent could not extend it in time) and another unit, to or a random one
// when to is "", claims it. A hook the old leader is running and that wrote
// application data then fails when it commits; the new leader runs
// leader-elected.
func (m *Model) MoveLeadership(to string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if to == "" {
		var cands []*unit
		for _, u := range m.units {
			if u.name != m.leader && u.life == lifeAlive && !u.machine.dead && !u.machine.partitioned {
				cands = append(cands, u)
			}
		}
		if len(cands) == 0 {
			return errors.New("cannot move leadership: no other unit can claim it")
		}
		to = cands[mathrand.IntN(len(cands))].name
	}
	u := m.units[to]
	if u == nil || u.life != lifeAlive || u.machine.dead || u.machine.partitioned {
		return fmt.Errorf("cannot move leadership: unit %q cannot claim it", to)
	}
	if m.leader == to {
		return nil
	}
	m.log.Info("leadership moved", "from", m.leader, "to", to)
	m.leader = to
	u.leaderElectedPending = true
	m.notifyLocked()
	return nil
}

// Bind binds an endpoint to a space (juju bind app endpoint=space). Like
// Juju without --force it refuses when a machine has no address in the space.
// Every unit then runs config-changed (docs/juju.md#juju-bind-and-config-changed, #removing-a-unit).
func (m *Model) Bind(endpoint, space string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.validEndpoint(endpoint) {
		return fmt.Errorf("cannot bind: application %q has no endpoint %q", m.app, endpoint)
	}
	for _, u := range m.units {
		if u.life == lifeDead {
			continue
		}
		found := false
		for _, n := range u.machine.nics {
			if n.subnet.Space == space {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("cannot bind: machine %d of unit %s has no address in space %q", u.machine.id, u.name, space)
		}
	}
	m.bindings[endpoint] = space
	m.notifyLocked()
	return nil
}

func (m *Model) validEndpoint(ep string) bool {
	if ep == "juju-info" {
		return true
	}
	_, p := m.meta.Peers[ep]
	_, r := m.meta.Requires[ep]
	_, q := m.meta.Provides[ep]
	_, x := m.meta.ExtraBindings[ep]
	return p || r || q || x
}

// SetConfig sets application config (juju config app k=v). Values are
// parsed by the option's type; an empty value resets it to the default.
func (m *Model) SetConfig(kv map[string]string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	parsed := map[string]any{}
	for k, v := range kv {
		opt, ok := m.options[k]
		if !ok {
			return fmt.Errorf("cannot set config: unknown option %q", k)
		}
		if v == "" {
			parsed[k] = nil
			continue
		}
		var err error
		switch opt.Type {
		case "int":
			var n int64
			n, err = strconv.ParseInt(v, 10, 64)
			parsed[k] = int(n)
		case "float":
			parsed[k], err = strconv.ParseFloat(v, 64)
		case "boolean":
			parsed[k], err = strconv.ParseBool(v)
		default:
			parsed[k] = v
		}
		if err != nil {
			return fmt.Errorf("cannot set config: option %q expected %s, got %q", k, opt.Type, v)
		}
	}
	for k, v := range parsed {
		if v == nil {
			delete(m.config, k)
		} else {
			m.config[k] = v
		}
	}
	m.notifyLocked()
	return nil
}

// effectiveConfig is the config as config-get sees it: defaults overlaid
// with set values.
func (m *Model) effectiveConfigLocked() map[string]any {
	out := map[string]any{}
	for k, o := range m.options {
		out[k] = o.Default
	}
	for k, v := range m.config {
		out[k] = v
	}
	return out
}

// KillMachine SIGKILLs every process on a unit's machine: its hooks and
// services die, its unit agent is lost, and the machine stays down. The
// unit stays in the relation (as in Juju) until RemoveUnit with force.
func (m *Model) KillMachine(unitName string) error {
	m.mu.Lock()
	u := m.units[unitName]
	if u == nil {
		m.mu.Unlock()
		return fmt.Errorf("cannot kill machine: unit %q not found", unitName)
	}
	mc := u.machine
	mc.dead = true
	for _, cu := range mc.units {
		cu.agent, cu.agentMsg = "lost", "agent lost, see 'juju show-status-log "+cu.name+"'"
	}
	if m.leader != "" && m.units[m.leader] != nil && m.units[m.leader].machine == mc {
		m.leader = ""
		m.scheduleElectionLocked()
	}
	m.notifyLocked()
	m.mu.Unlock()
	mc.sd.shutdown(true)
	for i := 0; i < 50; i++ {
		pids := netnsPids(mc.netns)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.log.Info("machine killed", "machine", mc.id)
	return nil
}

// Partition cuts (or, with cut false, restores) a unit's machine off every
// subnet by taking its links down on the fabric side. Its addresses stay.
// Its unit agent loses the controller too: a running hook's tool calls
// fail and the hook is not committed (it runs again after recovery), no
// new hook runs, and a leader loses its leadership once its lease expires
// (LeaseExpiry), when another unit is elected and runs leader-elected.
// Restored, the agent reconnects and catches up.
func (m *Model) Partition(unitName string, cut bool) error {
	m.mu.Lock()
	u := m.units[unitName]
	if u == nil {
		m.mu.Unlock()
		return fmt.Errorf("cannot partition: unit %q not found", unitName)
	}
	mc := u.machine
	m.mu.Unlock()
	return m.partition(mc, cut)
}

// PartitionMachine is Partition for any machine by id (an agent machine,
// say).
func (m *Model) PartitionMachine(id int, cut bool) error {
	mc, err := m.machineByID(id)
	if err != nil {
		return fmt.Errorf("cannot partition: %w", err)
	}
	return m.partition(mc, cut)
}

func (m *Model) partition(mc *machine, cut bool) error {
	m.mu.Lock()
	mc.partitioned = cut
	for _, hc := range m.contexts {
		if hc.unit.machine == mc && cut {
			hc.cutOff = true
		}
	}
	for _, u := range mc.units {
		if cut {
			u.agent, u.agentMsg = "lost", "agent lost, see 'juju show-status-log "+u.name+"'"
		} else if u.agent == "lost" {
			u.agent, u.agentMsg = "idle", ""
		}
	}
	if cut {
		m.expireLeaseOfLocked(mc)
	} else if m.leader == "" && !m.electing {
		m.electLocked()
	}
	m.notifyLocked()
	m.mu.Unlock()
	state := "up"
	if cut {
		state = "down"
	}
	for _, n := range mc.nics {
		if err := ipCmd("-n", m.fabric, "link", "set", n.fabric, state); err != nil {
			return fmt.Errorf("cannot partition machine %d: %w", mc.id, err)
		}
	}
	return nil
}

// expireLeaseOfLocked drops the leadership of a unit on a cut-off machine
// once its lease expires unextended, unless the machine is back by then.
func (m *Model) expireLeaseOfLocked(mc *machine) {
	leader := m.units[m.leader]
	if leader == nil || leader.machine != mc {
		return
	}
	name := leader.name
	time.AfterFunc(m.leaseLeft(), func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.closed || m.leader != name || !mc.partitioned {
			return
		}
		m.log.Info("leader's lease expired while its machine is cut off", "unit", name)
		m.leader = ""
		m.electLocked()
	})
}

// Resolve retries a unit's failed hook (juju resolved).
func (m *Model) Resolve(unitName string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.units[unitName]
	if u == nil {
		return fmt.Errorf("cannot resolve: unit %q not found", unitName)
	}
	if u.failed == nil {
		return fmt.Errorf("cannot resolve: unit %q is not in an error state", unitName)
	}
	u.resolved = true
	m.notifyLocked()
	return nil
}

// Exec runs a command on a unit's machine, inside its namespaces and with
// its /var/lib/juju (juju exec / juju ssh).
func (m *Model) Exec(ctx context.Context, unitName string, argv ...string) (stdout, stderr []byte, err error) {
	m.mu.Lock()
	u := m.units[unitName]
	m.mu.Unlock()
	if u == nil {
		return nil, nil, fmt.Errorf("cannot exec: unit %q not found", unitName)
	}
	return m.execOn(ctx, u.machine, argv)
}
