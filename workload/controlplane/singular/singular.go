// Package singular runs a controller's single-instance workers only while
// this controller holds the singular-controller lease.
//
// Every controller runs a Singular. It claims the lease, extends it well
// before half its duration has passed, and raises a flag while, and only
// while, it holds the lease by a local, conservative measure: the flag
// stays up until
//
//	local deadline = send time of the last successful claim
//	                 + the remaining validity the database reported
//	                 − Margin
//
// which is always before the expiry the database will apply, because the
// database measured the remaining validity after the request was sent.
// When the deadline passes without a successful extension (no quorum, a
// partition, a dead database handle), the flag drops and the workers'
// contexts are cancelled, Margin before any other controller can claim
// the lease. Margin must cover the time the workers need to stop plus the
// clock skew between Dqlite nodes (a new Dqlite leader's clock decides
// expiry).
//
// # Fencing
//
// A cancelled context is not enough: a holder paused past its expiry
// (SIGSTOP, a frozen VM) wakes up with its workers half-way through a
// write. So each worker gets the lease's fencing token (lease.Token: the
// holder and the number of its tenure) and asserts it inside the
// transaction of every write it makes (Token.Assert); the database then
// refuses a write of a tenure that is over. A claim that returns a
// different tenure from the one the running workers have (the lease
// expired by the database's clock and was claimed afresh) stops them and
// starts them again with the new token.
//
// Successive Singulars of one process that share a Baton never run
// workers at the same time: a new Singular starts its workers only once
// every worker of the previous one has returned, however long that
// takes. (They use the same holder name, so the database alone cannot
// tell their workers apart while the tenure lasts.)
//
// # Clocks
//
// The database clock is the clock of the Dqlite leader that runs the
// claim: every start and expiry is written with SQLite's now on that
// leader, and each answer carries the leader's now at the read
// (lease.Lease.ReadAt). The holder compares it with its own wall clock:
// the leader's now must lie within MaxClockSkew (default Margin/4) of the
// local interval [request sent, answer received]. If it does not, the
// controller drops the flag (or gives back a lease it just claimed
// without raising it) and does not claim again for a lease duration, so
// that another controller whose clock agrees takes over.
// The local deadline itself is measured as a duration on the local
// monotonic clock, so a constant offset does not move it; the check
// matters when the clock steps, or when leadership moves to a Dqlite node
// whose clock is ahead, which makes the lease expire earlier by the
// difference: every controller measures its offset against each leader in
// turn (holders and non-holders, shown in Status), a holder notices a new
// leader's offset at its next extension, and the remaining margin
// absorbs it until then. Writes that assert the token stay safe whatever
// the clocks do.
package singular

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/juju/dqlite-controller/workload/controlplane/lease"
)

// Defaults. controllerd runs Dqlite with WithNetworkLatency(20ms), where a
// leader kill -9 costs ~0.64 s of write unavailability (docs/dqlite-behaviour.md "Failover");
// with go-dqlite's default latency it is ~6.4 s.
const (
	// DefaultDuration is the lease duration. A holder that dies hard is
	// replaced 4-6 s later (Duration minus the time since its last
	// extension), 10x faster than Juju's 1 min.
	DefaultDuration = 6 * time.Second
	// DefaultExtendInterval is how often the holder extends: a third of
	// the duration, so that after one failed extension there is still a
	// second chance before half the duration has passed. The holder keeps
	// the flag through Duration−Margin−ExtendInterval ≈ 3 s of database
	// unavailability: a Dqlite leader failover (0.64 s) does not move the
	// lease, a lost quorum does.
	DefaultExtendInterval = 2 * time.Second
	// DefaultMargin is how much earlier than the database's expiry the
	// holder stops its workers: time to stop plus inter-node clock skew
	// (NTP keeps it to milliseconds; 1 s is generous).
	DefaultMargin = time.Second
	// DefaultRequestTimeout bounds each claim request: a hung request
	// never delays the next attempt by more than this, and the flag drops
	// on time regardless (it is driven by a timer, not by the request).
	DefaultRequestTimeout = 2 * time.Second
	// DefaultRetryInterval is the wait after a failed (not refused)
	// request before trying again.
	DefaultRetryInterval = 250 * time.Millisecond
	// DefaultPollInterval is the longest a non-holder waits between
	// claims while the lease is held: it retries right after the expiry
	// the database reported, or sooner, so that a lease revoked by a
	// holder stopping gracefully is taken within this interval. A refused
	// claim writes nothing; two non-holders cost four cheap requests per
	// second.
	DefaultPollInterval = 500 * time.Millisecond
	// DefaultRestartDelay is the wait before restarting a worker that
	// returned an error while the flag is still up.
	DefaultRestartDelay = time.Second
	// DefaultStopTimeout bounds the wait for workers on shutdown; the
	// lease is revoked (a graceful, immediate hand-over) only if they all
	// stopped in time.
	DefaultStopTimeout = 10 * time.Second
	// DefaultMaxClockSkewFraction: MaxClockSkew defaults to this
	// fraction of Margin, leaving the rest of the margin for the
	// workers to stop.
	DefaultMaxClockSkewFraction = 4
	// DefaultName is the lease name in the singular-controller namespace:
	// the controller as a whole (Juju uses the controller's tag).
	DefaultName = "controller"
)

// Claimer is the part of the lease store a Singular uses (*lease.Store).
type Claimer interface {
	Claim(ctx context.Context, namespace, name, holder string, d time.Duration) (lease.Lease, error)
	Revoke(ctx context.Context, namespace, name, holder string) error
}

// Clock is the local clock: it measures the local deadline only, never a
// lease's validity (that is the database's).
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Worker is a single-instance worker. Run must return soon after ctx is
// cancelled (well within Margin). tok is the fencing token of the tenure
// the worker runs in: every database write it makes asserts it in the
// write's own transaction (tok.Assert).
type Worker interface {
	Run(ctx context.Context, tok lease.Token) error
}

// WorkerFunc makes a function a Worker.
type WorkerFunc func(ctx context.Context, tok lease.Token) error

// Run calls f.
func (f WorkerFunc) Run(ctx context.Context, tok lease.Token) error { return f(ctx, tok) }

// Baton keeps the worker groups of successive Singulars in one process
// from overlapping: a Singular starts its workers only when the workers
// of every earlier Singular sharing the Baton have returned. The zero
// Baton is ready to use; it must not be copied after first use.
type Baton struct {
	mu   sync.Mutex
	busy <-chan struct{} // closed when the group holding the baton is done
}

// take gives the baton to a group that is done when done is closed, or,
// when another group still has it, returns a channel closed when that
// group is done.
func (b *Baton) take(done <-chan struct{}) (wait <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.busy != nil {
		select {
		case <-b.busy:
		default:
			return b.busy
		}
	}
	b.busy = done
	return nil
}

// Options configure a Singular. Zero durations take the defaults.
type Options struct {
	// Holder names this controller in the lease, e.g. "controller-0".
	Holder string
	// Namespace defaults to lease.NamespaceSingularController, Name to
	// DefaultName.
	Namespace string
	Name      string

	Duration       time.Duration
	ExtendInterval time.Duration
	Margin         time.Duration
	RequestTimeout time.Duration
	RetryInterval  time.Duration
	PollInterval   time.Duration
	RestartDelay   time.Duration
	StopTimeout    time.Duration
	// MaxClockSkew is the largest disagreement between the local clock
	// and the database clock with which this controller holds the lease
	// (default Margin/DefaultMaxClockSkewFraction; see the package doc).
	MaxClockSkew time.Duration

	// Baton is shared by the Singulars a process runs one after another
	// (nil: this Singular's own).
	Baton *Baton

	// Workers run while the flag is up, keyed by a name for the log.
	Workers map[string]Worker

	Clock Clock
	Log   *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.Holder == "" {
		return errors.New("no lease holder name")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.Namespace == "" {
		o.Namespace = lease.NamespaceSingularController
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	def(&o.Duration, DefaultDuration)
	def(&o.ExtendInterval, DefaultExtendInterval)
	def(&o.Margin, DefaultMargin)
	def(&o.RequestTimeout, DefaultRequestTimeout)
	def(&o.RetryInterval, DefaultRetryInterval)
	def(&o.PollInterval, DefaultPollInterval)
	def(&o.RestartDelay, DefaultRestartDelay)
	def(&o.StopTimeout, DefaultStopTimeout)
	def(&o.MaxClockSkew, o.Margin/DefaultMaxClockSkewFraction)
	if o.Baton == nil {
		o.Baton = &Baton{}
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.MaxClockSkew < 0 || o.MaxClockSkew >= o.Margin:
		return fmt.Errorf("maximum clock skew %v is not within margin %v", o.MaxClockSkew, o.Margin)
	case o.Margin >= o.Duration:
		return fmt.Errorf("margin %v is not shorter than lease duration %v", o.Margin, o.Duration)
	case o.ExtendInterval >= (o.Duration-o.Margin)/2:
		// Extend before half of the local validity has passed, so one
		// failed extension does not drop the flag.
		return fmt.Errorf("extend interval %v is not shorter than half of duration %v minus margin %v",
			o.ExtendInterval, o.Duration, o.Margin)
	}
	return nil
}

// Status is what a status display shows.
type Status struct {
	// Holding: this controller holds the lease (the flag is up).
	Holding bool `json:"holding"`
	// Holder is the holder last seen in the database ("" if vacant or
	// never read), Expiry its database-time expiry.
	Holder string    `json:"holder"`
	Expiry time.Time `json:"expiry"`
	// LocalDeadline is when this controller drops the flag unless it
	// extends first (zero when not holding).
	LocalDeadline time.Time `json:"local-deadline"`
	// Tenure is the tenure of the running workers (0 when not holding).
	Tenure int64 `json:"tenure,omitempty"`
	// ClockOffset is how far the database clock was outside the local
	// interval of the last answered claim (positive: the database is
	// ahead), 0 within it.
	ClockOffset time.Duration `json:"clock-offset"`
	// LastError is the last failed claim, "" after a success.
	LastError string `json:"last-error,omitempty"`
}

// Singular is the singular worker and its flag.
type Singular struct {
	claimer Claimer
	o       Options

	mu      sync.Mutex
	holding bool
	changed chan struct{} // closed and replaced on every flag change
	status  Status
	// view is the lease row of the last answered claim, received at
	// viewAt by the local clock; viewOK is false before the first.
	view   lease.Lease
	viewAt time.Time
	viewOK bool
}

// View returns the lease row as the last answered claim (this
// controller's, successful or refused) returned it, with Remaining
// reduced by the local time elapsed since, so that Expired is current;
// age is that elapsed time. ok is false before any claim was answered.
// It costs no database request: serve status and API reads from it. It
// is at most an extend interval old on the holder and a poll interval
// old elsewhere while the database answers.
func (s *Singular) View() (l lease.Lease, age time.Duration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.viewOK {
		return lease.Lease{}, 0, false
	}
	age = max(s.o.Clock.Now().Sub(s.viewAt), 0)
	l = s.view
	l.Remaining -= age
	return l, age, true
}

// New returns a Singular; call Run to start it.
func New(c Claimer, o Options) (*Singular, error) {
	if err := o.setDefaults(); err != nil {
		return nil, fmt.Errorf("cannot configure singular worker: %w", err)
	}
	o.Log = o.Log.With("lease", o.Namespace+"/"+o.Name, "holder", o.Holder)
	return &Singular{claimer: c, o: o, changed: make(chan struct{})}, nil
}

// Check reports whether this controller holds the lease now.
func (s *Singular) Check() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holding
}

// Watch returns the flag and a channel that is closed at its next change.
func (s *Singular) Watch() (holding bool, changed <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holding, s.changed
}

// Status returns the current status.
func (s *Singular) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Holding = s.holding
	if !s.holding {
		st.LocalDeadline = time.Time{}
		st.Tenure = 0
	}
	return st
}

func (s *Singular) setFlag(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holding == v {
		return
	}
	s.holding = v
	close(s.changed)
	s.changed = make(chan struct{})
}

type claimResult struct {
	sent time.Time
	l    lease.Lease
	err  error
}

// Run claims and keeps the lease, runs the workers while it holds it and
// returns when ctx is done, after stopping the workers and, if they all
// stopped, revoking the lease so another controller takes over at once.
func (s *Singular) Run(ctx context.Context) error {
	o := s.o
	clock := o.Clock
	var (
		deadline   time.Time // local deadline while holding
		next       = clock.Now()
		inflight   bool
		results    = make(chan claimResult, 1)
		group      *workerGroup // workers of the current or last tenure
		wantStart  bool         // start workers once the last group stopped
		stopWarned bool
		tok        lease.Token     // the tenure while holding
		batonWait  <-chan struct{} // an earlier Singular's workers still run
	)
	lower := func(why string) {
		if !s.Check() {
			return
		}
		s.setFlag(false)
		o.Log.Info("singular lease no longer held, stopping single-instance workers", "reason", why)
		wantStart = false
		if group != nil {
			group.cancel()
		}
	}
	for {
		now := clock.Now()
		if s.Check() && !now.Before(deadline) {
			lower("local deadline passed without a successful extension")
		}
		if group != nil && group.stopped() {
			group = nil
			stopWarned = false
		}
		if wantStart && group == nil && s.Check() {
			g := newWorkerGroup(ctx)
			if batonWait = o.Baton.take(g.done); batonWait == nil {
				wantStart = false
				group = g
				g.start(o, tok)
			} else {
				g.cancel()
				o.Log.Warn("single-instance workers of an earlier run still running; waiting for them before starting")
			}
		}
		if group != nil && !s.Check() && !stopWarned && now.After(deadline) && now.Sub(deadline) > o.Margin {
			stopWarned = true
			o.Log.Warn("single-instance workers still running after the lease could have been taken over")
		}
		if !inflight && !now.Before(next) {
			inflight = true
			sent := clock.Now()
			go func() {
				cctx, cancel := context.WithTimeout(ctx, o.RequestTimeout)
				defer cancel()
				l, err := s.claimer.Claim(cctx, o.Namespace, o.Name, o.Holder, o.Duration)
				results <- claimResult{sent: sent, l: l, err: err}
			}()
		}

		// Sleep until the next thing to do.
		wake := time.Duration(-1)
		consider := func(t time.Time) {
			d := max(t.Sub(now), 0)
			if wake < 0 || d < wake {
				wake = d
			}
		}
		if s.Check() {
			consider(deadline)
		}
		if !inflight {
			consider(next)
		}
		var timer <-chan time.Time
		if wake >= 0 {
			timer = clock.After(wake)
		}
		var groupDone <-chan struct{}
		if group != nil {
			groupDone = group.done
		}
		if !wantStart {
			batonWait = nil
		}

		select {
		case <-ctx.Done():
			lower("shutting down")
			return s.shutdown(inflight, results, group)
		case <-timer:
		case <-groupDone:
		case <-batonWait:
		case r := <-results:
			inflight = false
			now := clock.Now()
			switch {
			case r.err == nil:
				until := r.l.SafeUntil(r.sent, o.Margin)
				offset := clockOffset(r.sent, now, r.l.ReadAt)
				s.record(r.l, now, "", offset)
				if offset > o.MaxClockSkew || offset < -o.MaxClockSkew {
					msg := fmt.Sprintf("the local clock and the database clock disagree by %v (more than %v)", offset, o.MaxClockSkew)
					s.mu.Lock()
					s.status.LastError = msg
					s.mu.Unlock()
					o.Log.Warn("refusing to hold the singular lease", "reason", msg)
					wasHolding := s.Check()
					lower(msg)
					if !wasHolding {
						// Nothing ran under this claim: give the lease
						// back at once. A holder's workers are still
						// stopping, so its lease is left to expire
						// instead (Margin before anyone can claim).
						rctx, cancel := context.WithTimeout(ctx, o.RequestTimeout)
						if err := s.claimer.Revoke(rctx, o.Namespace, o.Name, o.Holder); err != nil {
							o.Log.Warn("cannot give back the singular lease; it will expire", "err", err)
						}
						cancel()
					}
					// Stop claiming for a lease duration, so that a
					// controller whose clock agrees takes over.
					next = now.Add(max(r.l.Remaining, 0) + o.Duration)
					break
				}
				if s.Check() && r.l.Tenure != tok.Tenure {
					// The database ended the tenure the workers run in
					// (it expired by the database's clock before the
					// local deadline): their token is void.
					lower(fmt.Sprintf("the database began tenure %d while the workers ran in tenure %d", r.l.Tenure, tok.Tenure))
				}
				next = r.sent.Add(o.ExtendInterval)
				if !until.After(now) {
					// The answer came too late to rely on; try again now.
					next = now
					break
				}
				deadline = until
				if !s.Check() {
					tok = r.l.Token()
					s.mu.Lock()
					s.status.Tenure = tok.Tenure
					s.mu.Unlock()
					s.setFlag(true)
					o.Log.Info("singular lease claimed, starting single-instance workers",
						"expiry", r.l.Expiry, "local-deadline", until, "tenure", tok.Tenure)
					wantStart = true
				}
				s.setDeadline(deadline)
			case errors.Is(r.err, lease.ErrHeld):
				s.record(r.l, now, "", clockOffset(r.sent, now, r.l.ReadAt))
				// Someone else holds it: we cannot (and must not) act.
				lower("held by " + r.l.Holder)
				// Try again right after it expires (by the database's
				// measure), but at least every PollInterval, so a
				// revoked lease is picked up soon.
				next = now.Add(min(max(r.l.Remaining, 0)+10*time.Millisecond, o.PollInterval))
			default:
				s.mu.Lock()
				first := s.status.LastError == ""
				s.status.LastError = r.err.Error()
				s.mu.Unlock()
				// Once per outage at Warn: retries come every
				// RetryInterval.
				level := slog.LevelDebug
				if first {
					level = slog.LevelWarn
				}
				o.Log.Log(ctx, level, "cannot claim singular lease", "err", r.err, "holding", s.Check())
				next = now.Add(o.RetryInterval)
			}
		}
	}
}

// clockOffset is how far the database's time db lies outside the local
// interval [sent, received], by the wall clock (positive: the database is
// ahead); 0 inside it or when db is unknown.
func clockOffset(sent, received, db time.Time) time.Duration {
	if db.IsZero() {
		return 0
	}
	// The database's time has millisecond resolution.
	sent, received = sent.Round(0).Truncate(time.Millisecond), received.Round(0)
	switch {
	case db.Before(sent):
		return db.Sub(sent)
	case db.After(received):
		return db.Sub(received)
	}
	return 0
}

func (s *Singular) record(l lease.Lease, at time.Time, lastErr string, offset time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view, s.viewAt, s.viewOK = l, at, true
	s.status.ClockOffset = offset
	s.status.Holder = l.Holder
	if l.Expired() {
		s.status.Holder = ""
	}
	s.status.Expiry = l.Expiry
	s.status.LastError = lastErr
}

func (s *Singular) setDeadline(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.LocalDeadline = t
}

func (s *Singular) shutdown(inflight bool, results chan claimResult, group *workerGroup) error {
	o := s.o
	if inflight {
		// Its context is cancelled; wait so that its outcome (possibly a
		// successful claim) is settled before the revoke below.
		<-results
	}
	stopped := true
	if group != nil {
		select {
		case <-group.done:
		case <-time.After(o.StopTimeout):
			stopped = false
			o.Log.Warn("single-instance workers did not stop; leaving the lease to expire")
		}
	}
	if stopped {
		ctx, cancel := context.WithTimeout(context.Background(), o.RequestTimeout)
		defer cancel()
		if err := s.claimer.Revoke(ctx, o.Namespace, o.Name, o.Holder); err != nil {
			o.Log.Warn("cannot revoke singular lease on shutdown; it will expire", "err", err)
		} else {
			s.mu.Lock()
			if s.status.Holder == o.Holder {
				s.status.Holder, s.status.Expiry = "", time.Time{}
			}
			if s.view.Holder == o.Holder {
				// Revoked: the row is gone.
				s.view = lease.Lease{Namespace: o.Namespace, Name: o.Name}
				s.viewAt = o.Clock.Now()
			}
			s.mu.Unlock()
		}
	}
	return nil
}

type workerGroup struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newWorkerGroup(parent context.Context) *workerGroup {
	ctx, cancel := context.WithCancel(parent)
	return &workerGroup{ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

func (g *workerGroup) stopped() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// start runs the workers with tok until g is cancelled; g.done is closed
// when all have returned.
func (g *workerGroup) start(o Options, tok lease.Token) {
	ctx := g.ctx
	var wg sync.WaitGroup
	for _, name := range slices.Sorted(maps.Keys(o.Workers)) {
		w := o.Workers[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				err := w.Run(ctx, tok)
				if ctx.Err() != nil {
					return
				}
				o.Log.Warn("single-instance worker stopped; restarting", "worker", name, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-o.Clock.After(o.RestartDelay):
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(g.done)
	}()
}

// Periodic is a Worker that calls Func at once and then every Interval
// until its context is cancelled; an error is logged and does not stop
// it. Each call gets a context with a deadline (Timeout, default
// Interval), as every Dqlite call needs one. Use it for single-instance
// housekeeping that is safe to repeat and to overlap (Func gets no
// token), e.g. lease.Store.ExpireLeases to keep the lease table small.
type Periodic struct {
	Name     string
	Interval time.Duration
	Timeout  time.Duration
	Func     func(ctx context.Context) error
	Clock    Clock
	Log      *slog.Logger
}

// Run implements Worker.
func (p Periodic) Run(ctx context.Context, _ lease.Token) error {
	if p.Interval <= 0 {
		return fmt.Errorf("cannot run %s: interval %v is not positive", p.Name, p.Interval)
	}
	clock := p.Clock
	if clock == nil {
		clock = realClock{}
	}
	log := p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = p.Interval
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := p.Func(cctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Warn("periodic single-instance task failed", "task", p.Name, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-clock.After(p.Interval):
		}
	}
}
