// Package lease is a lease store in the controller database.
//
// A lease is (namespace, name) held by one holder until an expiry. Time is
// always the database's: every start, expiry and remaining validity is
// computed by SQLite's clock on the Dqlite leader inside the statement that
// writes or reads it, never from this node's clock, so all controllers
// judge expiry by one clock.
//
// Unlike Juju 4 (docs/juju.md "Leases"), an expired lease never blocks a claim:
// a claim succeeds when there is no row, when the row has expired (judged
// in the same statement), or when the claimant already holds it. No expiry
// pass is needed for a takeover, so a hard-killed holder can never leave
// the others unable to take over. ExpireLeases exists only to keep the
// table small.
//
// # Tenures and fencing
//
// Each uninterrupted tenure of a holder has a number, taken from a counter
// row (lease_tenure) that only ever grows, so a number is never given to
// two tenures even when a lease row is deleted and claimed again. A claim
// or extension that keeps an unexpired tenure keeps its number; one that
// starts a tenure (a new holder, or the same holder after its lease
// expired) takes the next number. A Token (holder and tenure) is what a
// holder gives its single-instance workers, and a worker's write asserts
// it inside its own transaction (Token.Assert): the write commits only if
// the lease row still names that holder and tenure and has not expired by
// the database's clock. A holder that was paused past its expiry (SIGSTOP,
// a frozen VM) is thereby refused by the database itself, whatever its
// local state says when it wakes up.
//
// Every write is one explicit, idempotent transaction (package dbtx):
// re-running it after an unknown outcome (a commit cut by a leader change)
// re-reads and re-applies, and can neither grant the lease to two holders
// nor hand it to the wrong one.
package lease

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/juju/dqlite-controller/workload/dbtx"
)

// NamespaceSingularController is the namespace whose holder runs the
// controller's single-instance workers.
const NamespaceSingularController = "singular-controller"

// Errors.
var (
	// ErrHeld: the lease is held, unexpired, by another holder. The Lease
	// returned with it describes the current holder.
	ErrHeld = errors.New("lease is held by another holder")
	// ErrNotHeld: an extension or revocation by a holder that does not
	// hold the lease (it was never claimed, or someone else claimed it
	// after it expired).
	ErrNotHeld = errors.New("lease is not held by this holder")
	// ErrFenced: a write asserted a Token whose tenure is over (another
	// holder or a later tenure has the lease, or it expired).
	ErrFenced = errors.New("refused by the lease fence")
)

// timeLayout is how start and expiry are stored: UTC with milliseconds,
// fixed width, so that text comparison is time comparison.
const (
	timeLayout = "2006-01-02 15:04:05.000"
	sqlNow     = `strftime('%Y-%m-%d %H:%M:%f','now')`
)

const schema = `
CREATE TABLE IF NOT EXISTS lease (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    holder    TEXT NOT NULL,
    start     TEXT NOT NULL,
    expiry    TEXT NOT NULL,
    tenure    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX IF NOT EXISTS idx_lease_expiry ON lease (expiry);
CREATE TABLE IF NOT EXISTS lease_tenure (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    last INTEGER NOT NULL
);
INSERT INTO lease_tenure (id, last) VALUES (0, 0) ON CONFLICT (id) DO NOTHING;
`

// hasTenure and addTenure add the tenure column to a lease table created
// before tenures existed. Its rows get tenure 0, which Assert never
// accepts; the next claim or extension of such a row gives it a number,
// as if a new tenure began.
const hasTenure = `SELECT count(*) FROM pragma_table_info('lease') WHERE name = 'tenure'`

const addTenure = `ALTER TABLE lease ADD COLUMN tenure INTEGER NOT NULL DEFAULT 0`

// nextTenure is the number a new tenure takes. A kept tenure keeps its
// number unless it is 0 (a row from before tenures existed).
const nextTenure = `(SELECT last + 1 FROM lease_tenure WHERE id = 0)`

// bumpTenure makes the counter cover the row's tenure.
const bumpTenure = `UPDATE lease_tenure SET last = max(last,
    coalesce((SELECT tenure FROM lease WHERE namespace = ? AND name = ?), 0)) WHERE id = 0`

// Lease is a lease as the database saw it.
type Lease struct {
	Namespace string
	Name      string
	Holder    string
	// Start and Expiry are database (leader) times, UTC. Start is when the
	// current holder's uninterrupted tenure began.
	Start  time.Time
	Expiry time.Time
	// Tenure numbers the holder's uninterrupted tenure (see the package
	// doc); it changes when Start does (and once more for a row from
	// before tenures, whose tenure is 0).
	Tenure int64
	// Remaining is Expiry minus the database's now, measured in the same
	// transaction that wrote or read the row (negative once expired). A
	// caller that noted its local time just before sending the request can
	// rely on the lease until sentAt + Remaining (see SafeUntil): the
	// database measured Remaining after that moment.
	Remaining time.Duration
	// ReadAt is the database's now when the row was read, by the clock
	// of the Dqlite leader that answered: the database clock a holder
	// compares its own with.
	ReadAt time.Time
}

// Token is the fencing token of the tenure l describes.
func (l Lease) Token() Token {
	return Token{Namespace: l.Namespace, Name: l.Name, Holder: l.Holder, Tenure: l.Tenure}
}

// Token names one tenure of one holder. Single-instance workers get it
// from the holder and assert it in every write they make.
type Token struct {
	Namespace string
	Name      string
	Holder    string
	Tenure    int64
}

// String is for logs.
func (t Token) String() string {
	return fmt.Sprintf("%s/%s held by %s (tenure %d)", t.Namespace, t.Name, t.Holder, t.Tenure)
}

// Assert checks, inside tx, that t's tenure is current: the lease row
// names t's holder and tenure and has not expired by the database's
// clock. Call it in the transaction that makes the write it guards,
// before the write; if it fails, return its error so the transaction
// rolls back. It returns an error wrapping ErrFenced when the tenure is
// over. Transactions on the controller database are serialised by the
// Dqlite leader (a transaction whose read was overtaken by another
// writer's commit fails with SQLITE_BUSY and is re-run by dbtx), so a
// write that commits with an assertion was made during t's tenure.
func (t Token) Assert(ctx context.Context, tx *sql.Tx) error {
	if t.Tenure <= 0 {
		return fmt.Errorf("%w: no tenure (%s)", ErrFenced, t)
	}
	var n int
	err := tx.QueryRowContext(ctx, `SELECT count(*) FROM lease
WHERE namespace = ? AND name = ? AND holder = ? AND tenure = ? AND expiry >= `+sqlNow,
		t.Namespace, t.Name, t.Holder, t.Tenure).Scan(&n)
	if err != nil {
		return fmt.Errorf("cannot check lease tenure: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("%w: the tenure of %s is over", ErrFenced, t)
	}
	return nil
}

// Expired reports whether the lease had expired when it was read.
func (l Lease) Expired() bool { return l.Remaining <= 0 }

// SafeUntil is the local time until which the holder may act as holder:
// sentAt (the local time taken just before the request that returned l was
// sent, not when it was answered) plus Remaining minus margin. margin
// covers the time work takes to stop and clock skew between the Dqlite
// nodes that may be leader (a new leader's clock is the one that decides
// expiry).
func (l Lease) SafeUntil(sentAt time.Time, margin time.Duration) time.Time {
	return sentAt.Add(l.Remaining - margin)
}

// Store is the lease store. It is safe for concurrent use.
type Store struct {
	t        *dbtx.Table
	migrated atomic.Bool
}

// New returns a store on db (the controller database). The table is
// created on first use; EnsureSchema does it up front.
func New(db *sql.DB) *Store {
	return NewFrom(dbtx.Fixed(db))
}

// NewFrom returns a store on whatever handle src gives at each call.
func NewFrom(src dbtx.Source) *Store {
	return &Store{t: dbtx.NewTable(src, "lease table", schema)}
}

// EnsureSchema creates the lease tables and index if they are missing,
// and adds the tenure column to a table from before tenures.
func (s *Store) EnsureSchema(ctx context.Context) error { return s.ensure(ctx) }

func (s *Store) ensure(ctx context.Context) error {
	if err := s.t.Ensure(ctx); err != nil {
		return err
	}
	if s.migrated.Load() {
		return nil
	}
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, hasTenure).Scan(&n); err != nil || n > 0 {
			return err
		}
		_, err := tx.ExecContext(ctx, addTenure)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot add the tenure column to the lease table: %w", err)
	}
	s.migrated.Store(true)
	return nil
}

func validate(namespace, name, holder string, d time.Duration, needDuration bool) error {
	switch {
	case namespace == "":
		return errors.New("empty lease namespace")
	case name == "":
		return errors.New("empty lease name")
	case holder == "":
		return errors.New("empty lease holder")
	case needDuration && d < time.Millisecond:
		return fmt.Errorf("lease duration %v is shorter than 1ms", d)
	}
	return nil
}

// modifier is the SQLite date modifier adding d.
func modifier(d time.Duration) string {
	return fmt.Sprintf("%+.3f seconds", d.Seconds())
}

// Claim takes the lease for holder for duration d, measured from the
// database's now. It succeeds when the lease has no row, when the row has
// expired (whoever held it; no expiry pass is needed), or when holder
// already holds it (then it is an extension). Otherwise it returns ErrHeld
// and the current lease.
func (s *Store) Claim(ctx context.Context, namespace, name, holder string, d time.Duration) (Lease, error) {
	if err := validate(namespace, name, holder, d, true); err != nil {
		return Lease{}, fmt.Errorf("cannot claim lease: %w", err)
	}
	if err := s.ensure(ctx); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		// One statement decides, with one "now": insert, or take over an
		// expired row, or extend our own row; a live row of another
		// holder is left alone. The start and tenure of an unexpired
		// tenure of the same holder are kept.
		_, err := tx.ExecContext(ctx, `
INSERT INTO lease (namespace, name, holder, start, expiry, tenure)
VALUES (?, ?, ?, `+sqlNow+`, strftime('%Y-%m-%d %H:%M:%f','now', ?), `+nextTenure+`)
ON CONFLICT (namespace, name) DO UPDATE SET
    start  = CASE WHEN lease.holder = excluded.holder AND lease.expiry >= excluded.start
                  THEN lease.start ELSE excluded.start END,
    tenure = CASE WHEN lease.holder = excluded.holder AND lease.expiry >= excluded.start AND lease.tenure > 0
                  THEN lease.tenure ELSE excluded.tenure END,
    holder = excluded.holder,
    expiry = excluded.expiry
WHERE lease.holder = excluded.holder OR lease.expiry < excluded.start`,
			namespace, name, holder, modifier(d))
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, bumpTenure, namespace, name); err != nil {
			return err
		}
		l, err = get(ctx, tx, namespace, name)
		return err
	})
	if err != nil {
		return Lease{}, fmt.Errorf("cannot claim lease %s/%s for %s: %w", namespace, name, holder, err)
	}
	if l.Holder != holder {
		return l, ErrHeld
	}
	return l, nil
}

// Extend extends holder's lease to d from the database's now. It fails with
// ErrNotHeld when holder does not hold the lease. A holder whose lease
// expired but was not taken by anyone may extend it: nobody else held it
// in between.
func (s *Store) Extend(ctx context.Context, namespace, name, holder string, d time.Duration) (Lease, error) {
	if err := validate(namespace, name, holder, d, true); err != nil {
		return Lease{}, fmt.Errorf("cannot extend lease: %w", err)
	}
	if err := s.ensure(ctx); err != nil {
		return Lease{}, err
	}
	var l Lease
	var found bool
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
UPDATE lease SET
    start  = CASE WHEN expiry >= `+sqlNow+` THEN start ELSE `+sqlNow+` END,
    tenure = CASE WHEN expiry >= `+sqlNow+` AND tenure > 0 THEN tenure ELSE `+nextTenure+` END,
    expiry = strftime('%Y-%m-%d %H:%M:%f','now', ?)
WHERE namespace = ? AND name = ? AND holder = ?`,
			modifier(d), namespace, name, holder)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, bumpTenure, namespace, name); err != nil {
			return err
		}
		l, err = get(ctx, tx, namespace, name)
		if errors.Is(err, sql.ErrNoRows) {
			found = false
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		return Lease{}, fmt.Errorf("cannot extend lease %s/%s for %s: %w", namespace, name, holder, err)
	}
	if !found || l.Holder != holder {
		return l, ErrNotHeld
	}
	return l, nil
}

// Revoke ends holder's lease now. Revoking a lease that holder does not
// hold (any more) is not an error: the outcome holder wants is reached,
// and a repeated Revoke after an unknown outcome must succeed.
func (s *Store) Revoke(ctx context.Context, namespace, name, holder string) error {
	if err := validate(namespace, name, holder, 0, false); err != nil {
		return fmt.Errorf("cannot revoke lease: %w", err)
	}
	if err := s.ensure(ctx); err != nil {
		return err
	}
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM lease WHERE namespace = ? AND name = ? AND holder = ?`,
			namespace, name, holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot revoke lease %s/%s of %s: %w", namespace, name, holder, err)
	}
	return nil
}

// Get returns the lease row, expired or not; ok is false when there is
// none. Check Expired (or Remaining) before treating Holder as the holder.
func (s *Store) Get(ctx context.Context, namespace, name string) (l Lease, ok bool, err error) {
	if err := s.ensure(ctx); err != nil {
		return Lease{}, false, err
	}
	err = s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		l, err = get(ctx, tx, namespace, name)
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("cannot read lease %s/%s: %w", namespace, name, err)
	}
	return l, true, nil
}

// Holder returns the current, unexpired holder, or "" when the lease is
// vacant (no row or an expired one).
func (s *Store) Holder(ctx context.Context, namespace, name string) (string, error) {
	l, ok, err := s.Get(ctx, namespace, name)
	if err != nil || !ok || l.Expired() {
		return "", err
	}
	return l.Holder, nil
}

// List returns every lease row of namespace ("" for all namespaces),
// expired ones included, ordered by namespace and name.
func (s *Store) List(ctx context.Context, namespace string) ([]Lease, error) {
	if err := s.ensure(ctx); err != nil {
		return nil, err
	}
	var out []Lease
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `
SELECT namespace, name, holder, start, expiry, tenure,
       CAST(round((julianday(expiry) - julianday('now')) * 86400000.0) AS INTEGER), `+sqlNow+`
FROM lease WHERE ? = '' OR namespace = ? ORDER BY namespace, name`, namespace, namespace)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			l, err := scan(rows)
			if err != nil {
				return err
			}
			out = append(out, l)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("cannot list leases: %w", err)
	}
	return out, nil
}

// ExpireLeases deletes expired rows and returns how many it deleted. It is
// housekeeping only: claims never wait for it. Any controller may run it.
func (s *Store) ExpireLeases(ctx context.Context) (int, error) {
	if err := s.ensure(ctx); err != nil {
		return 0, err
	}
	var n int64
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM lease WHERE expiry < `+sqlNow)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("cannot expire leases: %w", err)
	}
	return int(n), nil
}

// Now returns the database's current time (the Dqlite leader's clock).
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var text string
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT `+sqlNow).Scan(&text)
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("cannot read the database time: %w", err)
	}
	t, err := time.Parse(timeLayout, text)
	if err != nil {
		return time.Time{}, fmt.Errorf("cannot parse database time %q: %w", text, err)
	}
	return t, nil
}

type scanner interface{ Scan(...any) error }

func get(ctx context.Context, tx *sql.Tx, namespace, name string) (Lease, error) {
	return scan(tx.QueryRowContext(ctx, `
SELECT namespace, name, holder, start, expiry, tenure,
       CAST(round((julianday(expiry) - julianday('now')) * 86400000.0) AS INTEGER), `+sqlNow+`
FROM lease WHERE namespace = ? AND name = ?`, namespace, name))
}

func scan(r scanner) (Lease, error) {
	var l Lease
	var start, expiry, readAt string
	var remainingMS int64
	if err := r.Scan(&l.Namespace, &l.Name, &l.Holder, &start, &expiry, &l.Tenure, &remainingMS, &readAt); err != nil {
		return Lease{}, err
	}
	var err error
	if l.Start, err = time.Parse(timeLayout, start); err != nil {
		return Lease{}, fmt.Errorf("cannot parse lease start %q: %w", start, err)
	}
	if l.Expiry, err = time.Parse(timeLayout, expiry); err != nil {
		return Lease{}, fmt.Errorf("cannot parse lease expiry %q: %w", expiry, err)
	}
	if l.ReadAt, err = time.Parse(timeLayout, readAt); err != nil {
		return Lease{}, fmt.Errorf("cannot parse database time %q: %w", readAt, err)
	}
	l.Remaining = time.Duration(remainingMS) * time.Millisecond
	return l, nil
}
