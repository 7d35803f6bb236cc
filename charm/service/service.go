// Package service installs and drives the controllerd systemd unit by
// running systemctl, as an operator would on the machine.
package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/controllerconf"
)

// Name is the systemd unit the charm owns.
const Name = "controllerd.service"

// Runner runs one executable and returns its standard output; failures are
// *hooktools.ExitError values.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Spec is what the unit file depends on.
type Spec struct {
	// CharmDir is the charm's directory, holding the controllerd binary.
	CharmDir string
	// AgentID is the controller agent id (the unit number).
	AgentID string
	// Port is the Dqlite port.
	Port int
	// APIPort is controllerd's HTTP API port.
	APIPort int
}

// Render returns the unit file for s. systemd sends SIGTERM on stop and
// waits TimeoutStopSec: controllerd hands Dqlite leadership over on SIGTERM,
// which go-dqlite bounds at 30 s, so 40 s leaves it room before SIGKILL.
func Render(s Spec) ([]byte, error) {
	if err := controllerconf.ValidateAgentID(s.AgentID); err != nil {
		return nil, fmt.Errorf("cannot render %s: %w", Name, err)
	}
	if s.Port < 1 || s.Port > 65535 {
		return nil, fmt.Errorf("cannot render %s: port %d out of range", Name, s.Port)
	}
	if s.APIPort < 1 || s.APIPort > 65535 {
		return nil, fmt.Errorf("cannot render %s: API port %d out of range", Name, s.APIPort)
	}
	if err := checkPath(s.CharmDir); err != nil {
		return nil, fmt.Errorf("cannot render %s: %w", Name, err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `# Written by the dqlite-controller charm; changes are overwritten.
[Unit]
Description=Dqlite node of Juju controller %[1]s (dqlite-controller charm)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=%[2]s run --controller-id %[1]s --port %[3]d --api-port %[4]d
Restart=always
RestartSec=1
KillSignal=SIGTERM
TimeoutStopSec=40

[Install]
WantedBy=multi-user.target
`, s.AgentID, filepath.Join(s.CharmDir, "controllerd"), s.Port, s.APIPort)
	return b.Bytes(), nil
}

// checkPath refuses paths that systemd would not take literally in
// ExecStart (whitespace, quotes, specifiers, variables, escapes). Juju's
// charm directories never contain them.
func checkPath(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("charm directory %q is not absolute", p)
	}
	for _, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			strings.ContainsRune("/._+-@:,", r)
		if !ok {
			return fmt.Errorf("charm directory %q has a character (%q) systemd would interpret", p, r)
		}
	}
	return nil
}

// Manager manages the unit through systemctl.
type Manager struct {
	run Runner
	dir string
}

// NewManager returns a Manager that keeps the unit file in dir (normally
// /etc/systemd/system) and runs systemctl with r.
func NewManager(r Runner, dir string) *Manager {
	return &Manager{run: r, dir: dir}
}

// Path is the unit file's path.
func (m *Manager) Path() string {
	return filepath.Join(m.dir, Name)
}

// Install writes content to the unit file when it differs from what is
// there and, if it wrote, makes systemd re-read it. It reports whether the
// file changed.
func (m *Manager) Install(ctx context.Context, content []byte) (changed bool, err error) {
	old, err := os.ReadFile(m.Path())
	if err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("cannot read %s: %w", m.Path(), err)
	}
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return false, fmt.Errorf("cannot create %s: %w", m.dir, err)
	}
	if err := controllerconf.WriteFileAtomic(m.Path(), content, 0o644); err != nil {
		return false, err
	}
	return true, m.systemctl(ctx, "daemon-reload")
}

// Uninstall removes the unit file, if present, and makes systemd forget it.
func (m *Manager) Uninstall(ctx context.Context) error {
	err := os.Remove(m.Path())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot remove %s: %w", m.Path(), err)
	}
	return m.systemctl(ctx, "daemon-reload")
}

// Enable makes the unit start at boot.
func (m *Manager) Enable(ctx context.Context) error { return m.systemctl(ctx, "enable", Name) }

// Disable stops the unit starting at boot.
func (m *Manager) Disable(ctx context.Context) error { return m.systemctl(ctx, "disable", Name) }

// Start starts the unit (a no-op when it runs).
func (m *Manager) Start(ctx context.Context) error { return m.systemctl(ctx, "start", Name) }

// Stop stops the unit and waits for it to exit.
func (m *Manager) Stop(ctx context.Context) error { return m.systemctl(ctx, "stop", Name) }

// Restart stops and starts the unit.
func (m *Manager) Restart(ctx context.Context) error { return m.systemctl(ctx, "restart", Name) }

// State runs `systemctl is-active` and returns the unit's state word
// ("active", "inactive", "failed", "activating", ...). A non-zero exit with
// a state on stdout is an answer, not an error.
func (m *Manager) State(ctx context.Context) (string, error) {
	out, err := m.run.Run(ctx, "systemctl", "is-active", Name)
	state := strings.TrimSpace(string(out))
	var exitErr *hooktools.ExitError
	if err != nil && errors.As(err, &exitErr) && exitErr.Code > 0 {
		state = strings.TrimSpace(string(exitErr.Stdout))
		if state != "" {
			return state, nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("cannot query %s: %w", Name, err)
	}
	return state, nil
}

func (m *Manager) systemctl(ctx context.Context, args ...string) error {
	_, err := m.run.Run(ctx, "systemctl", args...)
	if err == nil {
		return nil
	}
	var exitErr *hooktools.ExitError
	if errors.As(err, &exitErr) && exitErr.Stderr != "" {
		return fmt.Errorf("cannot run systemctl %s: %w: %s", strings.Join(args, " "), exitErr.Err, exitErr.Stderr)
	}
	return fmt.Errorf("cannot run systemctl %s: %w", strings.Join(args, " "), err)
}
