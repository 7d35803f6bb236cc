package apiaddr_test

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/dqlitetest"
)

func TestScopeOf_ClassifiesLikeJuju(t *testing.T) {
	for host, want := range map[string]apiaddr.Scope{
		"10.1.2.3":         apiaddr.ScopeCloudLocal,
		"172.16.0.1":       apiaddr.ScopeCloudLocal,
		"172.31.255.255":   apiaddr.ScopeCloudLocal,
		"172.32.0.1":       apiaddr.ScopePublic,
		"192.168.1.1":      apiaddr.ScopeCloudLocal,
		"fd00::1":          apiaddr.ScopeCloudLocal,
		"fc00::1":          apiaddr.ScopeCloudLocal,
		"8.8.8.8":          apiaddr.ScopePublic,
		"2001:db8::1":      apiaddr.ScopePublic,
		"127.0.0.1":        apiaddr.ScopeMachineLocal,
		"127.0.0.5":        apiaddr.ScopeMachineLocal,
		"::1":              apiaddr.ScopeMachineLocal,
		"localhost":        apiaddr.ScopeMachineLocal,
		"169.254.1.1":      apiaddr.ScopeLinkLocal,
		"fe80::1":          apiaddr.ScopeLinkLocal,
		"252.1.2.3":        apiaddr.ScopeFanLocal,
		"240.0.0.1":        apiaddr.ScopeFanLocal,
		"::ffff:10.0.0.1":  apiaddr.ScopeCloudLocal,
		"controller.local": apiaddr.ScopeUnknown,
	} {
		if got := apiaddr.ScopeOf(host); got != want {
			t.Errorf("ScopeOf(%q) = %q, want %q", host, got, want)
		}
	}
}

func TestBuild_MarksAgentAddressesByManagementSpace(t *testing.T) {
	for _, c := range []struct {
		name         string
		in           apiaddr.Input
		wantAgents   []string
		wantFallback bool
	}{{
		name:       "no management space: every address is for agents",
		in:         apiaddr.Input{Port: 17070, Hosts: []string{"10.0.0.1", "203.0.113.5"}},
		wantAgents: []string{"10.0.0.1:17070", "203.0.113.5:17070"},
	}, {
		name: "management space: only its addresses are for agents",
		in: apiaddr.Input{Port: 17070, Hosts: []string{"10.0.0.1", "192.168.50.1", "203.0.113.5"},
			MgmtSpace: true, MgmtHosts: []string{"192.168.50.1"}},
		wantAgents: []string{"192.168.50.1:17070"},
	}, {
		name: "management space without any address of this controller: all kept, reported",
		in: apiaddr.Input{Port: 17070, Hosts: []string{"10.0.0.1", "203.0.113.5"},
			MgmtSpace: true},
		wantAgents:   []string{"10.0.0.1:17070", "203.0.113.5:17070"},
		wantFallback: true,
	}, {
		name: "a binding address missing from the unit's list is added",
		in: apiaddr.Input{Port: 17071, Hosts: []string{"10.0.0.1"},
			MgmtSpace: true, MgmtHosts: []string{"[fd00::7]"}},
		wantAgents: []string{"[fd00::7]:17071"},
	}} {
		t.Run(c.name, func(t *testing.T) {
			ctl, err := apiaddr.Build("0", c.in)
			if err != nil {
				t.Fatal(err)
			}
			var agents []string
			for _, a := range ctl.Addresses {
				if a.IsAgent {
					agents = append(agents, a.HostPort)
				}
			}
			if !reflect.DeepEqual(agents, c.wantAgents) || ctl.AgentFallback != c.wantFallback {
				t.Fatalf("agents %v fallback %v, want %v %v", agents, ctl.AgentFallback, c.wantAgents, c.wantFallback)
			}
		})
	}
}

func TestBuild_RejectsBadInput(t *testing.T) {
	for _, in := range []apiaddr.Input{
		{Port: 0, Hosts: []string{"10.0.0.1"}},
		{Port: 70000, Hosts: []string{"10.0.0.1"}},
		{Port: 17070, Hosts: []string{"10.0.0.0/24"}},
		{Port: 17070, Hosts: []string{"bad host"}},
	} {
		if _, err := apiaddr.Build("0", in); err == nil {
			t.Errorf("Build(%+v) accepted", in)
		}
	}
	if _, err := apiaddr.Build("", apiaddr.Input{Port: 1}); err == nil {
		t.Error("empty controller id accepted")
	}
}

func mustBuild(t *testing.T, id string, in apiaddr.Input) apiaddr.Controller {
	t.Helper()
	in.Port = 17070
	c, err := apiaddr.Build(id, in)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The agent list keeps each controller's addresses in the management space,
// all of them for a controller with none there; the client list is never
// filtered.
func TestCompute_AgentFilterWithFallback(t *testing.T) {
	cs := []apiaddr.Controller{
		// Controller 2 has no address in the management space.
		mustBuild(t, "2", apiaddr.Input{Hosts: []string{"203.0.113.2", "10.0.0.2"}, MgmtSpace: true}),
		mustBuild(t, "0", apiaddr.Input{Hosts: []string{"10.0.0.1", "192.168.50.1", "203.0.113.1"},
			MgmtSpace: true, MgmtHosts: []string{"192.168.50.1"}}),
		mustBuild(t, "10", apiaddr.Input{Hosts: []string{"127.0.0.1", "192.168.50.10", "203.0.113.10"},
			MgmtSpace: true, MgmtHosts: []string{"192.168.50.10"}}),
	}
	l := apiaddr.Compute(cs)
	wantAgents := []string{
		// cloud-local first, controllers in numeric order
		"192.168.50.1:17070", "10.0.0.2:17070", "192.168.50.10:17070",
		// then public (controller 2's fallback)
		"203.0.113.2:17070",
	}
	wantClients := []string{
		"203.0.113.1:17070", "203.0.113.2:17070", "203.0.113.10:17070",
		"10.0.0.1:17070", "192.168.50.1:17070", "10.0.0.2:17070", "192.168.50.10:17070",
		"127.0.0.1:17070",
	}
	if !reflect.DeepEqual(l.Agents, wantAgents) {
		t.Errorf("agents %v\nwant   %v", l.Agents, wantAgents)
	}
	if !reflect.DeepEqual(l.Clients, wantClients) {
		t.Errorf("clients %v\nwant    %v", l.Clients, wantClients)
	}
	if !reflect.DeepEqual(l.AgentFallback, []string{"2"}) {
		t.Errorf("fallback %v, want [2]", l.AgentFallback)
	}
	// The version is a function of the lists: same input, same version;
	// any change, a new one.
	if again := apiaddr.Compute([]apiaddr.Controller{cs[2], cs[0], cs[1]}); again.Version != l.Version {
		t.Errorf("version changed with input order: %s vs %s", again.Version, l.Version)
	}
	if fewer := apiaddr.Compute(cs[:2]); fewer.Version == l.Version {
		t.Error("version unchanged after a controller went away")
	}
}

func TestCompute_Empty(t *testing.T) {
	l := apiaddr.Compute(nil)
	if len(l.Agents) != 0 || len(l.Clients) != 0 || l.Agents == nil || l.Version == "" {
		t.Fatalf("Compute(nil) = %+v, want empty non-nil lists with a version", l)
	}
}

func deadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), dqlitetest.Patience)
	t.Cleanup(cancel)
	return ctx
}

// Publish replaces a controller's addresses, and Remove deletes them.
func TestStore_PublishReplacesAndRemoveDeletes(t *testing.T) {
	n := dqlitetest.Start(t)
	s := apiaddr.NewStore(n.DB)
	ctx := deadline(t)
	if err := s.EnsureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	c0 := mustBuild(t, "0", apiaddr.Input{Hosts: []string{"10.0.0.1", "203.0.113.1"}, MgmtSpace: true})
	c1 := mustBuild(t, "1", apiaddr.Input{Hosts: []string{"10.0.0.2"}})
	for _, c := range []apiaddr.Controller{c0, c1, c1} { // re-publishing is harmless
		if err := s.Publish(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Controllers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []apiaddr.Controller{c0, c1}) {
		t.Fatalf("read back %+v\nwant %+v", got, []apiaddr.Controller{c0, c1})
	}
	// Controller 0's addresses change: the old ones go.
	c0b := mustBuild(t, "0", apiaddr.Input{Hosts: []string{"10.0.0.9"}})
	if err := s.Publish(ctx, c0b); err != nil {
		t.Fatal(err)
	}
	l, err := s.Lists(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.9:17070", "10.0.0.2:17070"}; !reflect.DeepEqual(l.Agents, want) {
		t.Fatalf("agents after republish %v, want %v", l.Agents, want)
	}
	if err := s.Remove(ctx, "0"); err != nil {
		t.Fatal(err)
	}
	l, err = s.Lists(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.2:17070"}; !reflect.DeepEqual(l.Clients, want) {
		t.Fatalf("clients after removal %v, want %v", l.Clients, want)
	}
}

func TestStore_RemoveExceptDropsDepartedControllers(t *testing.T) {
	n := dqlitetest.Start(t)
	s := apiaddr.NewStore(n.DB)
	ctx := deadline(t)
	for _, id := range []string{"0", "1", "2"} {
		if err := s.Publish(ctx, mustBuild(t, id, apiaddr.Input{Hosts: []string{"10.0.0.1" + id}})); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := s.RemoveExcept(ctx, []string{"0", "2"})
	if err != nil || !reflect.DeepEqual(removed, []string{"1"}) {
		t.Fatalf("RemoveExcept = %v, %v; want [1]", removed, err)
	}
	l, err := s.Lists(ctx)
	if err != nil || !reflect.DeepEqual(l.Clients, []string{"10.0.0.10:17070", "10.0.0.12:17070"}) {
		t.Fatalf("clients after removal %v, %v", l.Clients, err)
	}
}

// switchSource serves whatever lists the test sets.
type switchSource struct {
	mu  sync.Mutex
	cs  []apiaddr.Controller
	err error
}

func (s *switchSource) set(cs []apiaddr.Controller, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cs, s.err = cs, err
}

func (s *switchSource) Lists(ctx context.Context) (apiwire.Lists, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return apiwire.Lists{}, s.err
	}
	return apiaddr.Compute(s.cs), nil
}

// Wait returns once the lists change, and the watcher keeps the last good
// lists while reading them fails.
func TestWatcher_WaitReturnsOnChange(t *testing.T) {
	src := &switchSource{}
	c0 := mustBuild(t, "0", apiaddr.Input{Hosts: []string{"10.0.0.1"}})
	src.set([]apiaddr.Controller{c0}, nil)
	w := apiaddr.NewWatcher(src, 5*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	first, err := w.Wait(deadline(t), "")
	if err != nil || len(first.Agents) != 1 {
		t.Fatalf("first Wait = %+v, %v", first, err)
	}
	// No change: a short long-poll ends with the deadline and the same lists.
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	same, err := w.Wait(short, first.Version)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) || same.Version != first.Version {
		t.Fatalf("Wait without change = %+v, %v", same, err)
	}
	// A read error keeps the last good lists.
	src.set(nil, errors.New("no quorum"))
	time.Sleep(30 * time.Millisecond)
	if cur, ok := w.Current(); !ok || cur.Version != first.Version {
		t.Fatalf("lists after read errors %+v, want the last good ones", cur)
	}
	c1 := mustBuild(t, "1", apiaddr.Input{Hosts: []string{"10.0.0.2"}})
	src.set([]apiaddr.Controller{c0, c1}, nil)
	next, err := w.Wait(deadline(t), first.Version)
	if err != nil || len(next.Agents) != 2 {
		t.Fatalf("Wait after a change = %+v, %v", next, err)
	}
}
