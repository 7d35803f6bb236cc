package sim

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// unitFile is the part of a systemd service unit the simulator honours.
type unitFile struct {
	execStart   []string
	environment []string
	restart     string
	restartSec  time.Duration
	timeoutStop time.Duration
	workingDir  string
}

type service struct {
	name     string
	file     *unitFile
	enabled  bool
	state    string // active, inactive, failed, activating
	pid      int
	stopping bool
	done     chan struct{}
	gen      int
}

// systemd supervises one machine's services, answering the machine's
// systemctl.
type systemd struct {
	m   *Model
	mc  *machine
	mu  sync.Mutex
	svc map[string]*service
	off bool // machine killed or removed: nothing starts any more
}

func newSystemd(m *Model, mc *machine) *systemd {
	return &systemd{m: m, mc: mc, svc: map[string]*service{}}
}

func (sd *systemd) unitDir() string { return filepath.Join(sd.mc.dir, "etc-systemd-system") }

func (sd *systemd) logPath() string { return filepath.Join(sd.mc.dir, "services.log") }

func parseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "infinity" {
		return 24 * time.Hour, nil
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(n * float64(time.Second)), nil
	}
	return time.ParseDuration(strings.ReplaceAll(strings.ReplaceAll(v, "min", "m"), " ", ""))
}

// splitCommand splits an ExecStart line as systemd does for the simple
// cases: whitespace, single and double quotes, backslash escapes.
func splitCommand(s string) []string {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for i := 0; i < len(s); i++ {
		c := rune(s[i])
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote, inWord = c, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

func parseUnitFile(path string) (*unitFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	uf := &unitFile{restart: "no", restartSec: 100 * time.Millisecond, timeoutStop: 90 * time.Second}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section != "Service" {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "ExecStart":
			v = strings.TrimLeft(v, "-@+!:")
			uf.execStart = splitCommand(v)
		case "Environment":
			uf.environment = append(uf.environment, splitCommand(v)...)
		case "Restart":
			uf.restart = v
		case "RestartSec":
			if d, err := parseDuration(v); err == nil {
				uf.restartSec = d
			}
		case "TimeoutStopSec", "TimeoutSec":
			if d, err := parseDuration(v); err == nil {
				uf.timeoutStop = d
			}
		case "WorkingDirectory":
			uf.workingDir = strings.TrimLeft(v, "-")
		}
	}
	if len(uf.execStart) == 0 {
		return nil, fmt.Errorf("%s has no ExecStart= setting", filepath.Base(path))
	}
	return uf, nil
}

func unitName(arg string) string {
	if !strings.Contains(arg, ".") {
		return arg + ".service"
	}
	return arg
}

// systemctl answers one systemctl invocation on this machine.
func (sd *systemd) systemctl(args []string) toolResponse {
	var verb string
	var names []string
	now, quiet := false, false
	for _, a := range args {
		switch {
		case a == "--now":
			now = true
		case a == "-q" || a == "--quiet":
			quiet = true
		case strings.HasPrefix(a, "-"):
			// --no-block, --no-pager, --no-reload, --system: harmless here.
		case verb == "":
			verb = a
		default:
			names = append(names, unitName(a))
		}
	}
	var out, errb strings.Builder
	code := 0
	fail := func(c int, format string, a ...any) {
		if format != "" {
			fmt.Fprintf(&errb, format+"\n", a...)
		}
		if code == 0 {
			code = c
		}
	}
	switch verb {
	case "daemon-reload":
		sd.mu.Lock()
		for name, s := range sd.svc {
			if uf, err := parseUnitFile(filepath.Join(sd.unitDir(), name)); err == nil {
				s.file = uf
			}
		}
		sd.mu.Unlock()
	case "start", "restart", "stop", "enable", "disable", "is-active", "is-enabled", "reset-failed", "try-restart", "reload-or-restart":
		if len(names) == 0 {
			return toolResponse{Code: 1, Stderr: []byte("Too few arguments.\n")}
		}
		for _, name := range names {
			sd.do(verb, name, now, quiet, &out, fail)
		}
	case "status":
		for _, name := range names {
			sd.mu.Lock()
			s := sd.svc[name]
			state := "inactive"
			if s != nil {
				state = s.state
			}
			sd.mu.Unlock()
			fmt.Fprintf(&out, "● %s\n     Active: %s\n", name, state)
			if state != "active" {
				code = 3
			}
		}
	case "":
		return toolResponse{Code: 1, Stderr: []byte("systemctl: this simulator needs a command\n")}
	default:
		return toolResponse{Code: 1, Stderr: []byte(fmt.Sprintf("Unknown command verb '%s'.\n", verb))}
	}
	return toolResponse{Stdout: []byte(out.String()), Stderr: []byte(errb.String()), Code: code}
}

// load returns the service, reading its unit file if systemd has not yet.
func (sd *systemd) loadLocked(name string) (*service, error) {
	s := sd.svc[name]
	if s != nil && s.file != nil {
		return s, nil
	}
	uf, err := parseUnitFile(filepath.Join(sd.unitDir(), name))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("Unit %s not found.", name)
		}
		return nil, fmt.Errorf("Unit %s has a bad unit file setting: %v", name, err)
	}
	if s == nil {
		s = &service{name: name, state: "inactive"}
		sd.svc[name] = s
	}
	s.file = uf
	return s, nil
}

func (sd *systemd) do(verb, name string, now, quiet bool, out *strings.Builder, fail func(int, string, ...any)) {
	sd.mu.Lock()
	s, err := sd.loadLocked(name)
	sd.mu.Unlock()
	switch verb {
	case "is-active":
		state := "inactive"
		if s != nil {
			sd.mu.Lock()
			state = s.state
			sd.mu.Unlock()
		}
		if !quiet {
			fmt.Fprintln(out, state)
		}
		if state != "active" {
			fail(3, "")
		}
		return
	case "is-enabled":
		if err != nil {
			fail(1, "Failed to get unit file state for %s: No such file or directory", name)
			return
		}
		sd.mu.Lock()
		en := s.enabled
		sd.mu.Unlock()
		if en {
			fmt.Fprintln(out, "enabled")
		} else {
			fmt.Fprintln(out, "disabled")
			fail(1, "")
		}
		return
	}
	if err != nil {
		if verb == "stop" && s == nil {
			return // stopping an unknown unit is not an error worth failing on
		}
		switch verb {
		case "enable", "disable":
			fail(1, "Failed to %s unit: %v", verb, err)
		default:
			fail(5, "Failed to %s %s: %v", verb, name, err)
		}
		return
	}
	switch verb {
	case "enable", "disable":
		sd.mu.Lock()
		s.enabled = verb == "enable"
		sd.mu.Unlock()
		link := filepath.Join(sd.unitDir(), "multi-user.target.wants", name)
		if verb == "enable" {
			_ = os.MkdirAll(filepath.Dir(link), 0o755)
			if _, err := os.Lstat(link); err != nil {
				_ = os.Symlink("/etc/systemd/system/"+name, link)
				fmt.Fprintf(out, "Created symlink %s → %s.\n", "/etc/systemd/system/multi-user.target.wants/"+name, "/etc/systemd/system/"+name)
			}
			if now {
				sd.start(s)
			}
		} else {
			if _, err := os.Lstat(link); err == nil {
				_ = os.Remove(link)
				fmt.Fprintf(out, "Removed %q.\n", "/etc/systemd/system/multi-user.target.wants/"+name)
			}
			if now {
				sd.stop(s)
			}
		}
	case "start":
		sd.start(s)
	case "stop":
		sd.stop(s)
	case "restart", "reload-or-restart":
		sd.stop(s)
		sd.start(s)
	case "try-restart":
		sd.mu.Lock()
		active := s.state == "active"
		sd.mu.Unlock()
		if active {
			sd.stop(s)
			sd.start(s)
		}
	case "reset-failed":
		sd.mu.Lock()
		if s.state == "failed" {
			s.state = "inactive"
		}
		sd.mu.Unlock()
	}
}

func (sd *systemd) logLine(format string, args ...any) {
	f, err := os.OpenFile(sd.logPath(), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s systemd: %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// start launches the service inside the machine unless it runs already.
func (sd *systemd) start(s *service) {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	if sd.off || s.state == "active" {
		return
	}
	sd.launchLocked(s)
}

func (sd *systemd) launchLocked(s *service) {
	uf := s.file
	env := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}, uf.environment...)
	wd := uf.workingDir
	if wd == "" {
		wd = "/"
	}
	cmd := sd.m.machineCommand(sd.mc, uf.execStart, env, wd)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		s.state = "failed"
		sd.logLine("Failed to start %s: %v", s.name, err)
		pw.Close()
		return
	}
	s.gen++
	gen := s.gen
	s.state, s.pid, s.stopping = "active", cmd.Process.Pid, false
	s.done = make(chan struct{})
	done := s.done
	sd.logLine("Started %s (pid %d): %s", s.name, s.pid, strings.Join(uf.execStart, " "))
	go func() {
		f, err := os.OpenFile(sd.logPath(), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			_, _ = io.Copy(io.Discard, pr)
			return
		}
		defer f.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			fmt.Fprintf(f, "%s %s[%d]: %s\n", time.Now().UTC().Format("15:04:05.000"), strings.TrimSuffix(s.name, ".service"), cmd.Process.Pid, sc.Text())
		}
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		sd.mu.Lock()
		defer sd.mu.Unlock()
		close(done)
		if s.gen != gen {
			return
		}
		sd.logLine("%s exited: %v", s.name, err)
		s.pid = 0
		if s.stopping || sd.off {
			s.state = "inactive"
			return
		}
		s.state = "failed"
		if uf.restart == "always" || (uf.restart == "on-failure" && err != nil) {
			s.state = "activating"
			time.AfterFunc(uf.restartSec, func() {
				sd.mu.Lock()
				defer sd.mu.Unlock()
				if s.gen == gen && s.state == "activating" && !sd.off {
					sd.launchLocked(s)
				}
			})
		}
	}()
}

// stop sends SIGTERM, then SIGKILL after TimeoutStopSec, and waits.
func (sd *systemd) stop(s *service) {
	sd.mu.Lock()
	if s.state == "activating" {
		s.state = "inactive"
		s.gen++
	}
	if s.pid == 0 {
		sd.mu.Unlock()
		return
	}
	s.stopping = true
	pid, done, timeout := s.pid, s.done, s.file.timeoutStop
	sd.mu.Unlock()
	sd.logLine("Stopping %s (SIGTERM to pid %d)", s.name, pid)
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	// systemd follows SIGTERM with SIGCONT, so that a stopped (paused)
	// process gets it too.
	_ = syscall.Kill(-pid, syscall.SIGCONT)
	select {
	case <-done:
	case <-time.After(timeout):
		sd.logLine("%s did not stop within %s: SIGKILL", s.name, timeout)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
}

// shutdown stops supervising: with kill, every service gets SIGKILL at
// once (a machine dying); without, SIGTERM then SIGKILL.
func (sd *systemd) shutdown(kill bool) {
	sd.mu.Lock()
	sd.off = true
	var pids []int
	var dones []chan struct{}
	for _, s := range sd.svc {
		if s.pid != 0 {
			s.stopping = true
			pids = append(pids, s.pid)
			dones = append(dones, s.done)
		}
	}
	sd.mu.Unlock()
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	for _, p := range pids {
		_ = syscall.Kill(-p, sig)
		_ = syscall.Kill(-p, syscall.SIGCONT)
	}
	for i, d := range dones {
		select {
		case <-d:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pids[i], syscall.SIGKILL)
			<-d
		}
	}
}

// PauseService freezes (SIGSTOP) or thaws (SIGCONT) the processes of a
// running service on a unit's machine: a workload that stalls (an
// overloaded or swapping machine, a debugger) while the unit agent goes
// on running hooks, which Juju does not notice either.
func (m *Model) PauseService(unitName, service string, pause bool) error {
	m.mu.Lock()
	u := m.units[unitName]
	m.mu.Unlock()
	if u == nil {
		return fmt.Errorf("cannot pause service: unit %q not found", unitName)
	}
	sd := u.machine.sd
	if !strings.HasSuffix(service, ".service") {
		service += ".service"
	}
	sd.mu.Lock()
	s := sd.svc[service]
	pid := 0
	if s != nil {
		pid = s.pid
	}
	sd.mu.Unlock()
	if pid == 0 {
		return fmt.Errorf("cannot pause service: %s is not running on the machine of %s", service, unitName)
	}
	sig, verb := syscall.SIGCONT, "Resumed"
	if pause {
		sig, verb = syscall.SIGSTOP, "Paused"
	}
	if err := syscall.Kill(-pid, sig); err != nil {
		return fmt.Errorf("cannot pause service %s: %w", service, err)
	}
	sd.logLine("%s %s (pid %d)", verb, service, pid)
	return nil
}

// ServiceLog returns a unit's machine's service log (stdout and stderr of
// every service, prefixed like the journal).
func (m *Model) ServiceLog(unitName string) string {
	dir := m.MachineDir(unitName)
	data, _ := os.ReadFile(filepath.Join(dir, "services.log"))
	return string(data)
}

// UnitLog returns a unit's hook log (hook output and juju-log lines).
func (m *Model) UnitLog(unitName string) string {
	dir := m.MachineDir(unitName)
	data, _ := os.ReadFile(filepath.Join(dir, "unit-"+strings.ReplaceAll(unitName, "/", "-")+".log"))
	return string(data)
}
