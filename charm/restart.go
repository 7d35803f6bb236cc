package charm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/charm/peers"
	"github.com/juju/dqlite-controller/controllerconf"
)

// Rolling restarts (peers.NextRestart has the leader's rule). A hook that
// finds controllerd must restart (upgrade-charm brought a new binary; the
// unit file changed after start: db-port, api-port) does not restart it:
// it records the need in the charm's state directory (requestRestart),
// and every hook then moves the restart along (rollRestart):
//
//  1. the unit asks: restart-request=<nonce> in its unit data;
//  2. the leader grants the lock to one asking unit at a time in the
//     application data, restart-granted=<unit> <nonce>, its own unit last;
//  3. the unit named by the committed grant restarts controllerd and waits
//     until its node is a running member again (controllerd's status),
//     then clears its request, which releases the lock; the leader, told
//     by the relation-changed that follows, grants the next unit.
//
// The wait for the node to rejoin is bounded by Config.RejoinTimeout
// (default 60 s): a restarted node normally answers as a running member
// within seconds, so the release almost always happens in the hook that
// restarted, and the next unit restarts at once. Juju hooks should be short
// (they hold up every other hook of the unit), so a node that is not back
// by then does not hold the hook: the request stays (the lock stays held,
// which is the safe side: nobody else restarts while this node may be
// down), the status says what the unit waits for, and any later hook of
// the unit (update-status at the latest) checks again and releases. A node
// that never comes back stops the roll there, for an operator to look at,
// instead of taking a second node down.
//
// A unit that is alone (no peer in the relation and nobody else in the
// cluster list) restarts at once: there is nobody to take turns with.

const (
	msgWaitingRestartLock = "waiting to restart (waiting for the leader to grant the restart lock)"
	msgWaitingRejoin      = "restarted controllerd; waiting for its node to rejoin the cluster before releasing the restart lock"
)

// restartState is this unit's pending restart, kept in the charm's state
// directory across hooks.
type restartState struct {
	// Nonce names the request in the relation data.
	Nonce string `json:"nonce"`
	// Reasons are what made it necessary (hook or option names).
	Reasons []string `json:"reasons"`
	// Restarted is set just before the restart for Nonce: the node may be
	// down until it is a running member again, and the lock is held.
	Restarted bool `json:"restarted"`
	// Again holds the reasons that came after the restart for Nonce: a
	// new request for them follows the release.
	Again []string `json:"again,omitempty"`
}

func (c Config) restartPath(agentID string) string {
	return filepath.Join(c.stateDir(), "unit-"+agentID+".restart")
}

func (h *hook) loadRestart() (*restartState, error) {
	data, err := os.ReadFile(h.cfg.restartPath(h.agentID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the pending restart: %w", err)
	}
	var st restartState
	if err := json.Unmarshal(data, &st); err != nil || st.Nonce == "" {
		// A torn or foreign file: restart once more rather than never.
		h.log.Warn("replacing an unreadable pending-restart file", "path", h.cfg.restartPath(h.agentID), "err", err)
		return newRestart("unknown"), nil
	}
	return &st, nil
}

func (h *hook) saveRestart(st *restartState) error {
	path := h.cfg.restartPath(h.agentID)
	if st == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cannot clear the pending restart: %w", err)
		}
		return nil
	}
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("cannot encode the pending restart: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("cannot create the charm state directory: %w", err)
	}
	if err := controllerconf.WriteFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("cannot record the pending restart: %w", err)
	}
	return nil
}

func newRestart(reason string) *restartState {
	return &restartState{
		Nonce:   reason + "@" + time.Now().UTC().Format(time.RFC3339Nano),
		Reasons: []string{reason},
	}
}

// requestRestart records that controllerd must restart for reason; the
// restart itself waits for this unit's turn (rollRestart).
func (h *hook) requestRestart(reason string) error {
	st, err := h.loadRestart()
	if err != nil {
		return err
	}
	switch {
	case st == nil:
		st = newRestart(reason)
	case st.Restarted:
		// Restarted already for an earlier reason, maybe before this
		// one's change was on disk: once more after the release.
		st.Again = appendNew(st.Again, reason)
	default:
		// Not restarted yet: that one restart covers this reason too.
		st.Reasons = appendNew(st.Reasons, reason)
	}
	h.log.Info("controllerd must restart; waiting for this unit's turn", "reason", reason, "request", st.Nonce)
	return h.saveRestart(st)
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// rollRestart moves this unit's pending restart along and, on the leader,
// the restart lock (see the comment at the top of this file). relID is ""
// before the peer relation exists; cluster is the cluster list this hook
// writes (nil: unknown).
func (h *hook) rollRestart(ctx context.Context, relID string, cluster *controllerconf.Config) error {
	st, err := h.loadRestart()
	if err != nil {
		return err
	}
	if relID == "" {
		if st != nil {
			return h.restartAlone(ctx, st)
		}
		return nil
	}
	mine, err := h.tools.RelationGet(ctx, relID, h.env.UnitName)
	if err != nil {
		return err
	}
	// Read before this function writes the grant: only it writes that
	// key, so this is the committed grant.
	app, err := h.tools.RelationGetApp(ctx, relID, h.env.AppName())
	if err != nil {
		return err
	}
	units, err := h.tools.RelationList(ctx, relID)
	if err != nil {
		return err
	}
	grant, _ := peers.ParseGrant(app[peers.KeyRestartGranted])
	request := mine[peers.KeyRestartRequest]
	waiting := "" // this unit's waiting status, if any
	if st != nil && !st.Restarted && h.alone(units, cluster) {
		if err := h.restartAlone(ctx, st); err != nil {
			return err
		}
		st = nil
	}
	switch {
	case st == nil:
		request = ""
	case !st.Restarted && grant.Holds(h.env.UnitName, st.Nonce):
		st.Restarted = true
		if err := h.saveRestart(st); err != nil {
			return err
		}
		if err := h.restartNow(ctx, st); err != nil {
			return err
		}
		fallthrough
	case st.Restarted:
		if !h.waitRejoin(ctx) {
			waiting = msgWaitingRejoin
			request = st.Nonce // keep holding the lock
			break
		}
		h.log.Info("controllerd restarted and its node is a running member again; releasing the restart lock", "request", st.Nonce)
		if len(st.Again) > 0 {
			st = newRestart(strings.Join(st.Again, "+"))
			request = st.Nonce
			waiting = msgWaitingRestartLock
		} else {
			st, request = nil, ""
		}
		if err := h.saveRestart(st); err != nil {
			return err
		}
	default:
		request = st.Nonce
		if grant.Unit != "" && grant.Unit != h.env.UnitName {
			waiting = fmt.Sprintf("waiting to restart (%s is restarting)", grant.Unit)
		} else {
			waiting = msgWaitingRestartLock
		}
	}
	target := h.restartTarget()
	write := map[string]string{}
	if mine[peers.KeyRestartRequest] != request {
		write[peers.KeyRestartRequest] = request
	}
	// Only a unit that is (or is about to be) a cluster member has a
	// say in the order of the roll.
	if target != "" && mine[peers.KeyBindAddress] != "" && mine[peers.KeyRestartTarget] != target {
		write[peers.KeyRestartTarget] = target
	}
	if err := h.tools.RelationSet(ctx, relID, false, write); err != nil {
		return err
	}
	if target == "" {
		target = mine[peers.KeyRestartTarget]
	}
	leader, err := h.tools.IsLeader(ctx)
	if err == nil && leader {
		var d peers.RestartDecision
		d, err = h.moveRestartLock(ctx, relID, units, request, target, app[peers.KeyRestartGranted])
		if len(d.Behind) > 0 && request != "" {
			waiting = fmt.Sprintf("waiting to restart (the leader's unit goes last; waiting for %s to ask first)", strings.Join(d.Behind, ", "))
		}
	}
	if waiting != "" {
		h.status.add(hooktools.StatusWaiting, waiting)
	}
	return err
}

// alone reports whether this unit has nobody to take turns with: no peer
// in the relation and nobody else in the cluster list.
func (h *hook) alone(units []string, cluster *controllerconf.Config) bool {
	if len(units) > 0 {
		return false
	}
	if cluster == nil {
		return true
	}
	for id := range cluster.DBBindAddresses {
		if id != h.agentID {
			return false
		}
	}
	return true
}

// restartAlone restarts a unit that has nobody to take turns with.
func (h *hook) restartAlone(ctx context.Context, st *restartState) error {
	if err := h.restartNow(ctx, st); err != nil {
		return err
	}
	h.joinExpected = true // the status settles on the restarted daemon
	return h.saveRestart(nil)
}

func (h *hook) restartNow(ctx context.Context, st *restartState) error {
	if err := h.svc.Restart(ctx); err != nil {
		return h.serviceFailed(err)
	}
	h.log.Info("restarted controllerd", "reasons", strings.Join(st.Reasons, ","), "request", st.Nonce)
	return nil
}

// waitRejoin polls controllerd's status for up to RejoinTimeout until its
// node is a running member.
func (h *hook) waitRejoin(ctx context.Context) bool {
	var deadline <-chan time.Time
	if h.cfg.RejoinTimeout > 0 {
		deadline = time.After(h.cfg.RejoinTimeout)
	}
	for {
		st, err := h.workloadStatus(ctx)
		if err == nil && servingMember(st) {
			return true
		}
		if deadline == nil {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// servingMember reports whether the daemon's node is back in the cluster:
// a member with a role that sees a leader, in state running, or moving: a
// node whose new config gives it another address (a db-port change, whose
// restarts roll like any other) keeps serving as a member at its old
// address until the Dqlite leader removes it to rejoin at the new one,
// which the daemons do one member at a time while quorum holds
// (workload/daemon/decide PickMove), so it is up for the next restart.
func servingMember(st *WorkloadStatus) bool {
	if !st.Member || st.Role == "" || st.ConfigError != "" || st.Leader == nil || st.Leader.NodeID == "" {
		return false
	}
	return st.State == "running" || st.State == "moving"
}

// moveRestartLock is the leader's part: it reads every peer's request and
// writes the grant peers.NextRestart decides on.
func (h *hook) moveRestartLock(ctx context.Context, relID string, units []string, ownRequest, ownTarget, granted string) (peers.RestartDecision, error) {
	view := peers.RestartView{
		Leader: h.env.UnitName, Units: units, Departing: h.env.DepartingUnit,
		Requests: map[string]string{h.env.UnitName: ownRequest}, Granted: granted,
		Targets: map[string]string{h.env.UnitName: ownTarget},
	}
	for _, u := range units {
		if u == h.env.DepartingUnit || u == h.env.UnitName {
			continue
		}
		data, ok := h.peerData[u]
		if !ok {
			var err error
			if data, err = h.tools.RelationGet(ctx, relID, u); err != nil {
				return peers.RestartDecision{}, err
			}
		}
		if r := data[peers.KeyRestartRequest]; r != "" {
			view.Requests[u] = r
		}
		view.Targets[u] = data[peers.KeyRestartTarget]
	}
	d := peers.NextRestart(view)
	if !d.Changed(view) {
		return d, nil
	}
	if d.Released != "" {
		h.log.Info("released the restart lock of "+d.Released, "why", d.Why)
	}
	if d.Grant.Unit != "" {
		h.log.Info("granted the restart lock to "+d.Grant.Unit, "request", d.Grant.Nonce, "queue", strings.Join(d.Queue, ","))
	}
	return d, h.tools.RelationSet(ctx, relID, true, map[string]string{peers.KeyRestartGranted: d.Grant.String()})
}

// restartTarget is this unit's KeyRestartTarget: the digest of the
// controllerd binary in the charm directory and the unit file's shared
// settings ("" while the unit file cannot be rendered).
func (h *hook) restartTarget() string {
	if h.serviceSettings == "" {
		return ""
	}
	return "controllerd=" + h.binaryDigest() + " " + h.serviceSettings
}

// binaryDigest is the SHA-256 of the controllerd binary ("unknown" when it
// cannot be read), cached in the charm's state directory by size,
// modification time and inode, since hashing tens of megabytes in every
// hook would cost more than the hook itself.
func (h *hook) binaryDigest() string {
	path := h.controllerd()
	fi, err := os.Stat(path)
	if err != nil {
		return "unknown"
	}
	key := fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		key += fmt.Sprintf(" %d", sys.Ino)
	}
	cache := filepath.Join(h.cfg.stateDir(), "controllerd.digest")
	if data, err := os.ReadFile(cache); err == nil {
		if k, d, ok := strings.Cut(string(data), "\n"); ok && k == key && d != "" {
			return d
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return "unknown"
	}
	d := "sha256:" + hex.EncodeToString(sum.Sum(nil))[:16]
	if err := os.MkdirAll(filepath.Dir(cache), 0o700); err == nil {
		_ = controllerconf.WriteFileAtomic(cache, []byte(key+"\n"+d), 0o600)
	}
	return d
}
