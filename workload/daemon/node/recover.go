package node

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/daemon/decide"
)

// Recovery after a lost quorum, by the operator (recover-from-quorum-loss):
// what the automatic 3 → 1 path (noLeaderReachable) does not cover: several
// survivors, 5 → 2, a stand-by survivor.

const (
	// recoverLeaderProbe bounds the search for a reachable leader before a
	// recovery is allowed.
	recoverLeaderProbe = 3 * time.Second
	// recoverRestartWait bounds the wait for the node to run again as the
	// sole voter after the forced reconfiguration.
	recoverRestartWait = 30 * time.Second
)

// RaftInfo implements control.Operations: this node's Raft log position
// (read from its files), its state and its last known role, which the charm
// publishes while quorum is lost so that the recovery can pick the most
// up-to-date survivor.
func (d *Daemon) RaftInfo(ctx context.Context) (control.RaftInfo, error) {
	st := d.Status(ctx)
	info := control.RaftInfo{ControllerID: d.o.ControllerID, NodeID: st.NodeID, State: st.State, Role: st.Role}
	if _, ok, err := readInfo(d.nodeDir); err != nil || !ok {
		return info, nil
	}
	p, err := readRaftPosition(d.nodeDir)
	if err != nil {
		return info, err
	}
	info.HasData, info.Term, info.Index = true, p.Term, p.Index
	if info.Role == "" {
		info.Role = d.lastKnownRole(st)
	}
	return info, nil
}

func (d *Daemon) lastKnownRole(st control.Status) string {
	for _, m := range st.Members {
		if m.NodeID == st.NodeID {
			return m.Role
		}
	}
	store, _ := readStore(d.nodeDir)
	for _, n := range store {
		if strconv.FormatUint(n.ID, 10) == st.NodeID {
			return decide.Role(n.Role).String()
		}
	}
	return ""
}

// Recover implements control.Operations: it makes this node the sole voter
// of its cluster, keeping every entry of its log, so that the others can
// wipe and join it.
//
// Safe because: it refuses while any leader is reachable (quorum is not
// lost, and a second configuration would split the cluster); it refuses
// unless this node's log is at least as up to date as every position a
// listed unit published while quorum was lost, whether or not that unit
// answers here (chooseRecovery), so no entry a surviving node holds is
// dropped; it copies the node dir aside first. Every other node then finds
// itself outside the new configuration and wipes before serving: a running
// one at its next membership check (it reaches this node, the only
// leader), one that was down before it starts (removedWhileAway). The
// residual risk is the automatic path's: nodes that come back while this
// one is unreachable and form a majority of the old configuration among
// themselves.
func (d *Daemon) Recover(ctx context.Context, req control.RecoverRequest) (control.RecoverResult, error) {
	var res control.RecoverResult
	if !req.Confirm {
		return res, fmt.Errorf("cannot recover: confirm=true is required: this forces a new Raft configuration with this node as the only voter, and the other nodes wipe their data and rejoin it")
	}
	cfg, err := controllerconf.Read(d.o.ConfigPath)
	if err != nil {
		return res, fmt.Errorf("cannot recover: cannot read the config: %w", err)
	}
	st := d.Status(ctx)
	if st.NodeID == "" {
		return res, fmt.Errorf("cannot recover: no Dqlite node runs on controller %s (%s: %s)", d.o.ControllerID, st.State, st.Message)
	}
	if addr, ok := d.reachableLeader(ctx, cfg); ok {
		return res, fmt.Errorf("cannot recover: a Dqlite leader is reachable (%s), so quorum is not lost; remove dead members with remove-member force=true instead", addr)
	}
	self, err := d.RaftInfo(ctx)
	if err != nil {
		return res, fmt.Errorf("cannot recover: cannot read this node's Raft log: %w", err)
	}
	if !self.HasData {
		return res, fmt.Errorf("cannot recover: this node has no data")
	}
	mine := RaftPosition{Term: self.Term, Index: self.Index}
	res.Position = control.RaftInfo{ControllerID: self.ControllerID, NodeID: self.NodeID, Term: self.Term, Index: self.Index, Role: self.Role, HasData: true}
	published := map[string]control.RaftInfo{}
	for _, p := range req.Peers {
		published[p.ControllerID] = p
	}
	answering := map[string]bool{}
	asked := map[string]bool{} // the addresses a unit accounts for
	for _, id := range cfg.AgentIDs() {
		if id != d.o.ControllerID {
			addrs := d.peerAddresses(cfg, id, published[id])
			answering[id] = d.answersAt(ctx, addrs)
			for _, a := range addrs {
				asked[a] = true
			}
		}
	}
	var strays []string
	for _, a := range d.configurationAddresses(self.NodeID) {
		if !asked[a] && d.answers(ctx, a) {
			strays = append(strays, a)
		}
	}
	res.Survivors, res.Unreachable, err = chooseRecovery(mine, answering, published, strays)
	if err != nil {
		return res, err
	}
	d.log.Warn("recovering from quorum loss on the operator's request: this node becomes the sole voter",
		"position", mine.String(), "survivors", res.Survivors, "unreachable", res.Unreachable)
	copied := make(chan string, 1)
	err = d.call(ctx, func(ctx context.Context) error {
		dir, err := d.recoverByOperator(ctx, cfg)
		copied <- dir
		return err
	})
	select {
	case res.SafetyCopy = <-copied:
	default:
		if ctx.Err() != nil {
			// The request may have reached the loop before ctx ended.
			return res, fmt.Errorf("%w: recover-from-quorum-loss did not finish: %w; run cluster-status and see journalctl -u controllerd", control.ErrOutcomeUnknown, err)
		}
		return res, fmt.Errorf("cannot recover: %w; nothing was changed", err)
	}
	if err != nil {
		return res, err
	}
	backup := res.SafetyCopy
	deadline := time.Now().Add(recoverRestartWait)
	for {
		st := d.Status(ctx)
		if st.State == string(StateRunning) && st.Member {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("%w: the node was reconfigured as the sole voter but is %s (%s) after %s; see journalctl -u controllerd and run cluster-status", control.ErrOutcomeUnknown, st.State, st.Message, recoverRestartWait)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var dead []string
	for _, id := range res.Unreachable {
		dead = append(dead, "dqlite-controller/"+id)
	}
	res.Message = fmt.Sprintf("controller %s is now the only voter, with its log at %s; its data dir was copied to %s", d.o.ControllerID, mine, backup)
	if len(res.Survivors) > 0 {
		if len(res.Survivors) == 1 {
			res.Message += fmt.Sprintf("; controller %s wipes its data and rejoins by itself", res.Survivors[0])
		} else {
			res.Message += fmt.Sprintf("; controllers %s wipe their data and rejoin by themselves", strings.Join(res.Survivors, ", "))
		}
	}
	if len(dead) > 0 {
		res.Message += fmt.Sprintf("; next: remove the units that are gone with juju remove-unit --force %s (if they come back they wipe and rejoin)", strings.Join(dead, " "))
	}
	return res, nil
}

// chooseRecovery is the recovery's policy, without I/O: whether the node
// at position mine may become the sole voter, given which other listed
// controllers answer on their Dqlite address (answering, keyed by
// controller id) and the positions the units published while quorum was
// lost (published). It returns the survivors (they wipe and rejoin) and
// the controllers that are gone (neither answering nor published).
//
// A unit that published a position during the loss is a survivor even if
// its node does not answer here (split from this machine, or still at an
// address the config no longer gives it): its log counts, because
// recovering past a newer log drops entries that a majority may have
// committed. Spares count like the others: the cluster may have demoted a
// node that was away without it knowing, so a role says nothing about a
// log; a spare may be chosen exactly when its log is the newest. A unit
// that answers but published nothing (or not in state no-quorum) may hold
// a newer log nobody has seen: refused until its next hook. So is a node
// of this node's Raft configuration that answers at an address no
// answering unit accounts for (strays): its unit's position may be one
// this unit's view of the relation has not seen yet, and counting it as
// gone would drop its log.
func chooseRecovery(mine RaftPosition, answering map[string]bool, published map[string]control.RaftInfo, strays []string) (survivors, unreachable []string, err error) {
	if len(strays) > 0 {
		return nil, nil, fmt.Errorf("cannot recover: the node at %s, a member of this node's Raft configuration, answers, but its unit has not published its Raft position since quorum was lost (or this unit has not seen it yet); wait for its next hook (update-status) and retry", strings.Join(strays, ", "))
	}
	ids := make([]string, 0, len(answering))
	for id := range answering {
		ids = append(ids, id)
	}
	sortIDs(ids)
	for _, id := range ids {
		p, ok := published[id]
		during := ok && (p.State == string(StateNoQuorum) || p.State == string(StateReconfiguring))
		switch {
		case answering[id] && (!ok || p.State == ""):
			return nil, nil, fmt.Errorf("cannot recover: controller %s answers but has not published its Raft position since quorum was lost; wait for its next hook (update-status) and retry", id)
		case answering[id] && !during:
			return nil, nil, fmt.Errorf("cannot recover: controller %s published state %q, not %q: its position may be stale; wait for its next hook (update-status) and retry", id, p.State, StateNoQuorum)
		case ok && p.HasData && (RaftPosition{Term: p.Term, Index: p.Index}).Newer(mine):
			return nil, nil, fmt.Errorf("cannot recover: controller %s has a more up-to-date Raft log (term %d, index %d) than this one (%s); run recover-from-quorum-loss on its unit (dqlite-controller/%s) instead (if its machine is gone for good, remove it first with juju remove-unit --force dqlite-controller/%s, losing what only its log holds)", id, p.Term, p.Index, mine, id, id)
		case answering[id] || during:
			survivors = append(survivors, id)
		default:
			unreachable = append(unreachable, id)
		}
	}
	return survivors, unreachable, nil
}

// sortIDs sorts controller ids numerically (they are unit numbers).
func sortIDs(ids []string) {
	sort.Slice(ids, func(i, j int) bool {
		a, errA := strconv.Atoi(ids[i])
		b, errB := strconv.Atoi(ids[j])
		if errA != nil || errB != nil {
			return ids[i] < ids[j]
		}
		return a < b
	})
}

// peerAddresses are where controller id's node may answer: the address
// the config gives it and, when that changed (juju bind) while its node
// still runs at the old one, the address this node's last known members
// list for the node id it published.
func (d *Daemon) peerAddresses(cfg *controllerconf.Config, id string, p control.RaftInfo) []string {
	addrs := []string{decide.JoinHostPort(cfg.DBBindAddresses[id], d.o.Port)}
	if p.NodeID == "" {
		return addrs
	}
	known := d.Status(context.Background()).Members
	store, _ := readStore(d.nodeDir)
	for _, n := range store {
		known = append(known, control.Member{NodeID: strconv.FormatUint(n.ID, 10), Address: n.Address})
	}
	for _, m := range known {
		if m.NodeID == p.NodeID && m.Address != addrs[0] {
			return append(addrs, m.Address)
		}
	}
	return addrs
}

// configurationAddresses returns the addresses of the other members of
// this node's Raft configuration as it last knew them: its last
// observation and cluster.yaml.
func (d *Daemon) configurationAddresses(selfNodeID string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(id, address string) {
		if id != selfNodeID && address != "" && !seen[address] {
			seen[address] = true
			out = append(out, address)
		}
	}
	for _, m := range d.Status(context.Background()).Members {
		add(m.NodeID, m.Address)
	}
	store, _ := readStore(d.nodeDir)
	for _, n := range store {
		add(strconv.FormatUint(n.ID, 10), n.Address)
	}
	return out
}

// answersAt reports whether a Dqlite node answers at any of addrs.
func (d *Daemon) answersAt(ctx context.Context, addrs []string) bool {
	for _, a := range addrs {
		if d.answers(ctx, a) {
			return true
		}
	}
	return false
}

// excludedAtNewAddress runs while no leader answers this running node at
// the addresses it knows (its last known members, cluster.yaml): it asks
// the addresses the config lists that none of them has, where peers went
// while quorum was lost (juju bind, a new NIC), among them a survivor that
// recovered the cluster (recover-from-quorum-loss) and then moved, as a
// sole member does, to the address its config gives it. A leader there,
// confirming it leads, whose configuration lacks this node's id means the
// cluster went on without this node: the caller wipes it (becomeRemoved),
// the same evidence stillMember acts on for a stopped node. Without this
// such a node waits in no-quorum for ever, asking only addresses nobody
// serves at any more. It asks nothing when the config adds no address, so
// an ordinary loss of quorum costs no extra dial.
func (d *Daemon) excludedAtNewAddress(ctx context.Context, known []client.NodeInfo, selfID uint64) (string, bool) {
	seen := map[string]bool{}
	store, _ := readStore(d.nodeDir)
	for _, n := range append(known, store...) {
		seen[n.Address] = true
	}
	if own, ok := d.ownAddress(); ok {
		seen[own] = true
	}
	var fresh []string
	for _, host := range d.cfg.DBBindAddresses {
		if a := decide.JoinHostPort(host, d.o.Port); !seen[a] {
			seen[a] = true
			fresh = append(fresh, a)
		}
	}
	if len(fresh) == 0 {
		return "", false
	}
	sort.Strings(fresh)
	la, ok := d.leaderView(ctx, d.askAll(ctx, fresh))
	if !ok || la.Knows(selfID) {
		return "", false
	}
	return la.Address, true
}

// recoverByOperator runs on the loop: it checks again that no leader
// answers (this run's last pass, then every listed peer and member), then
// forces the configuration to this node alone (forceConfiguration) with a
// copy of its node dir aside first. A failure before the reconfiguration
// restarts the node unchanged. It returns the copy's path.
func (d *Daemon) recoverByOperator(ctx context.Context, cfg *controllerconf.Config) (string, error) {
	r := d.run
	if r == nil {
		return "", fmt.Errorf("cannot recover: the Dqlite node stopped meanwhile (%s); retry", d.state)
	}
	if r.leader != nil {
		return "", fmt.Errorf("cannot recover: this node reached the Dqlite leader %s meanwhile, so quorum is not lost; nothing was changed", r.leader.Address)
	}
	if addr, ok := d.reachableLeader(ctx, cfg); ok {
		return "", fmt.Errorf("cannot recover: a Dqlite leader is reachable (%s), so quorum is not lost; nothing was changed", addr)
	}
	d.decision("reconfigure", "the operator ran recover-from-quorum-loss: no leader reachable and this node has the most up-to-date log of the survivors")
	var backup string
	err := d.forceConfiguration("reconfiguring this node as the sole voter (recover-from-quorum-loss)", nil, func() error {
		dir, err := d.copyNodeDir()
		if err != nil {
			return fmt.Errorf("cannot recover: cannot copy the node dir aside: %w; nothing was changed", err)
		}
		backup = dir
		return nil
	})
	switch {
	case err != nil && backup == "":
		return "", err
	case err != nil:
		return backup, fmt.Errorf("%w: cannot force the new Raft configuration: %w; the node dir before it is in %s", control.ErrOutcomeUnknown, err, backup)
	}
	d.log.Info("reconfigured this node as the sole voter on the operator's request", "safety-copy", backup)
	return backup, nil
}

// reachableLeader looks for a leader through every listed peer and the
// members of cluster.yaml.
func (d *Daemon) reachableLeader(ctx context.Context, cfg *controllerconf.Config) (string, bool) {
	seen := map[string]bool{}
	var nodes []client.NodeInfo
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			nodes = append(nodes, client.NodeInfo{Address: a})
		}
	}
	for _, host := range cfg.DBBindAddresses {
		add(decide.JoinHostPort(host, d.o.Port))
	}
	store, _ := readStore(d.nodeDir)
	for _, n := range store {
		add(n.Address)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Address < nodes[j].Address })
	probe := client.NewInmemNodeStore()
	ctx, cancel := context.WithTimeout(ctx, recoverLeaderProbe)
	defer cancel()
	probe.Set(ctx, nodes)
	cli, err := d.findLeader(ctx, probe)
	if err != nil {
		return "", false
	}
	defer cli.Close()
	l, err := cli.Leader(ctx)
	if err != nil || l == nil || l.Address == "" {
		return "", false
	}
	return l.Address, true
}

// copyNodeDir copies the node dir into <data-dir>/recovery-<UTC time>/ so
// that the state before the forced reconfiguration can be inspected or put
// back by hand.
func (d *Daemon) copyNodeDir() (string, error) {
	dst := filepath.Join(d.o.DataDir, "recovery-"+time.Now().UTC().Format("20060102T150405.000Z"))
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return "", err
	}
	entries, err := os.ReadDir(d.nodeDir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if err := copyFile(filepath.Join(d.nodeDir, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return "", err
		}
	}
	return dst, syncDir(dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
