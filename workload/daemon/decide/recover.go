package decide

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
)

// RecoverInput is what a node that cannot reach a leader knows.
type RecoverInput struct {
	ControllerID string
	Config       *controllerconf.Config
	Port         int
	// HasData is true when the node has a data dir with committed state.
	HasData bool
	// Fresh is true for a node started by bootstrap or join in this process
	// that never became ready: it has nothing to recover.
	Fresh bool
	// SelfID is this node's id.
	SelfID uint64
	// Members is the last known Raft configuration (the last leader's
	// answer, else cluster.yaml).
	Members []Member
	// Probed says that every voter other than this node was asked
	// directly: Probes holds what each did (by node id), LeaderAt the
	// address of a leader that answered meanwhile ("" for none).
	Probed   bool
	Probes   map[uint64]Probe
	LeaderAt string
	// FailingFor is the time since the first of the consecutive failed
	// observations, Failures their number.
	FailingFor time.Duration
	Failures   int
	// Confirm and MinFailures are how long and how many failures in a
	// row it takes before acting.
	Confirm     time.Duration
	MinFailures int
}

// Probe is what an old voter did when asked directly.
type Probe struct {
	// Accepted: it accepted a TCP connection (a paused process's kernel
	// does that too).
	Accepted bool
	// Answered: it answered the Dqlite protocol, without a leader.
	Answered bool
}

// RecoverDecision is the outcome of Recover.
type RecoverDecision struct {
	Recover bool
	// Probe asks the caller to probe the old voters (set Online, Probed)
	// and decide again: every other condition holds.
	Probe  bool
	Reason string
	// Nodes is the forced configuration: this node the only voter, the
	// other listed members with their roles (stand-bys hold replicated
	// data and are promoted by Dqlite once a leader exists).
	Nodes []Member
}

// Recover decides whether a node that has seen no leader should force a
// new Raft configuration in which it is the only voter (Juju's back-stop,
// after seconds instead of a minute). Forcing a configuration is safe only
// when the old majority cannot come back to outvote it and truncate what
// the new configuration acknowledges, so every condition must hold:
//
//   - the config lists this controller; every other voter of the last
//     known configuration that the config lists answers, without a leader
//     (it is in the same plight and follows the new configuration), and
//     every one it dropped is gone;
//   - among the listed members this node comes first (a voter before a
//     stand-by, then the lowest controller id), so exactly one node acts,
//     and it holds replicated data (a spare is not replicated to);
//   - no leader for Confirm since the first failed observation, and at
//     least MinFailures failed observations in a row (a hand-over or a
//     loaded host costs one or two, not a whole run of them);
//   - no old voter accepts a connection without answering (paused: SIGSTOP
//     keeps its sockets accepting; it may come back with others and
//     outvote the new configuration), no voter the config dropped accepts
//     one at all, no listed voter is silent (the charm still wants it: it
//     may be rebooting), and no leader answers. A dropped voter that
//     refuses or never answers is taken as gone on the config's word; a
//     voter alive behind a network partition looks the same, so a config
//     that drops live voters is the one case this cannot catch.
func Recover(in RecoverInput) RecoverDecision {
	if !in.HasData || in.Fresh {
		return RecoverDecision{Reason: "nothing to recover: the node has no committed data"}
	}
	if _, ok := in.Config.DBBindAddresses[in.ControllerID]; !ok {
		return RecoverDecision{Reason: "no leader reachable; waiting for quorum (config does not list this controller)"}
	}
	if len(in.Members) <= 1 {
		return RecoverDecision{Reason: "no leader reachable although this node is the only member; waiting for it to elect itself"}
	}
	byAddress := map[string]string{}
	for id, host := range in.Config.DBBindAddresses {
		byAddress[JoinHostPort(host, in.Port)] = id
	}
	var self *Member
	var listed []Member
	for i := range in.Members {
		m := in.Members[i]
		if cid, ok := byAddress[m.Address]; ok {
			m.ControllerID = cid
			listed = append(listed, m)
		}
		if m.ID == in.SelfID {
			self = &m
		}
	}
	if self == nil {
		return RecoverDecision{Reason: "no leader reachable and this node is not in its last known configuration; waiting"}
	}
	var candidates []Member
	for _, m := range listed {
		if m.Role == Voter || m.Role == StandBy {
			candidates = append(candidates, m)
		}
	}
	if len(candidates) == 0 {
		return RecoverDecision{Reason: "quorum lost, but no listed member holds replicated data (this node was a spare, and spares are not replicated to): refusing to reconfigure; the cluster needs one of its old voters back"}
	}
	sort.SliceStable(candidates, func(i, j int) bool {
		if (candidates[i].Role == Voter) != (candidates[j].Role == Voter) {
			return candidates[i].Role == Voter
		}
		return lessID(candidates[i].ControllerID, candidates[j].ControllerID)
	})
	if first := candidates[0]; first.ID != in.SelfID {
		if self.Role == Spare {
			return RecoverDecision{Reason: fmt.Sprintf("quorum lost; this node was a spare and holds no replicated data: waiting for controller %s to reconfigure the cluster", first.ControllerID)}
		}
		return RecoverDecision{Reason: fmt.Sprintf("quorum lost; waiting for controller %s (%s member at %s) to reconfigure the cluster", first.ControllerID, first.Role, first.Address)}
	}
	isListed := map[uint64]bool{}
	for _, m := range listed {
		isListed[m.ID] = true
	}
	var oldVoters []Member
	unlisted := 0
	for _, m := range in.Members {
		if m.Role == Voter && m.ID != in.SelfID {
			oldVoters = append(oldVoters, m)
			if !isListed[m.ID] {
				unlisted++
			}
		}
	}
	if len(oldVoters) > 0 && unlisted == 0 {
		// Only a voter the config dropped is ever replaced: no wait
		// makes this node reconfigure, so the status says what would.
		return RecoverDecision{Reason: fmt.Sprintf("no leader reachable; waiting for quorum: the config still lists every other voter (%s), so this node replaces none of them; bring them back (their controllerd or machines), or if they are gone for good remove their units (juju remove-unit --force) or run recover-from-quorum-loss", labels(oldVoters))}
	}
	if in.Failures < in.MinFailures || in.FailingFor < in.Confirm {
		return RecoverDecision{Reason: fmt.Sprintf("no leader reachable; confirming for %s and %d failed observations (%s, %d so far) before reconfiguring",
			in.Confirm, in.MinFailures, in.FailingFor.Round(100*time.Millisecond), in.Failures)}
	}
	if !in.Probed && len(oldVoters) > 0 {
		return RecoverDecision{Probe: true, Reason: "probing the old voters before reconfiguring"}
	}
	if in.LeaderAt != "" {
		return RecoverDecision{Reason: fmt.Sprintf("a leader answers at %s: waiting to reach it rather than reconfiguring", in.LeaderAt)}
	}
	var paused, dropped, silent []Member
	for _, m := range oldVoters {
		p := in.Probes[m.ID]
		switch {
		case p.Accepted && !p.Answered:
			paused = append(paused, m)
		case !isListed[m.ID] && p.Accepted:
			dropped = append(dropped, m)
		case isListed[m.ID] && !p.Answered:
			silent = append(silent, m)
		}
	}
	switch {
	case len(paused) > 0:
		return RecoverDecision{Reason: fmt.Sprintf("no leader reachable, but old voter(s) %s still accept connections without answering: not replacing voters that may be alive (paused or restarting)", labels(paused))}
	case len(dropped) > 0:
		return RecoverDecision{Reason: fmt.Sprintf("no leader reachable, but old voter(s) %s that the config dropped are still alive: not reconfiguring while they may come back", labels(dropped))}
	case len(silent) > 0:
		return RecoverDecision{Reason: fmt.Sprintf("no leader reachable; waiting for quorum (config lists voter(s) %s, which do not answer: the charm still wants them)", labels(silent))}
	}
	var gone []Member
	for _, m := range oldVoters {
		if !isListed[m.ID] {
			gone = append(gone, m)
		}
	}
	if len(gone) == 0 {
		// No other voter in the membership this node knows (with other
		// voters, every path above returned): yet it elects no leader,
		// so the Raft configuration in its log differs from that
		// membership (seen after repeated full disks, whose removals a
		// suspect leader "committed", docs/dqlite-behaviour.md#a-full-disk).
		return RecoverDecision{Reason: "no leader reachable although this node is the only voter of the membership it last saw: its Raft configuration still counts other voters; waiting for quorum; if they are gone for good, run recover-from-quorum-loss"}
	}
	nodes := []Member{{ID: self.ID, Address: self.Address, Role: Voter, ControllerID: in.ControllerID}}
	var others []string
	for _, m := range listed {
		if m.ID != in.SelfID {
			if m.Role == Voter {
				// A listed voter that answers without a leader follows
				// the new configuration; Dqlite promotes it again.
				m.Role = StandBy
			}
			nodes = append(nodes, m)
			others = append(others, fmt.Sprintf("%s (%s)", m.ControllerID, m.Role))
		}
	}
	reason := fmt.Sprintf("no leader reachable for %s (%d failed observations) and the old voters the config dropped (%s) are gone: reconfiguring this node as the sole voter",
		in.FailingFor.Round(100*time.Millisecond), in.Failures, labels(gone))
	if len(others) > 0 {
		reason += ", keeping the listed members " + strings.Join(others, ", ")
	}
	return RecoverDecision{Recover: true, Reason: reason, Nodes: nodes}
}

func labels(ms []Member) string {
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%d at %s", m.ID, m.Address))
	}
	return strings.Join(out, ", ")
}

// lessID orders controller ids numerically when both are numbers.
func lessID(a, b string) bool {
	na, ea := strconv.Atoi(a)
	nb, eb := strconv.Atoi(b)
	if ea == nil && eb == nil {
		return na < nb
	}
	return a < b
}

// TwoMemberStandBy returns the member of a 2-member cluster that should be
// made a stand-by: go-dqlite keeps a single voter below three nodes and
// leaves the other one a spare (app/roles.go, RolesChanges.Adjust), which
// is not replicated to, so the voter's loss would leave no copy of the
// data. Adjust demotes only voters below three nodes, so it never undoes
// this; and from three nodes on it promotes the stand-by to voter
// (RolesChanges.Assume on the joiner, Adjust on the leader).
func TwoMemberStandBy(members []Member, leaderID uint64) (Member, bool) {
	if len(members) != 2 {
		return Member{}, false
	}
	for _, m := range members {
		if m.ID != leaderID && m.Role == Spare {
			return m, true
		}
	}
	return Member{}, false
}
