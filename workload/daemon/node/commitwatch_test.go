package node

import (
	"testing"
	"time"
)

// A stall counts from the later of "became leader" and "last commit", and
// not at all while another node leads.
func TestCommitWatch_StalledFor(t *testing.T) {
	t0 := time.Now()
	var w commitWatch
	if got := w.stalledFor(t0); got != 0 {
		t.Errorf("not leading: stalled %s, want 0", got)
	}
	w.leadingSince = t0
	w.committedAt = t0.Add(-time.Hour) // a commit of an earlier leadership
	if got := w.stalledFor(t0.Add(5 * time.Second)); got != 5*time.Second {
		t.Errorf("leading 5 s without a commit: stalled %s, want 5s", got)
	}
	w.committedAt = t0.Add(4 * time.Second)
	if got := w.stalledFor(t0.Add(5 * time.Second)); got != time.Second {
		t.Errorf("committed 1 s ago: stalled %s, want 1s", got)
	}
}

// The stall threshold must outlast two election timeouts and two probe
// timeouts, or a leader that is merely losing its quorum, or one slow
// probe, would count as stuck.
func TestOptions_CommitStallInvariants(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"defaults", Options{APIPort: 17070}, true},
		{"below two election timeouts", Options{APIPort: 17070, NetworkLatency: time.Second, CommitStall: 20 * time.Second}, false},
		{"below two probe timeouts", Options{APIPort: 17070, CommitProbeTimeout: 5 * time.Second, CommitStall: 8 * time.Second}, false},
		{"below the probe interval", Options{APIPort: 17070, CommitProbeInterval: 30 * time.Second}, false},
	} {
		err := tc.o.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
