// Package decide holds controllerd's decision logic as pure functions: given
// what the daemon knows (the controller config, its data dir, what the
// cluster looks like), it says what to do and why. Everything that talks to
// Dqlite or the file system lives elsewhere, so every rule here is covered by
// table-driven tests.
package decide

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
)

// Action is what a stopped node should do next.
type Action int

const (
	// Wait leaves the node stopped until the config changes.
	Wait Action = iota
	// Bootstrap starts a brand new single-node cluster.
	Bootstrap
	// Join starts a brand new node that joins the listed peers.
	Join
	// StartExisting starts the node from its data dir.
	StartExisting
	// Rebind moves a single-member cluster to a new address, keeping its data.
	Rebind
	// Refuse leaves the node stopped because the config asks for something
	// this build cannot do safely.
	Refuse
)

func (a Action) String() string {
	switch a {
	case Wait:
		return "wait"
	case Bootstrap:
		return "bootstrap"
	case Join:
		return "join"
	case StartExisting:
		return "start-existing"
	case Rebind:
		return "rebind"
	case Refuse:
		return "refuse"
	}
	return "unknown"
}

// StartInput is what a stopped node knows.
type StartInput struct {
	// ControllerID is this controller's agent id.
	ControllerID string
	// Config is the last good controller config (never nil; empty when the
	// file is missing or empty).
	Config *controllerconf.Config
	// Port is the Dqlite port every node listens on.
	Port int
	// HasData is true when the node dir holds a node identity (info.yaml).
	HasData bool
	// StoredAddress is the address recorded in info.yaml ("host:port").
	StoredAddress string
	// SoleMember is true when the node's own cluster.yaml lists only itself.
	SoleMember bool
	// WasMember is true when this data dir once belonged to a cluster
	// member (it survives wiping the node dir): such a node never
	// bootstraps again, it only rejoins.
	WasMember bool
	// RemovedHere is true when this data dir's node was removed at the
	// address the config gives it now, under the same config.
	RemovedHere bool
}

// StartDecision is the outcome of Start.
type StartDecision struct {
	Action Action
	// Address is the address to start with ("host:port").
	Address string
	// Peers are the addresses to join ("host:port"), for Join.
	Peers []string
	// Reason says why, in a sentence fit for logs and status.
	Reason string
}

// Start decides what a stopped node does. It follows Juju's dbaccessor table
// (wait for our own address; join only with at least one peer) with the
// project's bootstrap rule: exactly one controller, bootstrap-agent-id, may
// start a new cluster, and only if its data dir never belonged to one.
func Start(in StartInput) StartDecision {
	host, listed := in.Config.DBBindAddresses[in.ControllerID]
	if in.HasData {
		if !listed {
			return StartDecision{Action: StartExisting, Address: in.StoredAddress,
				Reason: "existing node starts from its data dir (config does not list this controller)"}
		}
		want := JoinHostPort(host, in.Port)
		if want == in.StoredAddress {
			return StartDecision{Action: StartExisting, Address: in.StoredAddress,
				Reason: "existing node starts from its data dir"}
		}
		if in.SoleMember {
			return StartDecision{Action: Rebind, Address: want,
				Reason: fmt.Sprintf("config moves this single-member cluster from %s to %s", in.StoredAddress, want)}
		}
		return StartDecision{Action: StartExisting, Address: in.StoredAddress,
			Reason: fmt.Sprintf("config moves this member of a multi-node cluster from %s to %s; starting on %s until the leader removes it so that it rejoins at %s", in.StoredAddress, want, in.StoredAddress, want)}
	}
	if !listed {
		return StartDecision{Action: Wait, Reason: "address for this Dqlite node to bind to not found in config"}
	}
	own := JoinHostPort(host, in.Port)
	if in.RemovedHere {
		// The charm freezes a departing unit's config, which still lists
		// it: rejoining on it would bring a removed unit back for ever.
		return StartDecision{Action: Wait, Reason: fmt.Sprintf("removed from the cluster at %s and the config has not changed since: not rejoining at the same address (a departing unit's config still lists it; a changed config lets it join as a new node)", own)}
	}
	if in.Config.BootstrapAgentID == in.ControllerID && !in.WasMember {
		return StartDecision{Action: Bootstrap, Address: own,
			Reason: "this controller is the bootstrap agent and its data dir is empty"}
	}
	var peers []string
	for _, id := range in.Config.AgentIDs() {
		if id == in.ControllerID || in.Config.DBBindAddresses[id] == "" {
			continue
		}
		peers = append(peers, JoinHostPort(in.Config.DBBindAddresses[id], in.Port))
	}
	if len(peers) == 0 {
		reason := "no peer addresses available to join (this controller is not the bootstrap agent)"
		if in.WasMember {
			reason = "no peer addresses available to rejoin"
		}
		return StartDecision{Action: Wait, Reason: reason}
	}
	return StartDecision{Action: Join, Address: own, Peers: peers,
		Reason: fmt.Sprintf("joining the cluster through %d listed peer(s)", len(peers))}
}

// JoinPeers lists the addresses a brand new node joins through, in the
// order tried: the listed peers (the config's hosts at the configured
// port, Start's Peers) first, then the addresses at which the members this
// data dir last knew served (the members a leader reported when the node
// was removed, its cluster.yaml before the wipe), each once and none of
// the node's own addresses (own: where it joins and where it was removed;
// nothing else serves there).
//
// The known addresses are what lets a moved node back in: after a db-port
// change or a `juju bind` the config lists every peer at its new address,
// where nobody serves until that peer has moved too, and the members move
// one at a time, each only once the previous one is back (Settled). A
// node removed before any peer serves at a listed address would otherwise
// wait in "joining" for ever, and with it every later move.
//
// Joining through them is safe under the same condition as joining
// through the listed peers: the node's data dir holds no node (a new id,
// nothing stale to serve), and a join only asks the leader that answers
// to add it as a spare, so it enters an existing Raft configuration
// through that configuration's own change and never forms a cluster (an
// address where no leader answers is only tried again). Every address is
// dialled over TLS and the peer there must present a certificate of the
// cluster CA for a controller the trust view holds, wherever it serves.
func JoinPeers(listed, known []string, own ...string) []string {
	seen := map[string]bool{"": true}
	for _, a := range own {
		seen[a] = true
	}
	var out []string
	for _, list := range [][]string{listed, known} {
		for _, a := range list {
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	return out
}

// Role mirrors Dqlite's node roles.
type Role int

// The Dqlite roles, with Dqlite's numbering.
const (
	Voter   Role = 0
	StandBy Role = 1
	Spare   Role = 2
)

func (r Role) String() string {
	switch r {
	case Voter:
		return "voter"
	case StandBy:
		return "stand-by"
	case Spare:
		return "spare"
	}
	return "unknown"
}

// Member is one node of the Raft configuration, as the leader reports it,
// annotated with what the daemon learnt about it.
type Member struct {
	ID      uint64
	Address string
	Role    Role
	// ControllerID is the controller that registered this node in the
	// controller_node table, "" when none did.
	ControllerID string
	// Online is whether the node answered a probe (only needed for voters
	// that are removal candidates).
	Online bool
}

// Candidate is a member whose controller left the config.
type Candidate struct {
	Member Member
	// For is how long the member has been a candidate.
	For time.Duration
}

// RemovalInput is what the leader knows when it considers removing members.
type RemovalInput struct {
	ControllerID string
	Config       *controllerconf.Config
	SelfID       uint64
	Members      []Member
	// EverListed holds every controller id this process saw in a good config.
	EverListed map[string]bool
	// CandidateFor is how long each member (by node id) has been unwanted.
	CandidateFor map[uint64]time.Duration
	// Grace is how long an unwanted member that this process never saw
	// listed stays before removal: it may be a node that just joined while
	// our config lags behind the charm's.
	Grace time.Duration
	// Port is the Dqlite port of every node.
	Port int
	// Registered holds the controllers with a row in controller_node:
	// every controller whose node was a member, including one removed to
	// move that has not rejoined yet (its row stays until it registers
	// its new node), but not one that was never a member.
	Registered map[string]bool
}

// Unwanted lists the members (other than this node) whose controller is not
// in the config. A member is matched to its controller through the
// controller_node table, or by address when it never registered. An empty
// config or one that does not list this controller is not trusted to remove
// anybody.
func Unwanted(in RemovalInput) []Member {
	if _, ok := in.Config.DBBindAddresses[in.ControllerID]; !ok {
		return nil
	}
	hosts := map[string]bool{}
	for _, h := range in.Config.DBBindAddresses {
		hosts[h] = true
	}
	var out []Member
	for _, m := range in.Members {
		if m.ID == in.SelfID {
			continue
		}
		if m.ControllerID != "" {
			if _, ok := in.Config.DBBindAddresses[m.ControllerID]; ok {
				continue
			}
		} else if hosts[Host(m.Address)] {
			continue
		}
		out = append(out, m)
	}
	return out
}

// RemovalDecision is the outcome of PickRemoval.
type RemovalDecision struct {
	// Remove is false when nothing should be removed now.
	Remove bool
	Victim Member
	Reason string
}

// PickRemoval chooses at most one unwanted member to remove from the Raft
// configuration, so that a burst of departures is applied one member at a
// time and quorum is re-checked before each step. Non-voters go first, then
// offline voters, then online voters; a voter is removed only when the
// remaining online voters still form a majority of the remaining voters.
func PickRemoval(in RemovalInput, unwanted []Member) RemovalDecision {
	var ready []Member
	for _, m := range unwanted {
		everListed := m.ControllerID != "" && in.EverListed[m.ControllerID]
		if !everListed && in.CandidateFor[m.ID] < in.Grace {
			continue
		}
		ready = append(ready, m)
	}
	if len(ready) == 0 {
		if len(unwanted) > 0 {
			return RemovalDecision{Reason: "unlisted member(s) within the grace period for newly joined nodes"}
		}
		return RemovalDecision{Reason: "every member is listed in the config"}
	}
	rank := func(m Member) int {
		switch {
		case m.Role != Voter:
			return 0
		case !m.Online:
			return 1
		}
		return 2
	}
	sort.SliceStable(ready, func(i, j int) bool { return rank(ready[i]) < rank(ready[j]) })
	victim := ready[0]
	if victim.Role != Voter {
		return RemovalDecision{Remove: true, Victim: victim,
			Reason: fmt.Sprintf("controller %s left the config (%s member)", label(victim), victim.Role)}
	}
	ok, voters, online := keepsQuorum(in, victim)
	if !ok {
		return RemovalDecision{Reason: fmt.Sprintf("not removing voter %s: the %d remaining voter(s) would have only %d online, no majority", label(victim), voters, online)}
	}
	return RemovalDecision{Remove: true, Victim: victim,
		Reason: fmt.Sprintf("controller %s left the config (voter, %s); %d of %d remaining voters online", label(victim), onlineWord(victim.Online), online, voters)}
}

// keepsQuorum reports whether the voters left after removing victim still
// have an online majority.
func keepsQuorum(in RemovalInput, victim Member) (ok bool, voters, online int) {
	for _, m := range in.Members {
		if m.Role != Voter || m.ID == victim.ID {
			continue
		}
		voters++
		if m.Online || m.ID == in.SelfID {
			online++
		}
	}
	return online*2 > voters, voters, online
}

// Moved lists the members (other than this node) whose controller the
// config lists at another address than the one the member serves on (say
// after `juju bind` to another space). The address of a Dqlite node is
// baked into its Raft configuration, so such a member moves by being
// removed, wiping its data dir and rejoining at the new address (IPv6
// included: the Dqlite port runs over TLS, where Go owns the sockets).
func Moved(in RemovalInput) []Member {
	if _, ok := in.Config.DBBindAddresses[in.ControllerID]; !ok {
		return nil
	}
	var out []Member
	for _, m := range in.Members {
		if m.ID == in.SelfID || m.ControllerID == "" {
			continue
		}
		host, ok := in.Config.DBBindAddresses[m.ControllerID]
		if !ok || JoinHostPort(host, in.Port) == m.Address {
			continue
		}
		out = append(out, m)
	}
	return out
}

// Settled reports whether every listed controller that was a member
// (Registered) has a member again and Dqlite has assigned its voters (1
// below three nodes, else 3): members move one at a time, each only once
// the previous one is back. A listed controller that never was a member (a
// unit added during `juju bind`) does not hold the moves back: its config
// lists the peers at their new addresses, so it can only join once members
// serve there, and waiting for it would wait for ever.
func Settled(in RemovalInput) bool {
	mapped := map[string]bool{}
	voters := 0
	for _, m := range in.Members {
		mapped[m.ControllerID] = true
		if m.Role == Voter {
			voters++
		}
	}
	for id := range in.Config.DBBindAddresses {
		if !mapped[id] && in.Registered[id] {
			return false
		}
	}
	want := 3
	if len(in.Members) < 3 {
		want = 1
	}
	return voters >= want
}

// PickMove chooses at most one moved member to remove so that it rejoins
// at its new address, only when the cluster is settled and quorum holds
// without it.
func PickMove(in RemovalInput, moved []Member) RemovalDecision {
	if len(moved) == 0 {
		return RemovalDecision{Reason: "no member has moved"}
	}
	if !Settled(in) {
		return RemovalDecision{Reason: "a member has moved; waiting for every listed controller that was a member to be one again, with voters assigned, before moving it"}
	}
	sort.SliceStable(moved, func(i, j int) bool { return moved[i].Role != Voter && moved[j].Role == Voter })
	victim := moved[0]
	if victim.Role == Voter {
		if ok, voters, online := keepsQuorum(in, victim); !ok {
			return RemovalDecision{Reason: fmt.Sprintf("not moving voter %s: the %d remaining voter(s) would have only %d online, no majority", label(victim), voters, online)}
		}
	}
	return RemovalDecision{Remove: true, Victim: victim,
		Reason: fmt.Sprintf("controller %s moved to %s: removing it so it rejoins there", label(victim), JoinHostPort(in.Config.DBBindAddresses[victim.ControllerID], in.Port))}
}

func label(m Member) string {
	if m.ControllerID != "" {
		return fmt.Sprintf("%s (node %d at %s)", m.ControllerID, m.ID, m.Address)
	}
	return fmt.Sprintf("of node %d at %s", m.ID, m.Address)
}

func onlineWord(b bool) string {
	if b {
		return "online"
	}
	return "offline"
}

// JoinHostPort joins a host and a port.
func JoinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// Host returns the host part of a "host:port" address.
func Host(address string) string {
	h, _, err := net.SplitHostPort(address)
	if err != nil {
		return address
	}
	return h
}

// IsIPv6 reports whether host is an IPv6 literal.
func IsIPv6(host string) bool {
	a, err := netip.ParseAddr(host)
	return err == nil && a.Is6() && !a.Is4In6()
}
