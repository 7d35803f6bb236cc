package bindaddr

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Netlink lists the addresses configured on this machine's interfaces (in
// the caller's network namespace) with an RTM_GETADDR dump over netlink. It
// is pure Go, so the hook binary stays statically linked without cgo.
type Netlink struct{}

// dumpAttempts bounds the retries of a dump that the kernel interrupted
// because the address list changed while it was being read.
const dumpAttempts = 5

// Addresses implements the charm's local-address lookup.
func (Netlink) Addresses() ([]netip.Addr, error) {
	var (
		list []netlink.Addr
		err  error
	)
	for range dumpAttempts {
		list, err = netlink.AddrList(nil, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cannot list local addresses: %w", err)
	}
	addrs := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if a.IPNet == nil {
			continue
		}
		if addr, ok := netip.AddrFromSlice(a.IPNet.IP); ok {
			addrs = append(addrs, addr.Unmap())
		}
	}
	return addrs, nil
}
