package hooktools_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
)

// slowRunner answers every call after a delay and counts the calls.
type slowRunner struct {
	delay time.Duration
	calls atomic.Int32
	mu    sync.Mutex
	seen  []string
}

func (r *slowRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.calls.Add(1)
	r.mu.Lock()
	r.seen = append(r.seen, name+" "+strings.Join(args, " "))
	r.mu.Unlock()
	select {
	case <-time.After(r.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return []byte(name + " " + strings.Join(args, " ")), nil
}

// A prefetched call is answered once from the prefetch; a repeat and any
// other call run as usual.
func TestPrefetch_AnswersEachPrefetchedCallOnce(t *testing.T) {
	next := &slowRunner{delay: 10 * time.Millisecond}
	p := hooktools.NewPrefetch(next, []string{"config-get", "--format=json"}, []string{"relation-ids", "db-cluster", "--format=json"})
	defer p.Close()
	ctx := context.Background()
	for _, c := range [][]string{
		{"relation-ids", "db-cluster", "--format=json"},
		{"config-get", "--format=json"},
		{"config-get", "--format=json"},
		{"is-leader", "--format=json"},
	} {
		out, err := p.Run(ctx, c[0], c[1:]...)
		if err != nil || string(out) != strings.Join(c, " ") {
			t.Fatalf("%v: %q, %v", c, out, err)
		}
	}
	if n := next.calls.Load(); n != 4 {
		t.Fatalf("%d calls reached the tools (%v), want 4: two prefetched, a repeat, another", n, next.seen)
	}
}
