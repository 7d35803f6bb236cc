package decide_test

import (
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
)

func conf(bootstrap string, pairs ...string) *controllerconf.Config {
	c := &controllerconf.Config{DBBindAddresses: map[string]string{}, BootstrapAgentID: bootstrap}
	for i := 0; i+1 < len(pairs); i += 2 {
		c.DBBindAddresses[pairs[i]] = pairs[i+1]
	}
	return c
}

func TestStart(t *testing.T) {
	tests := []struct {
		summary string
		in      decide.StartInput
		action  decide.Action
		address string
		peers   []string
		reason  string
	}{{
		summary: "new node, empty config: wait for own address",
		in:      decide.StartInput{ControllerID: "1", Config: conf(""), Port: 17666},
		action:  decide.Wait,
		reason:  "not found",
	}, {
		summary: "new node, own id missing: wait",
		in:      decide.StartInput{ControllerID: "1", Config: conf("0", "0", "10.0.0.1", "2", "10.0.0.3"), Port: 17666},
		action:  decide.Wait,
		reason:  "not found",
	}, {
		summary: "new bootstrap node bootstraps even with peers listed",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), Port: 17666},
		action:  decide.Bootstrap,
		address: "10.0.0.1:17666",
	}, {
		summary: "new bootstrap node alone bootstraps",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1"), Port: 17666},
		action:  decide.Bootstrap,
		address: "10.0.0.1:17666",
	}, {
		summary: "bootstrap agent whose data dir once was a member never bootstraps again",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1"), Port: 17666, WasMember: true},
		action:  decide.Wait,
		reason:  "rejoin",
	}, {
		summary: "bootstrap agent once a member rejoins the listed peers",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), Port: 17666, WasMember: true},
		action:  decide.Join,
		address: "10.0.0.1:17666",
		peers:   []string{"10.0.0.2:17666"},
	}, {
		summary: "non-bootstrap node alone waits",
		in:      decide.StartInput{ControllerID: "1", Config: conf("0", "1", "10.0.0.2"), Port: 17666},
		action:  decide.Wait,
		reason:  "no peer",
	}, {
		summary: "no bootstrap agent: a lone node never bootstraps",
		in:      decide.StartInput{ControllerID: "0", Config: conf("", "0", "10.0.0.1"), Port: 17666},
		action:  decide.Wait,
		reason:  "no peer",
	}, {
		summary: "non-bootstrap node joins every other listed peer",
		in:      decide.StartInput{ControllerID: "2", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2", "2", "10.0.0.3"), Port: 9000},
		action:  decide.Join,
		address: "10.0.0.3:9000",
		peers:   []string{"10.0.0.1:9000", "10.0.0.2:9000"},
	}, {
		summary: "new node with an IPv6 address bootstraps (TLS carries IPv6)",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "fd00::1"), Port: 17666},
		action:  decide.Bootstrap,
		address: "[fd00::1]:17666",
	}, {
		summary: "existing node starts from its data dir",
		in:      decide.StartInput{ControllerID: "1", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), Port: 17666, HasData: true, StoredAddress: "10.0.0.2:17666"},
		action:  decide.StartExisting,
		address: "10.0.0.2:17666",
	}, {
		summary: "existing node starts even when the config does not list it",
		in:      decide.StartInput{ControllerID: "1", Config: conf(""), Port: 17666, HasData: true, StoredAddress: "10.0.0.2:17666"},
		action:  decide.StartExisting,
		address: "10.0.0.2:17666",
	}, {
		summary: "sole member whose address changed rebinds",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "10.1.0.1"), Port: 17666, HasData: true, StoredAddress: "10.0.0.1:17666", SoleMember: true},
		action:  decide.Rebind,
		address: "10.1.0.1:17666",
	}, {
		summary: "sole member whose port changed rebinds",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1"), Port: 17667, HasData: true, StoredAddress: "10.0.0.1:17666", SoleMember: true},
		action:  decide.Rebind,
		address: "10.0.0.1:17667",
	}, {
		summary: "member of a multi-node cluster whose address changed starts where it is, to be moved",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "10.1.0.1", "1", "10.0.0.2"), Port: 17666, HasData: true, StoredAddress: "10.0.0.1:17666"},
		action:  decide.StartExisting,
		address: "10.0.0.1:17666",
		reason:  "until the leader removes it",
	}, {
		summary: "sole member moved to IPv6 rebinds",
		in:      decide.StartInput{ControllerID: "0", Config: conf("0", "0", "fd00::1"), Port: 17666, HasData: true, StoredAddress: "10.0.0.1:17666", SoleMember: true},
		action:  decide.Rebind,
		address: "[fd00::1]:17666",
	}}
	for _, tt := range tests {
		t.Run(tt.summary, func(t *testing.T) {
			got := decide.Start(tt.in)
			if got.Action != tt.action {
				t.Fatalf("action = %s (%s), want %s", got.Action, got.Reason, tt.action)
			}
			if got.Address != tt.address {
				t.Errorf("address = %q, want %q", got.Address, tt.address)
			}
			if strings.Join(got.Peers, ",") != strings.Join(tt.peers, ",") {
				t.Errorf("peers = %v, want %v", got.Peers, tt.peers)
			}
			if got.Reason == "" || !strings.Contains(got.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to mention %q", got.Reason, tt.reason)
			}
		})
	}
}

func member(id uint64, addr string, role decide.Role, cid string, online bool) decide.Member {
	return decide.Member{ID: id, Address: addr, Role: role, ControllerID: cid, Online: online}
}

func TestRemoval(t *testing.T) {
	three := []decide.Member{
		member(1, "10.0.0.1:17666", decide.Voter, "0", true),
		member(2, "10.0.0.2:17666", decide.Voter, "1", true),
		member(3, "10.0.0.3:17666", decide.Voter, "2", true),
	}
	ever := map[string]bool{"0": true, "1": true, "2": true}
	tests := []struct {
		summary string
		in      decide.RemovalInput
		remove  bool
		victim  uint64
		reason  string
	}{{
		summary: "everyone listed: nothing to do",
		in:      decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2", "2", "10.0.0.3"), SelfID: 1, Members: three, EverListed: ever},
		reason:  "listed",
	}, {
		summary: "departed online voter is removed when the others keep a majority",
		in:      decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), SelfID: 1, Members: three, EverListed: ever},
		remove:  true,
		victim:  3,
	}, {
		summary: "empty config removes nobody",
		in:      decide.RemovalInput{ControllerID: "0", Config: conf(""), SelfID: 1, Members: three, EverListed: ever},
		reason:  "listed",
	}, {
		summary: "config without this controller removes nobody",
		in:      decide.RemovalInput{ControllerID: "0", Config: conf("0", "1", "10.0.0.2"), SelfID: 1, Members: three, EverListed: ever},
		reason:  "listed",
	}, {
		summary: "removing a voter that would leave no online majority is refused",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "2", "10.0.0.3"), SelfID: 1, EverListed: ever, Members: []decide.Member{
			member(1, "10.0.0.1:17666", decide.Voter, "0", true),
			member(2, "10.0.0.2:17666", decide.Voter, "1", true),
			member(3, "10.0.0.3:17666", decide.Voter, "2", false),
			member(4, "10.0.0.4:17666", decide.Voter, "3", false),
			member(5, "10.0.0.5:17666", decide.Voter, "4", false),
		}},
		// 1 and 3 are listed; departed: 2 (online), 4, 5 (offline). Offline
		// voters go first: removing 4 leaves voters {1,2,3,5}, online {1,2}:
		// no majority.
		reason: "no majority",
	}, {
		summary: "offline departed voter goes before an online one",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), SelfID: 1, EverListed: map[string]bool{"0": true, "1": true, "2": true, "3": true}, Members: []decide.Member{
			member(1, "10.0.0.1:17666", decide.Voter, "0", true),
			member(2, "10.0.0.2:17666", decide.Voter, "1", true),
			member(3, "10.0.0.3:17666", decide.Voter, "2", true),
			member(4, "10.0.0.4:17666", decide.StandBy, "3", false),
		}},
		remove: true,
		victim: 4,
	}, {
		summary: "departed dead voter of three is removed (2 of 2 remaining online)",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), SelfID: 1, EverListed: ever, Members: []decide.Member{
			member(1, "10.0.0.1:17666", decide.Voter, "0", true),
			member(2, "10.0.0.2:17666", decide.Voter, "1", true),
			member(3, "10.0.0.3:17666", decide.Voter, "2", false),
		}},
		remove: true,
		victim: 3,
	}, {
		summary: "unregistered node at a listed address is kept",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), SelfID: 1, EverListed: ever, Members: []decide.Member{
			member(1, "10.0.0.1:17666", decide.Voter, "0", true),
			member(2, "10.0.0.2:17666", decide.Spare, "", true),
		}},
		reason: "listed",
	}, {
		summary: "never-listed controller waits out the grace period",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1"), SelfID: 1, EverListed: map[string]bool{"0": true}, Grace: 10 * time.Second,
			CandidateFor: map[uint64]time.Duration{2: time.Second}, Members: []decide.Member{
				member(1, "10.0.0.1:17666", decide.Voter, "0", true),
				member(2, "10.0.0.2:17666", decide.Spare, "5", true),
			}},
		reason: "grace",
	}, {
		summary: "never-listed controller is removed after the grace period",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1"), SelfID: 1, EverListed: map[string]bool{"0": true}, Grace: 10 * time.Second,
			CandidateFor: map[uint64]time.Duration{2: 11 * time.Second}, Members: []decide.Member{
				member(1, "10.0.0.1:17666", decide.Voter, "0", true),
				member(2, "10.0.0.2:17666", decide.Spare, "5", true),
			}},
		remove: true,
		victim: 2,
	}}
	for _, tt := range tests {
		t.Run(tt.summary, func(t *testing.T) {
			unwanted := decide.Unwanted(tt.in)
			got := decide.PickRemoval(tt.in, unwanted)
			if got.Remove != tt.remove {
				t.Fatalf("remove = %v (%s), want %v", got.Remove, got.Reason, tt.remove)
			}
			if tt.remove && got.Victim.ID != tt.victim {
				t.Fatalf("victim = %d, want %d", got.Victim.ID, tt.victim)
			}
			if !strings.Contains(got.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to mention %q", got.Reason, tt.reason)
			}
			if got.Remove && got.Victim.ID == tt.in.SelfID {
				t.Errorf("a node never removes itself")
			}
		})
	}
}

func TestMove(t *testing.T) {
	moved := conf("0", "0", "10.0.0.1", "1", "10.1.0.2", "2", "10.0.0.3")
	three := []decide.Member{
		member(1, "10.0.0.1:17666", decide.Voter, "0", true),
		member(2, "10.0.0.2:17666", decide.Voter, "1", true),
		member(3, "10.0.0.3:17666", decide.Voter, "2", true),
	}
	tests := []struct {
		summary string
		in      decide.RemovalInput
		remove  bool
		victim  uint64
		reason  string
	}{{
		summary: "a member listed at a new address is removed to rejoin there",
		in:      decide.RemovalInput{ControllerID: "0", Config: moved, SelfID: 1, Members: three, Port: 17666},
		remove:  true,
		victim:  2,
	}, {
		summary: "nobody moved",
		in:      decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2", "2", "10.0.0.3"), SelfID: 1, Members: three, Port: 17666},
		reason:  "no member has moved",
	}, {
		summary: "a port change is a move",
		in:      decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2", "2", "10.0.0.3"), SelfID: 1, Members: three, Port: 17667},
		remove:  true,
	}, {
		summary: "a move waits until the previous mover is back",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "10.1.0.2", "2", "10.1.0.3"), SelfID: 1, Port: 17666, Members: []decide.Member{
			member(1, "10.0.0.1:17666", decide.Voter, "0", true),
			member(3, "10.0.0.3:17666", decide.Voter, "2", true),
		}, Registered: map[string]bool{"0": true, "1": true, "2": true}},
		reason: "waiting",
	}, {
		// A unit added during juju bind lists every peer at its new
		// address, where nobody serves yet: waiting for it to join
		// before moving anybody waited for ever.
		summary: "a listed controller that never was a member does not hold the moves back",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.1.0.1", "1", "10.1.0.2", "2", "10.1.0.3", "3", "10.1.0.4"), SelfID: 1, Port: 17666,
			Members: three, Registered: map[string]bool{"0": true, "1": true, "2": true}},
		remove: true,
		victim: 2,
	}, {
		summary: "a listed controller that was a member and is not one now holds the moves back",
		in: decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.1.0.1", "1", "10.1.0.2", "2", "10.1.0.3", "3", "10.1.0.4"), SelfID: 1, Port: 17666,
			Members: three, Registered: map[string]bool{"0": true, "1": true, "2": true, "3": true}},
		reason: "waiting",
	}, {
		summary: "a move waits until voters are assigned",
		in: decide.RemovalInput{ControllerID: "0", Config: moved, SelfID: 1, Port: 17666, Members: []decide.Member{
			member(1, "10.0.0.1:17666", decide.Voter, "0", true),
			member(2, "10.0.0.2:17666", decide.Voter, "1", true),
			member(3, "10.0.0.3:17666", decide.Spare, "2", true),
		}},
		reason: "waiting",
	}, {
		summary: "a move to IPv6 is attempted like any other",
		in:      decide.RemovalInput{ControllerID: "0", Config: conf("0", "0", "10.0.0.1", "1", "fd00::2", "2", "10.0.0.3"), SelfID: 1, Members: three, Port: 17666},
		remove:  true,
		victim:  2,
	}}
	for _, tt := range tests {
		t.Run(tt.summary, func(t *testing.T) {
			got := decide.PickMove(tt.in, decide.Moved(tt.in))
			if got.Remove != tt.remove {
				t.Fatalf("remove = %v (%s), want %v", got.Remove, got.Reason, tt.remove)
			}
			if tt.victim != 0 && got.Victim.ID != tt.victim {
				t.Fatalf("victim = %d, want %d", got.Victim.ID, tt.victim)
			}
			if !strings.Contains(got.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to mention %q", got.Reason, tt.reason)
			}
		})
	}
}

func TestJoinPeers(t *testing.T) {
	tests := []struct {
		summary string
		listed  []string
		known   []string
		own     []string
		want    []string
	}{{
		summary: "no member known: the listed peers, in order",
		listed:  []string{"10.0.0.2:17777", "10.0.0.3:17777"},
		own:     []string{"10.0.0.1:17777"},
		want:    []string{"10.0.0.2:17777", "10.0.0.3:17777"},
	}, {
		summary: "db-port change: the listed peers at the new port first, then where the members last served",
		listed:  []string{"10.0.0.2:17777", "10.0.0.3:17777"},
		known:   []string{"10.0.0.2:17666", "10.0.0.3:17666"},
		own:     []string{"10.0.0.1:17777", "10.0.0.1:17666"},
		want:    []string{"10.0.0.2:17777", "10.0.0.3:17777", "10.0.0.2:17666", "10.0.0.3:17666"},
	}, {
		summary: "never its own addresses: neither where it joins nor where it was removed",
		listed:  []string{"10.0.0.2:17777"},
		known:   []string{"10.0.0.1:17666", "10.0.0.1:17777", "10.0.0.2:17666"},
		own:     []string{"10.0.0.1:17777", "10.0.0.1:17666"},
		want:    []string{"10.0.0.2:17777", "10.0.0.2:17666"},
	}, {
		summary: "a member that moved already is known where it is listed: once",
		listed:  []string{"10.0.0.2:17777", "10.0.0.3:17777"},
		known:   []string{"10.0.0.3:17777", "10.0.0.2:17666", "10.0.0.2:17666", ""},
		own:     []string{"10.0.0.1:17777"},
		want:    []string{"10.0.0.2:17777", "10.0.0.3:17777", "10.0.0.2:17666"},
	}, {
		summary: "juju bind: the new hosts first, the old ones after",
		listed:  []string{"[fd00::2]:17666"},
		known:   []string{"10.0.0.2:17666"},
		own:     []string{"[fd00::1]:17666"},
		want:    []string{"[fd00::2]:17666", "10.0.0.2:17666"},
	}, {
		summary: "nothing listed and nothing known: nothing to join through",
		own:     []string{"10.0.0.1:17666"},
		want:    nil,
	}}
	for _, tc := range tests {
		t.Run(tc.summary, func(t *testing.T) {
			got := decide.JoinPeers(tc.listed, tc.known, tc.own...)
			if strings.Join(got, ",") != strings.Join(tc.want, ",") || len(got) != len(tc.want) {
				t.Fatalf("JoinPeers(%v, %v, %v) = %v, want %v", tc.listed, tc.known, tc.own, got, tc.want)
			}
		})
	}
}
