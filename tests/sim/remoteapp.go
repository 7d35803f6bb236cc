package sim

import "fmt"

// A relation to another application, modelled as far as the charm under
// test sees it: the remote application is a subordinate related over a
// container-scoped endpoint (grafana-agent or opentelemetry-collector over
// cos-agent), its units run no hooks, and each of them is only a name and a
// data bag. In Juju a container-scoped relation pairs each principal unit
// with the subordinate unit on its own machine, and that subordinate is the
// only remote unit the principal sees (juju/juju: state/relationunit.go,
// EnterScope: "If the unit is a principal and the relation has container
// scope, EnterScope will also create the required subordinate unit"; canonical/grafana-agent-operator:
// lib/charms/grafana_agent/v0/cos_agent.py relies on "for subordinate
// relations, the only remote unit visible to this unit is the principal
// unit that this unit is attached to"). The principal's agent then runs
// <endpoint>-relation-created, and -joined and -changed for that one unit,
// with JUJU_REMOTE_APP naming the remote application.
//
// Not modelled: hooks of the remote side (its unit enters scope at once,
// where Juju's subordinate agent first installs; the principal sees the
// join sooner, which a charm that writes its cos-agent data on every hook
// does not depend on), application data (neither side's application bag
// is kept apart from the other), removing the relation.

// remoteApp is the remote side of a non-peer relation.
type remoteApp struct {
	name string
	// subordinates maps a principal unit to its subordinate unit.
	subordinates map[string]string
	next         int
}

// Relate relates the application's endpoint (provides or requires in
// metadata.yaml) to a subordinate application named remote (juju integrate
// <app>:<endpoint> <remote>): every unit, now and later, gets a
// subordinate unit <remote>/<n> on its machine once it enters the
// relation's scope.
func (m *Model) Relate(endpoint, remote string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, req := m.meta.Requires[endpoint]
	_, prov := m.meta.Provides[endpoint]
	if !req && !prov {
		return fmt.Errorf("cannot relate: application %q has no provides or requires endpoint %q", m.app, endpoint)
	}
	if remote == "" || remote == m.app {
		return fmt.Errorf("cannot relate: invalid remote application %q", remote)
	}
	for _, r := range m.relations {
		if r.endpoint == endpoint && r.remote != nil && r.remote.name == remote {
			return fmt.Errorf("cannot relate: relation %s:%s %s already exists", m.app, endpoint, remote)
		}
	}
	r := &relation{id: len(m.relations), endpoint: endpoint,
		scope: map[string]bool{}, unitData: map[string]map[string]string{}, unitVer: map[string]int{}, appData: map[string]string{},
		remote: &remoteApp{name: remote, subordinates: map[string]string{}}}
	m.relations = append(m.relations, r)
	for _, u := range m.units {
		u.joined[r.id] = map[string]bool{}
		u.seenUnit[r.id] = map[string]int{}
	}
	m.notifyLocked()
	return nil
}

// RemoteUnits lists the subordinate units of the relation of endpoint to
// remote, principal unit → subordinate unit.
func (m *Model) RemoteUnits(endpoint, remote string) map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, r := range m.relations {
		if r.endpoint == endpoint && r.remote != nil && r.remote.name == remote {
			for p, s := range r.remote.subordinates {
				out[p] = s
			}
		}
	}
	return out
}

// SetRemoteUnitData replaces the data bag of a remote unit (what its
// charm would have written), as a committed change its principal sees in
// relation-changed.
func (m *Model) SetRemoteUnitData(endpoint, remoteUnit string, bag map[string]string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.relations {
		if r.endpoint != endpoint || r.remote == nil {
			continue
		}
		for _, s := range r.remote.subordinates {
			if s == remoteUnit {
				r.unitData[s] = copyMap(bag)
				r.unitVer[s]++
				m.notifyLocked()
				return nil
			}
		}
	}
	return fmt.Errorf("cannot set relation data: no remote unit %q on endpoint %q", remoteUnit, endpoint)
}

// remoteAppOf is JUJU_REMOTE_APP for a hook of relation r.
func (m *Model) remoteAppOf(r *relation) string {
	if r.remote != nil {
		return r.remote.name
	}
	return m.app
}

// seesLocked reports whether unit u sees remote as a member of r: every
// other unit of a peer relation, only its own subordinate otherwise.
func (m *Model) seesLocked(r *relation, u *unit, remote string) bool {
	if r.remote == nil {
		return remote != u.name
	}
	return r.remote.subordinates[u.name] == remote
}

// enterScopeLocked puts u in r's scope and, for a container-scoped
// relation to a subordinate, deploys the subordinate unit on u's machine,
// which enters the scope with it.
func (m *Model) enterScopeLocked(u *unit, r *relation) {
	r.scope[u.name] = true
	if r.remote == nil || r.remote.subordinates[u.name] != "" {
		return
	}
	sub := fmt.Sprintf("%s/%d", r.remote.name, r.remote.next)
	r.remote.next++
	r.remote.subordinates[u.name] = sub
	r.scope[sub] = true
	if r.unitData[sub] == nil {
		r.unitData[sub] = map[string]string{}
	}
	addrs := u.machine.addresses()
	if len(addrs) > 0 {
		// The subordinate shares the principal's machine, so Juju gives
		// it the same ingress address.
		r.unitData[sub]["ingress-address"] = addrs[0]
	}
	r.unitVer[sub]++
}
