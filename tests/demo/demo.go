// Package demo is the narrated session `make demo` shows (and the end-to-end
// test TestDemo_NarratedSession replays): a simulated Juju model whose units
// form, grow, shrink and heal one real Dqlite cluster.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
)

// Config configures a demo run.
type Config struct {
	CharmDir string
	Out      io.Writer
	Logger   *slog.Logger
	// KeepRunDir keeps the machines' files and logs after the run.
	KeepRunDir bool
	// NoSignalHandler leaves SIGINT/SIGTERM to the caller (tests).
	NoSignalHandler bool
	// StepTimeout bounds each wait; default 5 minutes.
	StepTimeout time.Duration
}

// Spaces of the demo model: every machine has one address in space alpha
// (subnet net0) and one in space db (subnet net2); the multi-address machine
// of the last step also has one in net1, a second alpha subnet.
var subnets = []sim.SubnetSpec{
	{Name: "net0", Space: "alpha"},
	{Name: "net1", Space: "alpha"},
	{Name: "net2", Space: "db"},
}

type runner struct {
	cfg   Config
	m     *sim.Model
	out   io.Writer
	start time.Time
	step  int
	agent int // the agent machine's id, -1 before it exists
}

// Run runs the whole session and tears the model down, whatever happens.
func Run(ctx context.Context, cfg Config) (err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = 5 * time.Minute
	}
	m, err := sim.New(sim.Options{
		CharmDir:             cfg.CharmDir,
		Logger:               cfg.Logger,
		Subnets:              subnets,
		DefaultSubnets:       []string{"net0", "net2"},
		LeaseExpiry:          2 * time.Second,
		UpdateStatusInterval: 5 * time.Second,
		KeepRunDir:           cfg.KeepRunDir,
		NoSignalHandler:      cfg.NoSignalHandler,
	})
	if err != nil {
		return err
	}
	r := &runner{cfg: cfg, m: m, out: cfg.Out, start: time.Now(), agent: -1}
	defer func() {
		if err != nil {
			r.say("\nThe demo failed: %v\n", err)
			r.table(context.Background())
			if cfg.KeepRunDir {
				r.say("Machine files and logs are kept in %s\n", m.RunDir())
			}
		}
		if cerr := m.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		r.say("Model torn down: every namespace, process and temporary file of run %s is gone (%s in all).\n",
			m.RunID(), time.Since(r.start).Round(time.Second))
	}()
	r.say("A simulated Juju model (run %s): machines are network namespaces; subnets net0, net1 in space alpha, net2 in space db.\n", m.RunID())
	for _, step := range []func(context.Context) error{
		r.deployOne, r.addTwo, r.addAgentMachine, r.writeAndRead, r.removeDqliteLeader, r.removeOneMore, r.multiAddressThenBind,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	r.say("\nAll steps done.\n")
	return nil
}

func (r *runner) say(format string, args ...any) { fmt.Fprintf(r.out, format, args...) }

func (r *runner) header(cmd, what string) {
	r.step++
	r.say("\n[%s] Step %d: %s\n", time.Since(r.start).Round(time.Second), r.step, what)
	if cmd != "" {
		r.say("$ %s\n", cmd)
	}
}

func (r *runner) stepCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.StepTimeout)
}

// table prints the juju status-like table with each unit's Dqlite role.
func (r *runner) table(ctx context.Context) {
	v := probe.Look(ctx, r.m)
	leaderAddr := ""
	for _, s := range v.Nodes {
		if s.LeaderAddress() != "" {
			leaderAddr = s.LeaderAddress()
		}
	}
	sim.WriteStatusTable(r.out, r.m.Status(), func(unit string) []string {
		s, ok := v.Nodes[unit]
		if !ok {
			return []string{"-"}
		}
		role := s.Role
		if role == "" {
			role = s.State
		}
		if s.Address != "" && s.Address == leaderAddr {
			role += "*"
		}
		return []string{role}
	}, "Dqlite")
	r.leaseLine(v)
}

// leaseHolder is the unit whose controllerd holds the lease, or "".
func (r *runner) leaseHolder(ctx context.Context) string {
	v := probe.Look(ctx, r.m)
	for u, s := range v.Nodes {
		if s.HeldByMe() {
			return u
		}
	}
	return ""
}

// leaseLine says which controller holds the singular-controller lease (and
// so runs the single-instance workers, e.g. backups) and until when.
func (r *runner) leaseLine(v probe.View) {
	for _, u := range r.m.Status().UnitNames() {
		s, ok := v.Nodes[u]
		if ok && s.HeldByMe() {
			r.say("singular-controller lease: held by %s (%s) until %s (database time); it runs the single-instance work (backups)\n", s.Lease.Holder, u, s.Lease.Expiry)
			return
		}
	}
	r.say("singular-controller lease: no holder right now\n")
}

// settle waits until the hooks have run, the units form one cluster of the
// expected size and every unit shows active.
func (r *runner) settle(ctx context.Context, wantUnits int) error {
	ctx, cancel := r.stepCtx(ctx)
	defer cancel()
	if err := r.m.WaitIdle(ctx); err != nil {
		return err
	}
	err := probe.Eventually(ctx, time.Second, func() error {
		us := r.m.Status().UnitNames()
		if len(us) != wantUnits {
			return fmt.Errorf("%d units, want %d", len(us), wantUnits)
		}
		lo, hi := probe.VoterRange(wantUnits)
		return probe.Look(ctx, r.m).OneCluster(us, lo, hi)
	})
	if err != nil {
		return fmt.Errorf("cannot see one cluster of %d: %w", wantUnits, err)
	}
	// The charm's message is a snapshot taken when its last hook ran; wait
	// for update-status to refresh it, so the table does not show a member
	// count the cluster has already left behind.
	count := fmt.Sprintf("; %d member", wantUnits)
	return r.m.WaitFor(ctx, "every unit active with the cluster's size", func(st sim.Status) bool {
		for _, u := range st.Units {
			if u.Workload != "active" || !strings.Contains(u.Message, count) {
				return false
			}
		}
		return true
	})
}

func (r *runner) deployOne(ctx context.Context) error {
	r.header("juju deploy ./dqlite-controller.charm", "deploy one unit: a one-node cluster")
	if _, err := r.m.Deploy(1); err != nil {
		return err
	}
	if err := r.settle(ctx, 1); err != nil {
		return err
	}
	r.table(ctx)
	return nil
}

func (r *runner) addTwo(ctx context.Context) error {
	r.header("juju add-unit dqlite-controller -n 2", "add two units: three voters")
	if _, err := r.m.AddUnit(2); err != nil {
		return err
	}
	if err := r.settle(ctx, 3); err != nil {
		return err
	}
	r.table(ctx)
	return nil
}

// addAgentMachine adds a machine with no controller, on subnet net0 only,
// whose agent.conf starts with a single controller address: controllerd
// agent fills in the whole list from the controllers' watch.
func (r *runner) addAgentMachine(ctx context.Context) error {
	r.header("juju add-machine   # a workload machine: controllerd agent keeps its agent.conf apiaddresses current",
		"an agent machine follows the controllers' API addresses")
	all := r.m.ControllerAgentAddresses()
	id, err := r.m.AddAgentMachine(sim.AgentMachineSpec{Subnets: []string{"net0"}, APIAddresses: all[:1]})
	if err != nil {
		return err
	}
	r.agent = id
	r.say("machine %d starts knowing one controller: %s\n", id, all[0])
	took, err := r.waitAgentFollows(ctx, time.Now())
	if err != nil {
		return err
	}
	r.say("after %.1f s it knows them all:\n", took.Seconds())
	return r.showAgentConf()
}

// waitAgentFollows waits until the agent machine's apiaddresses are the
// controllers' current agent addresses.
func (r *runner) waitAgentFollows(ctx context.Context, since time.Time) (time.Duration, error) {
	if r.agent < 0 {
		return 0, nil
	}
	ctx, cancel := r.stepCtx(ctx)
	defer cancel()
	want := r.m.ControllerAgentAddresses()
	sort.Strings(want)
	err := probe.Eventually(ctx, 50*time.Millisecond, func() error {
		got, err := r.m.AgentAPIAddresses(r.agent)
		if err != nil {
			return err
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("machine %d's agent.conf lists %v, want %v", r.agent, got, want)
		}
		return nil
	})
	return time.Since(since), err
}

func (r *runner) showAgentConf() error {
	r.say("$ juju ssh %d -- grep -A9 apiaddresses %s\n", r.agent, sim.AgentConfigPathOnMachine(r.agent))
	addrs, err := r.m.AgentAPIAddresses(r.agent)
	if err != nil {
		return err
	}
	r.say("apiaddresses:\n")
	for _, a := range addrs {
		r.say("- %s\n", a)
	}
	return nil
}

func (r *runner) sql(ctx context.Context, unit, stmt string) (probe.SQLResult, error) {
	r.say("$ juju exec --unit %s -- controllerd sql %q\n", unit, stmt)
	ctx, cancel := r.stepCtx(ctx)
	defer cancel()
	var res probe.SQLResult
	err := probe.Eventually(ctx, time.Second, func() error {
		var err error
		res, err = probe.SQL(ctx, r.m, unit, stmt)
		return err
	})
	if err != nil {
		return res, err
	}
	if res.RowsAffected != nil {
		r.say("  rows affected: %d\n", *res.RowsAffected)
	} else {
		tw := tabwriter.NewWriter(r.out, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  %s\n", strings.Join(res.Columns, "\t"))
		for _, row := range res.Rows {
			var cells []string
			for _, c := range row {
				cells = append(cells, fmt.Sprint(c))
			}
			fmt.Fprintf(tw, "  %s\n", strings.Join(cells, "\t"))
		}
		tw.Flush()
	}
	return res, nil
}

const wantRows = 3

func (r *runner) checkRows(ctx context.Context, unit string) error {
	res, err := r.sql(ctx, unit, "SELECT id, note FROM t ORDER BY id")
	if err != nil {
		return err
	}
	if len(res.Rows) != wantRows {
		return fmt.Errorf("%s reads %d rows, want %d", unit, len(res.Rows), wantRows)
	}
	return nil
}

func (r *runner) writeAndRead(ctx context.Context) error {
	us := r.m.Status().UnitNames()
	r.header("", fmt.Sprintf("write rows through %s, read them on %s", us[1], us[2]))
	if _, err := r.sql(ctx, us[1], "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, note TEXT NOT NULL)"); err != nil {
		return err
	}
	if _, err := r.sql(ctx, us[1], "INSERT INTO t (id, note) VALUES (1, 'written through "+us[1]+"'), (2, 'replicated by Raft'), (3, 'before any unit left') ON CONFLICT (id) DO NOTHING"); err != nil {
		return err
	}
	return r.checkRows(ctx, us[2])
}

func (r *runner) dqliteLeaderUnit(ctx context.Context) (string, error) {
	v := probe.Look(ctx, r.m)
	for _, u := range r.m.Status().UnitNames() {
		if s, ok := v.Nodes[u]; ok && s.LeaderAddress() != "" {
			if lu := probe.UnitOfAddress(r.m, s.LeaderAddress()); lu != "" {
				return lu, nil
			}
		}
	}
	return "", errors.New("cannot find the unit of the Dqlite leader")
}

func (r *runner) removeDqliteLeader(ctx context.Context) error {
	leader, err := r.dqliteLeaderUnit(ctx)
	if err != nil {
		return err
	}
	r.header("juju remove-unit "+leader, "remove the unit whose daemon is the Dqlite leader; the agent machine follows")
	before := r.leaseHolder(ctx)
	removed := time.Now()
	if err := r.m.RemoveUnit(leader, false); err != nil {
		return err
	}
	took, err := r.waitAgentFollows(ctx, removed)
	if err != nil {
		return err
	}
	if err := r.settle(ctx, 2); err != nil {
		return err
	}
	r.table(ctx)
	if after := r.leaseHolder(ctx); before != "" && after != before {
		r.say("the lease moved from %s to %s: the leaving controller stopped its workers and revoked it\n", before, after)
	}
	r.say("machine %d's agent.conf dropped %s's address %.1f s after remove-unit:\n", r.agent, leader, took.Seconds())
	if err := r.showAgentConf(); err != nil {
		return err
	}
	for _, u := range r.m.Status().UnitNames() {
		if err := r.checkRows(ctx, u); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) removeOneMore(ctx context.Context) error {
	us := r.m.Status().UnitNames()
	sort.Strings(us)
	victim := us[len(us)-1]
	r.header("juju remove-unit "+victim, "remove one more: the last unit reconfigures itself as the sole member")
	if err := r.m.RemoveUnit(victim, false); err != nil {
		return err
	}
	if err := r.settle(ctx, 1); err != nil {
		return err
	}
	r.table(ctx)
	return r.checkRows(ctx, r.m.Status().UnitNames()[0])
}

func (r *runner) multiAddressThenBind(ctx context.Context) error {
	r.header("juju add-unit dqlite-controller --to <machine with addresses in net0 and net1>",
		"a machine with two addresses in space alpha: the new unit blocks")
	names, err := r.m.AddUnit(1, sim.MachineSpec{Subnets: []string{"net0", "net1", "net2"}})
	if err != nil {
		return err
	}
	sctx, cancel := r.stepCtx(ctx)
	defer cancel()
	if err := r.m.WaitFor(sctx, names[0]+" blocked", func(st sim.Status) bool {
		u, _ := st.Unit(names[0])
		return u.Workload == "blocked"
	}); err != nil {
		return err
	}
	if err := r.m.WaitIdle(sctx); err != nil {
		return err
	}
	r.table(ctx)
	r.header("juju bind dqlite-controller db-cluster=db", "bind picks a space: every unit moves to its address in space db, the new unit joins")
	if err := r.m.Bind("db-cluster", "db"); err != nil {
		return err
	}
	if err := r.settle(ctx, 2); err != nil {
		return err
	}
	r.table(ctx)
	return r.checkRows(ctx, names[0])
}
