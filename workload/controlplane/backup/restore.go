package backup

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	// SQLite itself (Debian's libsqlite3 with the libsqlite3 build tag),
	// already linked into controllerd by go-dqlite's client package
	// (DatabaseNodeStore): it reads a backup's files, which are a plain
	// SQLite database and its WAL.
	_ "github.com/mattn/go-sqlite3"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/workload/dbtx"
)

// ManifestName is the file of a backup listing its other files: one line
// "<sha256 hex> <size> <name>" each.
const ManifestName = "MANIFEST"

func manifest(files []client.File) []byte {
	var b bytes.Buffer
	for _, f := range files {
		sum := sha256.Sum256(f.Data)
		fmt.Fprintf(&b, "%s %d %s\n", hex.EncodeToString(sum[:]), len(f.Data), filepath.Base(f.Name))
	}
	return b.Bytes()
}

// checkManifest compares a backup's files with its MANIFEST; a backup
// from before manifests has none and is checked by SQLite alone.
func checkManifest(dir string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || filepath.Base(f[2]) != f[2] {
			return true, fmt.Errorf("its %s has a malformed line %q", ManifestName, sc.Text())
		}
		size, _ := strconv.ParseInt(f[1], 10, 64)
		content, err := os.ReadFile(filepath.Join(dir, f[2]))
		if err != nil {
			return true, fmt.Errorf("file %s listed in its %s: %w", f[2], ManifestName, err)
		}
		sum := sha256.Sum256(content)
		if int64(len(content)) != size || hex.EncodeToString(sum[:]) != f[0] {
			return true, fmt.Errorf("file %s has %d bytes and SHA-256 %x, its %s says %d bytes and %s", f[2], len(content), sum, ManifestName, size, f[0])
		}
	}
	return true, nil
}

// Restoring a backup. go-dqlite v1.11.5 and libdqlite 1.11.1 have no way
// to load a database file into a node: a node's databases live in its
// Raft log and snapshots, and Dump only reads. So a backup is restored by
// replaying it: its files are opened with SQLite (a private copy, so the
// backup itself is never changed), and its schema and rows are written
// through the Dqlite leader in explicit transactions of bounded size,
// then counted. Each transaction is idempotent (dbtx re-runs it after an
// unknown outcome): a row batch is applied only when the table holds
// exactly the rows before it, and is skipped when it holds them and the
// batch's too.

// DefaultBatchRows bounds the rows one replay transaction inserts (and
// DefaultBatchBytes their size), so that no Raft entry grows with the
// database.
const (
	DefaultBatchRows  = 500
	DefaultBatchBytes = 1 << 20
	// batchTimeout bounds each replay transaction.
	batchTimeout = 30 * time.Second
)

// Object is one schema object of a backup (sqlite_master).
type Object struct {
	Type, Name, Table, SQL string
}

// Snapshot is a backup opened for restoring.
type Snapshot struct {
	// Path is the backup's directory.
	Path string
	// Objects are the backup's tables, indexes, views and triggers,
	// those of the tables the caller keeps live excluded.
	Objects []Object
	// Rows is the number of rows of each table restored.
	Rows map[string]int64
	// Sequences are the AUTOINCREMENT counters (sqlite_sequence) of the
	// tables restored.
	Sequences map[string]int64

	tmp  string
	db   *sql.DB
	keep func(table string) bool
}

// Open opens the backup in dir for restoring: it copies its files into a
// private temporary directory (SQLite applies the WAL there), checks the
// database's integrity and reads its schema and row counts. Tables for
// which keep returns true (the daemon's own bookkeeping: membership,
// leases, API addresses) are left out, both from the backup and, in
// Replay, from what is dropped. Close releases it.
func Open(dir string, keep func(table string) bool) (_ *Snapshot, err error) {
	if keep == nil {
		keep = func(string) bool { return false }
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cannot read backup %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp("", "restore-")
	if err != nil {
		return nil, fmt.Errorf("cannot create a temporary directory for the backup: %w", err)
	}
	s := &Snapshot{Path: dir, tmp: tmp, keep: keep, Rows: map[string]int64{}, Sequences: map[string]int64{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if _, err := checkManifest(dir); err != nil {
		return nil, fmt.Errorf("backup %s is damaged: %w", dir, err)
	}
	main := ""
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), "-wal") || e.Name() == ManifestName {
			continue
		}
		if main != "" {
			return nil, fmt.Errorf("cannot read backup %s: more than one database file (%s, %s)", dir, main, e.Name())
		}
		main = e.Name()
	}
	if main == "" {
		return nil, fmt.Errorf("cannot read backup %s: it holds no database file", dir)
	}
	// SQLite finds the WAL by name: <db>-wal next to <db>.
	if err := copyPlain(filepath.Join(dir, main), filepath.Join(tmp, "db")); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, main+"-wal")); err == nil {
		if err := copyPlain(filepath.Join(dir, main+"-wal"), filepath.Join(tmp, "db-wal")); err != nil {
			return nil, err
		}
	}
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(tmp, "db")+"?_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("cannot open backup %s: %w", dir, err)
	}
	db.SetMaxOpenConns(1)
	s.db = db
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	if err := checkWAL(ctx, db, filepath.Join(tmp, "db-wal")); err != nil {
		return nil, fmt.Errorf("backup %s is damaged: %w", dir, err)
	}
	var check string
	if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&check); err != nil {
		return nil, fmt.Errorf("cannot check backup %s: %w", dir, err)
	}
	if check != "ok" {
		return nil, fmt.Errorf("backup %s is damaged: integrity check says %q", dir, check)
	}
	rows, err := db.QueryContext(ctx, `SELECT type, name, tbl_name, sql FROM sqlite_master
WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY rowid`)
	if err != nil {
		return nil, fmt.Errorf("cannot read backup %s's schema: %w", dir, err)
	}
	defer rows.Close()
	for rows.Next() {
		var o Object
		if err := rows.Scan(&o.Type, &o.Name, &o.Table, &o.SQL); err != nil {
			return nil, fmt.Errorf("cannot read backup %s's schema: %w", dir, err)
		}
		if keep(o.Table) {
			continue
		}
		if o.Type == "table" && strings.HasPrefix(strings.ToUpper(strings.TrimSpace(o.SQL)), "CREATE VIRTUAL") {
			return nil, fmt.Errorf("cannot restore backup %s: virtual table %s cannot be replayed", dir, o.Name)
		}
		s.Objects = append(s.Objects, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read backup %s's schema: %w", dir, err)
	}
	for _, o := range s.Objects {
		if o.Type != "table" {
			continue
		}
		var n int64
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+quoteIdent(o.Name)).Scan(&n); err != nil {
			return nil, fmt.Errorf("cannot count the rows of %s in backup %s: %w", o.Name, dir, err)
		}
		s.Rows[o.Name] = n
	}
	var hasSeq int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'`).Scan(&hasSeq); err == nil && hasSeq > 0 {
		seq, err := db.QueryContext(ctx, `SELECT name, seq FROM sqlite_sequence`)
		if err != nil {
			return nil, fmt.Errorf("cannot read backup %s's sqlite_sequence: %w", dir, err)
		}
		defer seq.Close()
		for seq.Next() {
			var name string
			var n int64
			if err := seq.Scan(&name, &n); err != nil {
				return nil, err
			}
			if _, ok := s.Rows[name]; ok {
				s.Sequences[name] = n
			}
		}
	}
	return s, nil
}

// Close removes the private copy.
func (s *Snapshot) Close() error {
	if s.db != nil {
		s.db.Close()
	}
	return os.RemoveAll(s.tmp)
}

// Total is the number of rows restored.
func (s *Snapshot) Total() int64 {
	var n int64
	for _, c := range s.Rows {
		n += c
	}
	return n
}

// ReplayOptions configure Replay. Zero values take the defaults.
type ReplayOptions struct {
	BatchRows  int
	BatchBytes int
	// Final runs in the last transaction, after the counts were checked
	// in it (the caller's record that the restore is complete).
	Final func(ctx context.Context, tx *sql.Tx) error
	// Progress is told about each step.
	Progress func(msg string)
}

// Replay makes the database src reaches hold exactly the backup's tables,
// rows, indexes, views and triggers (the tables keep left as they are):
// one transaction drops every other object and creates the tables, row
// batches follow, and one transaction creates the indexes, views and
// triggers, sets the AUTOINCREMENT counters, checks every table's row
// count against the backup's and runs o.Final. Nothing may write to the
// database meanwhile (the restore stops every other node first); an
// interrupted Replay is simply run again from the start.
func (s *Snapshot) Replay(ctx context.Context, src dbtx.Source, o ReplayOptions) error {
	if o.BatchRows <= 0 {
		o.BatchRows = DefaultBatchRows
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = DefaultBatchBytes
	}
	progress := o.Progress
	if progress == nil {
		progress = func(string) {}
	}
	run := func(body func(ctx context.Context, tx *sql.Tx) error) error {
		tctx, cancel := context.WithTimeout(ctx, batchTimeout)
		defer cancel()
		return dbtx.RunFrom(tctx, src, body)
	}
	var tables []Object
	var later []Object
	for _, ob := range s.Objects {
		if ob.Type == "table" {
			tables = append(tables, ob)
		} else {
			later = append(later, ob)
		}
	}
	progress(fmt.Sprintf("dropping the current schema and creating %d tables", len(tables)))
	if err := run(func(ctx context.Context, tx *sql.Tx) error {
		return s.resetSchema(ctx, tx, tables)
	}); err != nil {
		return fmt.Errorf("cannot reset the schema: %w", err)
	}
	for _, t := range tables {
		if err := s.copyRows(ctx, run, t.Name, o); err != nil {
			return err
		}
		progress(fmt.Sprintf("copied %d rows of %s", s.Rows[t.Name], t.Name))
	}
	progress(fmt.Sprintf("creating %d indexes, views and triggers; checking the row counts", len(later)))
	return run(func(ctx context.Context, tx *sql.Tx) error {
		for _, ob := range later {
			if _, err := tx.ExecContext(ctx, ob.SQL); err != nil && !strings.Contains(err.Error(), "already exists") {
				return fmt.Errorf("cannot create %s %s: %w", ob.Type, ob.Name, err)
			}
		}
		if len(s.Sequences) > 0 {
			for name, n := range s.Sequences {
				if _, err := tx.ExecContext(ctx, `DELETE FROM sqlite_sequence WHERE name = ?`, name); err != nil {
					return fmt.Errorf("cannot set the AUTOINCREMENT counter of %s: %w", name, err)
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)`, name, n); err != nil {
					return fmt.Errorf("cannot set the AUTOINCREMENT counter of %s: %w", name, err)
				}
			}
		}
		for name, want := range s.Rows {
			var got int64
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM `+quoteIdent(name)).Scan(&got); err != nil {
				return fmt.Errorf("cannot count the rows of %s: %w", name, err)
			}
			if got != want {
				return fmt.Errorf("table %s has %d rows after the replay, the backup %d", name, got, want)
			}
		}
		if o.Final != nil {
			return o.Final(ctx, tx)
		}
		return nil
	})
}

// resetSchema drops every object outside the kept tables and creates the
// backup's tables (idempotent: it runs again after an unknown outcome).
func (s *Snapshot) resetSchema(ctx context.Context, tx *sql.Tx, tables []Object) error {
	rows, err := tx.QueryContext(ctx, `SELECT type, name, tbl_name FROM sqlite_master
WHERE name NOT LIKE 'sqlite\_%' ESCAPE '\'`)
	if err != nil {
		return err
	}
	var drop []Object
	for rows.Next() {
		var ob Object
		if err := rows.Scan(&ob.Type, &ob.Name, &ob.Table); err != nil {
			rows.Close()
			return err
		}
		if !s.keep(ob.Table) {
			drop = append(drop, ob)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	// Triggers and views first; an index goes with its table.
	for _, kind := range []string{"trigger", "view", "table"} {
		for _, ob := range drop {
			if ob.Type != kind {
				continue
			}
			if _, err := tx.ExecContext(ctx, "DROP "+strings.ToUpper(kind)+" IF EXISTS "+quoteIdent(ob.Name)); err != nil {
				return fmt.Errorf("cannot drop %s %s: %w", kind, ob.Name, err)
			}
		}
	}
	var seq int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'`).Scan(&seq); err != nil {
		return err
	}
	for _, t := range tables {
		if _, err := tx.ExecContext(ctx, t.SQL); err != nil {
			return fmt.Errorf("cannot create table %s: %w", t.Name, err)
		}
	}
	if seq > 0 {
		// Counters of dropped tables would otherwise outlive them.
		if _, err := tx.ExecContext(ctx, `DELETE FROM sqlite_sequence WHERE name NOT IN (SELECT name FROM sqlite_master WHERE type = 'table')`); err != nil {
			return err
		}
	}
	return nil
}

// copyRows streams table's rows from the backup in a fixed order and
// writes them in batches; each batch applies only onto exactly the rows
// before it.
func (s *Snapshot) copyRows(ctx context.Context, run func(func(context.Context, *sql.Tx) error) error, table string, o ReplayOptions) error {
	cols, err := s.columns(ctx, table)
	if err != nil {
		return err
	}
	// CASE ... END hides the declared type, so the driver hands back each
	// value as stored (mattn/go-sqlite3 turns TEXT of DATETIME columns
	// into time.Time otherwise, and the text would not round-trip).
	exprs := make([]string, len(cols))
	for i, c := range cols {
		exprs[i] = "CASE WHEN 1 THEN " + quoteIdent(c) + " END"
	}
	order := "rowid"
	if s.withoutRowid(ctx, table) {
		order = strings.Join(func() []string {
			out := make([]string, len(cols))
			for i := range cols {
				out[i] = fmt.Sprint(i + 1)
			}
			return out
		}(), ", ")
	}
	rows, err := s.db.QueryContext(ctx, "SELECT "+strings.Join(exprs, ", ")+" FROM "+quoteIdent(table)+" ORDER BY "+order)
	if err != nil {
		return fmt.Errorf("cannot read the rows of %s from the backup: %w", table, err)
	}
	defer rows.Close()
	quoted := make([]string, len(cols))
	marks := make([]string, len(cols))
	for i, c := range cols {
		quoted[i], marks[i] = quoteIdent(c), "?"
	}
	insert := "INSERT INTO " + quoteIdent(table) + " (" + strings.Join(quoted, ", ") + ") VALUES (" + strings.Join(marks, ", ") + ")"
	var done int64
	var batch [][]any
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		before, n := done, int64(len(batch))
		err := run(func(ctx context.Context, tx *sql.Tx) error {
			var have int64
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM "+quoteIdent(table)).Scan(&have); err != nil {
				return err
			}
			switch have {
			case before + n:
				return nil // this batch committed already (an unknown outcome)
			case before:
			default:
				return fmt.Errorf("table %s has %d rows, want %d before this batch: something else writes to it", table, have, before)
			}
			stmt, err := tx.PrepareContext(ctx, insert)
			if err != nil {
				return err
			}
			defer stmt.Close()
			for _, r := range batch {
				if _, err := stmt.ExecContext(ctx, r...); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("cannot copy rows %d-%d of %s: %w", before+1, before+n, table, err)
		}
		done += n
		batch, size = batch[:0], 0
		return nil
	}
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return fmt.Errorf("cannot read a row of %s from the backup: %w", table, err)
		}
		for _, v := range vals {
			switch x := v.(type) {
			case string:
				size += len(x)
			case []byte:
				size += len(x)
			default:
				size += 8
			}
		}
		batch = append(batch, vals)
		if len(batch) >= o.BatchRows || size >= o.BatchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("cannot read the rows of %s from the backup: %w", table, err)
	}
	return flush()
}

func (s *Snapshot) columns(ctx context.Context, table string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0`, table)
	if err != nil {
		return nil, fmt.Errorf("cannot read the columns of %s: %w", table, err)
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		cols = append(cols, c)
	}
	if len(cols) == 0 {
		return nil, errors.Join(rows.Err(), fmt.Errorf("table %s has no columns", table))
	}
	return cols, rows.Err()
}

func (s *Snapshot) withoutRowid(ctx context.Context, table string) bool {
	// A WITHOUT ROWID table has no rowid to select.
	_, err := s.db.ExecContext(ctx, "SELECT rowid FROM "+quoteIdent(table)+" LIMIT 0")
	return err != nil
}

// checkWAL makes sure SQLite takes every frame of the backup's WAL: it
// silently ignores the frames from the first one whose checksum is wrong,
// which would restore an older database than the backup without a word.
// Checkpointing reports the frames it found valid.
func checkWAL(ctx context.Context, db *sql.DB, wal string) error {
	fi, err := os.Stat(wal)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var pageSize int64
	if err := db.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize); err != nil {
		return err
	}
	if fi.Size() == 0 {
		return nil
	}
	const walHeader, frameHeader = 32, 24
	frames := (fi.Size() - walHeader) / (pageSize + frameHeader)
	var busy, log, done int64
	if err := db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(FULL)`).Scan(&busy, &log, &done); err != nil {
		return fmt.Errorf("cannot apply the WAL: %w", err)
	}
	if busy != 0 || log != frames {
		return fmt.Errorf("its WAL has %d frames but only %d are valid", frames, log)
	}
	return nil
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func copyPlain(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("cannot read backup file %s: %w", src, err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		return fmt.Errorf("cannot copy backup file %s: %w", src, err)
	}
	return nil
}
