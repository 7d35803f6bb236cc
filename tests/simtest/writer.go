package simtest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
)

// Writer inserts unique rows into a table through `controllerd sql` on
// the units it is given, one after another, for scenarios that must show
// that an operation (a rotation, a rolling restart) loses no write and
// blocks writes for no longer than an election. Every insert's outcome is
// kept: acknowledged (exit 0), failed (exit 1: certainly not applied) or
// unknown (exit 3, or no answer).
type Writer struct {
	m      *sim.Model
	table  string
	units  []string
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	next    int
	acked   []int
	failed  []int
	unknown []int
	lastAck time.Time
	// longest is the longest time between two acknowledged writes (or
	// from the start to the first).
	longest      time.Duration
	longestUntil time.Time
	lastErr      string
	problems     []WriteProblem // writerproblems.go
}

// WriterReport is what a writer saw.
type WriterReport struct {
	Acked, Failed, Unknown int
	// LongestOutage is the longest time without an acknowledged write.
	LongestOutage time.Duration
	// OutageEnded is when that longest outage ended.
	OutageEnded time.Time
	LastError   string
}

func (r WriterReport) String() string {
	return fmt.Sprintf("%d acknowledged, %d failed, %d unknown; longest time without an acknowledged write %s",
		r.Acked, r.Failed, r.Unknown, r.LongestOutage.Round(10*time.Millisecond))
}

// StartWriter creates table (id INTEGER, unit TEXT) through the first of
// units and starts writing; Stop ends it.
func StartWriter(t *testing.T, m *sim.Model, table string, units []string) *Writer {
	t.Helper()
	MustSQL(t, m, units[0], "CREATE TABLE IF NOT EXISTS "+table+" (id INTEGER, unit TEXT)")
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{m: m, table: table, units: units, cancel: cancel, done: make(chan struct{}), lastAck: time.Now()}
	go w.run(ctx)
	t.Cleanup(func() { w.Stop() })
	return w
}

func (w *Writer) run(ctx context.Context) {
	defer close(w.done)
	for i := 0; ctx.Err() == nil; i++ {
		unit := w.units[i%len(w.units)]
		w.mu.Lock()
		w.next++
		id := w.next
		w.mu.Unlock()
		began := time.Now()
		code, errText := w.insert(ctx, unit, id)
		if ctx.Err() != nil && code != 0 {
			// Cut short by Stop: the outcome is unknown.
			code = -1
		}
		now := time.Now()
		w.mu.Lock()
		switch code {
		case 0:
			w.acked = append(w.acked, id)
			if gap := now.Sub(w.lastAck); gap > w.longest {
				w.longest, w.longestUntil = gap, now
			}
			w.lastAck = now
		case 1:
			w.failed = append(w.failed, id)
			w.lastErr = unit + ": " + errText
			w.noteProblem(id, unit, code, errText, began, now)
		default:
			w.unknown = append(w.unknown, id)
			w.lastErr = unit + ": " + errText
			w.noteProblem(id, unit, code, errText, began, now)
		}
		w.mu.Unlock()
		if code != 0 {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

func (w *Writer) insert(ctx context.Context, unit string, id int) (int, string) {
	_, code, errText := SQLExit(ctx, w.m, unit, fmt.Sprintf("INSERT INTO %s (id, unit) VALUES (%d, '%s')", w.table, id, unit))
	return code, errText
}

// SQLExit runs `controllerd sql --format=json stmt` on a unit's machine
// (within 45 s) and returns its output, its exit code (0 acknowledged, 1
// failed: certainly not applied, 3 outcome unknown; -1 when the command
// itself was cut short, also unknown) and its error text.
func SQLExit(ctx context.Context, m *sim.Model, unit, stmt string) ([]byte, int, string) {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	out, errOut, err := m.Exec(ctx, unit, probe.Controllerd(m, unit), "sql", "--format=json", stmt)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, 0, ""
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return out, ee.ExitCode(), strings.TrimSpace(string(errOut))
	}
	return out, -1, strings.TrimSpace(err.Error() + " " + string(errOut))
}

// Stop ends the writer (idempotent) and reports what it saw.
func (w *Writer) Stop() WriterReport {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return WriterReport{
		Acked: len(w.acked), Failed: len(w.failed), Unknown: len(w.unknown),
		LongestOutage: w.longest, OutageEnded: w.longestUntil, LastError: w.lastErr,
	}
}

// Check stops the writer and reads the table through unit: every
// acknowledged id must be there exactly once and no failed id at all.
func (w *Writer) Check(t *testing.T, unit string) WriterReport {
	t.Helper()
	r := w.Stop()
	res := MustSQL(t, w.m, unit, "SELECT id, count(*) FROM "+w.table+" GROUP BY id")
	seen := make(map[int]int, len(res.Rows))
	for _, row := range res.Rows {
		seen[int(row[0].(float64))] = int(row[1].(float64))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range w.acked {
		if n := seen[id]; n != 1 {
			t.Errorf("acknowledged insert %d is present %d times, want exactly once", id, n)
		}
	}
	for _, id := range w.failed {
		if n := seen[id]; n != 0 {
			t.Errorf("insert %d was reported as failed but is present %d times", id, n)
		}
	}
	t.Logf("writer: %s", r)
	return r
}
