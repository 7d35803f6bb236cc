// Package bindaddr chooses a unit's Dqlite bind address from the addresses
// Juju reports for the db-cluster binding, and checks that the machine has
// it on one of its interfaces.
//
// Juju 4 narrows network-get's ingress-addresses to the best scope tier of
// the bound space; Juju 3.6 lists every address of the space, public ones
// first. Applying the same tiers here makes both give the same answer: the
// bind address is the one address in the best non-empty tier, and more than
// one there is ambiguous (several NICs, or a secondary/virtual address, in
// the same space), which only the operator can resolve with `juju bind`.
package bindaddr

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Tier is an address's scope rank, best first, as Juju ranks ingress
// addresses. TierNever addresses are never used.
type Tier int

// The tiers, in the order Juju prefers them.
const (
	TierNever Tier = iota
	TierLocalCloudIPv4
	TierLocalCloudIPv6
	TierPublicIPv4
	TierPublicIPv6
)

func (t Tier) String() string {
	switch t {
	case TierLocalCloudIPv4:
		return "local-cloud IPv4"
	case TierLocalCloudIPv6:
		return "local-cloud IPv6"
	case TierPublicIPv4:
		return "public IPv4"
	case TierPublicIPv6:
		return "public IPv6"
	default:
		return "never used"
	}
}

var (
	localCloudIPv4 = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
	}
	localCloudIPv6 = netip.MustParsePrefix("fc00::/7")
	// Fan overlay addresses (Juju's default fan underlay maps into 240/4,
	// e.g. 252.0.0.0/8 on AWS) are machine-to-container plumbing, never a
	// place to bind a cluster; 255.255.255.255 falls in here too.
	fanIPv4 = netip.MustParsePrefix("240.0.0.0/4")
)

// Classify returns the tier of addr.
func Classify(addr netip.Addr) Tier {
	if !addr.IsValid() || addr.Zone() != "" || addr.Is4In6() ||
		addr.IsUnspecified() || addr.IsLoopback() || addr.IsMulticast() ||
		addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() || addr.IsInterfaceLocalMulticast() {
		return TierNever
	}
	if addr.Is4() {
		if fanIPv4.Contains(addr) {
			return TierNever
		}
		for _, p := range localCloudIPv4 {
			if p.Contains(addr) {
				return TierLocalCloudIPv4
			}
		}
		return TierPublicIPv4
	}
	if localCloudIPv6.Contains(addr) {
		return TierLocalCloudIPv6
	}
	return TierPublicIPv6
}

// ErrNoAddress means no usable address was offered at all.
var ErrNoAddress = errors.New("no usable DB bind address")

// AmbiguousError means the best tier holds more than one address.
type AmbiguousError struct {
	Tier      Tier
	Addresses []netip.Addr
}

func (e *AmbiguousError) Error() string {
	s := make([]string, len(e.Addresses))
	for i, a := range e.Addresses {
		s[i] = a.String()
	}
	return fmt.Sprintf("%d possible DB bind addresses in the %s tier: %s", len(s), e.Tier, strings.Join(s, ", "))
}

// Selection is the outcome of Select.
type Selection struct {
	// Address is the bind address; valid only when Select returns nil.
	Address netip.Addr
	// Tier is the tier Address (or the ambiguous set) came from.
	Tier Tier
	// Skipped lists the offered values that were not considered, with the
	// reason, for the log.
	Skipped []string
	// Candidates are the values Choose chose from (unset by Select).
	Candidates []string
}

// Select picks the bind address among candidates (network-get's
// ingress-addresses, or bind-address values when those are absent). Values
// may carry a CIDR suffix, which is dropped; duplicates count once; host
// names are skipped, since Dqlite binds an IP. It returns ErrNoAddress or an
// *AmbiguousError when there is not exactly one address in the best tier.
func Select(candidates []string) (Selection, error) {
	var sel Selection
	tiers := map[Tier][]netip.Addr{}
	seen := map[netip.Addr]bool{}
	for _, c := range candidates {
		addr, err := parse(c)
		if err != nil {
			sel.Skipped = append(sel.Skipped, fmt.Sprintf("%q: not an IP address", c))
			continue
		}
		if seen[addr] {
			continue
		}
		seen[addr] = true
		tier := Classify(addr)
		if tier == TierNever {
			sel.Skipped = append(sel.Skipped, fmt.Sprintf("%s: loopback, link-local, fan, multicast or unspecified", addr))
			continue
		}
		tiers[tier] = append(tiers[tier], addr)
	}
	for tier := TierLocalCloudIPv4; tier <= TierPublicIPv6; tier++ {
		addrs := tiers[tier]
		if len(addrs) == 0 {
			continue
		}
		sel.Tier = tier
		if len(addrs) > 1 {
			return sel, &AmbiguousError{Tier: tier, Addresses: addrs}
		}
		sel.Address = addrs[0]
		return sel, nil
	}
	return sel, ErrNoAddress
}

// Binding is what the bind address choice depends on: what network-get
// reports for the db-cluster binding and what this machine has.
type Binding struct {
	// Ingress is network-get's ingress-addresses.
	Ingress []string
	// Devices are the binding's device addresses (bind-addresses[].
	// addresses[].value), the candidates when Ingress is empty, as
	// network-get --ingress-address falls back to them.
	Devices []string
	// Local lists the addresses on this machine's interfaces; LocalErr is
	// why they could not be listed.
	Local    []netip.Addr
	LocalErr error
}

// NotLocalError means the chosen address is not on any of this machine's
// interfaces: Dqlite could not bind it.
type NotLocalError struct {
	Address netip.Addr
}

func (e *NotLocalError) Error() string {
	return fmt.Sprintf("DB bind address %s is not configured on this machine", e.Address)
}

// LocalError means this machine's addresses could not be listed, so the
// chosen address could not be checked.
type LocalError struct {
	Err error
}

func (e *LocalError) Error() string { return "cannot list this machine's addresses: " + e.Err.Error() }

func (e *LocalError) Unwrap() error { return e.Err }

// Choose picks this unit's bind address: Select over the ingress addresses
// (else the device addresses), then a check that the machine has it. It
// returns the Selection with the candidates it considered, and ErrNoAddress,
// an *AmbiguousError, a *LocalError or a *NotLocalError when there is no
// address to bind.
func Choose(b Binding) (Selection, error) {
	candidates := b.Ingress
	if len(candidates) == 0 {
		candidates = b.Devices
	}
	sel, err := Select(candidates)
	sel.Candidates = candidates
	if err != nil {
		return sel, err
	}
	if b.LocalErr != nil {
		return sel, &LocalError{Err: b.LocalErr}
	}
	if !slices.Contains(b.Local, sel.Address) {
		return sel, &NotLocalError{Address: sel.Address}
	}
	return sel, nil
}

func parse(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, err
		}
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// Usable returns the addresses of addrs that a remote peer could reach this
// machine on, for the API address lists: everything but loopback,
// link-local, multicast, unspecified, zoned and IPv4-mapped addresses,
// without duplicates, sorted (IPv4 first, then numerically) so that the same
// set always gives the same list. Unlike Select it keeps every scope: a
// client may sit anywhere.
func Usable(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsLoopback() ||
			a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() {
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// ParseAddress parses one address as network-get reports it: an IP literal,
// optionally with a CIDR suffix, which is dropped.
func ParseAddress(s string) (netip.Addr, error) {
	return parse(s)
}
