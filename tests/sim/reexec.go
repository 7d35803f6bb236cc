package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The simulator's helper programs are the simulator's own executable re-run
// with DQCSIM_TOOL naming the role. The tools directory on a hook's PATH holds
// one small wrapper script per tool name that sets DQCSIM_TOOL and execs the
// executable, so a charm sees ordinary programs called network-get,
// relation-set, systemctl, ...
const (
	envTool    = "DQCSIM_TOOL"
	envSocket  = "DQCSIM_SOCKET"
	envNetNS   = "DQCSIM_NETNS"
	envBinds   = "DQCSIM_BINDS"
	envWorkDir = "DQCSIM_WORKDIR"

	toolMachineExec = "machine-exec"
	toolSystemctl   = "systemctl"
)

func init() {
	tool := os.Getenv(envTool)
	if tool == "" {
		return
	}
	if tool == toolMachineExec {
		machineExec()
		return // not reached
	}
	os.Exit(runTool(tool))
}

// toolRequest is what a tool sends to the simulator: one request per
// connection, answered by one toolResponse.
type toolRequest struct {
	Tool      string   `json:"tool"`
	Args      []string `json:"args"`
	ContextID string   `json:"context-id,omitempty"`
	Stdin     []byte   `json:"stdin,omitempty"`
	// NetNS is the inode of the caller's network namespace: systemctl uses
	// it to tell which machine it runs on, as a real systemctl talks to its
	// own machine's systemd.
	NetNS uint64 `json:"netns"`
}

type toolResponse struct {
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	Code   int    `json:"code"`
}

func runTool(tool string) int {
	req := toolRequest{Tool: tool, Args: os.Args[1:]}
	sock := os.Getenv(envSocket)
	if tool != toolSystemctl {
		sock = os.Getenv("JUJU_AGENT_SOCKET_ADDRESS")
		req.ContextID = os.Getenv("JUJU_CONTEXT_ID")
		if sock == "" || req.ContextID == "" {
			fmt.Fprintf(os.Stderr, "ERROR JUJU_CONTEXT_ID and JUJU_AGENT_SOCKET_ADDRESS must be set: %s can only run inside a hook\n", tool)
			return 1
		}
	}
	if file, ok := fileArg(tool, req.Args); ok {
		// relation-set --file is read here, on the machine, where the
		// path means what the charm meant.
		var data []byte
		var err error
		if file == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "ERROR cannot read settings: %v\n", err)
			return 1
		}
		req.Stdin = data
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err == nil {
		req.NetNS = st.Ino
	}
	conn, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ERROR cannot reach the unit agent: %v\n", err)
		return 1
	}
	defer conn.Close()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		fmt.Fprintf(os.Stderr, "ERROR cannot send request: %v\n", err)
		return 1
	}
	var resp toolResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		fmt.Fprintf(os.Stderr, "ERROR cannot read response: %v\n", err)
		return 1
	}
	os.Stdout.Write(resp.Stdout)
	os.Stderr.Write(resp.Stderr)
	return resp.Code
}

func fileArg(tool string, args []string) (string, bool) {
	if tool != "relation-set" {
		return "", false
	}
	for i, a := range args {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--file="); ok {
			return v, true
		}
		if a == "--file" && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// bindMount is one per-machine directory mounted over a production path.
type bindMount struct {
	Source string `json:"source"`
	Target string `json:"target"`
}

// machineExec runs in a fresh mount namespace (the simulator starts it with
// CLONE_NEWNS and private propagation): it enters the machine's network
// namespace on the locked main thread, bind-mounts the machine's own
// directories over the production paths, and execs the target from that
// thread, so the target runs wholly inside the machine.
func machineExec() {
	runtime.LockOSThread()
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "machine-exec: "+format+"\n", args...)
		os.Exit(127)
	}
	if len(os.Args) < 2 {
		fail("no command given")
	}
	fd, err := unix.Open(os.Getenv(envNetNS), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fail("cannot open network namespace: %v", err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		fail("cannot enter network namespace: %v", err)
	}
	unix.Close(fd)
	var binds []bindMount
	if err := json.Unmarshal([]byte(os.Getenv(envBinds)), &binds); err != nil {
		fail("cannot parse bind mounts: %v", err)
	}
	for _, b := range binds {
		if err := unix.Mount(b.Source, b.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			fail("cannot bind-mount %s on %s: %v", b.Source, b.Target, err)
		}
	}
	// /sys shows the namespace's own devices only when mounted from inside it.
	if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err == nil {
		_ = unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, "")
	}
	wd := os.Getenv(envWorkDir)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DQCSIM_") {
			env = append(env, kv)
		}
	}
	if wd != "" {
		if err := os.Chdir(wd); err != nil {
			fail("cannot change to %s: %v", wd, err)
		}
	}
	target := os.Args[1]
	if !strings.Contains(target, "/") {
		path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		for _, kv := range env {
			if strings.HasPrefix(kv, "PATH=") {
				path = strings.TrimPrefix(kv, "PATH=")
			}
		}
		found := ""
		for _, dir := range filepath.SplitList(path) {
			p := filepath.Join(dir, target)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				found = p
				break
			}
		}
		if found == "" {
			fail("%s: %v", target, exec.ErrNotFound)
		}
		target = found
	}
	err = syscall.Exec(target, os.Args[1:], env)
	fail("cannot run %s: %v", target, err)
}
