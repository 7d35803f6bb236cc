package control

import (
	"context"
	"net/http"
)

// The restore-backup operation: `controllerd restore-backup` (and the
// charm's action of the same name) asks the daemon of the unit that holds
// the backup to restore the whole cluster to it.

// RestoreRequest names the backup (an id list-backups shows on this unit).
type RestoreRequest struct {
	BackupID string `json:"backup-id"`
	Confirm  bool   `json:"confirm"`
}

// RestoreResult says what the restore did, step by step.
type RestoreResult struct {
	RestoreID    string `json:"restore-id" yaml:"restore-id"`
	BackupID     string `json:"backup-id" yaml:"backup-id"`
	ControllerID string `json:"controller-id" yaml:"controller-id"`
	// Step is the last step reached ("4/4" when done).
	Step string `json:"step" yaml:"step"`
	// SafetyCopy is this node's data dir before the restore.
	SafetyCopy string `json:"safety-copy" yaml:"safety-copy"`
	// Tables and Rows restored, as counted after the replay.
	Tables int   `json:"tables" yaml:"tables"`
	Rows   int64 `json:"rows" yaml:"rows"`
	// Rejoined are the other controllers that wiped and joined the
	// restored cluster; Waiting those that had not yet when it answered.
	Rejoined []string `json:"rejoined" yaml:"rejoined"`
	Waiting  []string `json:"waiting" yaml:"waiting"`
	// Transcript is one line per step, with its time.
	Transcript []string `json:"transcript" yaml:"transcript"`
	Message    string   `json:"message" yaml:"message"`
}

// Restorer is the part of the daemon that restores backups; Serve
// registers its route when the backend has it.
type Restorer interface {
	Restore(ctx context.Context, req RestoreRequest) (RestoreResult, error)
}

func registerRestore(mux *http.ServeMux, r Restorer) {
	handleRequest(mux, "POST /restore", 1<<16, r.Restore)
}

// Restore asks the daemon to restore the cluster to one of its backups.
func (c *Client) Restore(ctx context.Context, req RestoreRequest) (RestoreResult, error) {
	return call[RestoreResult](ctx, c, http.MethodPost, "/restore", req)
}
