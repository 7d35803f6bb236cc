package jepsen

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// Bank parameters (jepsen.dqlite bank.clj: 8 accounts, transfers up to 10;
// negative balances allowed).
const (
	Accounts       = 8
	InitialBalance = 100
	MaxTransfer    = 10
)

// Verdict is the checkers' result for one phase.
type Verdict struct {
	Phase      string
	Valid      bool
	Violations []string
	// Figures.
	OK, Failed, Unknown int
	// ByWorkload counts ok/fail/info per workload.
	ByWorkload map[string][3]int
	// LongestWriteOutage is the longest time without an acknowledged
	// write after the first one, up to the clients' last completion.
	LongestWriteOutage time.Duration
	// Register is porcupine's answer ("Ok", "Illegal", "Unknown").
	Register porcupine.CheckResult
	// RegisterInfo is kept to draw a visualization of a violation.
	RegisterInfo porcupine.LinearizationInfo
}

func (v *Verdict) violate(format string, args ...any) {
	v.Valid = false
	if len(v.Violations) < 50 {
		v.Violations = append(v.Violations, fmt.Sprintf(format, args...))
	}
}

// Check runs every checker on one phase's operations (including its final
// reads).
func Check(phase string, ops []Op, registerTimeout time.Duration) Verdict {
	v := Verdict{Phase: phase, Valid: true, ByWorkload: map[string][3]int{}}
	var mine []Op
	for _, o := range ops {
		if o.Phase == phase {
			mine = append(mine, o)
		}
	}
	for _, o := range mine {
		c := v.ByWorkload[o.Workload]
		switch o.Outcome {
		case OK:
			v.OK++
			c[0]++
		case Fail:
			v.Failed++
			c[1]++
		default:
			v.Unknown++
			c[2]++
		}
		v.ByWorkload[o.Workload] = c
	}
	v.LongestWriteOutage = longestWriteOutage(mine)
	checkSet(&v, mine)
	checkBank(&v, mine)
	checkRegister(&v, mine, registerTimeout)
	return v
}

// longestWriteOutage is the longest time without an acknowledged write
// while the clients ran: between two acknowledged writes, and from the
// last one to the clients' last completion (a cluster that stopped taking
// writes for good counts until the end).
func longestWriteOutage(ops []Op) time.Duration {
	var done []int64
	var end int64
	for _, o := range ops {
		if o.F == "final-read" {
			continue
		}
		end = max(end, o.Complete)
		if o.IsWrite() && o.Outcome == OK {
			done = append(done, o.Complete)
		}
	}
	if len(done) == 0 {
		return 0
	}
	slices.Sort(done)
	longest := end - done[len(done)-1]
	for i := 1; i < len(done); i++ {
		longest = max(longest, done[i]-done[i-1])
	}
	return time.Duration(longest)
}

// checkSet: every acknowledged add is present exactly once in the final
// read; a failed add is absent; an indeterminate one is present at most
// once; nothing is present that nobody added (canonical/jepsen.dqlite
// set.clj checks set-full; a set cannot see duplicates, so the table has
// no unique key and the read counts rows).
func checkSet(v *Verdict, ops []Op) {
	outcome := map[int64]Outcome{}
	var final *Op
	for i, o := range ops {
		if o.Workload != Set {
			continue
		}
		switch o.F {
		case "add":
			outcome[o.Value] = o.Outcome
		case "final-read":
			if o.Outcome == OK {
				final = &ops[i]
			}
		}
	}
	if len(outcome) == 0 {
		return
	}
	if final == nil {
		v.violate("set: no final read succeeded")
		return
	}
	count := map[int64]int{}
	for _, x := range final.Values {
		count[x]++
	}
	var lost, dup, failedPresent, phantom []int64
	for x, oc := range outcome {
		n := count[x]
		switch {
		case oc == OK && n == 0:
			lost = append(lost, x)
		case n > 1:
			dup = append(dup, x)
		case oc == Fail && n > 0:
			failedPresent = append(failedPresent, x)
		}
	}
	for x := range count {
		if _, ok := outcome[x]; !ok {
			phantom = append(phantom, x)
		}
	}
	for _, l := range []struct {
		what string
		xs   []int64
	}{
		{"acknowledged adds lost", lost},
		{"adds applied more than once", dup},
		{"adds reported failed but present", failedPresent},
		{"elements nobody added", phantom},
	} {
		if len(l.xs) > 0 {
			slices.Sort(l.xs)
			v.violate("set: %d %s: %v", len(l.xs), l.what, head(l.xs, 20))
		}
	}
}

func head(xs []int64, n int) []int64 {
	if len(xs) > n {
		return xs[:n]
	}
	return xs
}

// checkBank: every successful read (and the final one) sees all accounts
// and the initial total (canonical/jepsen.dqlite bank.clj).
func checkBank(v *Verdict, ops []Op) {
	const total = Accounts * InitialBalance
	reads := 0
	for _, o := range ops {
		if o.Workload != Bank || (o.F != "read" && o.F != "final-read") || o.Outcome != OK {
			continue
		}
		reads++
		var sum int64
		for _, b := range o.Values {
			sum += b
		}
		if len(o.Values) != Accounts || sum != total {
			v.violate("bank: read on %s at %.3fs saw %d accounts totalling %d, want %d totalling %d: %v",
				o.Node, float64(o.Complete)/1e9, len(o.Values), sum, Accounts, total, o.Values)
		}
	}
	if reads == 0 && hasWorkload(ops, Bank) {
		v.violate("bank: no read succeeded")
	}
}

func hasWorkload(ops []Op, w string) bool {
	for _, o := range ops {
		if o.Workload == w {
			return true
		}
	}
	return false
}

// registerInput is a porcupine input: a write of Value or a read.
type registerInput struct {
	Key   int
	Write bool
	Value int64
}

// RegisterModel is a set of independent integer registers, initially 0.
var RegisterModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(registerInput).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]int, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		in := input.(registerInput)
		if in.Write {
			return true, in.Value
		}
		return output.(int64) == state.(int64), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(registerInput)
		if in.Write {
			return fmt.Sprintf("k%d := %d", in.Key, in.Value)
		}
		return fmt.Sprintf("k%d -> %d", in.Key, output.(int64))
	},
}

// RegisterOperations turns the register operations into porcupine's: a
// failed write never happened and is left out, an indeterminate write may
// take effect until the end of time, an indeterminate or failed read
// tells nothing and is left out.
func RegisterOperations(ops []Op) []porcupine.Operation {
	var out []porcupine.Operation
	for _, o := range ops {
		if o.Workload != Register {
			continue
		}
		in := registerInput{Key: o.Key, Write: o.F == "write", Value: o.Value}
		switch {
		case in.Write && o.Outcome == OK:
			out = append(out, porcupine.Operation{ClientId: o.Process, Input: in, Call: o.Invoke, Output: int64(0), Return: o.Complete})
		case in.Write && o.Outcome == Info:
			out = append(out, porcupine.Operation{ClientId: o.Process, Input: in, Call: o.Invoke, Output: int64(0), Return: math.MaxInt64})
		case !in.Write && o.Outcome == OK:
			out = append(out, porcupine.Operation{ClientId: o.Process, Input: in, Call: o.Invoke, Output: o.Value, Return: o.Complete})
		}
	}
	return out
}

func checkRegister(v *Verdict, ops []Op, timeout time.Duration) {
	hist := RegisterOperations(ops)
	if len(hist) == 0 {
		return
	}
	res, info := porcupine.CheckOperationsVerbose(RegisterModel, hist, timeout)
	v.Register, v.RegisterInfo = res, info
	if res == porcupine.Illegal {
		v.violate("register: the history of %d operations is not linearizable", len(hist))
	}
}
