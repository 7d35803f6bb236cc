package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// Issue 5's scenarios: the singular-controller lease and the API addresses
// on three real controllers and two agent machines.

func countBackupDirs(m *sim.Model, machine int) int {
	entries, _ := os.ReadDir(filepath.Join(m.MachineDirOf(machine), "var-lib-juju", "backups"))
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "backup-") {
			n++
		}
	}
	return n
}

func machineOfUnit(t *testing.T, m *sim.Model, unit string) int {
	t.Helper()
	u, ok := m.Status().Unit(unit)
	if !ok {
		t.Fatalf("unit %s not found", unit)
	}
	return u.Machine
}

// Three controllers, two agent machines: adding a controller and removing
// one are followed by every agent's agent.conf (apiaddresses).
func TestAgents_FollowControllerAddAndRemove(t *testing.T) {
	m := newControlPlaneModel(t)
	deployControllers(t, m, 3)
	agents := addAgents(t, m, 2)
	start := time.Now()
	f := waitAgentsFollow(t, m, agents, app+"/0", m.ControllerAgentAddresses(), start)
	t.Logf("agents started: %s", f)

	start = time.Now()
	added, err := m.AddUnit(1)
	if err != nil {
		t.Fatal(err)
	}
	want := m.ControllerAgentAddresses()
	f = waitAgentsFollow(t, m, agents, app+"/0", want, start)
	t.Logf("add-unit (%s): %s", added[0], f)
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)

	victim := app + "/1"
	start = time.Now()
	if err := m.RemoveUnit(victim, false); err != nil {
		t.Fatal(err)
	}
	want = m.ControllerAgentAddresses()
	f = waitAgentsFollow(t, m, agents, app+"/0", want, start)
	t.Logf("remove-unit %s: %s", victim, f)
	simtest.WaitIdle(t, m)
	for _, a := range want {
		if probe.UnitOfAddress(m, a) == victim {
			t.Fatalf("the removed controller's address %s is still expected", a)
		}
	}
	simtest.WaitCluster(t, m)
}

// leaseFailoverSetup deploys three controllers and waits for one lease
// holder and its first backup; it returns the model, every controller's
// machine, the holder's unit, the other units, the lease row as the
// database has it, and a monitor of the lease through the survivors.
func leaseFailoverSetup(t *testing.T) (m *sim.Model, machines []int, holder string, survivors []string, row leaseRow, lm *leaseMonitor) {
	t.Helper()
	m = simtest.NewModel(t, sim.Options{})
	deployControllers(t, m, 3)
	us := simtest.Units(m)
	for _, u := range us {
		machines = append(machines, machineOfUnit(t, m, u))
	}
	holder = waitOneHolder(t, m, us)
	waitFirstBackup(t, m, holder)
	survivors = others(us, holder)
	row, err := readLease(context.Background(), m, survivors[0])
	if err != nil {
		t.Fatal(err)
	}
	return m, machines, holder, survivors, row, monitorLease(m, survivors)
}

// kill -9 of the lease holder's machine: exactly one survivor takes the
// lease over, its tenure starts after the dead holder's last expiry, and
// the backup the dead holder took is not taken again.
func TestLease_HolderKilledExactlyOneSuccessor(t *testing.T) {
	m, machines, holder, survivors, row, lm := leaseFailoverSetup(t)
	defer lm.stop()

	v := simtest.WaitCluster(t, m)
	t.Logf("kill -9 of %s's machine (holder %s; Dqlite leader on %s)", holder, row.holder, simtest.DqliteLeaderUnit(t, m, v))
	killed := time.Now()
	if err := m.KillMachine(holder); err != nil {
		t.Fatal(err)
	}
	next := waitOneHolder(t, m, survivors)
	r, seen := lm.waitOther(t, row.holder)
	t.Logf("lease failover: %s → %s seen %.1f s after kill -9 (new tenure starts %s)",
		row.holder, r.holder, seen.Sub(killed).Seconds(), r.start.Format(dbTime))
	if unitOfHolder(r.holder) != next {
		t.Errorf("the database named %s first, the survivors agree on %s", r.holder, next)
	}
	stableHolder(t, m, survivors, next, 8)
	lm.stop()
	lm.checkNoOverlap(t)
	checkOneBackup(t, m, next, machines)
}

// A partitioned holder (its machine cut off every subnet, its processes
// alive): it stops holding before a survivor's tenure starts, exactly one
// survivor takes over, and when the partition heals it does not claim
// back.
func TestLease_HolderPartitionedExactlyOneSuccessor(t *testing.T) {
	m, machines, holder, survivors, row, lm := leaseFailoverSetup(t)
	defer lm.stop()

	// Watch the cut-off holder's own flag (its control socket is local,
	// so status answers through the partition).
	type sample struct {
		sent, back time.Time
		held       bool
	}
	var samples []sample
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for watchCtx.Err() == nil {
			sent := time.Now()
			s, err := probe.Status(watchCtx, m, holder)
			if err == nil {
				samples = append(samples, sample{sent: sent, back: time.Now(), held: s.HeldByMe()})
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	v := simtest.WaitCluster(t, m)
	t.Logf("partition of %s's machine (holder %s; Dqlite leader on %s)", holder, row.holder, simtest.DqliteLeaderUnit(t, m, v))
	cut := time.Now()
	if err := m.Partition(holder, true); err != nil {
		t.Fatal(err)
	}
	next := waitOneHolder(t, m, survivors)
	r, seen := lm.waitOther(t, row.holder)
	t.Logf("lease failover: %s → %s seen %.1f s after the partition (new tenure starts %s)",
		row.holder, r.holder, seen.Sub(cut).Seconds(), r.start.Format(dbTime))
	// Keep watching a little past the takeover, then judge.
	time.Sleep(2 * time.Second)
	stopWatch()
	<-watchDone
	var lastHeld, firstDropped *sample
	for i := range samples {
		s := &samples[i]
		if s.held {
			lastHeld = s
			firstDropped = nil
		} else if firstDropped == nil {
			firstDropped = s
		}
	}
	if firstDropped == nil {
		t.Fatalf("the partitioned holder %s never dropped its flag (%d samples)", holder, len(samples))
	}
	if lastHeld != nil {
		// Database time and the host's clock are the same clock here (one
		// kernel), so the flag's last sighting can be set against the new
		// tenure: only a sample sent after the new start proves overlap.
		t.Logf("%s last seen holding at %s (answer back %s), dropped by %s; new tenure starts %s",
			holder, lastHeld.sent.UTC().Format(dbTime), lastHeld.back.UTC().Format(dbTime),
			firstDropped.back.UTC().Format(dbTime), r.start.Format(dbTime))
		if !lastHeld.sent.Before(r.start) {
			t.Errorf("overlap: %s still held the lease at %s, after %s's tenure began at %s",
				holder, lastHeld.sent.UTC().Format(dbTime), r.holder, r.start.Format(dbTime))
		}
	}
	stableHolder(t, m, survivors, next, 5)

	t.Logf("healing the partition of %s", holder)
	if err := m.Partition(holder, false); err != nil {
		t.Fatal(err)
	}
	simtest.WaitCluster(t, m)
	stableHolder(t, m, simtest.Units(m), next, 8)
	lm.stop()
	lm.checkNoOverlap(t)
	checkOneBackup(t, m, next, machines)
}

// Agent machines on a management-only subnet: before the bind every
// controller gives agents all of its addresses (no address in the api
// binding's space: fallback); after juju bind dqlite-controller api=mgmt
// the agent list holds only mgmt addresses, the agents' files follow, and a
// restarted agent, starting from that file alone, connects and follows a
// new controller.
func TestAgents_MgmtOnlyKeepConnectingAfterBindAPI(t *testing.T) {
	m := newControlPlaneModel(t)
	deployControllers(t, m, 3)
	agents := addAgents(t, m, 2)
	before := m.ControllerAgentAddresses()
	f := waitAgentsFollow(t, m, agents, app+"/0", before, time.Now())
	t.Logf("fallback list (every address) reached the agents: %s", f)
	s, err := probe.Status(context.Background(), m, app+"/0")
	if err != nil {
		t.Fatal(err)
	}
	if s.APIAddresses == nil || len(s.APIAddresses.AgentFallback) != 3 {
		t.Errorf("before the bind every controller should be in agent-fallback: %+v (note %q)", s.APIAddresses, s.APINote)
	}

	start := time.Now()
	if err := m.Bind("api", "mgmt"); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	mgmt := m.ControllerAgentAddresses()
	if len(mgmt) != 3 {
		t.Fatalf("want one mgmt address per controller, got %v", mgmt)
	}
	f = waitAgentsFollow(t, m, agents, app+"/0", mgmt, start)
	t.Logf("bind api=mgmt: %s", f)
	// Every controller's watcher catches up with the database in its own
	// time (a poll every 0.5 s).
	for _, u := range simtest.Units(m) {
		err := probe.Eventually(simtest.CtxFor(t, time.Minute), 300*time.Millisecond, func() error {
			s, err := probe.Status(context.Background(), m, u)
			if err != nil {
				return err
			}
			switch {
			case s.APIAddresses == nil || !slices.Equal(sortedCopy(s.APIAddresses.Agents), sortedCopy(mgmt)):
				return fmt.Errorf("%s serves agents %+v, want only the mgmt addresses %v", u, s.APIAddresses, mgmt)
			case len(s.APIAddresses.AgentFallback) != 0:
				return fmt.Errorf("%s still reports agent-fallback %v after the bind", u, s.APIAddresses.AgentFallback)
			case len(s.APIAddresses.Clients) != 6:
				return fmt.Errorf("%s: the client list must stay unfiltered (6 addresses), got %v", u, s.APIAddresses.Clients)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}

	for _, id := range agents {
		if err := m.RestartAgent(id); err != nil {
			t.Fatal(err)
		}
	}
	start = time.Now()
	if _, err := m.AddUnit(1); err != nil {
		t.Fatal(err)
	}
	want := m.ControllerAgentAddresses()
	if len(want) != 4 {
		t.Fatalf("want one mgmt address per controller, got %v", want)
	}
	f = waitAgentsFollow(t, m, agents, app+"/0", want, start)
	t.Logf("add-unit after the bind, agents restarted: %s", f)
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
}

type clientResult struct {
	Controller string   `json:"controller"`
	Connected  string   `json:"connected"`
	TriedFirst string   `json:"tried-first"`
	LastGood   string   `json:"last-good"`
	Addresses  []string `json:"addresses"`
}

func runClient(t *testing.T, m *sim.Model, machine int, extra ...string) clientResult {
	t.Helper()
	// The client's CA certificate, as a user would save it next to the
	// store (the agent's comes from agent.conf).
	caHost := filepath.Join(filepath.Dir(m.AgentConfigPath(machine)), "controllers-ca.crt")
	if err := os.WriteFile(caHost, []byte(m.ControllerCACert()), 0o644); err != nil {
		t.Fatal(err)
	}
	caOnMachine := filepath.Join(filepath.Dir(sim.AgentConfigPathOnMachine(machine)), "controllers-ca.crt")
	argv := append([]string{sim.AgentToolsDirOnMachine(machine) + "/controllerd", "client",
		"--store", "/var/lib/juju/client/controllers.json", "--controller", "ctl", "--format", "json",
		"--ca-cert", caOnMachine}, extra...)
	var res clientResult
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		out, errOut, err := m.ExecMachine(context.Background(), machine, argv...)
		if err != nil {
			return &execError{err, string(errOut)}
		}
		return json.Unmarshal(out, &res)
	})
	if err != nil {
		t.Fatalf("controllerd client on machine %d: %v", machine, err)
	}
	t.Logf("client: connected %s, tried first %s, last good %s, %d addresses", res.Connected, res.TriedFirst, res.LastGood, len(res.Addresses))
	return res
}

type execError struct {
	err    error
	stderr string
}

func (e *execError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }

// A client (on a mgmt-only machine) whose last good controller is removed
// reconnects to another controller and puts that one first.
func TestClient_LastGoodRemovedReconnectsAndPutsGoodFirst(t *testing.T) {
	m := newControlPlaneModel(t)
	deployControllers(t, m, 3)
	machine, err := m.AddAgentMachine(sim.AgentMachineSpec{Subnets: []string{"mgmt"}, NoAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	victim := app + "/2"
	var seed string
	for _, a := range m.ControllerAgentAddresses() {
		if probe.UnitOfAddress(m, a) == victim && strings.HasPrefix(a, mgmtPrefix(t, m)) {
			seed = a
		}
	}
	if seed == "" {
		t.Fatalf("no mgmt address for %s", victim)
	}
	for _, u := range simtest.Units(m) {
		// The list comes from whichever controller answers.
		waitClientList(t, m, u, 6)
	}
	first := runClient(t, m, machine, "--addresses", seed)
	if first.Connected != seed || first.LastGood != seed {
		t.Fatalf("first connection: %+v, want %s", first, seed)
	}
	if len(first.Addresses) != 6 {
		t.Errorf("the store should hold the controllers' full client list (6 addresses), got %v", first.Addresses)
	}

	if err := m.RemoveUnit(victim, false); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)

	for _, u := range simtest.Units(m) {
		waitClientList(t, m, u, 4)
	}
	second := runClient(t, m, machine)
	if second.TriedFirst != seed {
		t.Errorf("tried %s first, want the last good %s", second.TriedFirst, seed)
	}
	if second.Connected == seed || probe.UnitOfAddress(m, second.Connected) == "" {
		t.Fatalf("connected to %q, want a live controller", second.Connected)
	}
	if second.LastGood != second.Connected {
		t.Errorf("last good %s, want the address that worked %s", second.LastGood, second.Connected)
	}
	if slices.Contains(second.Addresses, seed) {
		t.Errorf("the store still lists the removed controller's %s: %v", seed, second.Addresses)
	}
	third := runClient(t, m, machine)
	if third.TriedFirst != second.Connected || third.Connected != second.Connected {
		t.Errorf("third connection: %+v, want %s tried first and used", third, second.Connected)
	}
}

// waitClientList waits until a controller serves n client addresses.
func waitClientList(t *testing.T, m *sim.Model, unit string, n int) {
	t.Helper()
	err := probe.Eventually(simtest.CtxFor(t, time.Minute), 300*time.Millisecond, func() error {
		s, err := probe.Status(context.Background(), m, unit)
		if err != nil {
			return err
		}
		if s.APIAddresses == nil || len(s.APIAddresses.Clients) != n {
			return fmt.Errorf("%s serves clients %+v, want %d addresses", unit, s.APIAddresses, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// mgmtPrefix is the first three octets of the mgmt subnet ("10.x.y.").
func mgmtPrefix(t *testing.T, m *sim.Model) string {
	t.Helper()
	for _, mc := range m.Status().Machines {
		if mc.Agent && len(mc.Addresses) == 1 {
			a := mc.Addresses[0]
			return a[:strings.LastIndex(a, ".")+1]
		}
	}
	t.Fatal("no agent machine to learn the mgmt subnet from")
	return ""
}
