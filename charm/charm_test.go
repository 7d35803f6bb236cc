package charm_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/charm"
)

// deploy runs the first-unit hook sequence of `juju deploy` on u (leader):
// install, relation-created, leader-elected, config-changed, start.
func deploy(m *model, u *unit) {
	m.t.Helper()
	m.mustRun(u, "install")
	u.inScope = true
	m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-created"})
	if m.leader == u.name {
		m.mustRun(u, "leader-elected")
	}
	m.mustRun(u, "config-changed")
	m.mustRun(u, "start")
}

func workloadJSON(self string, role string, members ...string) string {
	// members: "id:role"; the first voter leads.
	var ms []string
	leader := ""
	for _, m := range members {
		id, r, _ := strings.Cut(m, ":")
		if leader == "" && r == "voter" {
			leader = id
		}
		ms = append(ms, fmt.Sprintf(`{"node-id":%q,"address":"10.0.0.%s:17666","role":%q}`, id, id, r))
	}
	return fmt.Sprintf(`{"controller-id":%q,"node-id":%q,"address":"10.0.0.%s:17666","role":%q,"member":true,"leader":{"node-id":%q,"address":"10.0.0.%s:17666"},"members":[%s],"state":"running","message":"member of a 3-node cluster","config-error":""}`,
		self, self, self, role, leader, leader, strings.Join(ms, ","))
}

func TestSingleUnit_DeployBootstrapsItself(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name

	m.mustRun(u, "install")
	// No cluster list before the relation exists; this unit's own API
	// addresses already (the api binding defaults to db-cluster's space).
	if got, want := string(fileBytes(t, u.confPath())), "db-bind-addresses: {}\napi-hosts:\n  - 10.0.0.1\napi-agent-hosts:\n  - 10.0.0.1\n"; got != want {
		t.Fatalf("install left controller.conf %q, want %q", got, want)
	}
	unitFile := string(fileBytes(t, u.unitFile()))
	for _, want := range []string{
		"Type=simple\n", "Restart=always\n", "RestartSec=1\n", "KillSignal=SIGTERM\n", "TimeoutStopSec=40\n",
		"ExecStart=/charm/controllerd run --controller-id 0 --port 17666 --api-port 17070\n",
	} {
		if !strings.Contains(unitFile, want) {
			t.Errorf("unit file lacks %q:\n%s", want, unitFile)
		}
	}
	if u.ranSystemctl("daemon-reload") != 1 || u.active {
		t.Fatalf("install: systemctl %v", u.systemctl)
	}
	if u.status != [2]string{"waiting", "waiting for the db-cluster peer relation"} {
		t.Fatalf("install status = %v", u.status)
	}

	u.inScope = true
	m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-created"})
	m.mustRun(u, "leader-elected")
	m.mustRun(u, "config-changed")
	u.workload = workloadJSON("0", "voter", "0:voter")
	m.mustRun(u, "start")

	if got := m.unitData[u.name]; got["db-bind-address"] != "10.0.0.1" || got["agent-id"] != "0" {
		t.Fatalf("unit data = %v", got)
	}
	if got := m.appData; got["db-bind-addresses"] != `{"0":"10.0.0.1"}` || got["bootstrap-agent-id"] != "0" {
		t.Fatalf("app data = %v", got)
	}
	want := "db-bind-addresses:\n  '0': 10.0.0.1\nbootstrap-agent-id: '0'\napi-hosts:\n  - 10.0.0.1\napi-agent-hosts:\n  - 10.0.0.1\n"
	if got := string(fileBytes(t, u.confPath())); got != want {
		t.Fatalf("controller.conf = %q, want %q", got, want)
	}
	if !u.active || !u.enabled {
		t.Fatalf("service not enabled and started: %v", u.systemctl)
	}
	if u.status != [2]string{"active", "voter, leader; 1 member (1 voter: no redundancy)"} {
		t.Fatalf("status = %v", u.status)
	}
	if u.version != "0.1.0-test" {
		t.Fatalf("version = %q", u.version)
	}
}

func TestThreeUnits_LeaderAggregatesEveryUnit(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "fd00::3")
	m.leader = u1.name
	m.settleScope(u0, u1, u2)
	m.unitData[u0.name] = map[string]string{"db-bind-address": "10.0.0.1", "agent-id": "0", "ingress-address": "10.0.0.1"}
	m.published(u2)

	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u2.name})

	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1","1":"10.0.0.2","2":"fd00::3"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	if got := m.appData["bootstrap-agent-id"]; got != "1" {
		t.Fatalf("bootstrap-agent-id = %q, want the leader's own id", got)
	}
	// The non-leaders write the same file from the application data.
	for _, u := range []*unit{u0, u2} {
		m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-changed"})
		c := u.readConf(t)
		if len(c.DBBindAddresses) != 3 || c.DBBindAddresses["2"] != "fd00::3" || c.BootstrapAgentID != "1" {
			t.Fatalf("%s controller.conf = %+v", u.name, c)
		}
	}
	if u0.appSets != 0 || u2.appSets != 0 {
		t.Fatal("a non-leader tried to write application data")
	}
}

func TestTwoAddresses_BlockedAndNotPublished(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "")
	u.setAddresses("10.0.0.1", "192.168.7.1")
	m.leader = u.name
	deploy(m, u)

	if u.status != [2]string{"blocked", "multiple possible DB bind addresses; set a suitable db-cluster network binding"} {
		t.Fatalf("status = %v", u.status)
	}
	// Only the cluster CA's secret (and its rotate policy) is named (it
	// needs no address).
	if len(m.unitData[u.name]) != 0 || len(m.appData) != 2 || m.appData[charm.KeyCASecretID] == "" || m.appData[charm.KeyCARotatePolicy] != charm.CARotatePolicy {
		t.Fatalf("published %v / %v", m.unitData[u.name], m.appData)
	}
	if !u.logged("10.0.0.1, 192.168.7.1") {
		t.Fatalf("log does not name the addresses: %q", u.logs)
	}
}

func TestZeroAddresses_BlockedNamingTheFix(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "")
	m.leader = u.name
	deploy(m, u) // every hook succeeds

	if u.status != [2]string{"blocked", "no DB bind address in the db-cluster binding's space; bind db-cluster to a space with one address per machine"} {
		t.Fatalf("status = %v", u.status)
	}
	// Only unusable addresses is the same.
	u.network = `{"ingress-addresses":["127.0.0.1","fe80::1","252.1.2.3"]}`
	m.mustRun(u, "update-status")
	if u.status[0] != "blocked" || !strings.HasPrefix(u.status[1], "no DB bind address") {
		t.Fatalf("status = %v", u.status)
	}
}

func TestUnknownBinding_BlockedNotCrashed(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.netErr = `ERROR no network config found for binding "db-cluster"`
	deploy(m, u)
	if u.status != [2]string{"blocked", `cannot get the db-cluster binding's addresses (no network config found for binding "db-cluster"); check juju bind`} {
		t.Fatalf("status = %v", u.status)
	}
}

func TestJuju36IngressList_PicksTheLocalCloudAddress(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "")
	m.leader = u.name
	// 3.6 lists every address of the space, most public first, and the
	// machine has them all.
	u.setAddresses("54.237.63.211", "2001:db8::5", "172.31.5.4", "fd00::5")
	deploy(m, u)
	if got := m.unitData[u.name]["db-bind-address"]; got != "172.31.5.4" {
		t.Fatalf("db-bind-address = %q", got)
	}
}

func TestIPv6BindAddress_PublishedUnbracketed(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "fd00:1::10")
	m.leader = u.name
	deploy(m, u)
	if got := m.appData["db-bind-addresses"]; got != `{"0":"fd00:1::10"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	if c := u.readConf(t); c.DBBindAddresses["0"] != "fd00:1::10" {
		t.Fatalf("controller.conf = %+v", c)
	}
}

func TestAddressNotOnThisMachine_BlockedAndNotPublished(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.local = u.local[:2] // only loopback
	deploy(m, u)
	if u.status != [2]string{"blocked", "DB bind address 10.0.0.1 (db-cluster binding) is not configured on this machine; bind db-cluster to a space this machine has an address in"} {
		t.Fatalf("status = %v", u.status)
	}
	if len(m.unitData[u.name]) != 0 {
		t.Fatalf("published %v", m.unitData[u.name])
	}
}

func TestBind_HealsBlockedUnitOnConfigChanged(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "")
	u.setAddresses("10.0.0.1", "10.1.0.1")
	m.leader = u.name
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)
	if u.status[0] != "blocked" {
		t.Fatalf("status = %v", u.status)
	}
	// juju bind db-cluster=<space>: only config-changed fires.
	u.setAddresses("10.1.0.1")
	m.mustRun(u, "config-changed")
	// The leader's write comes back to it as an application
	// relation-changed; controller.conf follows committed data only.
	m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-changed"})
	if got := m.unitData[u.name]["db-bind-address"]; got != "10.1.0.1" {
		t.Fatalf("db-bind-address = %q", got)
	}
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.1.0.1"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	if u.status[0] != "active" {
		t.Fatalf("status = %v", u.status)
	}
}

func TestBlockedAfterPublishing_KeepsTheLastGoodAddress(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	deploy(m, u)
	u.setAddresses("10.0.0.1", "10.9.9.9")
	m.mustRun(u, "config-changed")
	if u.status[0] != "blocked" {
		t.Fatalf("status = %v", u.status)
	}
	if got := m.unitData[u.name]["db-bind-address"]; got != "10.0.0.1" {
		t.Fatalf("db-bind-address = %q", got)
	}
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
}

func TestDeparted_RemoteUnitDroppedByLeader(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "10.0.0.3")
	m.leader = u0.name
	m.settleScope(u0, u1, u2)
	m.published(u1, u2)
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u2.name})
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1","1":"10.0.0.2","2":"10.0.0.3"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}

	// remove-unit 2: Juju drops it from relation-list before departed.
	u0.members = []string{u1.name}
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u2.name, departing: u2.name})
	if c := u0.readConf(t); len(c.DBBindAddresses) != 3 {
		t.Fatalf("controller.conf changed before the leader's write committed: %+v", c)
	}
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed"})
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1","1":"10.0.0.2"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	if got := m.appData["bootstrap-agent-id"]; got != "0" {
		t.Fatalf("bootstrap-agent-id = %q", got)
	}
	if c := u0.readConf(t); len(c.DBBindAddresses) != 2 {
		t.Fatalf("controller.conf = %+v", c)
	}
}

// The leader drops the departing unit even while relation-list still shows it.
func TestDeparted_LeaderExcludesDepartingUnit(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.published(u1)
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u1.name, departing: u1.name})
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
}

func TestDeparted_SelfLeavesRelationDataAndFileAlone(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "10.0.0.3")
	m.leader = u1.name
	m.settleScope(u0, u1, u2)
	m.published(u0, u2)
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u2.name})
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed"})
	before, sets := fileBytes(t, u0.confPath()), u0.relationSets

	// remove-unit 0 (a non-leader): it sees each peer depart with itself as
	// the departing unit, while the leader already dropped it.
	u1.members = []string{u2.name}
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u0.name, departing: u0.name})
	u0.members = []string{u2.name}
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u1.name, departing: u0.name})
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed"}) // app data changed
	u0.members = nil
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u2.name, departing: u0.name})
	m.mustRun(u0, "update-status")

	if u0.relationSets != sets || u0.appSets != 0 {
		t.Fatalf("departing unit wrote relation data (%d unit, %d app sets)", u0.relationSets-sets, u0.appSets)
	}
	if got := fileBytes(t, u0.confPath()); string(got) != string(before) {
		t.Fatalf("departing unit rewrote controller.conf:\n%s\nwas:\n%s", got, before)
	}
	if u0.status != [2]string{"maintenance", "leaving the DB cluster; this unit is being removed"} {
		t.Fatalf("status = %v", u0.status)
	}

	u0.active = true
	m.mustRun(u0, "stop")
	if u0.active || u0.enabled || u0.ranSystemctl("stop controllerd.service") != 1 || u0.ranSystemctl("disable controllerd.service") != 1 {
		t.Fatalf("stop: systemctl %v", u0.systemctl)
	}
	dataDir := filepath.Join(u0.jujuDir(), "dqlite")
	if err := os.MkdirAll(filepath.Join(dataDir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	m.mustRun(u0, "remove")
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("remove left the data dir: %v", err)
	}
	if _, err := os.Stat(u0.unitFile()); !os.IsNotExist(err) {
		t.Fatalf("remove left the unit file: %v", err)
	}
}

func TestDepartingLeader_DoesNotStripAppData(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "10.0.0.3")
	m.leader = u0.name
	m.settleScope(u0, u1, u2)
	m.published(u1, u2)
	m.seedCA()
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u1.name})
	full := m.appData["db-bind-addresses"]
	sets := u0.appSets

	// The leader is being removed; it departs from each peer in turn and
	// may run other hooks in between, still holding leadership.
	u0.members = []string{u2.name}
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u1.name, departing: u0.name})
	m.mustRun(u0, "update-status")
	m.mustRun(u0, "leader-elected")
	u0.members = nil
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u2.name, departing: u0.name})
	m.mustRun(u0, "stop")

	if got := m.appData["db-bind-addresses"]; got != full {
		t.Fatalf("departing leader rewrote db-bind-addresses: %s, was %s", got, full)
	}
	if u0.appSets != sets {
		t.Fatalf("departing leader set application data %d times after it started leaving", u0.appSets-sets)
	}
}

// A new leader re-aggregates the list and keeps the bootstrap id the first
// leader chose.
func TestLeaderChange_KeepsBootstrapID(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "10.0.0.3")
	m.settleScope(u1, u2)
	m.published(u0, u1, u2)
	// The old leader (unit 0) recorded itself as bootstrap node before
	// seeing unit 2, and was then removed; unit 1 saw it depart as a
	// non-leader, and became leader when unit 0's lease expired.
	m.appData = map[string]string{"db-bind-addresses": `{"0":"10.0.0.1","1":"10.0.0.2"}`, "bootstrap-agent-id": "0"}
	m.leader = u0.name
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: u0.name, departing: u0.name})
	if m.appData["db-bind-addresses"] != `{"0":"10.0.0.1","1":"10.0.0.2"}` {
		t.Fatal("a non-leader changed the application data")
	}
	m.leader = u1.name

	res := m.mustRun(u1, "leader-elected")
	if !res.appChanged {
		t.Fatal("the new leader did not re-aggregate on leader-elected")
	}
	if got := m.appData["db-bind-addresses"]; got != `{"1":"10.0.0.2","2":"10.0.0.3"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	if got := m.appData["bootstrap-agent-id"]; got != "0" {
		t.Fatalf("bootstrap-agent-id = %q, want it kept at 0", got)
	}
	if c := u1.readConf(t); c.BootstrapAgentID != "0" || len(c.DBBindAddresses) != 2 {
		t.Fatalf("controller.conf = %+v", c)
	}
}

// A new leader keeps the listed units it has not seen join yet.
func TestLeaderChange_KeepsUnseenUnits(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "10.0.0.3")
	m.settleScope(u0, u1, u2)
	u2.members = []string{u1.name} // has not run joined for unit 0 yet
	m.published(u0, u1)
	m.appData = map[string]string{"db-bind-addresses": `{"0":"10.0.0.1","1":"10.0.0.2"}`, "bootstrap-agent-id": "0"}
	m.leader = u2.name // unit 0's agent died for a while

	m.mustRun(u2, "leader-elected")
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1","1":"10.0.0.2","2":"10.0.0.3"}` {
		t.Fatalf("db-bind-addresses = %s; a live member was dropped", got)
	}
	if !u2.logged("keeping agent 0") {
		t.Fatalf("logs = %q", u2.logs)
	}
}

// A leader that has no address of its own chooses the lowest listed peer as
// the bootstrap node.
func TestLeaderWithoutAddress_LowestPeerBootstraps(t *testing.T) {
	m := newModel(t)
	u0, u1, u2 := m.addUnit(0, ""), m.addUnit(1, "10.0.0.2"), m.addUnit(2, "10.0.0.3")
	m.leader = u0.name
	m.settleScope(u0, u1, u2)
	m.published(u2, u1)
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u2.name})
	if got := m.appData["bootstrap-agent-id"]; got != "1" {
		t.Fatalf("bootstrap-agent-id = %q, want 1", got)
	}
	if u0.status[0] != "blocked" {
		t.Fatalf("status = %v", u0.status)
	}
	// Once the leader gets an address, the bootstrap id stays.
	u0.setAddresses("10.0.0.1")
	m.mustRun(u0, "config-changed")
	if got := m.appData["bootstrap-agent-id"]; got != "1" {
		t.Fatalf("bootstrap-agent-id = %q, want it kept at 1", got)
	}
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1","1":"10.0.0.2","2":"10.0.0.3"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
}

// Malformed or hostile peer data is ignored, with a log line naming the unit.
func TestHostilePeerData_Ignored(t *testing.T) {
	m := newModel(t)
	u0 := m.addUnit(0, "10.0.0.1")
	others := []*unit{u0}
	bags := map[int]map[string]string{
		1: {"db-bind-address": "10.0.0.2", "agent-id": "../../etc"},
		2: {"db-bind-address": "10.0.0.3;reboot", "agent-id": "2"},
		3: {"db-bind-address": "10.0.0.4", "agent-id": "7"},   // not its unit number
		4: {"db-bind-address": "[fd00::4]", "agent-id": "4"},  // bracketed
		5: {"db-bind-address": "10.0.0.1", "agent-id": "5"},   // the leader's address
		6: {"db-bind-address": "10.0.0.6"},                    // not published fully yet
		7: {"db-bind-address": "10.0.0.7", "agent-id": "7"},   // fine
		8: {"db-bind-address": "10.0.0.8\n", "agent-id": "8"}, // trailing newline
		9: {"db-bind-address": "10.0.0.9", "agent-id": "-1"},  // negative
	}
	for n := 1; n <= 9; n++ {
		u := m.addUnit(n, fmt.Sprintf("10.0.0.%d", n))
		m.unitData[u.name] = bags[n]
		others = append(others, u)
	}
	m.leader = u0.name
	m.settleScope(others...)

	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: unitName(1)})

	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1","7":"10.0.0.7"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	for _, n := range []int{1, 2, 3, 4, 5, 8, 9} {
		name := unitName(n)
		if n == 5 {
			name = "agent 5"
		}
		if !u0.logged("ignoring db-cluster data of " + name) {
			t.Errorf("no log line names %s: %q", name, u0.logs)
		}
	}
	if u0.logged("ignoring db-cluster data of " + unitName(6)) {
		t.Error("a unit that has not published yet was reported as malformed")
	}
	if _, err := os.Stat(filepath.Join(u0.jujuDir(), "etc")); !os.IsNotExist(err) {
		t.Fatal("hostile agent id reached the file system")
	}
}

func TestHostileAppData_ConfigKeepsOnlyValidEntries(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.published(u1)
	m.appData = map[string]string{
		"db-bind-addresses":  `{"0":"10.0.0.1","1":"10.0.0.2","../x":"10.0.0.3","3":"; rm -rf /"}`,
		"bootstrap-agent-id": "0",
	}
	// A non-leader must not trust application data blindly either.
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed"})
	if c := u1.readConf(t); len(c.DBBindAddresses) != 2 || c.BootstrapAgentID != "0" {
		t.Fatalf("controller.conf = %+v", c)
	}
	// Not JSON at all: the last good file stays.
	before := fileBytes(t, u1.confPath())
	m.appData["db-bind-addresses"] = "not json"
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed"})
	if got := fileBytes(t, u1.confPath()); string(got) != string(before) {
		t.Fatalf("controller.conf changed to %q", got)
	}
	// The leader repairs it.
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed"})
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1","1":"10.0.0.2"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
}

func TestUnchangedContent_NotRewrittenNorReset(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.published(u1)
	u0.workload = workloadJSON("0", "voter", "0:voter", "1:voter")
	deploy(m, u0)
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u1.name})

	inode := func(path string) uint64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	confIno, unitIno := inode(u0.confPath()), inode(u0.unitFile())
	sets, appSets, systemctl := u0.relationSets, u0.appSets, len(u0.systemctl)

	for _, h := range []string{"config-changed", "update-status", "leader-elected", "db-cluster-relation-changed"} {
		res := m.mustRunEnv(u0, hookEnv{hook: h})
		if res.unitChanged || res.appChanged {
			t.Fatalf("%s changed relation data", h)
		}
	}
	if u0.relationSets != sets || u0.appSets != appSets {
		t.Fatalf("relation-set ran again: unit %d->%d, app %d->%d", sets, u0.relationSets, appSets, u0.appSets)
	}
	if inode(u0.confPath()) != confIno || inode(u0.unitFile()) != unitIno {
		t.Fatal("an unchanged file was rewritten")
	}
	for _, c := range u0.systemctl[systemctl:] {
		if c != "is-active controllerd.service" {
			t.Fatalf("unexpected systemctl %q", c)
		}
	}
	if u0.status != [2]string{"active", "voter, leader; 2 members (2 voters: no redundancy)"} {
		t.Fatalf("status = %v", u0.status)
	}
}

func TestPortChange_RerendersAndRestarts(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	deploy(m, u)
	restarts := u.ranSystemctl("restart controllerd.service")

	m.config["db-port"] = 18000
	m.mustRun(u, "config-changed")
	if !strings.Contains(string(fileBytes(t, u.unitFile())), "--controller-id 0 --port 18000 --api-port 17070\n") {
		t.Fatalf("unit file not re-rendered:\n%s", fileBytes(t, u.unitFile()))
	}
	if u.ranSystemctl("daemon-reload") != 2 || u.ranSystemctl("restart controllerd.service") != restarts+1 {
		t.Fatalf("systemctl %v", u.systemctl)
	}
}

func TestPortChangeBeforeStart_DoesNotStartEarly(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	m.mustRun(u, "install")
	m.config["db-port"] = 18000
	m.mustRun(u, "config-changed")
	if u.active || u.ranSystemctl("daemon-reload") != 2 {
		t.Fatalf("systemctl %v", u.systemctl)
	}
	m.mustRun(u, "start")
	if !u.active || !strings.Contains(string(fileBytes(t, u.unitFile())), "--port 18000 --api-port 17070\n") {
		t.Fatalf("systemctl %v", u.systemctl)
	}
}

func TestInvalidPort_BlockedAndUnitFileKept(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	deploy(m, u)
	before := fileBytes(t, u.unitFile())
	for _, bad := range []any{0, 70000, "x17666"} {
		m.config["db-port"] = bad
		m.mustRun(u, "config-changed")
		if u.status[0] != "blocked" || !strings.HasPrefix(u.status[1], "invalid db-port") {
			t.Fatalf("db-port %v: status = %v", bad, u.status)
		}
		if string(fileBytes(t, u.unitFile())) != string(before) {
			t.Fatal("unit file changed")
		}
	}
}

func TestInvalidPortAtInstall_ServiceStartsOnceFixed(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	m.config["db-port"] = -1
	deploy(m, u)
	if u.active || u.status[0] != "blocked" {
		t.Fatalf("active = %v, status = %v", u.active, u.status)
	}
	m.config["db-port"] = 17666
	m.mustRun(u, "config-changed")
	if !u.active || !u.enabled {
		t.Fatalf("service not started after the fix: %v", u.systemctl)
	}
}

func TestUpgradeCharm_RestartsTheRunningDaemon(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	deploy(m, u)
	n := u.ranSystemctl("restart controllerd.service")
	m.mustRun(u, "upgrade-charm")
	if u.ranSystemctl("restart controllerd.service") != n+1 {
		t.Fatalf("systemctl %v", u.systemctl)
	}
}

func TestWorkloadStatus_Messages(t *testing.T) {
	cases := []struct {
		name, workload string
		want           [2]string
	}{
		{"leader of three", workloadJSON("0", "voter", "0:voter", "1:voter", "2:voter"), [2]string{"active", "voter, leader; 3 members"}},
		{"spare of two", workloadJSON("1", "spare", "0:voter", "1:spare"), [2]string{"active", "spare; 2 members (1 voter: no redundancy)"}},
		{"stand-by of five", workloadJSON("4", "stand-by", "0:voter", "1:voter", "2:voter", "3:stand-by", "4:stand-by"), [2]string{"active", "stand-by; 5 members"}},
		{"joining", `{"controller-id":"1","node-id":"","role":"","member":false,"leader":null,"members":[],"state":"waiting","message":"waiting for a peer to join","config-error":""}`,
			[2]string{"waiting", "controllerd: waiting for a peer to join"}},
		{"bad config", `{"controller-id":"1","member":false,"state":"waiting","config-error":"controller 3: address \"x\" is not an IP literal"}`,
			[2]string{"blocked", `controllerd rejects controller.conf: controller 3: address "x" is not an IP literal`}},
		{"refused", `{"controller-id":"0","member":false,"state":"refused","message":"IPv6 bind address needs TLS, which this build does not configure"}`,
			[2]string{"blocked", "controllerd: IPv6 bind address needs TLS, which this build does not configure"}},
		{"member without quorum", `{"controller-id":"0","node-id":"1","role":"voter","member":true,"leader":null,"members":[{"node-id":"1","role":"voter"}],"state":"no-quorum","message":"no leader reachable for 5s"}`,
			[2]string{"waiting", "controllerd: no leader reachable for 5s"}},
		{"not answering", "", [2]string{"waiting", "workload not answering: Error: cannot reach controllerd: dial unix control.socket: connect: no such file or directory"}},
		{"garbage", "not json", [2]string{"waiting", "workload not answering: cannot parse controllerd status: invalid character 'o' in literal null (expecting 'u')"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := statusAfterDeploy(t, tc.workload)
			if u.status != tc.want {
				t.Fatalf("status = %v, want %v", u.status, tc.want)
			}
		})
	}
}

func TestConfigChange_StatusWaitsForTheDaemonToJoin(t *testing.T) {
	m := newModel(t)
	m.settle = 10 * time.Second
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.appData = map[string]string{"db-bind-addresses": `{"0":"10.0.0.1"}`, "bootstrap-agent-id": "0"}
	m.seedCA()
	u1.workload = `{"controller-id":"1","member":false,"state":"waiting","message":"address for this Dqlite node to bind to not found in config"}`
	m.mustRun(u1, "install")
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-created"})
	m.mustRun(u1, "start")
	if u1.status[0] != "waiting" {
		t.Fatalf("status = %v", u1.status)
	}
	// The leader lists unit 1; its daemon joins a moment after the file
	// changes, and the hook reports that rather than the stale state.
	m.appData["db-bind-addresses"] = `{"0":"10.0.0.1","1":"10.0.0.2"}`
	u1.workloadLater, u1.workloadLaterAfter = workloadJSON("1", "spare", "0:voter", "1:spare"), 2
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed"})
	if u1.status != [2]string{"active", "spare; 2 members (1 voter: no redundancy)"} {
		t.Fatalf("status = %v", u1.status)
	}
}

// A daemon that does not answer while the hook waits for it to settle (a
// stalled or restarting controllerd) is asked again, not dereferenced: the
// hook panicked here when the simulator paused controllerd during juju bind.
func TestConfigChange_SettleWaitSurvivesADaemonNotAnswering(t *testing.T) {
	m := newModel(t)
	m.settle = 10 * time.Second
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.appData = map[string]string{"db-bind-addresses": `{"0":"10.0.0.1"}`, "bootstrap-agent-id": "0"}
	m.seedCA()
	u1.workload = `{"controller-id":"1","member":false,"state":"waiting","message":"address for this Dqlite node to bind to not found in config"}`
	m.mustRun(u1, "install")
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-created"})
	m.mustRun(u1, "start")
	m.appData["db-bind-addresses"] = `{"0":"10.0.0.1","1":"10.0.0.2"}`
	u1.workload = ""
	u1.workloadLater, u1.workloadLaterAfter = workloadJSON("1", "spare", "0:voter", "1:spare"), 2
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-changed"})
	if u1.status != [2]string{"active", "spare; 2 members (1 voter: no redundancy)"} {
		t.Fatalf("status = %v", u1.status)
	}
}

func TestConfigChange_NoSettleWaitForARefusingDaemon(t *testing.T) {
	m := newModel(t)
	m.settle = 3 * time.Second
	u, u1 := m.addUnit(0, "fd00::1"), m.addUnit(1, "fd00::2")
	m.leader = u.name
	u.workload = `{"controller-id":"0","member":false,"state":"refused","message":"IPv6 bind address needs TLS, which this build does not configure"}`
	deploy(m, u)
	// A peer arrives: the file changes after start.
	m.settleScope(u, u1)
	m.published(u1)
	m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u1.name})
	// The leader's write comes back as an application relation-changed,
	// which changes controller.conf.
	before := len(u.calls)
	m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-changed"})
	if c := u.readConf(t); len(c.DBBindAddresses) != 2 {
		t.Fatalf("controller.conf = %+v", c)
	}
	polls := 0
	for _, c := range u.calls[before:] {
		if strings.HasPrefix(c, charmDir+"/controllerd status") {
			polls++
		}
	}
	if polls != 1 {
		t.Fatalf("asked controllerd for its status %d times; a refusing daemon will not join by waiting", polls)
	}
	if u.status[0] != "blocked" {
		t.Fatalf("status = %v", u.status)
	}
}

func TestStoppedDaemon_WaitingWithAHint(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	deploy(m, u)
	u.active = false
	m.mustRun(u, "update-status")
	if u.status != [2]string{"waiting", "controllerd is inactive; see journalctl -u controllerd"} {
		t.Fatalf("status = %v", u.status)
	}
}

func TestNonLeader_WaitsUntilTheLeaderListsIt(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.appData = map[string]string{"db-bind-addresses": `{"0":"10.0.0.1"}`, "bootstrap-agent-id": "0"}
	m.seedCA()
	u1.workload = workloadJSON("1", "spare", "0:voter", "1:spare")
	m.mustRun(u1, "install")
	m.mustRunEnv(u1, hookEnv{hook: "db-cluster-relation-created"})
	m.mustRun(u1, "config-changed")
	m.mustRun(u1, "start")
	if u1.status != [2]string{"waiting", "waiting for the leader to add this unit's DB bind address to the cluster list"} {
		t.Fatalf("status = %v", u1.status)
	}
	// Its file comes from the application data, not from its own view.
	if c := u1.readConf(t); len(c.DBBindAddresses) != 1 || c.DBBindAddresses["0"] != "10.0.0.1" || c.BootstrapAgentID != "0" {
		t.Fatalf("controller.conf = %+v", c)
	}
}

func TestEnvFromGetenv(t *testing.T) {
	vars := map[string]string{
		"JUJU_DISPATCH_PATH":  "hooks/db-cluster-relation-departed",
		"JUJU_UNIT_NAME":      "dqlite-controller/3",
		"JUJU_CHARM_DIR":      "/var/lib/juju/agents/unit-dqlite-controller-3/charm",
		"JUJU_RELATION":       "db-cluster",
		"JUJU_RELATION_ID":    "db-cluster:4",
		"JUJU_REMOTE_UNIT":    "dqlite-controller/1",
		"JUJU_REMOTE_APP":     "dqlite-controller",
		"JUJU_DEPARTING_UNIT": "dqlite-controller/3",
	}
	env, err := charm.EnvFromGetenv(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	want := charm.Env{
		Hook: "db-cluster-relation-departed", UnitName: "dqlite-controller/3",
		CharmDir:     "/var/lib/juju/agents/unit-dqlite-controller-3/charm",
		RelationName: "db-cluster", RelationID: "db-cluster:4", RemoteUnit: "dqlite-controller/1",
		RemoteApp: "dqlite-controller", DepartingUnit: "dqlite-controller/3",
	}
	if env != want {
		t.Fatalf("env = %+v", env)
	}
	if env.AppName() != "dqlite-controller" {
		t.Fatalf("app = %q", env.AppName())
	}
	vars["JUJU_DISPATCH_PATH"] = "actions/cluster-status"
	if env, err := charm.EnvFromGetenv(func(k string) string { return vars[k] }); err != nil || env.Action != "cluster-status" || env.Hook != "" {
		t.Fatalf("action env = %+v, err = %v", env, err)
	}
	for _, bad := range []string{"jobs/x", "actions/a/b", "actions/", "hooks"} {
		vars["JUJU_DISPATCH_PATH"] = bad
		if _, err := charm.EnvFromGetenv(func(k string) string { return vars[k] }); err == nil {
			t.Fatalf("JUJU_DISPATCH_PATH %q was accepted", bad)
		}
	}
	delete(vars, "JUJU_DISPATCH_PATH")
	vars["JUJU_HOOK_NAME"] = "update-status"
	if env, err := charm.EnvFromGetenv(func(k string) string { return vars[k] }); err != nil || env.Hook != "update-status" {
		t.Fatalf("env = %+v, err = %v", env, err)
	}
}

func TestBadUnitName_HookFails(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	u.name = "dqlite-controller/../../x"
	if _, err := m.run(u, hookEnv{hook: "install"}); err == nil {
		t.Fatal("accepted a unit name without a unit number")
	}
}

// A leader that loses its lease during the hook in which it chooses the
// bootstrap node: Juju refuses the hook's application data at commit, so
// its controller.conf must not name a bootstrap node from that write either
// (else its daemon bootstraps while the next leader chooses again: two
// clusters). Caught by the simulator's commit-time leadership check.
func TestLeaderLosingLeaseMidHook_NoUncommittedBootstrapInControllerConf(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.mustRun(u0, "install")
	u0.inScope = true
	m.loseLeadershipAfterAppSet = func(m *model, _ *unit) { m.leader = u1.name }
	if _, err := m.run(u0, hookEnv{hook: "db-cluster-relation-created"}); err == nil {
		t.Fatal("the hook's application data was committed after the unit lost leadership")
	}
	if m.appData["bootstrap-agent-id"] != "" {
		t.Fatalf("bootstrap-agent-id committed: %q", m.appData["bootstrap-agent-id"])
	}
	if c := u0.readConf(t); c.BootstrapAgentID != "" || len(c.DBBindAddresses) != 0 {
		t.Fatalf("controller.conf = %+v; want nothing from the refused write", c)
	}
}

// The unit opens api-port (and only it) so that a cloud's firewall lets
// agents outside the model reach controllerd's API; a new api-port closes
// the old one in the same hook.
func TestAPIPort_OpenedAndMovedWithConfig(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)
	if !slices.Equal(u.ports, []string{"17070/tcp"}) {
		t.Fatalf("opened ports after deploy = %v, want [17070/tcp]", u.ports)
	}
	m.config["api-port"] = 17071
	m.mustRun(u, "config-changed")
	if !slices.Equal(u.ports, []string{"17071/tcp"}) {
		t.Fatalf("opened ports after api-port=17071 = %v, want [17071/tcp]", u.ports)
	}
	// An invalid api-port leaves the last good one open (the unit is
	// blocked and the last good unit file stays).
	m.config["api-port"] = "x"
	m.mustRun(u, "config-changed")
	if !slices.Equal(u.ports, []string{"17071/tcp"}) {
		t.Fatalf("opened ports after an invalid api-port = %v, want [17071/tcp]", u.ports)
	}
}
