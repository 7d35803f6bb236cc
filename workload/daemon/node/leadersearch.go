package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/canonical/go-dqlite/client"
)

// go-dqlite v1.11.5's leader search (client.FindLeader, and the database
// driver's connector: internal/protocol/connector.go connectAttemptAll in
// canonical/go-dqlite) tries the nodes of its store one after the other,
// each for up to an attempt timeout. A dead machine's address is a black
// hole and a paused node accepts and never answers, so every such node
// listed ahead of the leader costs a whole attempt, and a survivor's
// observation needed a deadline growing with the number of members (a
// fixed 1 s hid the leader for ever behind three dead peers in the 5 -> 2
// recovery scenario). The daemon's own leader search asks every node at
// once instead: its cost is one attempt, whatever the number of members
// and however many of them are gone.

// leaderSearchAttempt bounds one node's part of a search: the connect,
// then the handshake and the leader query.
const leaderSearchAttempt = DialTimeout + AttemptTimeout

// LeaderSearchTimeout bounds a whole search: every listed node at once,
// then, if none of them leads but one names the leader, that node.
const LeaderSearchTimeout = 2 * leaderSearchAttempt

type leaderSearchResult struct {
	address string
	cli     *client.Client
	leader  string // the leader the node names ("" none)
	err     error
}

// findLeader returns a client connected to the leader: a node of store
// that says it leads itself (a follower's idea of the leader may be
// stale), or else the node a listed one names as leader, asked directly.
func (d *Daemon) findLeader(ctx context.Context, store client.NodeStore) (*client.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, LeaderSearchTimeout)
	defer cancel()
	servers, err := store.Get(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot list the nodes to search for the leader: %w", err)
	}
	var addrs []string
	seen := map[string]bool{}
	for _, s := range servers {
		if s.Address != "" && !seen[s.Address] {
			seen[s.Address] = true
			addrs = append(addrs, s.Address)
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("cannot search for the leader: no node known")
	}
	results := make(chan leaderSearchResult, len(addrs))
	for _, a := range addrs {
		go func() { results <- d.askLeader(ctx, a) }()
	}
	var named []string
	var failures []string
	for i := range addrs {
		r := <-results
		if r.err == nil && r.leader == r.address {
			// Found: close the clients of the answers still to come.
			go func(left int) {
				for ; left > 0; left-- {
					if o := <-results; o.cli != nil {
						o.cli.Close()
					}
				}
			}(len(addrs) - i - 1)
			return r.cli, nil
		}
		if r.cli != nil {
			r.cli.Close()
		}
		switch {
		case r.err != nil:
			failures = append(failures, r.address+": "+r.err.Error())
		case r.leader == "":
			failures = append(failures, r.address+": knows no leader")
		default:
			named = append(named, r.leader)
		}
	}
	for _, a := range named {
		if seen[a] {
			continue // asked already: it did not say it leads
		}
		seen[a] = true
		r := d.askLeader(ctx, a)
		if r.err == nil && r.leader == a {
			return r.cli, nil
		}
		if r.cli != nil {
			r.cli.Close()
		}
		failures = append(failures, fmt.Sprintf("%s (named leader): %v", a, r.err))
	}
	sort.Strings(failures)
	return nil, fmt.Errorf("no leader found among %d node(s): %s", len(addrs), strings.Join(failures, "; "))
}

// askLeader connects to one node and asks it who leads; the client is
// returned open (the caller closes it) when the question was answered.
func (d *Daemon) askLeader(ctx context.Context, address string) leaderSearchResult {
	out := leaderSearchResult{address: address}
	ctx, cancel := context.WithTimeout(ctx, leaderSearchAttempt)
	defer cancel()
	cli, err := client.New(ctx, address, client.WithDialFunc(d.dialPeer), client.WithLogFunc(d.dqliteLog))
	if err != nil {
		out.err = err
		return out
	}
	info, err := cli.Leader(ctx)
	if err != nil {
		cli.Close()
		out.err = err
		return out
	}
	out.cli = cli
	if info != nil {
		out.leader = info.Address
	}
	return out
}
