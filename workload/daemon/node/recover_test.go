package node

import (
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

func TestChooseRecovery(t *testing.T) {
	mine := RaftPosition{Term: 2, Index: 50}
	pos := func(state, role string, term, index uint64) control.RaftInfo {
		return control.RaftInfo{State: state, Role: role, HasData: true, Term: term, Index: index}
	}
	tests := []struct {
		name        string
		answering   map[string]bool
		published   map[string]control.RaftInfo
		strays      []string
		survivors   string
		unreachable string
		refusal     string
	}{{
		name:        "5 -> 2: the other survivor is behind, three voters are gone",
		answering:   map[string]bool{"0": false, "1": false, "2": false, "4": true},
		published:   map[string]control.RaftInfo{"4": pos("no-quorum", "stand-by", 2, 40)},
		survivors:   "4",
		unreachable: "0,1,2",
	}, {
		name:      "an answering survivor with a newer log is named",
		answering: map[string]bool{"1": true},
		published: map[string]control.RaftInfo{"1": pos("no-quorum", "voter", 2, 51)},
		refusal:   "controller 1 has a more up-to-date Raft log (term 2, index 51) than this one (term 2, index 50); run recover-from-quorum-loss on its unit (dqlite-controller/1) instead",
	}, {
		name:      "a higher term wins over a higher index",
		answering: map[string]bool{"1": true},
		published: map[string]control.RaftInfo{"1": pos("no-quorum", "voter", 3, 10)},
		refusal:   "run recover-from-quorum-loss on its unit (dqlite-controller/1) instead",
	}, {
		name:        "two voters split apart: the newer one does not answer here but published",
		answering:   map[string]bool{"1": false, "2": false},
		published:   map[string]control.RaftInfo{"1": pos("no-quorum", "voter", 2, 60)},
		refusal:     "run recover-from-quorum-loss on its unit (dqlite-controller/1) instead (if its machine is gone for good, remove it first with juju remove-unit --force dqlite-controller/1",
		unreachable: "2",
	}, {
		name:        "a silent survivor that published an older log is a survivor, not gone",
		answering:   map[string]bool{"1": false, "2": false},
		published:   map[string]control.RaftInfo{"1": pos("no-quorum", "voter", 2, 43)},
		survivors:   "1",
		unreachable: "2",
	}, {
		name:      "a spare's newer log counts: the cluster may have demoted it while it was away",
		answering: map[string]bool{"3": true},
		published: map[string]control.RaftInfo{"3": pos("no-quorum", "spare", 2, 70)},
		refusal:   "run recover-from-quorum-loss on its unit (dqlite-controller/3) instead",
	}, {
		name:      "a spare behind this node is a survivor",
		answering: map[string]bool{"3": true},
		published: map[string]control.RaftInfo{"3": pos("no-quorum", "spare", 1, 70)},
		survivors: "3",
	}, {
		name:      "an equal log is not newer",
		answering: map[string]bool{"1": true},
		published: map[string]control.RaftInfo{"1": pos("no-quorum", "voter", 2, 50)},
		survivors: "1",
	}, {
		name:      "a survivor without data is a survivor",
		answering: map[string]bool{"1": true},
		published: map[string]control.RaftInfo{"1": {State: "no-quorum"}},
		survivors: "1",
	}, {
		name:      "an answering unit that published nothing",
		answering: map[string]bool{"1": true},
		refusal:   "controller 1 answers but has not published its Raft position since quorum was lost; wait for its next hook (update-status) and retry",
	}, {
		name:      "an answering unit whose position is not from the loss",
		answering: map[string]bool{"1": true},
		published: map[string]control.RaftInfo{"1": pos("running", "voter", 1, 1)},
		refusal:   `controller 1 published state "running", not "no-quorum": its position may be stale`,
	}, {
		// A unit whose position this unit's view of the relation has not
		// seen yet (Juju refreshes a remote unit's data at its
		// relation-changed hook), answering at an address of this node's
		// Raft configuration that the config no longer gives it (juju
		// bind): it looks gone, but its log may be newer.
		name:      "a member of the Raft configuration answers for no unit",
		answering: map[string]bool{"0": false, "4": false},
		strays:    []string{"10.0.0.5:17666"},
		refusal:   "the node at 10.0.0.5:17666, a member of this node's Raft configuration, answers, but its unit has not published its Raft position since quorum was lost (or this unit has not seen it yet); wait for its next hook (update-status) and retry",
	}, {
		name:        "ids in numeric order",
		answering:   map[string]bool{"10": false, "9": false, "2": true},
		published:   map[string]control.RaftInfo{"2": pos("reconfiguring", "voter", 1, 1)},
		survivors:   "2",
		unreachable: "9,10",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			survivors, unreachable, err := chooseRecovery(mine, tt.answering, tt.published, tt.strays)
			if tt.refusal != "" {
				if err == nil || !strings.Contains(err.Error(), tt.refusal) {
					t.Fatalf("err = %v, want a refusal containing %q", err, tt.refusal)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got := strings.Join(survivors, ","); got != tt.survivors {
				t.Errorf("survivors %q, want %q", got, tt.survivors)
			}
			if got := strings.Join(unreachable, ","); got != tt.unreachable {
				t.Errorf("unreachable %q, want %q", got, tt.unreachable)
			}
		})
	}
}
