package lease_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/dqlitetest"
)

const ns = lease.NamespaceSingularController

func newStore(t *testing.T) (*lease.Store, *dqlitetest.Node) {
	t.Helper()
	n := dqlitetest.Start(t)
	s := lease.New(n.DB)
	if err := s.EnsureSchema(deadline(t)); err != nil {
		t.Fatal(err)
	}
	// Idempotent: a second controller starting does the same.
	if err := s.EnsureSchema(deadline(t)); err != nil {
		t.Fatal(err)
	}
	return s, n
}

func deadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	t.Cleanup(cancel)
	return ctx
}

// A vacant lease is granted for the duration, timed by the database.
func TestClaim_Vacant(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	before, err := s.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Claim(ctx, ns, "controller", "controller-0", 6*time.Second)
	if err != nil {
		t.Fatalf("claim of a vacant lease: %v", err)
	}
	after, err := s.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l.Holder != "controller-0" {
		t.Fatalf("holder = %q, want controller-0", l.Holder)
	}
	// Expiry is the database's now at the claim plus 6 s.
	if l.Expiry.Before(before.Add(6*time.Second)) || l.Expiry.After(after.Add(6*time.Second)) {
		t.Fatalf("expiry %v is not database time [%v, %v] + 6s", l.Expiry, before, after)
	}
	if l.Remaining <= 0 || l.Remaining > 6*time.Second {
		t.Fatalf("remaining %v, want in (0, 6s]", l.Remaining)
	}
	h, err := s.Holder(ctx, ns, "controller")
	if err != nil || h != "controller-0" {
		t.Fatalf("Holder = %q, %v; want controller-0", h, err)
	}
}

func TestClaim_HeldLeaseIsRefusedToAnotherHolder(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	if _, err := s.Claim(ctx, ns, "controller", "controller-0", time.Minute); err != nil {
		t.Fatal(err)
	}
	l, err := s.Claim(ctx, ns, "controller", "controller-1", time.Minute)
	if !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("second claimant: err = %v, want ErrHeld", err)
	}
	if l.Holder != "controller-0" || l.Remaining <= 0 {
		t.Fatalf("ErrHeld came with %+v, want the live lease of controller-0", l)
	}
	// Other names and namespaces are independent.
	if _, err := s.Claim(ctx, ns, "model-x", "controller-1", time.Minute); err != nil {
		t.Fatalf("claim of another name: %v", err)
	}
	if _, err := s.Claim(ctx, "application-leadership", "controller", "controller-1", time.Minute); err != nil {
		t.Fatalf("claim in another namespace: %v", err)
	}
}

func TestClaim_ByTheHolderExtendsAndKeepsTheStart(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	first, err := s.Claim(ctx, ns, "controller", "controller-0", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Claim(ctx, ns, "controller", "controller-0", time.Minute)
	if err != nil {
		t.Fatalf("re-claim by the holder: %v", err)
	}
	if !again.Start.Equal(first.Start) {
		t.Fatalf("start moved from %v to %v on a re-claim by the holder", first.Start, again.Start)
	}
	if !again.Expiry.After(first.Expiry) {
		t.Fatalf("expiry %v not after %v", again.Expiry, first.Expiry)
	}
}

func TestExtend_OnlyTheHolderMayExtend(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	if _, err := s.Extend(ctx, ns, "controller", "controller-0", time.Minute); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("extend of a never-claimed lease: err = %v, want ErrNotHeld", err)
	}
	first, err := s.Claim(ctx, ns, "controller", "controller-0", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Extend(ctx, ns, "controller", "controller-1", time.Minute); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("extend by a non-holder: err = %v, want ErrNotHeld", err)
	}
	l, err := s.Extend(ctx, ns, "controller", "controller-0", time.Minute)
	if err != nil {
		t.Fatalf("extend by the holder: %v", err)
	}
	if !l.Expiry.After(first.Expiry) || l.Remaining < 50*time.Second {
		t.Fatalf("extended lease %+v does not run a minute from now", l)
	}
	if h, _ := s.Holder(ctx, ns, "controller"); h != "controller-0" {
		t.Fatalf("holder after a refused extension by controller-1 = %q", h)
	}
}

func TestClaim_ExpiredLeaseIsTakenWithoutAnyExpiryPass(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	// controller-0 claims and then "dies": nobody extends, nobody runs
	// ExpireLeases.
	dead, err := s.Claim(ctx, ns, "controller", "controller-0", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitExpired(t, s, dead)
	l, err := s.Claim(ctx, ns, "controller", "controller-1", time.Minute)
	if err != nil {
		t.Fatalf("claim of an expired lease by another holder: %v", err)
	}
	if l.Holder != "controller-1" || !l.Start.After(dead.Start) {
		t.Fatalf("lease after takeover = %+v, want controller-1 with a new start", l)
	}
	// The dead holder cannot extend its way back in.
	if _, err := s.Extend(ctx, ns, "controller", "controller-0", time.Minute); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("extend by the former holder: err = %v, want ErrNotHeld", err)
	}
}

// An expired but untaken lease may be extended by its holder.
func TestExtend_ExpiredUntaken(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	l, err := s.Claim(ctx, ns, "controller", "controller-0", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitExpired(t, s, l)
	got, err := s.Extend(ctx, ns, "controller", "controller-0", time.Minute)
	if err != nil {
		t.Fatalf("extend of own expired, untaken lease: %v", err)
	}
	if !got.Start.After(l.Start) {
		t.Fatalf("a tenure interrupted by expiry kept its old start %v", got.Start)
	}
}

func TestRevoke_FreesTheLeaseAndIsIdempotent(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	if _, err := s.Claim(ctx, ns, "controller", "controller-0", time.Minute); err != nil {
		t.Fatal(err)
	}
	// A non-holder's revoke changes nothing.
	if err := s.Revoke(ctx, ns, "controller", "controller-1"); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Holder(ctx, ns, "controller"); h != "controller-0" {
		t.Fatalf("holder after a non-holder's revoke = %q", h)
	}
	for i := 0; i < 2; i++ {
		if err := s.Revoke(ctx, ns, "controller", "controller-0"); err != nil {
			t.Fatalf("revoke #%d: %v", i+1, err)
		}
	}
	if _, ok, err := s.Get(ctx, ns, "controller"); ok || err != nil {
		t.Fatalf("lease still present after revoke (ok=%v, err=%v)", ok, err)
	}
	if _, err := s.Claim(ctx, ns, "controller", "controller-1", time.Minute); err != nil {
		t.Fatalf("claim after revoke: %v", err)
	}
}

func TestExpireLeases_DeletesOnlyExpiredRows(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	short, err := s.Claim(ctx, ns, "short", "controller-0", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, ns, "long", "controller-0", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitExpired(t, s, short)
	n, err := s.ExpireLeases(ctx)
	if err != nil || n != 1 {
		t.Fatalf("ExpireLeases = %d, %v; want 1", n, err)
	}
	all, err := s.List(ctx, "")
	if err != nil || len(all) != 1 || all[0].Name != "long" {
		t.Fatalf("List after expiry = %+v, %v; want only the live lease", all, err)
	}
}

// TestClaim_TimeComesFromTheDatabaseNotTheLocalClock shows that nothing of
// the local clock enters the lease: the expiry stored is the database's now
// plus the duration even when the caller's clock is decades off, and the
// safe local deadline is derived from the DB-measured remaining validity
// applied to the caller's own send time.
func TestClaim_TimeComesFromTheDatabaseNotTheLocalClock(t *testing.T) {
	s, n := newStore(t)
	ctx := deadline(t)
	fakeLocal := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC) // a badly wrong node clock
	l, err := s.Claim(ctx, ns, "controller", "controller-0", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The stored expiry is DB now + 10 s: the database agrees it has 8-10 s left.
	var dbRemainingMS float64
	if err := n.DB.QueryRowContext(ctx,
		`SELECT (julianday(expiry) - julianday('now')) * 86400000.0 FROM lease WHERE name = 'controller'`).
		Scan(&dbRemainingMS); err != nil {
		t.Fatal(err)
	}
	// julianday() is a float of days: differences carry about 0.1 ms of
	// rounding, so allow 1 ms above the duration.
	if dbRemainingMS <= 0 || dbRemainingMS > 10001 {
		t.Fatalf("database sees %v ms left, want (0, 10001]", dbRemainingMS)
	}
	if l.Expiry.Year() < 2020 {
		t.Fatalf("expiry %v is not database time", l.Expiry)
	}
	safe := l.SafeUntil(fakeLocal, time.Second)
	if want := fakeLocal.Add(l.Remaining - time.Second); !safe.Equal(want) {
		t.Fatalf("SafeUntil = %v, want %v", safe, want)
	}
	if safe.Sub(fakeLocal) > 9*time.Second {
		t.Fatalf("local validity %v exceeds duration minus margin", safe.Sub(fakeLocal))
	}
}

func TestClaim_ConcurrentClaimersGetExactlyOneHolder(t *testing.T) {
	s, n := newStore(t)
	ctx := deadline(t)
	const claimers = 8
	// Each claimer uses its own connection pool, as separate controllers
	// would, so the writes really race for Dqlite's single write lock.
	stores := make([]*lease.Store, claimers)
	for i := range stores {
		stores[i] = lease.New(n.OpenDB(t))
	}
	for round := 0; round < 3; round++ {
		name := fmt.Sprintf("race-%d", round)
		var wg sync.WaitGroup
		results := make([]error, claimers)
		start := make(chan struct{})
		for i := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, results[i] = stores[i].Claim(ctx, ns, name, fmt.Sprintf("controller-%d", i), time.Minute)
			}()
		}
		close(start)
		wg.Wait()
		winners := 0
		winner := ""
		for i, err := range results {
			switch {
			case err == nil:
				winners++
				winner = fmt.Sprintf("controller-%d", i)
			case errors.Is(err, lease.ErrHeld):
			default:
				t.Fatalf("round %d claimer %d: unexpected error %v", round, i, err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d claimers were granted the lease, want exactly 1", round, winners)
		}
		if h, _ := s.Holder(ctx, ns, name); h != winner {
			t.Fatalf("round %d: database holder %q, granted to %q", round, h, winner)
		}
	}
}

func TestClaim_RejectsBadInput(t *testing.T) {
	s, _ := newStore(t)
	ctx := deadline(t)
	for _, c := range []struct{ ns, name, holder string }{{"", "n", "h"}, {"x", "", "h"}, {"x", "n", ""}} {
		if _, err := s.Claim(ctx, c.ns, c.name, c.holder, time.Second); err == nil {
			t.Errorf("claim %+v: no error", c)
		}
	}
	if _, err := s.Claim(ctx, ns, "n", "h", 0); err == nil {
		t.Error("claim with zero duration: no error")
	}
	if _, err := s.Claim(context.Background(), ns, "n", "h", time.Second); err == nil {
		t.Error("claim without a deadline: no error")
	}
}

// waitExpired polls the database until l has expired by its clock.
func waitExpired(t *testing.T, s *lease.Store, l lease.Lease) {
	t.Helper()
	ctx := deadline(t)
	for {
		now, err := s.Now(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if now.After(l.Expiry) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("lease %+v never expired", l)
		case <-time.After(l.Expiry.Sub(now) + 5*time.Millisecond):
		}
	}
}

func TestClaim_CreatesTheTableOnFirstUse(t *testing.T) {
	n := dqlitetest.Start(t)
	s := lease.New(n.DB) // no EnsureSchema
	if _, err := s.Claim(deadline(t), ns, "controller", "controller-0", time.Second); err != nil {
		t.Fatalf("claim on a fresh database: %v", err)
	}
}

// The table is re-created when the handle moves to a new cluster.
func TestNewFrom_NewCluster(t *testing.T) {
	a, b := dqlitetest.Start(t), dqlitetest.Start(t)
	var cur atomic.Pointer[sql.DB]
	cur.Store(a.DB)
	s := lease.NewFrom(func() (*sql.DB, error) { return cur.Load(), nil })
	ctx := deadline(t)
	if _, err := s.Claim(ctx, ns, "controller", "controller-0", time.Second); err != nil {
		t.Fatal(err)
	}
	// The node was wiped and bootstrapped a new cluster: no lease table.
	cur.Store(b.DB)
	var err error
	for i := 0; i < 2; i++ {
		if _, err = s.Claim(ctx, ns, "controller", "controller-0", time.Second); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("claim on the new cluster still fails: %v", err)
	}
}
