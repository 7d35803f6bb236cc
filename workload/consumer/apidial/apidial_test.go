package apidial_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/internal/testwait"

	"github.com/juju/dqlite-controller/workload/consumer/apidial"
)

// fakeClock: the test decides when the stagger interval has passed.
type fakeClock struct {
	mu      sync.Mutex
	pending []chan time.Time
}

func (c *fakeClock) After(time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.pending = append(c.pending, ch)
	return ch
}

func (c *fakeClock) waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// fire ends every pending wait.
func (c *fakeClock) fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.pending {
		ch <- time.Time{}
	}
	c.pending = nil
}

// fakeDialer records events and lets the test decide each attempt's
// outcome.
type fakeDialer struct {
	mu      sync.Mutex
	events  []string
	outcome map[string]chan error
	// stubborn addresses ignore cancellation.
	stubborn map[string]bool
}

func newDialer(addrs ...string) *fakeDialer {
	d := &fakeDialer{outcome: map[string]chan error{}, stubborn: map[string]bool{}}
	for _, a := range addrs {
		d.outcome[a] = make(chan error, 1)
	}
	return d
}

func (d *fakeDialer) event(e string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.events = append(d.events, e)
}

func (d *fakeDialer) log() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.events...)
}

func (d *fakeDialer) dial(ctx context.Context, addr string) (string, error) {
	d.event("dial " + addr)
	done := ctx.Done()
	if d.stubborn[addr] {
		done = nil
	}
	select {
	case err := <-d.outcome[addr]:
		if err != nil {
			d.event("fail " + addr)
			return "", err
		}
		return "conn-" + addr, nil
	case <-done:
		d.event("cancel " + addr)
		return "", ctx.Err()
	}
}

func hasEvent(d *fakeDialer, e string) func() bool {
	return func() bool {
		for _, x := range d.log() {
			if x == e {
				return true
			}
		}
		return false
	}
}

type result struct {
	conn, addr string
	err        error
}

func dialAsync(d *fakeDialer, addrs []string, clock apidial.Clock, discard func(string)) chan result {
	out := make(chan result, 1)
	go func() {
		c, a, err := apidial.Dial(context.Background(), addrs, d.dial, discard, apidial.Options{Clock: clock})
		out <- result{c, a, err}
	}()
	return out
}

// Attempts start one Interval apart; the first success wins and the attempts
// still in flight are cancelled.
func TestDial_StaggeredFirstSuccessWins(t *testing.T) {
	clock := &fakeClock{}
	d := newDialer("a", "b", "c")
	res := dialAsync(d, []string{"a", "b", "c"}, clock, nil)
	testwait.For(t, "the first attempt and the stagger wait", func() bool { return hasEvent(d, "dial a")() && clock.waiting() == 1 })
	if got := d.log(); !reflect.DeepEqual(got, []string{"dial a"}) {
		t.Fatalf("before the interval passed: %v, want only the first attempt", got)
	}
	clock.fire()
	testwait.For(t, "the second attempt", hasEvent(d, "dial b"))
	d.outcome["b"] <- nil
	r := <-res
	if r.err != nil || r.addr != "b" || r.conn != "conn-b" {
		t.Fatalf("Dial = %+v, want b's connection", r)
	}
	testwait.For(t, "the losing attempt to be cancelled", hasEvent(d, "cancel a"))
	if got, want := d.log(), []string{"dial a", "dial b", "cancel a"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events %v, want %v (c never tried)", got, want)
	}
}

// When every attempt in flight has failed, the next one starts at once
// instead of waiting for the Interval.
func TestDial_NextAttemptWhenAllFailed(t *testing.T) {
	clock := &fakeClock{}
	d := newDialer("a", "b")
	d.outcome["a"] <- errors.New("refused")
	res := dialAsync(d, []string{"a", "b"}, clock, nil)
	// b starts without the clock moving.
	testwait.For(t, "the second attempt", hasEvent(d, "dial b"))
	d.outcome["b"] <- nil
	if r := <-res; r.err != nil || r.addr != "b" {
		t.Fatalf("Dial = %+v, want b", r)
	}
}

func TestDial_LateSuccessIsDiscarded(t *testing.T) {
	clock := &fakeClock{}
	d := newDialer("a", "b")
	d.stubborn["a"] = true
	discarded := make(chan string, 1)
	res := dialAsync(d, []string{"a", "b"}, clock, func(c string) { discarded <- c })
	testwait.For(t, "the stagger wait", func() bool { return clock.waiting() == 1 })
	clock.fire()
	testwait.For(t, "the second attempt", hasEvent(d, "dial b"))
	d.outcome["b"] <- nil
	if r := <-res; r.addr != "b" {
		t.Fatalf("Dial = %+v, want b", r)
	}
	d.outcome["a"] <- nil // a connects after b won
	select {
	case c := <-discarded:
		if c != "conn-a" {
			t.Fatalf("discarded %q, want conn-a", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("late connection never discarded")
	}
}

func TestDial_AllFailReportsEveryAddress(t *testing.T) {
	d := newDialer("a", "b", "c")
	for _, a := range []string{"a", "b", "c"} {
		d.outcome[a] <- fmt.Errorf("refused by %s", a)
	}
	_, _, err := apidial.Dial(context.Background(), []string{"a", "b", "a", "c"}, d.dial, nil, apidial.Options{Clock: &fakeClock{}})
	if err == nil {
		t.Fatal("no error when every address failed")
	}
	for _, a := range []string{"refused by a", "refused by b", "refused by c"} {
		if !strings.Contains(err.Error(), a) {
			t.Errorf("error %q does not mention %q", err, a)
		}
	}
	if n := strings.Count(strings.Join(d.log(), " "), "dial a"); n != 1 {
		t.Errorf("duplicate address dialled %d times", n)
	}
}

func TestDial_NoAddressesAndCancellation(t *testing.T) {
	if _, _, err := apidial.Dial(context.Background(), nil, newDialer().dial, nil, apidial.Options{}); err == nil {
		t.Error("no error without addresses")
	}
	d := newDialer("a")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		testwait.For(t, "the attempt", hasEvent(d, "dial a"))
		cancel()
	}()
	if _, _, err := apidial.Dial(ctx, []string{"a"}, d.dial, nil, apidial.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial after cancel = %v, want context.Canceled", err)
	}
}
