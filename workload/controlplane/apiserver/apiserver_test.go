package apiserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/controlplane/apiserver"
)

type fakeBackend struct {
	mu      sync.Mutex
	member  bool
	changed chan struct{}
	health  apiserver.Health
	lease   apiserver.Lease
	bundle  []byte
}

func newBackend(member bool) *fakeBackend {
	return &fakeBackend{member: member, changed: make(chan struct{})}
}

func (b *fakeBackend) setMember(m bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.member = m
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *fakeBackend) Member() (bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.member, b.changed
}

func (b *fakeBackend) Health(context.Context) apiserver.Health { return b.health }

func (b *fakeBackend) Lease() (apiserver.Lease, error) { return b.lease, nil }

func (b *fakeBackend) CABundle() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bundle
}

func (b *fakeBackend) setBundle(pem []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.bundle = pem
}

type fixedSource struct{ l apiwire.Lists }

func (s fixedSource) Lists(context.Context) (apiwire.Lists, error) { return s.l, nil }

// watcher returns a watcher that has read lists with the given client
// addresses.
func watcher(t *testing.T, clients ...string) *apiaddr.Watcher {
	t.Helper()
	c := apiaddr.Controller{ID: "0"}
	for _, a := range clients {
		c.Addresses = append(c.Addresses, apiaddr.Address{HostPort: a, Scope: apiaddr.ScopeOf(strings.Split(a, ":")[0]), IsAgent: true})
	}
	w := apiaddr.NewWatcher(fixedSource{apiaddr.Compute([]apiaddr.Controller{c})}, time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go w.Run(ctx)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if _, err := w.Wait(wctx, ""); err != nil {
		t.Fatalf("watcher never read the lists: %v", err)
	}
	return w
}

func get(t *testing.T, srv *httptest.Server, path string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestHandler_NonMemberAnswersHealthWithClientListButNoAddressLists(t *testing.T) {
	b := newBackend(false)
	b.health = apiserver.Health{ControllerID: "1", State: "removed"}
	srv := httptest.NewServer(apiserver.Handler(b, watcher(t, "10.0.0.1:17070", "10.0.0.2:17070")))
	defer srv.Close()

	resp, body := get(t, srv, apiserver.PathHealth)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, `"state":"removed"`) {
		t.Fatalf("health of a removed node = %d %s", resp.StatusCode, body)
	}
	if h := resp.Header.Get(apiwire.HeaderClientAddresses); h != "10.0.0.1:17070,10.0.0.2:17070" {
		t.Fatalf("client list header = %q", h)
	}
	resp, body = get(t, srv, apiwire.PathAddresses)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "not a member") {
		t.Fatalf("address lists on a non-member = %d %s", resp.StatusCode, body)
	}
}

func TestHandler_MemberServesHealthListsAndLease(t *testing.T) {
	b := newBackend(true)
	b.health = apiserver.Health{ControllerID: "0", State: "running", Member: true, Role: "voter"}
	b.lease = apiserver.Lease{Namespace: "singular-controller", Name: "controller", Holder: "controller-0"}
	srv := httptest.NewServer(apiserver.Handler(b, watcher(t, "10.0.0.1:17070")))
	defer srv.Close()

	if resp, body := get(t, srv, apiserver.PathHealth); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"role":"voter"`) {
		t.Fatalf("health = %d %s", resp.StatusCode, body)
	}
	resp, body := get(t, srv, apiwire.PathAddresses)
	var l apiwire.Lists
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &l) != nil || len(l.Clients) != 1 {
		t.Fatalf("lists = %d %s", resp.StatusCode, body)
	}
	resp, body = get(t, srv, apiserver.PathLease)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"holder":"controller-0"`) {
		t.Fatalf("lease = %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get(apiwire.HeaderClientAddresses) != "10.0.0.1:17070" {
		t.Fatalf("lease response without the client list header")
	}
}

func TestHandler_LongPollEndsWhenTheNodeStopsBeingAMember(t *testing.T) {
	b := newBackend(true)
	w := watcher(t, "10.0.0.1:17070")
	srv := httptest.NewServer(apiserver.Handler(b, w))
	defer srv.Close()
	cur, _ := w.Current()

	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Get(srv.URL + apiwire.PathWatch + "?timeout=1m&version=" + cur.Version)
		if err != nil {
			done <- result{err: err}
			return
		}
		resp.Body.Close()
		done <- result{code: resp.StatusCode}
	}()
	select {
	case r := <-done:
		t.Fatalf("the long poll returned before any change: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	b.setMember(false)
	select {
	case r := <-done:
		if r.err != nil || r.code != http.StatusServiceUnavailable {
			t.Fatalf("long poll after losing membership = %+v, want 503", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the long poll did not end when the node stopped being a member")
	}
}

// watchLists long-polls the lists from version and returns them.
func watchLists(srv *httptest.Server, version string) (apiwire.Lists, error) {
	resp, err := http.Get(srv.URL + apiwire.PathWatch + "?timeout=1m&version=" + version)
	if err != nil {
		return apiwire.Lists{}, err
	}
	defer resp.Body.Close()
	var l apiwire.Lists
	if resp.StatusCode != http.StatusOK {
		return l, fmt.Errorf("watch: %s", resp.Status)
	}
	return l, json.NewDecoder(resp.Body).Decode(&l)
}

// A CA rotation as the API shows it: the lists carry the CA bundle the
// node trusts, and a long poll returns as soon as the bundle changes
// (old CA → old and new → new alone), with a version that moved, though
// the address lists did not.
func TestHandler_ListsCarryTheCABundleAndTheWatchFollowsIt(t *testing.T) {
	b := newBackend(true)
	b.setBundle([]byte("OLD CA\n"))
	w := watcher(t, "10.0.0.1:17070")
	srv := httptest.NewServer(apiserver.Handler(b, w))
	defer srv.Close()

	_, body := get(t, srv, apiwire.PathAddresses)
	var first apiwire.Lists
	if err := json.Unmarshal([]byte(body), &first); err != nil || first.CABundle != "OLD CA\n" {
		t.Fatalf("lists = %s (%v), want the CA bundle OLD CA", body, err)
	}
	version := first.Version
	for _, bundle := range []string{"OLD CA\nNEW CA\n", "NEW CA\n"} {
		type result struct {
			l   apiwire.Lists
			err error
		}
		done := make(chan result, 1)
		go func() {
			l, err := watchLists(srv, version)
			done <- result{l, err}
		}()
		select {
		case r := <-done:
			t.Fatalf("the long poll returned before the bundle changed: %+v", r)
		case <-time.After(3 * apiserver.CABundlePoll):
		}
		b.setBundle([]byte(bundle))
		select {
		case r := <-done:
			if r.err != nil || r.l.CABundle != bundle || r.l.Version == version || len(r.l.Agents) != 1 {
				t.Fatalf("long poll after the bundle became %q = %+v (%v), want that bundle, the same agents and a new version", bundle, r.l, r.err)
			}
			version = r.l.Version
		case <-time.After(30 * time.Second):
			t.Fatalf("the long poll did not end when the bundle became %q", bundle)
		}
	}
	if l, _ := w.Current(); !strings.HasPrefix(version, l.Version) || version == l.Version {
		t.Errorf("combined version %q does not extend the address lists' version %q", version, l.Version)
	}
}

// A node without TLS (a test's plaintext node) serves no bundle and the
// address lists' own version.
func TestHandler_NoBundleWithoutTLS(t *testing.T) {
	b := newBackend(true)
	w := watcher(t, "10.0.0.1:17070")
	srv := httptest.NewServer(apiserver.Handler(b, w))
	defer srv.Close()
	_, body := get(t, srv, apiwire.PathAddresses)
	var l apiwire.Lists
	cur, _ := w.Current()
	if err := json.Unmarshal([]byte(body), &l); err != nil || l.CABundle != "" || l.Version != cur.Version || strings.Contains(body, "ca-bundle") {
		t.Fatalf("lists without TLS = %s (%v), want no bundle and version %s", body, err, cur.Version)
	}
}
