package backup_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/dqlitetest"
)

func deadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	t.Cleanup(cancel)
	return ctx
}

func seed(t *testing.T, db *sql.DB, rows int) {
	t.Helper()
	ctx := deadline(t)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < rows; i++ {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO t VALUES (?, ?)`, i, strings.Repeat("x", 100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// holding claims the singular-controller lease for holder and returns the
// token of its tenure, as the singular worker gives it to its workers.
func holding(t *testing.T, db *sql.DB, holder string, d time.Duration) lease.Token {
	t.Helper()
	l, err := lease.New(db).Claim(deadline(t), lease.NamespaceSingularController, "controller", holder, d)
	if err != nil {
		t.Fatal(err)
	}
	return l.Token()
}

func TestTake_WritesACompleteDumpOfTheControllerDatabase(t *testing.T) {
	n := dqlitetest.Start(t)
	seed(t, n.DB, 500)
	dir := filepath.Join(t.TempDir(), "backups")
	w, err := backup.New(backup.LeaderDumper(n.App.Leader), n.DB, backup.Options{Dir: dir, ControllerID: "0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := deadline(t)
	due, err := w.Due(ctx)
	if err != nil || !due {
		t.Fatalf("Due with no backup yet = %v, %v; want true", due, err)
	}
	b, err := w.Take(ctx, holding(t, n.DB, "controller-0", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if due, err := w.Due(ctx); err != nil || due {
		t.Fatalf("Due right after a backup = %v, %v; want false", due, err)
	}
	names, err := backup.List(dir)
	if err != nil || len(names) != 1 || names[0] != b.Name {
		t.Fatalf("List = %v, %v; want [%s]", names, err, b.Name)
	}
	main, err := os.ReadFile(filepath.Join(b.Path, "controller"))
	if err != nil {
		t.Fatalf("backup has no database file: %v", err)
	}
	if !bytes.HasPrefix(main, []byte("SQLite format 3\x00")) {
		t.Fatalf("backup database file does not start with the SQLite header")
	}
	if _, err := os.Stat(filepath.Join(b.Path, "controller-wal")); err != nil {
		t.Fatalf("backup has no WAL file: %v", err)
	}
	if b.Bytes < 500*100 {
		t.Fatalf("backup of %d bytes is smaller than the data", b.Bytes)
	}
	// With the sqlite3 shell at hand, show the backup opens and holds the rows.
	if sqlite3, err := exec.LookPath("sqlite3"); err == nil {
		out, err := exec.Command(sqlite3, filepath.Join(b.Path, "controller"), "SELECT count(*) FROM t").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "500" {
			t.Fatalf("sqlite3 on the backup: %q, %v; want 500 rows", out, err)
		}
	} else {
		t.Log("sqlite3 shell not installed: the backup content was checked by header only")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("temporary entry %s left in the backup directory", e.Name())
		}
	}
}

func TestTake_KeepsOnlyTheNewestBackups(t *testing.T) {
	n := dqlitetest.Start(t)
	seed(t, n.DB, 10)
	dir := t.TempDir()
	// A directory left by a backup interrupted half-way.
	if err := os.Mkdir(filepath.Join(dir, ".tmp-backup-123"), 0o700); err != nil {
		t.Fatal(err)
	}
	c, err := n.App.Client(deadline(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := backup.New(c, n.DB, backup.Options{Dir: dir, ControllerID: "0", Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	var taken []string
	tok := holding(t, n.DB, "controller-0", time.Minute)
	for i := 0; i < 4; i++ {
		b, err := w.Take(deadline(t), tok)
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, b.Name)
		time.Sleep(2 * time.Millisecond) // distinct names (millisecond stamps)
	}
	names, err := backup.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != strings.Join(taken[2:], ",") {
		t.Fatalf("kept %v, want the newest two of %v", names, taken)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-backup-123")); !os.IsNotExist(err) {
		t.Fatalf("interrupted backup directory not cleaned up: %v", err)
	}
}

// TestTake_NotRecordedOnceTheTenureIsOver: a holder whose tenure ended
// (its lease expired and another controller claimed it) writes its
// backup files but the database refuses the record.
func TestTake_NotRecordedOnceTheTenureIsOver(t *testing.T) {
	n := dqlitetest.Start(t)
	seed(t, n.DB, 10)
	w, err := backup.New(backup.LeaderDumper(n.App.Leader), n.DB, backup.Options{Dir: t.TempDir(), ControllerID: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if due, err := w.Due(deadline(t)); err != nil || !due {
		t.Fatalf("Due with no backup yet = %v, %v; want true", due, err)
	}
	old := holding(t, n.DB, "controller-0", 300*time.Millisecond)
	time.Sleep(400 * time.Millisecond)
	holding(t, n.DB, "controller-1", time.Minute)
	b, err := w.Take(deadline(t), old)
	if !errors.Is(err, lease.ErrFenced) {
		t.Fatalf("Take under an ended tenure: %v; want ErrFenced", err)
	}
	if _, statErr := os.Stat(b.Path); statErr != nil {
		t.Fatalf("the refused backup's files are not in place: %v", statErr)
	}
	var records int
	if err := n.DB.QueryRowContext(deadline(t), `SELECT count(*) FROM controller_backup`).Scan(&records); err != nil {
		t.Fatal(err)
	}
	if records != 0 {
		t.Fatalf("%d backups recorded under an ended tenure, want 0", records)
	}
	if due, err := w.Due(deadline(t)); err != nil || !due {
		t.Fatalf("Due after a refused record = %v, %v; want true (the new holder must take one)", due, err)
	}
}

type failingDumper struct{}

func (failingDumper) Dump(context.Context, string) ([]client.File, error) {
	return []client.File{{Name: "../escape", Data: []byte("x")}}, nil
}

func TestTake_RefusesFileNamesOutsideTheBackup(t *testing.T) {
	n := dqlitetest.Start(t)
	dir := t.TempDir()
	w, err := backup.New(failingDumper{}, n.DB, backup.Options{Dir: dir, ControllerID: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Take(deadline(t), holding(t, n.DB, "controller-0", time.Minute)); err == nil {
		t.Fatal("a dump file named ../escape was accepted")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("failed backup left %d entries", len(entries))
	}
}

// countingDumper counts dumps per controller.
type countingDumper struct {
	inner backup.Dumper
	n     *atomic.Int32
}

func (d countingDumper) Dump(ctx context.Context, db string) ([]client.File, error) {
	d.n.Add(1)
	return d.inner.Dump(ctx, db)
}

// TestBackupUnderSingular_OneControllerTakesEachBackup runs the backup
// worker on two controllers under the singular flag: the backups recorded
// in the database are spaced by at least the interval (by the database's
// clock), i.e. no backup was taken twice.
func TestBackupUnderSingular_OneControllerTakesEachBackup(t *testing.T) {
	n := dqlitetest.Start(t)
	seed(t, n.DB, 10)
	if err := lease.New(n.DB).EnsureSchema(deadline(t)); err != nil {
		t.Fatal(err)
	}
	const interval = 300 * time.Millisecond
	var dumps atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for _, id := range []string{"0", "1"} {
		db := n.OpenDB(t)
		w, err := backup.New(countingDumper{inner: backup.LeaderDumper(n.App.Leader), n: &dumps}, db, backup.Options{
			Dir: t.TempDir(), ControllerID: id, Interval: interval, CheckInterval: 20 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		s, err := singular.New(lease.New(db), singular.Options{
			Holder: "controller-" + id, Duration: 1500 * time.Millisecond, ExtendInterval: 250 * time.Millisecond,
			Margin: 600 * time.Millisecond, PollInterval: 100 * time.Millisecond,
			Workers: map[string]singular.Worker{"backup": w},
		})
		if err != nil {
			t.Fatal(err)
		}
		go func() { s.Run(ctx); done <- struct{}{} }()
	}
	waitCtx := deadline(t)
	for dumps.Load() < 4 {
		select {
		case <-waitCtx.Done():
			t.Fatal("fewer than 4 backups taken")
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	<-done
	<-done
	rows, err := n.DB.QueryContext(deadline(t), `SELECT controller_id,
 (julianday(taken_at) - julianday(lag(taken_at) OVER (ORDER BY taken_at))) * 86400000.0
 FROM controller_backup ORDER BY taken_at`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	records := 0
	for rows.Next() {
		var id string
		var gapMS sql.NullFloat64
		if err := rows.Scan(&id, &gapMS); err != nil {
			t.Fatal(err)
		}
		records++
		if gapMS.Valid && time.Duration(gapMS.Float64*float64(time.Millisecond)) < interval {
			t.Fatalf("backup %d by controller %s only %.0f ms after the previous one (interval %v)", records, id, gapMS.Float64, interval)
		}
	}
	// The last dump may have been cut short by the shutdown.
	if records < 3 || int32(records) > dumps.Load() {
		t.Fatalf("%d dumps but %d recorded backups", dumps.Load(), records)
	}
}
