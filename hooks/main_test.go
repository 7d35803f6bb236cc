package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildDispatch builds the hook binary as `make build` does.
func buildDispatch(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dispatch")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cannot build dispatch: %v\n%s", err, out)
	}
	return bin
}

func TestDispatch_BuildsWithoutCgo(t *testing.T) {
	bin := buildDispatch(t)
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "CGO_ENABLED=0") {
		t.Fatalf("dispatch build settings:\n%s", out)
	}
}

func TestDispatch_OutsideAHookFailsClearly(t *testing.T) {
	bin := buildDispatch(t)
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=/nonexistent"}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("dispatch succeeded without a hook environment")
	}
	want := "error: cannot tell which hook to run: JUJU_DISPATCH_PATH and JUJU_HOOK_NAME are unset\n"
	if string(out) != want {
		t.Fatalf("output = %q, want %q", out, want)
	}
}

func TestDispatch_RefusesUnknownActionsAndPaths(t *testing.T) {
	bin := buildDispatch(t)
	for path, want := range map[string]string{
		"actions/backup": `cannot run action "backup": this charm has no such action`,
		"jobs/backup":    `cannot handle JUJU_DISPATCH_PATH "jobs/backup"`,
	} {
		cmd := exec.Command(bin)
		cmd.Env = []string{"PATH=/nonexistent", "JUJU_DISPATCH_PATH=" + path, "JUJU_UNIT_NAME=dqlite-controller/0", "JUJU_CHARM_DIR=/charm"}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Fatalf("%s: err = %v, output = %q, want %q", path, err, out, want)
		}
	}
}
