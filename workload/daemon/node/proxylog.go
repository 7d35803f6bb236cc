package node

import (
	"log/slog"
	"strings"
	"sync"
	"time"
)

// go-dqlite's TLS proxy (app/app.go, app/proxy.go in canonical/go-dqlite)
// logs every connection that ends in an error at ERROR, with no remote
// address: a plaintext client, a certificate of another CA and a peer the
// trust rule refuses (clustertls logs those itself, with the peer) each
// add one line. Anyone who can reach the Dqlite port could fill the log,
// so those lines are summarised: the first one of a window is logged at
// WARN, the rest of the window are counted and reported in one line when
// the next one arrives after the window.
const proxyLogWindow = 10 * time.Second

// proxyLog summarises go-dqlite's proxy errors.
type proxyLog struct {
	log *slog.Logger
	now func() time.Time

	mu         sync.Mutex
	windowEnds time.Time
	suppressed int
	last       string
}

func newProxyLog(log *slog.Logger, now func() time.Time) *proxyLog {
	return &proxyLog{log: log, now: now}
}

// isProxyError tells go-dqlite's per-connection proxy errors from its
// other messages.
func isProxyError(msg string) bool { return strings.HasPrefix(msg, "proxy: ") }

// report logs msg, or counts it when a line was logged less than
// proxyLogWindow ago.
func (p *proxyLog) report(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Before(p.windowEnds) {
		p.suppressed++
		p.last = msg
		return
	}
	if p.suppressed > 0 {
		p.log.Warn("more peer connections ended in an error (summarised)", "component", "dqlite",
			"count", p.suppressed, "window", proxyLogWindow, "last", p.last)
		p.suppressed = 0
	}
	p.log.Warn("a peer connection ended in an error (plaintext, another CA, refused or cut)",
		"component", "dqlite", "err", strings.TrimPrefix(msg, "proxy: "))
	p.windowEnds = now.Add(proxyLogWindow)
}
