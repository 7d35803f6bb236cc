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
	// Survivors are the other listed controllers that answered (they wipe
	// and rejoin); Unreachable those that did not.
	Survivors   []string `json:"survivors" yaml:"survivors"`
	Unreachable []string `json:"unreachable" yaml:"unreachable"`
	SafetyCopy  string   `json:"safety-copy" yaml:"safety-copy"`
	Message     string   `json:"message" yaml:"message"`
}

func registerOperations(mux *http.ServeMux, ops Operations) {
	mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, r *http.Request) {
		v, err := ops.ClusterStatus(r.Context())
		answer(w, v, err)
	})
	mux.HandleFunc("POST /backups", func(w http.ResponseWriter, r *http.Request) {
		v, err := ops.CreateBackup(r.Context())
		answer(w, v, err)
	})
	mux.HandleFunc("GET /backups", func(w http.ResponseWriter, r *http.Request) {
		v, err := ops.ListBackups(r.Context())
		answer(w, v, err)
	})
	mux.HandleFunc("POST /members/remove", func(w http.ResponseWriter, r *http.Request) {
		var req RemoveMemberRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: fmt.Sprintf("cannot decode request: %v", err)})
			return
		}
		v, err := ops.RemoveMember(r.Context(), req)
		answer(w, v, err)
	})
	mux.HandleFunc("GET /raft", func(w http.ResponseWriter, r *http.Request) {
		v, err := ops.RaftInfo(r.Context())
		answer(w, v, err)
	})
	mux.HandleFunc("POST /recover", func(w http.ResponseWriter, r *http.Request) {
		var req RecoverRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: fmt.Sprintf("cannot decode request: %v", err)})
			return
		}
		v, err := ops.Recover(r.Context(), req)
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
	var s ClusterStatus
	err := c.do(ctx, http.MethodGet, "/cluster", nil, &s)
	return s, err
}

// CreateBackup asks for a backup now, taken by the lease holder.
func (c *Client) CreateBackup(ctx context.Context) (BackupInfo, error) {
	var b BackupInfo
	err := c.do(ctx, http.MethodPost, "/backups", nil, &b)
	return b, err
}

// ListBackups lists the backups kept on this machine.
func (c *Client) ListBackups(ctx context.Context) ([]BackupInfo, error) {
	var bs []BackupInfo
	err := c.do(ctx, http.MethodGet, "/backups", nil, &bs)
	return bs, err
}

// RemoveMember removes a member from the Raft configuration.
func (c *Client) RemoveMember(ctx context.Context, req RemoveMemberRequest) (RemoveMemberResult, error) {
	var r RemoveMemberResult
	err := c.do(ctx, http.MethodPost, "/members/remove", req, &r)
	return r, err
}

// RaftInfo asks for this node's Raft log position.
func (c *Client) RaftInfo(ctx context.Context) (RaftInfo, error) {
	var r RaftInfo
	err := c.do(ctx, http.MethodGet, "/raft", nil, &r)
	return r, err
}

// Recover asks the node to become the sole voter after a lost quorum.
func (c *Client) Recover(ctx context.Context, req RecoverRequest) (RecoverResult, error) {
	var r RecoverResult
	err := c.do(ctx, http.MethodPost, "/recover", req, &r)
	return r, err
}
