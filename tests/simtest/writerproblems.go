package simtest

import "time"

// WriteProblem is one insert a Writer did not get acknowledged: which unit
// it went through, when, and what `controllerd sql` said, so that a
// scenario can tell a refusal by a node it was restarting from a failure
// anywhere else.
type WriteProblem struct {
	ID   int
	Unit string
	// Unknown is set when the outcome is unknown (exit 3, no answer, or
	// cut short by Stop); otherwise the insert certainly failed (exit 1).
	Unknown    bool
	Began, End time.Time
	Err        string
}

func (w *Writer) noteProblem(id int, unit string, code int, errText string, began, end time.Time) {
	w.problems = append(w.problems, WriteProblem{ID: id, Unit: unit, Unknown: code != 1, Began: began, End: end, Err: errText})
}

// Problems lists the writer's failed and unknown inserts so far, in order.
func (w *Writer) Problems() []WriteProblem {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]WriteProblem(nil), w.problems...)
}
