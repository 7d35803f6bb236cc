// Package apidial connects to one of several API addresses with a
// staggered race, as Juju's dialWebsocketMulti does: the first address is
// tried at once, a new parallel attempt starts every Interval (Juju: 50
// ms) or as soon as every attempt in flight has failed, the first success
// wins and the other attempts are cancelled. The caller decides the order
// (agents shuffle, clients put the last good address first).
package apidial

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultInterval is the stagger between attempts (Juju's
// DialAddressInterval).
const DefaultInterval = 50 * time.Millisecond

// Clock paces the attempts.
type Clock interface {
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options tune Dial. Zero values take the defaults.
type Options struct {
	Interval time.Duration
	Clock    Clock
}

// Func connects to one address. It must give up when ctx is cancelled.
type Func[T any] func(ctx context.Context, addr string) (T, error)

// Dial tries addrs in order with staggered parallel attempts and returns
// the first connection made and its address. A connection that succeeds
// after another has won is passed to discard (may be nil) so it can be
// closed. Attempts still running when Dial returns are cancelled; Dial
// does not wait for them.
func Dial[T any](ctx context.Context, addrs []string, dial Func[T], discard func(T), o Options) (T, string, error) {
	var zero T
	addrs = dedupe(addrs)
	if len(addrs) == 0 {
		return zero, "", errors.New("cannot connect: no API addresses")
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type result struct {
		addr string
		conn T
		err  error
	}
	results := make(chan result, len(addrs))
	var mu sync.Mutex
	won := false
	start := func(addr string) {
		go func() {
			conn, err := dial(ctx, addr)
			if err == nil {
				mu.Lock()
				late := won
				won = true
				mu.Unlock()
				if late {
					if discard != nil {
						discard(conn)
					}
					return
				}
			}
			results <- result{addr, conn, err}
		}()
	}

	next, inflight := 0, 0
	var errs []error
	var tick <-chan time.Time // the next attempt's start, while one is due
	launch := func() {
		start(addrs[next])
		next++
		inflight++
		tick = nil
		if next < len(addrs) {
			tick = o.Clock.After(o.Interval)
		}
	}
	for {
		if next < len(addrs) && inflight == 0 {
			// Nothing in flight (start, or all failed): no reason to wait.
			launch()
		}
		select {
		case <-ctx.Done():
			return zero, "", fmt.Errorf("cannot connect to %v: %w", addrs, errors.Join(append(errs, ctx.Err())...))
		case <-tick:
			launch()
		case r := <-results:
			inflight--
			if r.err == nil {
				return r.conn, r.addr, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", r.addr, r.err))
			if inflight == 0 && next == len(addrs) {
				return zero, "", fmt.Errorf("cannot connect to any API address: %w", errors.Join(errs...))
			}
		}
	}
}

func dedupe(addrs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range addrs {
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
