package decide_test

import (
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/daemon/decide"
)

func TestRecover(t *testing.T) {
	three := func(bool) []decide.Member {
		return []decide.Member{
			member(1, "10.0.0.1:17666", decide.Voter, "", false),
			member(2, "10.0.0.2:17666", decide.Voter, "", false),
			member(3, "10.0.0.3:17666", decide.Voter, "", false),
		}
	}
	paused := map[uint64]decide.Probe{2: {Accepted: true}, 3: {Accepted: true}}
	answering := func(ids ...uint64) map[uint64]decide.Probe {
		out := map[uint64]decide.Probe{}
		for _, id := range ids {
			out[id] = decide.Probe{Accepted: true, Answered: true}
		}
		return out
	}
	// 3 voters (0, 1, 2) and 2 stand-bys (3, 4).
	five := []decide.Member{
		member(1, "10.0.0.1:17666", decide.Voter, "", false),
		member(2, "10.0.0.2:17666", decide.Voter, "", false),
		member(3, "10.0.0.3:17666", decide.Voter, "", false),
		member(4, "10.0.0.4:17666", decide.StandBy, "", false),
		member(5, "10.0.0.5:17666", decide.StandBy, "", false),
	}
	only0 := conf("0", "0", "10.0.0.1")
	survivors := conf("0", "0", "10.0.0.1", "3", "10.0.0.4", "4", "10.0.0.5")
	ok := func(in decide.RecoverInput) decide.RecoverInput {
		if in.ControllerID == "" {
			in.ControllerID = "0"
		}
		in.Port, in.HasData = 17666, true
		if in.SelfID == 0 {
			in.SelfID = 1
		}
		in.Confirm, in.MinFailures = 6*time.Second, 4
		if in.FailingFor == 0 {
			in.FailingFor, in.Failures = 10*time.Second, 8
		}
		return in
	}
	tests := []struct {
		summary string
		in      decide.RecoverInput
		recover bool
		probe   bool
		reason  string
		nodes   int
	}{{
		summary: "config lists only self, old voters probed and gone: recover",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(false), Probed: true}),
		recover: true, nodes: 1,
	}, {
		summary: "every other condition holds: probe the old voters first",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(false)}),
		probe:   true, reason: "probing",
	}, {
		summary: "old voters still accept connections (paused): wait",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(true), Probed: true, Probes: paused}),
		reason:  "still accept connections without answering",
	}, {
		summary: "a dropped old voter is alive and answers: wait",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(true), Probed: true, Probes: answering(2)}),
		reason:  "that the config dropped are still alive",
	}, {
		summary: "a leader answers: wait",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(false), Probed: true, LeaderAt: "10.0.0.2:17666"}),
		reason:  "a leader answers",
	}, {
		summary: "a listed old voter does not answer (rebooting?): wait for quorum",
		in:      ok(decide.RecoverInput{Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), Members: three(false), Probed: true}),
		reason:  "which do not answer",
	}, {
		summary: "a listed old voter answers without a leader, the dropped one is gone: recover, keeping it as a stand-by",
		in:      ok(decide.RecoverInput{Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), Members: three(false), Probed: true, Probes: answering(2)}),
		recover: true, nodes: 2,
	}, {
		summary: "every old voter listed and answering, nobody dropped: wait for quorum",
		in:      ok(decide.RecoverInput{Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2", "2", "10.0.0.3"), Members: three(false), Probed: true, Probes: answering(2, 3)}),
		reason:  "the config still lists every other voter (2 at 10.0.0.2:17666, 3 at 10.0.0.3:17666), so this node replaces none of them",
	}, {
		// Two of three controllerds stopped: the survivor never
		// reconfigures on its own, so its status must not say it will.
		summary: "every old voter listed, silent, not confirmed yet: says what would make it reconfigure, not that it is confirming",
		in: ok(decide.RecoverInput{Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2", "2", "10.0.0.3"), Members: three(false),
			FailingFor: time.Second, Failures: 1}),
		reason: "remove their units (juju remove-unit --force) or run recover-from-quorum-loss",
	}, {
		summary: "long enough but too few failures in a row: confirming",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(false), Probed: true, FailingFor: time.Minute, Failures: 2}),
		reason:  "confirming",
	}, {
		summary: "many failures but not for long enough: confirming",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(false), Probed: true, FailingFor: 2 * time.Second, Failures: 20}),
		reason:  "confirming",
	}, {
		// Seen in a disk-only Jepsen campaign: the last observation
		// listed this node as the only voter, yet no leader came.
		summary: "the only voter of the membership it saw, without a leader: says its configuration differs",
		in: ok(decide.RecoverInput{Config: conf("0", "0", "10.0.0.1", "1", "10.0.0.2"), Probed: true,
			Members: []decide.Member{member(1, "10.0.0.1:17666", decide.Voter, "", false), member(2, "10.0.0.2:17666", decide.Spare, "", false)}}),
		reason: "its Raft configuration still counts other voters",
	}, {
		summary: "config does not list this controller: wait",
		in:      ok(decide.RecoverInput{Config: conf("1", "1", "10.0.0.2"), Members: three(false), Probed: true}),
		reason:  "does not list this controller",
	}, {
		summary: "a spare listed alone holds no replicated data: refuse",
		in: ok(decide.RecoverInput{Config: conf("0", "0", "10.0.0.2"), SelfID: 2, Probed: true,
			Members: []decide.Member{member(1, "10.0.0.1:17666", decide.Voter, "", false), member(2, "10.0.0.2:17666", decide.Spare, "", false)}}),
		reason: "no listed member holds replicated data",
	}, {
		summary: "a stand-by listed alone is replicated: recover",
		in: ok(decide.RecoverInput{Config: conf("0", "0", "10.0.0.2"), SelfID: 2, Probed: true,
			Members: []decide.Member{member(1, "10.0.0.1:17666", decide.Voter, "", false), member(2, "10.0.0.2:17666", decide.StandBy, "", false)}}),
		recover: true, nodes: 1,
	}, {
		summary: "five lose two voters: the listed voter recovers with the two stand-bys",
		in:      ok(decide.RecoverInput{Config: survivors, Members: five, Probed: true}),
		recover: true, nodes: 3,
	}, {
		summary: "five lose two voters while the leader promoted a stand-by (uncommitted): recover all the same",
		in: ok(decide.RecoverInput{Config: survivors, Probed: true, Probes: answering(5), Members: []decide.Member{
			five[0], five[1], five[2], five[3], member(5, "10.0.0.5:17666", decide.Voter, "", false)}}),
		recover: true, nodes: 3,
	}, {
		summary: "five lose two voters: a listed stand-by waits for the listed voter",
		in:      ok(decide.RecoverInput{Config: survivors, Members: five, Probed: true, SelfID: 4}),
		reason:  "waiting for controller 0",
	}, {
		summary: "five lose all three voters: the listed stand-by with the lowest id recovers",
		in:      ok(decide.RecoverInput{Config: conf("3", "3", "10.0.0.4", "4", "10.0.0.5"), ControllerID: "3", Members: five, Probed: true, SelfID: 4}),
		recover: true, nodes: 2,
	}, {
		summary: "a fresh joiner has nothing to recover",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(false), Probed: true, Fresh: true}),
		reason:  "nothing to recover",
	}, {
		summary: "already the only member: nothing to reconfigure",
		in:      ok(decide.RecoverInput{Config: only0, Members: three(false)[:1], Probed: true}),
		reason:  "only member",
	}}
	for _, tt := range tests {
		t.Run(tt.summary, func(t *testing.T) {
			in := tt.in
			if in.ControllerID == "" {
				in.ControllerID = "0"
			}
			got := decide.Recover(in)
			if got.Recover != tt.recover || got.Probe != tt.probe {
				t.Fatalf("recover, probe = %v, %v (%s), want %v, %v", got.Recover, got.Probe, got.Reason, tt.recover, tt.probe)
			}
			if !strings.Contains(got.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to mention %q", got.Reason, tt.reason)
			}
			if tt.recover {
				if len(got.Nodes) != tt.nodes || got.Nodes[0].ID != in.SelfID || got.Nodes[0].Role != decide.Voter {
					t.Fatalf("nodes = %+v", got.Nodes)
				}
				for _, n := range got.Nodes[1:] {
					if n.Role == decide.Voter {
						t.Fatalf("a second voter in the forced configuration: %+v", got.Nodes)
					}
				}
			}
		})
	}
}

func TestTwoMemberStandBy(t *testing.T) {
	two := []decide.Member{member(1, "a:1", decide.Voter, "", true), member(2, "b:1", decide.Spare, "", true)}
	if m, ok := decide.TwoMemberStandBy(two, 1); !ok || m.ID != 2 {
		t.Fatalf("spare of a 2-member cluster not picked: %+v %v", m, ok)
	}
	two[1].Role = decide.StandBy
	if _, ok := decide.TwoMemberStandBy(two, 1); ok {
		t.Fatalf("a stand-by picked again")
	}
	three := append(two, member(3, "c:1", decide.Spare, "", true))
	if _, ok := decide.TwoMemberStandBy(three, 1); ok {
		t.Fatalf("picked in a 3-member cluster (go-dqlite promotes there)")
	}
}
