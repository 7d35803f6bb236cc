package e2e

import (
	"fmt"
	"testing"

	"github.com/juju/dqlite-controller/tests/sim"
)

// juju deploy -n 3: whatever the hook interleaving, exactly one cluster with
// three voters forms (DESIGN.md: bootstrap-agent-id).
// The Juju leader is a random unit of the batch, as in Juju (the default).
func TestDeploy_ThreeAtOnceFormsExactlyOneCluster(t *testing.T) {
	for i := 0; i < 2; i++ {
		t.Run(fmt.Sprintf("try%d", i), func(t *testing.T) {
			m := newModel(t, sim.Options{})
			if _, err := m.Deploy(3); err != nil {
				t.Fatal(err)
			}
			waitIdle(t, m)
			v := waitCluster(t, m)
			t.Logf("Juju leader %s", m.Status().Leader)
			for u, s := range v.Nodes {
				t.Logf("%s: node %s %s role %s leader %s", u, s.NodeID, s.Address, s.Role, s.LeaderAddress())
			}
			waitActive(t, m)
		})
	}
}

// juju deploy -n 3 while the Juju leader loses its lease in the middle of
// the hook in which it chooses the bootstrap node (after its relation-set
// --app): Juju refuses that hook's application data at commit, the next
// leader chooses, and exactly one cluster forms all the same.
func TestDeploy_LeaderLosesLeaseMidHook_OneCluster(t *testing.T) {
	m := newModel(t, sim.Options{FirstUnitLeads: true})
	m.MoveLeadershipAt(app+"/0", "db-cluster-relation-created", "status-set")
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	refused := false
	for _, r := range m.History(app + "/0") {
		refused = refused || r.CommitError != ""
	}
	if !refused {
		t.Fatalf("the fault did not fire: %s/0's hooks %+v", app, m.History(app+"/0"))
	}
	waitCluster(t, m)
	waitActive(t, m)
}

// Juju 3.6 (metadata.yaml allows it): unfiltered ingress lists,
// private-address in relation data, JUJU_VERSION 3.6.x, 3.6 error texts.
// deploy -n 3 forms one cluster and every unit goes active.
func TestJuju36_DeployThree_OneCluster(t *testing.T) {
	m := newModel(t, sim.Options{Juju36: true})
	if _, err := m.Deploy(3); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	waitCluster(t, m)
	waitActive(t, m)
	if got := m.RelationData("db-cluster")[app+"/1"]["private-address"]; got == "" {
		t.Errorf("Juju 3.6 mode: no private-address in %s/1's relation data", app)
	}
}
