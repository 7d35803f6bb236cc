package apihttp_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/internal/testwait"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/consumer/apiagent"
	"github.com/juju/dqlite-controller/workload/consumer/apiclient"
	"github.com/juju/dqlite-controller/workload/consumer/apidial"
	"github.com/juju/dqlite-controller/workload/consumer/apihttp"
	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/controlplane/apiserver"
)

// published stands for the controller database: the controllers whose
// addresses are currently published.
type published struct {
	mu sync.Mutex
	cs []apiaddr.Controller
}

func (p *published) set(cs ...apiaddr.Controller) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cs = cs
}

func (p *published) Lists(context.Context) (apiwire.Lists, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return apiaddr.Compute(p.cs), nil
}

// controller is an HTTP API server on loopback whose published address is
// its real listening address.
func controller(t *testing.T, id string, w *apiaddr.Watcher) (*httptest.Server, apiaddr.Controller) {
	mux := http.NewServeMux()
	apiserver.RegisterAddresses(mux, w)
	mux.HandleFunc("GET /v1/health", func(rw http.ResponseWriter, r *http.Request) { rw.Write([]byte("ok\n")) })
	srv := httptest.NewServer(apiserver.WithClientAddresses(mux, w))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	return srv, apiaddr.Controller{ID: id, Addresses: []apiaddr.Address{{HostPort: host, Scope: apiaddr.ScopeMachineLocal, IsAgent: true}}}
}

func TestAgentAndClient_FollowControllerChangesOverHTTP(t *testing.T) {
	db := &published{}
	w := apiaddr.NewWatcher(db, 5*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	srv0, c0 := controller(t, "0", w)
	srv1, c1 := controller(t, "1", w)
	addr0, addr1 := c0.Addresses[0].HostPort, c1.Addresses[0].HostPort
	db.set(c0)

	// The agent knows only controller 0 at first.
	conf := filepath.Join(t.TempDir(), "agent.conf")
	if err := os.WriteFile(conf, []byte("tag: machine-1\napiaddresses:\n- "+addr0+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := &apihttp.AgentSource{
		Addresses:    func() ([]string, error) { return apiagent.ReadAddresses(conf) },
		WatchTimeout: 200 * time.Millisecond,
	}
	u := apiagent.NewUpdater(conf, src, nil)
	u.SetRetryDelay(10 * time.Millisecond)
	done := make(chan error)
	go func() { done <- u.Run(ctx) }()
	fileIs := func(want ...string) func() bool {
		return func() bool {
			got, _ := apiagent.ReadAddresses(conf)
			return slices.Equal(got, want)
		}
	}

	// Controller 1 joins: the agent's file follows.
	db.set(c0, c1)
	testwait.For(t, "the agent file to list both controllers", fileIs(addr0, addr1))
	// Controller 0 is removed: its server goes away and its addresses too.
	srv0.Close()
	db.set(c1)
	testwait.For(t, "the agent file to list controller 1 only", fileIs(addr1))
	// The controllers answer with an empty list: the last one is kept.
	db.set()
	testwait.For(t, "the watcher to serve the empty list", func() bool { cur, _ := w.Current(); return len(cur.Agents) == 0 })
	time.Sleep(100 * time.Millisecond)
	if !fileIs(addr1)() {
		got, _ := apiagent.ReadAddresses(conf)
		t.Fatalf("empty list replaced the agent's addresses: %v", got)
	}
	if data, _ := os.ReadFile(conf); !strings.Contains(string(data), "tag: machine-1") {
		t.Fatalf("other keys lost:\n%s", data)
	}
	db.set(c1)
	testwait.For(t, "the watcher to serve controller 1", func() bool { cur, _ := w.Current(); return slices.Equal(cur.Clients, []string{addr1}) })

	// A client whose last good controller (0) is gone reconnects to 1 and
	// puts it first.
	store := apiclient.NewStore(filepath.Join(t.TempDir(), "controllers.json"))
	if err := store.Set("ctl", apiclient.Entry{Addresses: []string{addr0, addr1}, LastGood: addr0}); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	_, addr, err := apiclient.Connect(cctx, store, "ctl", apihttp.ClientDial(nil, ""), nil, apidial.Options{})
	if err != nil || addr != addr1 {
		t.Fatalf("Connect = %q, %v; want %s", addr, err, addr1)
	}
	e, _, _ := store.Get("ctl")
	if !slices.Equal(e.DialOrder(), []string{addr1}) {
		t.Fatalf("store after reconnect %+v, want controller 1 only, first", e)
	}
	_ = srv1
	cancel()
	<-done
}

// The watch returns the unchanged lists once its timeout passes, and bad
// timeouts are rejected.
func TestWatch_UnchangedAtTheTimeout(t *testing.T) {
	db := &published{}
	w := apiaddr.NewWatcher(db, 5*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	srv, c := controller(t, "0", w)
	db.set(c)
	testwait.For(t, "the first read", func() bool { cur, _ := w.Current(); return len(cur.Clients) == 1 })
	cur, _ := w.Current()
	resp, err := http.Get(srv.URL + apiwire.PathWatch + "?version=" + cur.Version + "&timeout=50ms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get(apiwire.HeaderClientAddresses) != c.Addresses[0].HostPort {
		t.Fatalf("watch timeout answer %s, header %q", resp.Status, resp.Header.Get(apiwire.HeaderClientAddresses))
	}
	resp, err = http.Get(srv.URL + apiwire.PathWatch + "?timeout=soon")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad timeout answered %s", resp.Status)
	}
}
