package hooktools

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// LogHandler is a slog.Handler that sends each record to juju-log, so the
// charm's log lines land in the unit's log (juju debug-log) with their level.
// When juju-log itself fails, the line goes to Fallback (the hook's stderr,
// which Juju also captures) together with the reason.
type LogHandler struct {
	client   *Client
	level    slog.Leveler
	fallback io.Writer
	attrs    []slog.Attr
	groups   []string
}

// NewLogHandler returns a handler logging records at level or above through
// c, falling back to fallback.
func NewLogHandler(c *Client, level slog.Leveler, fallback io.Writer) *LogHandler {
	return &LogHandler{client: c, level: level, fallback: fallback}
}

// Enabled implements slog.Handler.
func (h *LogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// Handle implements slog.Handler.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	prefix := strings.Join(h.groups, ".")
	write := func(a slog.Attr) bool {
		if a.Equal(slog.Attr{}) {
			return true
		}
		key := a.Key
		if prefix != "" {
			key = prefix + "." + key
		}
		fmt.Fprintf(&b, " %s=%v", key, a.Value.Resolve())
		return true
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(write)
	msg := b.String()
	if err := h.client.Log(ctx, jujuLevel(r.Level), msg); err != nil && h.fallback != nil {
		fmt.Fprintf(h.fallback, "%s %s (juju-log failed: %v)\n", r.Level, msg, err)
	}
	return nil
}

// WithAttrs implements slog.Handler.
func (h *LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	h2 := *h
	h2.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &h2
}

// WithGroup implements slog.Handler.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.groups = append(append([]string(nil), h.groups...), name)
	return &h2
}

func jujuLevel(l slog.Level) LogLevel {
	switch {
	case l >= slog.LevelError:
		return LevelError
	case l >= slog.LevelWarn:
		return LevelWarning
	case l >= slog.LevelInfo:
		return LevelInfo
	default:
		return LevelDebug
	}
}
