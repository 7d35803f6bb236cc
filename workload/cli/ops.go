package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// The operator's commands: the same operations as the charm's actions,
// answered by the daemon over its control socket.

func opsCmds(stdout io.Writer) []*cobra.Command {
	return []*cobra.Command{clusterStatusCmd(stdout), createBackupCmd(stdout), listBackupsCmd(stdout), removeMemberCmd(stdout),
		raftPositionCmd(stdout), recoverCmd(stdout), restoreCmd(stdout)}
}

// opCmd is one operation: flags --data-dir and --format, a deadline, and
// the answer printed as json, yaml or a table.
func opCmd(stdout io.Writer, use, short string, timeout time.Duration,
	call func(ctx context.Context, c *control.Client) (any, error), table func(w io.Writer, v any) error) *cobra.Command {
	var dataDir, format string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "json" && format != "yaml" && format != "table" {
				return fmt.Errorf("unknown format %q (want json, yaml or table)", format)
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			v, err := call(ctx, control.NewClient(dataDir))
			if err != nil {
				return notRunning(err, dataDir)
			}
			return printAs(stdout, format, v, table)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", DefaultDataDir, "data dir of the daemon to ask")
	cmd.Flags().StringVar(&format, "format", "table", "output format: table, json or yaml")
	return cmd
}

func printAs(w io.Writer, format string, v any, table func(io.Writer, any) error) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return err
		}
		return enc.Close()
	}
	return table(w, v)
}

func clusterStatusCmd(stdout io.Writer) *cobra.Command {
	return opCmd(stdout, "cluster-status", "Show every member (id, controller, address, role, online), the leader, the lease holder and the last backup",
		30*time.Second,
		func(ctx context.Context, c *control.Client) (any, error) { return c.ClusterStatus(ctx) },
		func(w io.Writer, v any) error { return PrintClusterStatus(w, v.(control.ClusterStatus)) })
}

// PrintClusterStatus prints cluster-status as a table (also the charm's
// action summary).
func PrintClusterStatus(w io.Writer, cs control.ClusterStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCONTROLLER\tADDRESS\tROLE\tONLINE\t")
	for _, m := range cs.Members {
		mark := ""
		if m.Leader {
			mark = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\n", m.NodeID, dash(m.ControllerID), m.Address, m.Role, m.Online, mark)
	}
	tw.Flush()
	leader := "none reachable"
	if cs.Leader != nil {
		leader = fmt.Sprintf("%s (controller %s)", cs.Leader.Address, dash(cs.Leader.ControllerID))
	}
	fmt.Fprintf(w, "Leader: %s\n", leader)
	lease := "not held"
	if cs.LeaseHolder != "" {
		lease = cs.LeaseHolder + " until " + cs.LeaseExpiry
	}
	fmt.Fprintf(w, "Singular-controller lease: %s\n", lease)
	last := "none"
	if b := cs.LastBackup; b != nil {
		last = fmt.Sprintf("%s on controller %s at %s (%d bytes)", b.ID, b.ControllerID, b.Time, b.Size)
	}
	fmt.Fprintf(w, "Last backup: %s\n", last)
	for _, p := range cs.Problems {
		fmt.Fprintf(w, "Problem: %s\n", p)
	}
	return nil
}

func createBackupCmd(stdout io.Writer) *cobra.Command {
	return opCmd(stdout, "create-backup", "Take a backup now (the singular-controller lease holder takes it, wherever you ask)",
		3*time.Minute,
		func(ctx context.Context, c *control.Client) (any, error) { return c.CreateBackup(ctx) },
		func(w io.Writer, v any) error { return printBackups(w, []control.BackupInfo{v.(control.BackupInfo)}) })
}

func listBackupsCmd(stdout io.Writer) *cobra.Command {
	return opCmd(stdout, "list-backups", "List the backups kept on this machine",
		10*time.Second,
		func(ctx context.Context, c *control.Client) (any, error) { return c.ListBackups(ctx) },
		func(w io.Writer, v any) error { return printBackups(w, v.([]control.BackupInfo)) })
}

func printBackups(w io.Writer, bs []control.BackupInfo) error {
	if len(bs) == 0 {
		_, err := fmt.Fprintln(w, "no backups")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCONTROLLER\tTIME\tSIZE\tPATH")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", b.ID, b.ControllerID, b.Time, b.Size, dash(b.Path))
	}
	return tw.Flush()
}

func removeMemberCmd(stdout io.Writer) *cobra.Command {
	var req control.RemoveMemberRequest
	cmd := opCmd(stdout, "remove-member (--agent-id N | --address HOST[:PORT]) [--force]",
		"Remove a member from the Raft configuration (without --force only while quorum holds and its unit is gone from the relation)",
		30*time.Second,
		func(ctx context.Context, c *control.Client) (any, error) { return c.RemoveMember(ctx, req) },
		func(w io.Writer, v any) error {
			_, err := fmt.Fprintln(w, strings.TrimSpace(v.(control.RemoveMemberResult).Message))
			return err
		})
	cmd.Flags().StringVar(&req.AgentID, "agent-id", "", "the member's controller agent id")
	cmd.Flags().StringVar(&req.Address, "address", "", "the member's address (host or host:port)")
	cmd.Flags().BoolVar(&req.Force, "force", false, "also remove a member whose unit is still in the relation, or a voter that does not answer")
	cmd.MarkFlagsMutuallyExclusive("agent-id", "address")
	cmd.MarkFlagsOneRequired("agent-id", "address")
	return cmd
}

func raftPositionCmd(stdout io.Writer) *cobra.Command {
	return opCmd(stdout, "raft-position", "Show where this node's Raft log ends (term, index), its state and last role",
		10*time.Second,
		func(ctx context.Context, c *control.Client) (any, error) { return c.RaftInfo(ctx) },
		func(w io.Writer, v any) error {
			r := v.(control.RaftInfo)
			_, err := fmt.Fprintf(w, "controller %s node %s (%s, %s): term %d, index %d\n", r.ControllerID, dash(r.NodeID), r.State, dash(r.Role), r.Term, r.Index)
			return err
		})
}

func recoverCmd(stdout io.Writer) *cobra.Command {
	var req control.RecoverRequest
	var peers string
	cmd := opCmd(stdout, "recover-from-quorum-loss --confirm [--peers JSON]",
		"After a lost quorum, make this node the sole voter (it must have the most up-to-date log of the survivors); the others wipe and rejoin",
		2*time.Minute,
		func(ctx context.Context, c *control.Client) (any, error) {
			if peers != "" {
				if err := json.Unmarshal([]byte(peers), &req.Peers); err != nil {
					return nil, fmt.Errorf("invalid --peers: %w", err)
				}
			}
			return c.Recover(ctx, req)
		},
		func(w io.Writer, v any) error {
			_, err := fmt.Fprintln(w, v.(control.RecoverResult).Message)
			return err
		})
	cmd.Flags().BoolVar(&req.Confirm, "confirm", false, "confirm the forced reconfiguration")
	cmd.Flags().StringVar(&peers, "peers", "", "the other survivors' raft-position answers, as a JSON list (the charm passes what they published)")
	return cmd
}
