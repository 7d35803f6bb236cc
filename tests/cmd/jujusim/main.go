// Command jujusim narrates a real session on a simulated Juju model: the
// built charm and its controllerd on network-namespace machines (make demo).
//
//	jujusim [-charm build/charm] [-keep] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/juju/dqlite-controller/tests/demo"
)

func main() {
	charm := flag.String("charm", "build/charm", "the unpacked charm directory (make charm)")
	keep := flag.Bool("keep", false, "keep the machines' files and logs after the run")
	verbose := flag.Bool("v", false, "log what the simulator does")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "jujusim: the simulator creates network namespaces: run it as root")
		os.Exit(1)
	}
	// The simulator's own handler tears the model down on Ctrl-C.
	err := demo.Run(context.Background(), demo.Config{CharmDir: *charm, Out: os.Stdout, Logger: logger, KeepRunDir: *keep})
	if err != nil {
		fmt.Fprintf(os.Stderr, "jujusim: %v\n", err)
		os.Exit(1)
	}
}
