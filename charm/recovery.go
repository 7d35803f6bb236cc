package charm

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/juju/dqlite-controller/charm/peers"
)

// Quorum-loss recovery (recover-from-quorum-loss): while its controllerd has
// no quorum, every unit publishes where its node's Raft log ends in its
// db-cluster unit data, so that the action, run on any survivor, can tell
// whether that survivor has the most up-to-date log. Only while quorum is
// lost: a healthy cluster's position moves with every write, and publishing
// it would make the units run relation-changed hooks for ever.

// KeyRaftPosition is the unit data key holding the unit's node's Raft log
// position while its controllerd has no quorum (JSON, controllerd's
// raft-position answer); absent otherwise.
const KeyRaftPosition = "db-raft-position"

// ActionRecover is the quorum-loss recovery action.
const ActionRecover = "recover-from-quorum-loss"

// raftInfo is controllerd's raft-position answer.
type raftInfo struct {
	ControllerID string `json:"controller-id"`
	NodeID       string `json:"node-id"`
	State        string `json:"state"`
	Role         string `json:"role"`
	HasData      bool   `json:"has-data"`
	Term         uint64 `json:"term"`
	Index        uint64 `json:"index"`
}

// publishRaftPosition keeps KeyRaftPosition in this unit's data: set while
// controllerd reports no-quorum, removed otherwise. Failures are logged:
// the hook's main work does not depend on it.
func (h *hook) publishRaftPosition(ctx context.Context, relID string) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.WorkloadTimeout)
	defer cancel()
	out, err := h.cfg.Runner.Run(ctx, h.controllerd(), "raft-position", "--data-dir", h.cfg.DataDir(), "--format=json")
	if err != nil {
		// Not answering (stopped, restarting): keep what was published.
		return
	}
	want := ""
	var ri raftInfo
	if json.Unmarshal(out, &ri) == nil && ri.HasData && ri.State == "no-quorum" {
		data, _ := json.Marshal(ri)
		want = string(data)
	}
	mine, err := h.tools.RelationGet(ctx, relID, h.env.UnitName)
	if err != nil {
		h.log.Warn("cannot read this unit's relation data", "err", err)
		return
	}
	if mine[KeyRaftPosition] == want {
		return
	}
	if err := h.tools.RelationSet(ctx, relID, false, map[string]string{KeyRaftPosition: want}); err != nil {
		h.log.Warn("cannot publish the Raft position", "err", err)
	}
}

func (a *action) recover(ctx context.Context) (map[string]string, string) {
	if confirm, _ := a.params["confirm"].(bool); !confirm {
		return nil, "confirm=true is required: this forces a new Raft configuration with this unit's node as the only voter, and the other units wipe their data and rejoin it"
	}
	ids, err := a.tools.RelationIDs(ctx, Endpoint)
	if err != nil || len(ids) == 0 {
		return nil, fmt.Sprintf("cannot find the db-cluster relation (%v); retry once the unit has joined it", err)
	}
	units, err := a.tools.RelationList(ctx, ids[0])
	if err != nil {
		return nil, fmt.Sprintf("cannot list the db-cluster units: %v", err)
	}
	published := []raftInfo{}
	for _, u := range units {
		data, err := a.tools.RelationGet(ctx, ids[0], u)
		if err != nil {
			return nil, fmt.Sprintf("cannot read %s's relation data: %v", u, err)
		}
		var ri raftInfo
		if v := data[KeyRaftPosition]; v == "" || json.Unmarshal([]byte(v), &ri) != nil {
			continue
		}
		// The agent id the unit publishes for the cluster list (its
		// number or its configchange.socket's answer), whatever the
		// position says.
		if id, _, err := peers.Entry(a.env.AppName(), u, data); err == nil && id != "" {
			ri.ControllerID = id
			published = append(published, ri)
		} else if id, err := peers.UnitAgentID(u); err == nil {
			ri.ControllerID = id
			published = append(published, ri)
		}
	}
	peersJSON, _ := json.Marshal(published)
	var r struct {
		Position    raftInfo `json:"position"`
		Survivors   []string `json:"survivors"`
		Unreachable []string `json:"unreachable"`
		SafetyCopy  string   `json:"safety-copy"`
		Message     string   `json:"message"`
	}
	if msg := a.controllerd(ctx, &r, "recover-from-quorum-loss", "--confirm", "--peers", string(peersJSON)); msg != "" {
		return nil, msg
	}
	return map[string]string{
		"term": strconv.FormatUint(r.Position.Term, 10), "index": strconv.FormatUint(r.Position.Index, 10),
		"survivors": strings.Join(r.Survivors, ","), "unreachable": strings.Join(r.Unreachable, ","),
		"safety-copy": r.SafetyCopy, "summary": r.Message,
	}, ""
}
