package node

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"time"

	dqlite "github.com/canonical/go-dqlite"
	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
)

// The node drives go-dqlite through two small interfaces, so that its
// transition rules are tested against a fake (engine_test.go) as well as
// with real processes (workload/cmd/controllerd).

// Engine starts Dqlite nodes, forces Raft configurations and asks other
// nodes what they know.
type Engine interface {
	// Start starts the node kept in dir at address: a bootstrap node when
	// dir is empty and join is empty, a joining node when dir is empty and
	// join lists peers, the stored node otherwise (join is ignored then).
	Start(dir, address string, join []string) (Node, error)
	// Reconfigure forces the Raft configuration of the stopped node in dir
	// (go-dqlite's ReconfigureMembershipExt) and rewrites its cluster.yaml,
	// which that call leaves stale (canonical/go-dqlite#311).
	Reconfigure(dir string, nodes []client.NodeInfo) error
	// Ask asks the node at address directly (not through a leader) what it
	// knows.
	Ask(ctx context.Context, address string) Answer
	// Remove removes node id from the Raft configuration through the
	// leader at leader.
	Remove(ctx context.Context, leader string, id uint64) error
	// Listed reads the controllers the leader's config lists (table
	// controller_listed) through peers, as a client: no node of its own
	// needs to run.
	Listed(ctx context.Context, peers []string) ([]string, error)
}

// Node is one running Dqlite node: start (Ready), observe, hand over, close.
type Node interface {
	ID() uint64
	Address() string
	// Ready returns once the node found a leader and joined (if new), or
	// when ctx ends. It does not mean member.
	Ready(ctx context.Context) error
	// Observe asks the leader, found through this node's peers, for the
	// leader and the members. The caller closes the observation.
	Observe(ctx context.Context) (*Observation, error)
	// Handover hands this node's role and leadership over (bounded by ctx).
	Handover(ctx context.Context) error
	// OpenDB opens the controller database through this node's peers.
	OpenDB() (*sql.DB, error)
	// LeaderClient returns a client connected to the leader.
	LeaderClient(ctx context.Context) (*client.Client, error)
	Close() error
}

// LeaderClient is what the node asks of the leader beyond observing it.
type LeaderClient interface {
	Remove(ctx context.Context, id uint64) error
	Assign(ctx context.Context, id uint64, role client.NodeRole) error
	Close() error
}

// Observation is what the leader says about the cluster.
type Observation struct {
	Leader  client.NodeInfo
	Members []client.NodeInfo
	Client  LeaderClient
}

// Close releases the leader connection.
func (o *Observation) Close() {
	if o != nil && o.Client != nil {
		o.Client.Close()
	}
}

// Answer is what a node said when asked directly.
type Answer struct {
	Address string
	// Accepted: a TCP connection was accepted (the kernel does that for
	// a paused process too).
	Accepted bool
	// Answered: the node answered the Dqlite protocol.
	Answered bool
	// Leader is the leader it knows (ID 0: none).
	Leader client.NodeInfo
	// Members is its view of the Raft configuration (empty for a node that
	// never joined).
	Members []client.NodeInfo
}

// Knows reports whether the answer names node id as a member.
func (a Answer) Knows(id uint64) bool {
	for _, m := range a.Members {
		if m.ID == id {
			return true
		}
	}
	return false
}

// goDqlite is the Engine of go-dqlite v1.11.5's app package.
type goDqlite struct {
	d *Daemon
}

func (g goDqlite) Start(dir, address string, join []string) (Node, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create node dir: %w", err)
	}
	tlsOpts, err := g.d.tlsOptions()
	if err != nil {
		return nil, err
	}
	opts := append(append(g.d.appOptions(), app.WithAddress(address)), tlsOpts...)
	if len(join) > 0 {
		opts = append(opts, app.WithCluster(join))
	}
	a, err := app.New(dir, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot start Dqlite node: %w", err)
	}
	return &appNode{App: a, d: g.d, peers: newPeerStore(a.Address(), dir)}, nil
}

func (g goDqlite) Reconfigure(dir string, nodes []client.NodeInfo) error {
	in := make([]dqlite.NodeInfo, len(nodes))
	copy(in, nodes)
	if err := dqlite.ReconfigureMembershipExt(dir, in); err != nil {
		return fmt.Errorf("cannot reconfigure membership: %w", err)
	}
	return writeStore(dir, nodes)
}

func (g goDqlite) Ask(ctx context.Context, address string) Answer {
	return askNode(ctx, address, g.d.dialPeer, g.d.dqliteLog)
}

func (g goDqlite) Remove(ctx context.Context, leader string, id uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cli, err := client.New(ctx, leader, client.WithDialFunc(g.d.dialPeer), client.WithLogFunc(g.d.dqliteLog))
	if err != nil {
		return fmt.Errorf("cannot connect to the leader: %w", err)
	}
	defer cli.Close()
	if err := cli.Remove(ctx, id); err != nil {
		return fmt.Errorf("cannot remove node %d: %w", id, err)
	}
	return nil
}

func (g goDqlite) Listed(ctx context.Context, peers []string) ([]string, error) {
	// The node dir of a removed node is wiped: its cluster.yaml adds
	// nothing.
	store := newPeerStore("", g.d.nodeDir)
	nodes := make([]client.NodeInfo, 0, len(peers))
	for _, p := range peers {
		nodes = append(nodes, client.NodeInfo{Address: p})
	}
	store.setMembers(nodes)
	db, err := g.d.openDB(store)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return readListed(ctx, db)
}

// askNode connects to one node (DialTimeout, then at most a second for
// the protocol) and asks it for its leader and its Raft configuration.
// Accepted is a plain TCP connect; the questions go through dial (the
// daemon's TLS dial, dialPeer, which notes a refusal of this node's
// certificate).
func askNode(ctx context.Context, address string, dial client.DialFunc, log client.LogFunc) Answer {
	out := Answer{Address: address}
	ctx, cancel := context.WithTimeout(ctx, DialTimeout+time.Second)
	defer cancel()
	conn, err := dialNode(ctx, address)
	if err != nil {
		return out
	}
	conn.Close()
	out.Accepted = true
	cli, err := client.New(ctx, address, client.WithDialFunc(dial), client.WithLogFunc(log))
	if err != nil {
		return out
	}
	defer cli.Close()
	leader, err := cli.Leader(ctx)
	if err != nil {
		return out
	}
	out.Answered = true
	if leader != nil {
		out.Leader = *leader
	}
	if members, err := cli.Cluster(ctx); err == nil {
		out.Members = members
	}
	return out
}

// appNode is a Node of go-dqlite's app package, reached through a
// peerStore with bounded dials (dial.go).
type appNode struct {
	*app.App
	d     *Daemon
	peers *peerStore
}

func (n *appNode) Observe(ctx context.Context) (*Observation, error) {
	cli, err := n.d.findLeader(ctx, n.peers)
	if err != nil {
		return nil, err
	}
	leader, err := cli.Leader(ctx)
	if err != nil || leader == nil || leader.ID == 0 {
		cli.Close()
		return nil, fmt.Errorf("cannot get leader: %w", err)
	}
	members, err := cli.Cluster(ctx)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("cannot list cluster members: %w", err)
	}
	n.peers.setMembers(members)
	return &Observation{Leader: *leader, Members: members, Client: cli}, nil
}

func (n *appNode) OpenDB() (*sql.DB, error) { return n.d.openDB(n.peers) }

func (n *appNode) LeaderClient(ctx context.Context) (*client.Client, error) {
	return n.d.findLeader(ctx, n.peers)
}
