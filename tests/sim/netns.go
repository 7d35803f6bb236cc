package sim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Every namespace the simulator creates is named <namePrefix><run id>-<role>,
// so that runs never share one and a later run can find and remove what a
// dead run left behind.
const (
	namePrefix  = "dqcsim-"
	netnsDir    = "/run/netns"
	registryDir = "/run/dqcsim"
)

func newRunID() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("cannot make run id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func ipCmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cannot run ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// netnsInode returns the inode of a named network namespace, which is how a
// systemctl call is matched to its machine.
func netnsInode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &st); err != nil {
		return 0, fmt.Errorf("cannot stat network namespace %s: %w", name, err)
	}
	return st.Ino, nil
}

// netnsPids lists the processes living in a named network namespace.
func netnsPids(name string) []int {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// killNetns SIGKILLs everything in a namespace, then deletes it.
func killNetns(name string) error {
	for i := 0; i < 50; i++ {
		pids := netnsPids(name)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ipCmd("netns", "del", name)
}

// registerRun records that this process owns run id so that a sweep by a
// later run leaves it alone while the process lives.
func registerRun(id string, subnets []string) error {
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", registryDir, err)
	}
	data, _ := json.Marshal(struct {
		PID     int      `json:"pid"`
		Subnets []string `json:"subnets"`
	}{os.Getpid(), subnets})
	// Written to a temporary name and renamed: a sweep by another run must
	// never read a half-written record and take this live run for dead.
	tmp := filepath.Join(registryDir, "."+id+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("cannot register run: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(registryDir, id)); err != nil {
		return fmt.Errorf("cannot register run: %w", err)
	}
	return nil
}

type runRecord struct {
	PID     int      `json:"pid"`
	Subnets []string `json:"subnets"`
}

func readRun(id string) (runRecord, bool) {
	var r runRecord
	data, err := os.ReadFile(filepath.Join(registryDir, id))
	if err != nil || json.Unmarshal(data, &r) != nil {
		return r, false
	}
	return r, true
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// sweepStale removes the namespaces, processes, registry entries and run
// directories of simulator runs whose owning process is gone (a run killed
// by SIGKILL or a test timeout cannot clean up after itself).
func sweepStale(tmpRoot string) []string {
	var removed []string
	entries, _ := os.ReadDir(netnsDir)
	dead := map[string]bool{}
	isDead := func(id string) bool {
		if v, ok := dead[id]; ok {
			return v
		}
		r, ok := readRun(id)
		d := !ok || !pidAlive(r.PID)
		dead[id] = d
		return d
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, namePrefix) {
			continue
		}
		rest := strings.TrimPrefix(name, namePrefix)
		id, _, ok := strings.Cut(rest, "-")
		if !ok || !isDead(id) {
			continue
		}
		if killNetns(name) == nil {
			removed = append(removed, name)
		}
	}
	regs, _ := os.ReadDir(registryDir)
	for _, e := range regs {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if isDead(e.Name()) {
			_ = os.Remove(filepath.Join(registryDir, e.Name()))
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(tmpRoot, namePrefix+"*"))
	for _, d := range dirs {
		id := strings.TrimPrefix(filepath.Base(d), namePrefix)
		if isDead(id) {
			_ = os.RemoveAll(d)
			removed = append(removed, d)
		}
	}
	return removed
}

// usedSubnets lists prefixes already in use: the root namespace's addresses
// and the subnets registered by live simulator runs.
func usedSubnets() []netip.Prefix {
	var used []netip.Prefix
	out, err := exec.Command("ip", "-j", "addr").Output()
	if err == nil {
		var links []struct {
			AddrInfo []struct {
				Local     string `json:"local"`
				PrefixLen int    `json:"prefixlen"`
			} `json:"addr_info"`
		}
		if json.Unmarshal(out, &links) == nil {
			for _, l := range links {
				for _, a := range l.AddrInfo {
					if p, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", a.Local, a.PrefixLen)); err == nil {
						used = append(used, p.Masked())
					}
				}
			}
		}
	}
	regs, _ := os.ReadDir(registryDir)
	for _, e := range regs {
		if r, ok := readRun(e.Name()); ok && pidAlive(r.PID) {
			for _, s := range r.Subnets {
				if p, err := netip.ParsePrefix(s); err == nil {
					used = append(used, p)
				}
			}
		}
	}
	return used
}

func overlapsAny(p netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		if u.Overlaps(p) {
			return true
		}
	}
	return false
}
