// Package control is controllerd's control socket: a small HTTP API on a
// unix socket in the data dir (mode 0600, the data dir itself 0700), used by
// `controllerd status` and `controllerd sql`. Because the socket lives in the
// data dir, several daemons run side by side with different data dirs.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/juju/dqlite-controller/workload/internal/unixsock"
)

// SocketName is the control socket's name inside the data dir.
const SocketName = "control.socket"

// SocketPath returns the control socket path for a data dir.
func SocketPath(dataDir string) string {
	return filepath.Join(dataDir, SocketName)
}

// NodeRef names a node.
type NodeRef struct {
	NodeID  string `json:"node-id" yaml:"node-id"`
	Address string `json:"address" yaml:"address"`
}

// Member is one member of the cluster.
type Member struct {
	NodeID  string `json:"node-id" yaml:"node-id"`
	Address string `json:"address" yaml:"address"`
	Role    string `json:"role" yaml:"role"`
}

// Status is what `controllerd status` prints. Node ids are strings: they
// exceed 2^53 and would lose precision as JSON numbers.
type Status struct {
	ControllerID string   `json:"controller-id" yaml:"controller-id"`
	NodeID       string   `json:"node-id" yaml:"node-id"`
	Address      string   `json:"address" yaml:"address"`
	Role         string   `json:"role" yaml:"role"`
	Member       bool     `json:"member" yaml:"member"`
	Leader       *NodeRef `json:"leader" yaml:"leader"`
	Members      []Member `json:"members" yaml:"members"`
	State        string   `json:"state" yaml:"state"`
	Message      string   `json:"message" yaml:"message"`
	ConfigError  string   `json:"config-error" yaml:"config-error"`
	// Voters and StandBys count the members with those roles.
	Voters   int `json:"voters" yaml:"voters"`
	StandBys int `json:"stand-bys" yaml:"stand-bys"`
	// ConfigPath and DataDir say where the daemon reads and keeps things.
	ConfigPath string `json:"config-path" yaml:"config-path"`
	DataDir    string `json:"data-dir" yaml:"data-dir"`
	// Lease is the singular-controller lease as this node's singular
	// worker last saw it; null while the worker does not run (the node is
	// not a running member) or before it learnt anything.
	Lease *LeaseStatus `json:"lease" yaml:"lease"`
	// APIPort is the HTTP API's port; APIError says why it does not
	// listen ("" when it does).
	APIPort  int    `json:"api-port" yaml:"api-port"`
	APIError string `json:"api-error" yaml:"api-error"`
	// APIAddresses are the address lists served (null before the first
	// read of the database; the last known ones while it cannot be read).
	APIAddresses *APIAddresses `json:"api-addresses" yaml:"api-addresses"`
	// APINote explains this controller's own published addresses when
	// they need it: agent fallback (no address in the api binding's
	// space), or no api-hosts from the charm.
	APINote string `json:"api-note" yaml:"api-note"`
}

// LeaseStatus is who holds the singular-controller lease and until when
// (database time, RFC 3339 UTC).
type LeaseStatus struct {
	Holder   string `json:"holder" yaml:"holder"`
	Expiry   string `json:"expiry" yaml:"expiry"`
	HeldByMe bool   `json:"held-by-me" yaml:"held-by-me"`
}

// APIAddresses are the API address lists: agents', clients', and the
// controllers whose agent addresses fell back to all of their addresses.
type APIAddresses struct {
	Agents        []string `json:"agents" yaml:"agents"`
	Clients       []string `json:"clients" yaml:"clients"`
	AgentFallback []string `json:"agent-fallback" yaml:"agent-fallback"`
	Version       string   `json:"version" yaml:"version"`
}

// SQLRequest is the body of POST /sql.
type SQLRequest struct {
	Statement string `json:"statement"`
}

// SQLResult is the outcome of one statement: Columns and Rows for a query,
// RowsAffected otherwise.
type SQLResult struct {
	Columns      []string `json:"columns,omitempty"`
	Rows         [][]any  `json:"rows,omitempty"`
	RowsAffected *int64   `json:"rows-affected,omitempty"`
	IsQuery      bool     `json:"-"`
}

// MarshalJSON prints {"columns":[...],"rows":[[...]]} for a query (with
// empty lists rather than null) and {"rows-affected":N} otherwise.
func (r SQLResult) MarshalJSON() ([]byte, error) {
	if r.IsQuery || r.RowsAffected == nil {
		cols, rows := r.Columns, r.Rows
		if cols == nil {
			cols = []string{}
		}
		if rows == nil {
			rows = [][]any{}
		}
		return json.Marshal(struct {
			Columns []string `json:"columns"`
			Rows    [][]any  `json:"rows"`
		}{cols, rows})
	}
	return json.Marshal(struct {
		RowsAffected int64 `json:"rows-affected"`
	}{*r.RowsAffected})
}

// UnmarshalJSON reads either shape back.
func (r *SQLResult) UnmarshalJSON(data []byte) error {
	var raw struct {
		Columns      []string `json:"columns"`
		Rows         [][]any  `json:"rows"`
		RowsAffected *int64   `json:"rows-affected"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	r.Columns, r.Rows, r.RowsAffected = raw.Columns, raw.Rows, raw.RowsAffected
	r.IsQuery = raw.RowsAffected == nil
	return nil
}

// Backend is what the control socket serves.
type Backend interface {
	Status(ctx context.Context) Status
	SQL(ctx context.Context, statement string) (SQLResult, error)
}

type errorBody struct {
	Error string `json:"error"`
	// Outcome is "unknown" when the statement may or may not have been
	// applied (its COMMIT was sent to Dqlite and no answer came back);
	// absent when it certainly was not.
	Outcome string `json:"outcome,omitempty"`
}

// outcomeUnknown is errorBody.Outcome for an error of unknown outcome.
const outcomeUnknown = "unknown"

// ErrOutcomeUnknown marks an error after which a write may or may not have
// been applied: a COMMIT whose answer the daemon did not get from Dqlite, or
// a request the client sent whose answer it did not get (the daemon died,
// the connection broke, the deadline passed). A caller may retry only an
// idempotent write, or re-read to learn the outcome. A Backend wraps it
// around such errors; the client returns it for them.
var ErrOutcomeUnknown = errors.New("the outcome is unknown")

// isOutcomeUnknown reports whether a Backend's error leaves the outcome
// unknown (workload/daemon/node wraps ErrOutcomeUnknown around a COMMIT
// that got no answer).
func isOutcomeUnknown(err error) bool {
	return errors.Is(err, ErrOutcomeUnknown)
}

// Serve listens on the control socket of dataDir and serves b until ctx is
// done. It refuses to start when another daemon answers on that socket.
func Serve(ctx context.Context, dataDir string, b Backend, log *slog.Logger) (<-chan error, error) {
	path := SocketPath(dataDir)
	l, err := unixsock.Listen(path, 0o600)
	if errors.Is(err, unixsock.ErrInUse) {
		return nil, fmt.Errorf("cannot listen on %s: another controllerd is running with data dir %s", path, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open the control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, b.Status(r.Context()))
	})
	handleRequest(mux, "POST /sql", 1<<20, func(ctx context.Context, req SQLRequest) (SQLResult, error) {
		return b.SQL(ctx, req.Statement)
	})
	if ops, ok := b.(Operations); ok {
		registerOperations(mux, ops)
	}
	if r, ok := b.(Restorer); ok {
		registerRestore(mux, r)
	}
	done := unixsock.Serve(ctx, l, path, mux, 2*time.Second)
	log.Debug("control socket ready", "path", path)
	return done, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// ErrNotRunning is returned by the client when no daemon serves the socket.
var ErrNotRunning = errors.New("controllerd is not running")

// Client talks to a daemon's control socket.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the daemon with data dir dataDir.
func NewClient(dataDir string) *Client {
	path := SocketPath(dataDir)
	return &Client{
		path: path,
		http: &http.Client{
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				},
				// One request per connection: a request is never re-sent
				// on another connection behind the caller's back.
				DisableKeepAlives: true,
			},
		},
	}
}

// do sends one request on a fresh connection. Only a connection that was
// never made is a plain failure (ErrNotRunning when nothing listens); once
// the request may have reached the daemon, a lost answer (EOF, reset,
// deadline) is ErrOutcomeUnknown, as is the daemon's own answer that its
// COMMIT's outcome is unknown. A GET changes nothing, so its lost answer is
// a plain error.
func (c *Client) do(ctx context.Context, method, route string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	var connected atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true) },
	})
	req, err := http.NewRequestWithContext(ctx, method, "http://controllerd"+route, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil && !connected.Load() {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("%w (no daemon answers on %s)", ErrNotRunning, c.path)
		}
		return fmt.Errorf("cannot connect to controllerd on %s: %w", c.path, err)
	}
	lost := func(err error) error {
		if method == http.MethodGet {
			return err
		}
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	if err != nil {
		return lost(fmt.Errorf("controllerd on %s got the request but no answer came back: %w", c.path, err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return lost(fmt.Errorf("cannot read controllerd's answer: %w", err))
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			if e.Outcome == outcomeUnknown {
				// The daemon's message starts with it already.
				return fmt.Errorf("%w: %s", ErrOutcomeUnknown, strings.TrimPrefix(e.Error, ErrOutcomeUnknown.Error()+": "))
			}
			return errors.New(e.Error)
		}
		return fmt.Errorf("controllerd answered %s", resp.Status)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return lost(fmt.Errorf("cannot decode controllerd's answer: %w", err))
	}
	return nil
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/status", nil, &s)
	return s, err
}

// SQL runs one statement through the daemon.
func (c *Client) SQL(ctx context.Context, statement string) (SQLResult, error) {
	var r SQLResult
	err := c.do(ctx, http.MethodPost, "/sql", SQLRequest{Statement: statement}, &r)
	return r, err
}
