package charm_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/charm"
	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/controllerconf"
)

// This file is a small Juju model for state-in/state-out tests: it answers
// the hook tools the charm runs (with the output shapes of the fixtures in
// hooktools/testdata), plus systemctl and controllerd, and commits relation
// data only when a hook succeeds, and application data only if the unit is
// still the leader then, as Juju does (docs/juju.md "Relation data").

const (
	appName  = "dqlite-controller"
	relID    = "db-cluster:0"
	charmDir = "/charm"
)

type model struct {
	t        *testing.T
	leader   string
	config   map[string]any
	unitData map[string]map[string]string
	appData  map[string]string
	units    map[string]*unit
	// settle is charm.Config.SettleTimeout; by default no wait, since the
	// fake workload does not change by itself.
	settle time.Duration
	// loseLeadershipOnIsLeader, when set, is called on every is-leader; it
	// may move leadership while the hook runs.
	loseLeadershipOnIsLeader func(m *model, u *unit)
	// loseLeadershipAfterAppSet, when set, is called after every accepted
	// relation-set --app: the lease lapses after the write, before the
	// hook commits.
	loseLeadershipAfterAppSet func(m *model, u *unit)
	// secrets are the committed application-owned secrets by URI (one
	// revision each: the charm never updates one).
	secrets   map[string]map[string]string
	secretSeq int
	// secretRotate is each secret's rotate policy (secret-add or
	// secret-set --rotate), removedRevisions the revisions secret-remove
	// committed, by URI.
	secretRotate     map[string]string
	removedRevisions map[string][]int
	// onRestart, when set, is called on every systemctl restart.
	onRestart func(u *unit)
}

type unit struct {
	name    string
	addr    string // the address addUnit gave it
	root    string
	network string // network-get db-cluster JSON
	netErr  string // network-get db-cluster stderr, exit 1
	// apiNetwork is network-get api's JSON; "" means the api binding is in
	// db-cluster's space (both on the default space), so it answers as
	// network-get db-cluster does. apiNetErr makes it fail instead.
	apiNetwork string
	apiNetErr  string
	local      []netip.Addr
	localErr   error // netlink failing
	inScope    bool
	// members is what relation-list answers: the peers this unit has seen
	// join and not depart.
	members []string

	active, enabled bool
	systemctl       []string
	workload        string // controllerd status JSON; "" = not answering
	// workloadLater, when set, replaces workload after that many more
	// status calls: a daemon that joins a moment after the file changes.
	workloadLater      string
	workloadLaterAfter int
	status             [2]string
	statusHistory      [][2]string
	logs               []string
	version            string
	relationSets       int
	appSets            int
	calls              []string
	// ports are the unit's opened ports (open-port applies at once here;
	// the simulator models Juju's commit at hook exit).
	ports []string
}

func newModel(t *testing.T) *model {
	return &model{
		t:        t,
		config:   map[string]any{"db-port": 17666, "api-port": 17070},
		unitData: map[string]map[string]string{},
		appData:  map[string]string{},
		units:    map[string]*unit{},
		settle:   -1,
		secrets:  map[string]map[string]string{},

		secretRotate:     map[string]string{},
		removedRevisions: map[string][]int{},
	}
}

func unitName(n int) string { return fmt.Sprintf("%s/%d", appName, n) }

// addUnit adds unit n with one local-cloud address addr (which its machine
// has); the relation scope is entered by the test or the scheduler.
func (m *model) addUnit(n int, addr string) *unit {
	u := &unit{name: unitName(n), addr: addr, root: m.t.TempDir()}
	u.setAddresses(addr)
	m.units[u.name] = u
	m.unitData[u.name] = map[string]string{}
	return u
}

// setAddresses makes network-get db-cluster report addrs as ingress
// addresses (one device) and the machine have them (besides loopback).
func (u *unit) setAddresses(addrs ...string) {
	u.netErr = ""
	u.local = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	if len(addrs) == 0 || addrs[0] == "" {
		u.network = networkJSON()
		return
	}
	for _, a := range addrs {
		u.local = append(u.local, netip.MustParseAddr(a))
	}
	u.network = networkJSON(addrs...)
}

// addLocal gives the machine more addresses (other NICs) without changing
// what any binding reports.
func (u *unit) addLocal(addrs ...string) {
	for _, a := range addrs {
		u.local = append(u.local, netip.MustParseAddr(a))
	}
}

// bindAPI is `juju bind dqlite-controller api=<space>` as network-get api
// then reports it: addrs are the unit's addresses in that space (none: the
// machine has no address there).
func (u *unit) bindAPI(addrs ...string) {
	u.apiNetErr = ""
	u.apiNetwork = networkJSON(addrs...)
}

// networkJSON is network-get's JSON for a binding with addrs on one device.
func networkJSON(addrs ...string) string {
	if len(addrs) == 0 {
		return `{"bind-addresses":[{"mac-address":"00:16:3e:00:00:01","interface-name":"eth0","addresses":[]}]}`
	}
	var devAddrs []string
	for _, a := range addrs {
		devAddrs = append(devAddrs, fmt.Sprintf(`{"hostname":"","value":%q,"cidr":""}`, a))
	}
	ingress, _ := json.Marshal(addrs)
	return fmt.Sprintf(`{"bind-addresses":[{"mac-address":"00:16:3e:00:00:01","interface-name":"eth0","addresses":[%s]}],"egress-subnets":["%s/32"],"ingress-addresses":%s}`,
		strings.Join(devAddrs, ","), addrs[0], ingress)
}

func (u *unit) jujuDir() string    { return filepath.Join(u.root, "var/lib/juju") }
func (u *unit) systemdDir() string { return filepath.Join(u.root, "etc/systemd/system") }
func (u *unit) agentID() string    { return u.name[strings.Index(u.name, "/")+1:] }
func (u *unit) confPath() string {
	return filepath.Join(u.jujuDir(), "agents", "controller-"+u.agentID(), "controller.conf")
}
func (u *unit) unitFile() string { return filepath.Join(u.systemdDir(), "controllerd.service") }

func (u *unit) readConf(t *testing.T) *controllerconf.Config {
	t.Helper()
	c, err := controllerconf.Read(u.confPath())
	if err != nil {
		t.Fatalf("%s: %v", u.name, err)
	}
	return c
}

// hookEnv is the environment of one hook.
type hookEnv struct {
	hook           string
	remoteUnit     string
	departing      string
	secretID       string
	secretRevision int
}

func (m *model) env(u *unit, h hookEnv) charm.Env {
	e := charm.Env{Hook: h.hook, UnitName: u.name, CharmDir: charmDir, SecretID: h.secretID, SecretRevision: h.secretRevision}
	if strings.HasPrefix(h.hook, charm.Endpoint+"-relation-") {
		e.RelationName = charm.Endpoint
		e.RelationID = relID
		e.RemoteUnit = h.remoteUnit
		e.RemoteApp = appName
		e.DepartingUnit = h.departing
	}
	return e
}

// hookResult tells what a successful hook committed.
type hookResult struct {
	unitChanged, appChanged bool
}

// run runs one hook on u. Relation data the hook set is committed only if it
// returns nil and, for application data, u is still the leader.
func (m *model) run(u *unit, h hookEnv) (hookResult, error) {
	m.t.Helper()
	r := &hookRunner{m: m, u: u, env: h, unitPending: map[string]string{}, appPending: map[string]string{}, secretPending: map[string]map[string]string{},
		rotatePending: map[string]string{}, removePending: map[string][]int{}}
	cfg := charm.Config{
		JujuDir:        u.jujuDir(),
		SystemdDir:     u.systemdDir(),
		Runner:         r,
		LocalAddresses: fakeAddrs{u},
		SettleTimeout:  m.settle,
		RejoinTimeout:  -1,
	}
	cfg.Logger = slog.New(hooktools.NewLogHandler(hooktools.New(r), slog.LevelDebug, os.Stderr))
	err := charm.Reconcile(context.Background(), cfg, m.env(u, h))
	if err != nil {
		return hookResult{}, err
	}
	if len(r.appPending) > 0 && m.leader != u.name {
		return hookResult{}, fmt.Errorf("%s lost leadership before its hook committed", u.name)
	}
	var res hookResult
	res.unitChanged = apply(m.unitData[u.name], r.unitPending)
	res.appChanged = apply(m.appData, r.appPending)
	maps.Copy(m.secrets, r.secretPending)
	maps.Copy(m.secretRotate, r.rotatePending)
	for uri, revs := range r.removePending {
		m.removedRevisions[uri] = append(m.removedRevisions[uri], revs...)
	}
	return res, nil
}

// mustRun runs a hook that must succeed.
func (m *model) mustRun(u *unit, hook string) hookResult {
	m.t.Helper()
	res, err := m.run(u, hookEnv{hook: hook})
	if err != nil {
		m.t.Fatalf("%s %s: %v", u.name, hook, err)
	}
	return res
}

func (m *model) mustRunEnv(u *unit, h hookEnv) hookResult {
	m.t.Helper()
	res, err := m.run(u, h)
	if err != nil {
		m.t.Fatalf("%s %s: %v", u.name, h.hook, err)
	}
	return res
}

func apply(dst, pending map[string]string) bool {
	changed := false
	for k, v := range pending {
		if old, ok := dst[k]; v == "" && ok {
			delete(dst, k)
			changed = true
		} else if v != "" && old != v {
			dst[k] = v
			changed = true
		}
	}
	return changed
}

type fakeAddrs struct{ u *unit }

func (f fakeAddrs) Addresses() ([]netip.Addr, error) {
	if f.u.localErr != nil {
		return nil, f.u.localErr
	}
	return slices.Clone(f.u.local), nil
}

type hookRunner struct {
	m           *model
	u           *unit
	env         hookEnv
	unitPending map[string]string
	appPending  map[string]string
	// secretPending are the secrets this hook added: committed with the
	// relation data when it exits 0 (Juju: changes commit at hook end).
	secretPending map[string]map[string]string
	// rotatePending and removePending are its secret-set --rotate and
	// secret-remove --revision calls, committed likewise.
	rotatePending map[string]string
	removePending map[string][]int
}

// seedCA gives the model a committed cluster CA secret named in the
// application data, as a leader's earlier hook would have left it.
func (m *model) seedCA() {
	m.t.Helper()
	ca, err := clustertls.NewCA(time.Now())
	if err != nil {
		m.t.Fatal(err)
	}
	m.secretSeq++
	uri := fmt.Sprintf("secret:d4k3s5pkf9d0d6q0%04d", m.secretSeq)
	m.secrets[uri] = map[string]string{"ca-cert": string(ca.CertPEM), "ca-key": string(ca.KeyPEM)}
	m.secretRotate[uri] = charm.CARotatePolicy
	m.appData[charm.KeyCASecretID] = uri
	m.appData[charm.KeyCARotatePolicy] = charm.CARotatePolicy
}

// secretAdd is secret-add --owner application: leader only (Juju's
// ErrIsNotLeader), pending until the hook succeeds.
func (r *hookRunner) secretAdd(args []string) ([]byte, error) {
	if r.m.leader != r.u.name {
		return nil, exitErr("secret-add", 1, "ERROR this unit is not the leader", "")
	}
	data := map[string]string{}
	rotate := ""
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--rotate":
			i++
			rotate = args[i]
			continue
		case "--owner", "--label", "--description":
			i++
			continue
		}
		k, v, ok := strings.Cut(args[i], "=")
		if !ok {
			r.m.t.Errorf("unexpected secret-add argument %q", args[i])
		}
		data[k] = v
	}
	r.m.secretSeq++
	uri := fmt.Sprintf("secret:d4k3s5pkf9d0d6q0%04d", r.m.secretSeq)
	r.secretPending[uri] = data
	if rotate != "" {
		r.rotatePending[uri] = rotate
	}
	return []byte(uri + "\n"), nil
}

func exitErr(name string, code int, stderr string, stdout string) error {
	return &hooktools.ExitError{Name: name, Code: code, Stdout: []byte(stdout), Stderr: stderr,
		Err: fmt.Errorf("exit status %d", code)}
}

func jsonOut(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

func (r *hookRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	m, u := r.m, r.u
	u.calls = append(u.calls, strings.Join(append([]string{name}, args...), " "))
	switch name {
	case "network-get":
		if len(args) == 0 || args[len(args)-1] != "--format=json" {
			m.t.Errorf("unexpected network-get %q", args)
		}
		switch {
		case args[0] == charm.Endpoint:
			if u.netErr != "" {
				return nil, exitErr(name, 1, u.netErr, "")
			}
			return []byte(u.network + "\n"), nil
		case args[0] == charm.BindingAPI && len(args) == 2:
			// An extra binding: no relation, so no -r.
			if u.apiNetErr != "" {
				return nil, exitErr(name, 1, u.apiNetErr, "")
			}
			if u.apiNetwork == "" {
				return []byte(u.network + "\n"), nil
			}
			return []byte(u.apiNetwork + "\n"), nil
		}
		m.t.Errorf("unexpected network-get %q", args)
		return nil, exitErr(name, 1, fmt.Sprintf("ERROR no network config found for binding %q", args[0]), "")
	case "relation-ids":
		if len(args) > 0 && args[0] != "db-cluster" {
			return []byte("[]\n"), nil // the fake model has the peer relation only
		}
		if !u.inScope {
			return []byte("[]\n"), nil
		}
		return jsonOut([]string{relID}), nil
	case "relation-list":
		members := slices.Sorted(slices.Values(u.members))
		if members == nil {
			members = []string{} // Juju prints [] for no members
		}
		return jsonOut(members), nil
	case "relation-get":
		return r.relationGet(args)
	case "relation-set":
		return r.relationSet(args)
	case "is-leader":
		leader := m.leader == u.name
		if m.loseLeadershipOnIsLeader != nil {
			m.loseLeadershipOnIsLeader(m, u)
		}
		return jsonOut(leader), nil
	case "config-get":
		return jsonOut(m.config), nil
	case "secret-add":
		return r.secretAdd(args)
	case "secret-set":
		// Leader only for an application-owned secret; the new content
		// replaces the old one once the hook succeeds.
		if m.leader != u.name {
			return nil, exitErr(name, 1, "ERROR this unit is not the leader", "")
		}
		if len(args) == 0 || m.secrets[args[0]] == nil && r.secretPending[args[0]] == nil {
			return nil, exitErr(name, 1, "ERROR secret not found", "")
		}
		data := map[string]string{}
		for i := 1; i < len(args); i++ {
			if args[i] == "--rotate" && i+1 < len(args) {
				r.rotatePending[args[0]] = args[i+1]
				i++
				continue
			}
			k, v, _ := strings.Cut(args[i], "=")
			data[k] = v
		}
		if len(data) > 0 {
			r.secretPending[args[0]] = data
		}
		return nil, nil
	case "secret-remove":
		// Leader only for an application-owned secret; committed once
		// the hook succeeds.
		if m.leader != u.name {
			return nil, exitErr(name, 1, "ERROR this unit is not the leader", "")
		}
		if len(args) != 3 || args[1] != "--revision" || m.secrets[args[0]] == nil {
			return nil, exitErr(name, 2, fmt.Sprintf("ERROR unexpected secret-remove %q", args), "")
		}
		rev, err := strconv.Atoi(args[2])
		if err != nil || rev < 1 {
			return nil, exitErr(name, 2, fmt.Sprintf("ERROR invalid revision %q", args[2]), "")
		}
		r.removePending[args[0]] = append(r.removePending[args[0]], rev)
		return nil, nil
	case "secret-get":
		if len(args) == 0 {
			return nil, exitErr(name, 2, "ERROR require either a secret URI or label", "")
		}
		c, ok := r.secretPending[args[0]]
		if !ok {
			c, ok = m.secrets[args[0]]
		}
		if !ok {
			return nil, exitErr(name, 1, fmt.Sprintf("ERROR secret %q not found", strings.TrimPrefix(args[0], "secret:")), "")
		}
		return jsonOut(c), nil
	case "secret-ids":
		if m.leader != u.name {
			return []byte("[]\n"), nil
		}
		return jsonOut(slices.Sorted(maps.Keys(m.secrets))), nil
	case "status-set":
		if len(args) != 3 || args[1] != "--" {
			m.t.Errorf("unexpected status-set %q", args)
			return nil, exitErr(name, 2, "ERROR bad args", "")
		}
		u.status = [2]string{args[0], args[2]}
		u.statusHistory = append(u.statusHistory, u.status)
		return nil, nil
	case "application-version-set":
		u.version = args[len(args)-1]
		return nil, nil
	case "juju-log":
		u.logs = append(u.logs, strings.Join(args, " "))
		return nil, nil
	case "opened-ports":
		return jsonOut(append([]string{}, u.ports...)), nil
	case "open-port":
		if !slices.Contains(u.ports, args[0]) {
			u.ports = append(u.ports, args[0])
		}
		return nil, nil
	case "close-port":
		u.ports = slices.DeleteFunc(u.ports, func(p string) bool { return p == args[0] })
		return nil, nil
	case "systemctl":
		return r.systemctl(args)
	case charmDir + "/controllerd":
		switch args[0] {
		case "version":
			return []byte("0.1.0-test\n"), nil
		case "status":
			if u.workloadLater != "" {
				if u.workloadLaterAfter--; u.workloadLaterAfter < 0 {
					u.workload, u.workloadLater = u.workloadLater, ""
				}
			}
			if u.workload == "" {
				return nil, exitErr(name, 1, "Error: cannot reach controllerd: dial unix control.socket: connect: no such file or directory", "")
			}
			return []byte(u.workload + "\n"), nil
		case "raft-position":
			// The fake daemon has no Raft log (recovery.go publishes
			// nothing then).
			return nil, exitErr(name, 1, "Error: cannot reach controllerd", "")
		}
	}
	m.t.Errorf("unexpected command %s %q", name, args)
	return nil, exitErr(name, 127, "unknown command", "")
}

func (r *hookRunner) relationGet(args []string) ([]byte, error) {
	m, u := r.m, r.u
	if len(args) < 5 || args[0] != "-r" || args[1] != relID || !u.inScope {
		return nil, exitErr("relation-get", 2, fmt.Sprintf("ERROR invalid value %q for option -r: relation not found", args[1]), "")
	}
	owner := args[len(args)-1]
	if slices.Contains(args, "--app") {
		if owner != appName {
			return nil, exitErr("relation-get", 1, "ERROR permission denied", "")
		}
		bag := maps.Clone(m.appData)
		apply(bag, r.appPending)
		return jsonOut(bag), nil
	}
	data, ok := m.unitData[owner]
	if !ok {
		return nil, exitErr("relation-get", 1, "ERROR relation unit not found", "")
	}
	bag := maps.Clone(data)
	if owner == u.name {
		apply(bag, r.unitPending)
	}
	return jsonOut(bag), nil
}

func (r *hookRunner) relationSet(args []string) ([]byte, error) {
	m, u := r.m, r.u
	if len(args) < 3 || args[0] != "-r" || args[1] != relID {
		return nil, exitErr("relation-set", 2, "ERROR bad relation", "")
	}
	target := r.unitPending
	rest := args[2:]
	if rest[0] == "--app" {
		if m.leader != u.name {
			return nil, exitErr("relation-set", 1, "ERROR cannot write relation settings", "")
		}
		target = r.appPending
		rest = rest[1:]
		u.appSets++
	} else {
		u.relationSets++
	}
	for _, kv := range rest {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, exitErr("relation-set", 2, fmt.Sprintf("ERROR expected \"key=value\", got %q", kv), "")
		}
		target[k] = v
	}
	if m.loseLeadershipAfterAppSet != nil && args[2] == "--app" {
		m.loseLeadershipAfterAppSet(m, u)
	}
	return nil, nil
}

func (r *hookRunner) systemctl(args []string) ([]byte, error) {
	u := r.u
	u.systemctl = append(u.systemctl, strings.Join(args, " "))
	switch args[0] {
	case "daemon-reload":
	case "enable":
		u.enabled = true
	case "disable":
		u.enabled = false
	case "start", "restart":
		u.active = true
		if args[0] == "restart" && r.m.onRestart != nil {
			r.m.onRestart(u)
		}
	case "stop":
		u.active = false
	case "is-active":
		if u.active {
			return []byte("active\n"), nil
		}
		return nil, exitErr("systemctl", 3, "", "inactive\n")
	default:
		r.m.t.Errorf("unexpected systemctl %q", args)
	}
	return nil, nil
}

// published gives units the unit data they publish for the address
// addUnit gave them.
func (m *model) published(units ...*unit) {
	for _, u := range units {
		m.unitData[u.name] = map[string]string{"db-bind-address": u.addr, "agent-id": u.agentID()}
	}
}

// settleScope makes every unit in units a member of the relation, each
// seeing all the others, without running hooks (a settled model).
func (m *model) settleScope(units ...*unit) {
	for _, u := range units {
		u.inScope = true
		u.members = nil
		for _, o := range units {
			if o != u {
				u.members = append(u.members, o.name)
			}
		}
	}
}

// statusAfterDeploy deploys one leader unit whose controllerd answers
// `controllerd status --format=json` with workload, then runs update-status:
// the unit's status is then what the charm makes of that answer.
func statusAfterDeploy(t *testing.T, workload string) *unit {
	t.Helper()
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.workload = workload
	deploy(m, u)
	m.mustRun(u, "update-status")
	return u
}

func (u *unit) logged(substr string) bool {
	for _, l := range u.logs {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

func (u *unit) ranSystemctl(cmd string) int {
	n := 0
	for _, c := range u.systemctl {
		if c == cmd {
			n++
		}
	}
	return n
}

func mustJSON(t *testing.T, raw string) map[string]string {
	t.Helper()
	var m map[string]string
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatalf("cannot decode %q: %v", raw, err)
	}
	return m
}

func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
