package bindaddr_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/juju/dqlite-controller/charm/bindaddr"
)

func TestClassify_Tiers(t *testing.T) {
	cases := map[string]bindaddr.Tier{
		"10.0.0.1":        bindaddr.TierLocalCloudIPv4,
		"172.16.0.1":      bindaddr.TierLocalCloudIPv4,
		"172.31.255.254":  bindaddr.TierLocalCloudIPv4,
		"192.168.1.17":    bindaddr.TierLocalCloudIPv4,
		"fc00::1":         bindaddr.TierLocalCloudIPv6,
		"fd12:3456::9":    bindaddr.TierLocalCloudIPv6,
		"172.32.0.1":      bindaddr.TierPublicIPv4,
		"8.8.8.8":         bindaddr.TierPublicIPv4,
		"100.64.0.1":      bindaddr.TierPublicIPv4,
		"2001:db8::1":     bindaddr.TierPublicIPv6,
		"127.0.0.1":       bindaddr.TierNever,
		"::1":             bindaddr.TierNever,
		"169.254.1.1":     bindaddr.TierNever,
		"fe80::1":         bindaddr.TierNever,
		"240.1.1.10":      bindaddr.TierNever,
		"252.5.4.1":       bindaddr.TierNever,
		"255.255.255.255": bindaddr.TierNever,
		"0.0.0.0":         bindaddr.TierNever,
		"::":              bindaddr.TierNever,
		"224.0.0.1":       bindaddr.TierNever,
		"ff02::1":         bindaddr.TierNever,
		"::ffff:10.0.0.1": bindaddr.TierNever,
	}
	for s, want := range cases {
		if got := bindaddr.Classify(netip.MustParseAddr(s)); got != want {
			t.Errorf("Classify(%s) = %v, want %v", s, got, want)
		}
	}
}

func TestSelect_OneLocalCloudAddressAmongPublicOnes(t *testing.T) {
	// Juju 3.6 lists every address of the space, most public first.
	sel, err := bindaddr.Select([]string{"54.237.63.211", "2001:db8::5", "10.136.107.33", "fe80::1"})
	if err != nil {
		t.Fatal(err)
	}
	if sel.Address.String() != "10.136.107.33" || sel.Tier != bindaddr.TierLocalCloudIPv4 {
		t.Fatalf("got %v (%v)", sel.Address, sel.Tier)
	}
}

func TestSelect_TwoInBestTierIsAmbiguous(t *testing.T) {
	_, err := bindaddr.Select([]string{"10.0.0.5", "192.168.1.5", "8.8.8.8"})
	var amb *bindaddr.AmbiguousError
	if !errors.As(err, &amb) || len(amb.Addresses) != 2 {
		t.Fatalf("err = %v", err)
	}
	if err.Error() != "2 possible DB bind addresses in the local-cloud IPv4 tier: 10.0.0.5, 192.168.1.5" {
		t.Fatalf("message = %q", err)
	}
}

func TestSelect_DuplicatesCountOnce(t *testing.T) {
	// The AWS fan sample lists 172.31.5.4 twice, then a fan address.
	sel, err := bindaddr.Select([]string{"172.31.5.4", "172.31.5.4", "252.5.4.1"})
	if err != nil || sel.Address.String() != "172.31.5.4" {
		t.Fatalf("got %v, %v", sel.Address, err)
	}
}

func TestSelect_FanOnlyTierSkipped(t *testing.T) {
	// The 3.6 API-test sample: three public addresses and a fan one.
	_, err := bindaddr.Select([]string{"8.8.4.10", "8.8.4.11", "8.8.8.10", "240.1.1.10"})
	var amb *bindaddr.AmbiguousError
	if !errors.As(err, &amb) || amb.Tier != bindaddr.TierPublicIPv4 || len(amb.Addresses) != 3 {
		t.Fatalf("err = %v", err)
	}
}

func TestSelect_IPv6OnlyAndCIDRSuffix(t *testing.T) {
	sel, err := bindaddr.Select([]string{"fd00:1::7/64", "2001:db8::7"})
	if err != nil || sel.Address.String() != "fd00:1::7" {
		t.Fatalf("got %v, %v", sel.Address, err)
	}
}

func TestSelect_NothingUsable(t *testing.T) {
	sel, err := bindaddr.Select([]string{"127.0.0.1", "controller-0.example", "fe80::1"})
	if !errors.Is(err, bindaddr.ErrNoAddress) {
		t.Fatalf("err = %v", err)
	}
	if len(sel.Skipped) != 3 {
		t.Fatalf("skipped = %v", sel.Skipped)
	}
	if _, err := bindaddr.Select(nil); !errors.Is(err, bindaddr.ErrNoAddress) {
		t.Fatalf("err = %v", err)
	}
}

// TestNetlink_ListsLoopback reads this machine's (or namespace's) real
// addresses over netlink; every Linux network namespace has lo, and lo is up
// with 127.0.0.1 on any machine these tests run on.
func TestNetlink_ListsLoopback(t *testing.T) {
	addrs, err := bindaddr.Netlink{}.Addresses()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(addrs, netip.MustParseAddr("127.0.0.1")) {
		t.Fatalf("127.0.0.1 not among %v", addrs)
	}
	if slices.Contains(addrs, netip.MustParseAddr("192.0.2.77")) {
		t.Fatalf("documentation address 192.0.2.77 reported as local: %v", addrs)
	}
}

func TestUsable_DropsLocalOnlyAddressesAndSorts(t *testing.T) {
	var in []netip.Addr
	for _, s := range []string{
		"fd00::5", "127.0.0.1", "::1", "192.168.1.5", "169.254.3.3", "fe80::1", "0.0.0.0", "::",
		"224.0.0.1", "ff02::1", "::ffff:10.0.0.1", "203.0.113.9", "10.0.0.1", "192.168.1.5", "2001:db8::1", "252.1.2.3",
	} {
		in = append(in, netip.MustParseAddr(s))
	}
	in = append(in, netip.MustParseAddr("fe80::2%eth0"), netip.MustParseAddr("fd00::6%eth0"))
	got := bindaddr.Usable(in)
	var s []string
	for _, a := range got {
		s = append(s, a.String())
	}
	// Fan (240/4) addresses are kept: containers on a fan network reach
	// the machine through them.
	want := []string{"10.0.0.1", "192.168.1.5", "203.0.113.9", "252.1.2.3", "2001:db8::1", "fd00::5"}
	if !slices.Equal(s, want) {
		t.Fatalf("Usable = %v, want %v", s, want)
	}
	if bindaddr.Usable(nil) != nil {
		t.Fatal("Usable(nil) is not empty")
	}
}

func TestChoose(t *testing.T) {
	local := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	tests := []struct {
		summary string
		in      bindaddr.Binding
		want    string
		err     any // nil, ErrNoAddress, or a pointer to the error type
	}{{
		summary: "the one ingress address, on this machine",
		in:      bindaddr.Binding{Ingress: []string{"10.0.0.1"}, Devices: []string{"192.168.9.9"}, Local: local},
		want:    "10.0.0.1",
	}, {
		summary: "Juju 3.6's unfiltered list: the best tier wins",
		in:      bindaddr.Binding{Ingress: []string{"8.8.8.8", "10.0.0.1", "fd00::1"}, Local: local},
		want:    "10.0.0.1",
	}, {
		summary: "no ingress addresses: the binding's device addresses",
		in:      bindaddr.Binding{Devices: []string{"10.0.0.1/24"}, Local: local},
		want:    "10.0.0.1",
	}, {
		summary: "an IPv6-only binding",
		in:      bindaddr.Binding{Ingress: []string{"fd00::1"}, Local: local},
		want:    "fd00::1",
	}, {
		summary: "two addresses in the best tier are ambiguous",
		in:      bindaddr.Binding{Ingress: []string{"10.0.0.1", "192.168.7.1"}, Local: local},
		err:     new(*bindaddr.AmbiguousError),
	}, {
		summary: "nothing usable offered",
		in:      bindaddr.Binding{Ingress: []string{"127.0.0.1", "fe80::1", "juju.example"}, Local: local},
		err:     bindaddr.ErrNoAddress,
	}, {
		summary: "nothing offered at all",
		in:      bindaddr.Binding{Local: local},
		err:     bindaddr.ErrNoAddress,
	}, {
		summary: "the chosen address is not on this machine",
		in:      bindaddr.Binding{Ingress: []string{"10.0.0.2"}, Local: local},
		err:     new(*bindaddr.NotLocalError),
	}, {
		summary: "this machine's addresses cannot be listed",
		in:      bindaddr.Binding{Ingress: []string{"10.0.0.1"}, LocalErr: errors.New("netlink: permission denied")},
		err:     new(*bindaddr.LocalError),
	}, {
		summary: "an ambiguous choice is reported before a listing failure",
		in:      bindaddr.Binding{Ingress: []string{"10.0.0.1", "10.0.0.2"}, LocalErr: errors.New("netlink: permission denied")},
		err:     new(*bindaddr.AmbiguousError),
	}}
	for _, test := range tests {
		t.Run(test.summary, func(t *testing.T) {
			sel, err := bindaddr.Choose(test.in)
			switch want := test.err.(type) {
			case nil:
				if err != nil || sel.Address.String() != test.want {
					t.Fatalf("Choose = %v, %v; want %s", sel.Address, err, test.want)
				}
			case error:
				if !errors.Is(err, want) {
					t.Fatalf("Choose = %v, %v; want %v", sel.Address, err, want)
				}
			default:
				if !errors.As(err, want) {
					t.Fatalf("Choose = %v, %v; want a %T", sel.Address, err, want)
				}
			}
			if len(sel.Candidates) == 0 && (len(test.in.Ingress) > 0 || len(test.in.Devices) > 0) {
				t.Errorf("Choose did not report its candidates")
			}
		})
	}
}
