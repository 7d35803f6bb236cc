package peers

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Rolling restarts: whatever needs controllerd restarted (a new binary
// after upgrade-charm, a changed unit file after a db-port or api-port
// change) restarts one unit at a time, through a lock in the db-cluster
// relation, as the data-platform charms' rolling-ops library does
// (canonical/charm-rolling-ops: lib/charms/rolling_ops/v0/rollingops.py):
// a unit asks in its unit data, the leader grants the lock to one unit at a
// time in the application data, the leader's own unit last, and the granted
// unit restarts and releases once its node is a running member again.
//
// The rules below are the leader's choice of the lock holder, a pure
// function of the relation data; the hook (package charm) makes the tool
// calls and the restart.
const (
	// KeyRestartRequest is the unit data key holding the unit's restart
	// request: a nonce naming the request (its reason and when it was
	// made); absent when the unit needs no restart. Clearing it releases
	// the lock.
	KeyRestartRequest = "restart-request"
	// KeyRestartGranted is the application data key naming the unit that
	// holds the restart lock and the request it was granted for:
	// "<unit> <nonce>"; absent when nobody holds it.
	KeyRestartGranted = "restart-granted"
	// KeyRestartTarget is the unit data key describing what the unit's
	// controllerd runs once (re)started: its binary's digest and the
	// settings of its unit file that every unit shares (e.g.
	// "controllerd=sha256:ab12… db-port=17666 api-port=17070"). The
	// leader compares its own with its peers' to tell that a peer has not
	// caught up with a change yet (not run its upgrade-charm or
	// config-changed) and will ask for a restart.
	KeyRestartTarget = "restart-target"
)

// Grant is the restart lock as the application data gives it.
type Grant struct {
	Unit, Nonce string
}

// ParseGrant reads KeyRestartGranted; ok is false for an absent or
// malformed value, which grants nothing.
func ParseGrant(s string) (g Grant, ok bool) {
	unit, nonce, found := strings.Cut(strings.TrimSpace(s), " ")
	if !found || !validUnitName(unit) || nonce == "" {
		return Grant{}, false
	}
	return Grant{Unit: unit, Nonce: nonce}, true
}

// String is the KeyRestartGranted value; "" for no grant.
func (g Grant) String() string {
	if g.Unit == "" {
		return ""
	}
	return g.Unit + " " + g.Nonce
}

// Holds reports whether g lets unit restart for its request nonce.
func (g Grant) Holds(unit, nonce string) bool {
	return g.Unit != "" && g.Unit == unit && nonce != "" && g.Nonce == nonce
}

// RestartView is what the leader knows when it moves the restart lock.
type RestartView struct {
	// Leader is the leader's own unit.
	Leader string
	// Units are the peers the leader sees in the relation (relation-list),
	// not including itself.
	Units []string
	// Departing is the unit leaving in this hook (JUJU_DEPARTING_UNIT).
	Departing string
	// Requests holds each unit's KeyRestartRequest (the leader's own as
	// this hook leaves it); units without a request may be absent.
	Requests map[string]string
	// Granted is KeyRestartGranted as the application data holds it.
	Granted string
	// Targets holds each unit's KeyRestartTarget (the leader's own as
	// this hook leaves it); absent or empty: unknown.
	Targets map[string]string
}

// RestartDecision is the outcome of NextRestart.
type RestartDecision struct {
	// Grant is the lock as the application data should hold it (zero: no
	// holder).
	Grant Grant
	// Released names the unit whose grant ended in this decision, with
	// Why saying why ("" when the grant did not change hands).
	Released, Why string
	// Queue is the units still asking, in the order they will be granted,
	// the holder excluded.
	Queue []string
	// Behind lists the peers the leader's own unit waits for while it is
	// next in the queue: their restart target differs from the leader's,
	// so they will ask once they catch up with the change.
	Behind []string
}

// Changed reports whether the application data must be written.
func (d RestartDecision) Changed(v RestartView) bool {
	return d.Grant.String() != strings.TrimSpace(v.Granted)
}

// NextRestart is the leader's rule for the restart lock:
//
//   - the holder keeps the lock while it is still in the relation, not
//     departing, and its request is still the one it was granted for;
//   - otherwise the lock is free: the holder released it (request
//     cleared), already restarted and asked again (a new nonce: a grant
//     for an old request never covers a new one), or is gone or leaving
//     (a departed or dying unit cannot release, so the leader does);
//   - a free lock goes to the asking peer with the lowest unit number (a
//     unit that has just had its turn and asks again after the others),
//     and to the leader's own unit only when no peer asks nor is behind
//     (publishes a restart target other than the leader's: it has not
//     run the hook that will make it ask yet, e.g. its upgrade-charm
//     after juju refresh, which every unit runs in its own time): the
//     leader restarts last, so that leadership (and with it the lock)
//     moves as little as possible during the roll.
//
// Safe because the lock is one application data key that only the leader
// writes, and Juju commits application data only from a hook that exits 0
// while its unit leads, one leader at a time (docs/juju.md): every grant
// the units read names one unit, and a grant moves only once its holder
// has cleared its request, which it does only once its node is a running
// member again, or once the holder has left the relation. The rule keeps
// no state of its own, so a new leader mid-roll continues from the
// application data where the old one stopped.
func NextRestart(v RestartView) RestartDecision {
	present := map[string]bool{v.Leader: true}
	for _, u := range v.Units {
		if u != v.Departing && u != "" {
			present[u] = true
		}
	}
	if v.Departing != "" {
		delete(present, v.Departing)
	}
	asking := func(u string) bool { return present[u] && v.Requests[u] != "" }

	var d RestartDecision
	current, ok := ParseGrant(v.Granted)
	switch {
	case !ok && strings.TrimSpace(v.Granted) != "":
		d.Released, d.Why = strings.TrimSpace(v.Granted), "the grant is malformed"
	case !ok:
	case !present[current.Unit]:
		d.Released, d.Why = current.Unit, "it left the relation"
	case v.Requests[current.Unit] == "":
		d.Released, d.Why = current.Unit, "it restarted and released the lock"
	case v.Requests[current.Unit] != current.Nonce:
		d.Released, d.Why = current.Unit, "it restarted and asks again for a new reason"
	default:
		d.Grant = current
	}

	var queue []string
	for u := range present {
		if asking(u) && u != d.Grant.Unit {
			queue = append(queue, u)
		}
	}
	// The leader last; before it, a unit that has just had its turn and
	// asks again goes behind the other peers.
	rank := func(u string) int {
		switch u {
		case v.Leader:
			return 2
		case d.Released:
			return 1
		}
		return 0
	}
	slices.SortFunc(queue, func(a, b string) int {
		if c := cmp.Compare(rank(a), rank(b)); c != 0 {
			return c
		}
		return compareUnits(a, b)
	})
	if d.Grant.Unit == "" && len(queue) > 0 && queue[0] == v.Leader {
		d.Behind = behind(v, present)
	}
	if d.Grant.Unit == "" && len(queue) > 0 && len(d.Behind) == 0 {
		d.Grant = Grant{Unit: queue[0], Nonce: v.Requests[queue[0]]}
		queue = queue[1:]
	}
	d.Queue = queue
	return d
}

// behind lists the present peers whose restart target is known and not
// the leader's, in unit order.
func behind(v RestartView, present map[string]bool) []string {
	own := v.Targets[v.Leader]
	if own == "" {
		return nil
	}
	var out []string
	for u := range present {
		if t := v.Targets[u]; u != v.Leader && t != "" && t != own {
			out = append(out, u)
		}
	}
	slices.SortFunc(out, compareUnits)
	return out
}

// validUnitName reports whether s looks like "app/N".
func validUnitName(s string) bool {
	app, n, ok := strings.Cut(s, "/")
	if !ok || app == "" || n == "" {
		return false
	}
	_, err := strconv.ParseUint(n, 10, 32)
	return err == nil && !strings.ContainsAny(s, " \t\n")
}
