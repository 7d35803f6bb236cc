// Package apiaddr is the API address model: each controller publishes its
// API addresses (host:port, scope, whether agents may use it) into the
// controller database, and agents and clients get lists built from all
// controllers' addresses.
//
// The management space (Juju's juju-mgmt-space, here the charm's `api`
// endpoint binding) limits the agent list: a controller's address is for
// agents when it is in that space. A controller with no address in the
// space keeps all of its addresses for agents (Juju 3.6's per-controller
// fallback), and is reported so a status can say so. The client list is
// never filtered. Agents' addresses are ordered cloud-local first, clients'
// public first (Juju's PrioritizedForScope).
package apiaddr

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/dbtx"
)

// DefaultPort is the API port.
const DefaultPort = 17070

// Scope is where an address is reachable from, named as in Juju.
type Scope string

// Scopes.
const (
	ScopeUnknown      Scope = ""
	ScopePublic       Scope = "public"
	ScopeCloudLocal   Scope = "local-cloud"
	ScopeFanLocal     Scope = "local-fan"
	ScopeMachineLocal Scope = "local-machine"
	ScopeLinkLocal    Scope = "link-local"
)

var (
	cloudLocal = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("fc00::/7"),
	}
	fanLocal = netip.MustParsePrefix("240.0.0.0/4")
)

// ScopeOf classifies a host (an IP literal or a name).
func ScopeOf(host string) Scope {
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		if strings.EqualFold(host, "localhost") {
			return ScopeMachineLocal
		}
		return ScopeUnknown
	}
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return ScopeMachineLocal
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
		return ScopeLinkLocal
	case ip.Is4() && fanLocal.Contains(ip):
		return ScopeFanLocal
	}
	for _, p := range cloudLocal {
		if p.Contains(ip) {
			return ScopeCloudLocal
		}
	}
	return ScopePublic
}

// rank orders scopes for agents (cloud-local first) and clients (public
// first). Machine- and link-local addresses come last: usable only from
// the controller's own machine or link, but not dropped, so loopback-only
// test deployments still work.
func rank(s Scope, forClients bool) int {
	order := []Scope{ScopeCloudLocal, ScopeFanLocal, ScopePublic, ScopeUnknown, ScopeLinkLocal, ScopeMachineLocal}
	if forClients {
		order = []Scope{ScopePublic, ScopeCloudLocal, ScopeFanLocal, ScopeUnknown, ScopeLinkLocal, ScopeMachineLocal}
	}
	return slices.Index(order, s)
}

// Address is one published API address.
type Address struct {
	HostPort string `json:"address"`
	Scope    Scope  `json:"scope"`
	IsAgent  bool   `json:"is-agent"`
}

// Controller is one controller's published addresses.
type Controller struct {
	ID        string    `json:"controller-id"`
	Addresses []Address `json:"addresses"`
	// AgentFallback: the management space is set but none of this
	// controller's addresses is in it, so all are given to agents.
	AgentFallback bool `json:"agent-fallback"`
}

// Input is what a controller knows of its own addresses (from the charm).
type Input struct {
	Port int
	// Hosts are all of the unit's addresses (for clients).
	Hosts []string
	// MgmtSpace is true when the management space is set (the `api`
	// endpoint is bound to a space); MgmtHosts are then this unit's
	// addresses in it (the `api` binding's addresses), possibly none.
	MgmtSpace bool
	MgmtHosts []string
}

// Build classifies a controller's addresses and marks those agents may use.
func Build(id string, in Input) (Controller, error) {
	if id == "" {
		return Controller{}, errors.New("cannot build API addresses: empty controller id")
	}
	if in.Port <= 0 || in.Port > 65535 {
		return Controller{}, fmt.Errorf("cannot build API addresses: invalid port %d", in.Port)
	}
	inMgmt := map[string]bool{}
	var hosts []string
	add := func(raw string) (string, error) {
		h, err := normHost(raw)
		if err != nil || h == "" {
			return "", err
		}
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
		return h, nil
	}
	for _, raw := range in.Hosts {
		if _, err := add(raw); err != nil {
			return Controller{}, err
		}
	}
	for _, raw := range in.MgmtHosts {
		h, err := add(raw)
		if err != nil {
			return Controller{}, err
		}
		if h != "" {
			inMgmt[h] = true
		}
	}
	c := Controller{ID: id}
	c.AgentFallback = in.MgmtSpace && len(inMgmt) == 0
	for _, h := range hosts {
		c.Addresses = append(c.Addresses, Address{
			HostPort: net.JoinHostPort(h, strconv.Itoa(in.Port)),
			Scope:    ScopeOf(h),
			IsAgent:  !in.MgmtSpace || c.AgentFallback || inMgmt[h],
		})
	}
	return c, nil
}

// normHost trims a host and writes IP literals canonically ("" for blank).
func normHost(raw string) (string, error) {
	h := strings.Trim(strings.TrimSpace(raw), "[]")
	if h == "" {
		return "", nil
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Unmap().String(), nil
	}
	if strings.ContainsAny(h, " /:") {
		return "", fmt.Errorf("cannot build API addresses: invalid host %q", raw)
	}
	return h, nil
}

// Compute builds the lists from all controllers' addresses. A controller
// that published no agent address at all (which Build never produces)
// still gets all of its addresses in the agent list, as a fallback.
func Compute(cs []Controller) apiwire.Lists {
	type entry struct {
		a    Address
		ctl  string
		rank int
	}
	var agents, clients []entry
	l := apiwire.Lists{Agents: []string{}, Clients: []string{}, AgentFallback: []string{}}
	sorted := slices.Clone(cs)
	slices.SortFunc(sorted, func(a, b Controller) int { return controllerconf.CompareAgentIDs(a.ID, b.ID) })
	for _, c := range sorted {
		anyAgent := slices.ContainsFunc(c.Addresses, func(a Address) bool { return a.IsAgent })
		if len(c.Addresses) > 0 && (c.AgentFallback || !anyAgent) {
			l.AgentFallback = append(l.AgentFallback, c.ID)
		}
		for _, a := range c.Addresses {
			clients = append(clients, entry{a, c.ID, rank(a.Scope, true)})
			if a.IsAgent || !anyAgent {
				agents = append(agents, entry{a, c.ID, rank(a.Scope, false)})
			}
		}
	}
	order := func(es []entry) []string {
		// Stable: by scope, then controller, then as published.
		slices.SortStableFunc(es, func(x, y entry) int {
			if x.rank != y.rank {
				return cmp.Compare(x.rank, y.rank)
			}
			return controllerconf.CompareAgentIDs(x.ctl, y.ctl)
		})
		out := []string{}
		for _, e := range es {
			if !slices.Contains(out, e.a.HostPort) {
				out = append(out, e.a.HostPort)
			}
		}
		return out
	}
	l.Agents, l.Clients = order(agents), order(clients)
	h := sha256.New()
	for _, part := range [][]string{l.Agents, l.Clients, l.AgentFallback} {
		fmt.Fprintf(h, "%q\n", part)
	}
	l.Version = hex.EncodeToString(h.Sum(nil))[:16]
	return l
}

const schema = `CREATE TABLE IF NOT EXISTS controller_api_address (
    controller_id  TEXT NOT NULL,
    address        TEXT NOT NULL,
    is_agent       BOOLEAN NOT NULL,
    scope          TEXT NOT NULL,
    agent_fallback BOOLEAN NOT NULL DEFAULT 0,
    position       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (controller_id, address)
)`

// Store keeps the published addresses in the controller database.
type Store struct {
	t *dbtx.Table
}

// NewStore returns a store on db (the controller database). The table is
// created on first use; EnsureSchema does it up front.
func NewStore(db *sql.DB) *Store { return NewStoreFrom(dbtx.Fixed(db)) }

// NewStoreFrom returns a store on whatever handle src gives at each call.
func NewStoreFrom(src dbtx.Source) *Store {
	return &Store{t: dbtx.NewTable(src, "controller_api_address", schema)}
}

// EnsureSchema creates the table if it is missing.
func (s *Store) EnsureSchema(ctx context.Context) error { return s.t.Ensure(ctx) }

// Publish replaces controller c.ID's addresses with c's, in one
// transaction (re-running it is harmless).
func (s *Store) Publish(ctx context.Context, c Controller) error {
	if c.ID == "" {
		return errors.New("cannot publish API addresses: empty controller id")
	}
	if err := s.t.Ensure(ctx); err != nil {
		return err
	}
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM controller_api_address WHERE controller_id = ?`, c.ID); err != nil {
			return err
		}
		for i, a := range c.Addresses {
			if _, err := tx.ExecContext(ctx, `INSERT INTO controller_api_address
(controller_id, address, is_agent, scope, agent_fallback, position) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (controller_id, address) DO NOTHING`,
				c.ID, a.HostPort, a.IsAgent, string(a.Scope), c.AgentFallback, i); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot publish API addresses of controller %s: %w", c.ID, err)
	}
	return nil
}

// Remove deletes a controller's addresses (the controller was removed).
func (s *Store) Remove(ctx context.Context, controllerID string) error {
	if err := s.t.Ensure(ctx); err != nil {
		return err
	}
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM controller_api_address WHERE controller_id = ?`, controllerID)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot remove API addresses of controller %s: %w", controllerID, err)
	}
	return nil
}

// RemoveExcept deletes the addresses of every controller not in keep (the
// controllers of the current config) and returns the ids it removed. Run
// it as single-instance work; a controller that has just joined may
// publish before it is listed in everybody's config, so give new ids a
// grace period before calling this with a keep list that lacks them.
func (s *Store) RemoveExcept(ctx context.Context, keep []string) ([]string, error) {
	if err := s.t.Ensure(ctx); err != nil {
		return nil, err
	}
	var removed []string
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		removed = nil
		ids, err := dbtx.Strings(ctx, tx, `SELECT DISTINCT controller_id FROM controller_api_address ORDER BY controller_id`)
		if err != nil {
			return err
		}
		var gone []string
		for _, id := range ids {
			if !slices.Contains(keep, id) {
				gone = append(gone, id)
			}
		}
		for _, id := range gone {
			if _, err := tx.ExecContext(ctx, `DELETE FROM controller_api_address WHERE controller_id = ?`, id); err != nil {
				return err
			}
		}
		removed = gone
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot remove API addresses of departed controllers: %w", err)
	}
	return removed, nil
}

// Controllers returns every controller's published addresses.
func (s *Store) Controllers(ctx context.Context) ([]Controller, error) {
	if err := s.t.Ensure(ctx); err != nil {
		return nil, err
	}
	var out []Controller
	err := s.t.Run(ctx, func(ctx context.Context, tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT controller_id, address, is_agent, scope, agent_fallback
FROM controller_api_address ORDER BY controller_id, position, address`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id, scope string
			var a Address
			var fallback bool
			if err := rows.Scan(&id, &a.HostPort, &a.IsAgent, &scope, &fallback); err != nil {
				return err
			}
			a.Scope = Scope(scope)
			if len(out) == 0 || out[len(out)-1].ID != id {
				out = append(out, Controller{ID: id})
			}
			c := &out[len(out)-1]
			c.Addresses = append(c.Addresses, a)
			c.AgentFallback = c.AgentFallback || fallback
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read API addresses: %w", err)
	}
	return out, nil
}

// Lists reads all controllers' addresses and computes the lists.
func (s *Store) Lists(ctx context.Context) (apiwire.Lists, error) {
	cs, err := s.Controllers(ctx)
	if err != nil {
		return apiwire.Lists{}, err
	}
	return Compute(cs), nil
}
