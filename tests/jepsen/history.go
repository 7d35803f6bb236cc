// Package jepsen is a Jepsen-style fault campaign against the charm and
// controllerd on the Juju model simulator (tests/sim), modelled on
// Dqlite's own suite (canonical/jepsen.dqlite: src/jepsen/dqlite/set.clj,
// bank.clj, and a register instead of its Elle list-append). Clients on
// every machine run `controllerd sql` (the operator's path) while nemeses
// kill -9, pause, cut and one-way-drop a node at a time (the Dqlite
// leader preferred), change membership with remove-unit/add-unit, and fill
// a node's disk. Every invocation and completion goes to a history file;
// the checkers read only that history and the final reads.
package jepsen

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Outcome is how an operation completed, as its client knows it.
type Outcome string

const (
	// OK: acknowledged (exit 0).
	OK Outcome = "ok"
	// Fail: certainly not applied (exit 1: no connection was made, or the
	// database refused it before any COMMIT).
	Fail Outcome = "fail"
	// Info: indeterminate (exit 3, or the client could not tell): it may
	// or may not have been applied, and may take effect at any time
	// until the end of the history.
	Info Outcome = "info"
)

// Workload names.
const (
	Set      = "set"
	Bank     = "bank"
	Register = "register"
)

// Op is one operation of the history: its invocation and completion.
type Op struct {
	// Process is the client's process number; a client whose operation
	// ended indeterminate continues as a new process (as in Jepsen).
	Process  int    `json:"process"`
	Node     string `json:"node"`
	Workload string `json:"workload"`
	// F is add (set), transfer or read (bank), write or read (register),
	// final-read (set, bank after the faults healed).
	F string `json:"f"`
	// Value: the set element added, the register value written or read
	// (0 for a register never written; written values are positive).
	Value int64 `json:"value,omitempty"`
	Key   int   `json:"key,omitempty"`
	// From, To, Amount describe a transfer.
	From   int   `json:"from,omitempty"`
	To     int   `json:"to,omitempty"`
	Amount int64 `json:"amount,omitempty"`
	// Values are the elements of a set read or the balances of a bank
	// read (by account id).
	Values []int64 `json:"values,omitempty"`
	// Invoke and Complete are nanoseconds since the campaign began.
	Invoke   int64   `json:"invoke"`
	Complete int64   `json:"complete"`
	Outcome  Outcome `json:"outcome"`
	Exit     int     `json:"exit"`
	Error    string  `json:"error,omitempty"`
	// Phase names the cluster (e.g. "3-node"): each phase has its own
	// model and is checked on its own.
	Phase string `json:"phase"`
}

// IsWrite says whether the operation changes the database.
func (o Op) IsWrite() bool { return o.F == "add" || o.F == "transfer" || o.F == "write" }

// Fault is one nemesis event of the history.
type Fault struct {
	Phase  string `json:"phase"`
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Leader bool   `json:"leader"`
	Start  int64  `json:"start"`
	End    int64  `json:"end"`
	Note   string `json:"note,omitempty"`
}

// record is one line of the history file.
type record struct {
	Op    *Op    `json:"op,omitempty"`
	Fault *Fault `json:"fault,omitempty"`
	Seed  uint64 `json:"seed,omitempty"`
}

// History collects operations and faults and appends them, one JSON line
// each, to a file as they complete.
type History struct {
	start time.Time
	mu    sync.Mutex
	f     *os.File
	w     *bufio.Writer
	ops   []Op
	fault []Fault
}

// NewHistory creates the history file at path, starting with the seed.
func NewHistory(path string, seed uint64) (*History, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cannot create history: %w", err)
	}
	h := &History{start: time.Now(), f: f, w: bufio.NewWriter(f)}
	h.write(record{Seed: seed})
	return h, nil
}

// Now is the campaign's clock, nanoseconds since it began.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// write appends one line and flushes it, so that a campaign killed
// half-way leaves a history that can still be checked.
func (h *History) write(r record) {
	data, _ := json.Marshal(r)
	h.w.Write(append(data, '\n'))
	h.w.Flush()
}

// AddOp records a completed operation.
func (h *History) AddOp(o Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
	h.write(record{Op: &o})
}

// AddFault records a nemesis event.
func (h *History) AddFault(f Fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fault = append(h.fault, f)
	h.write(record{Fault: &f})
}

// Ops returns the operations so far.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// Faults returns the faults so far.
func (h *History) Faults() []Fault {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Fault(nil), h.fault...)
}

// Close flushes and closes the file.
func (h *History) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.w.Flush(); err != nil {
		h.f.Close()
		return err
	}
	return h.f.Close()
}

// ReadHistory reads a history file back (to re-check it).
func ReadHistory(path string) (seed uint64, ops []Op, faults []Fault, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var bad error
	for sc.Scan() {
		if bad != nil {
			// Only the last line may be cut short (a killed campaign).
			return 0, nil, nil, bad
		}
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			bad = fmt.Errorf("cannot parse history line %q: %w", sc.Text(), err)
			continue
		}
		switch {
		case r.Op != nil:
			ops = append(ops, *r.Op)
		case r.Fault != nil:
			faults = append(faults, *r.Fault)
		case r.Seed != 0:
			seed = r.Seed
		}
	}
	return seed, ops, faults, sc.Err()
}
