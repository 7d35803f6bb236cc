package jepsen_test

import (
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/tests/jepsen"
)

func op(w, f string, outcome jepsen.Outcome, inv, comp int64, key int, value int64, values ...int64) jepsen.Op {
	return jepsen.Op{Phase: "p", Workload: w, F: f, Outcome: outcome, Invoke: inv, Complete: comp, Key: key, Value: value, Values: values}
}

func balances(total int64) []int64 {
	b := make([]int64, jepsen.Accounts)
	for i := range b {
		b[i] = jepsen.InitialBalance
	}
	b[0] += total - jepsen.Accounts*jepsen.InitialBalance
	return b
}

// Each checker must see the violation it exists for, and accept the
// histories a correct database may produce (indeterminate operations
// applied or not).
func TestCheck_FindsEachViolation(t *testing.T) {
	good := balances(jepsen.Accounts * jepsen.InitialBalance)
	tests := []struct {
		summary string
		ops     []jepsen.Op
		want    string // "" for valid
	}{
		{"set: acknowledged present, failed absent, indeterminate either way", []jepsen.Op{
			op("set", "add", jepsen.OK, 0, 1, 0, 1), op("set", "add", jepsen.Fail, 0, 1, 0, 2),
			op("set", "add", jepsen.Info, 0, 1, 0, 3), op("set", "add", jepsen.Info, 0, 1, 0, 4),
			op("set", "final-read", jepsen.OK, 5, 6, 0, 0, 1, 3)}, ""},
		{"set: acknowledged add lost", []jepsen.Op{
			op("set", "add", jepsen.OK, 0, 1, 0, 1), op("set", "final-read", jepsen.OK, 5, 6, 0, 0)}, "acknowledged adds lost"},
		{"set: add applied twice", []jepsen.Op{
			op("set", "add", jepsen.OK, 0, 1, 0, 1), op("set", "final-read", jepsen.OK, 5, 6, 0, 0, 1, 1)}, "more than once"},
		{"set: indeterminate add applied twice", []jepsen.Op{
			op("set", "add", jepsen.Info, 0, 1, 0, 1), op("set", "final-read", jepsen.OK, 5, 6, 0, 0, 1, 1)}, "more than once"},
		{"set: the issue's defect, an add reported failed is present", []jepsen.Op{
			op("set", "add", jepsen.Fail, 0, 1, 0, 1), op("set", "final-read", jepsen.OK, 5, 6, 0, 0, 1)}, "reported failed but present"},
		{"set: element nobody added", []jepsen.Op{
			op("set", "add", jepsen.OK, 0, 1, 0, 1), op("set", "final-read", jepsen.OK, 5, 6, 0, 0, 1, 9)}, "nobody added"},
		{"bank: constant total", []jepsen.Op{op("bank", "read", jepsen.OK, 0, 1, 0, 0, good...)}, ""},
		{"bank: total changed", []jepsen.Op{op("bank", "read", jepsen.OK, 0, 1, 0, 0, balances(790)...)}, "totalling 790"},
		{"bank: an account missing", []jepsen.Op{op("bank", "read", jepsen.OK, 0, 1, 0, 0, good[1:]...)}, "7 accounts"},
		{"register: linearizable, an indeterminate write seen late", []jepsen.Op{
			op("register", "write", jepsen.OK, 0, 10, 0, 1), op("register", "write", jepsen.Info, 20, 30, 0, 2),
			op("register", "read", jepsen.OK, 40, 50, 0, 1), op("register", "read", jepsen.OK, 60, 70, 0, 2)}, ""},
		{"register: stale read", []jepsen.Op{
			op("register", "write", jepsen.OK, 0, 10, 0, 1), op("register", "write", jepsen.OK, 20, 30, 0, 2),
			op("register", "read", jepsen.OK, 40, 50, 0, 1)}, "not linearizable"},
		{"register: a failed write seen", []jepsen.Op{
			op("register", "write", jepsen.Fail, 0, 10, 0, 1), op("register", "read", jepsen.OK, 20, 30, 0, 1)}, "not linearizable"},
	}
	for _, tt := range tests {
		v := jepsen.Check("p", tt.ops, 10*time.Second)
		got := strings.Join(v.Violations, "; ")
		switch {
		case tt.want == "" && !v.Valid:
			t.Errorf("%s: violations %s; want none", tt.summary, got)
		case tt.want != "" && (v.Valid || !strings.Contains(got, tt.want)):
			t.Errorf("%s: violations %q; want one about %q", tt.summary, got, tt.want)
		}
	}
}

func TestCheck_LongestWriteOutage(t *testing.T) {
	ops := []jepsen.Op{
		op("set", "add", jepsen.OK, 0, int64(time.Second), 0, 1),
		op("set", "add", jepsen.Fail, 0, int64(3*time.Second), 0, 2),
		op("bank", "transfer", jepsen.OK, 0, int64(5*time.Second), 0, 0),
		op("set", "add", jepsen.OK, 0, int64(6*time.Second), 0, 3),
	}
	if got := jepsen.Check("p", ops, time.Second).LongestWriteOutage; got != 4*time.Second {
		t.Fatalf("longest write outage %s, want 4s", got)
	}
	// Found in the full campaign: a cluster that took no write for the
	// last 14 minutes showed a longest outage of 5.9 s. The time from the
	// last acknowledged write to the clients' end counts.
	ops = append(ops, op("set", "add", jepsen.Fail, 0, int64(20*time.Second), 0, 4), op("set", "final-read", jepsen.OK, 0, int64(99*time.Second), 0, 0, 1, 3))
	if got := jepsen.Check("p", ops, time.Second).LongestWriteOutage; got != 14*time.Second {
		t.Fatalf("longest write outage %s with writes failing to the end, want 14s", got)
	}
}
