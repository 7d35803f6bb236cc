package lease_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// fencedWrite inserts a row into table fenced in one transaction that
// asserts tok first, as a single-instance worker's write does.
func fencedWrite(ctx context.Context, db *sql.DB, tok lease.Token, v string) error {
	return dbtx.Run(ctx, db, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS fenced (v TEXT PRIMARY KEY)`); err != nil {
			return err
		}
		if err := tok.Assert(ctx, tx); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO fenced (v) VALUES (?) ON CONFLICT DO NOTHING`, v)
		return err
	})
}

func TestTenure_KeptByExtensionNewOnTakeoverNeverReused(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	a1, err := s.Claim(ctx, ns, "controller", "controller-0", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a1.Tenure <= 0 {
		t.Fatalf("first tenure = %d, want > 0", a1.Tenure)
	}
	again, err := s.Claim(ctx, ns, "controller", "controller-0", time.Minute)
	if err != nil || again.Tenure != a1.Tenure || !again.Start.Equal(a1.Start) {
		t.Fatalf("extension by claim: tenure %d start %v (%v); want the kept tenure %d start %v", again.Tenure, again.Start, err, a1.Tenure, a1.Start)
	}
	ext, err := s.Extend(ctx, ns, "controller", "controller-0", time.Minute)
	if err != nil || ext.Tenure != a1.Tenure {
		t.Fatalf("Extend: tenure %d (%v); want the kept tenure %d", ext.Tenure, err, a1.Tenure)
	}
	// Revoking deletes the row; the same holder's next claim is a new
	// tenure with a new number all the same.
	if err := s.Revoke(ctx, ns, "controller", "controller-0"); err != nil {
		t.Fatal(err)
	}
	a2, err := s.Claim(ctx, ns, "controller", "controller-0", 200*time.Millisecond)
	if err != nil || a2.Tenure <= a1.Tenure {
		t.Fatalf("claim after revoke: tenure %d (%v); want more than %d", a2.Tenure, err, a1.Tenure)
	}
	// Another lease's tenures come from the same counter.
	other, err := s.Claim(ctx, ns, "other", "controller-0", time.Minute)
	if err != nil || other.Tenure <= a2.Tenure {
		t.Fatalf("tenure of another lease %d (%v); want more than %d", other.Tenure, err, a2.Tenure)
	}
	time.Sleep(300 * time.Millisecond)
	b, err := s.Claim(ctx, ns, "controller", "controller-1", time.Minute)
	if err != nil || b.Tenure <= other.Tenure {
		t.Fatalf("takeover: tenure %d (%v); want more than %d", b.Tenure, err, other.Tenure)
	}
}

func TestAssert_RefusesEveryTenureButTheCurrentOne(t *testing.T) {
	s, n := newStore(t)
	ctx := deadline(t)
	a, err := s.Claim(ctx, ns, "controller", "controller-0", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := fencedWrite(ctx, n.DB, a.Token(), "a"); err != nil {
		t.Fatalf("write under the current tenure: %v", err)
	}
	// Expired, not yet taken: refused by the database's clock alone.
	time.Sleep(400 * time.Millisecond)
	if err := fencedWrite(ctx, n.DB, a.Token(), "a-late"); !errors.Is(err, lease.ErrFenced) {
		t.Fatalf("write after expiry: %v; want ErrFenced", err)
	}
	b, err := s.Claim(ctx, ns, "controller", "controller-1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := fencedWrite(ctx, n.DB, a.Token(), "a-later"); !errors.Is(err, lease.ErrFenced) {
		t.Fatalf("write of the old holder after a takeover: %v; want ErrFenced", err)
	}
	// The same holder in an older tenure (e.g. a stuck worker of an
	// earlier run in the same process) is refused too.
	if err := s.Revoke(ctx, ns, "controller", "controller-1"); err != nil {
		t.Fatal(err)
	}
	b2, err := s.Claim(ctx, ns, "controller", "controller-1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := fencedWrite(ctx, n.DB, b.Token(), "b-old"); !errors.Is(err, lease.ErrFenced) {
		t.Fatalf("write under the holder's previous tenure: %v; want ErrFenced", err)
	}
	if err := fencedWrite(ctx, n.DB, lease.Token{Namespace: ns, Name: "controller", Holder: "controller-1"}, "zero"); !errors.Is(err, lease.ErrFenced) {
		t.Fatalf("write with a zero tenure: %v; want ErrFenced", err)
	}
	if err := fencedWrite(ctx, n.DB, b2.Token(), "b"); err != nil {
		t.Fatalf("write under the current tenure: %v", err)
	}
	var got []string
	rows, err := n.DB.QueryContext(ctx, `SELECT v FROM fenced ORDER BY v`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var v string
		rows.Scan(&v)
		got = append(got, v)
	}
	if len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("rows written = %v; want only [a b], the writes of current tenures", got)
	}
}

func TestEnsureSchema_AddsTenureToATableFromBeforeTenures(t *testing.T) {
	_, n := newStore(t)
	ctx := deadline(t)
	// The table as earlier versions created it, with a live row.
	err := dbtx.Run(ctx, n.DB, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DROP TABLE lease;
CREATE TABLE lease (namespace TEXT NOT NULL, name TEXT NOT NULL, holder TEXT NOT NULL,
    start TEXT NOT NULL, expiry TEXT NOT NULL, PRIMARY KEY (namespace, name));
INSERT INTO lease VALUES ('`+ns+`', 'controller', 'controller-0',
    strftime('%Y-%m-%d %H:%M:%f','now'), strftime('%Y-%m-%d %H:%M:%f','now', '+60 seconds'))`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	fresh := lease.New(n.DB)
	l, err := fresh.Claim(ctx, ns, "controller", "controller-0", time.Minute)
	if err != nil {
		t.Fatalf("claim on an old table: %v", err)
	}
	if l.Tenure <= 0 {
		t.Fatalf("tenure after migration = %d; want a real tenure", l.Tenure)
	}
	if err := fencedWrite(ctx, n.DB, l.Token(), "x"); err != nil {
		t.Fatalf("write under the migrated tenure: %v", err)
	}
}
