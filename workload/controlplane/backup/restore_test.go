package backup_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/dbtx"
	"github.com/juju/dqlite-controller/workload/dqlitetest"
)

func execAll(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	ctx := deadline(t)
	err := dbtx.Run(ctx, db, func(ctx context.Context, tx *sql.Tx) error {
		for _, s := range stmts {
			if _, err := tx.ExecContext(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// contents renders every table's rows (with each value's storage class)
// and the schema, so that two databases compare as text.
func contents(t *testing.T, db *sql.DB, skip ...string) string {
	t.Helper()
	ctx := deadline(t)
	var b strings.Builder
	err := dbtx.Run(ctx, db, func(ctx context.Context, tx *sql.Tx) error {
		b.Reset()
		rows, err := tx.QueryContext(ctx, `SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%' ORDER BY type, name`)
		if err != nil {
			return err
		}
		var tables []string
		for rows.Next() {
			var typ, name string
			var s sql.NullString
			if err := rows.Scan(&typ, &name, &s); err != nil {
				return err
			}
			skipped := false
			for _, k := range skip {
				skipped = skipped || strings.Contains(s.String, k)
			}
			if skipped {
				continue
			}
			fmt.Fprintf(&b, "%s %s: %s\n", typ, name, s.String)
			if typ == "table" {
				tables = append(tables, name)
			}
		}
		rows.Close()
		for _, name := range tables {
			cols := []string{}
			crow, err := tx.QueryContext(ctx, `SELECT name FROM pragma_table_info(?)`, name)
			if err != nil {
				return err
			}
			for crow.Next() {
				var c string
				crow.Scan(&c)
				cols = append(cols, fmt.Sprintf(`typeof("%s") || ':' || quote("%s")`, c, c))
			}
			crow.Close()
			r, err := tx.QueryContext(ctx, "SELECT "+strings.Join(cols, " || ' ' || ")+` FROM "`+name+`" ORDER BY 1`)
			if err != nil {
				return err
			}
			for r.Next() {
				var line string
				r.Scan(&line)
				fmt.Fprintf(&b, "%s| %s\n", name, line)
			}
			r.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestReplay_TheDatabaseBecomesExactlyTheBackupKeptTablesStayLive(t *testing.T) {
	n := dqlitetest.Start(t)
	execAll(t, n.DB,
		`CREATE TABLE machine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, created DATETIME, blob BLOB, score REAL)`,
		`CREATE INDEX machine_name ON machine (name)`,
		`CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID`,
		`CREATE VIEW machine_names AS SELECT name FROM machine`,
		`CREATE TABLE audit (what TEXT)`,
		`CREATE TRIGGER machine_audit AFTER INSERT ON machine BEGIN INSERT INTO audit VALUES ('machine ' || new.name); END`,
		`CREATE TABLE live (v TEXT)`,
		`INSERT INTO live VALUES ('before')`,
	)
	for i := 0; i < 130; i++ {
		execAll(t, n.DB, fmt.Sprintf(`INSERT INTO machine (name, created, blob, score) VALUES ('m%d', '2026-12-0%d 10:00:00', x'00ff%02x', %d.5)`, i, i%9+1, i%256, i),
			fmt.Sprintf(`INSERT INTO kv VALUES ('k%d', NULL)`, i))
	}
	execAll(t, n.DB, `DELETE FROM machine WHERE id > 125`) // the counter stays at 130
	dir := filepath.Join(t.TempDir(), "backups")
	w, err := backup.New(backup.LeaderDumper(n.App.Leader), n.DB, backup.Options{Dir: dir, ControllerID: "0"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := w.Take(deadline(t), holding(t, n.DB, "controller-0", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	keep := func(table string) bool {
		return strings.HasPrefix(table, "live") || strings.HasPrefix(table, "controller_") || strings.HasPrefix(table, "lease")
	}
	want := contents(t, n.DB, "CREATE TABLE live", "controller_", "lease")

	// After the backup: more rows, a table dropped, one added, the kept
	// table changed.
	execAll(t, n.DB,
		`INSERT INTO machine (name) VALUES ('late')`,
		`DROP TABLE kv`,
		`CREATE TABLE extra (x)`,
		`INSERT INTO extra VALUES (1)`,
		`UPDATE live SET v = 'after'`,
	)

	s, err := backup.Open(b.Path, keep)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Rows["machine"] != 125 || s.Rows["kv"] != 130 || s.Rows["audit"] != 130 {
		t.Fatalf("backup row counts = %v, want machine 125, kv 130, audit 130", s.Rows)
	}
	if _, ok := s.Rows["live"]; ok {
		t.Fatalf("kept table live is in the snapshot: %v", s.Rows)
	}
	var steps []string
	replay := func() {
		finalRan := false
		err := s.Replay(deadline(t), dbtx.Fixed(n.DB), backup.ReplayOptions{BatchRows: 7,
			Progress: func(m string) { steps = append(steps, m) },
			Final: func(ctx context.Context, tx *sql.Tx) error {
				finalRan = true
				_, err := tx.ExecContext(ctx, `UPDATE live SET v = v || ' restored'`)
				return err
			}})
		if err != nil {
			t.Fatal(err)
		}
		if !finalRan {
			t.Fatal("Final did not run")
		}
	}
	replay()
	got := contents(t, n.DB, "CREATE TABLE live", "controller_", "lease")
	if got != want {
		t.Fatalf("after the replay the database differs from the backup:\n--- got\n%s\n--- want\n%s", got, want)
	}
	var live string
	if err := n.DB.QueryRow(`SELECT v FROM live`).Scan(&live); err != nil || live != "after restored" {
		t.Fatalf("kept table live = %q, %v; want %q (left live, then Final)", live, err, "after restored")
	}
	var seq int64
	if err := n.DB.QueryRow(`SELECT seq FROM sqlite_sequence WHERE name = 'machine'`).Scan(&seq); err != nil || seq != 130 {
		t.Fatalf("machine's AUTOINCREMENT counter = %d, %v; want 130 as in the backup", seq, err)
	}
	// Run again (an interrupted restore is run again from the start).
	replay()
	if got := contents(t, n.DB, "CREATE TABLE live", "controller_", "lease"); got != want {
		t.Fatalf("a second replay changed the result:\n%s", got)
	}
	t.Logf("replay steps: %s", strings.Join(steps, "; "))
}

func TestOpen_RefusesADamagedOrEmptyBackup(t *testing.T) {
	n := dqlitetest.Start(t)
	seed(t, n.DB, 2000)
	dir := filepath.Join(t.TempDir(), "backups")
	w, err := backup.New(backup.LeaderDumper(n.App.Leader), n.DB, backup.Options{Dir: dir, ControllerID: "0"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := w.Take(deadline(t), holding(t, n.DB, "controller-0", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	// Damage: overwrite the middle of the database file with garbage
	// (a copy: the backup itself must stay as it was).
	damaged := filepath.Join(t.TempDir(), "damaged")
	os.MkdirAll(damaged, 0o700)
	data, err := os.ReadFile(filepath.Join(b.Path, "controller"))
	if err != nil {
		t.Fatal(err)
	}
	wal, err := os.ReadFile(filepath.Join(b.Path, "controller-wal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backup: database file %d bytes, WAL %d bytes", len(data), len(wal))
	bad := append([]byte(nil), data...)
	for i := 0; i < 100; i++ {
		bad[i] = 0xa5 // SQLite's header
	}
	os.WriteFile(filepath.Join(damaged, "controller"), bad, 0o600)
	// A WAL cut at a frame boundary is a valid, older database: only the
	// manifest tells.
	cut := filepath.Join(t.TempDir(), "cut")
	os.MkdirAll(cut, 0o700)
	os.WriteFile(filepath.Join(cut, "controller"), data, 0o600)
	os.WriteFile(filepath.Join(cut, "controller-wal"), wal[:32+10*(4096+24)], 0o600)
	manifest, err := os.ReadFile(filepath.Join(b.Path, backup.ManifestName))
	if err != nil {
		t.Fatalf("the backup has no %s: %v", backup.ManifestName, err)
	}
	os.WriteFile(filepath.Join(cut, backup.ManifestName), manifest, 0o600)
	// A WAL frame with a wrong checksum: SQLite would silently drop it
	// and every frame after it.
	badWAL := filepath.Join(t.TempDir(), "badwal")
	os.MkdirAll(badWAL, 0o700)
	os.WriteFile(filepath.Join(badWAL, "controller"), data, 0o600)
	w2 := append([]byte(nil), wal...)
	w2[len(w2)/2] ^= 0xff
	os.WriteFile(filepath.Join(badWAL, "controller-wal"), w2, 0o600)
	empty := t.TempDir()
	for _, tc := range []struct {
		name, dir, want string
	}{
		{"damaged database file", damaged, "not a database"},
		{"damaged WAL", badWAL, "are valid"},
		{"WAL cut at a frame", cut, "MANIFEST says"},
		{"no database file", empty, "holds no database file"},
		{"missing directory", filepath.Join(empty, "nope"), "cannot read backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := backup.Open(tc.dir, nil)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded; want an error containing %q", tc.name, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open(%s) = %v; want it to contain %q", tc.name, err, tc.want)
			}
		})
	}
	// The intact backup still opens.
	s, err := backup.Open(b.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}
