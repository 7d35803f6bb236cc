package sim

import (
	"net/netip"
	"sort"
)

// network-get's display types (docs/juju.md "Hook tools"; testdata/fixtures/INDEX.md "Formatter rules"): the
// YAML form carries the legacy duplicate keys, the JSON form does not.
type ngAddress struct {
	Hostname string `json:"hostname" yaml:"hostname"`
	Value    string `json:"value" yaml:"value"`
	CIDR     string `json:"cidr" yaml:"cidr"`
	Address  string `json:"-" yaml:"address"`
}

type ngDevice struct {
	MAC           string      `json:"mac-address" yaml:"mac-address"`
	InterfaceName string      `json:"interface-name" yaml:"interface-name"`
	Addresses     []ngAddress `json:"addresses" yaml:"addresses"`
	MACLegacy     string      `json:"-" yaml:"macaddress"`
	NameLegacy    string      `json:"-" yaml:"interfacename"`
}

type ngInfo struct {
	Bind    []ngDevice `json:"bind-addresses,omitempty" yaml:"bind-addresses,omitempty"`
	Egress  []string   `json:"egress-subnets,omitempty" yaml:"egress-subnets,omitempty"`
	Ingress []string   `json:"ingress-addresses,omitempty" yaml:"ingress-addresses,omitempty"`
}

// scopeRank is Juju 4's ingress rank (docs/juju.md#addresses-and-bindings): local-cloud IPv4 1, local-cloud
// IPv6 2, public IPv4 3, public IPv6 4; machine-local and link-local never.
func scopeRank(a netip.Addr) int {
	switch {
	case a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsUnspecified():
		return 0
	case a.IsPrivate() && a.Is4():
		return 1
	case a.IsPrivate():
		return 2
	case a.Is4():
		return 3
	default:
		return 4
	}
}

// spaceOfLocked is the space an endpoint is bound to: its binding, else the
// application's default space (docs/juju.md#addresses-and-bindings).
func (m *Model) spaceOfLocked(endpoint string) string {
	if s := m.bindings[endpoint]; s != "" {
		return s
	}
	return m.opts.DefaultSpace
}

// networkInfoLocked computes network-get's answer for a unit's endpoint
// from its machine's addresses (docs/juju.md#addresses-and-bindings).
func (m *Model) networkInfoLocked(u *unit, endpoint string) ngInfo {
	space := m.spaceOfLocked(endpoint)
	var info ngInfo
	var cands []netip.Addr
	for _, n := range u.machine.nics {
		if n.subnet.Space != space || scopeRank(n.addr) == 0 {
			continue
		}
		host := n.addr.String()
		hostname := host // Juju 4: hostname is the IP itself
		if m.opts.Juju36Ingress {
			hostname = ""
		}
		info.Bind = append(info.Bind, ngDevice{
			MAC: n.mac, InterfaceName: n.name, MACLegacy: n.mac, NameLegacy: n.name,
			Addresses: []ngAddress{{Hostname: hostname, Value: host, CIDR: n.subnet.prefix.String(), Address: host}},
		})
		cands = append(cands, n.addr)
	}
	if m.opts.Juju36Ingress {
		// 3.6: every address of the space, most public first, then by host.
		sort.SliceStable(cands, func(i, j int) bool {
			pi, pj := !cands[i].IsPrivate(), !cands[j].IsPrivate()
			if pi != pj {
				return pi
			}
			return cands[i].Less(cands[j])
		})
	} else {
		best := 0
		for _, a := range cands {
			if r := scopeRank(a); best == 0 || r < best {
				best = r
			}
		}
		var tier []netip.Addr
		for _, a := range cands {
			if scopeRank(a) == best {
				tier = append(tier, a)
			}
		}
		sort.Slice(tier, func(i, j int) bool { return tier[i].Less(tier[j]) })
		cands = tier
	}
	for _, a := range cands {
		info.Ingress = append(info.Ingress, a.String())
	}
	if len(cands) > 0 {
		info.Egress = []string{netip.PrefixFrom(cands[0], cands[0].BitLen()).String()}
	}
	return info
}
