// Package e2e runs the built charm (build/charm, unchanged) and its real
// controllerd on simulated machines (tests/sim), scenario by scenario. The
// helpers that other scenario packages share are in tests/simtest.
package e2e

import (
	"testing"

	"github.com/juju/dqlite-controller/tests/simtest"
)

const app = "dqlite-controller"

func requireRoot(t *testing.T) {
	simtest.RequireRoot(t, "the end-to-end tests need root (network namespaces)")
}
