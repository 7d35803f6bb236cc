package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/juju/dqlite-controller/tests/probe"
	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// Nemesis kinds.
const (
	Kill      = "kill"      // kill -9 controllerd; the machine's systemd restarts it on the same data
	Pause     = "pause"     // SIGSTOP, then SIGCONT
	Partition = "partition" // the machine's links down (sim.Model.Partition)
	OneWay    = "oneway"    // blackhole routes on the machine: it cannot send to its peers, they can send to it
	Member    = "member"    // remove-unit of the target, then add-unit
	Disk      = "disk"      // the data dir's tmpfs filled to the last byte, then emptied
)

// Weights of the nemeses in a schedule.
var defaultWeights = map[string]int{Kill: 3, Pause: 3, Partition: 3, OneWay: 2, Disk: 1, Member: 1}

// PhaseOptions describe one phase: one model, one cluster size.
type PhaseOptions struct {
	Name  string
	Model *sim.Model
	Nodes int
	// FaultTime is how long faults are injected.
	FaultTime time.Duration
	// Kinds are the nemeses used (all by default).
	Kinds []string
	// ClientsPerNode run on each node (default 1).
	ClientsPerNode int
	Seed           uint64
	History        *History
	Log            func(format string, args ...any)
}

// PhaseResult is what a phase did besides its history.
type PhaseResult struct {
	Faults int
	ByKind map[string]int
	// MaxRSS and LastRSS are the largest and the last VmRSS seen of any
	// controllerd, in KiB.
	MaxRSS, LastRSS int64
	// Recovered counts faults after which the target was back within
	// the bounded wait; the others are listed in Notes.
	Notes []string
}

type phase struct {
	PhaseOptions
	rng     *rand.Rand
	values  int64 // next unique set element / register value
	process int

	mu      sync.Mutex
	clients map[string]context.CancelFunc
	wg      sync.WaitGroup
	mounts  []string // tmpfs and bind mounts, innermost last
	tmpfs   map[string]string
	res     PhaseResult
}

// RunPhase deploys opts.Nodes units, runs the clients and the nemeses for
// opts.FaultTime, heals everything and makes the final reads. The
// history gets every operation and fault; the caller checks it.
func RunPhase(ctx context.Context, opts PhaseOptions) (res PhaseResult, err error) {
	if opts.ClientsPerNode == 0 {
		opts.ClientsPerNode = 1
	}
	if len(opts.Kinds) == 0 {
		for k := range defaultWeights {
			opts.Kinds = append(opts.Kinds, k)
		}
	}
	p := &phase{PhaseOptions: opts, rng: rand.New(rand.NewPCG(opts.Seed, 1)), clients: map[string]context.CancelFunc{}, tmpfs: map[string]string{}}
	p.res.ByKind = map[string]int{}
	defer p.unmountAll()
	if _, err := p.Model.Deploy(p.Nodes); err != nil {
		return p.res, fmt.Errorf("cannot deploy: %w", err)
	}
	if err := p.waitCluster(ctx, 5*time.Minute); err != nil {
		return p.res, err
	}
	if err := p.setUp(ctx); err != nil {
		return p.res, err
	}
	rssDone := make(chan struct{})
	rssCtx, rssStop := context.WithCancel(ctx)
	go func() { defer close(rssDone); p.sampleRSS(rssCtx) }()
	for _, u := range p.units() {
		p.startClients(ctx, u)
	}
	p.nemesis(ctx)
	p.stopAllClients()
	if err := p.waitCluster(ctx, 5*time.Minute); err != nil {
		p.res.Notes = append(p.res.Notes, "after the faults: "+err.Error())
	}
	err = p.finalReads(ctx)
	rssStop()
	<-rssDone
	return p.res, err
}

func (p *phase) logf(format string, args ...any) {
	if p.Log != nil {
		p.Log("["+p.Name+"] "+format, args...)
	}
}

// units are the live units (a unit being removed is no longer one).
func (p *phase) units() []string {
	var out []string
	for _, u := range p.Model.Status().Units {
		if !u.Dying {
			out = append(out, u.Name)
		}
	}
	return out
}

func (p *phase) waitCluster(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	us := p.units()
	err := probe.Eventually(ctx, time.Second, func() error {
		v := probe.Look(ctx, p.Model)
		lo, hi := probe.VoterRange(len(us))
		return v.OneCluster(us, lo, hi)
	})
	if err != nil {
		return fmt.Errorf("units %v did not form one cluster: %w", us, err)
	}
	return nil
}

// sql runs a statement through a unit's controllerd (simtest.SQLExit).
func (p *phase) sql(ctx context.Context, unit, stmt string) ([]byte, int, string) {
	return simtest.SQLExit(ctx, p.Model, unit, stmt)
}

// mustSQL retries an idempotent statement or a read until it succeeds.
func (p *phase) mustSQL(ctx context.Context, stmt string, limit time.Duration) (probe.SQLResult, string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var res probe.SQLResult
	var unit string
	err := probe.Eventually(ctx, 500*time.Millisecond, func() error {
		us := p.units()
		unit = us[p.rng.IntN(len(us))]
		out, code, msg := p.sql(ctx, unit, stmt)
		if code != 0 {
			return fmt.Errorf("%s on %s: exit %d: %s", stmt, unit, code, msg)
		}
		return json.Unmarshal(out, &res)
	})
	return res, unit, err
}

func (p *phase) setUp(ctx context.Context) error {
	stmts := []string{
		"CREATE TABLE IF NOT EXISTS jset (v INTEGER NOT NULL)",
		"CREATE TABLE IF NOT EXISTS jbank (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
		"CREATE TABLE IF NOT EXISTS jreg (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
	}
	var accts []string
	for i := 0; i < Accounts; i++ {
		accts = append(accts, fmt.Sprintf("(%d, %d)", i, InitialBalance))
	}
	stmts = append(stmts, "INSERT INTO jbank (id, balance) VALUES "+strings.Join(accts, ", ")+" ON CONFLICT(id) DO NOTHING")
	for _, s := range stmts {
		if _, _, err := p.mustSQL(ctx, s, 2*time.Minute); err != nil {
			return fmt.Errorf("cannot set up the tables: %w", err)
		}
	}
	return nil
}

// nextValue is a unique positive value for a set element or a register
// write.
func (p *phase) nextValue() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.values++
	return p.values
}

func (p *phase) newProcess() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.process++
	return p.process
}

func (p *phase) startClients(ctx context.Context, unit string) {
	cctx, cancel := context.WithCancel(context.Background())
	p.mu.Lock()
	p.clients[unit] = cancel
	seed := p.Seed + uint64(len(p.clients))*7919
	p.mu.Unlock()
	for i := 0; i < p.ClientsPerNode; i++ {
		p.wg.Add(1)
		go func(rng *rand.Rand) {
			defer p.wg.Done()
			p.client(ctx, cctx, unit, rng)
		}(rand.New(rand.NewPCG(seed, uint64(i))))
	}
}

func (p *phase) stopClients(unit string) {
	p.mu.Lock()
	cancel := p.clients[unit]
	delete(p.clients, unit)
	p.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// stopAllClients asks every client to stop after its current operation
// and waits for them.
func (p *phase) stopAllClients() {
	p.mu.Lock()
	for u, cancel := range p.clients {
		cancel()
		delete(p.clients, u)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// client runs operations on unit until stop is done; an operation in
// flight runs to its end (ctx only aborts the campaign).
func (p *phase) client(ctx, stop context.Context, unit string, rng *rand.Rand) {
	proc := p.newProcess()
	for stop.Err() == nil && ctx.Err() == nil {
		op := Op{Process: proc, Node: unit, Phase: p.Name}
		var stmt string
		switch r := rng.IntN(10); {
		case r < 4:
			op.Workload, op.F, op.Value = Set, "add", p.nextValue()
			stmt = fmt.Sprintf("INSERT INTO jset (v) VALUES (%d)", op.Value)
		case r < 5:
			op.Workload, op.F = Bank, "read"
			stmt = "SELECT id, balance FROM jbank ORDER BY id"
		case r < 7:
			op.Workload, op.F = Bank, "transfer"
			op.From, op.To, op.Amount = rng.IntN(Accounts), rng.IntN(Accounts-1), 1+rng.Int64N(MaxTransfer)
			if op.To >= op.From {
				op.To++
			}
			// One statement, so one explicit transaction in the daemon.
			stmt = fmt.Sprintf("UPDATE jbank SET balance = balance + CASE id WHEN %d THEN -%d ELSE %d END WHERE id IN (%d, %d)",
				op.From, op.Amount, op.Amount, op.From, op.To)
		case r < 8:
			op.Workload, op.F, op.Key, op.Value = Register, "write", rng.IntN(3), p.nextValue()
			stmt = fmt.Sprintf("INSERT INTO jreg (k, v) VALUES (%d, %d) ON CONFLICT(k) DO UPDATE SET v = excluded.v", op.Key, op.Value)
		default:
			op.Workload, op.F, op.Key = Register, "read", rng.IntN(3)
			stmt = fmt.Sprintf("SELECT v FROM jreg WHERE k = %d", op.Key)
		}
		op.Invoke = p.History.Now()
		out, code, msg := p.sql(ctx, unit, stmt)
		op.Complete, op.Exit, op.Error = p.History.Now(), code, msg
		switch code {
		case 0:
			op.Outcome = OK
			if !op.IsWrite() {
				if err := readInto(&op, out); err != nil {
					op.Outcome, op.Error = Info, err.Error()
				}
			}
		case 1:
			op.Outcome = Fail
		default:
			op.Outcome = Info
		}
		p.History.AddOp(op)
		if op.Outcome == Info {
			proc = p.newProcess()
		}
		select {
		case <-stop.Done():
		case <-time.After(time.Duration(rng.IntN(20)) * time.Millisecond):
		}
	}
}

// readInto parses a read's JSON output into op.Values (bank) or op.Value
// (register).
func readInto(op *Op, out []byte) error {
	var res probe.SQLResult
	if err := json.Unmarshal(out, &res); err != nil {
		return fmt.Errorf("cannot parse %q: %w", out, err)
	}
	switch op.Workload {
	case Register:
		op.Value = 0
		if len(res.Rows) > 0 {
			op.Value = int64(res.Rows[0][0].(float64))
		}
	default:
		op.Values = op.Values[:0]
		for _, r := range res.Rows {
			op.Values = append(op.Values, int64(r[len(r)-1].(float64)))
		}
	}
	return nil
}

func (p *phase) finalReads(ctx context.Context) error {
	for _, w := range []struct{ workload, stmt string }{
		{Set, "SELECT v FROM jset"},
		{Bank, "SELECT id, balance FROM jbank ORDER BY id"},
	} {
		op := Op{Process: p.newProcess(), Workload: w.workload, F: "final-read", Phase: p.Name, Invoke: p.History.Now()}
		res, unit, err := p.mustSQL(ctx, w.stmt, 3*time.Minute)
		op.Node, op.Complete = unit, p.History.Now()
		if err != nil {
			op.Outcome, op.Error = Fail, err.Error()
			p.History.AddOp(op)
			return fmt.Errorf("cannot make the final %s read: %w", w.workload, err)
		}
		op.Outcome = OK
		for _, r := range res.Rows {
			op.Values = append(op.Values, int64(r[len(r)-1].(float64)))
		}
		p.History.AddOp(op)
	}
	return nil
}

// machine returns a unit's machine status.
func (p *phase) machine(unit string) (sim.MachineStatus, error) {
	st := p.Model.Status()
	u, ok := st.Unit(unit)
	if !ok {
		return sim.MachineStatus{}, fmt.Errorf("no unit %s", unit)
	}
	for _, mc := range st.Machines {
		if mc.ID == u.Machine {
			return mc, nil
		}
	}
	return sim.MachineStatus{}, fmt.Errorf("no machine for %s", unit)
}

// daemonPID finds `controllerd run` among the processes of a unit's
// machine (its network namespace).
func (p *phase) daemonPID(unit string) (int, error) {
	mc, err := p.machine(unit)
	if err != nil {
		return 0, err
	}
	out, err := exec.Command("ip", "netns", "pids", mc.NetNS).Output()
	if err != nil {
		return 0, fmt.Errorf("cannot list the processes of %s: %w", unit, err)
	}
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if len(args) > 1 && filepath.Base(args[0]) == "controllerd" && args[1] == "run" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("controllerd does not run on %s", unit)
}

func vmRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return 0
}

func (p *phase) sampleRSS(ctx context.Context) {
	for {
		var last int64
		for _, u := range p.units() {
			if pid, err := p.daemonPID(u); err == nil {
				last = max(last, vmRSS(pid))
			}
		}
		p.mu.Lock()
		p.res.MaxRSS = max(p.res.MaxRSS, last)
		if last > 0 {
			p.res.LastRSS = last
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// leader is the unit whose daemon leads the Dqlite cluster, or "".
func (p *phase) leader(ctx context.Context) string {
	for _, u := range p.units() {
		st, err := probe.Status(ctx, p.Model, u)
		if err == nil && st.LeaderAddress() != "" {
			return probe.UnitOfAddress(p.Model, st.LeaderAddress())
		}
	}
	return ""
}

// nemesis injects one fault at a time until FaultTime has passed.
func (p *phase) nemesis(ctx context.Context) {
	var bag []string
	for _, k := range p.Kinds {
		for i := 0; i < defaultWeights[k]; i++ {
			bag = append(bag, k)
		}
	}
	end := time.Now().Add(p.FaultTime)
	for time.Now().Before(end) && ctx.Err() == nil {
		kind := bag[p.rng.IntN(len(bag))]
		us := p.units()
		target, isLeader := us[p.rng.IntN(len(us))], false
		if p.rng.IntN(2) == 0 {
			if l := p.leader(ctx); l != "" {
				target, isLeader = l, true
			}
		}
		f := Fault{Phase: p.Name, Kind: kind, Target: target, Leader: isLeader, Start: p.History.Now()}
		hold := time.Duration(1000+p.rng.IntN(3000)) * time.Millisecond
		err := p.inject(ctx, kind, target, hold)
		f.End = p.History.Now()
		if err != nil {
			f.Note = err.Error()
			p.logf("%s on %s: %v", kind, target, err)
		}
		p.History.AddFault(f)
		p.res.Faults++
		p.res.ByKind[kind]++
		if kind != Member {
			if err := p.waitMember(ctx, target, 45*time.Second); err != nil {
				p.res.Notes = append(p.res.Notes, fmt.Sprintf("after %s on %s: %v", kind, target, err))
				p.logf("after %s on %s: %v", kind, target, err)
			}
		}
		time.Sleep(time.Duration(200+p.rng.IntN(1000)) * time.Millisecond)
	}
}

// waitMember waits until a unit's daemon is a running member again.
func (p *phase) waitMember(ctx context.Context, unit string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return probe.Eventually(ctx, 300*time.Millisecond, func() error {
		st, err := probe.Status(ctx, p.Model, unit)
		if err != nil {
			return err
		}
		if !st.Member || st.State != "running" || st.LeaderAddress() == "" {
			return fmt.Errorf("%s is %s (member %v, leader %q): %s", unit, st.State, st.Member, st.LeaderAddress(), st.Message)
		}
		return nil
	})
}

func (p *phase) inject(ctx context.Context, kind, target string, hold time.Duration) error {
	switch kind {
	case Kill:
		pid, err := p.daemonPID(target)
		if err != nil {
			return err
		}
		return syscall.Kill(pid, syscall.SIGKILL)
	case Pause:
		pid, err := p.daemonPID(target)
		if err != nil {
			return err
		}
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return err
		}
		time.Sleep(hold)
		return syscall.Kill(pid, syscall.SIGCONT)
	case Partition:
		if err := p.Model.Partition(target, true); err != nil {
			return err
		}
		time.Sleep(hold)
		return p.Model.Partition(target, false)
	case OneWay:
		return p.oneWay(target, hold)
	case Disk:
		return p.fillDisk(target, hold)
	case Member:
		return p.replace(ctx, target)
	}
	return fmt.Errorf("unknown nemesis %q", kind)
}

// oneWay drops every packet the target sends to its peers (blackhole
// routes in its namespace) while theirs still reach it.
func (p *phase) oneWay(target string, hold time.Duration) error {
	mc, err := p.machine(target)
	if err != nil {
		return err
	}
	var peers []string
	for _, u := range p.units() {
		if u == target {
			continue
		}
		if pm, err := p.machine(u); err == nil {
			peers = append(peers, pm.Addresses...)
		}
	}
	var added []string
	defer func() {
		for _, a := range added {
			exec.Command("ip", "-n", mc.NetNS, "route", "del", "blackhole", a).Run()
		}
	}()
	for _, a := range peers {
		if out, err := exec.Command("ip", "-n", mc.NetNS, "route", "add", "blackhole", a).CombinedOutput(); err != nil {
			return fmt.Errorf("cannot add a blackhole route to %s: %v: %s", a, err, out)
		}
		added = append(added, a)
	}
	time.Sleep(hold)
	return nil
}

// replace removes the target unit (juju remove-unit), waits for the
// survivors to form one cluster without it, adds a unit (juju add-unit)
// and waits for it to join; the removed unit's clients stop, the new
// unit's start.
func (p *phase) replace(ctx context.Context, target string) error {
	p.stopClients(target)
	if err := p.Model.RemoveUnit(target, false); err != nil {
		return err
	}
	if err := p.waitCluster(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("after remove-unit %s: %w", target, err)
	}
	names, err := p.Model.AddUnit(1)
	if err != nil {
		return err
	}
	if err := p.waitCluster(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("after add-unit %v: %w", names, err)
	}
	for _, n := range names {
		p.startClients(ctx, n)
	}
	return nil
}

func mount(args ...string) error {
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mount %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// fillDisk fills the target's data dir to the last byte for hold, then
// frees it. The first time, it moves the data dir onto a small tmpfs: the
// daemon is stopped (SIGSTOP, so its files stand still), its files are
// copied onto the tmpfs, which is mounted over the data dir, and the
// stopped daemon is killed (kill -9): the machine's systemd restarts it on
// the same data, now on the tmpfs.
func (p *phase) fillDisk(target string, hold time.Duration) error {
	dir := filepath.Join(p.Model.MachineDir(target), "var-lib-juju", "dqlite")
	staging, ok := p.tmpfs[target]
	if !ok {
		pid, err := p.daemonPID(target)
		if err != nil {
			return err
		}
		staging = dir + ".tmpfs"
		if err := os.MkdirAll(staging, 0o700); err != nil {
			return err
		}
		if err := mount("-t", "tmpfs", "-o", "size=96m,mode=0700", "tmpfs", staging); err != nil {
			return err
		}
		p.mounts = append(p.mounts, staging)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return err
		}
		out, err := exec.Command("cp", "-a", dir+"/.", staging+"/").CombinedOutput()
		if err == nil {
			err = mount("--bind", staging, dir)
		}
		syscall.Kill(pid, syscall.SIGKILL)
		if err != nil {
			return fmt.Errorf("cannot move the data dir onto a tmpfs: %v: %s", err, out)
		}
		p.mounts = append(p.mounts, dir)
		p.tmpfs[target] = staging
		time.Sleep(1500 * time.Millisecond) // systemd's RestartSec=1
	}
	balloon := filepath.Join(staging, "balloon")
	f, err := os.Create(balloon)
	if err != nil {
		return err
	}
	defer os.Remove(balloon)
	defer f.Close()
	var fs unix.Statfs_t
	if err := unix.Statfs(staging, &fs); err != nil {
		return err
	}
	free := int64(fs.Bavail) * fs.Bsize
	for free > 0 && unix.Fallocate(int(f.Fd()), 0, 0, free) != nil {
		free -= 64 << 10
	}
	time.Sleep(hold)
	return nil
}

// unmountAll undoes fillDisk's mounts (before the model deletes its
// machine directories).
func (p *phase) unmountAll() {
	for i := len(p.mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(p.mounts[i], unix.MNT_DETACH); err != nil {
			p.logf("cannot unmount %s: %v", p.mounts[i], err)
		}
	}
	p.mounts = nil
}
