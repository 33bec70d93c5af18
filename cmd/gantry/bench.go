package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
	"github.com/spf13/cobra"
)

// benchConfig is what one `gantry bench` invocation measures.
type benchConfig struct {
	addrs    []string
	clients  []int
	batch    int
	duration time.Duration
	timeout  time.Duration
	repeats  int
	args     []string
}

// benchRun is the outcome of one closed-loop run at one concurrency.
type benchRun struct {
	Clients   int            `json:"clients"`
	Seconds   float64        `json:"seconds"`
	Tasks     int            `json:"tasks"`    // acknowledged tasks
	Requests  int            `json:"requests"` // acknowledged requests
	PerSec    float64        `json:"tasks_per_sec"`
	P50Ms     float64        `json:"p50_ms"`
	P90Ms     float64        `json:"p90_ms"`
	P99Ms     float64        `json:"p99_ms"`
	MaxMs     float64        `json:"max_ms"`
	GapMs     float64        `json:"longest_gap_ms"`
	GapAtMs   float64        `json:"longest_gap_at_ms"`
	Errors    int            `json:"errors"`
	ErrorKind map[string]int `json:"error_kinds,omitempty"`
}

// benchStat is a median with its spread over the repeated runs.
type benchStat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func newBenchStat(v []float64) benchStat {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return benchStat{}
	}
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return benchStat{Median: m, Min: s[0], Max: s[len(s)-1]}
}

func (s benchStat) format(prec int) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	if s.Min == s.Max {
		return f(s.Median)
	}
	return f(s.Median) + " [" + f(s.Min) + "-" + f(s.Max) + "]"
}

// benchRow sums up the runs at one concurrency.
type benchRow struct {
	Clients int        `json:"clients"`
	PerSec  benchStat  `json:"tasks_per_sec"`
	P50Ms   benchStat  `json:"p50_ms"`
	P99Ms   benchStat  `json:"p99_ms"`
	GapMs   benchStat  `json:"longest_gap_ms"`
	Errors  int        `json:"errors"`
	Runs    []benchRun `json:"runs"`
}

// benchReport is what --report writes.
type benchReport struct {
	At         time.Time  `json:"at"`
	Addrs      []string   `json:"addrs"`
	Endpoint   string     `json:"endpoint"`
	Batch      int        `json:"tasks_per_request"`
	RunSeconds float64    `json:"run_seconds"`
	Repeats    int        `json:"repeats"`
	Rows       []benchRow `json:"rows"`
}

func newBenchCmd() *cobra.Command {
	var (
		cfg    benchConfig
		addr   string
		report string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Submit tasks from concurrent clients for a while and report throughput, latency and the longest gap",
		Long: `bench submits tasks to a running cluster in a closed loop: each of --clients
concurrent clients sends a request, waits for the answer, and sends the next,
for --duration. With --batch 1 (the default) a request is POST /v1/tasks of one
task; with --batch N it is POST /v1/tasks/batch of N tasks. Every task has its
own idempotency key, and a request that fails is retried on the next master
with the same keys. Clients start on the --addr masters in turn.

Each run prints the acknowledged tasks per second, latency percentiles (first
try to acknowledgement), errors, and the longest gap between two
acknowledgements: kill the leader during a run and that gap is the failover
time as a client sees it. --clients takes a list (1,16,64,256) and --repeats
runs each that many times; the table at the end shows medians with the
[min-max] spread, and --report writes every run as JSON.

make bench runs the full benchmark beside etcd on local processes; this
command measures a cluster that already runs (make dev, make up, production).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.addrs = splitList(addr)
			if len(cfg.addrs) == 0 {
				return fmt.Errorf("--addr: give at least one master URL")
			}
			if len(cfg.clients) == 0 {
				return fmt.Errorf("--clients: give at least one count")
			}
			for _, c := range cfg.clients {
				if c < 1 || c > 4096 {
					return fmt.Errorf("--clients: %d is outside 1-4096", c)
				}
			}
			if cfg.batch < 1 || cfg.batch > api.MaxBatchTasks {
				return fmt.Errorf("--batch: %d is outside 1-%d", cfg.batch, api.MaxBatchTasks)
			}
			if cfg.duration <= 0 || cfg.timeout <= 0 {
				return fmt.Errorf("--duration and --request-timeout must be positive")
			}
			if cfg.repeats < 1 || cfg.repeats > 100 {
				return fmt.Errorf("--repeats: %d is outside 1-100", cfg.repeats)
			}
			rep, err := runBench(cmd.Context(), cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			printBenchTable(cmd.OutOrStdout(), rep)
			if report != "" {
				data, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(report, append(data, '\n'), 0o644); err != nil {
					return fmt.Errorf("--report: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "report: %s\n", report)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", defaultAddrs, "comma-separated master URLs; clients are spread over them")
	f.IntSliceVar(&cfg.clients, "clients", []int{16}, "concurrent clients; a list (1,16,64,256) measures each")
	f.IntVar(&cfg.batch, "batch", 1, fmt.Sprintf("tasks per request: 1 uses POST /v1/tasks, 2-%d POST /v1/tasks/batch", api.MaxBatchTasks))
	f.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long each run submits")
	f.IntVar(&cfg.repeats, "repeats", 1, "runs per client count (the table shows the median and the spread)")
	f.DurationVar(&cfg.timeout, "request-timeout", 2*time.Second, "per request; a request that times out is retried on the next master")
	f.StringSliceVar(&cfg.args, "task", []string{"true"}, "the task's args")
	f.StringVar(&report, "report", "bench-report.json", `write every run as JSON to this file ("" writes none)`)
	return cmd
}

// runBench runs every client count --repeats times, printing each run.
func runBench(ctx context.Context, cfg benchConfig, out io.Writer) (benchReport, error) {
	rep := benchReport{At: time.Now().UTC(), Addrs: cfg.addrs, Batch: cfg.batch, RunSeconds: cfg.duration.Seconds(), Repeats: cfg.repeats, Endpoint: "POST /v1/tasks"}
	if cfg.batch > 1 {
		rep.Endpoint = "POST /v1/tasks/batch"
	}
	for _, clients := range cfg.clients {
		row := benchRow{Clients: clients}
		var per, p50, p99, gap []float64
		for r := 0; r < cfg.repeats; r++ {
			run, err := benchOnce(ctx, cfg, clients)
			if err != nil {
				return rep, err
			}
			row.Runs = append(row.Runs, run)
			row.Errors += run.Errors
			per, p50, p99, gap = append(per, run.PerSec), append(p50, run.P50Ms), append(p99, run.P99Ms), append(gap, run.GapMs)
			fmt.Fprintf(out, "clients %d, duration %.3fs, acknowledged %d tasks in %d requests, errors (retried) %d\n", clients, run.Seconds, run.Tasks, run.Requests, run.Errors)
			fmt.Fprintf(out, "throughput %.0f tasks/s\n", run.PerSec)
			fmt.Fprintf(out, "latency p50 %.3fms  p90 %.3fms  p99 %.3fms  max %.3fms\n", run.P50Ms, run.P90Ms, run.P99Ms, run.MaxMs)
			for k, n := range run.ErrorKind {
				fmt.Fprintf(out, "  %d x %s\n", n, clip(k, 160))
			}
			fmt.Fprintf(out, "longest gap between acknowledgements %.0fms (at +%.0fms)\n", run.GapMs, run.GapAtMs)
		}
		row.PerSec, row.P50Ms, row.P99Ms, row.GapMs = newBenchStat(per), newBenchStat(p50), newBenchStat(p99), newBenchStat(gap)
		rep.Rows = append(rep.Rows, row)
	}
	return rep, nil
}

func printBenchTable(out io.Writer, rep benchReport) {
	fmt.Fprintf(out, "\n== %s, %d task(s) a request, %d run(s) of %gs per row: median [min-max]\n", rep.Endpoint, rep.Batch, rep.Repeats, rep.RunSeconds)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENTS\tTASKS/S\tP50 MS\tP99 MS\tLONGEST GAP MS\tERRORS")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", r.Clients, r.PerSec.format(0), r.P50Ms.format(1), r.P99Ms.format(1), r.GapMs.format(0), r.Errors)
	}
	tw.Flush()
}

// benchOnce runs clients closed-loop clients for cfg.duration.
func benchOnce(parent context.Context, cfg benchConfig, clients int) (benchRun, error) {
	type sample struct {
		end time.Time
		lat time.Duration
	}
	var (
		mu      sync.Mutex
		samples []sample
		errs    int
		kinds   = map[string]int{}
	)
	ctx, cancel := context.WithTimeout(parent, cfg.duration)
	defer cancel()
	start := time.Now()
	run := strconv.FormatInt(start.UnixNano(), 36)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			// Each client starts on a different master and moves on when
			// one fails.
			n := c % len(cfg.addrs)
			cl := transport.NewClient(append(slices.Clone(cfg.addrs[n:]), cfg.addrs[:n]...))
			for i := 0; ctx.Err() == nil; i++ {
				specs := make([]api.TaskSpec, cfg.batch)
				for j := range specs {
					specs[j] = api.TaskSpec{Args: cfg.args, IdempotencyKey: fmt.Sprintf("bench-%s-%d-%d-%d", run, c, i, j)}
				}
				t0 := time.Now()
				for ctx.Err() == nil {
					rctx, rcancel := context.WithTimeout(ctx, cfg.timeout)
					var err error
					if cfg.batch == 1 {
						_, _, err = cl.Submit(rctx, specs[0])
					} else {
						_, err = cl.SubmitBatch(rctx, specs)
					}
					rcancel()
					if err == nil {
						now := time.Now()
						mu.Lock()
						samples = append(samples, sample{now, now.Sub(t0)})
						mu.Unlock()
						break
					}
					if ctx.Err() != nil {
						break // the run ended; not an error
					}
					mu.Lock()
					errs++
					kinds[describe(err)]++
					mu.Unlock()
					// Try the next master with the same keys.
					cl.SetAddrs(append(cl.Addrs()[1:], cl.Addrs()[0]))
				}
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(samples) == 0 {
		detail := make([]string, 0, len(kinds))
		for k := range kinds {
			detail = append(detail, clip(k, 160))
		}
		return benchRun{}, fmt.Errorf("no submission was acknowledged at %d clients (%d errors: %s)", clients, errs, strings.Join(detail, "; "))
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i].end.Before(samples[j].end) })
	gap, gapAt := samples[0].end.Sub(start), time.Duration(0)
	for i := 1; i < len(samples); i++ {
		if g := samples[i].end.Sub(samples[i-1].end); g > gap {
			gap, gapAt = g, samples[i-1].end.Sub(start)
		}
	}
	lats := make([]time.Duration, len(samples))
	for i, s := range samples {
		lats[i] = s.lat
	}
	slices.Sort(lats)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	pct := func(p float64) float64 { return ms(lats[int(p*float64(len(lats)-1))]) }
	r := benchRun{
		Clients: clients, Seconds: elapsed.Seconds(), Requests: len(samples), Tasks: len(samples) * cfg.batch,
		P50Ms: pct(.5), P90Ms: pct(.9), P99Ms: pct(.99), MaxMs: ms(lats[len(lats)-1]),
		GapMs: ms(gap), GapAtMs: ms(gapAt), Errors: errs,
	}
	r.PerSec = float64(r.Tasks) / elapsed.Seconds()
	if len(kinds) > 0 {
		r.ErrorKind = kinds
	}
	return r, nil
}
