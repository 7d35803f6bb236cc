package apiclient_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/juju/dqlite-controller/workload/consumer/apiclient"
	"github.com/juju/dqlite-controller/workload/consumer/apidial"
)

func TestEntry_DialOrderPutsTheLastGoodAddressFirst(t *testing.T) {
	for _, c := range []struct {
		e    apiclient.Entry
		want []string
	}{
		{apiclient.Entry{Addresses: []string{"a", "b", "c"}, LastGood: "b"}, []string{"b", "a", "c"}},
		{apiclient.Entry{Addresses: []string{"a", "b"}}, []string{"a", "b"}},
		{apiclient.Entry{Addresses: []string{"a"}, LastGood: "z"}, []string{"z", "a"}},
		{apiclient.Entry{}, nil},
	} {
		if got := c.e.DialOrder(); !slices.Equal(got, c.want) {
			t.Errorf("%+v: order %v, want %v", c.e, got, c.want)
		}
	}
}

// controllers is a fake set of API servers: which addresses accept, and
// the client list each answers with.
type controllers struct {
	mu      sync.Mutex
	up      map[string]bool
	clients []string
	dialled []string
}

func (c *controllers) dial(ctx context.Context, addr string) (string, []string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dialled = append(c.dialled, addr)
	if !c.up[addr] {
		return "", nil, errors.New("connection refused")
	}
	return "conn-" + addr, slices.Clone(c.clients), nil
}

func (c *controllers) order() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.dialled)
}

// The last good address is tried first, and the store follows the
// controllers' client list.
func TestConnect_LastGoodFirst(t *testing.T) {
	store := apiclient.NewStore(filepath.Join(t.TempDir(), "controllers.json"))
	if err := store.Set("prod", apiclient.Entry{Addresses: []string{"a:17070", "b:17070", "c:17070"}}); err != nil {
		t.Fatal(err)
	}
	if err := store.Set("other", apiclient.Entry{Addresses: []string{"x:17070"}}); err != nil {
		t.Fatal(err)
	}
	ctl := &controllers{up: map[string]bool{"b:17070": true, "c:17070": true}, clients: []string{"a:17070", "b:17070", "c:17070"}}
	ctx := context.Background()

	// First connection: a is down, b answers; b becomes last good.
	_, addr, err := apiclient.Connect(ctx, store, "prod", ctl.dial, nil, apidial.Options{})
	if err != nil || addr != "b:17070" {
		t.Fatalf("Connect = %q, %v; want b", addr, err)
	}
	if got := ctl.order(); !slices.Equal(got, []string{"a:17070", "b:17070"}) {
		t.Fatalf("first dial order %v", got)
	}
	// Second connection tries b first.
	ctl.dialled = nil
	if _, addr, err := apiclient.Connect(ctx, store, "prod", ctl.dial, nil, apidial.Options{}); err != nil || addr != "b:17070" {
		t.Fatalf("second Connect = %q, %v", addr, err)
	}
	if got := ctl.order(); !slices.Equal(got, []string{"b:17070"}) {
		t.Fatalf("second dial order %v, want the last good address alone", got)
	}
	// b is removed from the control plane, d joins: the client reconnects
	// to another controller and puts it first.
	ctl.mu.Lock()
	ctl.up = map[string]bool{"c:17070": true, "d:17070": true}
	ctl.clients = []string{"c:17070", "d:17070"}
	ctl.dialled = nil
	ctl.mu.Unlock()
	if _, addr, err := apiclient.Connect(ctx, store, "prod", ctl.dial, nil, apidial.Options{}); err != nil || addr != "c:17070" {
		t.Fatalf("Connect after removal = %q, %v; want c", addr, err)
	}
	e, _, err := store.Get("prod")
	if err != nil {
		t.Fatal(err)
	}
	if want := (apiclient.Entry{Addresses: []string{"c:17070", "d:17070"}, LastGood: "c:17070"}); !reflect.DeepEqual(e, want) {
		t.Fatalf("stored %+v, want %+v", e, want)
	}
	if got := e.DialOrder(); !slices.Equal(got, []string{"c:17070", "d:17070"}) {
		t.Fatalf("next dial order %v", got)
	}
	// Other controllers' entries are untouched.
	if o, ok, _ := store.Get("other"); !ok || !slices.Equal(o.Addresses, []string{"x:17070"}) {
		t.Fatalf("other controller's entry %+v", o)
	}
}

// An empty client list from the server keeps the stored one, and an address
// that worked but is not listed goes first.
func TestRecord_EmptyListKeepsTheOld(t *testing.T) {
	store := apiclient.NewStore(filepath.Join(t.TempDir(), "controllers.json"))
	if err := store.Set("prod", apiclient.Entry{Addresses: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	e, err := store.Record("prod", "b", nil)
	if err != nil || !slices.Equal(e.Addresses, []string{"a", "b"}) || e.LastGood != "b" {
		t.Fatalf("after empty list: %+v, %v", e, err)
	}
	e, err = store.Record("prod", "nat:443", []string{"a", "b"})
	if err != nil || !slices.Equal(e.Addresses, []string{"nat:443", "a", "b"}) {
		t.Fatalf("unlisted connected address: %+v, %v", e, err)
	}
}

func TestStore_BrokenFileIsReportedAndKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "controllers.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	store := apiclient.NewStore(path)
	if _, err := store.Record("prod", "a", []string{"a"}); err == nil {
		t.Fatal("broken store accepted")
	}
	if data, _ := os.ReadFile(path); string(data) != "{not json" {
		t.Fatalf("broken store overwritten: %q", data)
	}
	if _, _, err := apiclient.Connect(context.Background(), apiclient.NewStore(filepath.Join(t.TempDir(), "none.json")), "prod",
		func(context.Context, string) (int, []string, error) { return 0, nil, nil }, nil, apidial.Options{}); err == nil {
		t.Fatal("Connect without known addresses succeeded")
	}
}
