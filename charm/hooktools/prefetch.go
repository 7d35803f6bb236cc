package hooktools

import (
	"context"
	"strings"
	"sync"
	"time"
)

// PrefetchTimeout bounds a prefetched call.
const PrefetchTimeout = 30 * time.Second

// Prefetch is a Runner that starts a fixed set of calls concurrently when
// it is made, and answers each of them from that result the first time
// the charm makes exactly that call; every other call, and a repeat, runs
// as usual through the next Runner. A hook makes its calls one after the
// other, so those that do not depend on each other cost one round instead
// of several.
//
// Only calls without side effects whose answer cannot change while the
// hook runs belong in the set: config-get, relation-ids and network-get
// (Juju answers them from the hook's context; a change fires another
// hook), the shipped binary's version. Never is-leader (leadership may
// move during a hook), relation-get of this unit (relation-set changes
// it), systemctl or controllerd status (the hook changes them).
type Prefetch struct {
	next    Runner
	cancel  context.CancelFunc
	mu      sync.Mutex
	pending map[string]*prefetched
}

type prefetched struct {
	done chan struct{}
	out  []byte
	err  error
}

func callKey(name string, args []string) string {
	return name + "\x00" + strings.Join(args, "\x00")
}

// NewPrefetch starts calls (each a name and its arguments) through next.
func NewPrefetch(next Runner, calls ...[]string) *Prefetch {
	ctx, cancel := context.WithTimeout(context.Background(), PrefetchTimeout)
	p := &Prefetch{next: next, cancel: cancel, pending: map[string]*prefetched{}}
	for _, c := range calls {
		if len(c) == 0 {
			continue
		}
		r := &prefetched{done: make(chan struct{})}
		p.pending[callKey(c[0], c[1:])] = r
		go func(c []string) {
			defer close(r.done)
			r.out, r.err = next.Run(ctx, c[0], c[1:]...)
		}(c)
	}
	return p
}

// Run implements Runner.
func (p *Prefetch) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	key := callKey(name, args)
	p.mu.Lock()
	r := p.pending[key]
	delete(p.pending, key)
	p.mu.Unlock()
	if r == nil {
		return p.next.Run(ctx, name, args...)
	}
	select {
	case <-r.done:
		return r.out, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close stops the prefetched calls nobody asked for.
func (p *Prefetch) Close() { p.cancel() }
