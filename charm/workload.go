package charm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/charm/service"
)

// ports reads db-port and api-port. ok is false (with a blocked status)
// when either is not a valid port or both are the same; the last rendered
// unit file then stays in place.
func (h *hook) ports(ctx context.Context) (db, api int, ok bool, err error) {
	cfg, err := h.tools.ConfigGet(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	db, dbOK := h.portOption(cfg, "db-port", DefaultPort)
	api, apiOK := h.portOption(cfg, "api-port", DefaultAPIPort)
	if !dbOK || !apiOK {
		return 0, 0, false, nil
	}
	if db == api {
		// controllerd listens on both; one of them would fail to bind.
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("db-port and api-port are both %d; give them different values with juju config", db))
		return 0, 0, false, nil
	}
	return db, api, true, nil
}

// portOption reads one port option, defaulting when config-get omits it.
func (h *hook) portOption(cfg map[string]any, key string, def int) (int, bool) {
	raw, present := cfg[key]
	if !present || raw == nil {
		return def, true
	}
	var s string
	switch v := raw.(type) {
	case json.Number:
		s = v.String()
	case string:
		s = v
	default:
		s = fmt.Sprint(v)
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("invalid %s %q: must be a whole number from 1 to 65535; fix it with juju config", key, s))
		return 0, false
	}
	return p, true
}

// openAPIPort keeps api-port, and no other TCP port, open for this unit,
// so that a cloud's firewall lets agents on other machines (outside the
// model's own security group) reach controllerd's HTTP API; the old port
// closes when api-port changes. The Dqlite port stays closed: only the
// application's machines talk to it. Juju applies the change when the
// hook exits 0; a failure is logged and the next hook tries again.
func (h *hook) openAPIPort(ctx context.Context, apiPort int) {
	opened, err := h.tools.OpenedPorts(ctx)
	if err != nil {
		h.log.Warn("cannot list this unit's opened ports; the next hook tries again", "err", err)
		return
	}
	want := fmt.Sprintf("%d/tcp", apiPort)
	for _, p := range opened {
		if p != want && strings.HasSuffix(p, "/tcp") {
			if err := h.tools.ClosePort(ctx, p); err != nil {
				h.log.Warn("cannot close a port that is not api-port", "port", p, "err", err)
			}
		}
	}
	if !slices.Contains(opened, want) {
		if err := h.tools.OpenPort(ctx, want); err != nil {
			h.log.Warn("cannot open api-port; agents outside the model may not reach controllerd", "port", want, "err", err)
		}
	}
}

// reconcileService keeps the controllerd unit file in line with config and
// drives systemctl as the hook requires: install only writes the file, start
// enables and starts, and a change of the file (db-port, api-port) after
// start asks for a restart of the daemon (before start, the start hook uses
// the new file). upgrade-charm also asks for a restart of a running daemon,
// because the new charm brings a new controllerd binary that a running
// process would not pick up. Those restarts roll, one unit at a time
// (restart.go).
func (h *hook) reconcileService(ctx context.Context) error {
	if err := h.ensureConfigFile(); err != nil {
		h.status.add(hooktools.StatusBlocked, err.Error())
		return err
	}
	port, apiPort, ok, err := h.ports(ctx)
	if err != nil {
		return err
	}
	if ok {
		h.publishCOS(ctx, apiPort) // cosagent.go
		h.openAPIPort(ctx, apiPort)
	}
	changed := false
	if ok {
		unit, rerr := service.Render(service.Spec{CharmDir: h.env.CharmDir, AgentID: h.agentID, Port: port, APIPort: apiPort})
		if rerr != nil {
			h.status.add(hooktools.StatusBlocked, rerr.Error())
		} else if changed, err = h.svc.Install(ctx, unit); err != nil {
			return h.serviceFailed(err)
		} else if changed {
			h.log.Info("wrote the controllerd unit file", "path", h.svc.Path(), "port", port, "api-port", apiPort)
		}
		if rerr == nil {
			h.serviceSettings = fmt.Sprintf("db-port=%d api-port=%d", port, apiPort)
		}
	}
	if h.env.Hook == hookStart {
		if err := h.markStarted(); err != nil {
			return err
		}
	}
	if _, err := os.Stat(h.svc.Path()); err != nil {
		// Nothing to start until config allows rendering the unit; the
		// blocked status above says why.
		return nil
	}
	started, err := h.started()
	if err != nil {
		return err
	}
	switch {
	case h.env.Hook == hookInstall:
		return nil
	case h.env.Hook == hookStart:
		if err := h.svc.Enable(ctx); err != nil {
			return h.serviceFailed(err)
		}
		if changed {
			err = h.svc.Restart(ctx)
		} else {
			err = h.svc.Start(ctx)
		}
		if err != nil {
			return h.serviceFailed(err)
		}
	case changed && started:
		if err := h.svc.Enable(ctx); err != nil {
			return h.serviceFailed(err)
		}
		if err := h.requestRestart("unit-file"); err != nil {
			return err
		}
	case h.env.Hook == hookUpgradeCharm:
		state, err := h.svc.State(ctx)
		if err != nil {
			return h.serviceFailed(err)
		}
		if state == "active" || state == "activating" {
			if err := h.requestRestart(hookUpgradeCharm); err != nil {
				return err
			}
		}
	}
	return nil
}

// serviceFailed reports a systemctl failure and fails the hook so that Juju
// retries it.
func (h *hook) serviceFailed(err error) error {
	h.status.add(hooktools.StatusBlocked, fmt.Sprintf("%v; see journalctl -u controllerd", err))
	return err
}

// ensureConfigFile creates the controller config directory and an empty
// controller.conf when missing, as Juju's controller charm does at install;
// controllerd treats an empty file as "no peers yet".
func (h *hook) ensureConfigFile() error {
	path := h.cfg.ConfigPath(h.agentID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("cannot create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot create %s: %w", path, err)
	}
	return f.Close()
}

func (h *hook) stop(ctx context.Context) error {
	h.status.add(hooktools.StatusMaintenance, "controllerd stopped; this unit is being removed")
	return h.stopService(ctx)
}

func (h *hook) stopService(ctx context.Context) error {
	if _, err := os.Stat(h.svc.Path()); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// SIGTERM: controllerd hands Dqlite leadership over before exiting.
	if err := h.svc.Stop(ctx); err != nil {
		return h.serviceFailed(err)
	}
	if err := h.svc.Disable(ctx); err != nil {
		return h.serviceFailed(err)
	}
	h.log.Info("stopped and disabled controllerd")
	return nil
}

// wipeDir removes dir and everything in it; when dir is a mount point (a
// disk of its own for Dqlite), which cannot be unlinked (EBUSY), it
// empties it and leaves it: an empty data dir is a new node's.
func wipeDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, syscall.EBUSY) && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// remove stops controllerd if it still runs, removes its unit, and wipes the
// node's Dqlite data dir: a node removed from the cluster must never come
// back on its old data (docs/dqlite-behaviour.md "Removing members and losing quorum").
func (h *hook) remove(ctx context.Context) error {
	if err := h.stopService(ctx); err != nil {
		return err
	}
	if err := h.svc.Uninstall(ctx); err != nil {
		return h.serviceFailed(err)
	}
	if err := wipeDir(h.cfg.DataDir()); err != nil {
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot wipe the Dqlite data dir %s: %v", h.cfg.DataDir(), err))
		return fmt.Errorf("cannot wipe the Dqlite data dir: %w", err)
	}
	h.log.Info("removed controllerd and wiped its Dqlite data dir", "dir", h.cfg.DataDir())
	h.status.add(hooktools.StatusMaintenance, "controllerd removed and its Dqlite data wiped")
	return nil
}

// reportWorkload sets the workload version and adds controllerd's own view
// to the status.
func (h *hook) reportWorkload(ctx context.Context) error {
	switch h.env.Hook {
	case hookInstall, hookStart, hookUpgradeCharm, hookConfigChanged, hookUpdateStatus:
		if err := h.tools.ApplicationVersionSet(ctx, h.workloadVersion(ctx)); err != nil {
			return err
		}
	}
	if _, err := os.Stat(h.svc.Path()); err != nil {
		return nil // blocked already: the unit could not be rendered
	}
	if started, err := h.started(); err != nil {
		return err
	} else if !started {
		h.status.add(hooktools.StatusWaiting, "controllerd installed; waiting for the start hook")
		return nil
	}
	state, err := h.svc.State(ctx)
	if err != nil {
		return h.serviceFailed(err)
	}
	if state != "active" {
		h.status.add(hooktools.StatusWaiting, fmt.Sprintf("controllerd is %s; see journalctl -u controllerd", state))
		return nil
	}
	st, err := h.settledWorkloadStatus(ctx)
	if err != nil {
		h.status.add(hooktools.StatusWaiting, fmt.Sprintf("workload not answering: %v", err))
		return nil
	}
	status, msg := describeWorkload(st)
	if status == hooktools.StatusActive {
		for _, note := range h.activeNotes {
			msg += "; " + note
		}
	}
	h.status.add(status, msg)
	return nil
}

// markStarted records that the start hook ran, so that later hooks tell a
// daemon that is not running yet from one that stopped.
func (h *hook) markStarted() error {
	return writeMarker(h.cfg.startedMarker(h.agentID))
}

func (h *hook) started() (bool, error) {
	return markerExists(h.cfg.startedMarker(h.agentID))
}

func (h *hook) controllerd() string { return filepath.Join(h.env.CharmDir, "controllerd") }

// settledWorkloadStatus asks controllerd for its status; right after this
// hook changed controller.conf it polls for up to SettleTimeout until the
// daemon is a member in a settled (active) state, since it reacts to the
// file within moments and a status taken before that (joining, moving,
// rebinding) would stay stale until the next hook: with Juju's 5-minute
// update-status, minutes.
func (h *hook) settledWorkloadStatus(ctx context.Context) (*WorkloadStatus, error) {
	st, err := h.workloadStatus(ctx)
	if !h.joinExpected || h.cfg.SettleTimeout < 0 {
		return st, err
	}
	deadline := time.After(h.cfg.SettleTimeout)
	for err != nil || !st.Member || st.Role == "" || !settled(st) {
		if err == nil {
			if status, _ := describeWorkload(st); status == hooktools.StatusBlocked {
				return st, nil // it will not join by itself
			}
		}
		select {
		case <-ctx.Done():
			return st, err
		case <-deadline:
			return st, err
		case <-time.After(200 * time.Millisecond):
		}
		st, err = h.workloadStatus(ctx)
	}
	return st, err
}

// settled reports whether the daemon's status is one the next hook would
// repeat: active, not a transition.
func settled(st *WorkloadStatus) bool {
	status, _ := describeWorkload(st)
	return status == hooktools.StatusActive
}

func (h *hook) workloadStatus(ctx context.Context) (*WorkloadStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.WorkloadTimeout)
	defer cancel()
	out, err := h.cfg.Runner.Run(ctx, h.controllerd(), "status", "--data-dir", h.cfg.DataDir(), "--format=json")
	if err != nil {
		var exitErr *hooktools.ExitError
		if errors.As(err, &exitErr) && exitErr.Stderr != "" {
			return nil, errors.New(firstLine(exitErr.Stderr))
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no answer within %s", h.cfg.WorkloadTimeout)
		}
		return nil, err
	}
	var st WorkloadStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("cannot parse controllerd status: %v", err)
	}
	return &st, nil
}

// workloadVersion asks the shipped controllerd for its version, falling
// back to the charm's.
func (h *hook) workloadVersion(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.WorkloadTimeout)
	defer cancel()
	out, err := h.cfg.Runner.Run(ctx, h.controllerd(), "version")
	if err != nil {
		h.log.Debug("cannot ask controllerd for its version", "err", err)
		return Version
	}
	v := strings.TrimSpace(firstLine(string(out)))
	v = strings.TrimSpace(strings.TrimPrefix(v, "controllerd"))
	if v == "" || len(v) > 64 {
		return Version
	}
	return v
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}
