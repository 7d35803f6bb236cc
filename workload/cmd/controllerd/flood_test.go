package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/juju/dqlite-controller/clustertls"
)

// clientFrom is an HTTP client whose connections come from source
// address ip (any 127/8 address reaches the daemons' 0.0.0.0 listener),
// so that each kind of client in a flood has an address of its own. It
// verifies the server against the cluster CA, as agents do.
func clientFrom(ca *clustertls.CA, ip string, timeout time.Duration) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: timeout}
	pool, _ := clustertls.PoolFromPEM(ca.CertPEM)
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:         d.DialContext,
			TLSClientConfig:     clustertls.ClientConfig(pool),
			MaxIdleConnsPerHost: 64,
		},
	}
}

// leaseTenure reads the singular-controller lease row's holder and tenure
// through controller via.
func (c *cluster) leaseTenure(via string) (string, string) {
	c.t.Helper()
	res := c.mustSQL(via, "SELECT holder, tenure FROM lease WHERE namespace = 'singular-controller'")
	if len(res.Rows) != 1 {
		c.t.Fatalf("lease rows: %v", res.Rows)
	}
	return fmt.Sprint(res.Rows[0][0]), fmt.Sprint(res.Rows[0][1])
}

// flood runs, against one controller's API until stop is closed: slow
// clients that open connections and never finish their request headers,
// long polls that never see a change, and a tight loop of lease
// requests, each kind from a source address of its own. It returns how
// many requests of the tight loop were answered per status code.
func flood(t testing.TB, ca *clustertls.CA, addr string, stop <-chan struct{}, wg *sync.WaitGroup, codes *sync.Map) {
	const slow, polls, hammers = 300, 200, 200
	for range slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.250.1")}, Timeout: 5 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := d.Dial("tcp", addr)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				// Over TLS a slow client is one that never finishes its
				// handshake: send nothing.
				// Hold it until the server gives up on it (or the flood ends).
				done := make(chan struct{})
				go func() { io.Copy(io.Discard, conn); close(done) }()
				select {
				case <-stop:
				case <-done:
				}
				conn.Close()
			}
		}()
	}
	pollClient := clientFrom(ca, "127.0.250.2", 2*time.Minute)
	for range polls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			version := ""
			for {
				ctx, cancel := context.WithCancel(context.Background())
				go func() {
					select {
					case <-stop:
					case <-ctx.Done():
					}
					cancel()
				}()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/v1/api-addresses/watch?timeout=60s&version="+version, nil)
				resp, err := pollClient.Do(req)
				if err == nil {
					var l struct {
						Version string `json:"version"`
					}
					json.NewDecoder(resp.Body).Decode(&l)
					resp.Body.Close()
					if l.Version != "" {
						version = l.Version
					}
				}
				cancel()
				select {
				case <-stop:
					return
				default:
				}
				if err != nil || resp.StatusCode != http.StatusOK {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	hammer := clientFrom(ca, "127.0.250.3", 10*time.Second)
	for range hammers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := hammer.Get("https://" + addr + "/v1/lease")
				code := "error"
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = strconv.Itoa(resp.StatusCode)
				}
				n, _ := codes.LoadOrStore(code, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				if code != "200" {
					time.Sleep(10 * time.Millisecond) // as told by Retry-After, but sooner
				}
			}
		}()
	}
}

// TestAPI_FloodAndSlowClientsNeitherStarveOthersNorTheLease: one
// controller's API gets a flood of lease requests, hundreds of long polls
// and hundreds of slow clients holding connections open (each kind from
// its own source address). Another client is still answered, every time,
// and the lease holder keeps its lease: the same holder in the same
// tenure before and after.
func TestAPI_FloodAndSlowClientsNeitherStarveOthersNorTheLease(t *testing.T) {
	c := newCluster(t)
	c.args = []string{"--backup-dir", ""}
	c.form(3)
	holder := c.waitOneHolder("")
	holderBefore, tenureBefore := c.leaseTenure(holder)
	target := holder // the holder's own API: its lease must survive it
	addr := c.apiAddress(target)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var codes sync.Map
	flood(t, c.ca, addr, stop, &wg, &codes)
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(3 * time.Second) // let the flood build up

	other := clientFrom(c.ca, "127.0.251.1", 10*time.Second)
	var failures []string
	const asks = 20
	var lat []time.Duration
	for i := range asks {
		for _, path := range []string{"/v1/lease", "/v1/health"} {
			start := time.Now()
			resp, err := other.Get("https://" + addr + path)
			if err != nil {
				failures = append(failures, fmt.Sprintf("%d %s: %v", i, path, err))
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failures = append(failures, fmt.Sprintf("%d %s: %s %s", i, path, resp.Status, body))
			}
			if path == "/v1/lease" {
				lat = append(lat, time.Since(start))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	if st := c.mustStatus(holder); st.Lease == nil || !st.Lease.HeldByMe {
		failures = append(failures, fmt.Sprintf("controller %s no longer holds the lease: %+v", holder, st.Lease))
	}
	holderAfter, tenureAfter := c.leaseTenure(holder)
	counts := map[string]int64{}
	codes.Range(func(k, v any) bool { counts[k.(string)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("flood answers by status: %v; other client's lease latencies: %v", counts, lat)
	if holderAfter != holderBefore || tenureAfter != tenureBefore {
		failures = append(failures, fmt.Sprintf("lease moved during the flood: %s tenure %s -> %s tenure %s", holderBefore, tenureBefore, holderAfter, tenureAfter))
	}
	if len(failures) > 0 {
		t.Fatalf("during the flood of controller %s's API: %d failures: %v", target, len(failures), failures)
	}
}

// sampleLease GETs /v1/lease n times with client and returns the
// latencies of the 200 answers in ms and the number of other outcomes.
func sampleLease(client *http.Client, addr string, n int) (lat []float64, fails int) {
	for range n {
		start := time.Now()
		resp, err := client.Get("https://" + addr + "/v1/lease")
		if err != nil {
			fails++
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			fails++
			continue
		}
		lat = append(lat, ms(time.Since(start)))
		time.Sleep(20 * time.Millisecond)
	}
	return lat, fails
}

func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

// BenchmarkLeaseRouteUnderFlood measures GET /v1/lease on the lease
// holder's API for a well-behaved client, quiet and then under the flood
// of TestAPI_FloodAndSlowClientsNeitherStarveOthersNorTheLease (300 slow
// clients, 200 long polls, 200 concurrent lease requesters), and how many
// lease requests the flood got answered per second. lease-moved is 1 if
// the holder or its tenure changed during the flood.
func BenchmarkLeaseRouteUnderFlood(b *testing.B) {
	for i := 0; i < b.N; i++ {
		c := newCluster(b)
		c.args = []string{"--backup-dir", ""}
		c.form(3)
		holder := c.waitOneHolder("")
		h0, t0 := c.leaseTenure(holder)
		addr := c.apiAddress(holder)
		other := clientFrom(c.ca, "127.0.251.1", 10*time.Second)
		quiet, _ := sampleLease(other, addr, 50)

		stop := make(chan struct{})
		var wg sync.WaitGroup
		var codes sync.Map
		began := time.Now()
		flood(b, c.ca, addr, stop, &wg, &codes)
		time.Sleep(3 * time.Second)
		flooded, fails := sampleLease(other, addr, 100)
		close(stop)
		wg.Wait()
		elapsed := time.Since(began)
		var ok int64
		if n, found := codes.Load("200"); found {
			ok = n.(*atomic.Int64).Load()
		}
		h1, t1 := c.leaseTenure(holder)
		moved := 0.0
		if h0 != h1 || t0 != t1 {
			moved = 1
		}
		b.ReportMetric(median(quiet), "quiet-median-ms")
		b.ReportMetric(median(flooded), "flood-median-ms")
		b.ReportMetric(quantile(flooded, 0.99), "flood-p99-ms")
		b.ReportMetric(float64(fails), "other-client-failures")
		b.ReportMetric(float64(ok)/elapsed.Seconds(), "flood-answers/s")
		b.ReportMetric(moved, "lease-moved")
	}
}
