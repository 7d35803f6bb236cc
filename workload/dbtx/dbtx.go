// Package dbtx runs explicit, retried transactions against the controller
// database (Dqlite through database/sql).
//
// Dqlite answers a second concurrent writer with "database is locked" at
// once (no busy timeout), and a leader change turns an in-flight request
// into driver.ErrBadConn, "EOF" or "not leader": for a COMMIT that means the
// outcome is unknown. An autocommit Exec is even re-sent by database/sql
// and can be applied twice (docs/dqlite-behaviour.md "Unknown outcomes and double writes"). So every write here runs
// in an explicit transaction whose body must be idempotent, and the whole
// transaction is re-run on those errors: re-running an idempotent body is
// how an unknown outcome is resolved (it re-reads and re-applies).
//
// A retry alone is not enough: go-dqlite v1.11.5 reports a connection
// whose server went away as "receive: header: EOF", which it does not map
// to driver.ErrBadConn, and its Conn implements neither
// driver.SessionResetter nor driver.Validator. database/sql therefore puts
// such a connection back into its pool and hands it out again. When the
// peer's machine is gone for good (its address no longer answers, so no
// TCP reset ever comes back) every later request on it fails with EOF
// until the kernel gives up on the socket, ~15 minutes later. So a
// connection error also flushes the pool's idle connections (Flush)
// before the retry, and the retry dials the current leader afresh.
package dbtx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	dqdriver "github.com/canonical/go-dqlite/driver"
)

// Retry bounds for transient errors. The attempts are also bounded by the
// caller's context deadline; these only stop a tight loop when the caller
// gave a long one.
const (
	// MaxAttempts is how many times a transaction is tried.
	MaxAttempts = 12
	// FirstBackoff doubles after each transient failure up to MaxBackoff.
	FirstBackoff = 10 * time.Millisecond
	// MaxBackoff caps the wait between attempts: a Dqlite leader change
	// with 20 ms network latency takes ~0.64 s (docs/dqlite-behaviour.md "Failover"), so a few
	// capped waits cover it.
	MaxBackoff = 250 * time.Millisecond
	// IdleConns is how many idle connections a handle keeps between
	// flushes (database/sql's default).
	IdleConns = 2
)

// sqliteError is SQLite's generic error code, SQLITE_ERROR.
const sqliteError = 1

// ErrNoDatabase is the error for a database handle that is not there (the
// local Dqlite node is not ready, or this node is not a member): callers
// wrap it with the reason, e.g. fmt.Errorf("%w: this node is %s", ...).
var ErrNoDatabase = errors.New("the controller database is not open")

// Source returns the current database handle, or an error when there is
// none (e.g. the local Dqlite node is not ready). controllerd replaces its
// handle when its node restarts, so long-lived users take a Source.
type Source func() (*sql.DB, error)

// Fixed is the Source of one handle.
func Fixed(db *sql.DB) Source {
	return func() (*sql.DB, error) {
		if db == nil {
			return nil, ErrNoDatabase
		}
		return db, nil
	}
}

// RunFrom is Run on the handle src returns at the time of the call.
func RunFrom(ctx context.Context, src Source, body func(ctx context.Context, tx *sql.Tx) error) error {
	db, err := src()
	if err != nil {
		return fmt.Errorf("cannot use the controller database: %w", err)
	}
	return Run(ctx, db, body)
}

// MissingTable reports whether err says a table does not exist, e.g.
// after the handle moved to a freshly bootstrapped cluster: a user that
// remembered creating its schema should create it again. SQLite reports
// it with the generic code SQLITE_ERROR, so the message tells it apart.
func MissingTable(err error) bool {
	var de dqdriver.Error
	return errors.As(err, &de) && de.Code&0xff == sqliteError && strings.HasPrefix(de.Message, "no such table")
}

// Table runs transactions for a store that keeps its rows in tables created
// by one DDL script. The script runs on first use and again whenever a
// transaction finds a table missing: the source may then point at a freshly
// bootstrapped cluster that has never seen it.
type Table struct {
	src     Source
	name    string
	ddl     string
	created atomic.Bool
}

// NewTable returns a Table whose tables, called name in errors, are
// created by the idempotent script ddl (CREATE ... IF NOT EXISTS).
func NewTable(src Source, name, ddl string) *Table {
	return &Table{src: src, name: name, ddl: ddl}
}

// Ensure creates the tables unless this Table knows they exist.
func (t *Table) Ensure(ctx context.Context) error {
	if t.created.Load() {
		return nil
	}
	err := t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, t.ddl)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot create %s: %w", t.name, err)
	}
	t.created.Store(true)
	return nil
}

// Run is RunFrom on the Table's source; a missing table makes the next
// Ensure create the tables again.
func (t *Table) Run(ctx context.Context, body func(ctx context.Context, tx *sql.Tx) error) error {
	err := RunFrom(ctx, t.src, body)
	if MissingTable(err) {
		t.created.Store(false)
	}
	return err
}

// Run runs body in an explicit transaction and commits it, retrying the
// whole transaction on transient errors (busy, lost connection, leader
// change) with a bounded exponential backoff until ctx ends. body must be
// idempotent and must use ctx for its statements. An error returned by
// body that is not transient is returned at once (after a rollback).
func Run(ctx context.Context, db *sql.DB, body func(ctx context.Context, tx *sql.Tx) error) error {
	if _, ok := ctx.Deadline(); !ok {
		// Without quorum go-dqlite waits forever: refuse to.
		return errors.New("cannot run a database transaction without a deadline")
	}
	backoff := FirstBackoff
	var err error
	start, attempt := time.Now(), 0
	if o := observerFrom(ctx); o != nil {
		defer func() { o.Transaction(attempt, time.Since(start), err) }()
	}
	for attempt = 1; ; attempt++ {
		err = once(ctx, db, body)
		if StaleConn(err) {
			Flush(db)
		}
		if err == nil || !Transient(err) || attempt >= MaxAttempts {
			err = plain(err)
			return err
		}
		select {
		case <-ctx.Done():
			err = fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, MaxBackoff)
	}
}

// plain hides the stack trace go-dqlite's errors carry (github.com/pkg/errors):
// log/slog formats error values with %+v, which prints it line by line.
func plain(err error) error {
	if _, ok := err.(fmt.Formatter); ok {
		return fmt.Errorf("%w", err)
	}
	return err
}

// Flush closes the idle connections of db, so that the next transaction
// dials the current leader. Connections in use are not affected; one that
// comes back broken is flushed by its own user's error.
func Flush(db *sql.DB) {
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(IdleConns)
}

// StaleConn reports whether err says that the connection itself is
// unusable (its server closed it or went away) or reaches a node that does
// not lead any more: the pool may hold more connections like it.
func StaleConn(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var de dqdriver.Error
	if errors.As(err, &de) {
		// SQLite answered: the connection works.
		return false
	}
	return brokenConn(err) || notLeader(err)
}

// brokenConn reports whether err is a connection that failed: go-dqlite's
// driver turns network errors and a lost leadership into driver.ErrBadConn
// (canonical/go-dqlite: driver/driver.go, driverError), and a server that
// closed the connection mid-request surfaces as io.EOF.
func brokenConn(err error) bool {
	var opErr *net.OpError
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &opErr) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// notLeader reports whether err is a node refusing a request because it
// does not lead. Only the driver maps that code to driver.ErrBadConn; the
// client package's errors carry the code in an internal type, so its text
// is all there is to go by.
func notLeader(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "not leader") || strings.Contains(msg, "leadership lost")
}

func once(ctx context.Context, db *sql.DB, body func(context.Context, *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := body(ctx, tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Busy reports whether err is SQLITE_BUSY ("database is locked", or one of
// its extended codes): Dqlite answers a second concurrent writer with it at
// once, and the writer must retry.
func Busy(err error) bool {
	var de dqdriver.Error
	return errors.As(err, &de) && de.Code&0xff == dqdriver.ErrBusy
}

// Transient reports whether err may go away by re-running the transaction:
// SQLITE_BUSY (and its extended codes), a lost or refused connection, a
// leader change, no leader at all. A context error is not transient (the
// caller's deadline is what bounds the retries).
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var de dqdriver.Error
	if errors.As(err, &de) {
		return Busy(err)
	}
	return brokenConn(err) || notLeader(err) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, dqdriver.ErrNoAvailableLeader) || errors.Is(err, syscall.ECONNREFUSED)
}

// Strings runs a query of one text column in tx and returns its values.
func Strings(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]string, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
