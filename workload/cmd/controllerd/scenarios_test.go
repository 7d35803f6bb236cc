package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/control"
)

const bootstrapNodeID = "3297041220608546238"

func TestBootstrap_SingleNodeServesSQL(t *testing.T) {
	c := newCluster(t)
	c.writeConfig(c.config("0"), "0")
	c.start("0")
	st := c.waitState("0", "running")
	if st.NodeID != bootstrapNodeID || st.Role != "voter" || !st.Member || st.Leader == nil || st.Leader.NodeID != bootstrapNodeID {
		t.Fatalf("bootstrap node status = %+v", st)
	}
	if st.Address != c.node("0").host+":17666" {
		t.Fatalf("address = %q", st.Address)
	}
	c.mustSQL("0", "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
	c.mustSQL("0", "INSERT INTO kv VALUES ('a', '1') ON CONFLICT DO NOTHING")
	res := c.mustSQL("0", "SELECT controller_id, dqlite_node_id, dqlite_bind_address FROM controller_node")
	if len(res.Rows) != 1 || res.Rows[0][0] != "0" || res.Rows[0][1] != bootstrapNodeID || res.Rows[0][2] != st.Address {
		t.Fatalf("controller_node = %+v", res.Rows)
	}
	fi, err := os.Stat(control.SocketPath(c.node("0").data))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode = %v, %v", fi.Mode(), err)
	}
	if err := c.stop("0"); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	// A restart starts from the data dir and keeps the rows.
	c.start("0")
	c.waitState("0", "running")
	if n, err := c.count("0", "kv"); err != nil || n != 1 {
		t.Fatalf("rows after restart = %d, %v", n, err)
	}
}

func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func TestCLI_StatusAndSQLOutputShapes(t *testing.T) {
	c := newCluster(t)
	data := c.node("0").data

	// No daemon: a clear message and a non-zero exit.
	_, stderr, err := runCLI(t, "status", "--data-dir", data, "--format=json")
	if err == nil || !strings.Contains(stderr, "controllerd is not running") {
		t.Fatalf("status without daemon: err=%v stderr=%q", err, stderr)
	}

	c.writeConfig(c.config("0"), "0")
	c.start("0")
	c.waitState("0", "running")

	out, _, err := runCLI(t, "status", "--data-dir", data, "--format=json")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	for _, key := range []string{"controller-id", "node-id", "address", "role", "member", "leader", "members", "state", "message", "config-error"} {
		if _, ok := raw[key]; !ok {
			t.Errorf("status JSON lacks %q", key)
		}
	}
	if _, ok := raw["node-id"].(string); !ok {
		t.Errorf("node-id is not a string: %#v", raw["node-id"])
	}
	leader, _ := raw["leader"].(map[string]any)
	if _, ok := leader["node-id"].(string); !ok {
		t.Errorf("leader.node-id is not a string: %#v", raw["leader"])
	}
	members, _ := raw["members"].([]any)
	if len(members) != 1 {
		t.Fatalf("members = %#v", raw["members"])
	}
	m := members[0].(map[string]any)
	if m["role"] != "voter" || m["node-id"] != bootstrapNodeID {
		t.Errorf("member = %#v", m)
	}

	out, _, err = runCLI(t, "status", "--data-dir", data, "--format=yaml")
	var y map[string]any
	if err != nil || yaml.Unmarshal([]byte(out), &y) != nil || y["state"] != "running" || y["node-id"] != bootstrapNodeID {
		t.Fatalf("status YAML: %v\n%s", err, out)
	}
	out, _, err = runCLI(t, "status", "--data-dir", data)
	if err != nil || !strings.Contains(out, "State:") || !strings.Contains(out, "running") || !strings.Contains(out, "NODE") || !strings.Contains(out, "leader") {
		t.Fatalf("status table: %v\n%s", err, out)
	}

	out, _, err = runCLI(t, "sql", "--data-dir", data, "--format=json", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
	if err != nil || !strings.HasPrefix(strings.TrimSpace(out), `{"rows-affected":`) {
		t.Fatalf("sql create: %v %q", err, out)
	}
	out, _, err = runCLI(t, "sql", "--data-dir", data, "--format=json", "INSERT INTO t (id, name) VALUES (1, 'a'), (2, NULL)")
	if err != nil || strings.TrimSpace(out) != `{"rows-affected":2}` {
		t.Fatalf("sql insert: %v %q", err, out)
	}
	out, _, err = runCLI(t, "sql", "--data-dir", data, "--format=json", "SELECT id, name FROM t ORDER BY id")
	if err != nil || strings.TrimSpace(out) != `{"columns":["id","name"],"rows":[[1,"a"],[2,null]]}` {
		t.Fatalf("sql select: %v %q", err, out)
	}
	out, _, err = runCLI(t, "sql", "--data-dir", data, "--format=json", "SELECT id FROM t WHERE id > 5")
	if err != nil || strings.TrimSpace(out) != `{"columns":["id"],"rows":[]}` {
		t.Fatalf("sql empty select: %v %q", err, out)
	}
	out, _, err = runCLI(t, "sql", "--data-dir", data, "SELECT id, name FROM t ORDER BY id")
	if err != nil || !strings.Contains(out, "ID") || !strings.Contains(out, "NULL") {
		t.Fatalf("sql table: %v %q", err, out)
	}
	_, stderr, err = runCLI(t, "sql", "--data-dir", data, "SELECT * FROM nosuchtable")
	if err == nil || !strings.Contains(stderr, "no such table") {
		t.Fatalf("sql error: err=%v stderr=%q", err, stderr)
	}
	out, _, err = runCLI(t, "version")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("version: %v %q", err, out)
	}
}

func TestNewNode_NonBootstrapNeverBootstraps(t *testing.T) {
	c := newCluster(t)
	// Controller 1 is listed alone: not the bootstrap agent, no peer.
	c.writeConfig(c.config("1"), "1")
	c.start("1")
	st := c.waitState("1", "waiting")
	if st.NodeID != "" || st.Member {
		t.Fatalf("waiting node status = %+v", st)
	}
	// Without a bootstrap-agent-id at all it does not bootstrap either.
	cfg := c.config("1")
	cfg.BootstrapAgentID = ""
	c.writeConfig(cfg, "1")
	time.Sleep(time.Second)
	if st := c.mustStatus("1"); st.State != "waiting" {
		t.Fatalf("state = %s: %s", st.State, st.Message)
	}
	// Listing a peer that does not run yet: it joins (and waits), never
	// bootstraps.
	c.writeConfig(c.config("0", "1"), "1")
	st = c.waitState("1", "joining")
	if st.NodeID == bootstrapNodeID || st.NodeID == "" {
		t.Fatalf("joining node id = %q", st.NodeID)
	}
	time.Sleep(2 * time.Second)
	if st := c.mustStatus("1"); st.Member || st.State != "joining" {
		t.Fatalf("joining node without a cluster: %+v", st)
	}
	// Once the bootstrap agent runs, it joins that one cluster.
	c.writeConfig(c.config("0", "1"), "0")
	c.start("0")
	c.waitRoles("0", 2, 1, 1)
	c.waitState("1", "running")
	if st := c.mustStatus("1"); st.Leader == nil || st.Leader.NodeID != bootstrapNodeID {
		t.Fatalf("joined node's leader = %+v", st.Leader)
	}
}

func TestGrow_ThreeVoters(t *testing.T) {
	c := newCluster(t)
	c.form(2)
	st := c.mustStatus("0")
	if !strings.Contains(st.Message, "1 voter") {
		t.Fatalf("2-node status does not say it has 1 voter: %q", st.Message)
	}
	c.writeConfig(c.config(ids(3)...), ids(3)...)
	c.start("2")
	c.waitRoles("0", 3, 3, 0)
	for _, id := range ids(3) {
		// Each node learns its own role at its next pass.
		c.waitFor("controller "+id+" to run as a voter", func() (bool, string) {
			s, err := c.status(id)
			if err != nil {
				return false, err.Error()
			}
			return s.State == "running" && s.Role == "voter", s.State + " " + s.Role
		})
	}
}

func TestGrow_FiveWithTwoStandBys(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	all := ids(5)
	c.writeConfig(c.config(all...), all...)
	c.start("3")
	c.start("4")
	c.waitRoles("0", 5, 3, 2)
	roles := map[string]int{}
	for _, id := range all {
		roles[c.waitState(id, "running").Role]++
	}
	if roles["voter"] != 3 || roles["stand-by"] != 2 {
		t.Fatalf("roles = %v", roles)
	}
}

func TestReplication_WriteOnOneReadOnAnother(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("1", "CREATE TABLE IF NOT EXISTS r (id INTEGER PRIMARY KEY, v TEXT)")
	for i := 0; i < 20; i++ {
		c.mustSQL(fmt.Sprint(i%3), fmt.Sprintf("INSERT INTO r VALUES (%d, 'x') ON CONFLICT DO NOTHING", i))
	}
	for _, id := range ids(3) {
		if n, err := c.count(id, "r"); err != nil || n != 20 {
			t.Fatalf("controller %s reads %d rows, %v", id, n, err)
		}
	}
	res := c.mustSQL("2", "SELECT count(*) FROM controller_node")
	if res.Rows[0][0] != float64(3) {
		t.Fatalf("controller_node rows = %v", res.Rows)
	}
}

func TestShrink_RemovesDepartedMemberWithQuorum(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE s (id INTEGER PRIMARY KEY)")
	// remove-unit of controller 2: everybody's config drops it.
	c.writeConfig(c.config("0", "1"), "0", "1", "2")
	c.waitFor("controller 2 removed", func() (bool, string) {
		st, err := c.status("0")
		if err != nil {
			return false, err.Error()
		}
		for _, m := range st.Members {
			if strings.HasPrefix(m.Address, c.node("2").host+":") {
				return false, fmt.Sprintf("%d members", len(st.Members))
			}
		}
		return len(st.Members) == 2, fmt.Sprintf("%d members", len(st.Members))
	})
	st := c.waitState("2", "removed")
	if st.Member {
		t.Fatalf("removed node says it is a member: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(c.node("2").data, "node", "info.yaml")); !os.IsNotExist(err) {
		t.Fatalf("removed node's data dir was not wiped: %v", err)
	}
	c.mustSQL("1", "INSERT INTO s VALUES (1)")
	if n, err := c.count("0", "s"); err != nil || n != 1 {
		t.Fatalf("rows = %d, %v", n, err)
	}
	res := c.mustSQL("0", "SELECT controller_id FROM controller_node ORDER BY controller_id")
	if len(res.Rows) != 2 {
		t.Fatalf("controller_node after removal = %v", res.Rows)
	}
}

func TestFailover_LeaderKill9KeepsWriting(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE f (id INTEGER PRIMARY KEY)")
	for i := 0; i < 10; i++ {
		c.mustSQL("0", fmt.Sprintf("INSERT INTO f VALUES (%d) ON CONFLICT DO NOTHING", i))
	}
	leader := c.leaderID("0")
	c.kill(leader)
	var survivor string
	for _, id := range ids(3) {
		if id != leader {
			survivor = id
		}
	}
	for i := 10; i < 20; i++ {
		c.writeUntilOK(survivor, fmt.Sprintf("INSERT INTO f VALUES (%d) ON CONFLICT DO NOTHING", i))
	}
	if n, err := c.count(survivor, "f"); err != nil || n != 20 {
		t.Fatalf("rows after failover = %d, %v", n, err)
	}
	c.waitFor("another controller to lead", func() (bool, string) {
		st, err := c.status(survivor)
		if err != nil || st.Leader == nil {
			return false, fmt.Sprint(err)
		}
		return !strings.HasPrefix(st.Leader.Address, c.node(leader).host+":"), st.Leader.Address
	})
	// The killed node comes back on its data dir and catches up.
	c.start(leader)
	c.waitState(leader, "running")
	c.waitFor("the restarted node to see every row", func() (bool, string) {
		n, err := c.count(leader, "f")
		return err == nil && n == 20, fmt.Sprint(n, err)
	})
}

func TestScaleDown_ToOneReconfiguresSurvivor(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE d (id INTEGER PRIMARY KEY)")
	for i := 0; i < 50; i++ {
		c.mustSQL(fmt.Sprint(i%3), fmt.Sprintf("INSERT INTO d VALUES (%d) ON CONFLICT DO NOTHING", i))
	}
	c.kill("1")
	c.kill("2")
	killed := time.Now()
	// The charm now lists only the survivor.
	c.writeConfig(c.config("0"), "0")
	c.waitFor("the survivor to be the sole voter", func() (bool, string) {
		st, err := c.status("0")
		if err != nil {
			return false, err.Error()
		}
		return st.State == "running" && len(st.Members) == 1 && st.Role == "voter",
			fmt.Sprintf("%s: %s (%d members)", st.State, st.Message, len(st.Members))
	})
	if n, err := c.count("0", "d"); err != nil || n != 50 {
		t.Fatalf("committed rows after reconfiguration = %d, %v", n, err)
	}
	c.mustSQL("0", "INSERT INTO d VALUES (50)")
	at, ok := c.node("0").lineAfter(time.Time{}, "reconfiguring this node as the sole voter")
	if !ok {
		t.Fatalf("no reconfiguration decision logged")
	}
	t.Logf("forced reconfiguration decided %s after the other two voters were killed", at.Sub(killed).Round(100*time.Millisecond))
	// cluster.yaml was fixed (go-dqlite#311) so a restart finds itself alone.
	if err := c.stop("0"); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(c.node("0").data, "node", "cluster.yaml"))
	if err != nil || strings.Count(string(data), "Address:") != 1 {
		t.Fatalf("cluster.yaml after reconfiguration: %v\n%s", err, data)
	}
	c.start("0")
	c.waitState("0", "running")
	if n, err := c.count("0", "d"); err != nil || n != 51 {
		t.Fatalf("rows after restart = %d, %v", n, err)
	}
}

func TestRemovedNode_RestartOnOldDataNeverResurrects(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE o (id INTEGER PRIMARY KEY)")
	c.mustSQL("0", "INSERT INTO o VALUES (1)")
	old := c.mustStatus("2").NodeID
	c.kill("2")
	// While 2 is down, it is removed (its unit left).
	c.writeConfig(c.config("0", "1"), "0", "1")
	c.waitRoles("0", 2, 1, 1)
	c.mustSQL("0", "INSERT INTO o VALUES (2)")
	// It comes back on its old data, its own config still listing only
	// the others: it must find out it was removed and wipe, not serve.
	c.writeConfig(c.config("0", "1"), "2")
	c.start("2")
	st := c.waitState("2", "removed")
	if st.Member {
		t.Fatalf("removed node is a member: %+v", st)
	}
	if _, err := c.sql("2", "SELECT count(*) FROM o"); err == nil {
		t.Fatalf("a removed node served SQL")
	}
	if _, err := os.Stat(filepath.Join(c.node("2").data, "node", "info.yaml")); !os.IsNotExist(err) {
		t.Fatalf("removed node's node dir not wiped: %v", err)
	}
	if st := c.mustStatus("0"); len(st.Members) != 2 {
		t.Fatalf("members after the removed node came back: %+v", st.Members)
	}
	// Listed again (say the operator re-added it), it joins as a new node.
	c.writeConfig(c.config(ids(3)...), ids(3)...)
	st = c.waitState("2", "running")
	if st.NodeID == old || st.NodeID == "" {
		t.Fatalf("rejoined node id %q (old %q)", st.NodeID, old)
	}
	c.waitRoles("0", 3, 3, 0)
	if n, err := c.count("2", "o"); err != nil || n != 2 {
		t.Fatalf("rows seen by the rejoined node = %d, %v", n, err)
	}
}

func TestConfig_MalformedKeepsLastGood(t *testing.T) {
	c := newCluster(t)
	c.writeConfig(c.config("0"), "0")
	c.start("0")
	c.waitState("0", "running")
	if err := controllerconf.WriteFileAtomic(c.node("0").conf, []byte("db-bind-addresses: [oops\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.waitFor("config-error in status", func() (bool, string) {
		st, err := c.status("0")
		return err == nil && st.ConfigError != "", fmt.Sprint(st.ConfigError, err)
	})
	st := c.mustStatus("0")
	if st.State != "running" || !st.Member {
		t.Fatalf("malformed config disturbed the node: %+v", st)
	}
	// An invalid address is an error too, not an instruction.
	if err := os.WriteFile(c.node("0").conf, []byte("db-bind-addresses:\n  '0': not-an-ip\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.waitFor("config-error naming the bad address", func() (bool, string) {
		st, err := c.status("0")
		return err == nil && strings.Contains(st.ConfigError, "not-an-ip"), fmt.Sprint(st.ConfigError, err)
	})
	c.mustSQL("0", "CREATE TABLE m (id INTEGER)")
	c.writeConfig(c.config("0"), "0")
	c.waitFor("config-error cleared", func() (bool, string) {
		st, err := c.status("0")
		return err == nil && st.ConfigError == "", fmt.Sprint(st.ConfigError, err)
	})
	// A deleted directory and file are recreated/tolerated.
	if err := os.RemoveAll(filepath.Dir(c.node("1").conf)); err != nil {
		t.Fatal(err)
	}
	c.start("1")
	c.waitState("1", "waiting")
	if _, err := os.Stat(filepath.Dir(c.node("1").conf)); err != nil {
		t.Fatalf("config dir not created: %v", err)
	}
}

func TestConfig_ConcurrentRewritesConverge(t *testing.T) {
	c := newCluster(t)
	c.writeConfig(c.config("0"), "0")
	c.start("0")
	c.waitState("0", "running")
	c.start("1")
	c.waitState("1", "waiting")
	// Several writers rewrite controller 1's config at once, atomically and
	// in place, with contents that would not let it join; the last write
	// lists the peer.
	path := c.node("1").conf
	variants := [][]byte{}
	for _, cfg := range []*controllerconf.Config{c.config("1"), c.config("2", "3"), {DBBindAddresses: map[string]string{}}} {
		data, err := controllerconf.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		variants = append(variants, data)
	}
	variants = append(variants, []byte("db-bind-addresses: {'1': 127.0.0.1, bad"))
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				data := variants[(w+i)%len(variants)]
				if w%2 == 0 {
					controllerconf.WriteFileAtomic(path, data, 0o600)
				} else {
					os.WriteFile(path, data, 0o600)
				}
			}
		}()
	}
	wg.Wait()
	if st := c.mustStatus("1"); st.Member || st.NodeID != "" {
		t.Fatalf("node acted on a config that does not let it join: %+v", st)
	}
	c.writeConfig(c.config("0", "1"), "0", "1")
	c.waitState("1", "running")
	c.waitRoles("0", 2, 1, 1)
	if st := c.mustStatus("1"); st.ConfigError != "" {
		t.Fatalf("config error after the final good write: %q", st.ConfigError)
	}
}

func TestShutdown_SIGTERMHandsOver(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE h (id INTEGER PRIMARY KEY)")
	leader := c.leaderID("0")
	start := time.Now()
	if err := c.stop(leader); err != nil {
		t.Fatalf("exit after SIGTERM = %v, want 0", err)
	}
	if _, ok := c.node(leader).lineAfter(start, "handed over"); !ok {
		t.Fatalf("no hand-over logged:\n%s", c.node(leader).logs())
	}
	var other string
	for _, id := range ids(3) {
		if id != leader {
			other = id
		}
	}
	c.waitFor("another controller to lead", func() (bool, string) {
		st, err := c.status(other)
		if err != nil || st.Leader == nil {
			return false, fmt.Sprint(err)
		}
		return !strings.HasPrefix(st.Leader.Address, c.node(leader).host+":"), st.Leader.Address
	})
	c.writeUntilOK(other, "INSERT INTO h VALUES (1) ON CONFLICT DO NOTHING")
}

func TestAddressChange_SingleNodeRebinds(t *testing.T) {
	c := newCluster(t)
	c.writeConfig(c.config("0"), "0")
	c.start("0")
	st := c.waitState("0", "running")
	c.mustSQL("0", "CREATE TABLE a (id INTEGER)")
	c.mustSQL("0", "INSERT INTO a VALUES (1)")
	// juju bind to another space: the config gives controller 0 a new host.
	cfg := c.config("0")
	newHost := c.prefix + "200"
	cfg.DBBindAddresses["0"] = newHost
	c.writeConfig(cfg, "0")
	c.waitFor("the node to serve on its new address", func() (bool, string) {
		s, err := c.status("0")
		if err != nil {
			return false, err.Error()
		}
		return s.State == "running" && s.Address == newHost+":17666" && len(s.Members) == 1 && s.Members[0].Address == s.Address,
			fmt.Sprintf("%s %s: %s", s.State, s.Address, s.Message)
	})
	if s := c.mustStatus("0"); s.NodeID != st.NodeID {
		t.Fatalf("node id changed from %s to %s", st.NodeID, s.NodeID)
	}
	if n, err := c.count("0", "a"); err != nil || n != 1 {
		t.Fatalf("rows after rebind = %d, %v", n, err)
	}
}

// IPv6 works because the Dqlite port runs over TLS (app.WithTLS: Go owns
// the sockets; libdqlite 1.11.1 alone parses IPv4 only).
func TestIPv6_BootstrapsAndServesOverTLS(t *testing.T) {
	c := newCluster(t)
	c.node("0").host = "::1"
	c.provision(c.node("0"))
	cfg := &controllerconf.Config{DBBindAddresses: map[string]string{"0": "::1"}, BootstrapAgentID: "0"}
	c.writeConfig(cfg, "0")
	c.start("0")
	st := c.waitState("0", "running")
	if st.Address != "[::1]:"+strconv.Itoa(dqlitePort) {
		t.Fatalf("address = %q", st.Address)
	}
	c.writeUntilOK("0", "CREATE TABLE v6 (id INTEGER PRIMARY KEY)")
	c.mustSQL("0", "INSERT INTO v6 (id) VALUES (6)")
	if n, err := c.count("0", "v6"); err != nil || n != 1 {
		t.Fatalf("rows = %d, %v", n, err)
	}
}

func TestShrink_DepartingLeaderHandsOverAndIsRemoved(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE l (id INTEGER PRIMARY KEY)")
	leader := c.leaderID("0")
	var keep []string
	for _, id := range ids(3) {
		if id != leader {
			keep = append(keep, id)
		}
	}
	// The leader's unit leaves: every config, its own included, drops it.
	c.writeConfig(c.config(keep...), ids(3)...)
	st := c.waitState(leader, "removed")
	if st.Member {
		t.Fatalf("departed leader still a member: %+v", st)
	}
	if _, ok := c.node(leader).lineAfter(time.Time{}, "action=leave"); !ok {
		t.Fatalf("the departing leader did not decide to leave")
	}
	c.waitRoles(keep[0], 2, 1, 1)
	c.writeUntilOK(keep[1], "INSERT INTO l VALUES (1) ON CONFLICT DO NOTHING")
}

func TestAddressChange_ThreeNodesMoveOneAtATime(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE mv (id INTEGER PRIMARY KEY)")
	for i := 0; i < 30; i++ {
		c.mustSQL(fmt.Sprint(i%3), fmt.Sprintf("INSERT INTO mv VALUES (%d) ON CONFLICT DO NOTHING", i))
	}
	// juju bind to another space: every controller gets a new address.
	cfg := c.config(ids(3)...)
	for _, id := range ids(3) {
		cfg.DBBindAddresses[id] = c.prefix + fmt.Sprint(101+mustAtoi(id))
	}
	c.writeConfig(cfg, ids(3)...)
	for _, id := range ids(3) {
		want := cfg.DBBindAddresses[id] + ":17666"
		c.waitFor("controller "+id+" to serve at "+want, func() (bool, string) {
			st, err := c.status(id)
			if err != nil {
				return false, err.Error()
			}
			return st.State == "running" && st.Address == want, fmt.Sprintf("%s %s: %s", st.State, st.Address, st.Message)
		})
	}
	st := c.waitRoles("0", 3, 3, 0)
	for _, m := range st.Members {
		if !strings.HasSuffix(m.Address, ":17666") || !strings.HasPrefix(m.Address, c.prefix+"10") {
			t.Fatalf("member still at an old address: %+v", st.Members)
		}
	}
	for _, id := range ids(3) {
		if n, err := c.count(id, "mv"); err != nil || n != 30 {
			t.Fatalf("controller %s reads %d rows after the move, %v", id, n, err)
		}
	}
}

func TestScaleDown_DeadNodesReturningOnOldDataAreWiped(t *testing.T) {
	c := survivorOfKilledPair(t)
	// The dead machines come back with their old data dirs (and the charm
	// no longer lists them). Together they hold a majority of the old
	// configuration; started blindly they could elect a leader and roll
	// the survivor back (docs/dqlite-behaviour.md "Removing members and losing quorum"). They must wipe instead.
	c.writeConfig(c.config("0"), "1", "2")
	c.start("1")
	c.start("2")
	for _, id := range []string{"1", "2"} {
		st := c.waitState(id, "removed")
		if st.Member {
			t.Fatalf("controller %s came back as a member: %+v", id, st)
		}
	}
	time.Sleep(2 * time.Second)
	st := c.mustStatus("0")
	if st.State != "running" || len(st.Members) != 1 {
		t.Fatalf("survivor after the old nodes came back: %+v", st)
	}
	if n, err := c.count("0", "z"); err != nil || n != 2 {
		t.Fatalf("rows after the old nodes came back = %d, %v (a rollback?)", n, err)
	}
}

// survivorOfKilledPair forms 3 nodes with row 1 in table z, kills nodes 1
// and 2 (kill -9), lists node 0 alone, waits until it is the sole voter and
// writes row 2 through it: the start of the scenarios where the dead pair
// comes back on its old data.
func survivorOfKilledPair(t *testing.T) *cluster {
	t.Helper()
	c := newCluster(t)
	c.form(3)
	c.mustSQL("0", "CREATE TABLE z (id INTEGER PRIMARY KEY)")
	c.mustSQL("0", "INSERT INTO z VALUES (1)")
	c.kill("1")
	c.kill("2")
	c.writeConfig(c.config("0"), "0")
	c.waitFor("the survivor to be the sole voter", func() (bool, string) {
		st, err := c.status("0")
		if err != nil {
			return false, err.Error()
		}
		return st.State == "running" && len(st.Members) == 1, fmt.Sprintf("%s: %s", st.State, st.Message)
	})
	c.mustSQL("0", "INSERT INTO z VALUES (2)")
	return c
}
