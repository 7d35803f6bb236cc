package sim

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requireRoot skips only when not root and CI is unset (the project's rule).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the simulator needs root (network namespaces), and CI is set")
		}
		t.Skip("skipped: the simulator needs root (network namespaces); not root and CI is unset")
	}
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newToyModel(t *testing.T, opts Options) *Model {
	t.Helper()
	requireRoot(t)
	if opts.CharmDir == "" {
		dir, _ := filepath.Abs("testdata/toycharm")
		opts.CharmDir = dir
	}
	opts.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts.NoSignalHandler = true
	if opts.LeaseExpiry == 0 {
		opts.LeaseExpiry = 500 * time.Millisecond
	}
	m, err := New(opts)
	if err != nil {
		t.Fatalf("cannot create model: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("status at failure:\n%s", m.StatusTable())
			for _, u := range m.Status().Units {
				t.Logf("unit log of %s:\n%s", u.Name, m.UnitLog(u.Name))
			}
		}
		if err := m.Close(); err != nil {
			t.Errorf("cannot tear down model: %v", err)
		}
		if _, err := os.Stat(filepath.Join(netnsDir, m.fabric)); err == nil {
			t.Errorf("fabric namespace %s left behind", m.fabric)
		}
	})
	return m
}

func waitIdle(t *testing.T, m *Model) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

func hookNames(recs []HookRecord) []string {
	var out []string
	for _, r := range recs {
		s := r.Hook
		if r.RemoteUnit != "" {
			s += "(" + r.RemoteUnit + ")"
		}
		out = append(out, s)
	}
	return out
}

// readEnvRecords reads the environment files the toy charm wrote for each
// hook on the unit's machine, in order.
func readEnvRecords(t *testing.T, m *Model, unit string) []map[string]string {
	t.Helper()
	dir := filepath.Join(m.MachineDir(unit), "var-lib-juju", "toy")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("cannot read the toy charm's records: %v", err)
	}
	var out []map[string]string
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"_file": e.Name()}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			k, v, _ := strings.Cut(line, "=")
			env[k] = v
		}
		out = append(out, env)
	}
	return out
}

func itoa(n int) string      { return strconv.Itoa(n) }
func itoa64(n uint64) string { return strconv.FormatUint(n, 10) }
