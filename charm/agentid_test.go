package charm_test

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/agentsocket"
)

// serveAgentSocket serves configchange.socket in u's /var/lib/juju with
// handler (nil: controllerd's own agentsocket answering id) until the
// returned stop is called or the test ends.
func serveAgentSocket(t *testing.T, u *unit, id string, handler http.HandlerFunc) (stop func()) {
	t.Helper()
	path := filepath.Join(u.jujuDir(), "configchange.socket")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if handler == nil {
		done, err := agentsocket.Serve(ctx, path, id, func() {}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		stop = func() { once.Do(func() { cancel(); <-done }) }
		t.Cleanup(stop)
		return stop
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(l)
	stop = func() { cancel(); srv.Close() }
	t.Cleanup(stop)
	return stop
}

func TestAgentID_FromConfigChangeSocket(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	serveAgentSocket(t, u, "7", nil)
	deploy(m, u)
	if !strings.Contains(string(fileBytes(t, u.unitFile())), "--controller-id 7 ") {
		t.Fatalf("unit file does not run controller 7:\n%s", fileBytes(t, u.unitFile()))
	}
	if got := m.unitData[u.name]["agent-id"]; got != "7" {
		t.Fatalf("published agent-id %q, want 7", got)
	}
	conf := filepath.Join(u.jujuDir(), "agents", "controller-7", "controller.conf")
	if _, err := os.Stat(conf); err != nil {
		t.Fatalf("no controller.conf for agent 7: %v", err)
	}
	if got := m.appData["db-bind-addresses"]; got != `{"7":"10.0.0.1"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	if got := m.appData["db-agent-units"]; got != `{"7":"dqlite-controller/0"}` {
		t.Fatalf("db-agent-units = %q", got)
	}
	if _, err := os.Stat(u.confPath()); err == nil {
		t.Fatal("a controller.conf for the unit number was written too")
	}
}

func TestAgentID_RecordedOnceAndKept(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	stop := serveAgentSocket(t, u, "7", nil)
	m.mustRun(u, "install")
	stop()
	// The socket is gone (or answers another id): the unit stays agent 7.
	u.inScope = true
	m.mustRunEnv(u, hookEnv{hook: "db-cluster-relation-created"})
	m.mustRun(u, "config-changed")
	if got := m.unitData[u.name]["agent-id"]; got != "7" {
		t.Fatalf("agent-id %q after the socket went away, want the recorded 7", got)
	}
	serveAgentSocket(t, u, "9", nil)
	m.mustRun(u, "start")
	if got := m.unitData[u.name]["agent-id"]; got != "7" || !u.logged("keeping the recorded one") {
		t.Fatalf("agent-id %q after the socket changed its answer, want 7 and a warning: %q", got, u.logs)
	}
}

func TestAgentID_StaleSocket_UnitNo(t *testing.T) {
	m := newModel(t)
	u := m.addUnit(3, "10.0.0.1")
	m.leader = u.name
	// A socket file nobody listens on (a daemon that died): connection
	// refused counts as no socket.
	path := filepath.Join(u.jujuDir(), "configchange.socket")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	deploy(m, u)
	if got := m.unitData[u.name]["agent-id"]; got != "3" {
		t.Fatalf("agent-id %q, want the unit number 3", got)
	}
	if _, ok := m.appData["db-agent-units"]; ok {
		t.Fatalf("db-agent-units written for a unit-number id: %q", m.appData["db-agent-units"])
	}
}

func TestAgentID_BadSocket_Blocked(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"garbage", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>hello</html>")) }, `answers "<html>hello</html>", not an agent id`},
		{"error", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) }, "answers HTTP 403 Forbidden"},
		{"silent", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, "answers no answer within 2s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newModel(t)
			u := m.addUnit(0, "10.0.0.1")
			m.leader = u.name
			serveAgentSocket(t, u, "", tc.handler)
			start := time.Now()
			m.mustRun(u, "install")
			if u.status[0] != "blocked" || !strings.Contains(u.status[1], "cannot tell this controller's agent id") || !strings.Contains(u.status[1], tc.want) {
				t.Fatalf("status %v, want blocked containing %q", u.status, tc.want)
			}
			if _, err := os.Stat(u.unitFile()); err == nil {
				t.Fatal("a unit file was written without an agent id")
			}
			if time.Since(start) > time.Minute {
				t.Fatalf("the hook took %s", time.Since(start))
			}
		})
	}
}

func TestAgentID_Collision_Blocked(t *testing.T) {
	m := newModel(t)
	u0, u1 := m.addUnit(0, "10.0.0.1"), m.addUnit(1, "10.0.0.2")
	m.leader = u0.name
	m.settleScope(u0, u1)
	m.published(u0)
	m.mustRunEnv(u0, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u1.name}) // the leader lists id 0
	if got := m.appData["db-bind-addresses"]; got != `{"0":"10.0.0.1"}` {
		t.Fatalf("db-bind-addresses = %s", got)
	}
	serveAgentSocket(t, u1, "0", nil) // unit 1's socket answers unit 0's id
	deploy(m, u1)
	if u1.status[0] != "blocked" || !strings.Contains(u1.status[1], "agent id 0 (from ") || !strings.Contains(u1.status[1], "is also claimed by dqlite-controller/0") {
		t.Fatalf("status %v", u1.status)
	}
	if _, ok := m.unitData[u1.name]["db-bind-address"]; ok {
		t.Fatalf("the colliding unit published %v", m.unitData[u1.name])
	}
	// Its controller.conf is unit 1's path named by agent id 0 (the
	// socket's answer): it must not list id 0 at unit 0's address, or
	// controllerd there would take unit 0's node as its own.
	c, err := controllerconf.Read(filepath.Join(u1.jujuDir(), "agents", "controller-0", "controller.conf"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if err == nil && len(c.DBBindAddresses) > 0 {
		t.Fatalf("the colliding unit's controller.conf lists %v", c.DBBindAddresses)
	}
}
