// Package controlplane_test runs the control-plane and operations
// scenarios (agents, clients, the singular-controller lease, backups,
// actions) on the simulator: the built charm and its real controllerd.
// They are a package of their own so that they run beside tests/e2e.
package controlplane_test

import (
	"testing"

	"github.com/juju/dqlite-controller/tests/simtest"
)

const app = "dqlite-controller"

func requireRoot(t *testing.T) {
	simtest.RequireRoot(t, "the end-to-end tests need root (network namespaces)")
}
