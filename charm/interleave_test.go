package charm_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/controllerconf"
)

// deploySim runs `juju deploy -n 3` in one random interleaving: each unit's
// hooks in Juju's per-unit order (install, relation-created, leader-elected
// for the leader, config-changed, start, then joined/changed per peer as they
// enter scope, changed whenever a peer's or the application's data changes),
// units interleaved at random, leadership moving at random (including in the
// middle of a hook, whose application-data write is then refused and the
// hook retried), units starting without an address and getting one later
// (juju bind, config-changed), and update-status anywhere.
type deploySim struct {
	t      *testing.T
	m      *model
	rng    *rand.Rand
	units  []*unit
	queues map[string][]hookEnv
	// pendingFix holds the address a unit gets when the operator binds.
	pendingFix map[string]string
	// bootstrap is the first committed bootstrap-agent-id.
	bootstrap string
	// listed is every agent id ever committed in db-bind-addresses.
	listed map[string]bool
	steps  int
	// victim is the unit being removed (remove-unit phase), victimConf its
	// controller.conf when it first learnt it was leaving.
	victim     *unit
	victimConf []byte
}

func newDeploySim(t *testing.T, seed uint64) *deploySim {
	s := &deploySim{
		t:          t,
		m:          newModel(t),
		rng:        rand.New(rand.NewPCG(seed, 0x5eed)),
		queues:     map[string][]hookEnv{},
		pendingFix: map[string]string{},
		listed:     map[string]bool{},
	}
	for n := range 3 {
		addr := fmt.Sprintf("10.0.%d.%d", n, n+10)
		u := s.m.addUnit(n, addr)
		if s.rng.IntN(3) == 0 {
			u.setAddresses() // no address in the binding's space yet
			s.pendingFix[u.name] = addr
		}
		s.units = append(s.units, u)
	}
	leader := s.units[s.rng.IntN(3)]
	s.m.leader = leader.name
	for _, u := range s.units {
		q := []hookEnv{{hook: "install"}, {hook: "db-cluster-relation-created"}}
		if u == leader {
			q = append(q, hookEnv{hook: "leader-elected"})
		}
		s.queues[u.name] = append(q, hookEnv{hook: "config-changed"}, hookEnv{hook: "start"})
	}
	s.m.loseLeadershipOnIsLeader = func(m *model, u *unit) {
		if m.leader == u.name && s.rng.IntN(8) == 0 {
			s.moveLeadership()
		}
	}
	return s
}

func (s *deploySim) unit(name string) *unit { return s.m.units[name] }

func (s *deploySim) enqueue(u *unit, h hookEnv) {
	if slices.Contains(s.queues[u.name], h) {
		return // Juju coalesces pending changes
	}
	s.queues[u.name] = append(s.queues[u.name], h)
}

func (s *deploySim) moveLeadership() {
	var others []*unit
	for _, u := range s.units {
		if u.name != s.m.leader {
			others = append(others, u)
		}
	}
	next := others[s.rng.IntN(len(others))]
	s.m.leader = next.name
	s.enqueue(next, hookEnv{hook: "leader-elected"})
}

// step runs one hook; it returns false when nothing is left to do.
func (s *deploySim) step() bool {
	s.steps++
	if s.steps > 5000 {
		s.t.Fatal("the model did not settle")
	}
	switch r := s.rng.IntN(40); {
	case r == 0:
		s.moveLeadership()
	case r == 1:
		s.enqueue(s.units[s.rng.IntN(len(s.units))], hookEnv{hook: "update-status"})
	case r == 2:
		s.fixOneBinding()
	}
	var ready []*unit
	for _, u := range s.units {
		if len(s.queues[u.name]) > 0 {
			ready = append(ready, u)
		}
	}
	if len(ready) == 0 {
		return s.fixOneBinding()
	}
	u := ready[s.rng.IntN(len(ready))]
	h := s.queues[u.name][0]
	s.queues[u.name] = s.queues[u.name][1:]
	if h.hook == "db-cluster-relation-joined" && !slices.Contains(u.members, h.remoteUnit) {
		u.members = append(u.members, h.remoteUnit)
	}
	if h.hook == "db-cluster-relation-created" {
		u.inScope = true
	}
	if h.hook == "db-cluster-relation-departed" {
		// relation-list no longer shows the departed unit (docs/juju.md "Hook tools").
		u.members = slices.DeleteFunc(u.members, func(n string) bool { return n == h.remoteUnit })
		if u == s.victim && s.victimConf == nil {
			s.victimConf, _ = os.ReadFile(u.confPath())
		}
	}
	res, err := s.m.run(u, h)
	if err != nil {
		// Leadership moved during the hook: relation-set --app refuses, or
		// the commit does. Anything else is a bug.
		if !strings.Contains(err.Error(), "lost leadership") && !strings.Contains(err.Error(), "cannot write relation settings") {
			s.t.Fatalf("%s %s: %v", u.name, h.hook, err)
		}
		// Juju retries a failed hook.
		s.queues[u.name] = append([]hookEnv{h}, s.queues[u.name]...)
		return true
	}
	if h.hook == "db-cluster-relation-created" {
		for _, o := range s.units {
			if o != u && o.inScope {
				s.enqueue(o, hookEnv{hook: "db-cluster-relation-joined", remoteUnit: u.name})
				s.enqueue(o, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u.name})
				s.enqueue(u, hookEnv{hook: "db-cluster-relation-joined", remoteUnit: o.name})
				s.enqueue(u, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: o.name})
			}
		}
	}
	if u == s.victim && h.hook == "db-cluster-relation-departed" && len(u.members) == 0 {
		u.inScope = false // it has left the relation
	}
	if u == s.victim && h.hook == "remove" {
		s.units = slices.DeleteFunc(s.units, func(o *unit) bool { return o == u })
		delete(s.queues, u.name)
		if s.m.leader == u.name {
			s.moveLeadership() // its lease expires
		}
		return true
	}
	if res.unitChanged {
		for _, o := range s.units {
			if o != u && slices.Contains(o.members, u.name) {
				s.enqueue(o, hookEnv{hook: "db-cluster-relation-changed", remoteUnit: u.name})
			}
		}
	}
	if res.appChanged {
		for _, o := range s.units {
			if o.inScope {
				s.enqueue(o, hookEnv{hook: "db-cluster-relation-changed"})
			}
		}
	}
	s.check()
	return true
}

// fixOneBinding gives one address-less unit its address (juju bind fires
// config-changed); it returns false when every unit has one.
func (s *deploySim) fixOneBinding() bool {
	for _, u := range s.units {
		if addr, ok := s.pendingFix[u.name]; ok {
			delete(s.pendingFix, u.name)
			u.setAddresses(addr)
			s.enqueue(u, hookEnv{hook: "config-changed"})
			return true
		}
	}
	return false
}

// removeUnit starts `juju remove-unit` of a random unit: every other unit
// gets relation-departed for it; it gets relation-departed for every other
// unit with itself as the departing unit, then stop and remove.
func (s *deploySim) removeUnit() {
	s.victim = s.units[s.rng.IntN(len(s.units))]
	for _, o := range s.units {
		if o == s.victim {
			continue
		}
		s.enqueue(o, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: s.victim.name, departing: s.victim.name})
		s.enqueue(s.victim, hookEnv{hook: "db-cluster-relation-departed", remoteUnit: o.name, departing: s.victim.name})
	}
	s.enqueue(s.victim, hookEnv{hook: "stop"})
	s.enqueue(s.victim, hookEnv{hook: "remove"})
}

// check asserts the invariants after every committed hook.
func (s *deploySim) check() {
	t := s.t
	t.Helper()
	if id := s.m.appData["bootstrap-agent-id"]; id != "" {
		if s.bootstrap == "" {
			s.bootstrap = id
		} else if id != s.bootstrap {
			t.Fatalf("bootstrap-agent-id changed from %s to %s", s.bootstrap, id)
		}
	} else if s.bootstrap != "" {
		t.Fatalf("bootstrap-agent-id %s was removed", s.bootstrap)
	}
	if raw := s.m.appData["db-bind-addresses"]; raw != "" {
		list := mustJSON(t, raw)
		if len(list) > 0 && s.bootstrap == "" {
			t.Fatalf("db-bind-addresses %s committed without a bootstrap-agent-id", raw)
		}
		gone := ""
		if s.victim != nil {
			gone = s.victim.agentID()
		}
		if s.bootstrap != "" && s.bootstrap != gone && list[s.bootstrap] == "" {
			t.Fatalf("db-bind-addresses %s lacks the bootstrap node %s", raw, s.bootstrap)
		}
		for id := range s.listed {
			if list[id] == "" && id != gone {
				t.Fatalf("db-bind-addresses %s dropped live unit %s", raw, id)
			}
		}
		for id := range list {
			s.listed[id] = true
		}
	}
	if s.victimConf != nil {
		if data, _ := os.ReadFile(s.victim.confPath()); !bytes.Equal(data, s.victimConf) {
			t.Fatalf("the leaving unit rewrote its controller.conf:\n%s\nwas:\n%s", data, s.victimConf)
		}
	}
	for _, u := range s.units {
		data, err := os.ReadFile(u.confPath())
		if err != nil {
			continue
		}
		c, err := controllerconf.Parse(data)
		if err != nil {
			t.Fatalf("%s: %v", u.name, err)
		}
		if c.BootstrapAgentID != "" && c.BootstrapAgentID != s.bootstrap {
			t.Fatalf("%s controller.conf names bootstrap node %s, the application data %s", u.name, c.BootstrapAgentID, s.bootstrap)
		}
		if len(c.DBBindAddresses) > 0 && c.BootstrapAgentID == "" {
			t.Fatalf("%s controller.conf lists peers without a bootstrap node", u.name)
		}
	}
}

// deploy -n 3 under any interleaving of hooks and leader changes: exactly one
// bootstrap id is chosen, and it never changes.
func TestDeployThree_OneBootstrapIDThatNeverChanges(t *testing.T) {
	seeds := 150
	if testing.Short() {
		seeds = 20
	}
	for seed := range uint64(seeds) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			s := newDeploySim(t, seed)
			for s.step() {
			}
			if s.bootstrap == "" {
				t.Fatal("no bootstrap node was ever chosen")
			}
			want := map[string]string{"0": "10.0.0.10", "1": "10.0.1.11", "2": "10.0.2.12"}
			for _, u := range s.units {
				c := u.readConf(t)
				if c.BootstrapAgentID != s.bootstrap {
					t.Fatalf("%s: bootstrap-agent-id %q, want %q", u.name, c.BootstrapAgentID, s.bootstrap)
				}
				for id, addr := range want {
					if c.DBBindAddresses[id] != addr {
						t.Fatalf("%s: settled controller.conf %v, want %v", u.name, c.DBBindAddresses, want)
					}
				}
			}
		})
	}
}

// remove-unit of one of three units under any interleaving: only the leaving
// unit is dropped from the list, the bootstrap id stays, every remaining
// file settles on the two others, and the removed unit's data dir is wiped.
func TestRemoveOneOfThree_DropsOnlyTheLeavingUnit(t *testing.T) {
	seeds := 100
	if testing.Short() {
		seeds = 10
	}
	for seed := range uint64(seeds) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			s := newDeploySim(t, seed)
			for s.step() {
			}
			s.removeUnit()
			for s.step() {
			}
			gone := s.victim.agentID()
			if _, err := os.Stat(s.victim.jujuDir() + "/dqlite"); !os.IsNotExist(err) {
				t.Fatalf("the removed unit's data dir survived: %v", err)
			}
			list := mustJSON(t, s.m.appData["db-bind-addresses"])
			if len(list) != 2 || list[gone] != "" {
				t.Fatalf("db-bind-addresses %v after removing unit %s", list, gone)
			}
			if s.m.appData["bootstrap-agent-id"] != s.bootstrap {
				t.Fatalf("bootstrap-agent-id changed to %q", s.m.appData["bootstrap-agent-id"])
			}
			for _, u := range s.units {
				c := u.readConf(t)
				if len(c.DBBindAddresses) != 2 || c.DBBindAddresses[gone] != "" || c.BootstrapAgentID != s.bootstrap {
					t.Fatalf("%s: settled controller.conf %+v", u.name, c)
				}
			}
		})
	}
}
