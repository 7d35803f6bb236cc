package service_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/juju/dqlite-controller/charm/hooktools"
	"github.com/juju/dqlite-controller/charm/service"
)

type fakeSystemctl struct {
	calls  []string
	answer func(args []string) ([]byte, error)
}

func (f *fakeSystemctl) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	if name != "systemctl" {
		return nil, fmt.Errorf("unexpected command %s", name)
	}
	f.calls = append(f.calls, strings.Join(args, " "))
	if f.answer != nil {
		return f.answer(args)
	}
	return nil, nil
}

func TestRender_ContractExecStartAndStopSettings(t *testing.T) {
	got, err := service.Render(service.Spec{CharmDir: "/var/lib/juju/agents/unit-dqlite-controller-2/charm", AgentID: "2", Port: 17666, APIPort: 17070})
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"[Service]",
		"Type=simple",
		"ExecStart=/var/lib/juju/agents/unit-dqlite-controller-2/charm/controllerd run --controller-id 2 --port 17666 --api-port 17070",
		"Restart=always",
		"RestartSec=1",
		"KillSignal=SIGTERM",
		"TimeoutStopSec=40",
		"WantedBy=multi-user.target",
	} {
		if !strings.Contains(string(got), "\n"+line+"\n") {
			t.Errorf("unit lacks line %q:\n%s", line, got)
		}
	}
}

func TestRender_RefusesWhatSystemdWouldInterpret(t *testing.T) {
	for _, s := range []service.Spec{
		{CharmDir: "/charm dir", AgentID: "0", Port: 1, APIPort: 17070},
		{CharmDir: "/charm/%h", AgentID: "0", Port: 1, APIPort: 17070},
		{CharmDir: "/charm/$X", AgentID: "0", Port: 1, APIPort: 17070},
		{CharmDir: "charm", AgentID: "0", Port: 1, APIPort: 17070},
		{CharmDir: "/charm", AgentID: "../0", Port: 1, APIPort: 17070},
		{CharmDir: "/charm", AgentID: "0", Port: 0, APIPort: 17070},
		{CharmDir: "/charm", AgentID: "0", Port: 65536, APIPort: 17070},
		{CharmDir: "/charm", AgentID: "0", Port: 1, APIPort: 0},
		{CharmDir: "/charm", AgentID: "0", Port: 1, APIPort: 65536},
	} {
		if _, err := service.Render(s); err == nil {
			t.Errorf("Render(%+v) succeeded", s)
		}
	}
}

func TestInstall_WritesAndReloadsOnlyOnChange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc/systemd/system")
	f := &fakeSystemctl{}
	m := service.NewManager(f, dir)
	for i, want := range []bool{true, false} {
		changed, err := m.Install(context.Background(), []byte("a\n"))
		if err != nil || changed != want {
			t.Fatalf("install %d: changed = %v, err = %v", i, changed, err)
		}
	}
	if changed, _ := m.Install(context.Background(), []byte("b\n")); !changed {
		t.Fatal("new content not written")
	}
	if strings.Join(f.calls, ";") != "daemon-reload;daemon-reload" {
		t.Fatalf("calls = %q", f.calls)
	}
	fi, err := os.Stat(m.Path())
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("unit file: %v, %v", fi, err)
	}
	if err := m.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.calls, ";") != "daemon-reload;daemon-reload;daemon-reload" {
		t.Fatalf("calls = %q", f.calls)
	}
}

func TestState_NonZeroExitWithStateIsAnAnswer(t *testing.T) {
	f := &fakeSystemctl{answer: func(args []string) ([]byte, error) {
		return nil, &hooktools.ExitError{Name: "systemctl", Code: 3, Stdout: []byte("failed\n"), Err: fmt.Errorf("exit status 3")}
	}}
	state, err := service.NewManager(f, t.TempDir()).State(context.Background())
	if err != nil || state != "failed" {
		t.Fatalf("state = %q, err = %v", state, err)
	}
	f.answer = func(args []string) ([]byte, error) { return []byte("active\n"), nil }
	state, err = service.NewManager(f, t.TempDir()).State(context.Background())
	if err != nil || state != "active" {
		t.Fatalf("state = %q, err = %v", state, err)
	}
	f.answer = func(args []string) ([]byte, error) {
		return nil, &hooktools.ExitError{Name: "systemctl", Code: 1, Stderr: "Failed to connect to bus", Err: fmt.Errorf("exit status 1")}
	}
	if _, err := service.NewManager(f, t.TempDir()).State(context.Background()); err == nil {
		t.Fatal("a failing systemctl was read as a state")
	}
}

func TestSystemctlFailure_ErrorCarriesStderr(t *testing.T) {
	f := &fakeSystemctl{answer: func(args []string) ([]byte, error) {
		return nil, &hooktools.ExitError{Name: "systemctl", Code: 5, Stderr: "Failed to start controllerd.service: Unit controllerd.service not found.", Err: fmt.Errorf("exit status 5")}
	}}
	err := service.NewManager(f, t.TempDir()).Start(context.Background())
	want := "cannot run systemctl start controllerd.service: exit status 5: Failed to start controllerd.service: Unit controllerd.service not found."
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v", err)
	}
}
