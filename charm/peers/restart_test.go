package peers_test

import (
	"slices"
	"testing"

	"github.com/juju/dqlite-controller/charm/peers"
)

func TestNextRestart(t *testing.T) {
	const (
		u0 = "dqlite-controller/0"
		u1 = "dqlite-controller/1"
		u2 = "dqlite-controller/2"
		u3 = "dqlite-controller/3"
		u9 = "dqlite-controller/9"
	)
	cases := []struct {
		summary  string
		view     peers.RestartView
		grant    string
		released string
		queue    []string
		behind   []string
	}{{
		summary: "nobody asks: no grant",
		view:    peers.RestartView{Leader: u0, Units: []string{u1, u2}},
	}, {
		summary: "the leader's own unit goes last, peers by unit number (9 after 2, not before)",
		view: peers.RestartView{Leader: u0, Units: []string{u9, u2, u1},
			Requests: map[string]string{u0: "a", u1: "b", u2: "c", u9: "d"}},
		grant: u1 + " b", queue: []string{u2, u9, u0},
	}, {
		summary: "the leader alone asking is granted",
		view:    peers.RestartView{Leader: u0, Units: []string{u1, u2}, Requests: map[string]string{u0: "a"}},
		grant:   u0 + " a",
	}, {
		summary: "a single-unit application grants its leader at once",
		view:    peers.RestartView{Leader: u0, Requests: map[string]string{u0: "a"}},
		grant:   u0 + " a",
	}, {
		summary: "the holder keeps the lock while it restarts; nobody else is granted",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2},
			Requests: map[string]string{u0: "a", u1: "b", u2: "c"}, Granted: u2 + " c"},
		grant: u2 + " c", queue: []string{u1, u0},
	}, {
		summary: "the holder released (request cleared): the next peer is granted",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2},
			Requests: map[string]string{u0: "a", u2: "c"}, Granted: u1 + " b"},
		grant: u2 + " c", released: u1, queue: []string{u0},
	}, {
		summary: "the last peer released: the leader's own turn",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2},
			Requests: map[string]string{u0: "a"}, Granted: u2 + " c"},
		grant: u0 + " a", released: u2,
	}, {
		summary:  "the leader released its own grant: the roll is over",
		view:     peers.RestartView{Leader: u0, Units: []string{u1, u2}, Granted: u0 + " a"},
		released: u0,
	}, {
		summary: "a grant to a unit that already restarted and asks again is released; it queues behind the others",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2},
			Requests: map[string]string{u1: "b2", u2: "c"}, Granted: u1 + " b"},
		grant: u2 + " c", released: u1, queue: []string{u1},
	}, {
		summary: "a grant to a unit that already restarted and asks again, alone, is renewed for the new request",
		view: peers.RestartView{Leader: u0, Units: []string{u1},
			Requests: map[string]string{u1: "b2"}, Granted: u1 + " b"},
		grant: u1 + " b2", released: u1,
	}, {
		summary: "a departed holder (no longer in relation-list) releases",
		view: peers.RestartView{Leader: u0, Units: []string{u2},
			Requests: map[string]string{u1: "b", u2: "c"}, Granted: u1 + " b"},
		grant: u2 + " c", released: u1,
	}, {
		summary: "a dying holder (departing in this hook) releases, and is not granted again",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2}, Departing: u1,
			Requests: map[string]string{u1: "b", u2: "c"}, Granted: u1 + " b"},
		grant: u2 + " c", released: u1,
	}, {
		summary: "leader change mid-roll: the new leader keeps the old leader's grant to a peer",
		view: peers.RestartView{Leader: u1, Units: []string{u0, u2},
			Requests: map[string]string{u0: "a", u1: "b", u2: "c"}, Granted: u2 + " c"},
		grant: u2 + " c", queue: []string{u0, u1},
	}, {
		summary: "leader change mid-roll: the old leader, now a peer, goes before the new leader",
		view: peers.RestartView{Leader: u1, Units: []string{u0, u2},
			Requests: map[string]string{u0: "a", u1: "b"}, Granted: u2 + " c"},
		grant: u0 + " a", released: u2, queue: []string{u1},
	}, {
		summary: "leader change mid-roll: the old leader holding its own grant keeps it as a peer",
		view: peers.RestartView{Leader: u1, Units: []string{u0, u2},
			Requests: map[string]string{u0: "a", u1: "b"}, Granted: u0 + " a"},
		grant: u0 + " a", queue: []string{u1},
	}, {
		summary: "a malformed grant grants nothing and is replaced",
		view: peers.RestartView{Leader: u0, Units: []string{u1},
			Requests: map[string]string{u1: "b"}, Granted: "nonsense"},
		grant: u1 + " b", released: "nonsense",
	}, {
		summary: "the leader alone asking waits for a peer that has not caught up with the change (it will ask)",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2}, Requests: map[string]string{u0: "a"},
			Targets: map[string]string{u0: "new", u1: "old", u2: "new"}},
		queue: []string{u0}, behind: []string{u1},
	}, {
		summary: "the leader is granted once every peer has caught up (or publishes no target)",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2}, Requests: map[string]string{u0: "a"},
			Targets: map[string]string{u0: "new", u1: "new"}},
		grant: u0 + " a",
	}, {
		summary: "a peer behind does not hold up the other peers",
		view: peers.RestartView{Leader: u0, Units: []string{u1, u2}, Requests: map[string]string{u0: "a", u2: "c"},
			Targets: map[string]string{u0: "new", u1: "old", u2: "new"}},
		grant: u2 + " c", queue: []string{u0},
	}, {
		summary: "a departing peer behind does not hold up the leader",
		view: peers.RestartView{Leader: u0, Units: []string{u1}, Departing: u1, Requests: map[string]string{u0: "a"},
			Targets: map[string]string{u0: "new", u1: "old"}},
		grant: u0 + " a",
	}, {
		summary: "a request of a unit not in the relation is not granted",
		view: peers.RestartView{Leader: u0, Units: []string{u1},
			Requests: map[string]string{u3: "x"}},
	}}
	for _, tc := range cases {
		t.Run(tc.summary, func(t *testing.T) {
			d := peers.NextRestart(tc.view)
			if got := d.Grant.String(); got != tc.grant {
				t.Errorf("grant = %q, want %q", got, tc.grant)
			}
			if d.Released != tc.released {
				t.Errorf("released = %q (%s), want %q", d.Released, d.Why, tc.released)
			}
			if tc.released != "" && d.Why == "" {
				t.Error("a release without a reason")
			}
			if !slices.Equal(d.Behind, tc.behind) {
				t.Errorf("behind = %v, want %v", d.Behind, tc.behind)
			}
			if !slices.Equal(d.Queue, tc.queue) {
				t.Errorf("queue = %v, want %v", d.Queue, tc.queue)
			}
			if want := tc.grant != tc.view.Granted; d.Changed(tc.view) != want {
				t.Errorf("changed = %v, want %v", d.Changed(tc.view), want)
			}
		})
	}
}

// TestNextRestart_OneHolderThroughARoll drives a three-unit roll through
// the rule, the holder restarting and releasing at each step, and checks
// that exactly one unit holds the lock at a time, every unit is granted
// exactly once, and the leader's unit is last.
func TestNextRestart_OneHolderThroughARoll(t *testing.T) {
	leader, units := "app/1", []string{"app/0", "app/2"}
	requests := map[string]string{"app/0": "x0", "app/1": "x1", "app/2": "x2"}
	granted := ""
	var order []string
	for step := 0; step < 10; step++ {
		d := peers.NextRestart(peers.RestartView{Leader: leader, Units: units, Requests: requests, Granted: granted})
		granted = d.Grant.String()
		if d.Grant.Unit == "" {
			break
		}
		if len(order) == 0 || order[len(order)-1] != d.Grant.Unit {
			order = append(order, d.Grant.Unit)
		}
		// The holder restarts and releases.
		if !d.Grant.Holds(d.Grant.Unit, requests[d.Grant.Unit]) {
			t.Fatalf("step %d: the grant %q does not hold for its own request", step, granted)
		}
		delete(requests, d.Grant.Unit)
	}
	if want := []string{"app/0", "app/2", "app/1"}; !slices.Equal(order, want) {
		t.Fatalf("grant order %v, want %v", order, want)
	}
	if granted != "" {
		t.Fatalf("lock still held after the roll: %q", granted)
	}
}

func TestParseGrant(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"app/1 upgrade-charm@2026-01-01T00:00:00Z", true},
		{"", false}, {"app/1", false}, {"app/x n", false}, {"/1 n", false}, {"app/1 ", false},
	} {
		g, ok := peers.ParseGrant(tc.in)
		if ok != tc.ok {
			t.Errorf("ParseGrant(%q) ok = %v, want %v", tc.in, ok, tc.ok)
		}
		if ok && g.String() != tc.in {
			t.Errorf("ParseGrant(%q).String() = %q", tc.in, g.String())
		}
	}
}
