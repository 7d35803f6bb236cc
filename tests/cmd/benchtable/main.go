// Command benchtable turns `go test -bench` output (stdin) into the one
// table `make bench` prints: each figure's median with its spread
// (min–max of the repetitions, from the metrics named <name>-min-<unit>
// and <name>-max-<unit> beside <name>-<unit>), in a fixed order, with a
// row left for figures not measured yet.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// row is one known figure: the benchmark (without its -N suffix) and the
// metric.
type row struct {
	bench, metric, label string
}

var rows = []row{
	{"BenchmarkHook_UpdateStatus", "hook-ms", "P1: one update-status hook, fast tools (Go dispatch, incl. its start-up)"},
	{"BenchmarkHook_UpdateStatus", "hook-serial-ms", "P1: the same hook, every tool call one after the other"},
	{"BenchmarkHook_UpdateStatus", "python-ms", "P1: the same tool calls from a minimal Python dispatch"},
	{"BenchmarkHook_UpdateStatus", "python/go", "P1: Python ÷ Go"},
	{"BenchmarkHook_UpdateStatus", "tool-calls", "P1: tool calls per hook"},
	{"BenchmarkHook_UpdateStatus", "dispatch-start-ms", "P1: dispatch binary start-up alone"},
	{"BenchmarkConfigChangeToAction", "decision-ms", "config write → decision (waiting node)"},
	{"BenchmarkConfigChangeToAction", "removal-ms", "config write → departed member removed (3 nodes)"},
	{"BenchmarkAddNodeToVoter", "add-to-voter-ms", "add-unit (third node starts) → voter"},
	{"BenchmarkLeaderKillToWritable", "kill-to-write-ms", "Dqlite leader kill -9 → writable through a survivor"},
	{"BenchmarkReconfigureToWritable", "reconfigure-to-write-ms", "3 → 1 (two nodes dead, config lists one) → writable"},
	{"BenchmarkLeaseHolderFailover", "kill9-to-new-holder-ms", "singular lease holder kill -9 → new holder (3 processes)"},
	{"BenchmarkLeaseHolderFailover", "sigterm-to-new-holder-ms", "singular lease holder SIGTERM → new holder (3 processes)"},
	{"BenchmarkLeaseFailover", "failover-ms", "lease worker cut off → new holder (in-process)"},
	{"BenchmarkLeaseFailover", "stop-before-takeover-ms", "lease worker cut off: its flag down before the new holder's (in-process)"},
	{"BenchmarkLeaseFailover", "graceful-handover-ms", "lease worker stopped → new holder (in-process)"},
	{"BenchmarkLeaseFailoverWithDqliteLeader", "failover-ms", "lease holder that is also the Dqlite leader cut off → new holder"},
	{"BenchmarkWriteThroughput/nodes=1", "tx-per-s", "write throughput, 1 node, one row per explicit transaction (tx/s)"},
	{"BenchmarkWriteThroughput/nodes=3", "tx-per-s", "write throughput, 3 nodes, one row per explicit transaction (tx/s)"},
	{"BenchmarkWriteThroughputBatches/nodes=1", "rows-per-s", "write throughput, 1 node, 100-row transactions (rows/s)"},
	{"BenchmarkWriteThroughputBatches/nodes=3", "rows-per-s", "write throughput, 3 nodes, 100-row transactions (rows/s)"},
	{"BenchmarkRSS", "idle-MB", "controllerd RSS idle (1 node)"},
	{"BenchmarkRSS", "after-10k-writes-MB", "controllerd RSS after 10 000 single-row writes"},
	{"BenchmarkRSS", "after-100k-writes-MB", "controllerd RSS after 100 000 rows"},
	{"BenchmarkTLS", "tls-vs-plain", "TLS vs plaintext (not measured yet: comes with TLS)"},
}

var suffix = regexp.MustCompile(`-\d+$`)

type figure struct {
	median, min, max float64
	hasSpread        bool
}

func parse(r io.Reader) map[string]map[string]*figure {
	out := map[string]map[string]*figure{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := suffix.ReplaceAllString(f[0], "")
		metrics := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err == nil {
				metrics[f[i+1]] = v
			}
		}
		figs := out[name]
		if figs == nil {
			figs = map[string]*figure{}
			out[name] = figs
		}
		for unit, v := range metrics {
			if unit == "ns/op" || strings.Contains(unit, "-min-") || strings.Contains(unit, "-max-") {
				continue
			}
			fig := &figure{median: v}
			// name-unit has name-min-unit and name-max-unit; the unit
			// may itself hold a dash (tx-per-s).
			for i := 1; i < len(unit); i++ {
				if unit[i] != '-' {
					continue
				}
				lo, okLo := metrics[unit[:i]+"-min"+unit[i:]]
				hi, okHi := metrics[unit[:i]+"-max"+unit[i:]]
				if okLo && okHi {
					fig.min, fig.max, fig.hasSpread = lo, hi, true
					break
				}
			}
			figs[unit] = fig
		}
	}
	return out
}

func num(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func main() {
	figs := parse(os.Stdin)
	fmt.Println("| figure | median | spread (min–max) |")
	fmt.Println("|---|---|---|")
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.bench+" "+r.metric] = true
		switch {
		case strings.HasSuffix(r.metric, "-ms"):
			r.label += " (ms)"
		case strings.HasSuffix(r.metric, "-MB"):
			r.label += " (MB)"
		}
		f := figs[r.bench][r.metric]
		switch {
		case f == nil:
			fmt.Printf("| %s | — | — |\n", r.label)
		case f.hasSpread:
			fmt.Printf("| %s | %s | %s–%s |\n", r.label, num(f.median), num(f.min), num(f.max))
		default:
			fmt.Printf("| %s | %s | — |\n", r.label, num(f.median))
		}
	}
	var rest []string
	for b, m := range figs {
		for unit, f := range m {
			if !seen[b+" "+unit] {
				rest = append(rest, fmt.Sprintf("| %s %s | %s | — |", b, unit, num(f.median)))
			}
		}
	}
	sort.Strings(rest)
	for _, l := range rest {
		fmt.Println(l)
	}
}
