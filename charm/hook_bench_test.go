package charm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/charm"
	"github.com/juju/dqlite-controller/charm/hooktools"
)

// The P1 benchmark: one steady-state update-status hook of a deployed
// single-unit leader, its tool calls answered by tiny shell scripts
// ("fast tools") that replay what the fake Juju model answers, side by
// side with a minimal Python dispatch making the same calls in the same
// order (python3 -S script: subprocess.run each, json.loads the JSON
// ones). TestHookRecording_ForBenchmark records the calls; the benchmark
// runs it in a child process (it needs a *testing.T for the fake model).

const (
	recordEnv       = "DQC_HOOK_RECORD"
	rootPlaceholder = "@ROOT@"
)

type recordedCall struct {
	Argv []string `json:"argv"`
	JSON bool     `json:"json"`
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// TestHookRecording_ForBenchmark is BenchmarkHook_UpdateStatus's helper:
// with DQC_HOOK_RECORD=<dir> it deploys a unit on the fake model and
// writes into dir the replay tools, the unit's files and the calls of one
// steady-state update-status.
func TestHookRecording_ForBenchmark(t *testing.T) {
	dir := os.Getenv(recordEnv)
	if dir == "" {
		t.Skip("skipped: a helper of BenchmarkHook_UpdateStatus (set " + recordEnv + ")")
	}
	m := newModel(t)
	u := m.addUnit(0, "10.0.0.1")
	m.leader = u.name
	u.workload = workloadJSON("0", "voter", "0:voter")
	deploy(m, u)
	m.mustRun(u, "update-status")
	u.calls = nil
	m.mustRun(u, "update-status")
	calls := u.calls
	// Replay each call's answer from the model in its state now.
	scripts := map[string]*strings.Builder{}
	var recorded []recordedCall
	for _, c := range calls {
		argv := strings.Fields(c)
		if argv[0] == "status-set" && len(argv) > 3 {
			argv = append(argv[:3], strings.Join(argv[3:], " "))
		}
		r := &hookRunner{m: m, u: u, env: hookEnv{hook: "update-status"}, unitPending: map[string]string{}, appPending: map[string]string{}}
		out, err := r.Run(context.Background(), argv[0], argv[1:]...)
		code, stderr := 0, ""
		var ee *hooktools.ExitError
		if errors.As(err, &ee) {
			code, stderr, out = ee.Code, ee.Stderr, ee.Stdout
		}
		name := filepath.Base(argv[0])
		b := scripts[name]
		if b == nil {
			b = &strings.Builder{}
			b.WriteString("#!/bin/sh\ncase \"$*\" in\n")
			scripts[name] = b
		}
		// The unit's directory moves: match any path in its place.
		pattern := shellQuote(strings.Join(argv[1:], " "))
		if before, after, ok := strings.Cut(strings.Join(argv[1:], " "), u.root); ok {
			pattern = shellQuote(before) + "*" + shellQuote(after)
		}
		fmt.Fprintf(b, "%s) printf '%%s' %s; printf '%%s' %s >&2; exit %d ;;\n",
			pattern, shellQuote(string(out)), shellQuote(stderr), code)
		args := append([]string{name}, argv[1:]...)
		for i := range args {
			args[i] = strings.ReplaceAll(args[i], u.root, rootPlaceholder)
		}
		recorded = append(recorded, recordedCall{Argv: args, JSON: strings.Contains(c, "--format=json")})
	}
	tools := filepath.Join(dir, "tools")
	if err := os.MkdirAll(tools, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range scripts {
		b.WriteString("*) exit 0 ;;\nesac\n")
		if err := os.WriteFile(filepath.Join(tools, name), []byte(b.String()), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := json.Marshal(recorded)
	if err := os.WriteFile(filepath.Join(dir, "calls.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", u.root, filepath.Join(dir, "root")).CombinedOutput(); err != nil {
		t.Fatalf("cannot keep the unit's files: %v: %s", err, out)
	}
}

// replayRunner runs every tool from the replay directory.
type replayRunner struct{ tools string }

func (r replayRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return hooktools.ExecRunner{}.Run(ctx, filepath.Join(r.tools, filepath.Base(name)), args...)
}

func stats(xs []time.Duration) (median, lo, hi float64) {
	s := append([]time.Duration(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	f := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return f(s[len(s)/2]), f(s[0]), f(s[len(s)-1])
}

// BenchmarkHook_UpdateStatus reports P1: one update-status hook's wall
// time with fast tools (the reconcile in-process, its tool calls exec'd,
// plus the dispatch binary's own start-up measured apart), with the
// independent reads prefetched as dispatch does (hook-ms) and one call
// after the other (hook-serial-ms), and the same calls made by a minimal
// Python dispatch.
func BenchmarkHook_UpdateStatus(b *testing.B) {
	dir := b.TempDir()
	rec := exec.Command(os.Args[0], "-test.run=^TestHookRecording_ForBenchmark$", "-test.count=1")
	rec.Env = append(os.Environ(), recordEnv+"="+dir)
	if out, err := rec.CombinedOutput(); err != nil {
		b.Fatalf("cannot record the hook: %v\n%s", err, out)
	}
	var calls []recordedCall
	data, err := os.ReadFile(filepath.Join(dir, "calls.json"))
	if err == nil {
		err = json.Unmarshal(data, &calls)
	}
	if err != nil || len(calls) == 0 {
		b.Fatalf("no recorded calls: %v", err)
	}
	tools := filepath.Join(dir, "tools")
	root := filepath.Join(dir, "root")
	var argvs [][]string
	for _, c := range calls {
		argv := []string{filepath.Join(tools, c.Argv[0])}
		for _, a := range c.Argv[1:] {
			argv = append(argv, strings.ReplaceAll(a, rootPlaceholder, root))
		}
		argvs = append(argvs, argv)
	}
	script := fmt.Sprintf(`import json, subprocess
for argv, js in %s:
    p = subprocess.run(argv, capture_output=True)
    if js and p.returncode == 0 and p.stdout.strip():
        json.loads(p.stdout)
`, pyCalls(argvs, calls))
	py := filepath.Join(dir, "dispatch.py")
	if err := os.WriteFile(py, []byte(script), 0o644); err != nil {
		b.Fatal(err)
	}
	u := &unit{local: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.0.0.1")}}
	cfg := charm.Config{
		JujuDir:        filepath.Join(root, "var/lib/juju"),
		SystemdDir:     filepath.Join(root, "etc/systemd/system"),
		Runner:         replayRunner{tools: tools},
		LocalAddresses: fakeAddrs{u},
		SettleTimeout:  -1,
		RejoinTimeout:  -1,
	}
	env := charm.Env{Hook: "update-status", UnitName: unitName(0), CharmDir: charmDir}
	cfg.Logger = slog.New(hooktools.NewLogHandler(hooktools.New(cfg.Runner), slog.LevelInfo, os.Stderr))
	// The dispatch binary's start-up: it exits at once without a hook
	// environment.
	dispatch := filepath.Join(dir, "dispatch")
	build := exec.Command("go", "build", "-trimpath", "-o", dispatch, "../hooks")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("cannot build dispatch: %v\n%s", err, out)
	}
	const reps = 41
	var goRuns, serialRuns, startRuns, pyRuns []time.Duration
	for i := 0; i < b.N; i++ {
		for r := 0; r < reps; r++ {
			at := time.Now()
			if err := charm.Reconcile(context.Background(), cfg, env); err != nil {
				b.Fatalf("update-status: %v", err)
			}
			serialRuns = append(serialRuns, time.Since(at))
			// As dispatch runs it: the independent reads prefetched.
			at = time.Now()
			pcfg := cfg
			pre := hooktools.NewPrefetch(cfg.Runner, charm.PrefetchCalls(env)...)
			pcfg.Runner = pre
			if err := charm.Reconcile(context.Background(), pcfg, env); err != nil {
				b.Fatalf("update-status: %v", err)
			}
			pre.Close()
			goRuns = append(goRuns, time.Since(at))
			at = time.Now()
			cmd := exec.Command(dispatch)
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			cmd.Run() // exits 1: no hook environment
			startRuns = append(startRuns, time.Since(at))
			at = time.Now()
			if out, err := exec.Command("python3", "-S", py).CombinedOutput(); err != nil {
				b.Fatalf("python dispatch: %v\n%s", err, out)
			}
			pyRuns = append(pyRuns, time.Since(at))
		}
	}
	gm, glo, ghi := stats(goRuns)
	serial, _, _ := stats(serialRuns)
	sm, slo, shi := stats(startRuns)
	pm, plo, phi := stats(pyRuns)
	b.ReportMetric(float64(len(calls)), "tool-calls")
	b.ReportMetric(gm+sm, "hook-ms")
	b.ReportMetric(glo+slo, "hook-min-ms")
	b.ReportMetric(ghi+shi, "hook-max-ms")
	b.ReportMetric(sm, "dispatch-start-ms")
	b.ReportMetric(serial+sm, "hook-serial-ms")
	b.ReportMetric(pm, "python-ms")
	b.ReportMetric(plo, "python-min-ms")
	b.ReportMetric(phi, "python-max-ms")
	b.ReportMetric(pm/(gm+sm), "python/go")
}

func pyCalls(argvs [][]string, calls []recordedCall) string {
	var parts []string
	for i, a := range argvs {
		q, _ := json.Marshal(a)
		js := "False"
		if calls[i].JSON {
			js = "True"
		}
		parts = append(parts, fmt.Sprintf("(%s, %s)", q, js))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
