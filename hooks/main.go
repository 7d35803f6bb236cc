// Command dispatch is the charm's hook binary. Juju runs it for every hook
// with JUJU_DISPATCH_PATH set to hooks/<name>; every hook runs the same
// reconcile (package charm). This is the only place production paths and
// real system access (exec, netlink) are chosen.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/juju/dqlite-controller/charm"
	"github.com/juju/dqlite-controller/charm/bindaddr"
	"github.com/juju/dqlite-controller/charm/hooktools"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	env, err := charm.EnvFromGetenv(os.Getenv)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The reads every hook makes that do not depend on each other start
	// at once (hooktools.Prefetch says which calls may).
	runner := hooktools.NewPrefetch(hooktools.ExecRunner{}, charm.PrefetchCalls(env)...)
	defer runner.Close()
	logger := slog.New(hooktools.NewLogHandler(hooktools.New(runner), slog.LevelInfo, os.Stderr))
	cfg := charm.Config{
		JujuDir:        "/var/lib/juju",
		SystemdDir:     "/etc/systemd/system",
		Runner:         runner,
		LocalAddresses: bindaddr.Netlink{},
		Logger:         logger,
	}
	if err := charm.Reconcile(ctx, cfg, env); err != nil {
		logger.Error("hook failed", "hook", env.Hook, "err", err)
		return err
	}
	return nil
}
