package watch_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/controllerconf"
	"github.com/juju/dqlite-controller/workload/daemon/watch"
)

func newWatcher(t *testing.T, path string) *watch.Watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := watch.New(ctx, path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("cannot start watcher: %v", err)
	}
	t.Cleanup(func() { cancel(); <-w.Done() })
	return w
}

func expectChange(t *testing.T, w *watch.Watcher, what string) {
	t.Helper()
	select {
	case <-w.Changes():
	case <-time.After(10 * time.Second):
		t.Fatalf("no change notified after %s", what)
	}
}

func expectQuiet(t *testing.T, w *watch.Watcher, what string) {
	t.Helper()
	select {
	case <-w.Changes():
		t.Fatalf("unexpected change notified after %s", what)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestWatch_CreatesMissingDirAndNotifiesAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agents", "controller-0", controllerconf.FileName)
	w := newWatcher(t, path)
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		t.Fatalf("config directory not created: %v", err)
	}
	expectChange(t, w, "start-up")
	expectQuiet(t, w, "start-up")
}

// An atomic replace (temporary file renamed over the config) is one
// notification, and the temporary files themselves are ignored.
func TestWatch_AtomicReplaceIsOneNotification(t *testing.T) {
	path := filepath.Join(t.TempDir(), controllerconf.FileName)
	w := newWatcher(t, path)
	expectChange(t, w, "start-up")

	if err := controllerconf.WriteFileAtomic(path, []byte("db-bind-addresses: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, "atomic replace")
	expectQuiet(t, w, "atomic replace")

	// A temporary file of an interrupted write is not the config.
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "."+controllerconf.FileName+".tmp-123"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, w, "a temporary file")
	// Neither is another file in the same directory.
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "agent.conf"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, w, "an unrelated file")
}

func TestWatch_BurstOfWritesCoalesces(t *testing.T) {
	path := filepath.Join(t.TempDir(), controllerconf.FileName)
	w := newWatcher(t, path)
	expectChange(t, w, "start-up")
	for i := 0; i < 50; i++ {
		if err := os.WriteFile(path, []byte("db-bind-addresses: {}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	expectChange(t, w, "a burst of in-place writes")
	// The channel holds at most one pending notification. On a loaded
	// machine the burst's events may straddle a few settle windows, so
	// drain until the watcher has been quiet for a while and require that
	// the 50 writes came out as far fewer notifications.
	notified := 1
	for quiet := false; !quiet; {
		select {
		case <-w.Changes():
			notified++
		case <-time.After(300 * time.Millisecond):
			quiet = true
		}
	}
	if notified > 10 {
		t.Fatalf("50 writes gave %d notifications, want them coalesced", notified)
	}
	expectQuiet(t, w, "draining the burst")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, "removal")
}
