// Package node runs controllerd's Dqlite node: one loop that reads the
// controller config, decides (with package decide) whether to bootstrap,
// join, start, leave, remove departed members or reconfigure after a lost
// quorum, and acts on go-dqlite. It also answers the control socket.
package node

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	dqlite "github.com/canonical/go-dqlite"

	"github.com/juju/dqlite-controller/workload/controlplane/apiaddr"
	"github.com/juju/dqlite-controller/workload/controlplane/backup"
	"github.com/juju/dqlite-controller/workload/controlplane/singular"
	"github.com/juju/dqlite-controller/workload/metrics"
)

// Engine tuning. All nodes of a cluster must use the same values.
const (
	// DefaultNetworkLatency sets Raft's heartbeat to 1.5x and its election
	// timeout to 15x this value: 30 ms and 300-600 ms. go-dqlite's default
	// (3 s election timeout) made a leader kill -9 cost ~6.4 s of write
	// unavailability on loopback; 20 ms brings it to ~0.6 s (docs/dqlite-behaviour.md
	// "Failover") while staying well above loopback and LAN round trips.
	DefaultNetworkLatency = 20 * time.Millisecond
	// DefaultRolesFrequency is how often the leader re-balances roles and
	// every node refreshes cluster.yaml. The default 30 s left a two-node
	// cluster with one voter for up to 30 s after a third node joined and
	// let cluster.yaml lag membership; 1 s is what Dqlite's Jepsen app uses.
	DefaultRolesFrequency = time.Second
	// DefaultRecoverConfirm is how long a node must have seen no leader,
	// counted from the first failed observation, before it forces a
	// configuration without the old voters (decide.Recover), and
	// DefaultRecoverFailures how many failed observations in a row that
	// takes. A leader election takes 0.3-0.6 s and a hand-over's
	// leadership transfer one of them (docs/dqlite-behaviour.md#failover); a loaded host
	// stalls a pass for a second or two. 6 s and 4 failures outlast both
	// several times over; the real guard is that no old voter may accept
	// a connection. Juju waits a full minute.
	DefaultRecoverConfirm  = 6 * time.Second
	DefaultRecoverFailures = 4
	// DefaultAwayWindow is how long a node with data keeps asking the
	// nodes it knows whether it is still a member before it starts on its
	// data anyway, when its config lists it and nobody answers (the whole
	// cluster may be restarting: every node waits for the others). A node
	// the config does not list never starts unanswered. It must outlast a
	// survivor's restart: a node removed while down that starts before the
	// survivor answers could help other returning nodes elect a leader of
	// the old configuration.
	DefaultAwayWindow = 15 * time.Second
	// DefaultTick is how often the loop re-checks membership and leadership
	// between config changes.
	DefaultTick = 500 * time.Millisecond
	// DefaultRemovalGrace is how long a member that this process never saw
	// in the config may stay unlisted before the leader removes it: a node
	// that just joined is listed in its own config before ours when the
	// leader unit's hook runs later. A unit's hooks run one at a time, and
	// Juju retries a failed hook after 5 s, then 10 s, 20 s, ... up to
	// 5 min (juju/juju: apiserver/hookretrystrategy, MinRetryTime 5 s,
	// RetryTimeFactor 2, MaxRetryTime 5 min): 60 s outlasts a few failed
	// attempts of the leader unit's relation-changed hook. Removing a
	// newcomer too early is healed (it rejoins once the leader's config
	// lists it, controller_listed), but costs a rejoin.
	DefaultRemovalGrace = 60 * time.Second
	// DefaultLeaseExpiryInterval is how often the singular-controller
	// holder deletes expired lease rows. Housekeeping only: an expired
	// lease never blocks a claim (package lease).
	DefaultLeaseExpiryInterval = 10 * time.Second
	// DefaultRepublishInterval is how often a member re-publishes its API
	// addresses although they did not change: it puts back rows that a
	// leader which did not know this controller yet removed.
	DefaultRepublishInterval = 30 * time.Second
	// DefaultAddressPruneInterval is how often the leader removes the API
	// addresses of controllers gone from its config when nothing else
	// (a config change, a member removal) prompted it.
	DefaultAddressPruneInterval = 30 * time.Second
	// DefaultAddressPollInterval is how often the served address lists are
	// re-read from the database (agents follow a change within about that).
	DefaultAddressPollInterval = 500 * time.Millisecond
	// singularStopWait bounds the wait for the singular worker to stop its
	// workers and revoke the lease before the node closes (on removal,
	// reconfiguration, rebind); on shutdown it is HandoverTimeout.
	singularStopWait = 5 * time.Second
	// DefaultHandoverTimeout bounds the hand-over on shutdown or leave
	// (go-dqlite caps it at 1 min; systemd's default stop timeout is 90 s).
	DefaultHandoverTimeout = 10 * time.Second
)

// DefaultSnapshotParams bounds memory. libdqlite 1.11.1 keeps the last
// 8192 Raft entries (each small write carries ~12 KiB of WAL frames) in
// memory and snapshots every 1024: RSS reached ~107 MB after 10,000 small
// writes. {Threshold 512, Trailing 1024} keeps it near 40 MB (docs/dqlite-behaviour.md "Memory")
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
	// TLSDir holds the node's certificate, key and CA bundle (package
	// clustertls). Every connection of the Dqlite port, the daemon's own
	// dials and the HTTP API use them. controllerd run always sets it;
	// only a test building the options directly may leave it empty, for
	// plaintext.
	TLSDir string

	NetworkLatency  time.Duration
	Snapshot        dqlite.SnapshotParams
	RolesFrequency  time.Duration
	RecoverConfirm  time.Duration
	RecoverFailures int
	AwayWindow      time.Duration
	Tick            time.Duration
	RemovalGrace    time.Duration
	HandoverTimeout time.Duration
	// The commit watchdog (commitwatch.go): how often the leader commits
	// its heartbeat row, the deadline of each, and how long it may go
	// without a commit before it hands leadership over (must exceed two
	// election timeouts and two probe timeouts: validateCommitWatch).
	CommitProbeInterval time.Duration
	CommitProbeTimeout  time.Duration
	CommitStall         time.Duration

	// APIPort is the HTTP API's port (published with the addresses).
	APIPort int
	// BackupDir is where this controller keeps the backups it takes while
	// it holds the singular-controller lease ("" disables backups).
	BackupDir      string
	BackupInterval time.Duration
	BackupKeep     int
	// BackupRecordDelay is a test hook (backup.Options.RecordDelay).
	BackupRecordDelay time.Duration
	// RestoreAckTimeout is how long a restore's source waits for every
	// member to record the restore and stop serving before it cancels
	// (nothing changed then); default 60 s. It must leave a member that is
	// busy (a loaded machine, a slow disk) time to answer: shorter only in
	// tests.
	RestoreAckTimeout time.Duration
	// Lease timing of the singular worker (package singular's defaults
	// when zero).
	LeaseDuration       time.Duration
	LeaseExtendInterval time.Duration
	LeaseMargin         time.Duration
	LeaseExpiryInterval time.Duration
	RepublishInterval   time.Duration
	AddressPrune        time.Duration
	AddressPoll         time.Duration
	// Metrics receives the daemon's counters (nil: none).
	Metrics *metrics.Metrics
}

// Validate checks the options that can be wrong on the command line.
func (o Options) Validate() error {
	o.setDefaults()
	if o.APIPort <= 0 || o.APIPort > 65535 {
		return fmt.Errorf("invalid API port %d", o.APIPort)
	}
	if o.BackupInterval < 0 || o.BackupKeep < 0 {
		return errors.New("backup interval and keep must not be negative")
	}
	if _, err := singular.New(nil, o.singularOptions(nil)); err != nil {
		return err
	}
	if err := o.validateCommitWatch(); err != nil {
		return err
	}
	return nil
}

func (o *Options) setDefaults() {
	orDefault(&o.NetworkLatency, DefaultNetworkLatency)
	orDefault(&o.Snapshot, DefaultSnapshotParams)
	orDefault(&o.RolesFrequency, DefaultRolesFrequency)
	orDefault(&o.RecoverConfirm, DefaultRecoverConfirm)
	orDefault(&o.RecoverFailures, DefaultRecoverFailures)
	orDefault(&o.AwayWindow, DefaultAwayWindow)
	orDefault(&o.Tick, DefaultTick)
	orDefault(&o.RemovalGrace, DefaultRemovalGrace)
	orDefault(&o.HandoverTimeout, DefaultHandoverTimeout)
	o.commitWatchDefaults()
	orDefault(&o.APIPort, apiaddr.DefaultPort)
	orDefault(&o.BackupInterval, backup.DefaultInterval)
	orDefault(&o.RestoreAckTimeout, restoreAckTimeout)
	orDefault(&o.BackupKeep, backup.DefaultKeep)
	orDefault(&o.LeaseExpiryInterval, DefaultLeaseExpiryInterval)
	orDefault(&o.RepublishInterval, DefaultRepublishInterval)
	orDefault(&o.AddressPrune, DefaultAddressPruneInterval)
	orDefault(&o.AddressPoll, DefaultAddressPollInterval)
}

// orDefault sets *v to def when it holds its type's zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
