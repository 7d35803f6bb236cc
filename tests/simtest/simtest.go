// Package simtest is what the tests that run the built charm on the
// simulator (tests/e2e and its sub-packages, tests/jepsen) share: the root
// check, where the built charm is, a model with the scenarios' timings and
// its post-mortem dump, the waits for a settled model and one cluster, SQL
// through a unit, and a Writer that shows an operation loses no write.
package simtest

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// RequireRoot skips t when not root and CI is unset, and fails it when CI
// is set, so that a CI run never counts a skipped scenario as a pass. why
// says what needs root, e.g. "the end-to-end tests need root (network
// namespaces)".
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal(why + ", and CI is set")
		}
		t.Skip("skipped: " + why + "; not root and CI is unset")
	}
}

// CharmDir is DQC_CHARM_DIR, else <repo>/build/charm; it fails t when the
// built charm is not there.
func CharmDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("DQC_CHARM_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "build", "charm")
	}
	for _, f := range []string{"dispatch", "controllerd", "metadata.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("the built charm is missing (%v): run `make charm` first, or set DQC_CHARM_DIR", err)
		}
	}
	return dir
}

// LogWriter writes each line it gets to the test's log.
type LogWriter struct{ T testing.TB }

func (w LogWriter) Write(p []byte) (int, error) {
	w.T.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
