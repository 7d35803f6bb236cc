package apiserver

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Limits bound what the API holds at once, so that a flood of requests or
// clients that open connections and never finish them cannot take the
// API away from others, nor the node's resources from the lease.
//
// Connections are counted from accept to close, idle keep-alives
// included. A connection over MaxConns, or over MaxConnsPerHost from its
// remote IP, is answered at once with 503 and Retry-After and closed,
// without reading its request; a slow client inside the limits is cut off
// by ReadHeaderTimeout. A long poll over MaxLongPolls is answered with 503
// and Retry-After at once. The per-host limit is below the long-poll
// limit, so one address cannot take every long poll.
type Limits struct {
	MaxConns        int
	MaxConnsPerHost int
	MaxLongPolls    int
	// RetryAfter is what a refused client is told to wait (whole
	// seconds, at least 1).
	RetryAfter time.Duration
}

// Default limits: a controller serves one long poll per agent machine
// (`controllerd agent`), and agents connect from their own addresses.
const (
	DefaultMaxConns        = 2048
	DefaultMaxConnsPerHost = 128
	DefaultMaxLongPolls    = 1024
	DefaultRetryAfter      = time.Second
)

// DefaultLimits are the limits Serve and Handler use.
func DefaultLimits() Limits {
	return Limits{
		MaxConns:        DefaultMaxConns,
		MaxConnsPerHost: DefaultMaxConnsPerHost,
		MaxLongPolls:    DefaultMaxLongPolls,
		RetryAfter:      DefaultRetryAfter,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxConns <= 0 {
		l.MaxConns = d.MaxConns
	}
	if l.MaxConnsPerHost <= 0 {
		l.MaxConnsPerHost = d.MaxConnsPerHost
	}
	if l.MaxLongPolls <= 0 {
		l.MaxLongPolls = d.MaxLongPolls
	}
	if l.RetryAfter < time.Second {
		l.RetryAfter = d.RetryAfter
	}
	return l
}

func (l Limits) retryAfter() string {
	return strconv.Itoa(int((l.RetryAfter + time.Second - 1) / time.Second))
}

// busy answers 503 with Retry-After.
func (l Limits) busy(w http.ResponseWriter, what string) {
	w.Header().Set("Retry-After", l.retryAfter())
	writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: what + "; retry later or ask another controller"})
}

// longPolls limits concurrent long polls: a handler acquires a slot or is
// answered busy at once.
type longPolls struct {
	lim   Limits
	slots chan struct{}
}

func newLongPolls(lim Limits) *longPolls {
	return &longPolls{lim: lim, slots: make(chan struct{}, lim.MaxLongPolls)}
}

func (p *longPolls) wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case p.slots <- struct{}{}:
		default:
			p.lim.busy(w, fmt.Sprintf("too many long polls (%d)", p.lim.MaxLongPolls))
			return
		}
		defer func() { <-p.slots }()
		h(w, r)
	}
}

// refusals bounds the goroutines that answer refused connections; beyond
// it a refused connection is closed without an answer.
const maxRefusing = 256

// limitListener counts connections in total and per remote IP and
// refuses those over the limits.
type limitListener struct {
	net.Listener
	lim Limits
	// refuse answers a refused connection and closes it.
	refuse func(net.Conn)

	mu       sync.Mutex
	total    int
	perHost  map[string]int
	refusing int
}

func newLimitListener(l net.Listener, lim Limits, refuse func(net.Conn)) *limitListener {
	return &limitListener{Listener: l, lim: lim, refuse: refuse, perHost: map[string]int{}}
}

func hostOf(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	h, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return h
}

// Accept returns the next connection within the limits.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := hostOf(c)
		l.mu.Lock()
		ok := l.total < l.lim.MaxConns && l.perHost[host] < l.lim.MaxConnsPerHost
		answer := false
		if ok {
			l.total++
			l.perHost[host]++
		} else if l.refusing < maxRefusing {
			l.refusing++
			answer = true
		}
		l.mu.Unlock()
		if ok {
			return &countedConn{Conn: c, release: func() { l.release(host) }}, nil
		}
		if !answer {
			c.Close()
			continue
		}
		go func() {
			defer func() {
				l.mu.Lock()
				l.refusing--
				l.mu.Unlock()
			}()
			l.refuse(c)
		}()
	}
}

func (l *limitListener) release(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perHost[host]--; l.perHost[host] <= 0 {
		delete(l.perHost, host)
	}
}

// countedConn releases its slot once, on its first Close.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// refusePlain answers a refused plain-HTTP connection: it reads the
// request head (an answer sent before the request confuses clients, Go's
// among them, which drop it as unsolicited), answers 503 with
// Retry-After, drains what else the client sent (closing a socket with
// unread data makes the kernel reset it, and the client would see the
// reset instead of the answer) and closes it, all within refuseTimeout.
// A client that does not send its request head in that time is closed
// without an answer.
func (l Limits) refusePlain(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(refuseTimeout))
	br := bufio.NewReaderSize(io.LimitReader(c, MaxHeaderBytes), 4096)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	req.Body.Close()
	body := `{"error":"too many connections; retry later or ask another controller"}` + "\n"
	msg := "HTTP/1.1 503 Service Unavailable\r\n" +
		"Retry-After: " + l.retryAfter() + "\r\n" +
		"Content-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n" +
		"Connection: close\r\n\r\n" + body
	if _, err := c.Write([]byte(msg)); err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, c)
}

// refuseTimeout bounds the handling of one refused connection.
const refuseTimeout = time.Second
