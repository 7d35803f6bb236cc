package charm

import (
	"context"
	"strconv"
	"strings"
)

// ActionRestore restores the whole cluster to a backup (restore-backup).
// It runs on the unit that holds the backup (backups stay on the unit whose
// controller took them) and asks that unit's controllerd, which drives the
// restore through the controller database and the nodes' own records
// (workload/daemon/node/restore.go): every other controller stops serving
// and closes its node, this unit's node becomes the only voter and replays
// the backup, and the others wipe (after a safety copy) and join it. Each
// unit's status shows its step (`controllerd: restoring backup ...: step
// k/4: ...`) until it serves again.
const ActionRestore = "restore-backup"

func (a *action) restore(ctx context.Context) (map[string]string, string) {
	id, _ := a.params["backup-id"].(string)
	if id == "" {
		return nil, "no backup named: give backup-id=<id>; list-backups on this unit shows its backups"
	}
	args := []string{"restore-backup", "--backup-id", id}
	if confirm, _ := a.params["confirm"].(bool); confirm {
		args = append(args, "--confirm")
	}
	var r struct {
		RestoreID    string   `json:"restore-id"`
		BackupID     string   `json:"backup-id"`
		ControllerID string   `json:"controller-id"`
		Step         string   `json:"step"`
		SafetyCopy   string   `json:"safety-copy"`
		Tables       int      `json:"tables"`
		Rows         int64    `json:"rows"`
		Rejoined     []string `json:"rejoined"`
		Waiting      []string `json:"waiting"`
		Transcript   []string `json:"transcript"`
		Message      string   `json:"message"`
	}
	if msg := a.controllerd(ctx, &r, args...); msg != "" {
		return nil, msg
	}
	return map[string]string{
		"restore-id": r.RestoreID, "backup-id": r.BackupID, "controller-id": r.ControllerID, "step": r.Step,
		"safety-copy": r.SafetyCopy, "tables": strconv.Itoa(r.Tables), "rows": strconv.FormatInt(r.Rows, 10),
		"rejoined": strings.Join(r.Rejoined, ","), "waiting": strings.Join(r.Waiting, ","),
		"transcript": strings.Join(r.Transcript, "\n"), "summary": r.Message,
	}, ""
}
