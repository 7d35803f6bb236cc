package apiserver_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/workload/apiwire"
	"github.com/juju/dqlite-controller/workload/controlplane/apiserver"
)

// serve runs a Server with lim on a free port of 0.0.0.0 and returns the
// port once it accepts connections.
func serve(t *testing.T, h http.Handler, lim apiserver.Limits) int {
	t.Helper()
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s := &apiserver.Server{Addr: "0.0.0.0:" + strconv.Itoa(port), Handler: h, Limits: lim}
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Probe from an address of its own, so that the probe's connection
	// does not count against the hosts the test uses.
	probe := from("127.0.0.254")
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := probe.Get("http://127.0.0.1:" + strconv.Itoa(port) + apiserver.PathHealth)
		if err == nil {
			resp.Body.Close()
			return port
		}
		if time.Now().After(deadline) {
			t.Fatalf("server never listened: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// from is an HTTP client whose connections come from source IP ip.
func from(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func getFrom(t *testing.T, c *http.Client, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func TestServer_ConnectionsOverTheLimitsAreAnswered503AtOnce(t *testing.T) {
	b := newBackend(true)
	b.health = apiserver.Health{ControllerID: "0", State: "running", Member: true}
	port := serve(t, apiserver.Handler(b, watcher(t, "10.0.0.1:17070")), apiserver.Limits{MaxConns: 3, MaxConnsPerHost: 2})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	// Two slow clients from 127.0.0.1 hold connections open, sending
	// half a request.
	var slow []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /v1/health HTTP/1.1\r\n"))
		slow = append(slow, c)
	}
	time.Sleep(100 * time.Millisecond) // accepted by the server
	url := func(ip string) string { return "http://" + ip + ":" + strconv.Itoa(port) + apiserver.PathHealth }
	code, h, body := getFrom(t, from("127.0.0.1"), url("127.0.0.1"))
	if code != http.StatusServiceUnavailable || h.Get("Retry-After") != "1" || !strings.Contains(body, "too many connections") {
		t.Fatalf("third connection from one host: %d Retry-After=%q %s; want 503 with Retry-After", code, h.Get("Retry-After"), body)
	}
	// Another host is answered.
	if code, _, body := getFrom(t, from("127.0.0.2"), url("127.0.0.1")); code != http.StatusOK {
		t.Fatalf("another host during the slow clients: %d %s", code, body)
	}
	// The total limit: a third slow connection from a third host fills
	// it, and a fourth host is refused. The server releases the slot of
	// the answered 127.0.0.2 request when it has closed that connection,
	// which can come after the client read the answer: until then the
	// third slow connection is itself refused, and the fourth host finds
	// a free slot. So the slow connection is dialed again until it holds
	// the last slot; a server that never enforced the limit answers 200
	// until the deadline.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /v1/health HTTP/1.1\r\n"))
		time.Sleep(100 * time.Millisecond) // accepted by the server
		code, _, _ := getFrom(t, from("127.0.0.4"), url("127.0.0.1"))
		if code == http.StatusServiceUnavailable {
			slow = append(slow, c)
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("a host over the total limit: %d, want 503", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Closed connections free their slots.
	for _, c := range slow {
		c.Close()
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, _, _ := getFrom(t, from("127.0.0.1"), url("127.0.0.1"))
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots never freed after the slow clients left: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHandler_LongPollsOverTheLimitAreAnswered503AtOnce(t *testing.T) {
	b := newBackend(true)
	w := watcher(t, "10.0.0.1:17070")
	cur, _ := w.Current()
	port := serve(t, apiserver.NewHandler(b, w, apiserver.Limits{MaxLongPolls: 2}), apiserver.Limits{})
	watch := "http://127.0.0.1:" + strconv.Itoa(port) + apiwire.PathWatch + "?timeout=1m&version=" + cur.Version
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Two clients keep a long poll open, asking again whenever theirs
	// ends (or was refused because a probe had the slot).
	for range 2 {
		go func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, watch, nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	// Until both polls are in, a probe may itself become a long poll:
	// probe with a short timeout.
	probe := from("127.0.0.1")
	probe.Timeout = time.Second
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, h, body := 0, http.Header{}, ""
		if resp, err := probe.Get(watch); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, h, body = resp.StatusCode, resp.Header, string(b)
		} else {
			body = err.Error()
		}
		if code == http.StatusServiceUnavailable {
			if h.Get("Retry-After") == "" || !strings.Contains(body, "too many long polls") {
				t.Fatalf("refused long poll: Retry-After=%q %s", h.Get("Retry-After"), body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a third long poll was never refused (last %d %s)", code, body)
		}
		// Leave the freed slot to the pollers.
		time.Sleep(100 * time.Millisecond)
	}
	// Other routes are not affected.
	if code, _, body := getFrom(t, from("127.0.0.1"), "http://127.0.0.1:"+strconv.Itoa(port)+apiwire.PathAddresses); code != http.StatusOK {
		t.Fatalf("address lists while long polls are full: %d %s", code, body)
	}
}
