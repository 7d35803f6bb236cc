// Package probe reads a simulated model's Dqlite cluster the way an operator
// would: by running `controllerd status` and `controllerd sql` on the units'
// machines. The end-to-end tests and the demo share it.
package probe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/juju/dqlite-controller/tests/sim"
)

// Member is one Dqlite cluster member as controllerd reports it.
type Member struct {
	NodeID  string `json:"node-id"`
	Address string `json:"address"`
	Role    string `json:"role"`
}

// NodeStatus is `controllerd status --format=json` (the contract's keys).
type NodeStatus struct {
	ControllerID string `json:"controller-id"`
	NodeID       string `json:"node-id"`
	Address      string `json:"address"`
	Role         string `json:"role"`
	Member       bool   `json:"member"`
	Leader       *struct {
		NodeID  string `json:"node-id"`
		Address string `json:"address"`
	} `json:"leader"`
	Members     []Member `json:"members"`
	State       string   `json:"state"`
	Message     string   `json:"message"`
	ConfigError string   `json:"config-error"`
	// The control plane's part of the status.
	Lease        *LeaseStatus `json:"lease"`
	APIAddresses *APILists    `json:"api-addresses"`
	APINote      string       `json:"api-note"`
	APIError     string       `json:"api-error"`
}

// LeaseStatus is the singular-controller lease as a node sees it; null
// while the node's singular worker does not run.
type LeaseStatus struct {
	Holder   string `json:"holder"`
	Expiry   string `json:"expiry"`
	HeldByMe bool   `json:"held-by-me"`
}

// APILists are the API address lists a node serves.
type APILists struct {
	Agents        []string `json:"agents"`
	Clients       []string `json:"clients"`
	AgentFallback []string `json:"agent-fallback"`
	Version       string   `json:"version"`
}

// HeldByMe says whether the node's singular worker holds the lease now.
func (s NodeStatus) HeldByMe() bool { return s.Lease != nil && s.Lease.HeldByMe }

// LeaderAddress is the address of the Dqlite leader this node knows, or "".
func (s NodeStatus) LeaderAddress() string {
	if s.Leader == nil {
		return ""
	}
	return s.Leader.Address
}

// Voters lists the voter addresses, sorted.
func (s NodeStatus) Voters() []string {
	var out []string
	for _, m := range s.Members {
		if m.Role == "voter" {
			out = append(out, m.Address)
		}
	}
	sort.Strings(out)
	return out
}

// Controllerd is the path of the daemon on a unit's machine.
func Controllerd(m *sim.Model, unit string) string {
	return m.CharmDirOnMachine(unit) + "/controllerd"
}

// Status runs `controllerd status --format=json` on a unit's machine.
func Status(ctx context.Context, m *sim.Model, unit string) (NodeStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, errOut, err := m.Exec(ctx, unit, Controllerd(m, unit), "status", "--format=json")
	var st NodeStatus
	if err != nil {
		return st, fmt.Errorf("cannot get controllerd status on %s: %w: %s", unit, err, strings.TrimSpace(string(errOut)))
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("cannot parse controllerd status on %s: %w: %q", unit, err, out)
	}
	return st, nil
}

// SQLResult is `controllerd sql --format=json`.
type SQLResult struct {
	Columns      []string `json:"columns"`
	Rows         [][]any  `json:"rows"`
	RowsAffected *int64   `json:"rows-affected"`
}

// SQL runs a statement through a unit's controllerd.
func SQL(ctx context.Context, m *sim.Model, unit, stmt string) (SQLResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, errOut, err := m.Exec(ctx, unit, Controllerd(m, unit), "sql", "--format=json", stmt)
	var res SQLResult
	if err != nil {
		return res, fmt.Errorf("cannot run sql on %s: %w: %s", unit, err, strings.TrimSpace(string(errOut)))
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("cannot parse sql output on %s: %w: %q", unit, err, out)
	}
	return res, nil
}

// View is every live unit's controllerd status (or the error getting it).
type View struct {
	Nodes  map[string]NodeStatus
	Errors map[string]error
}

// Look asks every live unit of the model for its controllerd status.
func Look(ctx context.Context, m *sim.Model) View {
	v := View{Nodes: map[string]NodeStatus{}, Errors: map[string]error{}}
	st := m.Status()
	for _, u := range st.Units {
		if mc := machineOf(st, u.Machine); mc != nil && mc.Down {
			continue
		}
		s, err := Status(ctx, m, u.Name)
		if err != nil {
			v.Errors[u.Name] = err
			continue
		}
		v.Nodes[u.Name] = s
	}
	return v
}

func machineOf(st sim.Status, id int) *sim.MachineStatus {
	for i := range st.Machines {
		if st.Machines[i].ID == id {
			return &st.Machines[i]
		}
	}
	return nil
}

// OneCluster checks that the given units all run, are members, agree on one
// leader and one member list containing exactly their addresses, and that
// the number of voters is between minVoters and maxVoters.
func (v View) OneCluster(units []string, minVoters, maxVoters int) error {
	var leader string
	var members []string
	for i, u := range units {
		if err := v.Errors[u]; err != nil {
			return err
		}
		s, ok := v.Nodes[u]
		if !ok {
			return fmt.Errorf("%s: no status", u)
		}
		if !s.Member || s.State != "running" {
			return fmt.Errorf("%s: not a running member (state %q, member %v: %s)", u, s.State, s.Member, s.Message)
		}
		var addrs []string
		for _, mem := range s.Members {
			addrs = append(addrs, mem.Address+"/"+mem.Role)
		}
		sort.Strings(addrs)
		if i == 0 {
			leader, members = s.LeaderAddress(), addrs
			if leader == "" {
				return fmt.Errorf("%s: no leader", u)
			}
			if len(s.Members) != len(units) {
				return fmt.Errorf("%s: %d members %v, want %d", u, len(s.Members), addrs, len(units))
			}
			if n := len(s.Voters()); n < minVoters || n > maxVoters {
				return fmt.Errorf("%s: %d voters %v, want %d to %d", u, n, addrs, minVoters, maxVoters)
			}
			continue
		}
		if s.LeaderAddress() != leader {
			return fmt.Errorf("%s sees leader %q, %s sees %q", u, s.LeaderAddress(), units[0], leader)
		}
		if strings.Join(addrs, ",") != strings.Join(members, ",") {
			return fmt.Errorf("%s sees members %v, %s sees %v", u, addrs, units[0], members)
		}
	}
	return nil
}

// UnitOfAddress finds the unit whose machine has addr.
func UnitOfAddress(m *sim.Model, addr string) string {
	host := addr
	if i := strings.LastIndex(addr, ":"); i > 0 && !strings.HasSuffix(addr, "]") && strings.Count(addr, ":") == 1 {
		host = addr[:i]
	}
	host = strings.TrimSuffix(strings.TrimPrefix(strings.Split(host, "]:")[0], "["), "]")
	st := m.Status()
	for _, u := range st.Units {
		if mc := machineOf(st, u.Machine); mc != nil {
			for _, a := range mc.Addresses {
				if a == host {
					return u.Name
				}
			}
		}
	}
	return ""
}

// Eventually polls check until it returns nil or ctx ends, returning the
// last error.
func Eventually(ctx context.Context, every time.Duration, check func() error) error {
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(every):
		}
	}
}

// VoterRange is how many voters a healthy cluster of n nodes has: Dqlite
// aims at three; a two-node cluster may keep one voter and one spare or
// stand-by (a second voter adds no fault tolerance).
func VoterRange(n int) (lo, hi int) {
	switch {
	case n >= 3:
		return 3, 3
	case n == 2:
		return 1, 2
	default:
		return n, n
	}
}
