package sim

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func countHook(recs []HookRecord, hook string) int {
	n := 0
	for _, r := range recs {
		if r.Hook == hook && r.ExitCode == 0 {
			n++
		}
	}
	return n
}

// docs/juju.md#relation-data: relation data written by a failing hook is never committed; the
// unit stays in error until resolved, then the same hook runs again.
func TestFailedHook_NotCommittedAndRetriedOnResolve(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if err := m.SetConfig(map[string]string{"fail-hook": "config-changed"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := m.WaitFor(ctx, "both units in error", func(st Status) bool {
		for _, u := range st.Units {
			if u.Workload != "error" || u.Message != `hook failed: "config-changed"` {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitIdle(ctx); err == nil || !strings.Contains(err.Error(), "in error") {
		t.Fatalf("WaitIdle with units in error = %v, want an error naming them", err)
	}
	for u, bag := range m.RelationData("db-cluster") {
		if bag["must-not-commit"] != "" {
			t.Fatalf("%s: data written by a failed hook was committed: %v", u, bag)
		}
	}
	if err := m.SetConfig(map[string]string{"fail-hook": ""}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"toy/0", "toy/1"} {
		if err := m.Resolve(u); err != nil {
			t.Fatal(err)
		}
	}
	waitIdle(t, m)
	for _, u := range m.Status().Units {
		if u.Workload != "active" {
			t.Errorf("%s after resolve: %s %q", u.Name, u.Workload, u.Message)
		}
	}
}

// A hook SIGKILLed half-way (at its relation-set call) commits nothing,
// leaves the unit in error, and succeeds when retried (docs/juju.md#relation-data; issue 4).
func TestKilledHook_HalfWayThenRetried(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	m.KillHookAt("toy/1", "config-changed", "relation-set")
	if _, err := m.AddUnit(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.WaitFor(ctx, "toy/1 in error", func(st Status) bool {
		u, _ := st.Unit("toy/1")
		return u.Workload == "error"
	}); err != nil {
		t.Fatal(err)
	}
	if got := m.RelationData("db-cluster")["toy/1"]["db-bind-address"]; got != "" {
		t.Fatalf("killed hook's relation-set was committed: db-bind-address=%q", got)
	}
	if err := m.Resolve("toy/1"); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if got := m.RelationData("db-cluster")["toy/1"]["db-bind-address"]; got == "" {
		t.Fatalf("retried hook did not publish db-bind-address")
	}
	recs := m.History("toy/1")
	failed := 0
	for _, r := range recs {
		if r.ExitCode != 0 {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("toy/1 had %d failed hooks, want 1: %+v", failed, recs)
	}
}

// docs/juju.md#juju-bind-and-config-changed: juju bind runs config-changed on every unit and nothing else
// for the binding itself.
func TestBind_RunsConfigChangedOnEveryUnit(t *testing.T) {
	m := newToyModel(t, Options{Subnets: []SubnetSpec{{Name: "a", Space: "alpha"}, {Name: "b", Space: "beta"}}, DefaultSubnets: []string{"a", "b"}})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	before := map[string]int{}
	for _, u := range []string{"toy/0", "toy/1"} {
		before[u] = countHook(m.History(u), "config-changed")
	}
	if err := m.Bind("db-cluster", "gamma"); err == nil {
		t.Fatalf("bind to a space no machine has an address in succeeded; Juju refuses without --force")
	}
	if err := m.Bind("db-cluster", "beta"); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	for _, u := range []string{"toy/0", "toy/1"} {
		if got := countHook(m.History(u), "config-changed"); got != before[u]+1 {
			t.Errorf("%s ran config-changed %d times after bind, want once", u, got-before[u])
		}
	}
}

// docs/juju.md#juju-bind-and-config-changed (config changes): juju config runs config-changed on every unit.
func TestSetConfig_RunsConfigChanged(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if err := m.SetConfig(map[string]string{"db-port": "abc"}); err == nil {
		t.Fatalf("a non-int value for an int option was accepted")
	}
	if err := m.SetConfig(map[string]string{"db-port": "17777"}); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	for _, u := range []string{"toy/0", "toy/1"} {
		if got := countHook(m.History(u), "config-changed"); got != 2 {
			t.Errorf("%s ran config-changed %d times, want 2", u, got)
		}
	}
	r := call(t, m, "toy/1", &hookInfo{name: "config-changed"}, "config-get", "db-port", "--format=json")
	if string(r.Stdout) != "17777\n" {
		t.Errorf("config-get db-port = %q", r.Stdout)
	}
}

// docs/juju.md#leadership: when the leader's machine dies, another unit becomes
// leader after the lease expires and runs leader-elected.
func TestKillMachine_LeaderElectedOnNewLeader(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if err := m.KillMachine("toy/0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.WaitFor(ctx, "a new leader", func(st Status) bool { return st.Leader != "" && st.Leader != "toy/0" }); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	leader := m.Status().Leader
	if countHook(m.History(leader), "leader-elected") != 1 {
		t.Fatalf("new leader %s did not run leader-elected: %v", leader, hookNames(m.History(leader)))
	}
	u0, _ := m.Status().Unit("toy/0")
	if u0.Agent != "lost" {
		t.Errorf("dead machine's unit agent = %q, want lost", u0.Agent)
	}
	// Juju keeps a dead unit in the relation until it is removed with force.
	if err := m.RemoveUnit("toy/0", true); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	for _, u := range []string{"toy/1", "toy/2"} {
		found := false
		for _, r := range m.History(u) {
			found = found || (r.Hook == "db-cluster-relation-departed" && r.RemoteUnit == "toy/0")
		}
		if !found {
			t.Errorf("%s did not see toy/0 depart after remove-unit --force", u)
		}
	}
}

// The machines' systemctl supervises the charm's service inside the
// machine: start, Restart=always, SIGTERM on stop, output in services.log.
func TestSystemctl_SupervisesServiceInsideMachine(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := os.Lstat(filepath.Join(m.MachineDir("toy/0"), "etc-systemd-system", "multi-user.target.wants", "toy.service")); err != nil {
		t.Errorf("systemctl enable made no wants link in the machine's /etc/systemd/system: %v", err)
	}
	m.mu.Lock()
	mc := m.units["toy/0"].machine
	s := mc.sd.svc["toy.service"]
	m.mu.Unlock()
	mc.sd.mu.Lock()
	pid, state := s.pid, s.state
	mc.sd.mu.Unlock()
	if state != "active" || pid == 0 {
		t.Fatalf("toy.service state %q pid %d, want active", state, pid)
	}
	// It runs in the machine's network namespace, with the machine's
	// /var/lib/juju.
	link, _ := os.Readlink("/proc/" + itoa(pid) + "/ns/net")
	if want, _ := os.Readlink(filepath.Join(netnsDir, mc.netns)); link == "" || !strings.Contains(link, itoa64(mc.inode)) {
		t.Errorf("service netns %q, want inode %d (%s)", link, mc.inode, want)
	}
	// Restart=always: a killed service comes back.
	_ = exec.Command("kill", "-9", itoa(pid)).Run()
	if err := m.WaitFor(ctx, "toy restarted", func(Status) bool {
		mc.sd.mu.Lock()
		defer mc.sd.mu.Unlock()
		return s.state == "active" && s.pid != 0 && s.pid != pid
	}); err != nil {
		t.Fatal(err)
	}
	out, _, err := m.Exec(ctx, "toy/0", m.tools+"/systemctl", "is-active", "toy")
	if err != nil || string(out) != "active\n" {
		t.Fatalf("systemctl is-active on the machine = %q, %v", out, err)
	}
	if err := m.RemoveUnit("toy/0", false); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(m.MachineDir("toy/0"), "services.log")
	if err := m.WaitFor(ctx, "unit removed", func(st Status) bool { return len(st.Units) == 0 }); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(logPath)
	for _, want := range []string{"toy started", "toy got TERM", "Stopping toy.service (SIGTERM"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("services.log lacks %q:\n%s", want, data)
		}
	}
}

// Teardown leaves no namespace behind, and a new model sweeps away what a
// dead run left (issue 4: cleanup after an interrupted run).
func TestClose_LeavesNothingAndSweepsDeadRuns(t *testing.T) {
	requireRoot(t)
	stale := namePrefix + "0badc0de-m7"
	if err := ipCmd("netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	m := newToyModel(t, Options{})
	if _, err := os.Stat(filepath.Join(netnsDir, stale)); err == nil {
		_ = ipCmd("netns", "del", stale)
		t.Fatalf("New did not sweep %s left by a dead run", stale)
	}
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	id := m.RunID()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), id) {
			t.Errorf("namespace %s left after Close", e.Name())
		}
	}
	if _, err := os.Stat(m.RunDir()); err == nil {
		t.Errorf("run directory %s left after Close", m.RunDir())
	}
}

// docs/juju.md#relation-data: status-set applies at once, while the hook still runs, and is not
// rolled back.
func TestStatusSet_AppliesAtOnce(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	r := call(t, m, "toy/0", &hookInfo{name: "update-status"}, "status-set", "blocked", "waiting for a human")
	if r.Code != 0 {
		t.Fatalf("status-set: %d %s", r.Code, r.Stderr)
	}
	u, _ := m.Status().Unit("toy/0")
	if u.Workload != "blocked" || u.Message != "waiting for a human" {
		t.Fatalf("status after status-set = %s %q", u.Workload, u.Message)
	}
}

// docs/juju.md#leadership: removing the leader unit moves leadership; the new leader runs
// leader-elected, and the departing leader's own hooks end with stop, remove.
func TestRemoveUnit_LeaderLossElectsNewLeader(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if err := m.RemoveUnit("toy/0", false); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if l := m.Status().Leader; l != "toy/1" {
		t.Fatalf("leader = %q, want toy/1", l)
	}
	if countHook(m.History("toy/1"), "leader-elected") != 1 {
		t.Fatalf("toy/1 did not run leader-elected: %v", hookNames(m.History("toy/1")))
	}
	h := hookNames(m.History("toy/0"))
	if len(h) < 2 || h[len(h)-2] != "stop" || h[len(h)-1] != "remove" {
		t.Fatalf("removed leader's last hooks = %v", h)
	}
}

// Partition cuts a machine off the subnet and restores it; its addresses
// stay.
func TestPartition_CutsAndRestoresTheNetwork(t *testing.T) {
	m := newToyModel(t, Options{})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	peer := m.Status().Machines[1].Addresses[0]
	// A TCP connect to a closed port: refused at once when the peer is
	// reachable, no answer (timeout exits 124) when it is cut off.
	ping := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, errOut, err := m.Exec(ctx, "toy/0", "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+peer+"/9")
		if strings.Contains(string(errOut), "refused") {
			return nil
		}
		return fmt.Errorf("no answer from %s: %v %s", peer, err, errOut)
	}
	if err := ping(); err != nil {
		t.Fatalf("ping before the partition: %v", err)
	}
	if err := m.Partition("toy/1", true); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err == nil {
		t.Fatalf("ping across the partition succeeded")
	}
	if st := m.Status(); !st.Machines[1].Partitioned || st.Machines[1].Addresses[0] != peer {
		t.Fatalf("partitioned machine status %+v", st.Machines[1])
	}
	if err := m.Partition("toy/1", false); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Fatalf("ping after healing: %v", err)
	}
}

// Juju's automatic hook retries back off: the first retry after the
// minimum (5 s in Juju), each next one after twice the previous, ±3 %
// (internal/worker/uniter/uniter.go, juju/utils timer.go BackoffTimer;
// apiserver/facades/agent/retrystrategy: factor 2, at most 5 minutes). A
// fixed delay would retry a charm that keeps failing far more often than
// Juju does and hide a charm that only converges by hammering.
func TestFailedHook_RetriesBackOff(t *testing.T) {
	const first = 150 * time.Millisecond
	m := newToyModel(t, Options{AutoRetryHooks: first})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	if err := m.SetConfig(map[string]string{"fail-hook": "config-changed"}); err != nil {
		t.Fatal(err)
	}
	var runs []HookRecord
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := m.WaitFor(ctx, "five failed runs of config-changed", func(Status) bool {
		runs = runs[:0]
		for _, r := range m.History("toy/0") {
			if r.Hook == "config-changed" && r.ExitCode != 0 {
				runs = append(runs, r)
			}
		}
		return len(runs) >= 5
	})
	if err != nil {
		t.Fatal(err)
	}
	want := first
	for i := 1; i < 5; i++ {
		// Each gap is the back-off delay plus the hook's own run time,
		// so it is at least the delay (less the jitter).
		gap := runs[i].Started.Sub(runs[i-1].Started)
		if gap < want*97/100 {
			t.Errorf("retry %d came %s after the previous run, want at least %s (back-off doubling from %s)", i, gap, want*97/100, first)
		}
		want *= 2
	}
}

func TestNextRetryDelay(t *testing.T) {
	for _, tc := range []struct {
		prev time.Duration
		r    float64
		want time.Duration
	}{
		{0, 0.5, 5 * time.Second},                                    // first retry: the minimum
		{5 * time.Second, 0.5, 10 * time.Second},                     // doubled, no jitter at r=0.5
		{10 * time.Second, 0, 20*time.Second - 600*time.Millisecond}, // -3 %
		{4 * time.Minute, 0.5, maxRetryDelay},                        // capped at 5 minutes
	} {
		if got := nextRetryDelay(tc.prev, 5*time.Second, tc.r); got != tc.want {
			t.Errorf("nextRetryDelay(%s, 5s, %v) = %s, want %s", tc.prev, tc.r, got, tc.want)
		}
	}
}
