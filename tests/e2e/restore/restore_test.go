// Package restore_test runs restore-backup end to end in the simulated
// Juju model: the charm's action on the unit holding the backup, real
// controllerd processes and Dqlite nodes on their own machines.
package restore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

const app = "dqlite-controller"

func run(t *testing.T, m *sim.Model, unit, action string, args ...string) *sim.ActionResult {
	t.Helper()
	res, err := m.RunAction(simtest.CtxFor(t, 8*time.Minute), unit, action, args...)
	if err != nil {
		t.Fatalf("juju run %s %s %v: %v", unit, action, args, err)
	}
	t.Logf("juju run %s %s %s:\n%s", unit, action, strings.Join(args, " "), res)
	return res
}

// seeded deploys n units, writes 20 rows and a table, takes a backup
// (create-backup: the lease holder takes it), then writes 10 more rows and
// drops the table. It returns the unit holding the backup and its id.
func seeded(t *testing.T, n int) (m *sim.Model, source, backupID string, others []string) {
	m = simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(n); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	us := simtest.Units(m)
	simtest.MustSQL(t, m, us[0], "CREATE TABLE IF NOT EXISTS r (id INTEGER PRIMARY KEY, v TEXT)")
	simtest.MustSQL(t, m, us[0], "CREATE TABLE IF NOT EXISTS dropped (id INTEGER PRIMARY KEY)")
	simtest.MustSQL(t, m, us[n-1], "INSERT INTO dropped VALUES (7) ON CONFLICT DO NOTHING")
	insert(t, m, us, 1, 20, "before")
	source, backupID = backup(t, m, us[0])
	insert(t, m, us, 21, 30, "after")
	simtest.MustSQL(t, m, us[n-1], "DROP TABLE IF EXISTS dropped")
	for _, u := range us {
		if u != source {
			others = append(others, u)
		}
	}
	return m, source, backupID, others
}

// insert writes rows from to to of r with value v, spread over the units
// (one transaction through each).
func insert(t *testing.T, m *sim.Model, us []string, from, to int, v string) {
	t.Helper()
	values := make([][]string, len(us))
	for i := from; i <= to; i++ {
		values[i%len(us)] = append(values[i%len(us)], fmt.Sprintf("(%d, '%s')", i, v))
	}
	for j, u := range us {
		if len(values[j]) > 0 {
			simtest.MustSQL(t, m, u, "INSERT INTO r VALUES "+strings.Join(values[j], ", ")+" ON CONFLICT DO NOTHING")
		}
	}
}

// backup runs create-backup on unit and returns the unit whose controller
// took it (the lease holder) and the backup's id.
func backup(t *testing.T, m *sim.Model, unit string) (holder, id string) {
	t.Helper()
	res := run(t, m, unit, "create-backup")
	simtest.WantCompleted(t, res)
	return app + "/" + res.Results["controller-id"].(string), res.Results["backup-id"].(string)
}

// restored checks that every unit is a member of one cluster again with
// exactly the backup's rows (20 of r, 1 of dropped, none written after
// the backup), each of the units in before on a new node.
func restored(t *testing.T, m *sim.Model, before map[string]string) {
	t.Helper()
	us := simtest.Units(m)
	simtest.WaitOneCluster(t, m, us, nil)
	for _, u := range us {
		res := simtest.MustSQL(t, m, u, "SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM dropped), (SELECT count(*) FROM r WHERE v = 'after')")
		if got := fmt.Sprint(res.Rows); got != "[[20 1 0]]" {
			t.Fatalf("%s reads %s (rows of r, rows of dropped, rows of r written after the backup); want the backup's [[20 1 0]]", u, got)
		}
	}
	for u, id := range before {
		st, err := probe.Status(context.Background(), m, u)
		if err != nil {
			t.Fatal(err)
		}
		if st.NodeID == id {
			t.Fatalf("%s still runs node %s of the old cluster", u, id)
		}
	}
	simtest.WaitActive(t, m)
}

// unchanged checks that every unit is a member of one cluster with the
// rows written after the backup (30 of r, table dropped gone): a refused
// restore changed nothing.
func unchanged(t *testing.T, m *sim.Model) {
	t.Helper()
	us := simtest.Units(m)
	simtest.WaitOneCluster(t, m, us, nil)
	for _, u := range us {
		res := simtest.MustSQL(t, m, u, "SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM sqlite_master WHERE name = 'dropped')")
		if got := fmt.Sprint(res.Rows); got != "[[30 0]]" {
			t.Fatalf("%s reads %s (rows of r, tables named dropped); want [[30 0]]: the rows it had, the backup not applied", u, got)
		}
	}
}

func nodeIDs(t *testing.T, m *sim.Model, units []string) map[string]string {
	out := map[string]string{}
	for _, u := range units {
		st, err := probe.Status(context.Background(), m, u)
		if err != nil {
			t.Fatal(err)
		}
		out[u] = st.NodeID
	}
	return out
}

// systemctl runs systemctl verb controllerd on unit's machine.
func systemctl(t *testing.T, m *sim.Model, unit, verb string) {
	t.Helper()
	out, errOut, err := m.Exec(simtest.CtxFor(t, 2*time.Minute), unit, m.ToolsDir()+"/systemctl", verb, "controllerd")
	if err != nil {
		t.Fatalf("systemctl %s controllerd on %s: %v: %s %s", verb, unit, err, out, errOut)
	}
	t.Logf("systemctl %s controllerd on %s", verb, unit)
}

// daemonPID finds the pid of `controllerd run` in unit's machine.
func daemonPID(t *testing.T, m *sim.Model, unit string) int {
	t.Helper()
	pid := runningPID(t, m, unit)
	if pid == 0 {
		t.Fatalf("controllerd does not run on %s", unit)
	}
	return pid
}

// runningPID is the pid of controllerd run on unit's machine, 0 while it
// does not run (between a stop and a start).
func runningPID(t *testing.T, m *sim.Model, unit string) int {
	t.Helper()
	st := m.Status()
	us, _ := st.Unit(unit)
	for _, mc := range st.Machines {
		if mc.ID != us.Machine {
			continue
		}
		out, err := exec.Command("ip", "netns", "pids", mc.NetNS).Output()
		if err != nil {
			t.Fatalf("cannot list the processes of %s: %v", unit, err)
		}
		for _, f := range strings.Fields(string(out)) {
			pid, _ := strconv.Atoi(f)
			cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			args := strings.Split(string(cmd), "\x00")
			if err == nil && len(args) > 1 && filepath.Base(args[0]) == "controllerd" && args[1] == "run" {
				return pid
			}
		}
	}
	return 0
}

// dataDir is the host path of unit's controllerd data dir.
func dataDir(m *sim.Model, unit string) string {
	return filepath.Join(m.MachineDir(unit), "var-lib-juju", "dqlite")
}

// controllerID is unit's number, its controller id.
func controllerID(unit string) string { return unit[strings.LastIndex(unit, "/")+1:] }

// 3 units: rows, a backup, more rows and a dropped table. The refusals
// change nothing: no confirm, an unknown id, the unit that does not hold
// the backup, a member whose controllerd is stopped (named), and no quorum
// (two of three stopped). Then restore-backup on the holder's unit makes
// the three one cluster of 3 with exactly the backup's rows. Records left
// behind by that finished restore (its controller_restore row, and a
// restore.json put back on two units as a daemon killed between the
// last commit and removing its record would leave it) trigger nothing
// through an upgrade-charm that restarts every controllerd, and a second
// restore works afterwards.
func TestRestore_ThreeUnitsReturnToTheBackupsRows(t *testing.T) {
	m, source, id, others := seeded(t, 3)
	for _, tc := range []struct {
		name, unit string
		args       []string
		want       string
	}{
		{"confirm missing", source, []string{"backup-id=" + id}, "confirm=true is required"},
		{"unknown backup", source, []string{"backup-id=backup-20200101T000000.000Z", "confirm=true"}, "unknown backup backup-20200101T000000.000Z on this unit"},
		{"wrong unit", others[0], []string{"backup-id=" + id, "confirm=true"}, "run list-backups on each unit and restore-backup on the one that lists it"},
		{"not a backup id", source, []string{"backup-id=../etc", "confirm=true"}, "invalid backup-id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			simtest.WantFailed(t, run(t, m, tc.unit, "restore-backup", tc.args...), tc.want)
		})
	}
	t.Run("a member's controllerd is stopped", func(t *testing.T) {
		systemctl(t, m, others[0], "stop")
		res := run(t, m, source, "restore-backup", "backup-id="+id, "confirm=true")
		simtest.WantFailed(t, res, "(controller "+controllerID(others[0])+") does not answer")
		simtest.WantFailed(t, res, "bring it back")
	})
	t.Run("no quorum", func(t *testing.T) {
		systemctl(t, m, others[1], "stop")
		err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), time.Second, func() error {
			st, err := probe.Status(context.Background(), m, source)
			if err != nil || st.LeaderAddress() != "" {
				return fmt.Errorf("%s still sees a leader: %v %+v", source, err, st.Leader)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		res := run(t, m, source, "restore-backup", "backup-id="+id, "confirm=true")
		simtest.WantFailed(t, res, "no quorum")
		for _, u := range others {
			simtest.WantFailed(t, res, "controller "+controllerID(u))
		}
		simtest.WantFailed(t, res, "start their controllerd")
		for _, u := range others {
			systemctl(t, m, u, "start")
		}
		unchanged(t, m)
	})
	if t.Failed() {
		t.FailNow()
	}
	before := nodeIDs(t, m, others)
	res := run(t, m, source, "restore-backup", "backup-id="+id, "confirm=true")
	simtest.WantCompleted(t, res)
	t.Logf("restore transcript (%s):\n%s\n%s", source, res.Results["transcript"], res.Results["summary"])
	if res.Results["step"] != "4/4" || res.Results["rows"] != "21" || res.Results["waiting"] != "" {
		t.Fatalf("restore-backup results %v; want step 4/4, 21 rows, nobody waiting", res.Results)
	}
	restored(t, m, before)

	t.Run("records left from the finished restore, upgrade-charm, a second restore", func(t *testing.T) {
		rid := res.Results["restore-id"].(string)
		us := simtest.Units(m)
		insert(t, m, us, 101, 105, "post")
		if n := simtest.CountRows(t, m, us[0], "controller_restore WHERE state = 'done' AND id = '"+rid+"'"); n != 1 {
			t.Fatalf("controller_restore has %d done rows for restore %s; want 1", n, rid)
		}
		// The records the source and a member held during the restore, as
		// a kill -9 right after the last commit would leave them.
		st, err := probe.Status(context.Background(), m, source)
		if err != nil {
			t.Fatal(err)
		}
		for u, step := range map[string]string{source: "forced", others[0]: "marked"} {
			rec, _ := json.Marshal(map[string]string{"id": rid, "backup": id, "source": controllerID(source),
				"source-address": st.Address, "step": step})
			if err := os.WriteFile(filepath.Join(dataDir(m, u), "restore.json"), rec, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		pids := map[string]int{}
		for _, u := range us {
			pids[u] = daemonPID(t, m, u)
		}
		if err := m.Refresh(simtest.CharmDir(t)); err != nil {
			t.Fatal(err)
		}
		err = probe.Eventually(simtest.CtxFor(t, 4*time.Minute), time.Second, func() error {
			for _, u := range us {
				if pid := runningPID(t, m, u); pid == 0 || pid == pids[u] {
					return fmt.Errorf("%s's controllerd has not restarted for the upgrade-charm yet", u)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		simtest.WaitIdle(t, m)
		simtest.WaitOneCluster(t, m, us, nil)
		for _, u := range us {
			if n := simtest.CountRows(t, m, u, "r"); n != 25 {
				t.Fatalf("%s reads %d rows of r after the upgrade-charm; want 25 (the backup's 20 and 5 written after the restore)", u, n)
			}
			if _, err := os.Stat(filepath.Join(dataDir(m, u), "restore.json")); err == nil {
				t.Fatalf("%s still holds the finished restore's record", u)
			}
		}
		simtest.WaitActive(t, m)

		holder, id2 := backup(t, m, us[1])
		simtest.MustSQL(t, m, us[2], "INSERT INTO r VALUES (200, 'after')")
		var rest []string
		for _, u := range us {
			if u != holder {
				rest = append(rest, u)
			}
		}
		before := nodeIDs(t, m, rest)
		second := run(t, m, holder, "restore-backup", "backup-id="+id2, "confirm=true")
		simtest.WantCompleted(t, second)
		if second.Results["restore-id"] == rid || second.Results["waiting"] != "" {
			t.Fatalf("second restore-backup results %v; want a new restore, nobody waiting", second.Results)
		}
		simtest.WaitOneCluster(t, m, us, nil)
		for _, u := range us {
			if n := simtest.CountRows(t, m, u, "r"); n != 25 {
				t.Fatalf("%s reads %d rows of r after the second restore; want the second backup's 25", u, n)
			}
		}
		for u, nid := range before {
			if st, err := probe.Status(context.Background(), m, u); err != nil || st.NodeID == nid {
				t.Fatalf("%s runs node %s (%v) after the second restore; want a new node", u, nid, err)
			}
		}
	})
}

// The source's controllerd restarts (systemctl restart) after the other
// nodes closed for the restore: the action's answer is lost, a second
// restore-backup says the restore is under way and where, and the restore
// resumes from the records to one cluster of 3 with the backup's rows.
func TestRestore_SourceRestartedMidRestoreResumes(t *testing.T) {
	m, source, id, others := seeded(t, 3)
	before := nodeIDs(t, m, others)
	first := make(chan *sim.ActionResult, 1)
	go func() {
		res, err := m.RunAction(simtest.CtxFor(t, 8*time.Minute), source, "restore-backup", "backup-id="+id, "confirm=true")
		if err != nil {
			t.Errorf("juju run restore-backup: %v", err)
		}
		first <- res
	}()
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), 200*time.Millisecond, func() error {
		for _, u := range others {
			st, err := probe.Status(context.Background(), m, u)
			// Step 2 on a member: its node is closed and the source has
			// not restored yet (it leads no cluster), so the source's
			// record is there for the second call to report.
			if err == nil && st.State == "restoring" && strings.Contains(st.Message, "step 2/4") {
				return nil
			}
		}
		return fmt.Errorf("no other unit has closed its node for the restore yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, err := m.Exec(simtest.CtxFor(t, 2*time.Minute), source, m.ToolsDir()+"/systemctl", "restart", "controllerd")
	if err != nil {
		t.Fatalf("systemctl restart controllerd on %s: %v: %s %s", source, err, out, errOut)
	}
	res := <-first
	if res == nil {
		t.Fatal("the first restore-backup was not run")
	}
	t.Logf("first restore-backup (its controllerd restarted):\n%s", res)
	if res.Status == sim.ActionCompleted {
		t.Fatalf("the first restore-backup completed although its controllerd restarted mid-way: %v", res.Results)
	}
	again := run(t, m, source, "restore-backup", "backup-id="+id, "confirm=true")
	if again.Status != sim.ActionFailed || !strings.Contains(again.Message, "under way") {
		t.Fatalf("second restore-backup: %q; want it to say the restore is under way", again.Message)
	}
	t.Logf("second restore-backup (%s): %s %v", again.Status, again.Message, again.Results["summary"])
	restored(t, m, before)
}

// A single unit: its node is the only member, so it needs no other
// controller to stop; it restores to the backup's rows and serves again.
func TestRestore_SingleUnit(t *testing.T) {
	m, source, id, _ := seeded(t, 1)
	res := run(t, m, source, "restore-backup", "backup-id="+id, "confirm=true")
	simtest.WantCompleted(t, res)
	if res.Results["step"] != "4/4" || res.Results["rejoined"] != "" || res.Results["waiting"] != "" {
		t.Fatalf("restore-backup results %v; want step 4/4, nobody to rejoin or wait for", res.Results)
	}
	restored(t, m, nil)
	simtest.MustSQL(t, m, source, "INSERT INTO r VALUES (100, 'post')")
	if n := simtest.CountRows(t, m, source, "r"); n != 21 {
		t.Fatalf("%s reads %d rows after a write; want 21", source, n)
	}
}

// 5 units (3 voters, 2 stand-bys), and a member's controllerd killed
// (kill -9) once its node is closed for the restore: systemd starts it
// again, it reads its record, reports where the restore is and stays
// closed until the source has restored, then wipes and joins. The five
// end in one cluster with 3 voters, every one serving the backup's rows on
// a new node (none serves its stale data).
func TestRestore_FiveUnitsWithAMemberKilledMidRestore(t *testing.T) {
	m, source, id, others := seeded(t, 5)
	before := nodeIDs(t, m, others)
	type answer struct {
		res *sim.ActionResult
		err error
	}
	done := make(chan answer, 1)
	go func() {
		res, err := m.RunAction(simtest.CtxFor(t, 8*time.Minute), source, "restore-backup", "backup-id="+id, "confirm=true")
		done <- answer{res, err}
	}()
	victim := others[1]
	err := probe.Eventually(simtest.CtxFor(t, 2*time.Minute), 200*time.Millisecond, func() error {
		st, err := probe.Status(context.Background(), m, victim)
		if err == nil && st.State == "restoring" && strings.Contains(st.Message, "step 2/4") {
			return nil
		}
		return fmt.Errorf("%s has not closed its node for the restore yet: %v %s %s", victim, err, st.State, st.Message)
	})
	if err != nil {
		t.Fatal(err)
	}
	pid := daemonPID(t, m, victim)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed controllerd (pid %d) on %s mid-restore", pid, victim)
	var reported string
	err = probe.Eventually(simtest.CtxFor(t, 2*time.Minute), 200*time.Millisecond, func() error {
		st, err := probe.Status(context.Background(), m, victim)
		if err != nil {
			return err
		}
		if st.State == "restoring" && strings.Contains(st.Message, "step ") {
			reported = st.Message
			return nil
		}
		if st.State == "running" && st.NodeID != before[victim] {
			reported = "already joined as node " + st.NodeID
			return nil
		}
		return fmt.Errorf("%s restarted as %s: %s", victim, st.State, st.Message)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s after its restart: %s", victim, reported)
	a := <-done
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Logf("restore-backup:\n%s", a.res)
	simtest.WantCompleted(t, a.res)
	if a.res.Results["step"] != "4/4" || a.res.Results["waiting"] != "" || len(strings.Split(a.res.Results["rejoined"].(string), ",")) != 4 {
		t.Fatalf("restore-backup results %v; want step 4/4, the 4 others rejoined", a.res.Results)
	}
	restored(t, m, before)
	// Killed before it wiped (step 2), so the restarted process did.
	if log := m.ServiceLog(victim); !strings.Contains(log, "wiping to join it as a new node") {
		t.Fatalf("%s's restarted controllerd did not wipe to join the restored cluster:\n%s", victim, simtest.Tail(log, 40))
	}
}
