// Package restore_test runs restore-backup end to end in the simulated
// Juju model: the charm's action on the unit holding the backup, real
// controllerd processes and Dqlite nodes on their own machines.
package restore_test

import (
	"context"
	"fmt"
	"strings"
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

func completed(t *testing.T, res *sim.ActionResult) {
	t.Helper()
	if res.Status != sim.ActionCompleted {
		t.Fatalf("%s: status %s, message %q, stderr %q; want completed", res.Action, res.Status, res.Message, res.Stderr)
	}
}

// seeded deploys 3 units, writes 20 rows and a table, takes a backup
// (create-backup: the lease holder takes it), then writes 10 more rows and
// drops the table. It returns the unit holding the backup and its id.
func seeded(t *testing.T) (m *sim.Model, source, backupID string, others []string) {
	m = simtest.NewModel(t, sim.Options{})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitCluster(t, m)
	us := simtest.Units(m)
	simtest.MustSQL(t, m, us[0], "CREATE TABLE IF NOT EXISTS r (id INTEGER PRIMARY KEY, v TEXT)")
	simtest.MustSQL(t, m, us[0], "CREATE TABLE IF NOT EXISTS dropped (id INTEGER PRIMARY KEY)")
	simtest.MustSQL(t, m, us[1], "INSERT INTO dropped VALUES (7) ON CONFLICT DO NOTHING")
	for i := 1; i <= 20; i++ {
		simtest.MustSQL(t, m, us[i%3], fmt.Sprintf("INSERT INTO r VALUES (%d, 'before') ON CONFLICT DO NOTHING", i))
	}
	res := run(t, m, us[0], "create-backup")
	completed(t, res)
	source = app + "/" + res.Results["controller-id"].(string)
	backupID = res.Results["backup-id"].(string)
	for i := 21; i <= 30; i++ {
		simtest.MustSQL(t, m, us[i%3], fmt.Sprintf("INSERT INTO r VALUES (%d, 'after') ON CONFLICT DO NOTHING", i))
	}
	simtest.MustSQL(t, m, us[2], "DROP TABLE IF EXISTS dropped")
	for _, u := range us {
		if u != source {
			others = append(others, u)
		}
	}
	return m, source, backupID, others
}

// restored checks that the three units are one cluster again with exactly
// the backup's rows, each node of the others a new one.
func restored(t *testing.T, m *sim.Model, before map[string]string) {
	t.Helper()
	simtest.WaitCluster(t, m)
	for _, u := range simtest.Units(m) {
		if n := simtest.CountRows(t, m, u, "r"); n != 20 {
			t.Fatalf("%s reads %d rows of r; want the backup's 20", u, n)
		}
		if n := simtest.CountRows(t, m, u, "dropped"); n != 1 {
			t.Fatalf("%s reads %d rows of dropped; want the backup's 1", u, n)
		}
		if res := simtest.MustSQL(t, m, u, "SELECT count(*) FROM r WHERE v = 'after'"); res.Rows[0][0].(float64) != 0 {
			t.Fatalf("%s still reads rows written after the backup", u)
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

// 3 units: rows, a backup, more rows and a dropped table; the refusals
// (no confirm, an unknown id, the unit that does not hold the backup)
// change nothing; restore-backup on the holder's unit makes the three one
// cluster of 3 with exactly the backup's rows.
func TestRestore_ThreeUnitsReturnToTheBackupsRows(t *testing.T) {
	m, source, id, others := seeded(t)
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
			res := run(t, m, tc.unit, "restore-backup", tc.args...)
			if res.Status != sim.ActionFailed || !strings.Contains(res.Message, tc.want) {
				t.Fatalf("status %s, message %q; want failed with %q", res.Status, res.Message, tc.want)
			}
		})
	}
	if n := simtest.CountRows(t, m, others[1], "r"); n != 30 {
		t.Fatalf("after the refusals %s reads %d rows; want 30 (nothing changed)", others[1], n)
	}
	before := nodeIDs(t, m, others)
	res := run(t, m, source, "restore-backup", "backup-id="+id, "confirm=true")
	completed(t, res)
	t.Logf("restore transcript (%s):\n%s\n%s", source, res.Results["transcript"], res.Results["summary"])
	if res.Results["step"] != "4/4" || res.Results["rows"] != "21" || res.Results["waiting"] != "" {
		t.Fatalf("restore-backup results %v; want step 4/4, 21 rows, nobody waiting", res.Results)
	}
	restored(t, m, before)
}

// The source's controllerd restarts (systemctl restart) after the other
// nodes closed for the restore: the action's answer is lost, a second
// restore-backup says the restore is under way and where, and the restore
// resumes from the records to one cluster of 3 with the backup's rows.
func TestRestore_SourceRestartedMidRestoreResumes(t *testing.T) {
	m, source, id, others := seeded(t)
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
