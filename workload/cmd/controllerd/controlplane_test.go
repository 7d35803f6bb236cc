package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// monitorOverlap polls the running controllers' statuses and records any
// moment when more than one says it holds the singular-controller lease.
func (c *cluster) monitorOverlap() *monitor {
	return startMonitor(100*time.Millisecond, func() (string, bool) {
		held, _ := c.holders()
		return fmt.Sprintf("%s: %v", time.Now().Format(time.RFC3339Nano), held), len(held) > 1
	})
}

// waitOneHolder waits until exactly one running controller holds the lease
// and every running controller sees it as the holder; it returns its id.
func (c *cluster) waitOneHolder(not string) string {
	c.t.Helper()
	var holder string
	c.waitFor("exactly one lease holder, seen by all", func() (bool, string) {
		held, seen := c.holders()
		if len(held) != 1 || held[0] == not {
			return false, fmt.Sprintf("held by %v, seen %v", held, seen)
		}
		for _, h := range seen {
			if h != "controller-"+held[0] {
				return false, fmt.Sprintf("held by %v, seen %v", held, seen)
			}
		}
		holder = held[0]
		return true, ""
	})
	return holder
}

type backupRecord struct {
	name, controller, takenAt string
}

func (c *cluster) backupRecords(via string) ([]backupRecord, error) {
	res, err := c.sql(via, "SELECT name, controller_id, taken_at FROM controller_backup ORDER BY taken_at")
	if err != nil {
		return nil, err
	}
	var out []backupRecord
	for _, r := range res.Rows {
		out = append(out, backupRecord{fmt.Sprint(r[0]), fmt.Sprint(r[1]), fmt.Sprint(r[2])})
	}
	return out, nil
}

func countBy(recs []backupRecord, controller string) int {
	n := 0
	for _, r := range recs {
		if r.controller == controller {
			n++
		}
	}
	return n
}

func TestLease_OneHolderKill9FailoverBackupsNeverOverlap(t *testing.T) {
	const interval, keep = 2 * time.Second, 2
	c := newCluster(t)
	c.args = []string{"--backup-interval", interval.String(), "--backup-keep", fmt.Sprint(keep)}
	c.form(3)
	mon := c.monitorOverlap()
	first := c.waitOneHolder("")

	// The HTTP API reads the same lease from the database, on any node.
	for _, id := range ids(3) {
		var l struct {
			Holder  string `json:"holder"`
			Expired bool   `json:"expired"`
		}
		c.waitFor("GET /v1/lease on controller "+id, func() (bool, string) {
			_, err := c.apiGet(id, "/v1/lease", &l)
			return err == nil && l.Holder == "controller-"+first && !l.Expired, fmt.Sprint(l, err)
		})
	}

	// Backups: the holder takes them, keeping `keep` in its directory.
	c.waitFor("the first holder to take 3 backups", func() (bool, string) {
		recs, err := c.backupRecords(first)
		return err == nil && countBy(recs, first) >= 3, fmt.Sprint(len(recs), err)
	})
	names, err := backup.List(c.node(first).backups)
	if err != nil || len(names) == 0 || len(names) > keep {
		t.Fatalf("holder's backup dir has %v (%v), want 1..%d backups", names, err, keep)
	}
	files, err := os.ReadDir(filepath.Join(c.node(first).backups, names[len(names)-1]))
	if err != nil || len(files) == 0 {
		t.Fatalf("newest backup has no files: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(c.node(first).backups, names[len(names)-1], "controller")); err != nil || fi.Size() == 0 {
		t.Fatalf("newest backup has no database file: %v", err)
	}

	// kill -9 the holder: exactly one other controller takes over.
	c.kill(first)
	second := c.waitOneHolder(first)
	c.waitFor("the new holder to take 2 backups", func() (bool, string) {
		recs, err := c.backupRecords(second)
		return err == nil && countBy(recs, second) >= 2, fmt.Sprint(len(recs), err)
	})

	// The killed controller comes back; then SIGTERM the holder: it stops
	// its workers and revokes before handing over, and another takes over.
	c.start(first)
	c.waitState(first, "running")
	stopAt := time.Now()
	if err := c.stop(second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	third := c.waitOneHolder(second)
	stopped, ok1 := c.node(second).lineAfter(stopAt, `msg="singular worker stopped" reason="shutting down"`)
	handover, ok2 := c.node(second).lineAfter(stopAt, "shutting down Dqlite node: handing over")
	if !ok1 || !ok2 || handover.Before(stopped) {
		t.Fatalf("SIGTERM: singular stopped %v (%v), hand-over %v (%v): want the singular to stop first", ok1, stopped, ok2, handover)
	}
	if _, bad := c.node(second).lineAfter(stopAt, "cannot revoke"); bad {
		t.Fatalf("the holder did not revoke on SIGTERM")
	}
	c.waitFor("the third holder to take a backup", func() (bool, string) {
		recs, err := c.backupRecords(third)
		return err == nil && countBy(recs, third) >= 1, fmt.Sprint(len(recs), err)
	})
	if o := mon.finish(); len(o) > 0 {
		t.Fatalf("more than one controller held the lease at once: %v", o)
	}

	// No overlap of single-instance work: each backup was taken once, by
	// one controller, at least about an interval after the previous one
	// (two holders at once would both find a backup due together), and
	// every backup in a controller's directory is one it recorded.
	recs, err := c.backupRecords(third)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(recs); i++ {
		prev, _ := time.Parse("2006-01-02 15:04:05.000", recs[i-1].takenAt)
		cur, _ := time.Parse("2006-01-02 15:04:05.000", recs[i].takenAt)
		if cur.Sub(prev) < interval/2 {
			t.Fatalf("backups %s and %s were taken %v apart: overlapping single-instance work", recs[i-1].name, recs[i].name, cur.Sub(prev))
		}
	}
	recorded := map[string]bool{}
	for _, r := range recs {
		recorded[r.name] = true
	}
	for _, id := range ids(3) {
		names, err := backup.List(c.node(id).backups)
		if err != nil {
			t.Fatal(err)
		}
		if len(names) > keep {
			t.Fatalf("controller %s keeps %d backups, want at most %d", id, len(names), keep)
		}
		for _, n := range names {
			if !recorded[id+"/"+n] {
				t.Fatalf("backup %s in controller %s's directory was not recorded by it (records %v)", n, id, recs)
			}
		}
	}
	for _, id := range []string{first, second, third} {
		if countBy(recs, id) == 0 {
			t.Fatalf("controller %s never took a backup while holding the lease: %v", id, recs)
		}
	}
}

// agentProc is a `controllerd agent` process.
type agentProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	exited chan struct{}
}

func startAgent(t *testing.T, path string, controllers ...string) *agentProc {
	t.Helper()
	a := &agentProc{exited: make(chan struct{})}
	a.cmd = exec.Command(binary, "agent", "--config", path, "--controllers", strings.Join(controllers, ","))
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			a.mu.Lock()
			a.lines = append(a.lines, sc.Text())
			a.mu.Unlock()
		}
		io.Copy(io.Discard, stderr)
		a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(patience):
			a.cmd.Process.Kill()
			<-a.exited
		}
		if t.Failed() {
			t.Logf("=== agent log ===\n%s", a.logs())
		}
	})
	return a
}

func (a *agentProc) logs() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.lines, "\n")
}

func (a *agentProc) logged(s string) bool {
	return strings.Contains(a.logs(), s)
}

type clientOut struct {
	Controller string   `json:"controller"`
	Connected  string   `json:"connected"`
	TriedFirst string   `json:"tried-first"`
	LastGood   string   `json:"last-good"`
	Addresses  []string `json:"addresses"`
}

func runClient(t *testing.T, args ...string) clientOut {
	t.Helper()
	stdout, stderr, err := runCLI(t, append([]string{"client", "--format", "json"}, args...)...)
	if err != nil {
		t.Fatalf("controllerd client %v: %v: %s", args, err, stderr)
	}
	var out clientOut
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("cannot decode client output %q: %v", stdout, err)
	}
	return out
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}

func TestAPIAddresses_AgentAndClientFollowControllerChanges(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	all := []string{c.apiAddress("0"), c.apiAddress("1"), c.apiAddress("2")}
	sort.Strings(all)

	// Every controller serves the three controllers' addresses, and every
	// response carries the client list.
	for _, id := range ids(3) {
		var l apiwire.Lists
		c.waitFor("3 controllers' addresses on controller "+id, func() (bool, string) {
			_, err := c.apiGet(id, "/v1/api-addresses", &l)
			return err == nil && slices.Equal(sortedCopy(l.Clients), all) && slices.Equal(sortedCopy(l.Agents), all), fmt.Sprint(l, err)
		})
	}
	resp, err := c.apiGet("1", "/v1/health", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(resp.Header.Get("Dqc-Api-Addresses"), ","); !slices.Equal(sortedCopy(got), all) {
		t.Fatalf("health response's client list = %v, want %v", got, all)
	}

	// An agent machine starting from controller 0 learns all three.
	agentConf := filepath.Join(t.TempDir(), "agent.conf")
	if err := os.WriteFile(agentConf, []byte("tag: machine-7\ncacert: |\n  "+strings.ReplaceAll(strings.TrimSpace(string(c.ca.CertPEM)), "\n", "\n  ")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, agentConf, c.apiAddress("0"))
	waitAgentFile := func(want []string) {
		t.Helper()
		c.waitFor(fmt.Sprintf("the agent file to list %v", want), func() (bool, string) {
			got, err := apiagent.ReadAddresses(agentConf)
			return err == nil && slices.Equal(sortedCopy(got), want), fmt.Sprint(got, err)
		})
	}
	waitAgentFile(all)

	// A client that knows only controller 2 connects there and learns
	// the others; the next connection tries the last good one first.
	store := filepath.Join(t.TempDir(), "clients.json")
	out := runClient(t, "--store", store, "--controller", "ctl", "--ca-cert", c.caFile(), "--addresses", c.apiAddress("2"))
	if out.Connected != c.apiAddress("2") || out.LastGood != c.apiAddress("2") || !slices.Equal(sortedCopy(out.Addresses), all) {
		t.Fatalf("first client connection = %+v", out)
	}
	out = runClient(t, "--store", store, "--controller", "ctl")
	if out.TriedFirst != c.apiAddress("2") || out.Connected != c.apiAddress("2") {
		t.Fatalf("second client connection = %+v, want the last good address first", out)
	}

	// Controller 2 dies: the client fails over and puts the new one first.
	c.kill("2")
	out = runClient(t, "--store", store, "--controller", "ctl")
	if out.TriedFirst != c.apiAddress("2") || out.Connected == c.apiAddress("2") || out.LastGood != out.Connected {
		t.Fatalf("client connection after controller 2 died = %+v", out)
	}
	good := out.Connected
	out = runClient(t, "--store", store, "--controller", "ctl")
	if out.TriedFirst != good || out.Connected != good {
		t.Fatalf("client connection after fail-over = %+v, want %s first", out, good)
	}

	// remove-unit of controller 2: the leader removes its member and its
	// addresses; lists and the agent's file follow.
	c.writeConfig(c.config("0", "1"), "0", "1")
	want := []string{c.apiAddress("0"), c.apiAddress("1")}
	sort.Strings(want)
	for _, id := range []string{"0", "1"} {
		var l apiwire.Lists
		c.waitFor("2 controllers' addresses on controller "+id, func() (bool, string) {
			_, err := c.apiGet(id, "/v1/api-addresses", &l)
			return err == nil && slices.Equal(sortedCopy(l.Clients), want), fmt.Sprint(l, err)
		})
	}
	waitAgentFile(want)
	data, err := os.ReadFile(agentConf)
	if err != nil || !strings.Contains(string(data), "tag: machine-7") {
		t.Fatalf("the agent file lost its other keys: %q, %v", data, err)
	}

	// The controllers answer with an empty list: the agent keeps its list.
	c.mustSQL("0", "DELETE FROM controller_api_address")
	c.waitFor("the agent to receive the empty list", func() (bool, string) {
		return agent.logged("empty API address list received; keeping the existing entries"), ""
	})
	if got, err := apiagent.ReadAddresses(agentConf); err != nil || !slices.Equal(sortedCopy(got), want) {
		t.Fatalf("agent file after an empty answer = %v, %v; want %v kept", got, err, want)
	}
}

func TestAPIAddresses_ApiBindingFiltersAgentsWithPerControllerFallback(t *testing.T) {
	c := newCluster(t)
	d := c.node("0")
	port := fmt.Sprint(d.apiPort)
	cfg := c.config("0")
	// The unit has two addresses; only its db bind host is in the api
	// binding's space.
	cfg.APIHosts = []string{d.host, "10.77.0.5"}
	cfg.APIAgentHosts = []string{d.host}
	c.writeConfig(cfg, "0")
	c.start("0")
	c.waitState("0", "running")
	wantClients := []string{"10.77.0.5:" + port, d.host + ":" + port}
	var st control.Status
	c.waitFor("agents limited to the api space", func() (bool, string) {
		st = c.mustStatus("0")
		a := st.APIAddresses
		return a != nil && slices.Equal(a.Agents, []string{d.host + ":" + port}) &&
			slices.Equal(sortedCopy(a.Clients), wantClients) && len(a.AgentFallback) == 0, fmt.Sprintf("%+v", a)
	})
	if st.APINote != "" {
		t.Fatalf("api-note = %q, want none", st.APINote)
	}

	// No address in the api space: agents get all of them, and status says so.
	cfg.APIAgentHosts = nil
	c.writeConfig(cfg, "0")
	c.waitFor("the per-controller agent fallback", func() (bool, string) {
		st = c.mustStatus("0")
		a := st.APIAddresses
		return a != nil && slices.Equal(sortedCopy(a.Agents), wantClients) && slices.Equal(a.AgentFallback, []string{"0"}) &&
			strings.Contains(st.APINote, "agents get all of its addresses"), fmt.Sprintf("%+v %q", a, st.APINote)
	})
	stdout, _, err := runCLI(t, "status", "--data-dir", d.data)
	if err != nil || !strings.Contains(stdout, "Agent fallback:") || !strings.Contains(stdout, "Lease:") {
		t.Fatalf("status table = %s (%v)", stdout, err)
	}

	// An older charm writes no api-hosts: the db bind address is published.
	cfg.APIHosts = nil
	c.writeConfig(cfg, "0")
	c.waitFor("the db bind address as the only API address", func() (bool, string) {
		st = c.mustStatus("0")
		a := st.APIAddresses
		return a != nil && slices.Equal(a.Clients, []string{d.host + ":" + port}) && strings.Contains(st.APINote, "no api-hosts"),
			fmt.Sprintf("%+v %q", a, st.APINote)
	})
}

func TestLease_HolderCutOffFromQuorumStopsAndRemovedHolderHandsOver(t *testing.T) {
	c := newCluster(t)
	c.form(3)
	holder := c.waitOneHolder("")

	// Freeze the two others: the holder has no quorum, cannot extend and
	// must drop its flag (stop its single-instance work) by itself.
	var others []string
	for _, id := range ids(3) {
		if id != holder {
			others = append(others, id)
			c.node(id).cmd.Process.Signal(syscall.SIGSTOP)
		}
	}
	frozen := time.Now()
	c.waitFor("the cut-off holder to drop its flag", func() (bool, string) {
		st, err := c.status(holder)
		if err != nil {
			return false, err.Error()
		}
		return st.Lease == nil || !st.Lease.HeldByMe, fmt.Sprintf("%s %+v", st.State, st.Lease)
	})
	if _, ok := c.node(holder).lineAfter(frozen, "local deadline passed without a successful extension"); !ok {
		t.Fatalf("the cut-off holder did not say why it stopped")
	}
	for _, id := range others {
		c.node(id).cmd.Process.Signal(syscall.SIGCONT)
	}
	holder = c.waitOneHolder("")

	// remove-unit of the holder's controller: it stops its workers and
	// revokes while leaving; another controller takes over.
	var keep []string
	for _, id := range ids(3) {
		if id != holder {
			keep = append(keep, id)
		}
	}
	removedAt := time.Now()
	c.writeConfig(c.config(keep...), ids(3)...)
	c.waitFor("a remaining controller to hold the lease", func() (bool, string) {
		held, seen := c.holders()
		return len(held) == 1 && held[0] != holder, fmt.Sprintf("held by %v, seen %v", held, seen)
	})
	// It stops its workers: at once when it sees its config first (and
	// revokes); when the leader removes it before that, it finds itself
	// locked out (the others refuse its certificate), stops them without
	// waiting and, unable to reach the database, leaves the lease to
	// expire.
	if _, ok := c.node(holder).lineAfter(removedAt, `msg="singular worker stop`); !ok {
		t.Fatalf("the removed holder's singular worker did not stop")
	}
	c.waitState(holder, "removed")
	if st := c.mustStatus(holder); st.Lease != nil {
		t.Fatalf("a removed node reports a lease: %+v", st.Lease)
	}
}
