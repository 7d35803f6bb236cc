package charm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/charm/peers"
	"github.com/juju/dqlite-controller/controllerconf"
)

// The agent id. On a Juju 4 controller machine, jujud serves Juju's
// controller agent config socket, configchange.socket in /var/lib/juju,
// and answers GET /agent-id with the controller's agent id (juju/juju:
// internal/worker/controlleragentconfig/worker.go, registerHandlers),
// which need not be this unit's number. So the first hook of a unit asks
// the socket when it exists and uses its answer; without the socket the
// agent id is the unit number. controllerd serves the same socket with the
// id the charm gave it when nobody else does (workload/daemon/agentsocket),
// so later hooks get the same answer either way.
//
// The choice is recorded in the charm's state directory and never made
// again: the agent id names the node's certificate, controller.conf and
// its entry in the cluster list, so it must not change under a running
// node, whatever the socket says later (a different answer is logged).
//
// A socket file nobody listens on (connection refused: a stale file) counts
// as absent. A socket that answers something other than a valid agent id,
// or does not answer within AgentIDTimeout, leaves the unit blocked with a
// status saying so: guessing the unit number there could give the node
// another controller's identity.

// AgentSocketName is Juju's controller agent config socket in JujuDir.
const AgentSocketName = "configchange.socket"

func (c Config) agentSocket() string { return filepath.Join(c.JujuDir, AgentSocketName) }

// agentIDPath records this unit's agent id, once chosen.
func (c Config) agentIDPath(unit string) string {
	return filepath.Join(c.stateDir(), "unit-"+strings.ReplaceAll(unit, "/", "-")+".agent-id")
}

// resolveAgentID sets h.agentID and h.agentIDFromSocket. ok is false when
// the hook cannot go on (a blocked status says why); err is set only for a
// failure Juju should retry.
func (h *hook) resolveAgentID(ctx context.Context) (ok bool, err error) {
	number, err := peers.UnitAgentID(h.env.UnitName)
	if err != nil {
		return false, fmt.Errorf("cannot derive the agent id: %w", err)
	}
	recorded, err := os.ReadFile(h.cfg.agentIDPath(h.env.UnitName))
	switch {
	case err == nil:
		id := strings.TrimSpace(string(recorded))
		if controllerconf.ValidateAgentID(id) != nil {
			h.status.add(hooktools.StatusBlocked, fmt.Sprintf("the recorded agent id %q in %s is invalid; restore it or remove the unit", id, h.cfg.agentIDPath(h.env.UnitName)))
			return false, nil
		}
		h.agentID, h.agentIDFromSocket = id, id != number
		if answer, present, aerr := h.askAgentSocket(ctx); present && aerr == nil && answer != id {
			h.log.Warn("configchange.socket answers another agent id than this unit runs as; keeping the recorded one", "socket", answer, "agent-id", id)
		}
		return true, nil
	case !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("cannot read the recorded agent id: %w", err)
	}
	id := number
	answer, present, err := h.askAgentSocket(ctx)
	switch {
	case !present:
	case err != nil:
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot tell this controller's agent id: %s answers %v; fix or remove the socket", h.cfg.agentSocket(), err))
		return false, nil
	case controllerconf.ValidateAgentID(answer) != nil:
		h.status.add(hooktools.StatusBlocked, fmt.Sprintf("cannot tell this controller's agent id: %s answers %q, not an agent id; fix or remove the socket", h.cfg.agentSocket(), truncate(answer, 40)))
		return false, nil
	default:
		id = answer
	}
	if err := os.MkdirAll(h.cfg.stateDir(), 0o700); err != nil {
		return false, fmt.Errorf("cannot create the charm state directory: %w", err)
	}
	if err := controllerconf.WriteFileAtomic(h.cfg.agentIDPath(h.env.UnitName), []byte(id+"\n"), 0o600); err != nil {
		return false, fmt.Errorf("cannot record the agent id: %w", err)
	}
	h.agentID, h.agentIDFromSocket = id, id != number
	h.log.Info("chose the agent id", "agent-id", id, "from-socket", present)
	return true, nil
}

// askAgentSocket is GET /agent-id on configchange.socket, within
// AgentIDTimeout. present is false when there is no socket or nobody
// listens on it.
func (h *hook) askAgentSocket(ctx context.Context) (id string, present bool, err error) {
	path := h.cfg.agentSocket()
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", true, err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return "", true, errors.New("not a socket")
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.AgentIDTimeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://configchange/agent-id", nil)
	if err != nil {
		return "", true, err
	}
	resp, err := client.Do(req)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "", false, nil // a stale socket file
	}
	if err != nil {
		if ctx.Err() != nil {
			return "", true, fmt.Errorf("no answer within %s", h.cfg.AgentIDTimeout)
		}
		return "", true, err
	}
	defer resp.Body.Close()
	// An agent id is short; never read more than a little from a socket
	// that may not be Juju's.
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "", true, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", true, fmt.Errorf("HTTP %s", resp.Status)
	}
	return strings.TrimSpace(string(body)), true, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// agentIDCollision reports, for a unit whose agent id came from the socket
// (and so may be anything), the peer that claims the same agent id in its
// unit data ("" if none), so that it does not publish an identity another
// node has.
func (h *hook) agentIDCollision(ctx context.Context, relID string) (string, error) {
	if !h.agentIDFromSocket {
		return "", nil
	}
	units, err := h.tools.RelationList(ctx, relID)
	if err != nil {
		return "", err
	}
	for _, u := range units {
		if u == h.env.UnitName || u == h.env.DepartingUnit {
			continue
		}
		data, err := h.tools.RelationGet(ctx, relID, u)
		if err != nil {
			return "", err
		}
		if data[peers.KeyAgentID] == h.agentID {
			return u, nil
		}
	}
	return "", nil
}

// The deadline of GET /agent-id (Config.AgentIDTimeout's default).
const defaultAgentIDTimeout = 2 * time.Second
