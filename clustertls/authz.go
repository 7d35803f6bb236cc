package clustertls

import (
	"fmt"
	"net"
	"slices"
)

// View is what a node knows that decides whom it trusts: a valid
// certificate is not enough, since a removed unit still holds one.
type View struct {
	// Self is this node's controller id (always trusted: it holds our own
	// key; the daemon reaches its own node over TLS too).
	Self string
	// Listed is the current controller config, controller id to bind
	// host (db-bind-addresses).
	Listed map[string]string
	// MemberHosts are the hosts of the current Raft members as the last
	// leader reported them (or cluster.yaml before that).
	MemberHosts []string
}

// Authorise is the trust rule. A peer presenting a certificate of the
// cluster CA for controller id, with bind addresses ips, is accepted when
//
//  1. id is this node's own id, or
//  2. the current config lists id, or
//  3. the peer is a current Raft member that is being removed: one of its
//     certificate's bind addresses is a current member's host, and the
//     config does not give that host to another controller.
//
// Rule 3 keeps a unit that left the config a peer while the change is in
// flight: it must still hand its role and leadership over, and the
// remaining voters' quorum may still count it until the leader removes
// it. Once the leader has removed it (within a few membership checks of
// the config change, when quorum allows), rule 3 no longer holds and it
// is refused; so is a unit whose address another listed controller now
// has.
func (v View) Authorise(id string, ips []net.IP) error {
	if id == v.Self {
		return nil
	}
	if _, ok := v.Listed[id]; ok {
		return nil
	}
	for _, ip := range ips {
		host := ip.String()
		if !slices.Contains(v.MemberHosts, host) {
			continue
		}
		claimed := false
		for other, h := range v.Listed {
			if other != id && canonical(h) == host {
				claimed = true
			}
		}
		if !claimed {
			return nil
		}
	}
	return fmt.Errorf("controller %s is neither in the controller config nor a current member", id)
}

// canonical returns the canonical text of an IP literal (IPv6 in
// controller.conf is unbracketed and canonical already; this guards
// against a hand-written file).
func canonical(host string) string {
	if ip := net.ParseIP(host); ip != nil {
		return ip.String()
	}
	return host
}
