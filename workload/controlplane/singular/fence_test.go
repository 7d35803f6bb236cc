package singular_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/internal/testwait"
)

// skewedClaimer makes the database clock look ahead of the local one by
// skew (what a leader with a stepped clock shows), and can make the
// database report a different tenure from the real one.
type skewedClaimer struct {
	store      *lease.Store
	skew       atomic.Int64 // nanoseconds
	tenureBump atomic.Int64
}

func (c *skewedClaimer) Claim(ctx context.Context, ns, name, holder string, d time.Duration) (lease.Lease, error) {
	l, err := c.store.Claim(ctx, ns, name, holder, d)
	l.ReadAt = l.ReadAt.Add(time.Duration(c.skew.Load()))
	l.Tenure += c.tenureBump.Load()
	return l, err
}

func (c *skewedClaimer) Revoke(ctx context.Context, ns, name, holder string) error {
	return c.store.Revoke(ctx, ns, name, holder)
}

// tokens records the tokens workers were started with.
type tokens struct {
	mu   sync.Mutex
	seen []lease.Token
}

func (k *tokens) worker() singular.Worker {
	return singular.WorkerFunc(func(ctx context.Context, tok lease.Token) error {
		k.mu.Lock()
		k.seen = append(k.seen, tok)
		k.mu.Unlock()
		<-ctx.Done()
		return nil
	})
}

func (k *tokens) snapshot() []lease.Token {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]lease.Token(nil), k.seen...)
}

func runSingular(t *testing.T, c singular.Claimer, o singular.Options) *singular.Singular {
	t.Helper()
	s, err := singular.New(c, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// Workers get the token of their tenure and restart when it changes.
func TestSingular_WorkersGetTenureToken(t *testing.T) {
	n := newNode(t)
	c := &skewedClaimer{store: lease.New(n.DB)}
	k := &tokens{}
	o := short
	o.Holder = "controller-0"
	o.Workers = map[string]singular.Worker{"w": k.worker()}
	o.Log = testLog(t)
	s := runSingular(t, c, o)
	testwait.For(t, "the worker to start", func() bool { return len(k.snapshot()) == 1 })
	first := k.snapshot()[0]
	if first.Holder != "controller-0" || first.Tenure <= 0 || first.Namespace != lease.NamespaceSingularController {
		t.Fatalf("worker token = %+v; want controller-0's tenure", first)
	}
	if st := s.Status(); st.Tenure != first.Tenure {
		t.Fatalf("status tenure %d, worker's %d", st.Tenure, first.Tenure)
	}
	// The database reports another tenure (the lease expired by its
	// clock and was claimed afresh): the workers' token is void.
	c.tenureBump.Store(1000)
	testwait.For(t, "the worker to restart with the new tenure", func() bool {
		seen := k.snapshot()
		return len(seen) >= 2 && seen[len(seen)-1].Tenure == first.Tenure+1000
	})
}

func TestSingular_RefusesToHoldWhileTheClocksDisagree(t *testing.T) {
	n := newNode(t)
	c := &skewedClaimer{store: lease.New(n.DB)}
	c.skew.Store(int64(time.Second)) // MaxClockSkew is 600ms/4 = 150ms
	k := &tokens{}
	o := short
	o.Holder = "controller-0"
	o.Workers = map[string]singular.Worker{"w": k.worker()}
	o.Log = testLog(t)
	s := runSingular(t, c, o)
	testwait.For(t, "the refusal in the status", func() bool {
		return strings.Contains(s.Status().LastError, "clock")
	})
	if st := s.Status(); st.Holding || st.ClockOffset < 900*time.Millisecond {
		t.Fatalf("status %+v; want not holding with the offset shown", st)
	}
	// It stopped extending: the lease lapses so that a controller whose
	// clock agrees can take it.
	other := lease.New(n.OpenDB(t))
	testwait.For(t, "the lease to be free for another controller", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := other.Claim(ctx, lease.NamespaceSingularController, singular.DefaultName, "controller-1", 300*time.Millisecond)
		return err == nil
	})
	if len(k.snapshot()) != 0 {
		t.Fatalf("workers ran while the clocks disagreed: %v", k.snapshot())
	}
	// The clocks agree again: it holds again.
	c.skew.Store(0)
	testwait.For(t, "the worker to start once the clocks agree", func() bool { return len(k.snapshot()) == 1 })
}

// TestSingular_RestartedRunWaitsForThePreviousRunsWorkers: a process
// stops its Singular while a worker ignores cancellation, and starts a
// new one with the same holder name (so the same tenure): the new run
// holds the lease but starts no worker until the old worker returns.
func TestSingular_RestartedRunWaitsForThePreviousRunsWorkers(t *testing.T) {
	n := newNode(t)
	var baton singular.Baton
	var running, overlaps atomic.Int32
	release := make(chan struct{})
	stuck := singular.WorkerFunc(func(ctx context.Context, _ lease.Token) error {
		if running.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer running.Add(-1)
		<-release // deaf to ctx
		return nil
	})
	started := make(chan struct{}, 1)
	polite := singular.WorkerFunc(func(ctx context.Context, _ lease.Token) error {
		if running.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer running.Add(-1)
		started <- struct{}{}
		<-ctx.Done()
		return nil
	})
	o := short
	o.Holder = "controller-0"
	o.Baton = &baton
	o.StopTimeout = 100 * time.Millisecond
	o.Log = testLog(t)
	o.Workers = map[string]singular.Worker{"w": stuck}
	first, err := singular.New(lease.New(n.DB), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	testwait.For(t, "the first run's worker", func() bool { return running.Load() == 1 })
	cancel()
	<-done // gave up waiting for the worker after StopTimeout

	o.Workers = map[string]singular.Worker{"w": polite}
	second := runSingular(t, lease.New(n.DB), o)
	testwait.For(t, "the second run to hold", second.Check)
	select {
	case <-started:
		t.Fatal("the second run started its worker while the first run's still ran")
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the second run never started its worker after the first run's returned")
	}
	if overlaps.Load() != 0 {
		t.Fatalf("%d overlapping worker starts", overlaps.Load())
	}
}

// The view is the last answered claim, aged by the local clock.
func TestSingular_ViewAgesLastClaim(t *testing.T) {
	n := newNode(t)
	o := short
	o.Holder = "controller-0"
	o.Log = testLog(t)
	s, err := singular.New(lease.New(n.DB), o)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.View(); ok {
		t.Fatal("a view before any claim")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testwait.For(t, "the lease", s.Check)
	l, age, ok := s.View()
	if !ok || l.Holder != "controller-0" || l.Tenure <= 0 || l.Expired() || age < 0 || age > o.Duration {
		t.Fatalf("view of the holder = %+v age %v ok %v", l, age, ok)
	}
	// A non-holder's view names the holder, from its refused claims.
	other := runSingular(t, lease.New(n.OpenDB(t)), func() singular.Options { p := o; p.Holder = "controller-1"; return p }())
	testwait.For(t, "the other controller's view", func() bool {
		l, _, ok := other.View()
		return ok && l.Holder == "controller-0" && !l.Expired()
	})
	// After a graceful stop (revoke), the holder's view has no holder.
	cancel()
	<-done
	if l, _, ok := s.View(); !ok || l.Holder != "" {
		t.Fatalf("view after the revoke = %+v ok %v; want no holder", l, ok)
	}
}
