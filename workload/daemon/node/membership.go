package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
)

// What a stopped node finds out from the others before it acts, and the
// record of its last removal.

type verdict int

const (
	memberVerdict verdict = iota
	removedVerdict
	unknownVerdict
)

// stillMember asks every node this one knows of (its cluster.yaml and the
// config, each address directly, not through its own peer store) whether
// this node is still a member, before it starts on its data: a node
// removed while it was down must not rejoin Raft with its old
// configuration (with another returning node it could form a majority of
// that configuration and outvote the current one, docs/dqlite-behaviour.md#removing-members-and-losing-quorum). Only a
// leader's configuration that lacks this node's id, or a known peer
// refusing this node's certificate (refusedBy, tls.go), says "removed"; a
// leader or any other node that lists it says "member"; no answer at all
// is unknown, and the caller asks again. The leader's answer, when one
// answered, comes back too.
func (d *Daemon) stillMember(ctx context.Context, info client.NodeInfo, store []client.NodeInfo) (verdict, string, *Answer) {
	seen := map[string]bool{info.Address: true}
	if own, ok := d.ownAddress(); ok {
		seen[own] = true
	}
	var addrs []string
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	for _, n := range store {
		add(n.Address)
	}
	for _, host := range d.cfg.DBBindAddresses {
		add(decide.JoinHostPort(host, d.o.Port))
	}
	if len(addrs) == 0 {
		return memberVerdict, "no other node known", nil
	}
	slices.Sort(addrs)
	asked := time.Now()
	answers := d.askAll(ctx, addrs)
	if la, ok := d.leaderView(ctx, answers); ok {
		if !la.Knows(info.ID) {
			return removedVerdict, fmt.Sprintf("node %d is not a member of the cluster led by %s (removed while it was down); wiping its data dir instead of starting it on stale state", info.ID, la.Address), &la
		}
		return memberVerdict, "the leader " + la.Address + " lists this node", &la
	}
	for _, a := range answers {
		if a.Knows(info.ID) {
			return memberVerdict, "member " + a.Address + " lists this node", nil
		}
	}
	// A peer this node knows of (its cluster.yaml or its config) that
	// refused its certificate during these questions is running (only a
	// started node listens) and holds neither this controller in its
	// config nor this node's host in the Raft configuration it knows
	// (clustertls.View.Authorise): it was removed while it was down, the
	// same evidence as a leader answering without it, which the refusal
	// hides. Without this, two removed voters returning on their old
	// config outvote the survivor that refuses them.
	if by, out := d.refusedBy(asked, addrs); out {
		return removedVerdict, fmt.Sprintf("node %d is locked out: its peers (%s) refuse its certificate, so neither their config nor their Raft configuration holds it (removed while it was down); wiping its data dir instead of starting it on stale state", info.ID, by), nil
	}
	return unknownVerdict, fmt.Sprintf("no node answered whether node %d is still a member (asked %v)", info.ID, addrs), nil
}

// removeFormerNode runs before a brand new node joins at address: a member
// already at that address (the node of this data dir before it was wiped,
// or of a dead machine whose address this one was given) would make the
// join fail with "address already in use" for ever, and worse, Raft
// messages for it reach the new node, which has none of its log. It is
// removed through the leader when it cannot be alive: the config gives
// this address to this controller, this node's data dir holds no node, and
// nothing listens on the address on this machine (a bind succeeds; a
// paused old process still holds it). It reports whether the join may go
// ahead.
func (d *Daemon) removeFormerNode(ctx context.Context, address string, peers []string) bool {
	leader, ok := d.leaderView(ctx, d.askAll(ctx, peers))
	if !ok {
		// Nobody to ask: the join itself waits for a leader.
		return true
	}
	for _, m := range leader.Members {
		if m.Address != address {
			continue
		}
		l, err := net.Listen("tcp", address)
		if err != nil {
			reason := fmt.Sprintf("member %d is at this node's address %s and something on this machine listens there: not removing it", m.ID, address)
			d.decision("wait", reason)
			d.setState(StateJoining, reason)
			return false
		}
		l.Close()
		d.decision("remove-former-node", fmt.Sprintf("member %d (%s) is at the address the config gives this controller, which has no node in its data dir and nobody listening at that address: it is a former node that cannot come back; removing it so that a new node joins there", m.ID, decide.Role(m.Role)),
			"node-id", strconv.FormatUint(m.ID, 10), "address", address)
		if err := d.engine.Remove(ctx, leader.Address, m.ID); err != nil {
			d.log.Warn("cannot remove the former node at this address; will retry", "node-id", strconv.FormatUint(m.ID, 10), "err", err)
			d.setState(StateJoining, fmt.Sprintf("cannot remove former member %d at %s yet: %v", m.ID, address, err))
			return false
		}
		d.log.Info("removed the former node at this address", "node-id", strconv.FormatUint(m.ID, 10), "address", address)
	}
	return true
}

// leaderView returns the answer of the leader named in answers, asking it
// directly when it was not among them; the leader must say so itself (a
// follower's idea of the leader may be stale) and list members.
func (d *Daemon) leaderView(ctx context.Context, answers []Answer) (Answer, bool) {
	byAddress := map[string]Answer{}
	for _, a := range answers {
		byAddress[a.Address] = a
	}
	for _, a := range answers {
		if a.Leader.ID == 0 {
			continue
		}
		la, ok := byAddress[a.Leader.Address]
		if !ok {
			la = d.engine.Ask(ctx, a.Leader.Address)
			byAddress[la.Address] = la
		}
		if la.Answered && la.Leader.ID == a.Leader.ID && len(la.Members) > 0 {
			return la, true
		}
	}
	return Answer{}, false
}

// keepStandBy runs on the leader of a 2-member cluster: it makes the spare
// a stand-by (decide.TwoMemberStandBy), so that the data stays on two
// machines. It reports whether it changed a role.
func (d *Daemon) keepStandBy(ctx context.Context, obs *Observation) bool {
	members := make([]decide.Member, 0, len(obs.Members))
	for _, m := range obs.Members {
		members = append(members, decide.Member{ID: m.ID, Address: m.Address, Role: decide.Role(m.Role)})
	}
	m, ok := decide.TwoMemberStandBy(members, obs.Leader.ID)
	if !ok {
		return false
	}
	d.decision("assign-stand-by", "a 2-member cluster keeps its non-voter a stand-by (replicated, unlike a spare)", "node-id", strconv.FormatUint(m.ID, 10), "address", m.Address)
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := obs.Client.Assign(actx, m.ID, client.StandBy); err != nil {
		d.log.Warn("cannot make the spare a stand-by; will retry", "node-id", strconv.FormatUint(m.ID, 10), "err", err)
		return false
	}
	d.log.Info("role assigned", "node-id", strconv.FormatUint(m.ID, 10), "role", "stand-by")
	return true
}

// wantedByLeader asks, at most every 5 s, whether the Dqlite leader's
// config lists this controller (controller_listed, read through the
// listed peers as a client): a node removed while its own config lists it
// is either a departing unit (the charm froze its file) or a newcomer the
// leader removed while its config lagged; only the leader's config tells
// them apart. If it is wanted, the removal record is cleared.
func (d *Daemon) wantedByLeader(ctx context.Context) bool {
	now := time.Now()
	if now.Before(d.listedAt) {
		return false
	}
	d.listedAt = now.Add(5 * time.Second)
	var peers []string
	for id, host := range d.cfg.DBBindAddresses {
		if id != d.o.ControllerID {
			peers = append(peers, decide.JoinHostPort(host, d.o.Port))
		}
	}
	peers = decide.JoinPeers(peers, d.lastKnown())
	if len(peers) == 0 {
		return false
	}
	slices.Sort(peers)
	ids, err := d.engine.Listed(ctx, peers)
	if err != nil || !slices.Contains(ids, d.o.ControllerID) {
		return false
	}
	d.decision("rejoin", "removed at this address under the same config, but the Dqlite leader's config lists this controller: it was removed while the leader's config lagged, not because it is leaving")
	if err := os.Remove(filepath.Join(d.o.DataDir, removedName)); err != nil && !os.IsNotExist(err) {
		d.log.Warn("cannot clear the removal record", "err", err)
	}
	return true
}

// removalRecord is what the data dir remembers of this node's last
// removal: where it served and which config it had then.
type removalRecord struct {
	Address string `json:"address"`
	Config  string `json:"config-sha256"`
}

func configDigest(c *controllerconf.Config) string {
	data, err := controllerconf.Marshal(c)
	if err != nil {
		data = []byte(fmt.Sprint(c))
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// recordRemoval remembers that the node at address was removed under the
// current config (outside node/, which is wiped).
func (d *Daemon) recordRemoval(address string) error {
	data, err := json.Marshal(removalRecord{Address: address, Config: configDigest(d.cfg)})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.o.DataDir, removedName), data, 0o600); err != nil {
		return fmt.Errorf("cannot record the removal: %w", err)
	}
	return nil
}

// removedAt reports whether this data dir's node was removed at address
// and the config has not changed since: the charm freezes a departing
// unit's controller.conf (it still lists the unit), so rejoining whenever
// the config lists this controller would bring a removed unit back, again
// and again. A changed config (an operator adding the controller back,
// or giving it another address) clears the record.
func (d *Daemon) removedAt(address string) bool {
	path := filepath.Join(d.o.DataDir, removedName)
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var rec removalRecord
	if json.Unmarshal(data, &rec) == nil && rec.Address == address && rec.Config == configDigest(d.cfg) {
		return true
	}
	if err := os.Remove(path); err == nil {
		d.log.Info("the config changed since this node was removed: it may rejoin", "removed-at", rec.Address)
	}
	return false
}
