package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// The operator's operations on the control socket: what `controllerd
// cluster-status`, `create-backup`, `list-backups` and `remove-member` (and
// the charm's actions of the same names) ask the daemon.

// ClusterMember is one member of the cluster as cluster-status shows it.
type ClusterMember struct {
	NodeID string `json:"node-id" yaml:"node-id"`
	// ControllerID is the member's agent id ("" when no controller has
	// registered the node and the config does not name its address).
	ControllerID string `json:"controller-id" yaml:"controller-id"`
	Address      string `json:"address" yaml:"address"`
	Role         string `json:"role" yaml:"role"`
	// Online is whether the member answered a Dqlite request (within 1 s)
	// from the node asked.
	Online bool `json:"online" yaml:"online"`
	Leader bool `json:"leader" yaml:"leader"`
}

// BackupInfo describes one backup.
type BackupInfo struct {
	ID           string `json:"id" yaml:"id"`
	ControllerID string `json:"controller-id" yaml:"controller-id"`
	// Time is when the backup was taken, RFC 3339 UTC.
	Time string `json:"time" yaml:"time"`
	Size int64  `json:"size" yaml:"size"`
	// Path is the backup's directory on the machine of ControllerID.
	Path string `json:"path,omitempty" yaml:"path,omitempty"`
}

// ClusterStatus is what cluster-status answers.
type ClusterStatus struct {
	// ControllerID is the controller that answered.
	ControllerID string          `json:"controller-id" yaml:"controller-id"`
	State        string          `json:"state" yaml:"state"`
	Members      []ClusterMember `json:"members" yaml:"members"`
	Leader       *ClusterMember  `json:"leader" yaml:"leader"`
	// LeaseHolder holds the singular-controller lease ("" when nobody
	// does), until LeaseExpiry (database time, RFC 3339 UTC).
	LeaseHolder string      `json:"lease-holder" yaml:"lease-holder"`
	LeaseExpiry string      `json:"lease-expiry" yaml:"lease-expiry"`
	LastBackup  *BackupInfo `json:"last-backup" yaml:"last-backup"`
	// Problems says what could not be read and why (e.g. no leader).
	Problems []string `json:"problems" yaml:"problems"`
}

// RemoveMemberRequest names the member to remove by agent id or address.
type RemoveMemberRequest struct {
	AgentID string `json:"agent-id,omitempty"`
	Address string `json:"address,omitempty"`
	Force   bool   `json:"force,omitempty"`
}

// RemoveMemberResult says what remove-member did.
type RemoveMemberResult struct {
	NodeID       string `json:"node-id" yaml:"node-id"`
	ControllerID string `json:"controller-id" yaml:"controller-id"`
	Address      string `json:"address" yaml:"address"`
	Role         string `json:"role" yaml:"role"`
	WasOnline    bool   `json:"was-online" yaml:"was-online"`
	Message      string `json:"message" yaml:"message"`
}

// Operations is the part of the daemon that serves the operator's
// operations; Serve registers their routes when the backend has it.
type Operations interface {
	ClusterStatus(ctx context.Context) (ClusterStatus, error)
	CreateBackup(ctx context.Context) (BackupInfo, error)
	ListBackups(ctx context.Context) ([]BackupInfo, error)
	RemoveMember(ctx context.Context, req RemoveMemberRequest) (RemoveMemberResult, error)
	RaftInfo(ctx context.Context) (RaftInfo, error)
	Recover(ctx context.Context, req RecoverRequest) (RecoverResult, error)
}

// RaftInfo is where a node's Raft log ends (read from its files), with its
// state and last known role: what a unit publishes while quorum is lost.
type RaftInfo struct {
	ControllerID string `json:"controller-id" yaml:"controller-id"`
	NodeID       string `json:"node-id" yaml:"node-id"`
	State        string `json:"state" yaml:"state"`
	Role         string `json:"role" yaml:"role"`
	HasData      bool   `json:"has-data" yaml:"has-data"`
	Term         uint64 `json:"term" yaml:"term"`
	Index        uint64 `json:"index" yaml:"index"`
}

// RecoverRequest asks a node to become the sole voter after a lost
// quorum; Peers are the other units' published positions.
type RecoverRequest struct {
	Confirm bool       `json:"confirm"`
	Peers   []RaftInfo `json:"peers"`
}

// RecoverResult says what the recovery did and what is next.
type RecoverResult struct {
	Position RaftInfo `json:"position" yaml:"position"`
	// Survivors are the other listed controllers that answered or
	// published a position during the loss (they wipe and rejoin);
	// Unreachable those that did neither.
	Survivors   []string `json:"survivors" yaml:"survivors"`
	Unreachable []string `json:"unreachable" yaml:"unreachable"`
	SafetyCopy  string   `json:"safety-copy" yaml:"safety-copy"`
	Message     string   `json:"message" yaml:"message"`
}

func registerOperations(mux *http.ServeMux, ops Operations) {
	handle(mux, "GET /cluster", ops.ClusterStatus)
	handle(mux, "POST /backups", ops.CreateBackup)
	handle(mux, "GET /backups", ops.ListBackups)
	handleRequest(mux, "POST /members/remove", 1<<16, ops.RemoveMember)
	handle(mux, "GET /raft", ops.RaftInfo)
	handleRequest(mux, "POST /recover", 1<<20, ops.Recover)
}

// handle serves an operation without a request body.
func handle[T any](mux *http.ServeMux, pattern string, op func(context.Context) (T, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		v, err := op(r.Context())
		answer(w, v, err)
	})
}

// handleRequest serves an operation whose JSON request body is at most
// limit bytes.
func handleRequest[Req, T any](mux *http.ServeMux, pattern string, limit int64, op func(context.Context, Req) (T, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := json.NewDecoder(io.LimitReader(r.Body, limit)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: fmt.Sprintf("cannot decode request: %v", err)})
			return
		}
		v, err := op(r.Context(), req)
		answer(w, v, err)
	})
}

// answer writes a result or an operation's error (422, the message as is:
// it names the problem and the fix; 503 with outcome "unknown" for a
// membership change whose answer was lost).
func answer(w http.ResponseWriter, v any, err error) {
	if err != nil && isOutcomeUnknown(err) {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: err.Error(), Outcome: outcomeUnknown})
		return
	}
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// ClusterStatus asks the daemon for the cluster's status.
func (c *Client) ClusterStatus(ctx context.Context) (ClusterStatus, error) {
	return call[ClusterStatus](ctx, c, http.MethodGet, "/cluster", nil)
}

// CreateBackup asks for a backup now, taken by the lease holder.
func (c *Client) CreateBackup(ctx context.Context) (BackupInfo, error) {
	return call[BackupInfo](ctx, c, http.MethodPost, "/backups", nil)
}

// ListBackups lists the backups kept on this machine.
func (c *Client) ListBackups(ctx context.Context) ([]BackupInfo, error) {
	return call[[]BackupInfo](ctx, c, http.MethodGet, "/backups", nil)
}

// RemoveMember removes a member from the Raft configuration.
func (c *Client) RemoveMember(ctx context.Context, req RemoveMemberRequest) (RemoveMemberResult, error) {
	return call[RemoveMemberResult](ctx, c, http.MethodPost, "/members/remove", req)
}

// RaftInfo asks for this node's Raft log position.
func (c *Client) RaftInfo(ctx context.Context) (RaftInfo, error) {
	return call[RaftInfo](ctx, c, http.MethodGet, "/raft", nil)
}

// Recover asks the node to become the sole voter after a lost quorum.
func (c *Client) Recover(ctx context.Context, req RecoverRequest) (RecoverResult, error) {
	return call[RecoverResult](ctx, c, http.MethodPost, "/recover", req)
}

// call makes one request and decodes its answer.
func call[T any](ctx context.Context, c *Client, method, path string, body any) (T, error) {
	var v T
	err := c.do(ctx, method, path, body, &v)
	return v, err
}
