package sim

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"gopkg.in/yaml.v3"
)

// AgentServiceName is the systemd service running `controllerd agent` on an
// agent machine (the part of Juju's machine agent jujud-machine-N that keeps
// apiaddresses current: the api-address-updater).
const AgentServiceName = "controllerd-agent.service"

// AgentMachineSpec describes a non-controller machine.
type AgentMachineSpec struct {
	// Subnets the machine has a NIC in (default Options.DefaultSubnets),
	// e.g. a management-only subnet.
	Subnets []string
	// APIAddresses seed the agent config's apiaddresses, as Juju's
	// provisioner writes them into a new machine's agent.conf. Default:
	// ControllerAgentAddresses at the time of the call.
	APIAddresses []string
	// Controllers, when set, are passed as `controllerd agent
	// --controllers` (extra ways in besides the file's list).
	Controllers []string
	// NoAgent adds the machine without starting `controllerd agent` (a
	// machine for running `controllerd client`, say).
	NoAgent bool
	// CACert is agent.conf's cacert: (PEM). Default: ControllerCACert,
	// the controllers' CA, as Juju's provisioner writes it.
	CACert string
}

// AgentConfigPathOnMachine is the agent config file of machine id as seen on
// the machine (Juju: /var/lib/juju/agents/machine-N/agent.conf).
func AgentConfigPathOnMachine(id int) string {
	return fmt.Sprintf("/var/lib/juju/agents/machine-%d/agent.conf", id)
}

// AgentToolsDirOnMachine is where the machine's copy of controllerd lives
// (Juju keeps jujud in /var/lib/juju/tools/machine-N).
func AgentToolsDirOnMachine(id int) string {
	return fmt.Sprintf("/var/lib/juju/tools/machine-%d", id)
}

// AddAgentMachine adds a machine that hosts no unit of the application: its
// own network namespace with a NIC in each of spec's subnets, a Juju-style
// agent config /var/lib/juju/agents/machine-N/agent.conf, and, unless
// spec.NoAgent, `controllerd agent` (the built charm's binary, copied to the
// machine's tools dir) running under the machine's systemd to keep the
// file's apiaddresses current. It returns the machine id.
func (m *Model) AddAgentMachine(spec AgentMachineSpec) (int, error) {
	seeds := spec.APIAddresses
	if len(seeds) == 0 {
		seeds = m.ControllerAgentAddresses()
	}
	if spec.CACert == "" {
		spec.CACert = m.ControllerCACert()
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return 0, errors.New("cannot add agent machine: model closed")
	}
	mc, err := m.addMachineLocked(MachineSpec{Subnets: spec.Subnets})
	if err != nil {
		m.mu.Unlock()
		return 0, fmt.Errorf("cannot add agent machine: %w", err)
	}
	mc.agent = true
	m.notifyLocked()
	m.mu.Unlock()

	hostLib := filepath.Join(mc.dir, "var-lib-juju")
	toolsDir := filepath.Join(hostLib, strings.TrimPrefix(AgentToolsDirOnMachine(mc.id), "/var/lib/juju/"))
	if err := os.MkdirAll(toolsDir, 0o755); err != nil {
		return mc.id, fmt.Errorf("cannot create tools dir of machine %d: %w", mc.id, err)
	}
	// A machine without the agent may come from a charm without
	// controllerd (the simulator's toy charm).
	bin, err := os.ReadFile(filepath.Join(m.opts.CharmDir, "controllerd"))
	switch {
	case err == nil:
		if err := os.WriteFile(filepath.Join(toolsDir, "controllerd"), bin, 0o755); err != nil {
			return mc.id, fmt.Errorf("cannot install controllerd on machine %d: %w", mc.id, err)
		}
	case !spec.NoAgent || !errors.Is(err, os.ErrNotExist):
		return mc.id, fmt.Errorf("cannot read controllerd from the charm: %w", err)
	}
	conf := m.hostAgentConfigPath(mc.id)
	if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
		return mc.id, fmt.Errorf("cannot create agent dir of machine %d: %w", mc.id, err)
	}
	data, err := agentConfig(mc.id, m.uuid, seeds, spec.CACert)
	if err != nil {
		return mc.id, err
	}
	if err := os.WriteFile(conf, data, 0o600); err != nil {
		return mc.id, fmt.Errorf("cannot write agent config of machine %d: %w", mc.id, err)
	}
	if spec.NoAgent {
		return mc.id, nil
	}
	exec := AgentToolsDirOnMachine(mc.id) + "/controllerd agent --config " + AgentConfigPathOnMachine(mc.id)
	if len(spec.Controllers) > 0 {
		exec += " --controllers " + strings.Join(spec.Controllers, ",")
	}
	unitFile := fmt.Sprintf(`[Unit]
Description=API address updater of machine %d (controllerd agent)

[Service]
ExecStart=%s
Restart=always
RestartSec=1
TimeoutStopSec=10

[Install]
WantedBy=multi-user.target
`, mc.id, exec)
	if err := os.WriteFile(filepath.Join(mc.sd.unitDir(), AgentServiceName), []byte(unitFile), 0o644); err != nil {
		return mc.id, fmt.Errorf("cannot write %s on machine %d: %w", AgentServiceName, mc.id, err)
	}
	if resp := mc.sd.systemctl([]string{"enable", "--now", AgentServiceName}); resp.Code != 0 {
		return mc.id, fmt.Errorf("cannot start %s on machine %d: %s", AgentServiceName, mc.id, strings.TrimSpace(string(resp.Stderr)))
	}
	m.log.Info("agent machine added", "machine", mc.id, "addresses", mc.addresses(), "apiaddresses", seeds)
	return mc.id, nil
}

// agentConfig renders a minimal agent.conf in Juju's format 2.0 shape;
// apiaddresses and cacert (juju/juju agent/agent.go keys) matter to
// controllerd agent, which must keep the rest.
func agentConfig(id int, modelUUID string, addrs []string, caCert string) ([]byte, error) {
	doc := struct {
		Format       string   `yaml:"format"`
		Tag          string   `yaml:"tag"`
		DataDir      string   `yaml:"datadir"`
		LogDir       string   `yaml:"logdir"`
		Nonce        string   `yaml:"nonce"`
		Model        string   `yaml:"model"`
		APIAddresses []string `yaml:"apiaddresses"`
		CACert       string   `yaml:"cacert,omitempty"`
	}{"2.0", "machine-" + strconv.Itoa(id), "/var/lib/juju", "/var/log/juju", "machine-" + strconv.Itoa(id) + ":sim",
		"model-" + modelUUID, addrs, caCert}
	data, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("cannot render agent config: %w", err)
	}
	return append([]byte("# Agent config of a simulated machine (Juju agent.conf, format 2.0).\n"), data...), nil
}

func (m *Model) hostAgentConfigPath(id int) string {
	return filepath.Join(m.runDir, "machines", strconv.Itoa(id), "var-lib-juju",
		strings.TrimPrefix(AgentConfigPathOnMachine(id), "/var/lib/juju/"))
}

// AgentConfigPath is the host path of machine id's agent config file.
func (m *Model) AgentConfigPath(id int) string { return m.hostAgentConfigPath(id) }

// AgentAPIAddresses reads the apiaddresses list of machine id's agent
// config file.
func (m *Model) AgentAPIAddresses(id int) ([]string, error) {
	return ReadAgentAPIAddresses(m.hostAgentConfigPath(id))
}

// ReadAgentAPIAddresses reads the apiaddresses list of an agent config file.
func ReadAgentAPIAddresses(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read agent config: %w", err)
	}
	var doc struct {
		APIAddresses []string `yaml:"apiaddresses"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("cannot parse agent config %s: %w", path, err)
	}
	return doc.APIAddresses, nil
}

// ControllerAgentAddresses is what Juju would hand a new machine as its
// agents' API addresses: each live controller unit's addresses in the
// space of the `api` binding, or all of its addresses when it has none
// there, with the api-port option, in unit order.
func (m *Model) ControllerAgentAddresses() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	port := 17070
	switch v := m.effectiveConfigLocked()["api-port"].(type) {
	case int:
		port = v
	case float64:
		port = int(v)
	}
	space := m.spaceOfLocked("api")
	var names []string
	for name, u := range m.units {
		if u.life == lifeAlive && !u.machine.dead {
			names = append(names, name)
		}
	}
	var out []string
	for _, name := range sortedUnitNames(names) {
		mc := m.units[name].machine
		var in, all []string
		for _, n := range mc.nics {
			hp := netip.AddrPortFrom(n.addr, uint16(port)).String()
			all = append(all, hp)
			if n.subnet.Space == space {
				in = append(in, hp)
			}
		}
		if len(in) == 0 {
			in = all
		}
		out = append(out, in...)
	}
	return out
}

func (m *Model) machineByID(id int) (*machine, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mc := m.machines[id]
	if mc == nil {
		return nil, fmt.Errorf("machine %d not found", id)
	}
	return mc, nil
}

// ExecMachine runs a command on machine id (any machine, agent or unit's),
// like Exec.
func (m *Model) ExecMachine(ctx context.Context, id int, argv ...string) (stdout, stderr []byte, err error) {
	mc, err := m.machineByID(id)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot exec: %w", err)
	}
	return m.execOn(ctx, mc, argv)
}

// MachineDirOf is the host directory of machine id's files (see MachineDir).
func (m *Model) MachineDirOf(id int) string {
	return filepath.Join(m.runDir, "machines", strconv.Itoa(id))
}

// MachineServiceLog returns machine id's service log.
func (m *Model) MachineServiceLog(id int) string {
	data, _ := os.ReadFile(filepath.Join(m.MachineDirOf(id), "services.log"))
	return string(data)
}

// AgentMachines lists the agent machines' ids, in order.
func (m *Model) AgentMachines() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []int
	for id, mc := range m.machines {
		if mc.agent {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	return ids
}

// RemoveAgentMachine stops the machine's services, kills what is left and
// deletes its namespace (juju remove-machine).
func (m *Model) RemoveAgentMachine(id int) error {
	m.mu.Lock()
	mc := m.machines[id]
	if mc == nil || !mc.agent {
		m.mu.Unlock()
		return fmt.Errorf("cannot remove machine: no agent machine %d", id)
	}
	delete(m.machines, id)
	m.notifyLocked()
	m.mu.Unlock()
	mc.sd.shutdown(false)
	if err := killNetns(mc.netns); err != nil {
		return fmt.Errorf("cannot remove machine %d: %w", id, err)
	}
	return nil
}

// RestartAgent restarts `controllerd agent` on an agent machine
// (systemctl restart), so it starts over from its file's list.
func (m *Model) RestartAgent(id int) error {
	mc, err := m.machineByID(id)
	if err != nil {
		return fmt.Errorf("cannot restart agent: %w", err)
	}
	if resp := mc.sd.systemctl([]string{"restart", AgentServiceName}); resp.Code != 0 {
		return fmt.Errorf("cannot restart agent on machine %d: %s", id, strings.TrimSpace(string(resp.Stderr)))
	}
	return nil
}

// execOn runs argv inside machine mc, killing its process group when ctx
// ends.
func (m *Model) execOn(ctx context.Context, mc *machine, argv []string) ([]byte, []byte, error) {
	var so, se strings.Builder
	cmd := m.machineCommand(mc, argv, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}, "/")
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("cannot exec on machine %d: %w", mc.id, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
		if err == nil {
			err = ctx.Err()
		}
	}
	return []byte(so.String()), []byte(se.String()), err
}

// ControllerCASecretLabel is the label under which the controller
// application keeps its cluster CA in an application-owned secret (the
// charm's choice; here it plays the part of Juju's controller CA, which
// the provisioner writes into every agent.conf).
const ControllerCASecretLabel = "dqlite-controller-cluster-ca"

// ControllerCACert returns the controllers' CA certificate (PEM, the
// ca-cert key of the latest revision of that secret), "" while there is
// none.
func (m *Model) ControllerCACert() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.secrets.byID {
		if s.label == ControllerCASecretLabel && s.kind == ownerApplication {
			return s.revisions[len(s.revisions)-1]["ca-cert"]
		}
	}
	return ""
}
