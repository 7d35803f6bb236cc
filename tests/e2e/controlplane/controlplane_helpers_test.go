package controlplane_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// The control-plane scenarios' network: every controller has a NIC in
// subnet "data" (space data, where the db-cluster endpoint is bound) and in
// subnet "mgmt" (space mgmt); agent machines have a NIC in mgmt only. The
// api endpoint starts bound to the default space alpha, where no controller
// has an address, so every controller gives agents all of its addresses
// (the per-controller fallback) until `juju bind dqlite-controller
// api=mgmt`.
var cpSubnets = []sim.SubnetSpec{{Name: "data", Space: "data"}, {Name: "mgmt", Space: "mgmt"}}

func newControlPlaneModel(t *testing.T) *sim.Model {
	t.Helper()
	return simtest.NewModel(t, sim.Options{
		Subnets:        cpSubnets,
		DefaultSubnets: []string{"data", "mgmt"},
		Bindings:       map[string]string{"db-cluster": "data"},
	})

}

// deployControllers deploys n controllers and waits for one active
// cluster.
func deployControllers(t *testing.T, m *sim.Model, n int) {
	t.Helper()
	if _, err := m.Deploy(n); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	simtest.WaitActive(t, m)
}

// addAgents adds n agent machines on the mgmt subnet running controllerd
// agent, their agent.conf seeded with one address only (the first
// controller's mgmt address), so that the full list reaching them shows the
// agent at work.
func addAgents(t *testing.T, m *sim.Model, n int) []int {
	t.Helper()
	st := m.Status()
	u, _ := st.Unit(st.Units[0].Name)
	var seed string
	for _, mc := range st.Machines {
		if mc.ID == u.Machine {
			seed = mc.Addresses[1] + ":17070" // NICs in subnet order: data, mgmt
		}
	}
	var ids []int
	for i := 0; i < n; i++ {
		id, err := m.AddAgentMachine(sim.AgentMachineSpec{Subnets: []string{"mgmt"}, APIAddresses: []string{seed}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func sortedCopy(in []string) []string {
	out := slices.Clone(in)
	sort.Strings(out)
	return out
}

// follow is how long the control plane took to reflect a change: when a
// controller's served agent list first matched, and when every agent's
// file did, both measured from the juju command.
type follow struct {
	list, files time.Duration
}

func (f follow) String() string {
	lag := f.files - f.list
	if lag < 0 {
		lag = 0
	}
	return fmt.Sprintf("served list after %.1f s, agents' files after %.1f s (files %.2f s after the list, list polled every ~0.3 s)",
		f.list.Seconds(), f.files.Seconds(), lag.Seconds())
}

// waitAgentsFollow waits until the agent list served by controller unit
// via and every agent machine's apiaddresses equal want (as sets).
func waitAgentsFollow(t *testing.T, m *sim.Model, agents []int, via string, want []string, since time.Time) follow {
	t.Helper()
	want = sortedCopy(want)
	ctx := simtest.CtxFor(t, 5*time.Minute)
	var f follow
	var lastStatus time.Time
	var lastList, lastFiles string
	for {
		if f.list == 0 && time.Since(lastStatus) >= 300*time.Millisecond {
			lastStatus = time.Now()
			if s, err := probe.Status(ctx, m, via); err == nil && s.APIAddresses != nil {
				got := sortedCopy(s.APIAddresses.Agents)
				lastList = strings.Join(got, ",")
				if slices.Equal(got, want) {
					f.list = time.Since(since)
				}
			}
		}
		all := true
		var files []string
		for _, id := range agents {
			got, err := m.AgentAPIAddresses(id)
			got = sortedCopy(got)
			files = append(files, fmt.Sprintf("machine %d: %v (%v)", id, got, err))
			if err != nil || !slices.Equal(got, want) {
				all = false
			}
		}
		lastFiles = strings.Join(files, "; ")
		if all && f.files == 0 {
			f.files = time.Since(since)
		}
		if f.list != 0 && f.files != 0 {
			return f
		}
		select {
		case <-ctx.Done():
			for _, id := range agents {
				t.Logf("service log of machine %d:\n%s", id, simtest.Tail(m.MachineServiceLog(id), 40))
			}
			t.Fatalf("agents never followed: want %v; %s served %s; files: %s", want, via, lastList, lastFiles)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// unitOfHolder maps a lease holder name (controller-<id>) to its unit.
func unitOfHolder(holder string) string {
	id, ok := strings.CutPrefix(holder, "controller-")
	if !ok {
		return ""
	}
	if _, err := strconv.Atoi(id); err != nil {
		return ""
	}
	return app + "/" + id
}

// holders reads every given unit's status and returns the units whose
// singular worker holds the lease.
func holders(ctx context.Context, m *sim.Model, us []string) (held []string, err error) {
	for _, u := range us {
		s, err := probe.Status(ctx, m, u)
		if err != nil {
			return nil, err
		}
		if s.HeldByMe() {
			held = append(held, u)
		}
	}
	return held, nil
}

// waitOneHolder waits until exactly one of us holds the lease, the others
// agree on who it is, and the database's lease row names it.
func waitOneHolder(t *testing.T, m *sim.Model, us []string) string {
	t.Helper()
	var holder string
	err := probe.Eventually(simtest.CtxFor(t, 3*time.Minute), 300*time.Millisecond, func() error {
		ctx := context.Background()
		held, err := holders(ctx, m, us)
		if err != nil {
			return err
		}
		if len(held) != 1 {
			return fmt.Errorf("holders %v, want exactly one", held)
		}
		row, err := readLease(ctx, m, us[0])
		if err != nil {
			return err
		}
		if unitOfHolder(row.holder) != held[0] {
			return fmt.Errorf("the database names %q, %s says it holds", row.holder, held[0])
		}
		holder = held[0]
		return nil
	})
	if err != nil {
		t.Fatalf("no single lease holder among %v: %v", us, err)
	}
	return holder
}

const dbTime = "2006-01-02 15:04:05.000"

type leaseRow struct {
	holder        string
	start, expiry time.Time
}

// readLease reads the singular-controller lease row through a unit.
func readLease(ctx context.Context, m *sim.Model, unit string) (leaseRow, error) {
	res, err := probe.SQL(ctx, m, unit, "SELECT holder, start, expiry FROM lease WHERE namespace = 'singular-controller'")
	if err != nil {
		return leaseRow{}, err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 3 {
		return leaseRow{}, fmt.Errorf("lease rows %v, want one", res.Rows)
	}
	var r leaseRow
	r.holder, _ = res.Rows[0][0].(string)
	s, _ := res.Rows[0][1].(string)
	e, _ := res.Rows[0][2].(string)
	if r.start, err = time.Parse(dbTime, s); err != nil {
		return r, fmt.Errorf("cannot parse lease start %q: %w", s, err)
	}
	if r.expiry, err = time.Parse(dbTime, e); err != nil {
		return r, fmt.Errorf("cannot parse lease expiry %q: %w", e, err)
	}
	return r, nil
}

// leaseMonitor records the lease rows a unit reads, so that a change of
// holder can be checked against the previous holder's last expiry.
type leaseMonitor struct {
	mu     sync.Mutex
	rows   []leaseRow
	seenAt []time.Time
	cancel context.CancelFunc
	done   chan struct{}
}

// monitorLease polls the lease row through the first unit of via that
// answers, every 250 ms.
func monitorLease(m *sim.Model, via []string) *leaseMonitor {
	ctx, cancel := context.WithCancel(context.Background())
	lm := &leaseMonitor{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(lm.done)
		for ctx.Err() == nil {
			for _, u := range via {
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				r, err := readLease(rctx, m, u)
				rcancel()
				if err == nil {
					lm.mu.Lock()
					if n := len(lm.rows); n == 0 || lm.rows[n-1] != r {
						lm.rows = append(lm.rows, r)
						lm.seenAt = append(lm.seenAt, time.Now())
					}
					lm.mu.Unlock()
					break
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	return lm
}

func (lm *leaseMonitor) stop() {
	lm.cancel()
	<-lm.done
}

// firstOther returns when the monitor first saw a holder other than old,
// and that row.
func (lm *leaseMonitor) firstOther(old string) (leaseRow, time.Time, bool) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	for i, r := range lm.rows {
		if r.holder != old {
			return r, lm.seenAt[i], true
		}
	}
	return leaseRow{}, time.Time{}, false
}

// waitOther waits until the monitor has seen a holder other than old (the
// survivors may agree on the new holder before the monitor's next read).
func (lm *leaseMonitor) waitOther(t *testing.T, old string) (leaseRow, time.Time) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if r, seen, ok := lm.firstOther(old); ok {
			return r, seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lease monitor never saw a holder other than %s", old)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkNoOverlap checks every change of holder the monitor saw: the new
// tenure starts no earlier than the last expiry seen for the previous
// holder (database time).
func (lm *leaseMonitor) checkNoOverlap(t *testing.T) {
	t.Helper()
	lm.mu.Lock()
	defer lm.mu.Unlock()
	var prev leaseRow
	for i, r := range lm.rows {
		if i > 0 && r.holder != prev.holder {
			t.Logf("lease: %s (last expiry seen %s) → %s (start %s)", prev.holder, prev.expiry.Format(dbTime), r.holder, r.start.Format(dbTime))
			if r.start.Before(prev.expiry) {
				t.Errorf("lease overlap: %s's tenure starts %s, before %s's expiry %s", r.holder, r.start.Format(dbTime), prev.holder, prev.expiry.Format(dbTime))
			}
		}
		if i == 0 || r.holder != prev.holder || r.expiry.After(prev.expiry) {
			prev = r
		}
	}
}

// backups reads controller_backup through a unit: controller id per row,
// ordered by time.
func backups(t *testing.T, m *sim.Model, unit string) [][]any {
	t.Helper()
	res := simtest.MustSQL(t, m, unit, "SELECT controller_id, taken_at FROM controller_backup ORDER BY taken_at")
	return res.Rows
}

// waitFirstBackup waits until the holder's first backup is recorded.
func waitFirstBackup(t *testing.T, m *sim.Model, unit string) {
	t.Helper()
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
		res, err := probe.SQL(context.Background(), m, unit, "SELECT count(*) FROM controller_backup")
		if err != nil {
			return err
		}
		if n := res.Rows[0][0].(float64); n < 1 {
			return fmt.Errorf("%v backups recorded", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no backup recorded: %v", err)
	}
}

// checkOneBackup checks that exactly one controller took the one backup
// due in the interval (1 h by default, so one in the whole scenario), and
// that it is the only backup directory on any machine.
func checkOneBackup(t *testing.T, m *sim.Model, via string, machines []int) {
	t.Helper()
	rows := backups(t, m, via)
	if len(rows) != 1 {
		t.Errorf("controller_backup has %d rows %v, want exactly 1: a backup was doubled", len(rows), rows)
	}
	dirs := 0
	for _, id := range machines {
		dirs += countBackupDirs(m, id)
	}
	if dirs != len(rows) {
		t.Errorf("%d backup directories on the machines, %d recorded", dirs, len(rows))
	}
	t.Logf("backups recorded: %v", rows)
}

// stableHolder samples us for a while: every sample must show exactly one
// holder, always want.
func stableHolder(t *testing.T, m *sim.Model, us []string, want string, samples int) {
	t.Helper()
	for i := 0; i < samples; i++ {
		held, err := holders(context.Background(), m, us)
		if err != nil {
			t.Logf("sample %d: %v", i, err)
		} else if len(held) != 1 || held[0] != want {
			t.Errorf("sample %d: holders %v, want only %s", i, held, want)
		}
		time.Sleep(time.Second)
	}
}

func others(us []string, not string) []string {
	var out []string
	for _, u := range us {
		if u != not {
			out = append(out, u)
		}
	}
	return out
}
