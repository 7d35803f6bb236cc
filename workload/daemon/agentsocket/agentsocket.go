// Package agentsocket serves Juju 4's controller agent config socket,
// configchange.socket, so that Juju's own controller charm could drive
// controllerd as it drives jujud (juju/juju:
// internal/worker/controlleragentconfig/worker.go, registerHandlers):
//
//   - POST /reload asks for the controller config to be read again and
//     answers 204 No Content (500 once the server is stopping);
//   - GET /agent-id answers the controller's agent id as plain text with
//     Content-Type application/text.
//
// The socket is mode 0700, as Juju creates it under umask 077
// (juju/juju: juju/sockets/sockets_unix.go); a stale socket file is
// removed first, but a socket that answers belongs to someone else (on a
// Juju 4 controller machine, jujud itself) and is never taken over.
package agentsocket

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/juju/dqlite-controller/workload/internal/unixsock"
)

// Name is the socket's file name in Juju's data dir (/var/lib/juju).
const Name = "configchange.socket"

// ErrInUse is returned when another process answers on the socket.
var ErrInUse = unixsock.ErrInUse

// Serve listens on path and serves the two routes until ctx is done:
// reload is called (without blocking the request for long) on every POST
// /reload. It returns once the socket listens.
func Serve(ctx context.Context, path, agentID string, reload func(), log *slog.Logger) (<-chan error, error) {
	l, err := unixsock.Listen(path, 0o700)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if ctx.Err() != nil || r.Context().Err() != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		log.Info("reload config request received, reloading config")
		reload()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /agent-id", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/text")
		w.Write([]byte(agentID))
	})
	done := unixsock.Serve(ctx, l, path, mux, 500*time.Millisecond)
	log.Debug("config change socket ready", "path", path)
	return done, nil
}

// Client asks a configchange.socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// AgentID is GET /agent-id.
func (c *Client) AgentID(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://configchange/agent-id", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("cannot ask for the agent id: %w", err)
	}
	defer resp.Body.Close()
	var buf [64]byte
	n, _ := resp.Body.Read(buf[:])
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("cannot ask for the agent id: %s", resp.Status)
	}
	return string(buf[:n]), nil
}

// Reload is POST /reload.
func (c *Client) Reload(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://configchange/reload", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot ask for a reload: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("cannot ask for a reload: %s", resp.Status)
	}
	return nil
}
