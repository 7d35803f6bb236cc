package bind_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/juju/dqlite-controller/tests/sim"
	"github.com/juju/dqlite-controller/tests/simtest"
)

// dialFrom dials addr over TCP from inside network namespace netns (a
// socket belongs to the namespace of the thread that made it).
func dialFrom(t *testing.T, netns, addr string) error {
	t.Helper()
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // left locked on failure: the thread then ends
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			res <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + netns)
		if err != nil {
			res <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- fmt.Errorf("cannot enter %s: %w", netns, err)
			return
		}
		c, derr := net.DialTimeout("tcp", addr, 3*time.Second)
		if derr == nil {
			c.Close()
		}
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- fmt.Errorf("cannot leave %s: %w", netns, err)
			return
		}
		runtime.UnlockOSThread()
		res <- derr
	}()
	return <-res
}

// dropped fails t unless err is a timeout: the fabric's firewall drops a
// connection attempt to a port no unit opened (nobody listening would
// refuse it at once instead).
func dropped(t *testing.T, what string, err error) {
	t.Helper()
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("%s: %v, want the connection attempt dropped by the firewall (a timeout)", what, err)
	}
}

// The charm opens api-port with open-port, and Juju commits that only when
// the hook exits 0: an agent machine (outside the model's security group)
// reaches controllerd's API only once a hook that opened the port has
// committed, never the Dqlite port, and a new api-port closes the old one.
// The config-changed that moves the API to 17071 is killed at its last
// tool call, after it restarted controllerd on the new port: the daemon
// listens there, but the port is not open until the retried hook commits.
func TestAPIPort_AgentReachesTheAPIOnlyOnceTheHookOpeningItCommits(t *testing.T) {
	m := simtest.NewModel(t, sim.Options{AutoRetryHooks: -1})
	if _, err := m.Deploy(1); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	simtest.WaitActive(t, m)
	agent, err := m.AddAgentMachine(sim.AgentMachineSpec{NoAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	const u = "dqlite-controller/0"
	var unitNetns, agentNetns, host string
	st := m.Status()
	un, _ := st.Unit(u)
	for _, mc := range st.Machines {
		switch mc.ID {
		case un.Machine:
			unitNetns, host = mc.NetNS, mc.Addresses[0]
		case agent:
			agentNetns = mc.NetNS
		}
	}
	at := func(port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }
	if got := m.OpenedPorts(u); !slices.Equal(got, []string{"17070/tcp"}) {
		t.Fatalf("opened ports after deploy = %v, want [17070/tcp]", got)
	}
	if err := dialFrom(t, agentNetns, at(17070)); err != nil {
		t.Fatalf("agent machine to the opened API port: %v", err)
	}
	dropped(t, "agent machine to the Dqlite port", dialFrom(t, agentNetns, at(17666)))

	m.KillHookAt(u, "config-changed", "status-set")
	if err := m.SetConfig(map[string]string{"api-port": "17071"}); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitFor(simtest.CtxFor(t, 2*time.Minute), "config-changed killed", func(st sim.Status) bool {
		s, _ := st.Unit(u)
		return s.Workload == "error"
	}); err != nil {
		t.Fatal(err)
	}
	// controllerd listens on 17071 (seen from its own machine, which the
	// fabric does not filter) ...
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for dialFrom(t, unitNetns, at(17071)) != nil {
		if ctx.Err() != nil {
			t.Fatal("controllerd never listened on the new api-port 17071")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// ... but the hook that opened it did not commit.
	dropped(t, "agent machine to 17071 before the hook opening it committed", dialFrom(t, agentNetns, at(17071)))
	if got := m.OpenedPorts(u); !slices.Equal(got, []string{"17070/tcp"}) {
		t.Errorf("opened ports after the killed hook = %v, want [17070/tcp]", got)
	}

	if err := m.Resolve(u); err != nil {
		t.Fatal(err)
	}
	simtest.WaitIdle(t, m)
	if got := m.OpenedPorts(u); !slices.Equal(got, []string{"17071/tcp"}) {
		t.Fatalf("opened ports after the retried hook = %v, want [17071/tcp]", got)
	}
	if err := dialFrom(t, agentNetns, at(17071)); err != nil {
		t.Errorf("agent machine to the API port once opened: %v", err)
	}
	dropped(t, "agent machine to the old api-port, closed", dialFrom(t, agentNetns, at(17070)))
}
