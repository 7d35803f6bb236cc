// Package charm is the dqlite-controller charm's logic. Every hook runs the
// same idempotent Reconcile: read the inputs (hook environment, config, the
// db-cluster peer relation, this machine's addresses, the systemd unit),
// compute the desired state, and apply only what differs. The rules
// themselves are pure functions of their inputs, in package bindaddr (the
// bind address) and package peers (the relation data); the hook only makes
// the tool calls around them.
//
// # Data flow
//
//  1. Each unit resolves its Dqlite bind address: the one address in the best
//     scope tier of network-get db-cluster's ingress-addresses, which must be
//     configured on one of the machine's interfaces (package bindaddr).
//  2. It publishes it in its db-cluster unit data: db-bind-address and
//     agent-id (its unit number, or what configchange.socket's GET
//     /agent-id answered in its first hook: agentid.go).
//  3. The leader aggregates every unit with valid data into the application
//     data: db-bind-addresses (sorted JSON {"<agent-id>": "<host>"}) and, once,
//     bootstrap-agent-id.
//  4. Every unit writes /var/lib/juju/agents/controller-<agent-id>/controller.conf
//     from the application data, only when its content changes; controllerd
//     watches that file.
//  5. The same file carries this unit's own API addresses, which controllerd
//     publishes for agents and clients: api-hosts, every usable address of
//     the machine (netlink), and api-agent-hosts, those in the space of the
//     extra binding `api` (network-get api). This is Juju's juju-mgmt-space
//     as a binding; an empty api-agent-hosts makes controllerd give agents
//     all of this unit's addresses (see apihosts.go).
//
// # Exactly one bootstrap
//
// A Dqlite cluster is born when one node with an empty data dir bootstraps;
// every other node must join it. Two bootstraps would give two clusters that
// never merge. The charm and controllerd agree on who bootstraps like this:
//
//   - The leader writes bootstrap-agent-id into the application data in the
//     same relation-set as the first non-empty db-bind-addresses it writes:
//     its own agent id if it has published an address, else the lowest agent
//     id in the list. Whenever bootstrap-agent-id is already set, no unit ever
//     writes it again, whoever is leader.
//   - Every unit copies db-bind-addresses and bootstrap-agent-id from the
//     committed application data (never from its own view of the relation,
//     nor, for the leader, from its own uncommitted write) into
//     controller.conf; controllerd bootstraps only if its data dir is empty
//     and its own id equals bootstrap-agent-id, and otherwise joins. A file
//     without bootstrap-agent-id never leads to a bootstrap.
//
// Juju commits application data only when the hook exits 0 and only for the
// unit that holds leadership at that point, and there is one leader at a
// time. So the first committed write of bootstrap-agent-id is the only one:
// any later leader (after leader-elected, or in a deploy -n 3 race) reads it
// back and keeps it. Because the value is fixed before any controller.conf
// carries it, every unit's file names the same node, and that node is in the
// list the leader wrote at the same time.
//
// Known limit: if the chosen unit is removed before its controllerd ever
// bootstrapped, nobody bootstraps and the other nodes wait for a cluster to
// join. The leader could re-choose only if it knew that no node had ever
// bootstrapped or joined; the relation does not carry that (a node that
// joined may not have run a hook since), and guessing wrong makes two
// clusters, which is worse than waiting. So the charm does not re-choose; the
// way out is to redeploy the application. Agent ids are unit numbers, which
// Juju never reuses, or Juju 4 controller agent ids (configchange.socket),
// which Juju does not reuse either, so a removed bootstrap unit can never
// come back as a second bootstrapper.
//
// # A leader that has not seen every unit yet
//
// relation-list answers with the units this unit has seen join. A unit that
// becomes leader before it has processed every peer's relation-joined (a
// leader change during deploy or add-unit) would, by aggregating only its
// own view, drop live members from the list, and the daemons would then
// remove them from the cluster. So the leader keeps every entry of the
// current db-bind-addresses whose unit it neither sees in the relation nor
// saw depart (every unit records the peers it sees depart, whether leader or
// not). The price: a unit that departed before this leader joined the
// relation, while the previous leader failed to drop it, stays listed.
//
// # A unit that is being removed
//
// When this unit is the departing one (relation-departed with
// JUJU_DEPARTING_UNIT naming itself), its view of the relation shrinks peer by
// peer. Juju's own controller charm rewrites the application data from that
// view while it is still leader, dropping live peers one by one. This charm
// instead marks the unit as leaving (a file in its state directory, since the
// later stop and remove hooks carry no such hint) and from then on changes
// neither relation data nor controller.conf: the remaining leader drops it
// from db-bind-addresses, the remaining daemons remove it from the cluster,
// and the stop hook stops its controllerd, which hands leadership over on
// SIGTERM. Its file keeps the last membership it was part of, so its daemon
// never sees a list that would make it reconfigure itself alone.
package charm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/charm/peers"
	"github.com/juju/dqlite-controller/charm/service"
	"github.com/juju/dqlite-controller/controllerconf"
)

// Contract names (docs/architecture.md).
const (
	// Endpoint is the peer relation endpoint.
	Endpoint = "db-cluster"
	// KeyBindAddress is the unit data key holding the unit's bind address.
	KeyBindAddress = peers.KeyBindAddress
	// KeyAgentID is the unit data key holding the unit's agent id.
	KeyAgentID = peers.KeyAgentID
	// KeyBindAddresses is the application data key holding the cluster list.
	KeyBindAddresses = peers.KeyBindAddresses
	// KeyBootstrapAgentID is the application data key naming the bootstrap node.
	KeyBootstrapAgentID = peers.KeyBootstrapAgentID
	// DefaultPort is the db-port default, used when config-get omits it.
	DefaultPort = 17666
	// DefaultAPIPort is the api-port default (controllerd's HTTP API).
	DefaultAPIPort = 17070
	// BindingAPI is the extra binding whose space holds the addresses
	// agents get (Juju's juju-mgmt-space, as a binding).
	BindingAPI = "api"
	// Version is reported with application-version-set when controllerd
	// cannot tell its own version.
	Version = "0.1.0"
)

// Hook names the charm treats specially.
const (
	hookInstall         = "install"
	hookStart           = "start"
	hookConfigChanged   = "config-changed"
	hookUpgradeCharm    = "upgrade-charm"
	hookUpdateStatus    = "update-status"
	hookStop            = "stop"
	hookRemove          = "remove"
	hookRelationDeparts = Endpoint + "-relation-departed"
)

// Runner runs one executable (a hook tool, systemctl, controllerd) and
// returns its standard output; see hooktools.Runner.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// LocalAddresses lists the IP addresses configured on this machine's
// interfaces (bindaddr.Netlink in production).
type LocalAddresses interface {
	Addresses() ([]netip.Addr, error)
}

// Config is what Reconcile runs against. The hook binary's main sets the
// production values; tests point the directories at temporary ones.
type Config struct {
	// JujuDir is Juju's state directory, /var/lib/juju: agents/ holds
	// controller-<id>/controller.conf and dqlite/ the Dqlite data dir.
	JujuDir string
	// SystemdDir is where the unit file goes, /etc/systemd/system.
	SystemdDir string
	// Runner runs hook tools, systemctl and controllerd.
	Runner Runner
	// LocalAddresses lists this machine's addresses.
	LocalAddresses LocalAddresses
	// Logger receives the charm's log (juju-log in production).
	Logger *slog.Logger
	// ToolTimeout bounds each hook tool and systemctl call (default 2 min).
	ToolTimeout time.Duration
	// WorkloadTimeout bounds `controllerd status` and `controllerd version`
	// (default 5 s).
	WorkloadTimeout time.Duration
	// SettleTimeout is how long a hook that has just changed controller.conf
	// (listing this unit) waits for controllerd to become a cluster member
	// in a settled (active) state before reporting the status, so that the
	// status does not describe the daemon as it was before the change or
	// mid-transition (default 5 s; negative: no wait).
	SettleTimeout time.Duration
	// RejoinTimeout is how long a hook that restarted controllerd (its
	// turn of a rolling restart, restart.go) waits for its node to be a
	// running member again before it leaves the release of the restart
	// lock to a later hook (default 60 s; negative: no wait).
	RejoinTimeout time.Duration
	// AgentIDTimeout bounds GET /agent-id on configchange.socket
	// (agentid.go; default 2 s).
	AgentIDTimeout time.Duration
}

func (c Config) agentsDir() string { return filepath.Join(c.JujuDir, "agents") }

// DataDir is the Dqlite data directory controllerd uses by default.
func (c Config) DataDir() string { return filepath.Join(c.JujuDir, "dqlite") }

// ConfigPath is the controller.conf of agent id.
func (c Config) ConfigPath(agentID string) string {
	return controllerconf.Path(c.agentsDir(), agentID)
}

// stateDir holds the charm's own markers, per machine.
func (c Config) stateDir() string { return filepath.Join(c.JujuDir, "dqlite-controller-charm") }

func (c Config) departingMarker(agentID string) string {
	return filepath.Join(c.stateDir(), "unit-"+agentID+".departing")
}

// peerDepartedMarker records that this unit saw peer agentID depart.
func (c Config) peerDepartedMarker(agentID string) string {
	return filepath.Join(c.stateDir(), "peer-"+agentID+".departed")
}

func (c Config) startedMarker(agentID string) string {
	return filepath.Join(c.stateDir(), "unit-"+agentID+".started")
}

// hook is one run of Reconcile.
type hook struct {
	cfg     Config
	env     Env
	log     *slog.Logger
	tools   *hooktools.Client
	svc     *service.Manager
	agentID string
	// agentIDFromSocket is set when the agent id is not the unit number
	// (configchange.socket answered it).
	agentIDFromSocket bool
	// agentIDClaimedBy is the peer that claims this unit's agent id
	// (agentIDCollision), "" when none does.
	agentIDClaimedBy string
	status           statusCollector
	// joinExpected is set when this hook changed the cluster part of
	// controller.conf and the new file lists this unit: controllerd is
	// about to (re)join.
	joinExpected bool
	// activeNotes are appended to an active status message.
	activeNotes []string
	// peerData is the peers' unit data as the leader's aggregation read
	// it in this hook (nil: not read).
	peerData map[string]map[string]string
	// serviceSettings are the unit file's settings every unit shares
	// ("db-port=N api-port=M"), set once it renders (restart.go).
	serviceSettings string
	// local caches this machine's addresses for the hook (localAddresses).
	local     []netip.Addr
	localErr  error
	localDone bool
}

// Reconcile runs one hook. It returns an error only when the hook should
// fail so that Juju retries it (a hook tool or systemctl failing); problems
// an operator must fix are reported with status-set instead.
func Reconcile(ctx context.Context, cfg Config, env Env) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ToolTimeout <= 0 {
		cfg.ToolTimeout = 2 * time.Minute
	}
	if cfg.WorkloadTimeout <= 0 {
		cfg.WorkloadTimeout = 5 * time.Second
	}
	if cfg.SettleTimeout == 0 {
		cfg.SettleTimeout = 5 * time.Second
	}
	if cfg.RejoinTimeout == 0 {
		cfg.RejoinTimeout = time.Minute
	}
	if cfg.AgentIDTimeout <= 0 {
		cfg.AgentIDTimeout = defaultAgentIDTimeout
	}
	if cfg.Runner == nil || cfg.LocalAddresses == nil {
		return errors.New("cannot run the hook: no command runner or local address source configured")
	}
	runner := timeoutRunner{inner: cfg.Runner, timeout: cfg.ToolTimeout}
	h := &hook{
		cfg:   cfg,
		env:   env,
		log:   cfg.Logger.With("hook", env.Hook),
		tools: hooktools.New(runner),
		svc:   service.NewManager(runner, cfg.SystemdDir),
	}
	ok, err := h.resolveAgentID(ctx) // agentid.go
	if ok {
		err = h.run(ctx)
	}
	if serr := h.status.apply(ctx, h.tools); serr != nil && err == nil {
		err = serr
	}
	return err
}

func (h *hook) run(ctx context.Context) error {
	switch h.env.Hook {
	case hookStop:
		return h.stop(ctx)
	case hookRemove:
		return h.remove(ctx)
	}
	departing, err := h.departing()
	if err != nil {
		return err
	}
	if departing {
		h.status.add(hooktools.StatusMaintenance, "leaving the DB cluster; this unit is being removed")
		return nil
	}
	if err := h.reconcileService(ctx); err != nil {
		return err
	}
	relID, err := h.relationID(ctx)
	if err != nil {
		return err
	}
	var cluster *controllerconf.Config
	var caURI string
	if relID == "" {
		h.status.add(hooktools.StatusWaiting, "waiting for the db-cluster peer relation")
	} else if caURI, err = h.ensureCA(ctx, relID); err != nil {
		return err
	} else if cluster, err = h.reconcilePeers(ctx, relID); err != nil {
		return err
	} else if err := h.reconcileTLS(ctx, relID, caURI); err != nil {
		return err
	} else {
		h.publishRaftPosition(ctx, relID) // recovery.go
	}
	if err := h.rollRestart(ctx, relID, cluster); err != nil { // restart.go
		return err
	}
	api, err := h.resolveAPIHosts(ctx)
	if err != nil {
		return err
	}
	h.writeConfig(cluster, api)
	return h.reportWorkload(ctx)
}

// departing reports whether this unit is leaving the db-cluster relation,
// recording it the first time it is told (see the package comment).
func (h *hook) departing() (bool, error) {
	marker := h.cfg.departingMarker(h.agentID)
	if h.env.Hook == hookRelationDeparts && h.env.DepartingUnit == h.env.UnitName {
		if err := writeMarker(marker); err != nil {
			return true, err
		}
		h.log.Info("this unit is leaving the db-cluster relation; relation data and controller.conf are left as they are")
		return true, nil
	}
	if h.env.Hook == hookRelationDeparts && h.env.DepartingUnit != "" {
		if id, err := peers.UnitAgentID(h.env.DepartingUnit); err == nil {
			if err := writeMarker(h.cfg.peerDepartedMarker(id)); err != nil {
				return false, err
			}
		}
	}
	return markerExists(marker)
}

func writeMarker(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("cannot create the charm state directory: %w", err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return nil
}

func markerExists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("cannot check %s: %w", path, err)
	}
	return false, nil
}

// relationID is the db-cluster relation's id, or "" before Juju has created
// it (install runs before db-cluster-relation-created).
func (h *hook) relationID(ctx context.Context) (string, error) {
	if h.env.RelationName == Endpoint && h.env.RelationID != "" {
		return h.env.RelationID, nil
	}
	ids, err := h.tools.RelationIDs(ctx, Endpoint)
	if err != nil {
		return "", err
	}
	if len(ids) == 0 {
		return "", nil
	}
	return ids[0], nil
}

// timeoutRunner bounds every command so that a hung tool cannot hang the
// hook forever (Juju itself puts no deadline on hooks).
type timeoutRunner struct {
	inner   Runner
	timeout time.Duration
}

func (r timeoutRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.inner.Run(ctx, name, args...)
}
