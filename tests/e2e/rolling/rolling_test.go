// Package rolling_test runs the charm's rolling restarts on the simulator:
// whatever needs controllerd restarted (juju refresh with a new binary, a
// db-port change) restarts one unit at a time through the restart lock in
// the db-cluster relation, while a writer runs.
package rolling_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
	"github.com/juju/dqlite-controller/workload/daemon/agentsocket"
)

// writeStall bounds the writer's longest time without an acknowledged
// write during a roll. It is not the test of "no write fails for longer
// than one election": that is structural (checkProblems: a write fails only
// through the node that is restarting, refused by it, or is unknown while a
// leader hands over; checkRoll: never two nodes down at once). This bound
// only catches a cluster that stalls while it still answers. The gap
// itself is a figure in the log: with an election timeout of 300-600 ms
// (README, "Tuning") and a leader that hands over on SIGTERM, it is a few
// hundred milliseconds on an idle machine, but each write is a
// `controllerd sql` process started in the machine's namespaces, and on a
// loaded 2-core machine one roll showed 4.4 s with every write accounted
// for, so a bound near one election would fail on load alone.
const writeStall = 10 * time.Second

// sample is one look at every unit's controllerd: which nodes answered as
// running members, and the Dqlite leader each named, between start and end.
type sample struct {
	start, end time.Time
	running    map[string]bool
	leaders    map[string]string // unit -> leader address ("": none)
}

// sampler looks at every unit's controllerd status, all units at once,
// again and again until stopped.
type sampler struct {
	m       *sim.Model
	units   []string
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	samples []sample
}

func startSampler(t *testing.T, m *sim.Model, units []string) *sampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sampler{m: m, units: units, cancel: cancel, done: make(chan struct{})}
	go s.run(ctx)
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *sampler) run(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		smp := sample{start: time.Now(), running: map[string]bool{}, leaders: map[string]string{}}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, u := range s.units {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				st, err := probe.Status(cctx, s.m, u)
				mu.Lock()
				// As the charm's restart lock sees it (charm/restart.go
				// servingMember): a member with a role that sees a leader,
				// running or moving (serving at its old address).
				smp.running[u] = err == nil && st.Member && st.Role != "" && st.LeaderAddress() != "" &&
					(st.State == "running" || st.State == "moving")
				if err == nil {
					smp.leaders[u] = st.LeaderAddress()
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		smp.end = time.Now()
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.samples = append(s.samples, smp)
		s.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *sampler) stop() []sample {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample(nil), s.samples...)
}

// restart is one stop and start of a unit's controllerd, from its
// machine's service log.
type restart struct {
	unit          string
	stop, started time.Time
	// back is the end of the first sample after started in which the
	// node answered as a running member (zero: never seen).
	back time.Time
}

var serviceLine = regexp.MustCompile(`^(\d\d:\d\d:\d\d\.\d\d\d) systemd: (Stopping controllerd\.service|Started controllerd\.service)`)

// restartsSince reads a unit's service log for the stops and starts of
// controllerd after since.
func restartsSince(t *testing.T, m *sim.Model, unit string, since time.Time) (stops, starts []time.Time) {
	t.Helper()
	for _, line := range strings.Split(m.ServiceLog(unit), "\n") {
		g := serviceLine.FindStringSubmatch(line)
		if g == nil {
			continue
		}
		at := logTime(t, g[1], since)
		if at.Before(since) {
			continue
		}
		if strings.HasPrefix(g[2], "Stopping") {
			stops = append(stops, at)
		} else {
			starts = append(starts, at)
		}
	}
	return stops, starts
}

// logTime turns a log's UTC time of day into a time near ref.
func logTime(t *testing.T, hms string, ref time.Time) time.Time {
	t.Helper()
	tod, err := time.Parse("15:04:05.000", hms)
	if err != nil {
		t.Fatalf("bad log time %q: %v", hms, err)
	}
	ref = ref.UTC()
	at := time.Date(ref.Year(), ref.Month(), ref.Day(), tod.Hour(), tod.Minute(), tod.Second(), tod.Nanosecond(), time.UTC)
	switch {
	case at.Sub(ref) > 12*time.Hour:
		at = at.AddDate(0, 0, -1)
	case ref.Sub(at) > 12*time.Hour:
		at = at.AddDate(0, 0, 1)
	}
	return at
}

// waitRolled waits until every unit's controllerd has been stopped and
// started since since, the restart lock is free, nobody asks for a
// restart and every unit is active.
func waitRolled(t *testing.T, m *sim.Model, units []string, since time.Time) {
	t.Helper()
	err := probe.Eventually(simtest.CtxFor(t, 4*time.Minute), time.Second, func() error {
		for _, u := range units {
			if stops, starts := restartsSince(t, m, u, since); len(stops) == 0 || len(starts) == 0 {
				return fmt.Errorf("%s not restarted yet", u)
			}
		}
		data := m.RelationData("db-cluster")
		if g := data[m.App()]["restart-granted"]; g != "" {
			return fmt.Errorf("restart lock held by %s", g)
		}
		for _, u := range units {
			if r := data[u]["restart-request"]; r != "" {
				return fmt.Errorf("%s still asks for a restart (%s)", u, r)
			}
		}
		for _, u := range m.Status().Units {
			if u.Workload != "active" {
				return fmt.Errorf("%s is %s: %s", u.Name, u.Workload, u.Message)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the roll never finished: %v", err)
	}
}

// checkRoll asserts that every unit restarted exactly once and that no
// unit stopped before the one restarted before it was seen back as a
// running member, and returns the restarts in order.
func checkRoll(t *testing.T, m *sim.Model, units []string, since time.Time, samples []sample) []restart {
	t.Helper()
	var rs []restart
	for _, u := range units {
		stops, starts := restartsSince(t, m, u, since)
		if len(stops) != 1 || len(starts) != 1 {
			t.Errorf("%s: controllerd stopped %d and started %d times during the roll, want once each", u, len(stops), len(starts))
			continue
		}
		r := restart{unit: u, stop: stops[0], started: starts[0]}
		for _, s := range samples {
			if !s.start.Before(r.started) && s.running[u] {
				r.back = s.end
				break
			}
		}
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].stop.Before(rs[j].stop) })
	for i, r := range rs {
		t.Logf("%s: stopped %s, started %s (+%s), seen back as a running member by %s (+%s)",
			r.unit, r.stop.Format("15:04:05.000"), r.started.Format("15:04:05.000"), r.started.Sub(r.stop).Round(time.Millisecond),
			r.back.Format("15:04:05.000"), r.back.Sub(r.stop).Round(time.Millisecond))
		if r.back.IsZero() {
			t.Errorf("%s was never seen back as a running member", r.unit)
			continue
		}
		if i+1 < len(rs) {
			next := rs[i+1]
			if next.stop.Before(r.started) {
				t.Errorf("%s stopped at %s while %s was down (stopped %s, started %s): two nodes down at once",
					next.unit, next.stop.Format("15:04:05.000"), r.unit, r.stop.Format("15:04:05.000"), r.started.Format("15:04:05.000"))
			} else if next.stop.Before(r.back) {
				t.Errorf("%s stopped at %s before %s (restarted at %s) was seen back as a running member (%s): two nodes down at once",
					next.unit, next.stop.Format("15:04:05.000"), r.unit, r.started.Format("15:04:05.000"), r.back.Format("15:04:05.000"))
			}
		}
	}
	// Sample by sample: at most one node was not a running member while
	// inside its restart (from its stop until it was seen back).
	for _, s := range samples {
		var down []string
		for _, r := range rs {
			if !s.start.Before(r.stop) && (r.back.IsZero() || s.end.Before(r.back)) && !s.running[r.unit] {
				down = append(down, r.unit)
			}
		}
		if len(down) > 1 {
			t.Errorf("sample %s-%s: %v down at once", s.start.Format("15:04:05.000"), s.end.Format("15:04:05.000"), down)
		}
	}
	return rs
}

// checkProblems asserts that every write that was not acknowledged went
// through a unit while that unit's node was restarting (from its stop
// until it was seen back), and that those which failed (exit 1: certainly
// not applied, which Writer.Check confirms) were refusals by that node
// ("the controller database is not available", "controllerd is not
// running"), never a failure of the cluster: a client of the node that
// restarts is refused for the moment its node is down, as any client of a
// stopped server is; the writes through the other nodes carry on. An
// unknown outcome is allowed through any node while some node restarts
// (a commit in flight when its leader stepped down), and for the insert
// Stop cut short. moveStates
// are the node states in which a node's refusal is allowed at any time
// (a db-port change: after the roll, each node moves to the new port,
// removed and rejoining one at a time).
//
// An unknown outcome is also allowed through any node while the Dqlite
// leader changed (the samples around it name more than one leader): after
// a db-port change the roll is over before the nodes move, and a moved
// leader hands leadership over (workload/daemon/node stepAside) so that
// the next one moves it, with the same effect on a commit in flight as a
// leader stepping down on SIGTERM. This hides no lost write: Writer.Check
// still finds every acknowledged insert exactly once and no failed one,
// and a failure (exit 1) is never excused by a leader change.
func checkProblems(t *testing.T, problems []simtest.WriteProblem, rs []restart, samples []sample, moveStates ...string) {
	t.Helper()
	window := map[string]restart{}
	for _, r := range rs {
		window[r.unit] = r
	}
	const slack = 500 * time.Millisecond // the sampler sees "back" late
	refused, unknown, moving, handedOver := 0, 0, 0, 0
	for _, p := range problems {
		if p.Unknown && (strings.Contains(p.Err, "signal: killed") || strings.Contains(p.Err, "context canceled")) {
			continue // cut short by Stop
		}
		r, ok := window[p.Unit]
		inside := ok && !p.End.Before(r.stop) && !p.Began.After(r.back.Add(slack))
		if p.Unknown && !inside {
			// A commit whose leader stepped down on SIGTERM: unknown
			// through any node, while some node restarts.
			for _, o := range rs {
				if !p.End.Before(o.stop) && !p.Began.After(o.back.Add(slack)) {
					inside, r = true, o
				}
			}
		}
		if !inside && !p.Unknown && refusedWhile(p.Err, moveStates) {
			moving++
			continue
		}
		if !inside && p.Unknown {
			if from, to, ok := leaderChanged(samples, p.Began.Add(-slack), p.End.Add(slack)); ok {
				t.Logf("insert %d through %s (%s-%s): outcome unknown while the Dqlite leader changed from %s to %s (%q)",
					p.ID, p.Unit, p.Began.Format("15:04:05.000"), p.End.Format("15:04:05.000"), from, to, p.Err)
				handedOver++
				continue
			}
		}
		if !inside {
			t.Errorf("insert %d through %s (%s-%s) got %q outside that node's restart (stopped %s, back %s)",
				p.ID, p.Unit, p.Began.Format("15:04:05.000"), p.End.Format("15:04:05.000"), p.Err,
				r.stop.Format("15:04:05.000"), r.back.Format("15:04:05.000"))
			continue
		}
		if p.Unknown {
			unknown++
			continue
		}
		if !strings.Contains(p.Err, "the controller database is not available") && !strings.Contains(p.Err, "controllerd is not running") {
			t.Errorf("insert %d through the restarting %s failed with %q, not a refusal by the node", p.ID, p.Unit, p.Err)
			continue
		}
		refused++
	}
	t.Logf("writes through a node while it restarted: %d refused by it (not applied), %d unknown; refused by a moving node: %d; unknown while the leader changed: %d", refused, unknown, moving, handedOver)
}

// leaderChanged reports whether the samples that overlap [from, to], with
// the last one before it, name more than one Dqlite leader, and which.
func leaderChanged(samples []sample, from, to time.Time) (string, string, bool) {
	first := ""
	for i, s := range samples {
		next := i+1 < len(samples) && !samples[i+1].start.After(from)
		if next || s.start.After(to) {
			continue
		}
		for _, l := range s.leaders {
			switch {
			case l == "":
			case first == "":
				first = l
			case l != first:
				return first, l, true
			}
		}
	}
	return "", "", false
}

// refusedWhile reports whether err is a node's refusal in one of states.
func refusedWhile(err string, states []string) bool {
	for _, s := range states {
		if strings.Contains(err, "the controller database is not available: this node is "+s) {
			return true
		}
	}
	return false
}

// changedCharm is a copy of the built charm whose controllerd differs from
// the deployed one by a trailing marker (an ELF binary ignores bytes after
// its last section), as a new release's binary would.
func changedCharm(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "charm")
	if out, err := exec.Command("cp", "-a", simtest.CharmDir(t), dst).CombinedOutput(); err != nil {
		t.Fatalf("cannot copy the charm: %v: %s", err, out)
	}
	f, err := os.OpenFile(filepath.Join(dst, "controllerd"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\nrolling-restart test marker " + time.Now().String() + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

func deployThree(t *testing.T) (*sim.Model, []string) {
	t.Helper()
	m := simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	simtest.WaitActive(t, m)
	return m, simtest.Units(m)
}

// roll runs change (a refresh, a config change) with a writer and a
// sampler running, waits for the roll to finish and checks it.
func roll(t *testing.T, m *sim.Model, us []string, table string, change func(), moveStates ...string) {
	t.Helper()
	w := simtest.StartWriter(t, m, table, us)
	smp := startSampler(t, m, us)
	time.Sleep(time.Second) // acknowledged writes before the change
	since := time.Now()
	change()
	waitRolled(t, m, us, since)
	w.Stop() // every write inside the samples (checkProblems)
	samples := smp.stop()
	rs := checkRoll(t, m, us, since, samples)
	rep := w.Check(t, us[0])
	t.Logf("roll of %d units took %s; %d status samples; writer: %s (last error: %s)",
		len(rs), time.Since(since).Round(100*time.Millisecond), len(samples), rep, rep.LastError)
	if rep.Acked == 0 {
		t.Fatal("no write was acknowledged")
	}
	checkProblems(t, w.Problems(), rs, samples, moveStates...)
	if rep.LongestOutage > writeStall {
		t.Errorf("longest time without an acknowledged write %s (ended %s): the cluster stalled (over %s)",
			rep.LongestOutage.Round(10*time.Millisecond), rep.OutageEnded.Format("15:04:05.000"), writeStall)
	}
	v := simtest.WaitCluster(t, m)
	leader := simtest.DqliteLeaderUnit(t, m, v)
	t.Logf("one cluster afterwards, Dqlite leader %s", leader)
	// The leader of the application restarts last.
	if st := m.Status(); len(rs) == len(us) && rs[len(rs)-1].unit != st.Leader {
		t.Errorf("the last unit to restart was %s, not the leader %s", rs[len(rs)-1].unit, st.Leader)
	}
}

// juju refresh with a changed controllerd binary: upgrade-charm on every
// unit asks for a restart; they restart one at a time, the leader's unit
// last, each after the one before is a running member again; no write
// fails, the writer's longest outage stays under one election, and the
// cluster is one cluster afterwards.
func TestRollingRestart_RefreshWithANewBinary(t *testing.T) {
	m, us := deployThree(t)
	v2 := changedCharm(t)
	roll(t, m, us, "rolled_refresh", func() {
		if err := m.Refresh(v2); err != nil {
			t.Fatal(err)
		}
	})
	for _, u := range us {
		data, err := os.ReadFile(filepath.Join(m.MachineDir(u), "var-lib-juju", "agents", "unit-"+strings.ReplaceAll(u, "/", "-"), "charm", "controllerd"))
		if err != nil || !strings.Contains(string(data[len(data)-200:]), "rolling-restart test marker") {
			t.Errorf("%s does not run the refreshed charm's binary (%v)", u, err)
		}
	}
	checkAgentSocket(t, m, us)
}

// checkAgentSocket: every unit's controllerd serves Juju 4's
// configchange.socket, GET /agent-id answers the agent id the unit
// publishes in the relation, and the charm, which asks the socket in
// every hook, never found it answering another id than the one it runs as.
func checkAgentSocket(t *testing.T, m *sim.Model, us []string) {
	t.Helper()
	data := m.RelationData("db-cluster")
	for _, u := range us {
		path := filepath.Join(m.MachineDir(u), "var-lib-juju", "configchange.socket")
		fi, err := os.Stat(path)
		if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: configchange.socket %v (mode %v), want a socket with mode 0700", u, err, fi)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		id, err := agentsocket.NewClient(path).AgentID(ctx)
		cancel()
		if err != nil || id != data[u]["agent-id"] || id == "" {
			t.Errorf("%s: GET /agent-id = %q, %v; the unit publishes agent-id %q", u, id, err, data[u]["agent-id"])
		}
		if log := m.UnitLog(u); !strings.Contains(log, "chose the agent id") || strings.Contains(log, "answers another agent id") {
			t.Errorf("%s: the charm did not choose its agent id once, or found the socket answering another one", u)
		}
	}
}

// A db-port change rewrites the unit file on every unit; the restarts roll
// the same way. A restarted node is then a member at its old port in state
// moving (serving) until the Dqlite leader runs on the new port too (the
// Juju leader's unit, last) and moves the members one at a time (removed,
// rejoining at the new port with a new node id, a moved leader handing
// leadership over first); writes through a node in its move are refused
// by it, never lost, a commit in flight at a hand-over is of unknown
// outcome, never failed, and the nodes end at the new port in one cluster.
//
// The Juju leader's unit restarts last, so the Dqlite leader may remove
// its node while it is down, before any peer serves at the new port: it
// rejoins through the addresses at which its peers last served
// (decide.JoinPeers). It used to ask only its peers' hosts at its own new
// port, where nobody served, and waited in "joining" for ever: the roll's
// last unit was never back, so the charm kept the restart lock.
func TestRollingRestart_DBPortChange(t *testing.T) {
	m, us := deployThree(t)
	roll(t, m, us, "rolled_port", func() {
		if err := m.SetConfig(map[string]string{"db-port": "17777"}); err != nil {
			t.Fatal(err)
		}
	}, "moving", "removed", "joining",
		// A rejoined node is a member catching up (a new node's snapshot)
		// before it is ready: refused by it, not applied, as in the other
		// states of its move.
		"starting")
	err := probe.Eventually(simtest.CtxFor(t, 3*time.Minute), time.Second, func() error {
		v := probe.Look(context.Background(), m)
		if err := v.OneCluster(us, 3, 3); err != nil {
			return err
		}
		for u, st := range v.Nodes {
			if !strings.HasSuffix(st.Address, ":17777") {
				return fmt.Errorf("%s's node is at %s (%s: %s)", u, st.Address, st.State, st.Message)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the nodes never moved to port 17777 after the roll: %v", err)
	}
	for _, u := range us {
		for _, line := range strings.Split(m.ServiceLog(u), "\n") {
			if strings.Contains(line, "action=wipe") || strings.Contains(line, "action=join") {
				t.Logf("%s: %s", u, line)
			}
		}
	}
}
