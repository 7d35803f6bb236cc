package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
	"github.com/juju/dqlite-controller/clustertls"
	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// binary is the controllerd built by TestMain; every scenario runs it as
// real processes.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "controllerd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "controllerd")
	args := []string{"build", "-tags", "libsqlite3", "-o", binary}
	if os.Getenv("DQC_RACE") != "" {
		// Build the daemon with the race detector (slower).
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "cannot build controllerd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// patience is the generous deadline for any cluster condition: conditions
// are polled, never timed.
const patience = 60 * time.Second

const dqlitePort = 17666

// line is one log line with the time the harness read it.
type line struct {
	at   time.Time
	text string
}

// daemon is one controllerd process with its own data dir and config file.
type daemon struct {
	id      string
	host    string
	conf    string
	data    string
	apiPort int
	backups string
	// netns, when set, is the network namespace the daemon runs in
	// (ip netns exec), e.g. to make its machine vanish from the network.
	netns string

	mu     sync.Mutex
	lines  []line
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	// asked is set when the test stopped or killed the process itself,
	// so that any other exit is reported as the daemon's own.
	asked bool
	// launched is the index in lines of the current process's first line.
	launched int
}

// crash is what a daemon that exited by itself printed about it.
type crash struct {
	controller string
	exit       string
	// inC is set when the fault was in C code (libdqlite, libraft: a
	// segfault or a failed assertion): the Go runtime reported a signal
	// that arrived during cgo execution, or the process died of the
	// signal itself, which happens when it arrives on a thread C created
	// (a fault in Go code is a panic and exit status 2).
	inC bool
	// first is the first line that tells the cause (a fatal error, a
	// panic, a signal or a failed assertion).
	first string
}

func (c crash) String() string {
	where := "in Go code"
	if c.inC {
		where = "in C code (libdqlite or libraft)"
	}
	first := c.first
	if first == "" {
		first = "no fault message (the signal killed the process)"
	}
	return fmt.Sprintf("controller %s exited by itself (%s) %s: %s", c.controller, c.exit, where, first)
}

// crashOf reads the current process's log for the cause of its exit.
func (d *daemon) crashOf() crash {
	d.mu.Lock()
	defer d.mu.Unlock()
	cr := crash{controller: d.id, exit: fmt.Sprint(d.err)}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			switch ws.Signal() {
			case syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGABRT:
				cr.inC = true
			}
		}
	}
	for _, l := range d.lines[d.launched:] {
		switch {
		case strings.Contains(l.text, "signal arrived during cgo execution"):
			cr.inC = true
		case cr.first == "" && (strings.HasPrefix(l.text, "panic:") || strings.HasPrefix(l.text, "fatal error:") ||
			strings.HasPrefix(l.text, "SIG") || strings.Contains(l.text, "Assertion")):
			cr.first = l.text
		}
	}
	return cr
}

func (d *daemon) started() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd != nil
}

// expectExit records that the test is about to stop the process.
func (d *daemon) expectExit() {
	d.mu.Lock()
	d.asked = true
	d.mu.Unlock()
}

// exitReport says how the process ended when it ended without the test
// asking (a crash), with its last log lines, or "" when it runs or was
// stopped by the test.
func (d *daemon) exitReport() string {
	if !d.started() || d.running() {
		return ""
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.asked {
		return ""
	}
	from := max(0, len(d.lines)-15)
	var b strings.Builder
	fmt.Fprintf(&b, "controller %s exited by itself (%v); its last lines:", d.id, d.err)
	for _, l := range d.lines[from:] {
		b.WriteString("\n    ")
		b.WriteString(l.text)
	}
	return b.String()
}

func (d *daemon) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for _, l := range d.lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return b.String()
}

// lineAfter returns the time of the first log line after t that contains s.
func (d *daemon) lineAfter(t time.Time, s string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.lines {
		if l.at.After(t) && strings.Contains(l.text, s) {
			return l.at, true
		}
	}
	return time.Time{}, false
}

func (d *daemon) running() bool {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// cluster is a set of daemons on loopback addresses 127.X.Y.(n+1), one
// address per controller, all on the same port. X.Y is random per cluster
// so that concurrent test runs do not collide.
type cluster struct {
	t      testing.TB
	prefix string
	dir    string
	nodes  map[string]*daemon
	// args are added to every `controllerd run` (e.g. backup timing).
	args []string
	// ca is the cluster's test CA: every daemon gets a node certificate
	// of it in tls/ next to its config file, as the charm provisions it.
	ca *clustertls.CA
	// superviseCrashes makes the harness restart a daemon that exits by
	// itself, as systemd does in production (superviseExit). Off, a
	// crash stays down and fails the test that needs the daemon.
	superviseCrashes bool

	mu      sync.Mutex
	crashes []crash
	closed  bool // the test ended: no more restarts
}

func newCluster(t testing.TB) *cluster {
	ca, err := clustertls.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		t:      t,
		prefix: fmt.Sprintf("127.%d.%d.", 10+rand.IntN(240), 1+rand.IntN(250)),
		dir:    t.TempDir(),
		nodes:  map[string]*daemon{},
		ca:     ca,
	}
	t.Cleanup(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		for _, d := range c.nodes {
			if d.running() {
				d.expectExit()
				d.cmd.Process.Kill()
				<-d.exited
			}
		}
		if t.Failed() || os.Getenv("DQC_TEST_LOGS") != "" {
			for _, d := range c.nodes {
				if r := d.exitReport(); r != "" {
					t.Log(r)
				}
			}
			for id, d := range c.nodes {
				t.Logf("=== log of controller %s ===\n%s", id, d.logs())
			}
		}
	})
	return c
}

func (c *cluster) node(id string) *daemon {
	if d, ok := c.nodes[id]; ok {
		return d
	}
	n, err := strconv.Atoi(id)
	if err != nil {
		c.t.Fatalf("bad controller id %q", id)
	}
	d := &daemon{
		id:      id,
		host:    c.prefix + strconv.Itoa(n+1),
		conf:    filepath.Join(c.dir, "agents", "controller-"+id, controllerconf.FileName),
		data:    filepath.Join(c.dir, "dqlite-"+id),
		apiPort: freePort(c.t),
		backups: filepath.Join(c.dir, "backups-"+id),
	}
	c.nodes[id] = d
	c.provision(d)
	return d
}

// provision gives d's controller a node certificate of the cluster's CA for
// its current host, like the charm.
func (c *cluster) provision(d *daemon) {
	c.t.Helper()
	if _, _, err := clustertls.Provision(clustertls.Dir(d.conf), c.ca, c.ca.CertPEM, d.id, []net.IP{net.ParseIP(d.host)}, time.Now()); err != nil {
		c.t.Fatalf("cannot provision controller %s's TLS material: %v", d.id, err)
	}
}

// caFile writes the CA certificate to a file and returns its path.
func (c *cluster) caFile() string {
	c.t.Helper()
	path := filepath.Join(c.dir, "ca.crt")
	if err := os.WriteFile(path, c.ca.CertPEM, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// httpsClient verifies the controllers against the cluster CA, as agents
// and clients do.
func (c *cluster) httpsClient() *http.Client {
	pool, err := clustertls.PoolFromPEM(c.ca.CertPEM)
	if err != nil {
		c.t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: clustertls.ClientConfig(pool)}}
}

// config returns a config listing ids, with controller 0 as bootstrap agent.
func (c *cluster) config(ids ...string) *controllerconf.Config {
	cfg := &controllerconf.Config{DBBindAddresses: map[string]string{}, BootstrapAgentID: "0"}
	for _, id := range ids {
		cfg.DBBindAddresses[id] = c.node(id).host
	}
	return cfg
}

// writeConfig writes cfg to the config files of the given controllers, the
// way the charm does (atomic rename).
func (c *cluster) writeConfig(cfg *controllerconf.Config, to ...string) {
	c.t.Helper()
	for _, id := range to {
		if _, err := controllerconf.Write(c.node(id).conf, cfg); err != nil {
			c.t.Fatalf("cannot write config of controller %s: %v", id, err)
		}
	}
}

func (c *cluster) start(id string) *daemon {
	c.t.Helper()
	d := c.node(id)
	if d.running() {
		c.t.Fatalf("controller %s is already running", id)
	}
	if err := c.launch(d); err != nil {
		c.t.Fatal(err)
	}
	return d
}

// launch starts d's process and the goroutines that read its log and wait
// for its exit (and, with superviseCrashes, restart it).
func (c *cluster) launch(d *daemon) error {
	// Each daemon listens for its HTTP API on 0.0.0.0 with a port of its
	// own (the default 17070 would be shared by all of them).
	args := append([]string{"run", "--controller-id", d.id, "--config", d.conf,
		"--data-dir", d.data, "--port", strconv.Itoa(dqlitePort),
		"--api-port", strconv.Itoa(d.apiPort), "--backup-dir", d.backups}, c.args...)
	cmd := exec.Command(binary, args...)
	if d.netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", d.netns, binary}, args...)...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start controller %s: %v", d.id, err)
	}
	exited := make(chan struct{})
	d.mu.Lock()
	d.cmd, d.exited, d.asked, d.launched = cmd, exited, false, len(d.lines)
	d.mu.Unlock()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			d.mu.Lock()
			d.lines = append(d.lines, line{at: time.Now(), text: sc.Text()})
			d.mu.Unlock()
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() {
		<-scanned
		err := cmd.Wait()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(exited)
		c.superviseExit(d)
	}()
	return nil
}

// superviseExit restarts a daemon that exited by itself one second later,
// as the charm's systemd unit does (Restart=always, RestartSec=1), when
// the cluster supervises crashes; the crash is recorded for the test.
func (c *cluster) superviseExit(d *daemon) {
	if !c.superviseCrashes || d.exitReport() == "" {
		return
	}
	c.mu.Lock()
	c.crashes = append(c.crashes, d.crashOf())
	c.mu.Unlock()
	time.Sleep(time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	d.mu.Lock()
	asked := d.asked // the test stopped or killed it meanwhile: its call
	d.mu.Unlock()
	if c.closed || asked {
		return
	}
	if err := c.launch(d); err != nil {
		c.crashes = append(c.crashes, crash{controller: d.id, first: err.Error()})
	}
}

// crashReports returns what superviseExit recorded.
func (c *cluster) crashReports() []crash {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]crash(nil), c.crashes...)
}

// stop sends SIGTERM and returns the exit error (nil for exit 0).
func (c *cluster) stop(id string) error {
	c.t.Helper()
	d := c.node(id)
	d.expectExit()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(patience):
		c.t.Fatalf("controller %s did not exit within %s of SIGTERM", id, patience)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (c *cluster) kill(id string) {
	c.t.Helper()
	d := c.node(id)
	d.expectExit()
	d.cmd.Process.Kill()
	<-d.exited
}

func (c *cluster) status(id string) (control.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := c.node(id)
	st, err := control.NewClient(d.data).Status(ctx)
	if r := d.exitReport(); err != nil && r != "" {
		err = fmt.Errorf("%w; %s", err, r)
	}
	return st, err
}

func (c *cluster) mustStatus(id string) control.Status {
	c.t.Helper()
	st, err := c.status(id)
	if err != nil {
		c.t.Fatalf("cannot get status of controller %s: %v", id, err)
	}
	return st
}

func (c *cluster) sql(id, stmt string) (control.SQLResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return control.NewClient(c.node(id).data).SQL(ctx, stmt)
}

func (c *cluster) mustSQL(id, stmt string) control.SQLResult {
	c.t.Helper()
	res, err := c.sql(id, stmt)
	if err != nil {
		c.t.Fatalf("controller %s: %q failed: %v", id, stmt, err)
	}
	return res
}

// count returns SELECT count(*) through controller id.
func (c *cluster) count(id, table string) (int, error) {
	res, err := c.sql(id, "SELECT count(*) FROM "+table)
	if err != nil {
		return 0, err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		return 0, fmt.Errorf("unexpected result %+v", res)
	}
	n, ok := res.Rows[0][0].(float64)
	if !ok {
		return 0, fmt.Errorf("unexpected count %#v", res.Rows[0][0])
	}
	return int(n), nil
}

// waitFor polls cond until it holds or the patience runs out.
func (c *cluster) waitFor(what string, cond func() (bool, string)) {
	c.t.Helper()
	deadline := time.Now().Add(patience)
	last := ""
	for time.Now().Before(deadline) {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("timed out waiting for %s (last: %s)", what, last)
}

// waitState waits until controller id reports state (and member when the
// state is running).
func (c *cluster) waitState(id, state string) control.Status {
	c.t.Helper()
	var st control.Status
	c.waitFor(fmt.Sprintf("controller %s to be %s", id, state), func() (bool, string) {
		var err error
		st, err = c.status(id)
		if err != nil {
			return false, err.Error()
		}
		return st.State == state, fmt.Sprintf("%s: %s", st.State, st.Message)
	})
	return st
}

// waitRoles waits until controller id sees the given numbers of members,
// voters and stand-bys, with everyone listed running.
func (c *cluster) waitRoles(id string, members, voters, standbys int) control.Status {
	c.t.Helper()
	var st control.Status
	c.waitFor(fmt.Sprintf("%d members, %d voters, %d stand-bys", members, voters, standbys), func() (bool, string) {
		var err error
		st, err = c.status(id)
		if err != nil {
			return false, err.Error()
		}
		return len(st.Members) == members && st.Voters == voters && st.StandBys == standbys,
			fmt.Sprintf("%s members=%d voters=%d stand-bys=%d", st.State, len(st.Members), st.Voters, st.StandBys)
	})
	return st
}

// form starts controllers 0..n-1 listed in every config, 0 bootstrapping,
// and waits until all are running members with the expected roles.
func (c *cluster) form(n int) {
	c.t.Helper()
	ids := ids(n)
	c.writeConfig(c.config(ids...), ids...)
	for _, id := range ids {
		c.start(id)
	}
	voters, standbys := min(n, 3), min(max(n-3, 0), 3)
	if n == 2 {
		// One voter and one stand-by (go-dqlite would leave a spare).
		voters, standbys = 1, 1
	}
	c.waitRoles("0", n, voters, standbys)
	for _, id := range ids {
		c.waitState(id, "running")
	}
}

func ids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}

// leaderID returns the controller id whose node leads, as seen by from.
func (c *cluster) leaderID(from string) string {
	c.t.Helper()
	var leader string
	c.waitFor("a leader", func() (bool, string) {
		st, err := c.status(from)
		if err != nil || st.Leader == nil {
			return false, fmt.Sprint(err)
		}
		for id, d := range c.nodes {
			if strings.HasPrefix(st.Leader.Address, d.host+":") {
				leader = id
				return true, ""
			}
		}
		return false, "leader " + st.Leader.Address + " is not a known controller"
	})
	return leader
}

// transfer asks the Dqlite leader (as a client with controller from's
// certificate) to hand leadership to controller to's node.
func (c *cluster) transfer(from, leader, to string) error {
	m := c.material(from)
	dial := client.DialFuncWithTLS(client.DefaultDialFunc, app.SimpleDialTLSConfig(m.Cert, m.Pool))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cli, err := client.New(ctx, c.mustStatus(leader).Address, client.WithDialFunc(dial))
	if err != nil {
		return err
	}
	defer cli.Close()
	return cli.Transfer(ctx, c.nodeID(to))
}

// makeLeader transfers the Dqlite leadership to controller id's node and
// waits until it leads.
func (c *cluster) makeLeader(id string) {
	c.t.Helper()
	c.waitFor("controller "+id+" leading", func() (bool, string) {
		leader := c.leaderID(id)
		if leader == id {
			return true, ""
		}
		if err := c.transfer(id, leader, id); err != nil {
			return false, err.Error()
		}
		return c.leaderID(id) == id, "leader " + leader
	})
}

// writeUntilOK retries an idempotent insert through controller id until it
// succeeds.
func (c *cluster) writeUntilOK(id, stmt string) {
	c.t.Helper()
	c.waitFor("a successful write through controller "+id, func() (bool, string) {
		_, err := c.sql(id, stmt)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// freePort returns a TCP port that was free on all addresses a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatalf("cannot find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// apiAddress is controller id's API address as it publishes it without
// api-hosts in the config (its db bind host).
func (c *cluster) apiAddress(id string) string {
	d := c.node(id)
	return net.JoinHostPort(d.host, strconv.Itoa(d.apiPort))
}

// apiGet GETs path from controller id's HTTP API and decodes the JSON body
// into out (unless nil); it returns the response.
func (c *cluster) apiGet(id, path string, out any) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+c.apiAddress(id)+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.httpsClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp, fmt.Errorf("GET %s on controller %s: %s: %s", path, id, resp.Status, strings.TrimSpace(string(body)))
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return resp, fmt.Errorf("cannot decode %s: %w", path, err)
		}
	}
	return resp, nil
}

// holders returns the running controllers whose status says they hold the
// singular-controller lease, and the holder each running controller sees.
func (c *cluster) holders() (held []string, seen map[string]string) {
	seen = map[string]string{}
	for _, id := range sortedIDs(c.nodes) {
		d := c.nodes[id]
		if !d.running() {
			continue
		}
		st, err := c.status(id)
		if err != nil || st.Lease == nil {
			seen[id] = ""
			continue
		}
		seen[id] = st.Lease.Holder
		if st.Lease.HeldByMe {
			held = append(held, id)
		}
	}
	return held, seen
}

func sortedIDs(m map[string]*daemon) []string {
	out := make([]string, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func isExitCode(err error, code int) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode() == code
	}
	return err == nil && code == 0
}

// monitor samples a check in the background until finish and keeps every
// sample the check reports as a violation.
type monitor struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	seen []string
}

// startMonitor runs check every interval; check returns a description of
// the sample and whether it is a violation.
func startMonitor(interval time.Duration, check func() (string, bool)) *monitor {
	m := &monitor{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			select {
			case <-m.stop:
				return
			case <-time.After(interval):
			}
			if what, bad := check(); bad {
				m.mu.Lock()
				m.seen = append(m.seen, what)
				m.mu.Unlock()
			}
		}
	}()
	return m
}

// finish stops the monitor and returns the violations it saw.
func (m *monitor) finish() []string {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seen
}

// The harness tells a fault in C code (it restarts the daemon as systemd
// would) from a panic of ours (it fails the test): CI saw libraft's
// segfault kill controllerd outright, with no Go trace.
func TestHarness_CrashInCIsToldFromAPanicInGo(t *testing.T) {
	segv := exec.Command("sh", "-c", "kill -SEGV $$").Run()
	if cr := (&daemon{id: "9", err: segv}).crashOf(); !cr.inC {
		t.Errorf("killed by SIGSEGV: %s, want in C code", cr)
	}
	panicked := exec.Command("sh", "-c", "exit 2").Run()
	d := &daemon{id: "9", err: panicked, lines: []line{{text: "panic: runtime error: invalid memory address or nil pointer dereference"}}}
	if cr := d.crashOf(); cr.inC || !strings.HasPrefix(cr.first, "panic:") {
		t.Errorf("a Go panic: %s, want in Go code with the panic line", cr)
	}
	d.lines = append(d.lines, line{text: "signal arrived during cgo execution"})
	if cr := d.crashOf(); !cr.inC {
		t.Errorf("a signal during cgo execution: %s, want in C code", cr)
	}
}
