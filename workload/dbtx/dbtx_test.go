package dbtx_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dqdriver "github.com/canonical/go-dqlite/driver"

	"github.com/juju/dqlite-controller/workload/dbtx"
	"github.com/juju/dqlite-controller/workload/dqlitetest"
)

func TestTransient_ClassifiesRetryableErrors(t *testing.T) {
	for err, want := range map[error]bool{
		dqdriver.Error{Code: dqdriver.ErrBusy, Message: "database is locked"}:                          true,
		dqdriver.Error{Code: dqdriver.ErrBusySnapshot}:                                                 true,
		dqdriver.Error{Code: 19, Message: "UNIQUE constraint failed"}:                                  false,
		fmt.Errorf("commit: %w", driver.ErrBadConn):                                                    true,
		fmt.Errorf("receive: header: %w", io.EOF):                                                      true,
		fmt.Errorf("failed to create dqlite connection: %w", dqdriver.ErrNoAvailableLeader):            true,
		&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}: true,
		context.DeadlineExceeded:                                                                       false,
		context.Canceled:                                                                               false,
		sql.ErrNoRows:                                                                                  false,
		errors.New("sql: database is closed"):                                                          false,
	} {
		if got := dbtx.Transient(err); got != want {
			t.Errorf("Transient(%v) = %v, want %v", err, got, want)
		}
	}
}

func TestRun_RetriesWhileAnotherWriterHoldsTheLock(t *testing.T) {
	n := dqlitetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	defer cancel()
	if _, err := n.DB.ExecContext(ctx, `CREATE TABLE t (k TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	// Another controller holds Dqlite's single write lock.
	other := n.OpenDB(t)
	holder, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, `INSERT INTO t VALUES ('other')`); err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int32
	done := make(chan error)
	go func() {
		done <- dbtx.Run(ctx, n.DB, func(ctx context.Context, tx *sql.Tx) error {
			attempts.Add(1)
			_, err := tx.ExecContext(ctx, `INSERT INTO t VALUES ('mine') ON CONFLICT DO NOTHING`)
			return err
		})
	}()
	for attempts.Load() < 2 { // it met the lock at least once
		select {
		case err := <-done:
			t.Fatalf("Run returned %v while the lock was held", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run after the lock was released: %v", err)
	}
	var count int
	if err := n.DB.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&count); err != nil || count != 2 {
		t.Fatalf("rows = %d, %v; want 2", count, err)
	}
}

// The error a transaction gets from a table that does not exist (a handle
// moved to a freshly bootstrapped cluster) is told apart by its SQLite code
// and message, as Dqlite reports it.
func TestMissingTable_ClassifiesDqliteErrors(t *testing.T) {
	n := dqlitetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	defer cancel()
	err := dbtx.Run(ctx, n.DB, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO missing VALUES (1)`)
		return fmt.Errorf("cannot insert: %w", err)
	})
	if !dbtx.MissingTable(err) {
		t.Errorf("MissingTable(%v) = false for a real missing table", err)
	}
	for err, want := range map[error]bool{
		dqdriver.Error{Code: 1, Message: "no such table: lease"}:         true,
		dqdriver.Error{Code: 1, Message: `near "x": syntax error`}:       false,
		dqdriver.Error{Code: dqdriver.ErrBusy, Message: "no such table"}: false,
		nil: false,
	} {
		if got := dbtx.MissingTable(err); got != want {
			t.Errorf("MissingTable(%v) = %v, want %v", err, got, want)
		}
	}
}

// Run refuses a context without a deadline (go-dqlite would wait for ever
// without quorum), and returns an error that is not transient at once.
func TestRun_RefusesNoDeadlineAndStopsOnOtherErrors(t *testing.T) {
	n := dqlitetest.Start(t)
	if err := dbtx.Run(context.Background(), n.DB, func(context.Context, *sql.Tx) error { return nil }); err == nil {
		t.Fatal("Run without a deadline accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	defer cancel()
	calls := 0
	boom := errors.New("boom")
	if err := dbtx.Run(ctx, n.DB, func(context.Context, *sql.Tx) error { calls++; return boom }); !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("Run = %v after %d calls, want boom after 1", err, calls)
	}
}

func TestStaleConn_ClassifiesConnectionErrors(t *testing.T) {
	for err, want := range map[error]bool{
		fmt.Errorf("call exec-sql: receive: header: %w", io.EOF):                               true,
		fmt.Errorf("commit: %w", driver.ErrBadConn):                                            true,
		&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.EPIPE)}: true,
		fmt.Errorf("exec: %w", syscall.ECONNRESET):                                             true,
		errors.New("not leader"):                                                               true,
		dqdriver.Error{Code: dqdriver.ErrBusy, Message: "database is locked"}:                  false,
		dqdriver.Error{Code: 1, Message: `near "EOF": syntax error`}:                           false,
		fmt.Errorf("failed to create dqlite connection: %w", dqdriver.ErrNoAvailableLeader):    false,
		context.DeadlineExceeded:                                                               false,
		sql.ErrNoRows:                                                                          false,
		nil:                                                                                    false,
	} {
		if got := dbtx.StaleConn(err); got != want {
			t.Errorf("StaleConn(%v) = %v, want %v", err, got, want)
		}
	}
}

type recordingObserver struct {
	attempts []int
	errs     []error
}

func (r *recordingObserver) Transaction(attempts int, _ time.Duration, err error) {
	r.attempts = append(r.attempts, attempts)
	r.errs = append(r.errs, err)
}

// An observer in the context hears of every transaction with its attempt
// count and final error; a body error that is not transient ends it after
// one attempt.
func TestRun_ReportsToTheContextsObserver(t *testing.T) {
	n := dqlitetest.Start(t)
	obs := &recordingObserver{}
	ctx, cancel := context.WithTimeout(dbtx.WithObserver(context.Background(), obs), dqlitetest.Patience)
	defer cancel()
	if err := dbtx.Run(ctx, n.DB, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS obs (id INTEGER PRIMARY KEY)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := dbtx.Run(ctx, n.DB, func(context.Context, *sql.Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if len(obs.attempts) != 2 || obs.attempts[0] != 1 || obs.errs[0] != nil || obs.attempts[1] != 1 || !errors.Is(obs.errs[1], boom) {
		t.Fatalf("observed attempts %v, errors %v", obs.attempts, obs.errs)
	}
}
