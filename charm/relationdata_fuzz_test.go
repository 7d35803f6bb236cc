package charm_test

import (
	"os"
	"testing"

	"github.com/juju/dqlite-controller/controllerconf"
)

// checkConf asserts that whatever controller.conf the hook wrote parses and
// lists only valid entries, and that the hook's status says something.
func checkConf(t *testing.T, u *unit) {
	t.Helper()
	data, err := os.ReadFile(u.confPath())
	if err != nil {
		return // nothing written yet
	}
	c, err := controllerconf.Parse(data)
	if err != nil {
		t.Fatalf("%s wrote a controller.conf that does not parse: %v\n%s", u.name, err, data)
	}
	for id, addr := range c.DBBindAddresses {
		if controllerconf.ValidateAgentID(id) != nil || controllerconf.ValidateHost(addr) != nil {
			t.Fatalf("%s wrote an invalid entry %q: %q", u.name, id, addr)
		}
	}
	if u.status[0] == "" {
		t.Fatalf("%s set no status", u.name)
	}
}

// FuzzReconcile_PeerAndAppData runs the leader's and a follower's
// db-cluster-relation-changed hook with a peer's unit data and the
// application data as hostile as the fuzzer makes them: the hook must
// not fail (a status or a log line explains bad data) and must write only
// a valid controller.conf.
func FuzzReconcile_PeerAndAppData(f *testing.F) {
	f.Add("1", "10.0.0.2", `{"0":"10.0.0.1","1":"10.0.0.2"}`, "0", "")
	f.Add("../../etc", "10.0.0.2;reboot", `{"0":"10.0.0.1"`, "", "x")
	f.Add("7", "[fd00::4]", `{"-1":"10.0.0.9","18446744073709551616":"::1"}`, "99", "\x00")
	f.Add("01", "10.0.0.1", `[]`, "0 ", "k=v")
	f.Add("1", "10.0.0.2\n", `{"0":"10.0.0.1","1":"10.0.0.1"}`, "1", "")
	f.Fuzz(func(t *testing.T, peerID, peerAddr, appAddrs, bootstrap, extra string) {
		m := newModel(t)
		leader := m.addUnit(0, "10.0.0.1")
		follower := m.addUnit(2, "10.0.0.3")
		peer := m.addUnit(1, "10.0.0.2")
		m.leader = leader.name
		m.settleScope(leader, follower, peer)
		m.unitData[leader.name] = map[string]string{"agent-id": "0", "db-bind-address": "10.0.0.1"}
		m.unitData[follower.name] = map[string]string{"agent-id": "2", "db-bind-address": "10.0.0.3"}
		m.unitData[peer.name] = map[string]string{"agent-id": peerID, "db-bind-address": peerAddr, extra: extra}
		m.appData["db-bind-addresses"] = appAddrs
		if bootstrap != "" {
			m.appData["bootstrap-agent-id"] = bootstrap
		}
		for _, u := range []*unit{leader, follower} {
			if _, err := m.run(u, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: peer.name}); err != nil {
				t.Fatalf("%s db-cluster-relation-changed failed: %v", u.name, err)
			}
			checkConf(t, u)
		}
	})
}

// FuzzReconcile_NetworkGet runs config-changed with any network-get
// db-cluster and network-get api output: the hook must not fail and must
// write only a valid controller.conf.
func FuzzReconcile_NetworkGet(f *testing.F) {
	f.Add(networkJSON("10.0.0.1"), networkJSON("10.0.0.1"))
	f.Add(networkJSON(), "")
	f.Add(networkJSON("10.0.0.1", "192.168.1.1"), `{"bind-addresses":null}`)
	f.Add(`{"bind-addresses":[{"addresses":[{"value":"fe80::1","cidr":"fe80::/64"}]}],"ingress-addresses":["240.0.0.1","0.0.0.0"]}`, `{`)
	f.Add(`{"ingress-addresses":["10.0.0.1/24","[::1]",""]}`, `[]`)
	f.Add(`null`, `"x"`)
	f.Fuzz(func(t *testing.T, dbCluster, api string) {
		m := newModel(t)
		u := m.addUnit(0, "10.0.0.1")
		m.leader = u.name
		u.inScope = true
		u.network = dbCluster
		u.apiNetwork = api
		if _, err := m.run(u, hookEnv{hook: "config-changed"}); err != nil {
			t.Fatalf("config-changed failed: %v", err)
		}
		checkConf(t, u)
	})
}
