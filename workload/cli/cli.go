// Package cli is controllerd's command line: run, status, sql, agent,
// client, version and the operator's operations (ops.go).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/controlplane/apiserver"
	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/daemon/agentsocket"
	"github.com/juju/dqlite-controller/workload/daemon/control"
	"github.com/juju/dqlite-controller/workload/daemon/node"
	"github.com/juju/dqlite-controller/workload/daemon/watch"
	"github.com/juju/dqlite-controller/workload/metrics"
)

// Version is controllerd's version.
const Version = "0.1.0"

// Defaults of the contract.
const (
	DefaultDataDir = "/var/lib/juju/dqlite"
	DefaultPort    = 17666
	// DefaultBackupDir is where each controller keeps the backups it takes.
	DefaultBackupDir = "/var/lib/juju/backups"
)

// Exit codes. A caller may retry a command that exited ExitFailed; after
// ExitUnknown it must first learn whether the write was applied (re-read),
// or retry only an idempotent statement.
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitFailed: the command failed and changed nothing it was asked to
	// change (no daemon answered, the database refused the statement).
	ExitFailed = 1
	// ExitUsage: the command line is wrong (unknown command or flag,
	// missing argument, invalid flag value).
	ExitUsage = 2
	// ExitUnknown: the request reached the daemon, or the daemon's COMMIT
	// reached Dqlite, and the answer was lost: the write may or may not
	// have been applied.
	ExitUnknown = 3
)

// usageError is an error in the command line itself.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef is a usageError with a formatted message.
func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// usageArgs marks a positional-argument check's errors as usage errors.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// Execute runs the command line with args and returns the exit code
// (ExitOK, ExitFailed, ExitUsage or ExitUnknown).
func Execute(args []string, stdout, stderr io.Writer) int {
	root := NewRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "error: %v\n", err)
	return ExitCode(err)
}

// ExitCode is the exit code for a command's error.
func ExitCode(err error) int {
	var usage usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, control.ErrOutcomeUnknown):
		return ExitUnknown
	case errors.As(err, &usage), strings.HasPrefix(err.Error(), "unknown command "), strings.HasPrefix(err.Error(), "required flag"):
		// cobra reports an unknown subcommand and a missing required
		// flag with these plain errors.
		return ExitUsage
	}
	return ExitFailed
}

// NewRoot builds the command tree.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "controllerd",
		Short:         "Run and inspect a Juju controller's Dqlite node",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(runCmd(stderr), statusCmd(stdout), sqlCmd(stdout), agentCmd(stderr), clientCmd(stdout, stderr), versionCmd(stdout))
	root.AddCommand(opsCmds(stdout)...)
	return root
}

func runCmd(stderr io.Writer) *cobra.Command {
	var (
		controllerID, configPath, dataDir, tlsDir string
		port                                      int
		verbose                                   bool
		o                                         node.Options
		configSocket                              string
	)
	cmd := &cobra.Command{
		Use:   "run --controller-id N",
		Short: "Run the daemon: watch the controller config and drive the Dqlite node",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := controllerconf.ValidateAgentID(controllerID); err != nil {
				return usagef("invalid --controller-id: %w", err)
			}
			if port <= 0 || port > 65535 {
				return usagef("invalid --port %d", port)
			}
			if configPath == "" {
				configPath = controllerconf.Path(controllerconf.DefaultAgentsDir, controllerID)
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
			if tlsDir == "" {
				tlsDir = clustertls.Dir(configPath)
			}
			o.ControllerID, o.ConfigPath, o.DataDir, o.Port, o.Log, o.DqliteDebug = controllerID, configPath, dataDir, port, log, verbose
			o.TLSDir = tlsDir
			if err := o.Validate(); err != nil {
				return usagef("invalid options: %w", err)
			}
			if !cmd.Flags().Changed("config-change-socket") && dataDir == DefaultDataDir {
				// Juju's data dir is the parent of the default Dqlite data dir.
				configSocket = filepath.Join(filepath.Dir(DefaultDataDir), agentsocket.Name)
			}
			return run(log, o, configSocket)
		},
	}
	cmd.Flags().StringVar(&controllerID, "controller-id", "", "this controller's agent id (required)")
	cmd.Flags().StringVar(&configPath, "config", "", "controller config file (default /var/lib/juju/agents/controller-N/controller.conf)")
	cmd.Flags().StringVar(&dataDir, "data-dir", DefaultDataDir, "data dir (Dqlite node and control socket)")
	cmd.Flags().IntVar(&port, "port", DefaultPort, "Dqlite port")
	cmd.Flags().StringVar(&tlsDir, "tls-dir", "", "node certificate, key and CA bundle (default: tls/ next to the config file); the Dqlite port and the HTTP API serve TLS only")
	cmd.Flags().BoolVar(&verbose, "verbose", false, "log debug messages, including go-dqlite's")
	cmd.Flags().IntVar(&o.APIPort, "api-port", apiaddr.DefaultPort, "HTTP API port (listens on 0.0.0.0; published with the api-hosts of the config)")
	cmd.Flags().StringVar(&o.BackupDir, "backup-dir", DefaultBackupDir, "where this controller keeps the backups it takes as singular-controller lease holder (\"\" disables backups)")
	cmd.Flags().DurationVar(&o.BackupInterval, "backup-interval", backup.DefaultInterval, "interval between backups, cluster-wide (exactly one controller takes each)")
	cmd.Flags().IntVar(&o.BackupKeep, "backup-keep", backup.DefaultKeep, "backups kept in --backup-dir")
	cmd.Flags().DurationVar(&o.BackupRecordDelay, "test-backup-record-delay", 0, "test hook: pause between writing a backup and recording it")
	cmd.Flags().MarkHidden("test-backup-record-delay")
	cmd.Flags().DurationVar(&o.RestoreAckTimeout, "test-restore-ack-timeout", 0, "test hook: how long a restore's source waits for every member to stop serving (default 60s)")
	cmd.Flags().MarkHidden("test-restore-ack-timeout")
	cmd.Flags().DurationVar(&o.LeaseDuration, "lease-duration", singular.DefaultDuration, "singular-controller lease duration (a hard-killed holder is replaced within it)")
	cmd.Flags().DurationVar(&o.LeaseExtendInterval, "lease-extend-interval", singular.DefaultExtendInterval, "how often the holder extends the lease (less than half of duration minus margin)")
	cmd.Flags().DurationVar(&o.LeaseMargin, "lease-margin", singular.DefaultMargin, "how much before the lease's expiry the holder stops its single-instance workers (stop time plus clock skew)")
	cmd.Flags().StringVar(&configSocket, "config-change-socket", "", "serve Juju 4's configchange.socket here (POST /reload, GET /agent-id); default /var/lib/juju/configchange.socket with the default --data-dir, else none; never taken over from a process that answers on it")
	cmd.MarkFlagRequired("controller-id")
	return cmd
}

func run(log *slog.Logger, o node.Options, configSocket string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("cannot create data dir: %w", err)
	}
	w, err := watch.New(ctx, o.ConfigPath, log)
	if err != nil {
		return err
	}
	o.Changes = w.Changes()
	if configSocket != "" {
		// POST /reload on configchange.socket reads the config again, as a
		// change seen by the watcher does.
		changes, reloads := make(chan struct{}, 1), make(chan struct{}, 1)
		go mergeChanges(ctx, changes, w.Changes(), reloads)
		o.Changes = changes
		_, err := agentsocket.Serve(ctx, configSocket, o.ControllerID, func() {
			select {
			case reloads <- struct{}{}:
			default:
			}
		}, log.With("component", "config-change-socket"))
		if err != nil {
			log.Warn("not serving the config change socket", "path", configSocket, "err", err)
		}
	}
	m := metrics.New()
	o.Metrics = m
	d := node.New(o)
	m.SetSource(d)
	srvCtx, srvStop := context.WithCancel(context.Background())
	defer srvStop()
	served, err := control.Serve(srvCtx, o.DataDir, d, log)
	if err != nil {
		return err
	}
	// The HTTP API serves until the node has stopped (health answers
	// while it hands over).
	apiDone := make(chan error, 1)
	go func() {
		apiDone <- apiserver.Serve(srvCtx, net.JoinHostPort("0.0.0.0", strconv.Itoa(o.APIPort)), withMetrics(m, d.APIHandler()),
			d.APITLSConfig(), log.With("component", "api"), d.SetAPIError)
	}()
	runErr := d.Run(ctx)
	srvStop()
	if err := <-served; err != nil && runErr == nil {
		runErr = fmt.Errorf("control socket failed: %w", err)
	}
	if err := <-apiDone; err != nil && runErr == nil {
		runErr = err
	}
	if runErr == nil {
		log.Info("controllerd stopped")
	}
	return runErr
}

// mergeChanges forwards every value of a and b to out (coalescing) until
// ctx is done.
func mergeChanges(ctx context.Context, out chan<- struct{}, a, b <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-a:
			if !ok {
				a = nil
				continue
			}
		case <-b:
		}
		select {
		case out <- struct{}{}:
		default:
		}
	}
}

// withMetrics serves /metrics (Prometheus text format) next to the HTTP
// API on its port, and counts the API's requests.
func withMetrics(m *metrics.Metrics, api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.Handle("/", m.InstrumentAPI(api))
	return mux
}

func statusCmd(stdout io.Writer) *cobra.Command {
	var dataDir, format string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node's state, role, leader and members",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := control.NewClient(dataDir).Status(ctx)
			if err != nil {
				return notRunning(err, dataDir)
			}
			switch format {
			case "json":
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			case "yaml":
				enc := yaml.NewEncoder(stdout)
				enc.SetIndent(2)
				if err := enc.Encode(st); err != nil {
					return err
				}
				return enc.Close()
			case "table":
				return printStatusTable(stdout, st)
			}
			return usagef("unknown format %q (want json, yaml or table)", format)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", DefaultDataDir, "data dir of the daemon to ask")
	cmd.Flags().StringVar(&format, "format", "table", "output format: table, json or yaml")
	return cmd
}

func notRunning(err error, dataDir string) error {
	if errors.Is(err, control.ErrNotRunning) {
		return fmt.Errorf("controllerd is not running with data dir %s (no control socket answers at %s)", dataDir, control.SocketPath(dataDir))
	}
	return err
}

func printStatusTable(w io.Writer, st control.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	leader := "none"
	if st.Leader != nil {
		leader = st.Leader.Address + " (" + st.Leader.NodeID + ")"
	}
	role := st.Role
	if role == "" {
		role = "-"
	}
	fmt.Fprintf(tw, "Controller:\t%s\n", st.ControllerID)
	fmt.Fprintf(tw, "State:\t%s\n", st.State)
	fmt.Fprintf(tw, "Message:\t%s\n", st.Message)
	fmt.Fprintf(tw, "Node:\t%s\n", dash(st.NodeID))
	fmt.Fprintf(tw, "Address:\t%s\n", dash(st.Address))
	fmt.Fprintf(tw, "Role:\t%s\n", role)
	fmt.Fprintf(tw, "Member:\t%t\n", st.Member)
	fmt.Fprintf(tw, "Leader:\t%s\n", leader)
	if st.ConfigError != "" {
		fmt.Fprintf(tw, "Config error:\t%s\n", st.ConfigError)
	}
	fmt.Fprintf(tw, "Lease:\t%s\n", leaseLine(st.Lease))
	fmt.Fprintf(tw, "API port:\t%d\n", st.APIPort)
	if st.APIError != "" {
		fmt.Fprintf(tw, "API error:\t%s\n", st.APIError)
	}
	if a := st.APIAddresses; a != nil {
		fmt.Fprintf(tw, "Agent addresses:\t%s\n", listOrNone(a.Agents))
		fmt.Fprintf(tw, "Client addresses:\t%s\n", listOrNone(a.Clients))
		if len(a.AgentFallback) > 0 {
			fmt.Fprintf(tw, "Agent fallback:\tcontrollers %s have no address in the api binding's space: agents get all of their addresses\n", strings.Join(a.AgentFallback, ", "))
		}
	} else {
		fmt.Fprintf(tw, "API addresses:\tnot known yet\n")
	}
	if st.APINote != "" {
		fmt.Fprintf(tw, "API note:\t%s\n", st.APINote)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tADDRESS\tROLE\t")
	for _, m := range st.Members {
		mark := ""
		if st.Leader != nil && m.NodeID == st.Leader.NodeID {
			mark = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.NodeID, m.Address, m.Role, mark)
	}
	return tw.Flush()
}

func leaseLine(l *control.LeaseStatus) string {
	switch {
	case l == nil:
		return "unknown (the singular worker runs only on a running member)"
	case l.Holder == "":
		return "vacant"
	}
	s := l.Holder
	if l.Expiry != "" {
		s += " until " + l.Expiry
	}
	if l.HeldByMe {
		s += " (this controller)"
	}
	return s
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sqlCmd(stdout io.Writer) *cobra.Command {
	var dataDir, format string
	cmd := &cobra.Command{
		Use:   "sql STATEMENT",
		Short: "Run one statement on the controller database",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "json" && format != "table" {
				return usagef("unknown format %q (want json or table)", format)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := control.NewClient(dataDir).SQL(ctx, args[0])
			if errors.Is(err, control.ErrOutcomeUnknown) {
				detail := strings.TrimPrefix(err.Error(), control.ErrOutcomeUnknown.Error()+": ")
				return fmt.Errorf("%w: the statement may or may not have been applied; read the database before retrying it (%s)", control.ErrOutcomeUnknown, detail)
			}
			if err != nil {
				return notRunning(err, dataDir)
			}
			if format == "json" {
				return json.NewEncoder(stdout).Encode(res)
			}
			return printSQLTable(stdout, res)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", DefaultDataDir, "data dir of the daemon to use")
	cmd.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return cmd
}

func printSQLTable(w io.Writer, res control.SQLResult) error {
	if !res.IsQuery {
		_, err := fmt.Fprintf(w, "%d row(s) affected\n", *res.RowsAffected)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(upper(res.Columns), "\t"))
	for _, row := range res.Rows {
		cells := make([]string, len(row))
		for i, v := range row {
			cells[i] = cell(v)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func upper(cols []string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = strings.ToUpper(c)
	}
	return out
}

func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case string:
		return x
	}
	return fmt.Sprint(v)
}

func versionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print controllerd's version",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(stdout, Version)
			return err
		},
	}
}
