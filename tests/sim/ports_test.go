package sim

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// endWithPorts ends an open hook like the uniter: exit 0 commits its port
// changes unless the controller's check refuses them (then nothing is
// committed and the check's error is returned).
func (h *openHook) endWithPorts(exit int) string {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	delete(h.m.contexts, h.hc.id)
	if exit != 0 {
		return ""
	}
	if msg := h.m.checkPortsLocked(h.hc); msg != "" {
		return msg
	}
	h.m.commitPortsLocked(h.hc)
	return ""
}

// The port tools as Juju's unit agent runs them: juju/juju
// internal/worker/uniter/runner/jujuc/ports.go (open-port, close-port:
// arguments, --endpoints, the deprecated --format), core/network/
// portrange.go (ParsePortRange, Validate, String, sort order),
// runner/context/ports.go (pending requests, conflicts, opened-ports with
// the pending changes merged), runner/context/context.go Flush (nothing
// is sent unless the hook exits 0), jujuc/opened-ports.go (output) and
// domain/port/service/service.go UpdateUnitPorts (the wildcard endpoint).
func TestPorts_ToolsFollowJuju(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)

	h := startHook(t, m, "toy/0")
	expectOut(t, "no argument", h.run("open-port"), 2, "", "ERROR no port or range specified\n")
	expectOut(t, "unknown protocol", h.run("open-port", "80/sctp"), 2, "", "ERROR invalid protocol \"sctp\", expected \"tcp\", \"udp\", or \"icmp\"\n")
	expectOut(t, "reversed range", h.run("open-port", "90-80"), 2, "", "ERROR invalid port range 90-80/tcp\n")
	expectOut(t, "icmp with a port", h.run("open-port", "80/icmp"), 2, "", "ERROR protocol \"icmp\" doesn't support any ports; got \"80\"\n")
	expectOut(t, "out of bounds", h.run("open-port", "70000"), 2, "", "ERROR port range bounds must be between 0 and 65535, got 70000-70000\n")
	expectOut(t, "not a number", h.run("open-port", "http"), 2, "", "ERROR invalid port \"http\": strconv.Atoi: parsing \"http\": invalid syntax\n")
	expectOut(t, "two ranges", h.run("open-port", "80", "81"), 2, "", "ERROR unrecognized args: [\"81\"]\n")
	expectOut(t, "upper case (lowered first)", h.run("open-port", "8080/TCP"), 0, "", "")
	expectOut(t, "the same again (a no-op)", h.run("open-port", "8080/tcp"), 0, "", "")
	expectOut(t, "overlapping a pending range", h.run("open-port", "8000-8100/tcp"), 1, "",
		"ERROR cannot open 8000-8100/tcp (unit \"toy/0\"): port range conflicts with 8080/tcp (unit \"toy/0\") requested earlier\n")
	expectOut(t, "a range", h.run("open-port", "9000-9100/tcp"), 0, "", "")
	expectOut(t, "icmp", h.run("open-port", "icmp"), 0, "", "")
	expectOut(t, "one endpoint", h.run("open-port", "53/udp", "--endpoints", "db-cluster"), 0, "", "")
	expectOut(t, "deprecated --format", h.run("open-port", "22", "--format", "json"), 0, "", "--format flag deprecated for command \"open-port\"")
	expectOut(t, "cancel a pending open", h.run("close-port", "22"), 0, "", "")
	// The pending requests show (ports.go OpenedUnitPortRanges merges
	// them), sorted by protocol, then port.
	expectOut(t, "opened-ports", h.run("opened-ports"), 0, "icmp\n8080/tcp\n9000-9100/tcp\n53/udp\n", "")
	expectOut(t, "opened-ports --endpoints", h.run("opened-ports", "--endpoints"), 0,
		"icmp (*)\n8080/tcp (*)\n9000-9100/tcp (*)\n53/udp (db-cluster)\n", "")
	expectOut(t, "opened-ports json", h.run("opened-ports", "--format", "json"), 0, `["icmp","8080/tcp","9000-9100/tcp","53/udp"]`+"\n", "")
	// A failed hook sends nothing.
	h.endWithPorts(1)
	if got := m.OpenedPorts("toy/0"); len(got) != 0 {
		t.Fatalf("a failed hook's ports were committed: %v", got)
	}

	h = startHook(t, m, "toy/0")
	expectOut(t, "nothing opened", h.run("opened-ports", "--format", "json"), 0, "[]\n", "")
	h.run("open-port", "17070/tcp")
	h.run("open-port", "icmp")
	if msg := h.endWithPorts(0); msg != "" {
		t.Fatal(msg)
	}
	if got := m.OpenedPorts("toy/0"); !slices.Equal(got, []string{"icmp", "17070/tcp"}) {
		t.Fatalf("committed ports = %v, want [icmp 17070/tcp]", got)
	}
	// close-port on a machine with nothing open is a no-op.
	h = startHook(t, m, "toy/1")
	expectOut(t, "close with nothing open", h.run("close-port", "17070"), 0, "", "")
	h.endWithPorts(0)

	// The wildcard rule: 80/tcp opened on one endpoint, then on all,
	// is open on all only; closed on one endpoint, it stays open on
	// the others.
	h = startHook(t, m, "toy/0")
	h.run("close-port", "icmp")
	h.run("open-port", "80/tcp", "--endpoints", "db-cluster")
	h.endWithPorts(0)
	h = startHook(t, m, "toy/0")
	h.run("open-port", "80/tcp")
	h.endWithPorts(0)
	h = startHook(t, m, "toy/0")
	expectOut(t, "opened on all", h.run("opened-ports", "--endpoints"), 0, "80/tcp (*)\n17070/tcp (*)\n", "")
	h.run("close-port", "80/tcp", "--endpoints", "db-cluster")
	h.endWithPorts(0)
	h = startHook(t, m, "toy/0")
	expectOut(t, "closed on one", h.run("opened-ports", "--endpoints"), 0, "80/tcp (api)\n17070/tcp (*)\n", "")
	// The controller refuses an endpoint the charm does not have, and
	// nothing of the hook's port changes is applied.
	h.run("open-port", "81/tcp", "--endpoints", "website")
	h.run("close-port", "17070/tcp")
	if msg := h.endWithPorts(0); !strings.Contains(msg, `endpoint "website"`) {
		t.Errorf("unknown endpoint: commit check %q, want a refusal naming it", msg)
	}
	if got := m.OpenedPorts("toy/0"); !slices.Equal(got, []string{"80/tcp", "17070/tcp"}) {
		t.Errorf("after a refused commit: %v, want [80/tcp 17070/tcp]", got)
	}
}

// inNetns runs f on an OS thread inside a named network namespace: a
// socket belongs to the namespace it was created in, so a listener made
// here keeps serving there and a dial connects from there.
func inNetns(t *testing.T, name string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked if it cannot go back: the runtime
		// then ends it instead of reusing it in the wrong namespace.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- err
			return
		}
		defer self.Close()
		target, err := os.Open(filepath.Join(netnsDir, name))
		if err != nil {
			done <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("cannot enter %s: %w", name, err)
			return
		}
		f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("cannot leave %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// dialFrom reports whether a TCP connection from namespace netns to addr
// is accepted; a dropped SYN shows as a timeout (generous: a loaded
// machine), a refused one as an error at once.
func dialFrom(t *testing.T, netns, addr string) error {
	var err error
	inNetns(t, netns, func() {
		var c net.Conn
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
		if err == nil {
			c.Close()
		}
	})
	return err
}

// The fabric plays a cloud's firewall, as Juju's providers set it up
// (juju/juju provider/ec2/environ.go setUpGroups: the model's machines
// reach each other on every port; anything else gets only what the
// firewaller opens for the units' open-port ranges, internal/worker/
// firewaller): an agent machine cannot reach a unit machine's port until
// a hook that opened it commits, and cannot once close-port commits;
// unit machines reach each other throughout, and a connection the unit
// machine makes to the agent machine gets its replies.
func TestPorts_FabricIsTheCloudFirewall(t *testing.T) {
	m := newToyModel(t, Options{FirstUnitLeads: true})
	if _, err := m.Deploy(2); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, m)
	agent, err := m.AddAgentMachine(AgentMachineSpec{NoAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	unitNetns, peerNetns, agentNetns := m.units["toy/0"].machine.netns, m.units["toy/1"].machine.netns, m.machines[agent].netns
	host := m.units["toy/0"].machine.nics[0].addr.String()
	agentHost := m.machines[agent].nics[0].addr.String()
	m.mu.Unlock()
	var api, db, back net.Listener
	inNetns(t, unitNetns, func() {
		api, err = net.Listen("tcp", net.JoinHostPort(host, "17070"))
		if err == nil {
			db, err = net.Listen("tcp", net.JoinHostPort(host, "17666"))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	inNetns(t, agentNetns, func() { back, err = net.Listen("tcp", net.JoinHostPort(agentHost, "9999")) })
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []net.Listener{api, db, back} {
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	apiAddr, dbAddr := api.Addr().String(), db.Addr().String()
	blocked := func(what string, err error) {
		t.Helper()
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s: %v, want the connection attempt dropped (a timeout)", what, err)
		}
	}
	blocked("agent to the API port before open-port", dialFrom(t, agentNetns, apiAddr))
	if err := dialFrom(t, peerNetns, apiAddr); err != nil {
		t.Errorf("unit machine to unit machine: %v", err)
	}
	if err := dialFrom(t, unitNetns, net.JoinHostPort(agentHost, "9999")); err != nil {
		t.Errorf("unit machine to the agent machine (replies pass): %v", err)
	}

	h := startHook(t, m, "toy/0")
	h.run("open-port", "17070/tcp")
	blocked("agent to the API port while the hook that opens it runs", dialFrom(t, agentNetns, apiAddr))
	h.endWithPorts(0)
	if err := dialFrom(t, agentNetns, apiAddr); err != nil {
		t.Errorf("agent to the API port once open-port committed: %v", err)
	}
	blocked("agent to a port not opened", dialFrom(t, agentNetns, dbAddr))
	if err := dialFrom(t, peerNetns, dbAddr); err != nil {
		t.Errorf("unit machine to a port not opened: %v", err)
	}

	h = startHook(t, m, "toy/0")
	h.run("close-port", "17070/tcp")
	h.endWithPorts(0)
	blocked("agent to the API port after close-port", dialFrom(t, agentNetns, apiAddr))
}
