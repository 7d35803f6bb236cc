// Command controllerd runs a controller's Dqlite node, driven by the
// controller config file the charm writes.
package main

import (
	"os"

	"github.com/juju/dqlite-controller/workload/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
