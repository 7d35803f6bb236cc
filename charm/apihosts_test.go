package charm_test

import (
	"errors"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func assertAPIHosts(t *testing.T, u *unit, all, agent []string) {
	t.Helper()
	c := u.readConf(t)
	if !slices.Equal(c.APIHosts, all) || !slices.Equal(c.APIAgentHosts, agent) {
		t.Fatalf("%s controller.conf api-hosts %q, api-agent-hosts %q; want %q, %q", u.name, c.APIHosts, c.APIAgentHosts, all, agent)
	}
}

func TestAPIHosts_EveryUsableMachineAddressFromNetlink(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	// Other NICs: a public address, IPv6 global (written non-canonically
	// here, canonical in the file) and addresses nobody else can reach.
	u.addLocal("203.0.113.7", "2001:db8:0:0::7", "fe80::1", "169.254.1.1", "fd00::9")
	m.leader = u.name
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)

	// The api binding defaults to db-cluster's space (both on the
	// application's default space): agents get the unit's address there.
	assertAPIHosts(t, u, []string{"10.0.0.1", "203.0.113.7", "2001:db8::7", "fd00::9"}, []string{"10.0.0.1"})
	if c := u.readConf(t); c.DBBindAddresses["0"] != "10.0.0.1" || c.BootstrapAgentID != "0" {
		t.Fatalf("cluster part lost: %+v", c)
	}
	if u.status != [2]string{"active", "voter, leader; 1 member (1 voter: no redundancy)"} {
		t.Fatalf("status = %v", u.status)
	}
}

func TestAPIBinding_NarrowsTheAgentHostsToItsSpace(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	u.addLocal("10.9.0.1", "203.0.113.7")
	m.leader = u.name
	// deploy --bind "api=mgmt": the machine's address in mgmt, reported
	// with its CIDR, and an ingress address the machine does not have (a
	// NAT'd public address), which agents could not be told to use.
	u.apiNetwork = `{"bind-addresses":[{"mac-address":"00:16:3e:00:00:02","interface-name":"eth1","addresses":[{"hostname":"","value":"10.9.0.1/24","cidr":"10.9.0.0/24"}]}],"egress-subnets":["10.9.0.1/32"],"ingress-addresses":["198.51.100.4","10.9.0.1"]}`
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)

	assertAPIHosts(t, u, []string{"10.0.0.1", "10.9.0.1", "203.0.113.7"}, []string{"10.9.0.1"})
	if strings.Contains(u.status[1], "agents use all addresses") {
		t.Fatalf("status = %v", u.status)
	}
}

// A unit with no address in the api binding's space leaves api-agent-hosts
// empty (agents use all of its addresses), and its status says so.
func TestAPIBindingWithoutAddress_AgentsFallBack(t *testing.T) {
	for name, bind := range map[string]func(u *unit){
		"no address in the space": func(u *unit) { u.bindAPI() },
		"address not on this machine": func(u *unit) {
			u.bindAPI("10.7.0.1")
		},
		"binding unknown to juju": func(u *unit) {
			u.apiNetErr = `ERROR no network config found for binding "api"`
		},
	} {
		t.Run(name, func(t *testing.T) {
			m := newModel(t)
			u := m.addUnit(0, "10.0.0.1")
			u.addLocal("203.0.113.7")
			m.leader = u.name
			u.workload = workloadJSON("0", "voter", "0:voter")
			bind(u)
			deploy(m, u) // every hook succeeds

			assertAPIHosts(t, u, []string{"10.0.0.1", "203.0.113.7"}, nil)
			if !u.logged("agents get all of its addresses") {
				t.Fatalf("the fallback was not logged: %q", u.logs)
			}
			if u.status != [2]string{"active", "voter, leader; 1 member (1 voter: no redundancy); no address in the api binding's space, agents use all addresses"} {
				t.Fatalf("status = %v", u.status)
			}
		})
	}
}

// juju bind api=<space> runs config-changed, which rewrites api-agent-hosts
// without restarting controllerd.
func TestBindAPI_RewritesAgentHostsWithoutRestart(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	u.addLocal("10.9.0.1")
	m.leader = u.name
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)
	assertAPIHosts(t, u, []string{"10.0.0.1", "10.9.0.1"}, []string{"10.0.0.1"})
	sets, appSets, systemctl := u.relationSets, u.appSets, len(u.systemctl)

	// juju bind dqlite-controller api=mgmt: only config-changed fires.
	u.bindAPI("10.9.0.1")
	m.mustRun(u, "config-changed")
	assertAPIHosts(t, u, []string{"10.0.0.1", "10.9.0.1"}, []string{"10.9.0.1"})
	// controllerd watches the file: no restart, and the cluster part and
	// relation data are untouched.
	for _, c := range u.systemctl[systemctl:] {
		if c != "is-active controllerd.service" {
			t.Fatalf("unexpected systemctl %q", c)
		}
	}
	if u.relationSets != sets || u.appSets != appSets {
		t.Fatal("binding api changed relation data")
	}
	if c := u.readConf(t); c.DBBindAddresses["0"] != "10.0.0.1" || c.BootstrapAgentID != "0" {
		t.Fatalf("cluster part changed: %+v", c)
	}

	// Bound to a space where this machine has nothing: fallback, noted.
	u.bindAPI()
	m.mustRun(u, "config-changed")
	assertAPIHosts(t, u, []string{"10.0.0.1", "10.9.0.1"}, nil)
	if !strings.HasSuffix(u.status[1], "; no address in the api binding's space, agents use all addresses") {
		t.Fatalf("status = %v", u.status)
	}
	// And back: the note goes away.
	u.bindAPI("10.9.0.1")
	m.mustRun(u, "config-changed")
	assertAPIHosts(t, u, []string{"10.0.0.1", "10.9.0.1"}, []string{"10.9.0.1"})
	if u.status != [2]string{"active", "voter, leader; 1 member (1 voter: no redundancy)"} {
		t.Fatalf("status = %v", u.status)
	}
}

func TestAPIHosts_UnchangedAddressesDoNotRewriteTheFile(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	u.addLocal("203.0.113.7")
	m.leader = u.name
	deploy(m, u)
	ino := inode(t, u.confPath())
	for _, h := range []string{"config-changed", "update-status", "db-cluster-relation-changed", "leader-elected"} {
		m.mustRunEnv(u, hookEnv{hook: h})
		if inode(t, u.confPath()) != ino {
			t.Fatalf("%s rewrote an unchanged controller.conf", h)
		}
	}
	// A new address on the machine (Juju runs config-changed when the
	// machine's addresses change) is written.
	u.addLocal("2001:db8::7")
	m.mustRun(u, "config-changed")
	if inode(t, u.confPath()) == ino {
		t.Fatal("a new machine address did not rewrite controller.conf")
	}
	assertAPIHosts(t, u, []string{"10.0.0.1", "203.0.113.7", "2001:db8::7"}, []string{"10.0.0.1"})
}

func TestNetlinkFailure_KeepsTheLastAPIHosts(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	u.addLocal("203.0.113.7")
	m.leader = u.name
	deploy(m, u)
	before := fileBytes(t, u.confPath())
	u.localErr = errors.New("cannot list local addresses: netlink receive: operation not permitted")
	m.mustRun(u, "update-status")
	if got := fileBytes(t, u.confPath()); string(got) != string(before) {
		t.Fatalf("controller.conf changed to %q", got)
	}
	if u.status[0] != "blocked" || !strings.HasPrefix(u.status[1], "cannot check this machine's addresses: ") {
		t.Fatalf("status = %v", u.status)
	}
}

func TestLeavingUnit_KeepsItsAPIHosts(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u1.name
	m.settleScope(u0, u1)
	m.published(u0, u1)
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed"})
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed"})
	before := fileBytes(t, u0.confPath())

	u0.members = nil
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u1.name, departing: u0.name})
	u0.addLocal("203.0.113.7")
	u0.bindAPI()
	m.mustRun(u0, "config-changed")
	if got := fileBytes(t, u0.confPath()); string(got) != string(before) {
		t.Fatalf("the leaving unit rewrote controller.conf:\n%s\nwas:\n%s", got, before)
	}
}

func TestAPIPort_InTheUnitFileAndAChangeRestarts(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	deploy(m, u)
	if !strings.Contains(string(fileBytes(t, u.unitFile())), "ExecStart=/charm/controllerd run --controller-id 0 --port 17666 --api-port 17070\n") {
		t.Fatalf("unit file:\n%s", fileBytes(t, u.unitFile()))
	}
	restarts, reloads := u.ranSystemctl("restart controllerd.service"), u.ranSystemctl("daemon-reload")

	m.config["api-port"] = 18070
	m.mustRun(u, "config-changed")
	if !strings.Contains(string(fileBytes(t, u.unitFile())), "--port 17666 --api-port 18070\n") {
		t.Fatalf("unit file not re-rendered:\n%s", fileBytes(t, u.unitFile()))
	}
	if u.ranSystemctl("daemon-reload") != reloads+1 || u.ranSystemctl("restart controllerd.service") != restarts+1 {
		t.Fatalf("systemctl %v", u.systemctl)
	}
	// Unset (config-get omits it): the default.
	delete(m.config, "api-port")
	m.mustRun(u, "config-changed")
	if !strings.Contains(string(fileBytes(t, u.unitFile())), "--api-port 17070\n") {
		t.Fatalf("unit file:\n%s", fileBytes(t, u.unitFile()))
	}
}

func TestInvalidAPIPort_BlockedAndUnitFileKept(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	deploy(m, u)
	before := fileBytes(t, u.unitFile())
	restarts := u.ranSystemctl("restart controllerd.service")
	for _, tc := range []struct {
		value any
		want  string
	}{
		{0, `invalid api-port "0": must be a whole number from 1 to 65535; fix it with juju config`},
		{70000, `invalid api-port "70000": must be a whole number from 1 to 65535; fix it with juju config`},
		{"http", `invalid api-port "http": must be a whole number from 1 to 65535; fix it with juju config`},
		{17666, "db-port and api-port are both 17666; give them different values with juju config"},
	} {
		m.config["api-port"] = tc.value
		m.mustRun(u, "config-changed")
		if u.status != [2]string{"blocked", tc.want} {
			t.Fatalf("api-port %v: status = %v", tc.value, u.status)
		}
		if string(fileBytes(t, u.unitFile())) != string(before) || u.ranSystemctl("restart controllerd.service") != restarts {
			t.Fatalf("api-port %v: unit file changed or daemon restarted", tc.value)
		}
	}
	m.config["api-port"] = 17071
	m.mustRun(u, "config-changed")
	if u.status[0] == "blocked" || !strings.Contains(string(fileBytes(t, u.unitFile())), "--api-port 17071\n") {
		t.Fatalf("status = %v after the fix", u.status)
	}
}

func TestWorkloadStatus_SingularControllerLease(t *testing.T) {
	three := workloadJSON("0", "voter", "0:voter", "1:voter", "2:voter")
	withLease := func(lease string) string {
		return strings.TrimSuffix(three, "}") + `,"lease":` + lease + `}`
	}
	cases := []struct {
		name, workload, want string
	}{
		{"held by another", withLease(`{"holder":"controller-1","expiry":"2026-11-25T12:00:03.250Z","held-by-me":false}`),
			"voter, leader; 3 members; singular-controller lease: controller-1 until 12:00:03Z"},
		{"held here, offset time", withLease(`{"holder":"controller-0","expiry":"2026-11-25T13:00:09+01:00","held-by-me":true}`),
			"voter, leader; 3 members; singular-controller lease: controller-0 until 12:00:09Z"},
		{"nobody holds it", withLease(`{"holder":"","expiry":"","held-by-me":false}`),
			"voter, leader; 3 members; singular-controller lease: not held"},
		{"unparsable expiry shown as given", withLease(`{"holder":"controller-2","expiry":"soon","held-by-me":false}`),
			"voter, leader; 3 members; singular-controller lease: controller-2 until soon"},
		{"null", withLease(`null`), "voter, leader; 3 members"},
		{"older daemon without the key", three, "voter, leader; 3 members"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := statusAfterDeploy(t, tc.workload)
			if u.status != [2]string{"active", tc.want} {
				t.Fatalf("status = %v, want %q", u.status, tc.want)
			}
		})
	}
	// With the agent fallback note, the lease comes first.
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.bindAPI()
	u.workload = withLease(`{"holder":"controller-1","expiry":"2026-11-25T12:00:03Z","held-by-me":false}`)
	deploy(m, u)
	if want := "voter, leader; 3 members; singular-controller lease: controller-1 until 12:00:03Z; no address in the api binding's space, agents use all addresses"; u.status != [2]string{"active", want} {
		t.Fatalf("status = %v", u.status)
	}
}
