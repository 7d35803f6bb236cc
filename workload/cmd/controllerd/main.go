// Command controllerd runs a controller's Dqlite node, driven by the
// controller config file the charm writes.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "controllerd: not implemented yet")
	os.Exit(1)
}
