package apiaddr

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
)

// DefaultPollInterval is how often a Watcher re-reads the addresses: the
// database has no change feed, and agents should follow a control-plane
// change within a second or two.
const DefaultPollInterval = 500 * time.Millisecond

// DefaultPollTimeout bounds each read.
const DefaultPollTimeout = 5 * time.Second

// Source is where a Watcher reads the lists (*Store).
type Source interface {
	Lists(ctx context.Context) (apiwire.Lists, error)
}

// Watcher polls a Source and lets long-poll requests wait for a change.
type Watcher struct {
	src      Source
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	cur     apiwire.Lists
	valid   bool
	changed chan struct{}
}

// NewWatcher returns a watcher polling src every interval (0 takes
// DefaultPollInterval). Call Run.
func NewWatcher(src Source, interval time.Duration, log *slog.Logger) *Watcher {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{src: src, interval: interval, log: log, changed: make(chan struct{})}
}

// Run polls until ctx is done. Read errors are logged; the last good lists
// stay current.
func (w *Watcher) Run(ctx context.Context) error {
	failing := false
	for {
		rctx, cancel := context.WithTimeout(ctx, DefaultPollTimeout)
		l, err := w.src.Lists(rctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				w.log.Warn("cannot read API addresses; serving the last known lists", "err", err)
			}
			failing = true
		case err == nil:
			failing = false
			w.set(l)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(w.interval):
		}
	}
}

func (w *Watcher) set(l apiwire.Lists) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.valid && w.cur.Version == l.Version {
		return
	}
	w.cur, w.valid = l, true
	close(w.changed)
	w.changed = make(chan struct{})
}

// Current returns the current lists; ok is false before the first read.
func (w *Watcher) Current() (l apiwire.Lists, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur, w.valid
}

// Wait returns the lists as soon as their version differs from version
// (at once if it already does; "" matches nothing once the first read is
// done), or the current lists and ctx's error when ctx ends first: a long
// poll.
func (w *Watcher) Wait(ctx context.Context, version string) (apiwire.Lists, error) {
	for {
		w.mu.Lock()
		cur, valid, changed := w.cur, w.valid, w.changed
		w.mu.Unlock()
		if valid && cur.Version != version {
			return cur, nil
		}
		select {
		case <-ctx.Done():
			return cur, ctx.Err()
		case <-changed:
		}
	}
}
