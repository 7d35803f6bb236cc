// Package backup takes periodic backups of the controller database with
// go-dqlite's Dump, as a single-instance worker: run it under the
// singular-controller flag (package singular) so exactly one controller
// takes each backup.
//
// Whether a backup is due is decided from the database, not from local
// state: every backup is recorded in table controller_backup with the
// database's time, and a backup is due when the newest record is older than
// Interval. So a change of holder neither skips a backup nor takes an
// extra one, and a holder that died half-way through a backup (no record)
// is followed by a new backup at once.
//
// A backup is recorded only under the lease: the record transaction
// asserts the fencing token the worker runs with (lease.Token.Assert), so
// a holder paused past its tenure (SIGSTOP, a frozen VM) that wakes up
// with a backup written cannot record it after another controller has
// taken over and taken its own. Its files stay in its directory, unlisted
// in the table, and are pruned with the others.
//
// Each controller keeps its own backups in a local directory, each backup
// a directory backup-<UTC time> holding the files Dump returned (the
// database and its WAL) and a MANIFEST of their sizes and SHA-256 sums
// (restore.go checks it: a WAL cut at a frame boundary is otherwise a
// valid, older database), written to a temporary directory, synced and
// renamed into place, so a listed backup is always complete. Only the
// newest Keep backups of the directory are kept.
package backup

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// Defaults.
const (
	// DefaultInterval between backups cluster-wide.
	DefaultInterval = time.Hour
	// DefaultKeep is how many backups each controller's directory keeps.
	DefaultKeep = 24
	// DefaultCheckInterval is how often the holder asks the database
	// whether a backup is due.
	DefaultCheckInterval = 30 * time.Second
	// DefaultTimeout bounds one backup (dump and write).
	DefaultTimeout = 5 * time.Minute
	// DefaultDatabase is the database dumped.
	DefaultDatabase = "controller"
	// keepRecords bounds controller_backup.
	keepRecords = 1000
	// RecordTimeout bounds the record transaction, which runs even when
	// the worker's context was cancelled after the files were written
	// (the fence, not the context, decides whether it may commit).
	RecordTimeout = 2 * time.Second
)

const (
	prefix     = "backup-"
	tmpPrefix  = ".tmp-backup-"
	nameLayout = "20060102T150405.000Z"
)

const schema = `CREATE TABLE IF NOT EXISTS controller_backup (
    name          TEXT PRIMARY KEY,
    controller_id TEXT NOT NULL,
    taken_at      TEXT NOT NULL,
    bytes         INTEGER NOT NULL
)`

// Dumper is the part of a go-dqlite client used: *client.Client has it.
type Dumper interface {
	Dump(ctx context.Context, dbname string) ([]client.File, error)
}

// LeaderDumper dumps from the current Dqlite leader (the most up-to-date
// copy), connecting for each dump: pass app.App.Leader.
type LeaderDumper func(ctx context.Context) (*client.Client, error)

// Dump implements Dumper.
func (f LeaderDumper) Dump(ctx context.Context, dbname string) ([]client.File, error) {
	c, err := f(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the dqlite leader: %w", err)
	}
	defer c.Close()
	return c.Dump(ctx, dbname)
}

// Options configure a Worker. Zero values take the defaults.
type Options struct {
	// Dir is where this controller keeps its backups (required).
	Dir string
	// ControllerID is recorded with each backup (required).
	ControllerID  string
	Database      string
	Interval      time.Duration
	Keep          int
	CheckInterval time.Duration
	Timeout       time.Duration
	// RecordDelay is a test hook: a pause between writing a backup's
	// files and recording it, deaf to cancellation like a slow disk, so
	// a test can stop the process while a backup is under way.
	RecordDelay time.Duration
	Log         *slog.Logger
}

// Fence is what a record asserts in its transaction: lease.Token.
type Fence interface {
	Assert(ctx context.Context, tx *sql.Tx) error
}

// Worker is the backup worker.
type Worker struct {
	dumper Dumper
	db     dbtx.Source
	o      Options
}

// New returns a backup worker dumping with d and recording backups in db
// (the controller database).
func New(d Dumper, db *sql.DB, o Options) (*Worker, error) {
	return NewFrom(d, dbtx.Fixed(db), o)
}

// NewFrom is New on whatever handle src gives at each call.
func NewFrom(d Dumper, src dbtx.Source, o Options) (*Worker, error) {
	if o.Dir == "" {
		return nil, errors.New("cannot configure backups: no backup directory")
	}
	if o.ControllerID == "" {
		return nil, errors.New("cannot configure backups: no controller id")
	}
	if o.Keep < 0 || o.Interval < 0 || o.CheckInterval < 0 || o.Timeout < 0 {
		return nil, errors.New("cannot configure backups: negative keep, interval or timeout")
	}
	if o.Database == "" {
		o.Database = DefaultDatabase
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.Keep == 0 {
		o.Keep = DefaultKeep
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = min(DefaultCheckInterval, o.Interval)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Worker{dumper: d, db: src, o: o}, nil
}

// Backup describes one backup taken.
type Backup struct {
	Name  string
	Path  string
	Bytes int64
}

// Run takes a backup whenever one is due until ctx is cancelled,
// recording each under tok (a singular.Worker). Failures are logged and
// retried at the next check.
func (w *Worker) Run(ctx context.Context, tok lease.Token) error {
	for {
		if err := w.check(ctx, tok); err != nil && (ctx.Err() == nil || errors.Is(err, lease.ErrFenced)) {
			w.o.Log.Warn("backup failed", "err", err, "lease", tok.String())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(w.o.CheckInterval):
		}
	}
}

func (w *Worker) check(ctx context.Context, fence Fence) error {
	ctx, cancel := context.WithTimeout(ctx, w.o.Timeout)
	defer cancel()
	due, err := w.Due(ctx)
	if err != nil || !due {
		return err
	}
	b, err := w.Take(ctx, fence)
	if err != nil {
		return err
	}
	w.o.Log.Info("backup taken", "path", b.Path, "bytes", b.Bytes)
	return nil
}

// Due reports whether the newest recorded backup (by any controller) is
// older than Interval by the database's clock, or there is none.
func (w *Worker) Due(ctx context.Context) (bool, error) {
	var ageMS sql.NullFloat64
	err := dbtx.RunFrom(ctx, w.db, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx,
			`SELECT (julianday('now') - julianday(max(taken_at))) * 86400000.0 FROM controller_backup`).Scan(&ageMS)
	})
	if err != nil {
		return false, fmt.Errorf("cannot read the last backup time: %w", err)
	}
	return !ageMS.Valid || time.Duration(ageMS.Float64)*time.Millisecond >= w.o.Interval, nil
}

// Take takes a backup now, records it in the database in a transaction
// that asserts fence, and prunes the directory to the newest Keep
// backups. When fence fails the backup is not recorded and the error
// wraps fence's (lease.ErrFenced).
//
// Once the files are complete the record is attempted even if ctx has
// been cancelled meanwhile (bounded by RecordTimeout): a holder that
// stops while its tenure lasts records the backup it completed, and one
// whose tenure is over is refused by the database, not by the luck of
// which of its goroutines runs first after a pause.
func (w *Worker) Take(ctx context.Context, fence Fence) (Backup, error) {
	files, err := w.dumper.Dump(ctx, w.o.Database)
	if err != nil {
		return Backup{}, fmt.Errorf("cannot dump database %q: %w", w.o.Database, err)
	}
	if len(files) == 0 {
		return Backup{}, fmt.Errorf("cannot back up database %q: the dump has no files", w.o.Database)
	}
	if err := ctx.Err(); err != nil {
		return Backup{}, fmt.Errorf("cannot back up database %q: %w", w.o.Database, err)
	}
	name := prefix + time.Now().UTC().Format(nameLayout)
	b := Backup{Name: name, Path: filepath.Join(w.o.Dir, name)}
	if err := writeDir(w.o.Dir, name, files); err != nil {
		return Backup{}, err
	}
	for _, f := range files {
		b.Bytes += int64(len(f.Data))
	}
	if w.o.RecordDelay > 0 {
		w.o.Log.Info("backup written; waiting before recording it (test hook)", "name", name, "delay", w.o.RecordDelay)
		time.Sleep(w.o.RecordDelay)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RecordTimeout)
	defer cancel()
	err = dbtx.RunFrom(rctx, w.db, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return err
		}
		if err := fence.Assert(ctx, tx); err != nil {
			return err
		}
		// Idempotent: the name is unique per backup.
		if _, err := tx.ExecContext(ctx, `INSERT INTO controller_backup (name, controller_id, taken_at, bytes)
VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f','now'), ?) ON CONFLICT (name) DO NOTHING`,
			w.o.ControllerID+"/"+name, w.o.ControllerID, b.Bytes); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM controller_backup WHERE name NOT IN
(SELECT name FROM controller_backup ORDER BY taken_at DESC LIMIT ?)`, keepRecords)
		return err
	})
	if err != nil {
		// The files are complete; only the schedule is affected.
		return b, fmt.Errorf("cannot record backup %s: %w", name, err)
	}
	if err := Prune(w.o.Dir, w.o.Keep); err != nil {
		return b, err
	}
	return b, nil
}

// writeDir writes files into dir/name atomically: a temporary directory
// is filled, synced and renamed.
func writeDir(dir, name string, files []client.File) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create backup directory: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, tmpPrefix)
	if err != nil {
		return fmt.Errorf("cannot create temporary backup directory: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	for _, f := range files {
		base := filepath.Base(f.Name)
		if base != f.Name || base == "." || base == ".." {
			return fmt.Errorf("cannot write backup: unexpected file name %q in dump", f.Name)
		}
		if err := writeSynced(filepath.Join(tmp, base), f.Data); err != nil {
			return err
		}
	}
	if err := writeSynced(filepath.Join(tmp, ManifestName), manifest(files)); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("cannot move backup into place: %w", err)
	}
	return syncDir(dir)
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("cannot create backup file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("cannot write backup file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("cannot sync backup file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cannot close backup file %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cannot open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cannot sync directory %s: %w", dir, err)
	}
	return nil
}

// List returns the complete backups in dir, oldest first.
func List(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot list backups: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			if _, err := time.Parse(nameLayout, strings.TrimPrefix(e.Name(), prefix)); err == nil {
				out = append(out, e.Name())
			}
		}
	}
	sort.Strings(out) // the layout sorts by time
	return out, nil
}

// Prune removes all but the newest keep backups from dir, and temporary
// directories left by an interrupted backup.
func Prune(dir string, keep int) error {
	names, err := List(dir)
	if err != nil {
		return err
	}
	var errs []error
	if len(names) > keep {
		for _, n := range names[:len(names)-keep] {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				errs = append(errs, fmt.Errorf("cannot remove old backup %s: %w", n, err))
			}
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), tmpPrefix) {
			// Only a stale one: the worker is single-instance, and its own
			// temporary directory is gone once Take returns.
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, fmt.Errorf("cannot remove interrupted backup %s: %w", e.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}
