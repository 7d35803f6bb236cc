package charm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
)

// The charm's actions (actions.yaml): each runs the controllerd subcommand
// of the same name on this unit's machine, which asks the daemon over its
// control socket, and reports the answer with action-set. A refusal or
// failure is reported with action-fail and controllerd's message (which
// names the problem and the fix); the handler then exits 0, so Juju shows
// that message rather than "exit status 1". Hook tool failures exit 1.

// Action names (the contract of actions.yaml).
const (
	ActionClusterStatus = "cluster-status"
	ActionCreateBackup  = "create-backup"
	ActionListBackups   = "list-backups"
	ActionRemoveMember  = "remove-member"
)

// actionTimeouts bound each controllerd call; create-backup waits for the
// lease holder (up to 2 min in controllerd).
var actionTimeouts = map[string]time.Duration{
	ActionClusterStatus: time.Minute,
	ActionCreateBackup:  4 * time.Minute,
	ActionListBackups:   time.Minute,
	ActionRemoveMember:  time.Minute,
	ActionRecover:       3 * time.Minute,
	ActionRotateCA:      time.Minute,
	ActionRestore:       10 * time.Minute,
}

// RunAction runs the action env.Action.
func RunAction(ctx context.Context, cfg Config, env Env) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	timeout, ok := actionTimeouts[env.Action]
	if !ok {
		return fmt.Errorf("cannot run action %q: this charm has no such action", env.Action)
	}
	if cfg.Runner == nil {
		return errors.New("cannot run the action: no command runner configured")
	}
	tools := hooktools.New(timeoutRunner{inner: cfg.Runner, timeout: 2 * time.Minute})
	params, err := tools.ActionGet(ctx)
	if err != nil {
		return err
	}
	a := &action{cfg: cfg, env: env, tools: tools, params: params, timeout: timeout}
	results, failure := a.run(ctx)
	if err := tools.ActionSet(ctx, results); err != nil {
		return err
	}
	if failure != "" {
		cfg.Logger.Warn("action failed", "action", env.Action, "reason", failure)
		return tools.ActionFail(ctx, failure)
	}
	return nil
}

type action struct {
	cfg     Config
	env     Env
	tools   *hooktools.Client
	params  map[string]any
	timeout time.Duration
}

// run returns the results and, when the action failed, why.
func (a *action) run(ctx context.Context) (map[string]string, string) {
	switch a.env.Action {
	case ActionClusterStatus:
		return a.clusterStatus(ctx)
	case ActionCreateBackup:
		var b backupInfo
		if msg := a.controllerd(ctx, &b, "create-backup"); msg != "" {
			return nil, msg
		}
		return map[string]string{"backup-id": b.ID, "controller-id": b.ControllerID, "time": b.Time,
			"size": strconv.FormatInt(b.Size, 10), "path": b.Path,
			"summary": fmt.Sprintf("backup %s taken by controller %s: %d bytes in %s on its machine", b.ID, b.ControllerID, b.Size, b.Path)}, ""
	case ActionListBackups:
		var bs []backupInfo
		if msg := a.controllerd(ctx, &bs, "list-backups"); msg != "" {
			return nil, msg
		}
		out := map[string]string{"count": strconv.Itoa(len(bs))}
		var lines []string
		for i, b := range bs {
			k := "backups." + strconv.Itoa(i) + "."
			out[k+"id"], out[k+"time"], out[k+"size"], out[k+"path"] = b.ID, b.Time, strconv.FormatInt(b.Size, 10), b.Path
			lines = append(lines, fmt.Sprintf("%s  %s  %d bytes", b.ID, b.Time, b.Size))
		}
		out["summary"] = fmt.Sprintf("%d backup(s) on this unit", len(bs))
		if len(lines) > 0 {
			out["summary"] += ":\n" + strings.Join(lines, "\n")
		}
		return out, ""
	case ActionRemoveMember:
		return a.removeMember(ctx)
	case ActionRecover:
		return a.recover(ctx)
	case ActionRotateCA:
		return a.rotateCA(ctx) // rotation.go
	case ActionRestore:
		return a.restore(ctx)
	}
	return nil, "unknown action " + a.env.Action
}

type backupInfo struct {
	ID           string `json:"id"`
	ControllerID string `json:"controller-id"`
	Time         string `json:"time"`
	Size         int64  `json:"size"`
	Path         string `json:"path"`
}

type clusterMember struct {
	NodeID       string `json:"node-id"`
	ControllerID string `json:"controller-id"`
	Address      string `json:"address"`
	Role         string `json:"role"`
	Online       bool   `json:"online"`
	Leader       bool   `json:"leader"`
}

type clusterStatus struct {
	Members     []clusterMember `json:"members"`
	Leader      *clusterMember  `json:"leader"`
	LeaseHolder string          `json:"lease-holder"`
	LeaseExpiry string          `json:"lease-expiry"`
	LastBackup  *backupInfo     `json:"last-backup"`
	Problems    []string        `json:"problems"`
}

func (a *action) clusterStatus(ctx context.Context) (map[string]string, string) {
	var cs clusterStatus
	if msg := a.controllerd(ctx, &cs, "cluster-status"); msg != "" {
		return nil, msg
	}
	out := map[string]string{"leader": "none", "lease-holder": "none", "last-backup": "none"}
	var lines []string
	online := 0
	for i, m := range cs.Members {
		k := "members." + strconv.Itoa(i) + "."
		out[k+"node-id"], out[k+"controller-id"], out[k+"address"], out[k+"role"] = m.NodeID, m.ControllerID, m.Address, m.Role
		out[k+"online"] = strconv.FormatBool(m.Online)
		state := "offline"
		if m.Online {
			state, online = "online", online+1
		}
		mark := ""
		if m.Leader {
			mark = ", leader"
		}
		lines = append(lines, fmt.Sprintf("controller %s  node %s  %s  %s  %s%s", orDash(m.ControllerID), m.NodeID, m.Address, m.Role, state, mark))
	}
	if l := cs.Leader; l != nil {
		out["leader"] = fmt.Sprintf("%s (controller %s)", l.Address, orDash(l.ControllerID))
	}
	if cs.LeaseHolder != "" {
		out["lease-holder"] = cs.LeaseHolder + " until " + cs.LeaseExpiry
	}
	if b := cs.LastBackup; b != nil {
		out["last-backup"] = fmt.Sprintf("%s by controller %s at %s (%d bytes)", b.ID, b.ControllerID, b.Time, b.Size)
	}
	for i, p := range cs.Problems {
		out["problems."+strconv.Itoa(i)] = p
	}
	summary := fmt.Sprintf("%d members, %d online; leader %s; singular-controller lease %s; last backup %s",
		len(cs.Members), online, out["leader"], out["lease-holder"], out["last-backup"])
	out["summary"] = summary + "\n" + strings.Join(lines, "\n")
	return out, ""
}

func (a *action) removeMember(ctx context.Context) (map[string]string, string) {
	args := []string{"remove-member"}
	id, hasID := a.params["agent-id"]
	addr, _ := a.params["address"].(string)
	switch {
	case hasID && addr != "":
		return nil, "give either agent-id or address, not both"
	case hasID:
		n, ok := id.(float64)
		if !ok || n < 0 || n != float64(int64(n)) {
			return nil, fmt.Sprintf("invalid agent-id %v: give the unit number of the member's unit", id)
		}
		args = append(args, "--agent-id", strconv.FormatInt(int64(n), 10))
	case addr != "":
		args = append(args, "--address", addr)
	default:
		return nil, "no member named: give agent-id=<unit number> or address=<IP>; cluster-status lists the members"
	}
	if force, _ := a.params["force"].(bool); force {
		args = append(args, "--force")
	}
	var r struct {
		NodeID       string `json:"node-id"`
		ControllerID string `json:"controller-id"`
		Address      string `json:"address"`
		Role         string `json:"role"`
		WasOnline    bool   `json:"was-online"`
		Message      string `json:"message"`
	}
	if msg := a.controllerd(ctx, &r, args...); msg != "" {
		return nil, msg
	}
	return map[string]string{"node-id": r.NodeID, "controller-id": r.ControllerID, "address": r.Address,
		"role": r.Role, "was-online": strconv.FormatBool(r.WasOnline), "summary": r.Message}, ""
}

// controllerd runs `controllerd <args> --data-dir D --format=json` and
// decodes its answer into v; it returns controllerd's message on failure.
func (a *action) controllerd(ctx context.Context, v any, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	args = append(args, "--data-dir", a.cfg.DataDir(), "--format=json")
	out, err := a.cfg.Runner.Run(ctx, filepath.Join(a.env.CharmDir, "controllerd"), args...)
	if err != nil {
		var ee *hooktools.ExitError
		if errors.As(err, &ee) && ee.Stderr != "" {
			return strings.TrimPrefix(ee.Stderr, "error: ")
		}
		return fmt.Sprintf("cannot run controllerd: %v; see journalctl -u controllerd", err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Sprintf("cannot parse controllerd's answer: %v", err)
	}
	return ""
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
