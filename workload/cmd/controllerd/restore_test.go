package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// restore-backup on 3 real processes, with a member's controllerd killed
// (kill -9) while the restore stops the cluster (the member leads then,
// so the other two elect a new leader in step 1) and the source's process
// frozen (SIGSTOP, its machine looks paused) while the others wait for it.
// The killed member comes back on its old data, reads its restore record
// and never starts that data again; the frozen source's peers serve
// nothing meanwhile. Afterwards the three are one cluster with exactly the
// backup's rows (rows written after the backup gone, a table dropped after
// it back), the two others as new nodes, and every node's data dir copied
// aside first.
func TestRestoreBackup_KilledMemberAndFrozenSourceEndInOneClusterWithTheBackupsRows(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT)")
	c.mustSQL("0", "CREATE TABLE dropped (id INTEGER PRIMARY KEY)")
	for i := 1; i <= 20; i++ {
		c.mustSQL(fmt.Sprint(i%3), fmt.Sprintf("INSERT INTO r VALUES (%d, 'before') ON CONFLICT DO NOTHING", i))
	}
	c.mustSQL("1", "INSERT INTO dropped VALUES (7)")
	stdout, stderr, err := runCLI(t, "create-backup", "--data-dir", c.node("1").data, "--format=json")
	if err != nil {
		t.Fatalf("create-backup: %v: %s", err, stderr)
	}
	var b control.BackupInfo
	if err := json.Unmarshal([]byte(stdout), &b); err != nil {
		t.Fatal(err)
	}
	source := b.ControllerID
	var others []string
	for _, id := range ids(3) {
		if id != source {
			others = append(others, id)
		}
	}
	killed, watched := others[0], others[1]
	for i := 21; i <= 30; i++ {
		c.mustSQL(watched, fmt.Sprintf("INSERT INTO r VALUES (%d, 'after') ON CONFLICT DO NOTHING", i))
	}
	c.mustSQL(source, "DROP TABLE dropped")
	c.mustSQL(source, "CREATE TABLE late (id INTEGER)")
	oldNodes := map[string]string{}
	for _, id := range ids(3) {
		oldNodes[id] = c.mustStatus(id).NodeID
	}

	// Refusals change nothing.
	for _, tc := range []struct {
		name, on string
		args     []string
		want     string
	}{
		{"no confirm", source, []string{"--backup-id", b.ID}, "confirm=true is required"},
		{"unknown id", source, []string{"--backup-id", "backup-20200101T000000.000Z", "--confirm"}, "unknown backup"},
		{"wrong unit", watched, []string{"--backup-id", b.ID, "--confirm"}, "backups stay on the unit whose controller took them"},
	} {
		_, stderr, err := runCLI(t, append([]string{"restore-backup", "--data-dir", c.node(tc.on).data}, tc.args...)...)
		if !isExitCode(err, 1) || !strings.Contains(stderr, tc.want) {
			t.Fatalf("restore-backup (%s): err %v, stderr %q; want exit 1 and %q", tc.name, err, stderr, tc.want)
		}
	}
	if n, err := c.count(watched, "r"); err != nil || n != 30 {
		t.Fatalf("after the refusals: %d rows, %v; want 30 (nothing changed)", n, err)
	}

	type answer struct {
		stdout, stderr string
		err            error
	}
	// The member to be killed leads: its death leaves the source and the
	// watched member to elect a new leader during step 1, which the
	// source needs to read the acknowledgements (the watched member once
	// closed its node at once on "no leader" and the restore stalled at
	// step 1/4 until it was cancelled).
	c.makeLeader(killed)
	done := make(chan answer, 1)
	go func() {
		o, e, err := runCLI(t, "restore-backup", "--data-dir", c.node(source).data, "--backup-id", b.ID, "--confirm", "--format=json")
		done <- answer{o, e, err}
	}()
	c.waitFor("controller "+killed+" to take part in the restore", func() (bool, string) {
		st, err := c.status(killed)
		if err != nil {
			return false, err.Error()
		}
		return st.State == "restoring", st.State + ": " + st.Message
	})
	c.kill(killed)
	c.waitFor("the source to stop the cluster", func() (bool, string) {
		st, err := c.status(source)
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(st.Message, "step 2/4") || strings.Contains(st.Message, "step 3/4"), st.Message
	})
	// The source freezes (its machine pauses) with the cluster stopped:
	// the peer it left serves nothing.
	proc := c.node(source).cmd.Process
	proc.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { proc.Signal(syscall.SIGCONT) })
	c.start(killed) // back on its old data, with its record
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		for _, id := range others {
			st, err := c.status(id)
			if err == nil && (st.State == "running" || st.Lease != nil) {
				t.Fatalf("controller %s is %s (lease %+v: %s) while the restore's source is frozen; want it to serve nothing", id, st.State, st.Lease, st.Message)
			}
			if _, err := c.sql(id, "SELECT count(*) FROM r"); err == nil {
				t.Fatalf("controller %s answered a query while the restore's source is frozen", id)
			}
		}
	}
	proc.Signal(syscall.SIGCONT)

	var a answer
	select {
	case a = <-done:
	case <-time.After(5 * time.Minute):
		t.Fatal("restore-backup did not answer within 5 minutes")
	}
	if a.err != nil {
		t.Fatalf("restore-backup: %v: %s", a.err, a.stderr)
	}
	var res control.RestoreResult
	if err := json.Unmarshal([]byte(a.stdout), &res); err != nil {
		t.Fatalf("cannot parse %q: %v", a.stdout, err)
	}
	t.Logf("restore-backup transcript:\n%s\n%s", strings.Join(res.Transcript, "\n"), res.Message)
	if res.Step != "4/4" || len(res.Waiting) != 0 || strings.Join(res.Rejoined, ",") != strings.Join(others, ",") || res.SafetyCopy == "" {
		t.Fatalf("restore result %+v; want step 4/4, %v rejoined, a safety copy", res, others)
	}
	for _, id := range ids(3) {
		st := c.waitState(id, "running")
		if id != source && st.NodeID == oldNodes[id] {
			t.Fatalf("controller %s runs its old node %s; want a new node", id, st.NodeID)
		}
		if len(st.Members) != 3 {
			t.Fatalf("controller %s sees %d members; want 3", id, len(st.Members))
		}
		c.waitFor("controller "+id+" to read the backup's rows", func() (bool, string) {
			n, err := c.count(id, "r")
			return err == nil && n == 20, fmt.Sprint(n, err)
		})
		if n, err := c.count(id, "dropped"); err != nil || n != 1 {
			t.Fatalf("controller %s: table dropped has %d rows, %v; want the backup's 1", id, n, err)
		}
		if _, err := c.sql(id, "SELECT count(*) FROM late"); err == nil || !strings.Contains(err.Error(), "no such table") {
			t.Fatalf("controller %s: table late (created after the backup) answers: %v", id, err)
		}
		copies, _ := filepath.Glob(filepath.Join(c.node(id).data, "recovery-*"))
		if len(copies) == 0 {
			t.Fatalf("controller %s has no safety copy of its node dir", id)
		}
		if _, err := os.Stat(filepath.Join(c.node(id).data, "restore.json")); err == nil {
			t.Fatalf("controller %s still has its restore record", id)
		}
	}
	after := c.mustSQL(source, "SELECT v FROM r WHERE id = 20")
	if len(after.Rows) != 1 || after.Rows[0][0] != "before" {
		t.Fatalf("row 20 = %+v", after.Rows)
	}
	if _, ok := c.node(killed).lineAfter(time.Time{}, "restore: the source leads the restored cluster without this node"); !ok {
		t.Fatalf("the killed member did not wipe for the restore:\n%s", c.node(killed).logs())
	}
	// A second restore-backup after the first is done starts a new one
	// only with confirm; without it nothing changes.
	_, stderr, err = runCLI(t, "restore-backup", "--data-dir", c.node(source).data, "--backup-id", b.ID)
	if !isExitCode(err, 1) || !strings.Contains(stderr, "confirm=true is required") {
		t.Fatalf("second restore-backup without confirm: %v %q", err, stderr)
	}
}

// A member cannot take part (its restore record cannot be written: a
// directory stands where its temporary file goes), so it never
// acknowledges: the source cancels the restore after its acknowledgement
// timeout (10 s here, --test-restore-ack-timeout; 60 s by default), says so,
// and every controller serves again with the data it had; nothing was
// changed and no record is left behind.
func TestRestoreBackup_AMemberThatCannotTakePartCancelsIt(t *testing.T) {
	c := newCluster(t)
	c.args = []string{"--test-restore-ack-timeout", "10s"}
	c.form(3)
	c.mustSQL("0", "CREATE TABLE k (id INTEGER PRIMARY KEY)")
	c.mustSQL("0", "INSERT INTO k VALUES (1)")
	stdout, stderr, err := runCLI(t, "create-backup", "--data-dir", c.node("0").data, "--format=json")
	if err != nil {
		t.Fatalf("create-backup: %v: %s", err, stderr)
	}
	var b control.BackupInfo
	if err := json.Unmarshal([]byte(stdout), &b); err != nil {
		t.Fatal(err)
	}
	c.mustSQL("0", "INSERT INTO k VALUES (2)")
	source, stuck := b.ControllerID, ""
	for _, id := range ids(3) {
		if id != source {
			stuck = id
		}
	}
	if err := os.Mkdir(filepath.Join(c.node(stuck).data, "restore.json.tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	before := map[string]string{}
	for _, id := range ids(3) {
		before[id] = c.mustStatus(id).NodeID
	}
	_, stderr, err = runCLI(t, "restore-backup", "--data-dir", c.node(source).data, "--backup-id", b.ID, "--confirm")
	if !isExitCode(err, 1) || !strings.Contains(stderr, "controllers "+stuck+" did not stop serving") || !strings.Contains(stderr, "cancelled and nothing was changed") {
		t.Fatalf("restore-backup with a member that cannot take part: err %v, stderr %q", err, stderr)
	}
	for _, id := range ids(3) {
		st := c.waitState(id, "running")
		if st.NodeID != before[id] {
			t.Fatalf("controller %s runs node %s, was %s: the cancelled restore changed membership", id, st.NodeID, before[id])
		}
		if n, err := c.count(id, "k"); err != nil || n != 2 {
			t.Fatalf("controller %s reads %d rows, %v; want the 2 it had", id, n, err)
		}
		if _, err := os.Stat(filepath.Join(c.node(id).data, "restore.json")); err == nil {
			t.Fatalf("controller %s kept its restore record after the cancellation", id)
		}
	}
	if _, ok := c.node(stuck).lineAfter(time.Time{}, "cannot take part in the restore"); !ok {
		t.Fatalf("the stuck member did not say why it cannot take part:\n%s", c.node(stuck).logs())
	}
}
