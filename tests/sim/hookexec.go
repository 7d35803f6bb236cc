package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Running one hook: its environment and its process inside the machine.

func (m *Model) hookEnv(u *unit, hc *hookContext) []string {
	charmDir := m.CharmDirOnMachine(u.name)
	h := hc.hook
	env := []string{
		"CHARM_DIR=" + charmDir,
		"JUJU_CHARM_DIR=" + charmDir,
		"JUJU_CONTEXT_ID=" + hc.id,
		"JUJU_HOOK_NAME=" + h.name,
		"JUJU_DISPATCH_PATH=hooks/" + h.name,
		"JUJU_AGENT_SOCKET_ADDRESS=" + m.sock,
		"JUJU_AGENT_SOCKET_NETWORK=unix",
		"JUJU_UNIT_NAME=" + u.name,
		"JUJU_MODEL_UUID=" + m.uuid,
		"JUJU_MODEL_NAME=controller",
		"JUJU_API_ADDRESSES=127.0.0.1:17070",
		fmt.Sprintf("JUJU_MACHINE_ID=%d", u.machine.id),
		"JUJU_PRINCIPAL_UNIT=",
		"JUJU_AVAILABILITY_ZONE=",
		"JUJU_VERSION=" + m.jujuVersion(),
		"CLOUD_API_VERSION=",
		"JUJU_CHARM_HTTP_PROXY=", "JUJU_CHARM_HTTPS_PROXY=", "JUJU_CHARM_FTP_PROXY=", "JUJU_CHARM_NO_PROXY=",
		"JUJU_CHARM_TRACE_CONFIG_HTTP=", "JUJU_CHARM_TRACE_CONFIG_GRPC=", "JUJU_CHARM_TRACE_CONFIG_CA_CERT=",
		"LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "APT_LISTCHANGES_FRONTEND=none", "TERM=tmux-256color",
		"PATH=" + m.tools + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}
	if h.rel != nil {
		env = append(env, "JUJU_RELATION="+h.rel.endpoint, "JUJU_RELATION_ID="+h.rel.idString(),
			"JUJU_REMOTE_UNIT="+h.remoteUnit, "JUJU_REMOTE_APP="+h.remoteApp)
		if h.departing != "" {
			env = append(env, "JUJU_DEPARTING_UNIT="+h.departing)
		}
	}
	return append(env, secretHookEnv(h)...)
}

// machineCommand prepares argv to run inside a machine: its network
// namespace, a private mount namespace with the machine's directories bound
// over /var/lib/juju and /etc/systemd/system, and its own process group.
func (m *Model) machineCommand(mc *machine, argv, env []string, dir string) *exec.Cmd {
	binds, _ := json.Marshal(mc.binds())
	cmd := exec.Command(m.exe, argv...)
	cmd.Env = append(append([]string{}, env...),
		envTool+"="+toolMachineExec,
		envNetNS+"="+filepath.Join(netnsDir, mc.netns),
		envBinds+"="+string(binds),
		envWorkDir+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Unshareflags: syscall.CLONE_NEWNS,
		Setpgid:      true,
		Pdeathsig:    syscall.SIGKILL,
	}
	return cmd
}

func (m *Model) unitLogPath(u *unit) string {
	return filepath.Join(u.machine.dir, "unit-"+strings.ReplaceAll(u.name, "/", "-")+".log")
}

func (m *Model) appendUnitLog(u *unit, line string) {
	f, err := os.OpenFile(m.unitLogPath(u), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format("15:04:05.000"), line)
}

// runHook runs the charm's handler for a hook inside the unit's machine:
// <charm>/dispatch if it exists, else <charm>/hooks/<name>; no handler means
// the hook succeeds at once (docs/juju.md#relation-data).
func (m *Model) runHook(u *unit, hc *hookContext) int {
	h := hc.hook
	charmDir := m.CharmDirOnMachine(u.name)
	hostCharm := filepath.Join(u.machine.dir, "var-lib-juju", strings.TrimPrefix(charmDir, "/var/lib/juju/"))
	handler := filepath.Join(charmDir, "dispatch")
	if _, err := os.Stat(filepath.Join(hostCharm, "dispatch")); err != nil {
		if _, err := os.Stat(filepath.Join(hostCharm, "hooks", h.name)); err != nil {
			return 0
		}
		handler = filepath.Join(charmDir, "hooks", h.name)
	}
	m.appendUnitLog(u, fmt.Sprintf("running %s hook (remote unit %q, departing %q)", h.name, h.remoteUnit, h.departing))
	logf, err := os.OpenFile(m.unitLogPath(u), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return 1
	}
	defer logf.Close()
	cmd := m.machineCommand(u.machine, []string{handler}, m.hookEnv(u, hc), charmDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.HookTimeout)
	defer cancel()
	if err := cmd.Start(); err != nil {
		m.appendUnitLog(u, fmt.Sprintf("cannot start %s hook: %v", h.name, err))
		return 1
	}
	m.mu.Lock()
	hc.pid = cmd.Process.Pid
	m.mu.Unlock()
	code := exitCode(m.waitHandler(ctx, cmd))
	m.appendUnitLog(u, fmt.Sprintf("%s hook exited %d", h.name, code))
	return code
}

// jujuVersion is JUJU_VERSION of the simulated controller.
func (m *Model) jujuVersion() string {
	if m.opts.Juju36 {
		return "3.6.28"
	}
	return "4.0.1"
}

// waitHandler waits for a started hook or action handler; it kills the
// handler's process group at ctx's end (the hook timeout) or when the
// model closes.
func (m *Model) waitHandler(ctx context.Context, cmd *exec.Cmd) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	case <-m.closing:
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	return <-done
}

// exitCode is a handler's exit status as the uniter sees it: 128+N for a
// process killed by signal N, 1 when it did not run at all.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 1
	}
	if code := ee.ExitCode(); code >= 0 {
		return code
	}
	return 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
}
