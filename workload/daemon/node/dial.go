package node

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"
	"golang.org/x/sys/unix"
)

// How the daemon reaches other Dqlite nodes (leader look-ups, the
// database, probes). go-dqlite's connector tries the known nodes one after
// another with a fixed 5 s dial timeout (docs/dqlite-behaviour.md "Every call has a deadline"). A node whose
// machine vanished without a trace (no TCP reset, no "no route to host":
// its address still resolves, packets to it are just never answered) then
// eats the whole 1-2 s deadline of a daemon call before any live node is
// tried, and the survivors cannot even read the table they need to remove
// it. So every connection the daemon makes goes through dialNode (and
// the TLS handshake after it, dialPeer in tls.go), and the stores it
// connects through list this node first.
const (
	// DialTimeout bounds one TCP connect to a Dqlite node. A connect on a
	// LAN completes in well under 10 ms (on loopback it completes inside
	// the connect call); 500 ms is 50 times that, leaving room for a
	// loaded machine's scheduler, and it stays below TCP's initial 1 s SYN
	// retransmission timeout, so a connect that did not complete by then
	// had no answer to its SYN at all. It is what a silently vanished
	// peer costs each attempt, at most.
	DialTimeout = 500 * time.Millisecond
	// UserTimeout is how long data sent to a Dqlite node may stay
	// unacknowledged by its kernel before the connection fails. A live
	// peer's kernel acknowledges at once, however busy the node is (the
	// answer may take longer; that is not bounded by this); 2 s leaves
	// room for three retransmissions of a lost segment on a LAN (RTO from
	// 200 ms, doubling).
	UserTimeout = 2 * time.Second
	// AttemptTimeout bounds one attempt of the database driver on one
	// node after the connect (handshake and leader query, a few round
	// trips): a node that accepted the connection and then stopped
	// answering is given up on for the next one.
	AttemptTimeout = time.Second
	// ConnectTimeout bounds a whole database connect (all attempts) even
	// if a caller's deadline is longer.
	ConnectTimeout = 5 * time.Second
	// Backoff between the driver's connect attempts: 50 ms doubling up to
	// 250 ms (go-dqlite's 100 ms to 1 s left a 2 s call only 4 attempts;
	// a leader election takes ~0.6 s, docs/dqlite-behaviour.md "Failover").
	connectBackoff    = 50 * time.Millisecond
	connectBackoffCap = 250 * time.Millisecond
)

// dialNode connects to a Dqlite node within DialTimeout (and ctx), with
// TCP_USER_TIMEOUT set to UserTimeout.
func dialNode(ctx context.Context, address string) (net.Conn, error) {
	// go-dqlite goes on through its node list after a failed dial; with
	// the caller's deadline gone every dial would report an "i/o timeout"
	// that no network caused. (The deadline can pass a moment before the
	// context says so.)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cannot dial %s: %w", address, err)
	}
	if deadline, ok := ctx.Deadline(); ok && !time.Now().Before(deadline) {
		return nil, fmt.Errorf("cannot dial %s: %w", address, context.DeadlineExceeded)
	}
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	dialer := net.Dialer{Control: setUserTimeout}
	return dialer.DialContext(ctx, "tcp", address)
}

// setUserTimeout makes the kernel fail a connection whose sent data stays
// unacknowledged for UserTimeout. A pooled connection to a leader whose
// machine vanished (no FIN, no reset ever comes) otherwise makes each
// request on it wait for its caller's whole deadline (the control
// socket's SQL allows 15 s) before database/sql drops it.
func setUserTimeout(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UserTimeout.Milliseconds()))
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("cannot set TCP_USER_TIMEOUT: %w", serr)
	}
	return nil
}

// peerStore is the node list the daemon's leader look-ups and its database
// driver connect through: this node first (it is local, always answers
// and knows the leader if anybody does), then the members the last
// leader reported, then cluster.yaml. go-dqlite sorts a store by role
// before trying it; every entry is reported as a voter so that the order
// given here stands (its sort is an insertion sort for up to 12 entries,
// stable for equal keys).
type peerStore struct {
	self    string
	nodeDir string

	mu      sync.Mutex
	members []string
}

func newPeerStore(self, nodeDir string) *peerStore {
	return &peerStore{self: self, nodeDir: nodeDir}
}

// setMembers records the members a leader reported.
func (s *peerStore) setMembers(members []client.NodeInfo) {
	addrs := make([]string, 0, len(members))
	for _, m := range members {
		addrs = append(addrs, m.Address)
	}
	s.mu.Lock()
	s.members = addrs
	s.mu.Unlock()
}

// Get implements client.NodeStore.
func (s *peerStore) Get(context.Context) ([]client.NodeInfo, error) {
	s.mu.Lock()
	addrs := append([]string{s.self}, s.members...)
	s.mu.Unlock()
	// cluster.yaml is rewritten by the node every roles adjustment; a
	// read error leaves the other entries.
	stored, _ := readStore(s.nodeDir)
	for _, n := range stored {
		addrs = append(addrs, n.Address)
	}
	out := make([]client.NodeInfo, 0, len(addrs))
	seen := map[string]bool{}
	for _, a := range addrs {
		if a == "" || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, client.NodeInfo{Address: a, Role: client.Voter})
	}
	return out, nil
}

// Set implements client.NodeStore; the store is derived, not written.
func (s *peerStore) Set(context.Context, []client.NodeInfo) error { return nil }

// leaderClient is findLeader through the running node's peers.
func (d *Daemon) leaderClient(ctx context.Context, peers *peerStore) (*client.Client, error) {
	if peers == nil {
		return nil, fmt.Errorf("no Dqlite node running")
	}
	return d.findLeader(ctx, peers)
}

// openDB opens the controller database through a driver of the daemon's
// own rather than the node's: app.App registers its driver with go-dqlite's
// fixed 5 s dial timeout and cluster.yaml order. sql.OpenDB takes the
// driver's connector, so nothing is registered globally.
func (d *Daemon) openDB(peers *peerStore) (*sql.DB, error) {
	drv, err := driver.New(peers,
		driver.WithDialFunc(d.dialPeer),
		driver.WithAttemptTimeout(AttemptTimeout),
		driver.WithConnectionTimeout(ConnectTimeout),
		driver.WithConnectionBackoffFactor(connectBackoff),
		driver.WithConnectionBackoffCap(connectBackoffCap),
		driver.WithLogFunc(d.dqliteLog),
	)
	if err != nil {
		return nil, fmt.Errorf("cannot create the database driver: %w", err)
	}
	conn, err := drv.OpenConnector(databaseName)
	if err != nil {
		return nil, fmt.Errorf("cannot create the database connector: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(maxOpenConns)
	return db, nil
}

// maxOpenConns bounds the connections to the Dqlite leader that the
// daemon's handle opens (database/sql has no bound by default): the
// control plane needs a handful at once (lease claims, housekeeping, a
// backup record, the address watcher, the node's own queries), and a
// burst of SQL console requests queues for a connection instead of
// opening one each. The HTTP API never uses the handle.
const maxOpenConns = 16
