// Package watch tells controllerd when its config file may have changed. It
// watches the file's directory with inotify (the charm replaces the file by
// renaming a temporary file over it, which a watch on the file itself would
// miss) and coalesces bursts into one notification.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/juju/dqlite-controller/controllerconf"
)

// Settle is how long the watcher waits after an event for more events before
// it notifies: long enough to swallow the CREATE/WRITE/RENAME burst of one
// atomic write, short enough to react within milliseconds.
const Settle = 5 * time.Millisecond

// Watcher notifies on Changes whenever the watched file may have changed.
type Watcher struct {
	changes chan struct{}
	fsw     *fsnotify.Watcher
	done    chan struct{}
}

// New starts watching the directory of path, creating it if it is missing.
// One notification is pending from the start, so the caller reads the file
// once at start-up (it may have changed while the daemon was down). The
// watcher stops when ctx is done.
func New(ctx context.Context, path string, log *slog.Logger) (*Watcher, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create config directory: %w", err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("cannot start inotify watcher: %w", err)
	}
	if err := fsw.Add(dir); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("cannot watch config directory %s: %w", dir, err)
	}
	w := &Watcher{changes: make(chan struct{}, 1), fsw: fsw, done: make(chan struct{})}
	w.changes <- struct{}{}
	go w.loop(ctx, base, log)
	return w, nil
}

// Changes delivers one value per burst of changes; several changes made
// while the receiver is busy collapse into one.
func (w *Watcher) Changes() <-chan struct{} {
	return w.changes
}

// Done is closed once the watcher has stopped.
func (w *Watcher) Done() <-chan struct{} {
	return w.done
}

func (w *Watcher) loop(ctx context.Context, base string, log *slog.Logger) {
	defer close(w.done)
	defer w.fsw.Close()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			name := filepath.Base(ev.Name)
			if name != base || controllerconf.IsTempName(name) {
				continue
			}
			if settle == nil {
				settle = time.After(Settle)
			}
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			// An overflow loses events, so treat it as a change.
			log.Warn("config watcher error; re-reading the config", "err", err)
			if settle == nil {
				settle = time.After(Settle)
			}
		case <-settle:
			settle = nil
			select {
			case w.changes <- struct{}{}:
			default:
			}
		}
	}
}
