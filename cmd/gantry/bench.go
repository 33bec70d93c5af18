package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
	"github.com/spf13/cobra"
)

func newBenchCmd() *cobra.Command {
	var (
		addr     string
		clients  int
		duration time.Duration
		timeout  time.Duration
		args     []string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Submit tasks from concurrent clients for a while and report throughput, latency and the longest gap",
		Long: `bench submits single tasks (POST /v1/tasks, each with its own idempotency key)
from --clients concurrent clients spread over the --addr masters for --duration,
retrying a request that fails on the next master with the same key. It prints
the acknowledged submissions per second, latency percentiles, errors, and the
longest gap between two acknowledged submissions: kill the leader during a run
and that gap is the failover time as a client sees it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addrs := splitList(addr)
			if len(addrs) == 0 || clients < 1 || duration <= 0 {
				return fmt.Errorf("need --addr, --clients >= 1 and --duration > 0")
			}
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
			ctx, cancel := context.WithTimeout(cmd.Context(), duration)
			defer cancel()
			start := time.Now()
			run := strconv.FormatInt(start.UnixNano(), 36)
			var wg sync.WaitGroup
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func(c int) {
					defer wg.Done()
					// Each client starts on a different master and moves on
					// when one fails.
					rot := append(append([]string{}, addrs[c%len(addrs):]...), addrs[:c%len(addrs)]...)
					cl := transport.NewClient(rot)
					for i := 0; ctx.Err() == nil; i++ {
						spec := api.TaskSpec{Args: args, IdempotencyKey: fmt.Sprintf("bench-%s-%d-%d", run, c, i)}
						t0 := time.Now()
						for ctx.Err() == nil {
							rctx, rcancel := context.WithTimeout(ctx, timeout)
							_, _, err := cl.Submit(rctx, spec)
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
							// Try the next master with the same key.
							cl.SetAddrs(append(cl.Addrs()[1:], cl.Addrs()[0]))
						}
					}
				}(c)
			}
			wg.Wait()
			elapsed := time.Since(start)
			if len(samples) == 0 {
				return fmt.Errorf("no submission was acknowledged (%d errors)", errs)
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
			sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
			pct := func(p float64) time.Duration { return lats[int(p*float64(len(lats)-1))] }
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "clients %d, duration %s, acknowledged %d, errors (retried) %d\n", clients, elapsed.Round(time.Millisecond), len(samples), errs)
			fmt.Fprintf(out, "throughput %.0f submissions/s\n", float64(len(samples))/elapsed.Seconds())
			fmt.Fprintf(out, "latency p50 %s  p90 %s  p99 %s  max %s\n", pct(.5).Round(time.Microsecond), pct(.9).Round(time.Microsecond), pct(.99).Round(time.Microsecond), lats[len(lats)-1].Round(time.Microsecond))
			for k, n := range kinds {
				fmt.Fprintf(out, "  %d x %s\n", n, clip(k, 160))
			}
			fmt.Fprintf(out, "longest gap between acknowledgements %s (at +%s)\n", gap.Round(time.Millisecond), gapAt.Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", defaultAddrs, "comma-separated master URLs; clients are spread over them")
	f.IntVar(&clients, "clients", 16, "concurrent clients")
	f.DurationVar(&duration, "duration", 10*time.Second, "how long to submit")
	f.DurationVar(&timeout, "request-timeout", 2*time.Second, "per request; a request that times out is retried on the next master")
	f.StringSliceVar(&args, "task", []string{"true"}, "the task's args")
	return cmd
}
