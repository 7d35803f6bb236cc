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
// unless this node has the most up-to-date log of every survivor that
// answers (term, then index, as each published it while quorum was lost),
// so no entry a surviving majority could have committed is dropped; it
// refuses on a spare (never replicated to); it copies the node dir aside
// first. Every other node then finds itself outside the new configuration
// and wipes before serving: a running one at its next membership check (it
// reaches this node, the only leader), one that was down before it starts
// (removedWhileAway). The residual risk is the automatic path's: nodes that
// come back while this one is unreachable and form a majority of the old
// configuration among themselves.
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
	if self.Role == "spare" {
		return res, fmt.Errorf("cannot recover: this node was a spare, which is never replicated to; run recover-from-quorum-loss on a unit whose node was a voter or stand-by")
	}
	mine := RaftPosition{Term: self.Term, Index: self.Index}
	res.Position = control.RaftInfo{ControllerID: self.ControllerID, NodeID: self.NodeID, Term: self.Term, Index: self.Index, Role: self.Role, HasData: true}
	published := map[string]control.RaftInfo{}
	for _, p := range req.Peers {
		published[p.ControllerID] = p
	}
	ids := cfg.AgentIDs()
	for _, id := range ids {
		if id == d.o.ControllerID {
			continue
		}
		addr := decide.JoinHostPort(cfg.DBBindAddresses[id], d.o.Port)
		if !d.answers(ctx, addr) {
			res.Unreachable = append(res.Unreachable, id)
			continue
		}
		res.Survivors = append(res.Survivors, id)
		p, ok := published[id]
		switch {
		case !ok || p.State == "":
			return res, fmt.Errorf("cannot recover: controller %s answers but has not published its Raft position since quorum was lost; wait for its next hook (update-status) and retry", id)
		case p.State != string(StateNoQuorum) && p.State != string(StateReconfiguring):
			return res, fmt.Errorf("cannot recover: controller %s published state %q, not %q: its position may be stale; wait for its next hook (update-status) and retry", id, p.State, StateNoQuorum)
		case p.HasData && p.Role != "spare" && (RaftPosition{Term: p.Term, Index: p.Index}).Newer(mine):
			return res, fmt.Errorf("cannot recover: controller %s has a more up-to-date Raft log (term %d, index %d) than this one (%s); run recover-from-quorum-loss on its unit (dqlite-controller/%s) instead", id, p.Term, p.Index, mine, id)
		}
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
		res.Message += fmt.Sprintf("; controllers %s wipe their data and rejoin by themselves", strings.Join(res.Survivors, ", "))
	}
	if len(dead) > 0 {
		res.Message += fmt.Sprintf("; next: remove the units that are gone with juju remove-unit --force %s (if they come back they wipe and rejoin)", strings.Join(dead, " "))
	}
	return res, nil
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
