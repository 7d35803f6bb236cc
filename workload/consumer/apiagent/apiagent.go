// Package apiagent is the agent side of the API addresses (Juju's
// api-address-updater on a non-controller machine): it keeps the
// `apiaddresses:` list of the agent config file current from a watch of
// the controllers' agent address list, and connects to a controller by
// trying those addresses in random order with staggered parallel
// attempts.
package apiagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/consumer/apidial"
)

// Key is the agent config key holding the API addresses (Juju's
// agent.conf format 2.0).
const Key = "apiaddresses"

// CACertKey is the agent config key holding the controllers' CA
// certificate (PEM), as in Juju's agent.conf (juju/juju:
// agent/agent.go, format 2.0 key "cacert"), which the provisioner writes.
const CACertKey = "cacert"

// DefaultRetryDelay is the wait after a failed watch before the next.
const DefaultRetryDelay = time.Second

// ReadAddresses returns the addresses in the agent config file at path
// (nil when the file or the key does not exist).
func ReadAddresses(path string) ([]string, error) {
	doc, err := readDoc(path)
	if err != nil || doc == nil {
		return nil, err
	}
	_, val := findKey(doc.Content[0], Key)
	if val == nil {
		return nil, nil
	}
	var addrs []string
	if err := val.Decode(&addrs); err != nil {
		return nil, fmt.Errorf("cannot read %s in %s: %w", Key, path, err)
	}
	return addrs, nil
}

// WriteAddresses sets the addresses in the agent config file at path,
// keeping every other key (and comment) as it was, with an atomic write
// and only if the list changed. A file that is not a YAML mapping is left
// untouched and reported.
func WriteAddresses(path string, addrs []string) (changed bool, err error) {
	if len(addrs) == 0 {
		return false, fmt.Errorf("cannot write an empty %s list to %s", Key, path)
	}
	doc, err := readDoc(path)
	if err != nil {
		return false, err
	}
	perm := fs.FileMode(0o600)
	if doc == nil {
		doc = &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	} else if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
	}
	root := doc.Content[0]
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, a := range addrs {
		seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: a})
	}
	key, val := findKey(root, Key)
	if val != nil {
		var old []string
		if val.Decode(&old) == nil && slices.Equal(old, addrs) {
			return false, nil
		}
		// An anchor on the old list stays on the new one: an alias
		// elsewhere in the file would otherwise point nowhere and the
		// whole file would no longer parse.
		seq.Style, seq.Anchor = val.Style, val.Anchor
		*val = *seq
	} else {
		key = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: Key}
		root.Content = append(root.Content, key, seq)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return false, fmt.Errorf("cannot encode %s: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return false, fmt.Errorf("cannot encode %s: %w", path, err)
	}
	if err := controllerconf.WriteFileAtomic(path, buf.Bytes(), perm); err != nil {
		return false, err
	}
	return true, nil
}

// readDoc parses the file; nil when it does not exist or is empty.
func readDoc(path string) (*yaml.Node, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read agent config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("cannot parse agent config %s: %w", path, err)
	}
	if doc.Kind == 0 {
		return nil, nil // empty file
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("cannot use agent config %s: it is not a YAML mapping", path)
	}
	return &doc, nil
}

// ReadCACert returns the CA certificate (PEM) of the agent config file at
// path; the agent verifies the controllers against it.
func ReadCACert(path string) ([]byte, error) {
	doc, err := readDoc(path)
	if err != nil {
		return nil, err
	}
	if doc == nil {
		return nil, fmt.Errorf("cannot read the CA certificate: agent config %s is missing or empty", path)
	}
	_, val := findKey(doc.Content[0], CACertKey)
	var pem string
	if val == nil || val.Decode(&pem) != nil || pem == "" {
		return nil, fmt.Errorf("agent config %s has no %s: the agent cannot verify the controllers", path, CACertKey)
	}
	return []byte(pem), nil
}

func findKey(m *yaml.Node, name string) (key, val *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == name {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

// Source is the controllers' agent address list, watched: Watch returns
// the list once its version differs from lastVersion ("" at first), or an
// error (e.g. the deadline of a long poll).
type Source interface {
	Watch(ctx context.Context, lastVersion string) (addrs []string, version string, err error)
}

// Updater keeps the agent config file's address list current.
type Updater struct {
	path       string
	src        Source
	log        *slog.Logger
	retryDelay time.Duration
}

// NewUpdater returns an updater for the agent config file at path.
func NewUpdater(path string, src Source, log *slog.Logger) *Updater {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Updater{path: path, src: src, log: log, retryDelay: DefaultRetryDelay}
}

// SetRetryDelay sets the wait after a failed watch (tests shorten it).
func (u *Updater) SetRetryDelay(d time.Duration) { u.retryDelay = d }

// Run watches and updates until ctx is done.
func (u *Updater) Run(ctx context.Context) error {
	version := ""
	for {
		addrs, v, err := u.src.Watch(ctx, version)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			u.log.Warn("cannot watch API addresses", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(u.retryDelay):
			}
			continue
		}
		version = v
		if err := u.Apply(addrs); err != nil {
			u.log.Warn("cannot update API addresses", "err", err)
		}
	}
}

// Apply writes addrs to the agent config file if they changed. An empty
// list keeps the existing entries (Juju LP#1888453): an agent must never
// lose every way to reach the controllers.
func (u *Updater) Apply(addrs []string) error {
	if len(addrs) == 0 {
		u.log.Warn("empty API address list received; keeping the existing entries")
		return nil
	}
	changed, err := WriteAddresses(u.path, addrs)
	if err != nil {
		return err
	}
	if changed {
		u.log.Info("API addresses updated", "addresses", addrs)
	}
	return nil
}

// DialOptions tune Dial.
type DialOptions struct {
	apidial.Options
	// Shuffle reorders the addresses (default: uniformly at random, to
	// spread agents over controllers).
	Shuffle func([]string)
}

// Dial connects to one of addrs, tried in random order with staggered
// parallel attempts; discard (may be nil) closes connections that won
// too late.
func Dial[T any](ctx context.Context, addrs []string, dial apidial.Func[T], discard func(T), o DialOptions) (T, string, error) {
	addrs = slices.Clone(addrs)
	if o.Shuffle == nil {
		o.Shuffle = func(a []string) { rand.Shuffle(len(a), func(i, j int) { a[i], a[j] = a[j], a[i] }) }
	}
	o.Shuffle(addrs)
	return apidial.Dial(ctx, addrs, dial, discard, o.Options)
}

// DialFromFile is Dial with the addresses of the agent config file.
func DialFromFile[T any](ctx context.Context, path string, dial apidial.Func[T], discard func(T), o DialOptions) (T, string, error) {
	addrs, err := ReadAddresses(path)
	if err != nil {
		var zero T
		return zero, "", err
	}
	return Dial(ctx, addrs, dial, discard, o)
}
