package main_test

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/juju/dqlite-controller/workload/cli"
	"github.com/juju/dqlite-controller/workload/daemon/control"
)

// pendingConnections is the accept backlog of the listening unix socket at
// path (ss's Recv-Q): connections made that the daemon has not accepted.
func pendingConnections(path string) (int, error) {
	out, err := exec.Command("ss", "-xlnH", "src", path).Output()
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return 0, nil
	}
	return strconv.Atoi(fields[2])
}

// The defect: a `controllerd sql` whose request reached the daemon
// and whose daemon died before answering reported a failure ("cannot reach
// controllerd ...: EOF", exit 1), so a caller retried a write that may have
// been applied. The daemon is stopped (SIGSTOP) so that the command's
// connection waits in the socket's backlog with the request sent, then
// killed (kill -9): the command must say that the outcome is unknown and
// exit 3. A command that finds no daemon fails with exit 1, and a wrong
// command line exits 2.
func TestSQL_DaemonKilledBeforeAnsweringIsUnknownExit3(t *testing.T) {
	c := newCluster(t)
	c.writeConfig(c.config("0"), "0")
	d := c.start("0")
	c.waitState("0", "running")
	c.mustSQL("0", "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")

	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(binary, "sql", "--data-dir", d.data, "INSERT INTO t (id) VALUES (1)")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the command's connection in the stopped daemon's backlog", func() (bool, string) {
		n, err := pendingConnections(control.SocketPath(d.data))
		return n > 0, "pending " + strconv.Itoa(n) + " " + errString(err)
	})
	c.kill("0")
	err := cmd.Wait()
	if !isExitCode(err, cli.ExitUnknown) || !strings.Contains(stderr.String(), "the outcome is unknown") {
		t.Fatalf("sql with its answer lost: %v, stderr %q; want exit %d and an unknown outcome", err, stderr.String(), cli.ExitUnknown)
	}

	// No daemon any more: nothing was sent, so it is a failure.
	_, errOut, err := runCLI(t, "sql", "--data-dir", d.data, "INSERT INTO t (id) VALUES (2)")
	if !isExitCode(err, cli.ExitFailed) || !strings.Contains(errOut, "controllerd is not running") {
		t.Fatalf("sql without a daemon: %v, stderr %q; want exit %d", err, errOut, cli.ExitFailed)
	}
	for _, args := range [][]string{{"sql"}, {"sql", "--data-dir", d.data, "--format=xml", "SELECT 1"}, {"nosuchcommand"}, {"status", "--nosuchflag"}, {"run"}, {"run", "--controller-id", "x"}} {
		if _, errOut, err := runCLI(t, args...); !isExitCode(err, cli.ExitUsage) {
			t.Errorf("controllerd %q: %v, stderr %q; want exit %d", args, err, errOut, cli.ExitUsage)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
