// Package controllerconf owns the controller config file that the charm writes
// and controllerd watches: /var/lib/juju/agents/controller-<agent-id>/controller.conf.
//
// The format is the one Juju 4's controller charm writes (YAML, key
// db-bind-addresses mapping agent id to a bare host, no port), extended with
// one key of ours:
//
//	db-bind-addresses:
//	  "0": 10.6.6.6
//	  "1": 10.6.6.7
//	bootstrap-agent-id: "0"
//
// bootstrap-agent-id names the one controller that may bootstrap a new Dqlite
// cluster. The charm's leader records it once in the peer application data
// (it is never changed afterwards) and every unit passes it on in this file.
// A controller with an empty data dir bootstraps only if its own id equals it;
// every other new controller joins the listed peers. That is how exactly one
// cluster is ever formed per application, whatever the hook interleaving.
//
// Two more keys describe this controller's own API addresses, which
// controllerd publishes into the controller database for agents and clients:
//
//	api-hosts: [10.6.6.6, 203.0.113.5]      # every usable address of the unit (clients)
//	api-agent-hosts: [10.6.6.6]             # the unit's addresses in the `api` binding's space (agents)
//
// An empty api-agent-hosts while api-hosts is not empty means the unit has no
// address in the api binding's space: agents then get all of its addresses
// (Juju 3.6's per-controller fallback for juju-mgmt-space).
//
// Juju reads the file with yaml.v2 into a struct that ignores unknown keys, so
// the extra keys do not disturb a Juju agent reading the same file.
package controllerconf

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// FileName is the base name of the controller config file.
const FileName = "controller.conf"

// DefaultAgentsDir is where Juju keeps per-agent directories.
const DefaultAgentsDir = "/var/lib/juju/agents"

// Path returns the production path of the config file for a controller.
func Path(agentsDir, agentID string) string {
	return filepath.Join(agentsDir, "controller-"+agentID, FileName)
}

// Config is the content of controller.conf.
type Config struct {
	// DBBindAddresses maps controller agent id to the host (an IP literal,
	// IPv6 unbracketed, no port) that controller's Dqlite node binds to.
	DBBindAddresses map[string]string `yaml:"db-bind-addresses"`
	// BootstrapAgentID is the agent id of the only controller allowed to
	// bootstrap a new cluster; empty when the charm has not chosen one yet.
	BootstrapAgentID string `yaml:"bootstrap-agent-id,omitempty"`
	// APIHosts are all of this controller's usable addresses, for clients.
	APIHosts []string `yaml:"api-hosts,omitempty"`
	// APIAgentHosts are this controller's addresses in the space of its
	// `api` endpoint binding, for agents.
	APIAgentHosts []string `yaml:"api-agent-hosts,omitempty"`
}

// ValidateAgentID reports whether id is a controller agent id: a
// non-negative decimal integer without sign or leading zeros. Ids end up in
// file paths and process arguments, so anything else is refused.
func ValidateAgentID(id string) error {
	if id == "" {
		return errors.New("agent id is empty")
	}
	if len(id) > 9 {
		return fmt.Errorf("agent id %q is too long", id)
	}
	for _, r := range id {
		if r < '0' || r > '9' {
			return fmt.Errorf("agent id %q is not a non-negative integer", id)
		}
	}
	if len(id) > 1 && id[0] == '0' {
		return fmt.Errorf("agent id %q has a leading zero", id)
	}
	return nil
}

// ValidateHost reports whether host is an IP literal usable as a bind
// address: IPv4 or unbracketed IPv6, without zone or port, and neither
// unspecified nor multicast.
func ValidateHost(host string) error {
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("address %q is not an IP literal", host)
	}
	if addr.Zone() != "" {
		return fmt.Errorf("address %q has a zone", host)
	}
	if addr.Is4In6() {
		return fmt.Errorf("address %q is an IPv4-mapped IPv6 address", host)
	}
	if addr.IsUnspecified() || addr.IsMulticast() {
		return fmt.Errorf("address %q cannot be bound by one node", host)
	}
	if addr.String() != host {
		return fmt.Errorf("address %q is not in canonical form (%s)", host, addr)
	}
	return nil
}

// Validate checks every id and address in c.
func (c *Config) Validate() error {
	for _, id := range c.AgentIDs() {
		if err := ValidateAgentID(id); err != nil {
			return err
		}
		if err := ValidateHost(c.DBBindAddresses[id]); err != nil {
			return fmt.Errorf("controller %s: %w", id, err)
		}
	}
	if c.BootstrapAgentID != "" {
		if err := ValidateAgentID(c.BootstrapAgentID); err != nil {
			return fmt.Errorf("bootstrap-agent-id: %w", err)
		}
	}
	for key, hosts := range map[string][]string{"api-hosts": c.APIHosts, "api-agent-hosts": c.APIAgentHosts} {
		for _, h := range hosts {
			if err := ValidateHost(h); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
		}
	}
	return nil
}

// AgentIDs returns the agent ids of c in numeric order.
func (c *Config) AgentIDs() []string {
	return SortedAgentIDs(c.DBBindAddresses)
}

// SortedAgentIDs returns the keys of m, agent ids, in numeric order.
func SortedAgentIDs[V any](m map[string]V) []string {
	return slices.SortedFunc(maps.Keys(m), CompareAgentIDs)
}

// CompareAgentIDs orders agent ids numerically (anything else in byte
// order), for slices.SortFunc.
func CompareAgentIDs(a, b string) int {
	na, errA := strconv.Atoi(a)
	nb, errB := strconv.Atoi(b)
	if errA == nil && errB == nil && na != nb {
		return cmp.Compare(na, nb)
	}
	return strings.Compare(a, b)
}

// Equal reports whether c and o hold the same configuration.
func (c *Config) Equal(o *Config) bool {
	if c.BootstrapAgentID != o.BootstrapAgentID || len(c.DBBindAddresses) != len(o.DBBindAddresses) ||
		!slices.Equal(c.APIHosts, o.APIHosts) || !slices.Equal(c.APIAgentHosts, o.APIAgentHosts) {
		return false
	}
	for id, host := range c.DBBindAddresses {
		if other, ok := o.DBBindAddresses[id]; !ok || other != host {
			return false
		}
	}
	return true
}

// Parse decodes and validates the content of a config file. Empty content
// (the file Juju's install hook leaves behind) is a valid, empty Config.
func Parse(data []byte) (*Config, error) {
	var c Config
	if len(bytes.TrimSpace(data)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("cannot parse controller config: %w", err)
		}
		// A second document would be silently ignored by Juju's reader;
		// refuse it instead of guessing which one the author meant.
		var extra yaml.Node
		if err := dec.Decode(&extra); err == nil {
			return nil, errors.New("cannot parse controller config: more than one YAML document")
		}
	}
	if c.DBBindAddresses == nil {
		c.DBBindAddresses = map[string]string{}
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid controller config: %w", err)
	}
	return &c, nil
}

// Marshal encodes c in a canonical form: block style, keys sorted by agent id,
// so the same configuration always yields the same bytes.
func Marshal(c *Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("cannot marshal controller config: %w", err)
	}
	addrs := &yaml.Node{Kind: yaml.MappingNode}
	for _, id := range c.AgentIDs() {
		addrs.Content = append(addrs.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: id, Style: yaml.SingleQuotedStyle},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: c.DBBindAddresses[id]},
		)
	}
	root := &yaml.Node{Kind: yaml.MappingNode}
	root.Content = append(root.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Value: "db-bind-addresses"}, addrs)
	if c.BootstrapAgentID != "" {
		root.Content = append(root.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: "bootstrap-agent-id"},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: c.BootstrapAgentID, Style: yaml.SingleQuotedStyle})
	}
	for _, kv := range []struct {
		key   string
		hosts []string
	}{{"api-hosts", c.APIHosts}, {"api-agent-hosts", c.APIAgentHosts}} {
		if len(kv.hosts) == 0 {
			continue
		}
		list := &yaml.Node{Kind: yaml.SequenceNode}
		for _, h := range kv.hosts {
			list.Content = append(list.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: h})
		}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: kv.key}, list)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, fmt.Errorf("cannot marshal controller config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("cannot marshal controller config: %w", err)
	}
	return buf.Bytes(), nil
}

// Read reads and parses the file at path. A missing file is reported as an
// error wrapping fs.ErrNotExist so callers can treat it as "no config yet".
func Read(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read controller config: %w", err)
	}
	return Parse(data)
}

// Write writes c to path atomically when its content differs from what is
// there, and reports whether it wrote. An unchanged file is left alone so
// that its watchers are not woken for nothing.
func Write(path string, c *Config) (changed bool, err error) {
	data, err := Marshal(c)
	if err != nil {
		return false, err
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	if err := WriteFileAtomic(path, data, 0o600); err != nil {
		return false, err
	}
	return true, nil
}

// WriteFileAtomic replaces path with data so that a reader (or a crash at any
// point) sees either the old content or the new, never a mix: the data goes
// to a temporary file in the same directory, which is synced, renamed over
// path, and then the directory is synced so the rename itself is durable.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create directory for %s: %w", base, err)
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("cannot create temporary file for %s: %w", base, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("cannot set mode of %s: %w", tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("cannot write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cannot sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cannot close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("cannot replace %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cannot open directory of %s: %w", base, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cannot sync directory of %s: %w", base, err)
	}
	return nil
}

// IsTempName reports whether name is one of WriteFileAtomic's temporary
// files, so a directory watcher can ignore them.
func IsTempName(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
}
