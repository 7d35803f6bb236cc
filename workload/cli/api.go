package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
	"github.com/juju/dqlite-controller/workload/consumer/apiclient"
	"github.com/juju/dqlite-controller/workload/consumer/apidial"
	"github.com/juju/dqlite-controller/workload/consumer/apihttp"
)

// HTTP timeouts of the agent and client commands.
const (
	dialTimeout = 5 * time.Second
	// agentWatchTimeout is the long poll the agent asks for; the
	// response header may take that long.
	agentWatchTimeout = 30 * time.Second
	// clientRequestTimeout bounds each connection attempt of the client.
	clientRequestTimeout = 10 * time.Second
)

// splitAddresses parses a comma-separated host:port list.
func splitAddresses(flag, s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return nil, usagef("invalid %s address %q: want host:port", flag, a)
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// httpClient is an HTTPS client that verifies the controllers against the
// CA bundle caPEM, with the server name pinned (clustertls.ClientConfig).
func httpClient(caPEM []byte, timeout time.Duration, responseHeader time.Duration) (*http.Client, error) {
	pool, err := clustertls.PoolFromPEM(caPEM)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:       clustertls.ClientConfig(pool),
			TLSHandshakeTimeout:   dialTimeout,
			DialContext:           (&net.Dialer{Timeout: dialTimeout}).DialContext,
			ResponseHeaderTimeout: responseHeader,
			IdleConnTimeout:       time.Minute,
		},
	}, nil
}

func agentCmd(stderr io.Writer) *cobra.Command {
	var (
		path, controllers string
		verbose           bool
	)
	cmd := &cobra.Command{
		Use:   "agent --config PATH --controllers host:port[,host:port...]",
		Short: "Keep an agent config file's apiaddresses list current (the api-address-updater of a non-controller machine)",
		Long: `Keeps the apiaddresses: list of the agent config file PATH current: it
connects to a controller over HTTPS, verified against the file's cacert:
(the file's addresses and --controllers, in random order, a new parallel
attempt every 50 ms), long-polls the agent address
list and rewrites the file atomically when the list changes. An empty list
from the controllers keeps the file's list. It also keeps cacert: current
with the CA bundle the controllers publish (so that it follows a CA
rotation), taken only from a verified connection and only when it still
holds the CA that verified it. Runs until SIGTERM.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			seeds, err := splitAddresses("--controllers", controllers)
			if err != nil {
				return err
			}
			known, err := apiagent.ReadAddresses(path)
			if err != nil {
				return err
			}
			if len(known) == 0 && len(seeds) == 0 {
				return fmt.Errorf("no controller address: give --controllers or an agent config %s with %s", path, apiagent.Key)
			}
			// The client follows the file's cacert, which the updater
			// keeps current from the controllers (a CA rotation).
			clients := apihttp.AgentClients(path, func(caPEM []byte) (*http.Client, error) {
				return httpClient(caPEM, 0, agentWatchTimeout+15*time.Second)
			})
			if _, err := clients(); err != nil {
				return err
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
			src := &apihttp.AgentSource{
				// The file's list, plus the seeds: a controller given on
				// the command line stays a way in even if every address in
				// the file went away while the agent was down.
				Addresses: func() ([]string, error) {
					addrs, err := apiagent.ReadAddresses(path)
					if err != nil {
						return nil, err
					}
					for _, s := range seeds {
						if !slices.Contains(addrs, s) {
							addrs = append(addrs, s)
						}
					}
					return addrs, nil
				},
				CurrentClient: clients,
				Scheme:        "https",
				WatchTimeout:  agentWatchTimeout,
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			log.Info("api-address-updater starting", "config", path, "known", known, "controllers", seeds)
			err = apiagent.NewUpdater(path, src, log).Run(ctx)
			log.Info("api-address-updater stopped")
			return err
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "agent config file whose apiaddresses list is kept current (required)")
	cmd.Flags().StringVar(&controllers, "controllers", "", "controller API addresses to start from (host:port, comma-separated)")
	cmd.Flags().BoolVar(&verbose, "verbose", false, "log debug messages")
	cmd.MarkFlagRequired("config")
	return cmd
}

// clientResult is what `controllerd client --format json` prints.
type clientResult struct {
	Controller string `json:"controller"`
	// Connected is the address the connection succeeded on; TriedFirst
	// the address dialled first (the last good one, if any).
	Connected  string   `json:"connected"`
	TriedFirst string   `json:"tried-first"`
	LastGood   string   `json:"last-good"`
	Addresses  []string `json:"addresses"`
	Version    string   `json:"version"`
}

func clientCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		storePath, name, addresses, format, caPath string
		timeout                                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "client --store PATH --controller NAME [--ca-cert PATH] [--addresses host:port,...]",
		Short: "Connect to a controller's API like a client: last good address first, then the others; refresh the local address store",
		Long: `Connects to controller NAME through the addresses kept for it in the
address store PATH (a JSON file): the last address that worked is tried
first, the others after it (a new parallel attempt every 50 ms). On success
the store takes the controller's client address list and the address used
becomes the last good one. The controller is verified against the CA
certificate stored for it (--ca-cert stores it). --addresses seeds the store (added to a known
controller's list). Prints the address used and the list.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "json" && format != "table" {
				return usagef("unknown format %q (want table or json)", format)
			}
			seeds, err := splitAddresses("--addresses", addresses)
			if err != nil {
				return err
			}
			store := apiclient.NewStore(storePath)
			e, ok, err := store.Get(name)
			if err != nil {
				return err
			}
			if caPath != "" {
				pem, err := os.ReadFile(caPath)
				if err != nil {
					return fmt.Errorf("cannot read --ca-cert: %w", err)
				}
				if _, err := clustertls.PoolFromPEM(pem); err != nil {
					return fmt.Errorf("cannot use --ca-cert %s: %w", caPath, err)
				}
				if e.CACert != string(pem) {
					e.CACert = string(pem)
					if err := store.Set(name, e); err != nil {
						return err
					}
					ok = true
				}
			}
			if e.CACert == "" {
				return fmt.Errorf("no CA certificate for controller %q in the store: give --ca-cert", name)
			}
			if len(seeds) > 0 {
				ne := apiclient.Entry{Addresses: e.Addresses, LastGood: e.LastGood, CACert: e.CACert}
				for _, s := range seeds {
					if !slices.Contains(ne.Addresses, s) {
						ne.Addresses = append(ne.Addresses, s)
					}
				}
				if !ok || !slices.Equal(ne.Addresses, e.Addresses) {
					if err := store.Set(name, ne); err != nil {
						return err
					}
				}
				e = ne
			}
			order := e.DialOrder()
			if len(order) == 0 {
				return fmt.Errorf("no known API address for controller %q: give --addresses", name)
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			hc, err := httpClient([]byte(e.CACert), clientRequestTimeout, 0)
			if err != nil {
				return fmt.Errorf("cannot use the CA certificate stored for controller %q: %w", name, err)
			}
			lists, addr, err := apiclient.Connect(ctx, store, name, apihttp.ClientDial(hc, "https"), nil, apidial.Options{})
			if addr == "" {
				return err
			}
			if err != nil {
				fmt.Fprintf(stderr, "warning: connected, but %v\n", err)
			}
			after, _, err := store.Get(name)
			if err != nil {
				return err
			}
			res := clientResult{Controller: name, Connected: addr, TriedFirst: order[0], LastGood: after.LastGood,
				Addresses: after.Addresses, Version: lists.Version}
			if res.Addresses == nil {
				res.Addresses = []string{}
			}
			if format == "json" {
				return json.NewEncoder(stdout).Encode(res)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "Controller:\t%s\n", res.Controller)
			fmt.Fprintf(tw, "Connected:\t%s\n", res.Connected)
			fmt.Fprintf(tw, "Tried first:\t%s\n", res.TriedFirst)
			fmt.Fprintln(tw, "Addresses (dial order):")
			for _, a := range after.DialOrder() {
				mark := ""
				if a == after.LastGood {
					mark = "\tlast good"
				}
				fmt.Fprintf(tw, "  %s%s\n", a, mark)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&storePath, "store", "", "address store file (JSON; required)")
	cmd.Flags().StringVar(&name, "controller", "", "controller name in the store (required)")
	cmd.Flags().StringVar(&caPath, "ca-cert", "", "the controllers' CA certificate (PEM) to store for the controller and verify it against")
	cmd.Flags().StringVar(&addresses, "addresses", "", "API addresses to add for the controller (host:port, comma-separated)")
	cmd.Flags().StringVar(&format, "format", "table", "output format: table or json")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up connecting after this long")
	cmd.MarkFlagRequired("store")
	cmd.MarkFlagRequired("controller")
	return cmd
}
