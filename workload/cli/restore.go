package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// restoreTimeout bounds restore-backup: the other controllers have a
// minute to stop serving, then the replay, then up to 3 minutes for them
// to rejoin (the restore goes on by itself after the command gives up).
const restoreTimeout = 9 * time.Minute

func restoreCmd(stdout io.Writer) *cobra.Command {
	var req control.RestoreRequest
	cmd := opCmd(stdout, "restore-backup --backup-id ID --confirm",
		"Restore the whole cluster to a backup kept on this machine: every controller stops, this node restarts alone with the backup's data, the others wipe (after a safety copy) and join",
		restoreTimeout,
		func(ctx context.Context, c *control.Client) (any, error) { return c.Restore(ctx, req) },
		func(w io.Writer, v any) error {
			r := v.(control.RestoreResult)
			for _, l := range r.Transcript {
				fmt.Fprintln(w, l)
			}
			_, err := fmt.Fprintln(w, r.Message)
			return err
		})
	cmd.Flags().StringVar(&req.BackupID, "backup-id", "", "the backup to restore (list-backups shows this machine's)")
	cmd.Flags().BoolVar(&req.Confirm, "confirm", false, "confirm: everything written since the backup is lost")
	cmd.MarkFlagRequired("backup-id")
	return cmd
}
