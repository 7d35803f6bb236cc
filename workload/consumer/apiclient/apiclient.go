// Package apiclient is the client side of the API addresses: a local store
// of each controller's client address list, refreshed from every
// successful connection (the controller answers with its current client
// list), and a dial whose first attempt always goes to the last address
// that worked, then the others (staggered, package apidial).
package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/consumer/apidial"
)

// Entry is what the store keeps for one controller.
type Entry struct {
	// Addresses is the client list the controller last sent.
	Addresses []string `json:"addresses"`
	// LastGood is the last address a connection succeeded on.
	LastGood string `json:"last-good,omitempty"`
	// CACert is the controller's CA certificate (PEM); the client
	// verifies the controller against it.
	CACert string `json:"ca-cert,omitempty"`
}

// DialOrder is the last good address first, then the others in stored
// order.
func (e Entry) DialOrder() []string {
	var out []string
	if e.LastGood != "" {
		out = append(out, e.LastGood)
	}
	for _, a := range e.Addresses {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

type file struct {
	Controllers map[string]Entry `json:"controllers"`
}

// Store is the address store: one JSON file holding every controller's
// entry, replaced atomically on each change.
type Store struct {
	path string
	mu   sync.Mutex // serialises this process's read-modify-write
}

// NewStore returns the store kept at path.
func NewStore(path string) *Store { return &Store{path: path} }

func (s *Store) read() (file, error) {
	f := file{Controllers: map[string]Entry{}}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("cannot read address store: %w", err)
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return f, fmt.Errorf("cannot parse address store %s: %w", s.path, err)
	}
	if f.Controllers == nil {
		f.Controllers = map[string]Entry{}
	}
	return f, nil
}

func (s *Store) write(f file) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode address store: %w", err)
	}
	return controllerconf.WriteFileAtomic(s.path, append(data, '\n'), 0o600)
}

// Get returns a controller's entry; ok is false when there is none.
func (s *Store) Get(controller string) (e Entry, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.read()
	if err != nil {
		return Entry{}, false, err
	}
	e, ok = f.Controllers[controller]
	return e, ok, nil
}

// Set replaces a controller's entry (e.g. the addresses given by hand for
// a first connection).
func (s *Store) Set(controller string, e Entry) error {
	return s.update(controller, func(Entry) Entry { return e })
}

// Record notes a successful connection to controller on address connected,
// whose controller sent its client address list server: the list replaces
// the stored one unless it is empty (then the old one is kept), the
// connected address is kept in it (put first when the controller does not
// list it, e.g. behind NAT, as Juju does), and it becomes the last good
// address.
func (s *Store) Record(controller, connected string, server []string) (Entry, error) {
	var out Entry
	err := s.update(controller, func(old Entry) Entry {
		e := Entry{Addresses: slices.Clone(old.Addresses), LastGood: connected, CACert: old.CACert}
		if len(server) > 0 {
			e.Addresses = slices.Clone(server)
		}
		if connected != "" && !slices.Contains(e.Addresses, connected) {
			e.Addresses = slices.Insert(e.Addresses, 0, connected)
		}
		out = e
		return e
	})
	return out, err
}

func (s *Store) update(controller string, f func(Entry) Entry) error {
	if controller == "" {
		return errors.New("cannot update address store: empty controller name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	file, err := s.read()
	if err != nil {
		return err
	}
	old := file.Controllers[controller]
	e := f(old)
	if slices.Equal(e.Addresses, old.Addresses) && e.LastGood == old.LastGood {
		if _, ok := file.Controllers[controller]; ok {
			return nil
		}
	}
	file.Controllers[controller] = e
	return s.write(file)
}

// Func connects to one address and returns the connection and the client
// address list the controller sent with its answer.
type Func[T any] func(ctx context.Context, addr string) (conn T, clientAddrs []string, err error)

// Connect connects to controller: the last good address first, the others
// staggered after it; then it records the connection in the store. The
// store's error, if any, is returned with the live connection (the caller
// may use it and report the error).
func Connect[T any](ctx context.Context, s *Store, controller string, dial Func[T], discard func(T), o apidial.Options) (T, string, error) {
	var zero T
	e, ok, err := s.Get(controller)
	if err != nil {
		return zero, "", err
	}
	if !ok || len(e.DialOrder()) == 0 {
		return zero, "", fmt.Errorf("cannot connect to controller %q: no known API address", controller)
	}
	type answer struct {
		conn  T
		addrs []string
	}
	a, addr, err := apidial.Dial(ctx, e.DialOrder(), func(ctx context.Context, addr string) (answer, error) {
		c, addrs, err := dial(ctx, addr)
		return answer{c, addrs}, err
	}, func(a answer) {
		if discard != nil {
			discard(a.conn)
		}
	}, o)
	if err != nil {
		return zero, "", fmt.Errorf("cannot connect to controller %q: %w", controller, err)
	}
	if _, err := s.Record(controller, addr, a.addrs); err != nil {
		return a.conn, addr, err
	}
	return a.conn, addr, nil
}
