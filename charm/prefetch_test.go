package charm_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/charm"
)

// Every prefetched call is one that a hook really makes, argument for
// argument (otherwise the prefetch is wasted work and the call still runs).
func TestPrefetchCalls_AreCallsTheHookMakes(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)
	for _, hook := range []string{"update-status", "config-changed"} {
		u.calls = nil
		m.mustRun(u, hook)
		for _, c := range charm.PrefetchCalls(m.env(u, hookEnv{hook: hook})) {
			if !slices.Contains(u.calls, strings.Join(c, " ")) {
				t.Errorf("%s does not call %q; it calls %q", hook, c, u.calls)
			}
		}
	}
}
