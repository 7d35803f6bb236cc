package sim

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
)

// SubnetSpec describes one simulated subnet: one bridge in the run's fabric
// namespace, with an IPv4 /24 or an IPv6 /64 chosen for this run.
type SubnetSpec struct {
	Name  string
	Space string
	IPv6  bool
}

// Options configure a Model.
type Options struct {
	// CharmDir is the unpacked charm (dispatch, metadata.yaml, config.yaml).
	CharmDir string
	// Logger receives the simulator's own log; nil discards it.
	Logger *slog.Logger
	// Subnets of the model; default one IPv4 subnet "net0" in space "alpha".
	Subnets []SubnetSpec
	// DefaultSubnets are the subnets a new machine gets a NIC in when no
	// MachineSpec is given; default the first subnet.
	DefaultSubnets []string
	// DefaultSpace is the application's default binding (Juju: alpha).
	DefaultSpace string
	// Bindings are the initial endpoint bindings (juju deploy --bind).
	Bindings map[string]string
	// Juju36Ingress makes network-get list every address of the bound
	// space in ingress-addresses, as Juju 3.6 does, instead of Juju 4's
	// best scope tier only (docs/juju.md#addresses-and-bindings).
	Juju36Ingress bool
	// Juju36 simulates a Juju 3.6 controller: network-get's unfiltered
	// ingress list (as Juju36Ingress), private-address in the unit's
	// relation data, JUJU_VERSION 3.6.x and 3.6's error texts.
	Juju36 bool
	// FirstUnitLeads gives leadership on deploy to the first unit of the
	// batch (deterministic hook-order tests). By default a random unit
	// leads, as in Juju, where whichever agent claims first wins.
	FirstUnitLeads bool
	// LeaseExpiry is the leadership lease: a leader whose agent is gone or
	// cut off keeps it for between half of it and all of it (Juju's agent
	// claims 60 s and renews when 30 s remain: internal/worker/leadership/
	// tracker.go), then another unit is elected. Default 3 s.
	LeaseExpiry time.Duration
	// AutoRetryHooks, when positive, retries a failed hook after this delay
	// and then with Juju's back-off (automatically-retry-hooks: doubling,
	// at most 5 minutes; Juju's first delay is 5 s); zero or negative
	// waits for Resolve.
	AutoRetryHooks time.Duration
	// UpdateStatusInterval is how often each started unit runs update-status
	// (Juju's update-status-hook-interval, default 5m); zero means 5m.
	UpdateStatusInterval time.Duration
	// HookTimeout kills a hook that runs longer (Juju has no such limit; it
	// keeps a wedged test from hanging). Default 10 minutes.
	HookTimeout time.Duration
	// TempDir is where the run directory is made; default os.TempDir().
	TempDir string
	// KeepRunDir keeps the run directory (logs, machine files) on Close.
	KeepRunDir bool
	// NoSignalHandler leaves SIGINT/SIGTERM alone; by default the first
	// such signal tears the model down and exits with status 130.
	NoSignalHandler bool
}

// JujuTimings gives opts Juju's own timings: update-status every 5 minutes
// (update-status-hook-interval), a one-minute leadership lease, and failed
// hooks retried after 5 s (automatically-retry-hooks). Scenarios under it
// show that nothing waits for update-status to converge.
func JujuTimings(opts Options) Options {
	opts.UpdateStatusInterval = 5 * time.Minute
	opts.LeaseExpiry = time.Minute
	opts.AutoRetryHooks = 5 * time.Second
	return opts
}

// leaseLeft is how long a lost leader's lease still runs: between half the
// lease and all of it, depending on when the agent last renewed.
func (m *Model) leaseLeft() time.Duration {
	half := m.opts.LeaseExpiry / 2
	return half + mathrand.N(half+1)
}

// MachineSpec says which subnets a new machine has a NIC in (one NIC and one
// address per subnet, in the given order).
type MachineSpec struct {
	Subnets []string
}

type subnet struct {
	SubnetSpec
	prefix netip.Prefix
	bridge string
	next   int
}

type nic struct {
	name   string // inside the machine
	fabric string // the veth end in the fabric namespace
	mac    string
	subnet *subnet
	addr   netip.Addr
}

type machine struct {
	id          int
	netns       string
	inode       uint64
	dir         string
	nics        []*nic
	dead        bool
	partitioned bool
	agent       bool // an agent machine: no unit, runs controllerd agent
	units       []*unit
	sd          *systemd
}

type charmMeta struct {
	Name  string                    `yaml:"name"`
	Peers map[string]map[string]any `yaml:"peers"`
	// Requires and Provides are read only to know valid endpoint names.
	Requires map[string]map[string]any `yaml:"requires"`
	Provides map[string]map[string]any `yaml:"provides"`
	// ExtraBindings are endpoints with no relation, bindable to a space.
	ExtraBindings map[string]any `yaml:"extra-bindings"`
}

type configOption struct {
	Type    string `yaml:"type"`
	Default any    `yaml:"default"`
}

// Model is one simulated Juju model holding one application of the charm.
type Model struct {
	opts   Options
	log    *slog.Logger
	runID  string
	runDir string
	tools  string
	sock   string
	fabric string
	exe    string
	uuid   string

	listener  net.Listener
	stopSig   func()
	closing   chan struct{}
	closeDone chan struct{}
	wg        sync.WaitGroup

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every state change
	app     string
	meta    charmMeta
	options map[string]configOption
	// charmSrc is the charm units get (juju deploy, then juju refresh);
	// charmRev counts refreshes.
	charmSrc    string
	charmRev    int
	config      map[string]any
	bindings    map[string]string
	subnets     []*subnet
	machines    map[int]*machine
	nextMachine int
	units       map[string]*unit
	nextUnit    int
	leader      string
	electing    bool
	// appStatus is the application status the leader set with
	// status-set --application: status, message.
	appStatus [2]string
	relations []*relation
	contexts  map[string]*hookContext
	ctxSeq    int
	faults    []*hookFault
	acts      actionState // actions.go
	closed    bool
	secrets   secretState // secrets.go
	// firewall is the rule set last applied in the fabric (ports.go), and
	// firewallErr why the last update failed.
	firewall    string
	firewallErr error
}

// New creates the run's fabric namespace and subnets. Close tears everything
// down. It needs root.
func New(opts Options) (*Model, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("cannot create a simulated model: network namespaces need root")
	}
	if opts.CharmDir == "" {
		return nil, errors.New("cannot create a simulated model: no charm directory given")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(opts.Subnets) == 0 {
		opts.Subnets = []SubnetSpec{{Name: "net0", Space: "alpha"}}
	}
	if len(opts.DefaultSubnets) == 0 {
		opts.DefaultSubnets = []string{opts.Subnets[0].Name}
	}
	if opts.DefaultSpace == "" {
		opts.DefaultSpace = "alpha"
	}
	if opts.Juju36 {
		opts.Juju36Ingress = true
	}
	if opts.LeaseExpiry == 0 {
		opts.LeaseExpiry = 3 * time.Second
	}
	if opts.UpdateStatusInterval == 0 {
		opts.UpdateStatusInterval = 5 * time.Minute
	}
	if opts.HookTimeout == 0 {
		opts.HookTimeout = 10 * time.Minute
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	for _, r := range sweepStale(opts.TempDir) {
		opts.Logger.Info("removed leftover of a dead simulator run", "resource", r)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find the simulator executable: %w", err)
	}
	m := &Model{
		opts:      opts,
		log:       opts.Logger,
		exe:       exe,
		closing:   make(chan struct{}),
		closeDone: make(chan struct{}),
		changed:   make(chan struct{}),
		config:    map[string]any{},
		bindings:  map[string]string{},
		machines:  map[int]*machine{},
		units:     map[string]*unit{},
		contexts:  map[string]*hookContext{},
	}
	if err := m.loadCharm(); err != nil {
		return nil, err
	}
	for k, v := range opts.Bindings {
		m.bindings[k] = v
	}
	if m.runID, err = newRunID(); err != nil {
		return nil, err
	}
	m.uuid = fmt.Sprintf("%s-0000-4000-8000-%012d", m.runID, 0)
	m.runDir = filepath.Join(opts.TempDir, namePrefix+m.runID)
	if err := registerRun(m.runID, nil); err != nil {
		return nil, err
	}
	if err := m.setUp(); err != nil {
		m.Close()
		return nil, err
	}
	if !opts.NoSignalHandler {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		done := make(chan struct{})
		m.stopSig = func() { signal.Stop(ch); close(done) }
		go func() {
			select {
			case s := <-ch:
				m.log.Warn("signal received: tearing the model down", "signal", s)
				m.Close()
				os.Exit(130)
			case <-done:
			}
		}()
	}
	return m, nil
}

func (m *Model) loadCharm() error {
	meta, options, err := readCharm(m.opts.CharmDir)
	if err != nil {
		return err
	}
	m.meta, m.options, m.app, m.charmSrc = meta, options, meta.Name, m.opts.CharmDir
	return nil
}

// readCharm reads an unpacked charm's metadata and config options.
func readCharm(dir string) (charmMeta, map[string]configOption, error) {
	var meta charmMeta
	data, err := os.ReadFile(filepath.Join(dir, "metadata.yaml"))
	if err != nil {
		return meta, nil, fmt.Errorf("cannot read charm metadata (is the charm built? run make charm): %w", err)
	}
	if err := yaml.Unmarshal(data, &meta); err != nil {
		return meta, nil, fmt.Errorf("cannot parse charm metadata: %w", err)
	}
	if meta.Name == "" {
		return meta, nil, errors.New("cannot load charm: metadata.yaml has no name")
	}
	options := map[string]configOption{}
	if data, err := os.ReadFile(filepath.Join(dir, "config.yaml")); err == nil {
		var cfg struct {
			Options map[string]configOption `yaml:"options"`
		}
		if err := yaml.Unmarshal(data, &cfg); err != nil {
			return meta, nil, fmt.Errorf("cannot parse charm config.yaml: %w", err)
		}
		options = cfg.Options
	}
	if st, err := os.Stat(filepath.Join(dir, "dispatch")); err != nil || st.Mode()&0o111 == 0 {
		return meta, nil, fmt.Errorf("cannot load charm: %s has no executable dispatch", dir)
	}
	return meta, options, nil
}

func (m *Model) setUp() error {
	for _, d := range []string{m.runDir, filepath.Join(m.runDir, "tools"), filepath.Join(m.runDir, "machines")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cannot create run directory: %w", err)
		}
	}
	// The bind mounts need their mount points to exist on the host.
	for _, d := range []string{"/var/lib/juju", "/etc/systemd/system"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cannot create mount point %s: %w", d, err)
		}
	}
	m.tools = filepath.Join(m.runDir, "tools")
	m.sock = filepath.Join(m.runDir, "agent.sock")
	for _, name := range append(sortedKeys(hookTools), toolSystemctl) {
		// GORACE: a race-enabled simulator binary would otherwise sleep a
		// second at every tool's exit.
		script := fmt.Sprintf("#!/bin/sh\nGORACE=atexit_sleep_ms=0 %s=%s %s=%s exec %s \"$@\"\n", envTool, name, envSocket,
			shellQuote(m.sock), shellQuote(m.exe))
		if err := os.WriteFile(filepath.Join(m.tools, name), []byte(script), 0o755); err != nil {
			return fmt.Errorf("cannot write hook tool %s: %w", name, err)
		}
	}
	l, err := net.Listen("unix", m.sock)
	if err != nil {
		return fmt.Errorf("cannot listen on the agent socket: %w", err)
	}
	m.listener = l
	m.wg.Add(1)
	go m.serve()

	m.fabric = namePrefix + m.runID + "-fab"
	if err := ipCmd("netns", "add", m.fabric); err != nil {
		return err
	}
	used := usedSubnets()
	var prefixes []string
	seed, _ := strconv.ParseUint(m.runID, 16, 32)
	for i, spec := range m.opts.Subnets {
		s := &subnet{SubnetSpec: spec, bridge: fmt.Sprintf("br%d", i), next: 10}
		var p netip.Prefix
		for try := 0; ; try++ {
			if try > 1000 {
				return fmt.Errorf("cannot find a free prefix for subnet %s", spec.Name)
			}
			v := uint32(seed) + uint32(i)*7919 + uint32(try)*104729
			if spec.IPv6 {
				p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x5e, byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v), 0, byte(i)}), 64)
			} else {
				b := uint16(v % 65000)
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(64 + (b>>8)%128), byte(b), 0}), 24)
			}
			if !overlapsAny(p, used) {
				break
			}
		}
		used = append(used, p)
		s.prefix = p
		prefixes = append(prefixes, p.String())
		if err := ipCmd("-n", m.fabric, "link", "add", s.bridge, "type", "bridge"); err != nil {
			return err
		}
		if err := ipCmd("-n", m.fabric, "link", "set", s.bridge, "up"); err != nil {
			return err
		}
		m.subnets = append(m.subnets, s)
	}
	if err := registerRun(m.runID, prefixes); err != nil {
		return err
	}
	// The fabric's firewall (ports.go) must work, or the model would be
	// kinder than a cloud: agents could reach ports no unit opened.
	m.updateFirewallLocked()
	if m.firewallErr != nil {
		return fmt.Errorf("cannot set up the fabric's firewall (nftables; scripts/setup.sh installs it): %w", m.firewallErr)
	}
	m.log.Info("model created", "run", m.runID, "dir", m.runDir, "subnets", prefixes)
	return nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// RunDir is the run's directory (machine files, logs).
func (m *Model) RunDir() string { return m.runDir }

// RunID is the unique part of every namespace name of this run.
func (m *Model) RunID() string { return m.runID }

// App is the application's name (the charm's name).
func (m *Model) App() string { return m.app }

// Close stops every hook and service, deletes every namespace of the run
// and removes the run directory unless KeepRunDir is set. It is safe to call
// more than once and from several goroutines: every call returns only once
// the teardown is complete (a signal handler and the main goroutine may race
// to it, and the process must not exit half-way).
func (m *Model) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		<-m.closeDone
		return nil
	}
	defer close(m.closeDone)
	m.closed = true
	close(m.closing)
	machines := make([]*machine, 0, len(m.machines))
	for _, mc := range m.machines {
		machines = append(machines, mc)
	}
	m.notifyLocked()
	m.mu.Unlock()
	if m.stopSig != nil {
		m.stopSig()
	}
	var errs []error
	for _, mc := range machines {
		if mc.sd != nil {
			mc.sd.shutdown(false)
		}
		if mc.netns != "" {
			if err := killNetns(mc.netns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if m.fabric != "" {
		if err := killNetns(m.fabric); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	if m.listener != nil {
		m.listener.Close()
	}
	m.wg.Wait()
	if !m.opts.KeepRunDir {
		_ = os.RemoveAll(m.runDir)
	}
	_ = os.Remove(filepath.Join(registryDir, m.runID))
	m.log.Info("model torn down", "run", m.runID)
	return errors.Join(errs...)
}

// notifyLocked wakes everything waiting for a state change.
func (m *Model) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *Model) subnetByName(name string) *subnet {
	for _, s := range m.subnets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// addMachine creates a machine namespace with one NIC per subnet.
func (m *Model) addMachineLocked(spec MachineSpec) (*machine, error) {
	names := spec.Subnets
	if len(names) == 0 {
		names = m.opts.DefaultSubnets
	}
	id := m.nextMachine
	m.nextMachine++
	mc := &machine{id: id, netns: fmt.Sprintf("%s%s-m%d", namePrefix, m.runID, id)}
	mc.dir = filepath.Join(m.runDir, "machines", strconv.Itoa(id))
	for _, d := range []string{"var-lib-juju", "etc-systemd-system"} {
		if err := os.MkdirAll(filepath.Join(mc.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("cannot create machine directory: %w", err)
		}
	}
	if err := ipCmd("netns", "add", mc.netns); err != nil {
		return nil, err
	}
	m.machines[id] = mc
	if err := ipCmd("-n", mc.netns, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	for i, name := range names {
		s := m.subnetByName(name)
		if s == nil {
			return nil, fmt.Errorf("cannot add machine: no subnet %q", name)
		}
		n := &nic{name: fmt.Sprintf("eth%d", i), fabric: fmt.Sprintf("m%dn%d", id, i), subnet: s}
		rid, _ := strconv.ParseUint(m.runID, 16, 32)
		n.mac = fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", byte(rid>>8), byte(rid), byte(id>>8), byte(id), i)
		host := s.next
		s.next++
		a := s.prefix.Addr().As16()
		if s.IPv6 {
			a[14], a[15] = byte(host>>8), byte(host)
			n.addr = netip.AddrFrom16(a)
		} else {
			n.addr = netip.AddrFrom4([4]byte{a[12], a[13], a[14], byte(host)})
		}
		steps := [][]string{
			{"-n", m.fabric, "link", "add", n.fabric, "type", "veth", "peer", "name", n.name, "address", n.mac, "netns", mc.netns},
			{"-n", m.fabric, "link", "set", n.fabric, "master", s.bridge},
			{"-n", m.fabric, "link", "set", n.fabric, "up"},
		}
		addr := []string{"-n", mc.netns, "addr", "add", netip.PrefixFrom(n.addr, s.prefix.Bits()).String(), "dev", n.name}
		if s.IPv6 {
			addr = append(addr, "nodad")
		}
		steps = append(steps, addr, []string{"-n", mc.netns, "link", "set", n.name, "up"})
		for _, st := range steps {
			if err := ipCmd(st...); err != nil {
				return nil, err
			}
		}
		mc.nics = append(mc.nics, n)
	}
	ino, err := netnsInode(mc.netns)
	if err != nil {
		return nil, err
	}
	mc.inode = ino
	mc.sd = newSystemd(m, mc)
	m.log.Info("machine added", "machine", id, "netns", mc.netns, "addresses", mc.addresses())
	return mc, nil
}

func (mc *machine) addresses() []string {
	var out []string
	for _, n := range mc.nics {
		out = append(out, n.addr.String())
	}
	return out
}

func (m *Model) machineByInode(ino uint64) *machine {
	for _, mc := range m.machines {
		if mc.inode == ino {
			return mc
		}
	}
	return nil
}

// binds are the per-machine directories mounted over production paths.
func (mc *machine) binds() []bindMount {
	return []bindMount{
		{Source: filepath.Join(mc.dir, "var-lib-juju"), Target: "/var/lib/juju"},
		{Source: filepath.Join(mc.dir, "etc-systemd-system"), Target: "/etc/systemd/system"},
	}
}

// CharmDirOnMachine is JUJU_CHARM_DIR of a unit, as seen on its machine.
func (m *Model) CharmDirOnMachine(unitName string) string {
	return "/var/lib/juju/agents/unit-" + strings.ReplaceAll(unitName, "/", "-") + "/charm"
}

// MachineDir is the host directory holding a unit's machine files:
// var-lib-juju/ (its /var/lib/juju), etc-systemd-system/, services.log and
// the unit's hook log unit-<app>-<n>.log.
func (m *Model) MachineDir(unitName string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u := m.units[unitName]; u != nil {
		return u.machine.dir
	}
	return ""
}

// ToolsDir is the directory of the hook tools and systemctl (on every
// hook's PATH); Exec callers can run <ToolsDir>/systemctl on a machine.
func (m *Model) ToolsDir() string { return m.tools }
