package singular_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/controlplane/lease"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/dqlitetest"
	"github.com/juju/dqlite-controller/workload/internal/testwait"
)

// Short durations for tests: the rules are the same as with the defaults,
// only scaled down. The margin is generous relative to the duration so a
// loaded machine does not eat it.
var short = singular.Options{
	Duration:       1500 * time.Millisecond,
	ExtendInterval: 250 * time.Millisecond,
	Margin:         600 * time.Millisecond,
	RequestTimeout: 250 * time.Millisecond,
	RetryInterval:  50 * time.Millisecond,
	PollInterval:   100 * time.Millisecond,
	RestartDelay:   50 * time.Millisecond,
}

// events is the shared, DB-independent log of single-instance work: the
// order of its entries is the order things happened.
type events struct {
	mu  sync.Mutex
	log []event
}

type event struct {
	who  string
	kind string // "start" or "stop"
}

func (e *events) add(who, kind string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, event{who, kind})
}

func (e *events) snapshot() []event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]event(nil), e.log...)
}

// worker records when it starts and stops.
func (e *events) worker(who string) singular.Worker {
	return singular.WorkerFunc(func(ctx context.Context, _ lease.Token) error {
		e.add(who, "start")
		<-ctx.Done()
		e.add(who, "stop")
		return nil
	})
}

// checkNoOverlap fails if two controllers' work ever overlapped: between a
// start and its stop no other controller may start.
func checkNoOverlap(t *testing.T, log []event) {
	t.Helper()
	running := ""
	for i, ev := range log {
		switch ev.kind {
		case "start":
			if running != "" {
				t.Fatalf("event %d: %s started while %s was still running; log %v", i, ev.who, running, log)
			}
			running = ev.who
		case "stop":
			if running != ev.who {
				t.Fatalf("event %d: %s stopped but %q was running; log %v", i, ev.who, running, log)
			}
			running = ""
		}
	}
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// controller is one Singular running on its own database handle.
type controller struct {
	name   string
	s      *singular.Singular
	db     *sql.DB
	cancel context.CancelFunc
	done   chan error
}

func startController(t *testing.T, n *dqlitetest.Node, name string, claimer singular.Claimer, ev *events) *controller {
	t.Helper()
	db := n.OpenDB(t)
	if claimer == nil {
		claimer = lease.New(db)
	}
	o := short
	o.Holder = name
	o.Workers = map[string]singular.Worker{"recorder": ev.worker(name)}
	o.Log = testLog(t).With("controller", name)
	s, err := singular.New(claimer, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &controller{name: name, s: s, db: db, cancel: cancel, done: make(chan error, 1)}
	go func() { c.done <- s.Run(ctx) }()
	t.Cleanup(c.stop)
	return c
}

func (c *controller) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	<-c.done
	c.cancel = nil
}

func newNode(t *testing.T) *dqlitetest.Node {
	n := dqlitetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	defer cancel()
	if err := lease.New(n.DB).EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func holders(cs ...*controller) []*controller {
	var out []*controller
	for _, c := range cs {
		if c.s.Check() {
			out = append(out, c)
		}
	}
	return out
}

// Exactly one of two controllers holds the lease and works.
func TestSingular_ExactlyOneHolds(t *testing.T) {
	n := newNode(t)
	ev := &events{}
	a := startController(t, n, "controller-0", nil, ev)
	b := startController(t, n, "controller-1", nil, ev)
	testwait.For(t, "a holder", func() bool { return len(holders(a, b)) > 0 })
	// Through several extension rounds, never two holders.
	for i := 0; i < 100; i++ {
		if h := holders(a, b); len(h) != 1 {
			t.Fatalf("%d holders after %d polls, want exactly 1", len(h), i)
		}
		time.Sleep(10 * time.Millisecond)
	}
	h := holders(a, b)[0]
	testwait.For(t, "the holder's worker to start", func() bool { return len(ev.snapshot()) == 1 })
	if log := ev.snapshot(); log[0] != (event{h.name, "start"}) {
		t.Fatalf("work log %v, want one start by the holder %s", log, h.name)
	}
	st := h.s.Status()
	if !st.Holding || st.Holder != h.name || st.LocalDeadline.IsZero() || !st.LocalDeadline.Before(time.Now().Add(short.Duration)) {
		t.Fatalf("holder status %+v", st)
	}
	other := a
	if h == a {
		other = b
	}
	if st := other.s.Status(); st.Holding || st.Holder != h.name {
		t.Fatalf("non-holder status %+v, want not holding, holder %s", st, h.name)
	}
	a.stop()
	b.stop()
	checkNoOverlap(t, ev.snapshot())
}

// hangingClaimer passes calls to the real store until cut, then blocks
// every call until its context ends, as a controller without quorum sees.
type hangingClaimer struct {
	store *lease.Store
	cut   atomic.Bool
}

func (h *hangingClaimer) Claim(ctx context.Context, ns, name, holder string, d time.Duration) (lease.Lease, error) {
	if h.cut.Load() {
		<-ctx.Done()
		return lease.Lease{}, ctx.Err()
	}
	return h.store.Claim(ctx, ns, name, holder, d)
}

func (h *hangingClaimer) Revoke(ctx context.Context, ns, name, holder string) error {
	if h.cut.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return h.store.Revoke(ctx, ns, name, holder)
}

// A holder cut off stops its work before another starts.
func TestSingular_HolderCutOff(t *testing.T) {
	for _, mode := range []string{"closed-database", "hanging-requests"} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			ev := &events{}
			hang := map[string]*hangingClaimer{}
			start := func(name string) *controller {
				var c singular.Claimer
				if mode == "hanging-requests" {
					h := &hangingClaimer{store: lease.New(n.OpenDB(t))}
					hang[name] = h
					c = h
				}
				return startController(t, n, name, c, ev)
			}
			a, b := start("controller-0"), start("controller-1")
			testwait.For(t, "a holder", func() bool { return len(holders(a, b)) == 1 })
			testwait.For(t, "the holder's work to start", func() bool { return len(ev.snapshot()) == 1 })
			holder, other := a, b
			if b.s.Check() {
				holder, other = b, a
			}
			// Cut the holder off from the database.
			if mode == "closed-database" {
				holder.db.Close()
			} else {
				hang[holder.name].cut.Store(true)
			}
			testwait.For(t, "the other controller's work to start", func() bool {
				for _, e := range ev.snapshot() {
					if e == (event{other.name, "start"}) {
						return true
					}
				}
				return false
			})
			if holder.s.Check() {
				t.Fatalf("cut-off %s still raises its flag after %s took over", holder.name, other.name)
			}
			want := []event{{holder.name, "start"}, {holder.name, "stop"}, {other.name, "start"}}
			got := ev.snapshot()
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("work log %v, want %v (the cut-off holder stops before the other starts)", got, want)
			}
			checkNoOverlap(t, got)
		})
	}
}

func TestSingular_GracefulStopHandsOverBeforeExpiry(t *testing.T) {
	n := newNode(t)
	store := lease.New(n.DB)
	ev := &events{}
	a := startController(t, n, "controller-0", nil, ev)
	testwait.For(t, "controller-0 to hold", a.s.Check)
	b := startController(t, n, "controller-1", nil, ev)
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	defer cancel()
	old, ok, err := store.Get(ctx, lease.NamespaceSingularController, singular.DefaultName)
	if err != nil || !ok {
		t.Fatalf("no lease row: %v", err)
	}
	a.stop() // revokes after its worker stopped
	testwait.For(t, "controller-1 to hold", b.s.Check)
	l, _, err := store.Get(ctx, lease.NamespaceSingularController, singular.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	if l.Holder != "controller-1" || !l.Start.Before(old.Expiry.Add(short.ExtendInterval)) {
		t.Fatalf("lease %+v: controller-1 did not take over soon after the revoke (old expiry %v)", l, old.Expiry)
	}
	b.stop()
	got := ev.snapshot()
	want := []event{{"controller-0", "start"}, {"controller-0", "stop"}, {"controller-1", "start"}, {"controller-1", "stop"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("work log %v, want %v", got, want)
	}
}

func TestSingular_FailingWorkerIsRestartedWhileHolding(t *testing.T) {
	n := newNode(t)
	var runs atomic.Int32
	o := short
	o.Holder = "controller-0"
	o.Log = testLog(t)
	o.Workers = map[string]singular.Worker{"flaky": singular.WorkerFunc(func(ctx context.Context, _ lease.Token) error {
		runs.Add(1)
		return errors.New("boom")
	})}
	s, err := singular.New(lease.New(n.DB), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	testwait.For(t, "the worker to be restarted", func() bool { return runs.Load() >= 3 })
	cancel()
	<-done
	if s.Check() {
		t.Fatal("flag still up after Run returned")
	}
}

func TestSingular_WatchSignalsFlagChanges(t *testing.T) {
	n := newNode(t)
	o := short
	o.Holder = "controller-0"
	s, err := singular.New(lease.New(n.DB), o)
	if err != nil {
		t.Fatal(err)
	}
	up, changed := s.Watch()
	if up {
		t.Fatal("flag up before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-changed:
	case <-time.After(dqlitetest.Patience):
		t.Fatal("no change signalled when the lease was claimed")
	}
	up, changed = s.Watch()
	if !up {
		t.Fatal("flag not up after the change")
	}
	cancel()
	<-done
	select {
	case <-changed:
	default:
		t.Fatal("no change signalled when Run stopped")
	}
}

func TestNew_RejectsUnsafeDurations(t *testing.T) {
	for _, o := range []singular.Options{
		{},
		{Holder: "c", Duration: time.Second, Margin: time.Second},
		{Holder: "c", Duration: 6 * time.Second, Margin: time.Second, ExtendInterval: 3 * time.Second},
	} {
		if _, err := singular.New(nil, o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
	if _, err := singular.New(nil, singular.Options{Holder: "c"}); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
}

// fakeClock fires After channels when the test advances it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	return ch
}

func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	var keep []waiter
	sort.Slice(c.waiters, func(i, j int) bool { return c.waiters[i].at.Before(c.waiters[j].at) })
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
}

// Periodic runs at once, then every interval, and survives errors.
func TestPeriodic_Schedule(t *testing.T) {
	clock := &fakeClock{now: time.Unix(0, 0)}
	calls := make(chan int, 10)
	var n int
	p := singular.Periodic{Name: "test", Interval: time.Minute, Clock: clock, Func: func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("periodic call without a deadline")
		}
		n++
		calls <- n
		return errors.New("transient")
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx, lease.Token{}) }()
	if got := <-calls; got != 1 {
		t.Fatalf("first call %d", got)
	}
	for i := 2; i <= 3; i++ {
		testwait.For(t, "the periodic wait", func() bool { return clock.pending() == 1 })
		select {
		case <-calls:
			t.Fatal("called before the interval passed")
		default:
		}
		clock.advance(time.Minute)
		if got := <-calls; got != i {
			t.Fatalf("call %d, want %d", got, i)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// TestSingular_HolderOnLeaderDies: the holder that also hosts the Dqlite
// leader dies, and another takes over without overlap. It kills (stops without hand-over, and cuts off) the controller that both
// holds the lease and hosts the Dqlite leader of a 3-node cluster: the
// survivors elect a new Dqlite leader, whose clock then judges the expiry,
// and exactly one of them takes over, after the dead holder stopped its
// work.
func TestSingular_HolderOnLeaderDies(t *testing.T) {
	nodes := dqlitetest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	defer cancel()
	leaderAddr, err := nodes[0].LeaderAddress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := slices.IndexFunc(nodes, func(n *dqlitetest.Node) bool { return n.App.Address() == leaderAddr })
	if leader < 0 {
		t.Fatalf("leader %s is none of the nodes", leaderAddr)
	}
	ev := &events{}
	cut := &hangingClaimer{store: lease.New(nodes[leader].DB)}
	doomed := startController(t, nodes[leader], fmt.Sprintf("controller-%d", leader), cut, ev)
	testwait.For(t, "the controller on the Dqlite leader to hold", doomed.s.Check)
	var survivors []*controller
	for i, n := range nodes {
		if i != leader {
			survivors = append(survivors, startController(t, n, fmt.Sprintf("controller-%d", i), nil, ev))
		}
	}
	testwait.For(t, "the holder's work to start", func() bool { return len(ev.snapshot()) == 1 })

	cut.cut.Store(true)
	nodes[leader].Close()

	testwait.For(t, "a survivor to take over", func() bool { return len(holders(survivors...)) > 0 })
	// Let a few extension rounds pass under the new Dqlite leader.
	time.Sleep(3 * short.ExtendInterval)
	if h := holders(survivors...); len(h) != 1 {
		t.Fatalf("%d survivors hold the lease, want exactly 1", len(h))
	}
	if doomed.s.Check() {
		t.Fatal("the dead holder still raises its flag")
	}
	got := ev.snapshot()
	newHolder := holders(survivors...)[0].name
	want := []event{{doomed.name, "start"}, {doomed.name, "stop"}, {newHolder, "start"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("work log %v, want %v", got, want)
	}
	checkNoOverlap(t, got)
}
