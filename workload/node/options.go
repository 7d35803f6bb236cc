// Package node runs controllerd's Dqlite node: one loop that reads the
// controller config, decides (with package decide) whether to bootstrap,
// join, start, leave, remove departed members or reconfigure after a lost
// quorum, and acts on go-dqlite. It also answers the control socket.
package node

import (
	"log/slog"
	"time"

	dqlite "github.com/canonical/go-dqlite"
)

// Engine tuning. All nodes of a cluster must use the same values.
const (
	// DefaultNetworkLatency sets Raft's heartbeat to 1.5x and its election
	// timeout to 15x this value: 30 ms and 300-600 ms. go-dqlite's default
	// (3 s election timeout) made a leader kill -9 cost ~6.4 s of write
	// unavailability on loopback; 20 ms brings it to ~0.6 s (dqlite.md
	// §2b) while staying well above loopback and LAN round trips.
	DefaultNetworkLatency = 20 * time.Millisecond
	// DefaultRolesFrequency is how often the leader re-balances roles and
	// every node refreshes cluster.yaml. The default 30 s left a two-node
	// cluster with one voter for up to 30 s after a third node joined and
	// let cluster.yaml lag membership; 1 s is what Dqlite's Jepsen app uses.
	DefaultRolesFrequency = time.Second
	// DefaultRecoverConfirm is how long a node whose config lists it alone
	// must see no leader before it reconfigures itself as the sole voter.
	// Several election timeouts, so a leader change is never mistaken for
	// a lost quorum; Juju waits a full minute.
	DefaultRecoverConfirm = 3 * time.Second
	// DefaultTick is how often the loop re-checks membership and leadership
	// between config changes.
	DefaultTick = 500 * time.Millisecond
	// DefaultRemovalGrace is how long a member that this process never saw
	// in the config may stay unlisted before the leader removes it: a node
	// that just joined may be listed in its own config before ours.
	DefaultRemovalGrace = 10 * time.Second
	// DefaultHandoverTimeout bounds the hand-over on shutdown or leave
	// (go-dqlite caps it at 1 min; systemd's default stop timeout is 90 s).
	DefaultHandoverTimeout = 10 * time.Second
)

// DefaultSnapshotParams bounds memory. libdqlite 1.11.1 keeps the last
// 8192 Raft entries (each small write carries ~12 KiB of WAL frames) in
// memory and snapshots every 1024: RSS reached ~107 MB after 10,000 small
// writes. {Threshold 512, Trailing 1024} keeps it near 40 MB (dqlite.md §2f)
// while leaving 1024 entries for a lagging follower to catch up from the log
// instead of a snapshot.
var DefaultSnapshotParams = dqlite.SnapshotParams{Threshold: 512, Trailing: 1024}

// Options configure a Daemon.
type Options struct {
	ControllerID string
	ConfigPath   string
	DataDir      string
	Port         int
	Log          *slog.Logger
	// Changes delivers a value whenever the config file may have changed.
	Changes <-chan struct{}
	// DqliteDebug passes go-dqlite's debug messages to the log.
	DqliteDebug bool

	NetworkLatency  time.Duration
	Snapshot        dqlite.SnapshotParams
	RolesFrequency  time.Duration
	RecoverConfirm  time.Duration
	Tick            time.Duration
	RemovalGrace    time.Duration
	HandoverTimeout time.Duration
}

func (o *Options) setDefaults() {
	if o.NetworkLatency == 0 {
		o.NetworkLatency = DefaultNetworkLatency
	}
	if o.Snapshot == (dqlite.SnapshotParams{}) {
		o.Snapshot = DefaultSnapshotParams
	}
	if o.RolesFrequency == 0 {
		o.RolesFrequency = DefaultRolesFrequency
	}
	if o.RecoverConfirm == 0 {
		o.RecoverConfirm = DefaultRecoverConfirm
	}
	if o.Tick == 0 {
		o.Tick = DefaultTick
	}
	if o.RemovalGrace == 0 {
		o.RemovalGrace = DefaultRemovalGrace
	}
	if o.HandoverTimeout == 0 {
		o.HandoverTimeout = DefaultHandoverTimeout
	}
}
