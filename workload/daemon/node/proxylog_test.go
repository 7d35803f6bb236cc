package node

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A flood of go-dqlite proxy errors (a hostile client reconnecting in a
// loop) gives one line per window plus one summary with the count, not
// one line each.
func TestProxyLog_FloodIsSummarised(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	p := newProxyLog(slog.New(slog.NewTextHandler(&buf, nil)), func() time.Time { return now })
	for i := 0; i < 1000; i++ {
		p.report("proxy: tls: first record does not look like a TLS handshake")
		now = now.Add(time.Millisecond) // 1000 errors in one second
	}
	now = now.Add(proxyLogWindow)
	p.report("proxy: remote error: tls: bad certificate")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d log lines, want 3 (first, summary, next):\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[1], "count=999") || !strings.Contains(lines[1], "first record does not look like a TLS handshake") {
		t.Errorf("summary line %q: want count=999 and the last error", lines[1])
	}
	if !strings.Contains(lines[2], "bad certificate") || !strings.Contains(lines[0], "level=WARN") {
		t.Errorf("lines %q: want WARN lines naming each error", lines)
	}
}

func TestIsProxyError(t *testing.T) {
	for msg, want := range map[string]bool{
		"proxy: EOF":                      true,
		"dial local node: connect failed": false,
		"join cluster: no leader":         false,
	} {
		if got := isProxyError(msg); got != want {
			t.Errorf("isProxyError(%q) = %v, want %v", msg, got, want)
		}
	}
}
