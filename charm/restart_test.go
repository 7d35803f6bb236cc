package charm_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// rollModel is three deployed units (leader dqlite-controller/1) whose
// fake controllerd goes down on a restart and answers as a running member
// again only at the second status call after it (so a restarted unit
// holds the lock across one hook). It records the restart order and fails
// the test when a unit restarts while another is down.
func rollModel(t *testing.T) (*model, []*unit, *[]string) {
	m := newModel(t)
	us := []*unit{m.addUnit(0, "10.0.0.0"), m.addUnit(1, "10.0.0.1"), m.addUnit(2, "10.0.0.2")}
	m.leader = us[1].name
	m.settleScope(us...)
	m.published(us...)
	for _, u := range us {
		u.workload = workloadJSON(u.agentID(), "voter", "0:voter", "1:voter", "2:voter")
		deploy(m, u)
	}
	m.mustRunEnv(us[1], hookEnv{hook: "db-cluster-relation-changed"})
	var order []string
	m.onRestart = func(u *unit) {
		for _, o := range us {
			if o != u && o.inScope && o.workload == "" {
				t.Errorf("%s restarted while %s was down", u.name, o.name)
			}
		}
		order = append(order, u.name)
		u.workloadLater, u.workloadLaterAfter = u.workload, 1
		u.workload = ""
	}
	return m, us, &order
}

// runRounds runs an app-data relation-changed on every unit, n times over
// (every hook of a settled model converges to the same state).
func runRounds(m *model, us []*unit, n int) {
	m.t.Helper()
	for i := 0; i < n; i++ {
		for _, u := range us {
			if u.inScope {
				m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-changed"})
			}
		}
	}
}

func sawStatus(u *unit, msg string) bool {
	return slices.Contains(u.statusHistory, [2]string{"waiting", msg})
}

func TestRollingRestart_UpgradeCharmOneUnitAtATimeLeaderLast(t *testing.T) {
	m, us, order := rollModel(t)
	for _, u := range us {
		m.mustRun(u, "upgrade-charm")
		if len(*order) != 0 {
			t.Fatalf("%s restarted in its upgrade-charm, before any grant committed: %v", u.name, *order)
		}
		if m.unitData[u.name]["restart-request"] == "" {
			t.Fatalf("%s asked for no restart: %v", u.name, m.unitData[u.name])
		}
	}
	if got := m.appData["restart-granted"]; !strings.HasPrefix(got, "dqlite-controller/0 upgrade-charm@") {
		t.Fatalf("restart-granted = %q, want the lowest peer first", got)
	}
	runRounds(m, us, 6)
	if want := []string{"dqlite-controller/0", "dqlite-controller/2", "dqlite-controller/1"}; !slices.Equal(*order, want) {
		t.Fatalf("restart order %v, want %v (one each, the leader's unit last)", *order, want)
	}
	if !sawStatus(us[2], "waiting to restart (dqlite-controller/0 is restarting)") {
		t.Errorf("dqlite-controller/2 never said whom it waits for: %v", us[2].statusHistory)
	}
	if !sawStatus(us[0], "restarted controllerd; waiting for its node to rejoin the cluster before releasing the restart lock") {
		t.Errorf("dqlite-controller/0 never said it waits to rejoin: %v", us[0].statusHistory)
	}
	if g, ok := m.appData["restart-granted"]; ok {
		t.Errorf("restart-granted left as %q after the roll", g)
	}
	for _, u := range us {
		if r, ok := m.unitData[u.name]["restart-request"]; ok {
			t.Errorf("%s still asks: %q", u.name, r)
		}
		if u.status[0] != "active" {
			t.Errorf("%s status after the roll: %v", u.name, u.status)
		}
		if _, err := os.Stat(filepath.Join(u.jujuDir(), "dqlite-controller-charm", "unit-"+u.agentID()+".restart")); err == nil {
			t.Errorf("%s kept its pending restart", u.name)
		}
	}
	// A later hook restarts nothing.
	runRounds(m, us, 1)
	if len(*order) != 3 {
		t.Fatalf("restarts after the roll: %v", *order)
	}
}

func TestRollingRestart_PortChangeRollsToo(t *testing.T) {
	m, us, order := rollModel(t)
	m.config["db-port"] = 18000
	for _, u := range us {
		m.mustRun(u, "config-changed")
		if !strings.Contains(string(fileBytes(t, u.unitFile())), "--port 18000 ") {
			t.Fatalf("%s unit file not re-rendered", u.name)
		}
	}
	runRounds(m, us, 6)
	if want := []string{"dqlite-controller/0", "dqlite-controller/2", "dqlite-controller/1"}; !slices.Equal(*order, want) {
		t.Fatalf("restart order %v, want %v", *order, want)
	}
}

func TestRollingRestart_DepartedHolderReleases(t *testing.T) {
	m, us, order := rollModel(t)
	for _, u := range us {
		m.mustRun(u, "upgrade-charm")
	}
	m.mustRunEnv(us[0], hookEnv{hook: "db-cluster-relation-changed"}) // granted: restarts, not back yet
	if !slices.Equal(*order, []string{"dqlite-controller/0"}) || !strings.HasPrefix(m.appData["restart-granted"], "dqlite-controller/0 ") {
		t.Fatalf("order %v, grant %q", *order, m.appData["restart-granted"])
	}
	// dqlite-controller/0 is removed while it holds the lock.
	us[0].inScope = false
	for _, u := range us[1:] {
		u.members = slices.DeleteFunc(u.members, func(n string) bool { return n == us[0].name })
	}
	m.mustRunEnv(us[1], hookEnv{hook: "db-cluster-relation-departed", remoteUnit: us[0].name, departing: us[0].name})
	if !strings.HasPrefix(m.appData["restart-granted"], "dqlite-controller/2 ") {
		t.Fatalf("restart-granted = %q after the holder departed, want dqlite-controller/2", m.appData["restart-granted"])
	}
	us[0].workload = "" // gone for good
	runRounds(m, us[1:], 5)
	if want := []string{"dqlite-controller/0", "dqlite-controller/2", "dqlite-controller/1"}; !slices.Equal(*order, want) {
		t.Fatalf("restart order %v, want %v", *order, want)
	}
}

func TestRollingRestart_LeaderChangeMidRoll(t *testing.T) {
	m, us, order := rollModel(t)
	for _, u := range us {
		m.mustRun(u, "upgrade-charm")
	}
	runRounds(m, us[:1], 2) // dqlite-controller/0 restarts and releases
	if !slices.Equal(*order, []string{"dqlite-controller/0"}) {
		t.Fatalf("order %v", *order)
	}
	// Leadership moves to dqlite-controller/0 before the old leader
	// granted the next unit.
	m.leader = us[0].name
	m.mustRun(us[0], "leader-elected")
	if !strings.HasPrefix(m.appData["restart-granted"], "dqlite-controller/1 ") {
		t.Fatalf("restart-granted = %q, want the old leader (now a peer, lowest asking) next", m.appData["restart-granted"])
	}
	runRounds(m, us, 6)
	if want := []string{"dqlite-controller/0", "dqlite-controller/1", "dqlite-controller/2"}; !slices.Equal(*order, want) {
		t.Fatalf("restart order %v, want %v", *order, want)
	}
	if _, ok := m.appData["restart-granted"]; ok {
		t.Fatalf("lock still held: %q", m.appData["restart-granted"])
	}
}

func TestRollingRestart_NewReasonDuringTheRestartRestartsAgainAfterRelease(t *testing.T) {
	m, us, order := rollModel(t)
	for _, u := range us {
		m.mustRun(u, "upgrade-charm")
	}
	m.mustRunEnv(us[0], hookEnv{hook: "db-cluster-relation-changed"}) // restarted, not back yet
	m.config["api-port"] = 18070
	m.mustRun(us[0], "config-changed") // back: releases, asks again
	first := m.unitData[us[0].name]["restart-request"]
	if !strings.HasPrefix(first, "unit-file@") {
		t.Fatalf("dqlite-controller/0 request after a new reason: %q", first)
	}
	runRounds(m, us, 8)
	if want := []string{"dqlite-controller/0", "dqlite-controller/2", "dqlite-controller/0", "dqlite-controller/1"}; !slices.Equal(*order, want) {
		t.Fatalf("restart order %v, want %v", *order, want)
	}
}

// The leader's unit runs its hook first (its upgrade-charm, here its
// config-changed): it does not take the lock while its peers, which
// publish the old restart target, have not asked yet; it goes last.
func TestRollingRestart_LeaderFirstWaitsForPeersBehind(t *testing.T) {
	m, us, order := rollModel(t)
	m.config["db-port"] = 18000
	m.mustRun(us[1], "config-changed")
	if g := m.appData["restart-granted"]; g != "" {
		t.Fatalf("the leader granted %q while its peers were behind", g)
	}
	if want := "waiting to restart (the leader's unit goes last; waiting for dqlite-controller/0, dqlite-controller/2 to ask first)"; us[1].status != [2]string{"waiting", want} {
		t.Fatalf("leader status %v, want %q", us[1].status, want)
	}
	m.mustRun(us[0], "config-changed")
	m.mustRun(us[2], "config-changed")
	m.mustRunEnv(us[1], hookEnv{hook: "db-cluster-relation-changed", remoteUnit: us[0].name})
	runRounds(m, us, 6)
	if want := []string{"dqlite-controller/0", "dqlite-controller/2", "dqlite-controller/1"}; !slices.Equal(*order, want) {
		t.Fatalf("restart order %v, want %v", *order, want)
	}
}
