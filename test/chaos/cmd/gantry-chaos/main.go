// Command gantry-chaos runs the chaos harness (test/chaos) against a docker
// compose cluster started by scripts/chaos.sh (`make chaos`): a seeded
// schedule of faults under a workload of concurrent clients, then the
// checker. It prints the schedule and progress as they happen, a report at
// the end, writes the report as JSON and the history as JSON lines, and
// exits 0 only when every invariant held (1 on a violation, 2 on bad
// usage).
//
//	go run ./test/chaos/cmd/gantry-chaos --project chaos --ports 18081,18082,18083 \
//	    --duration 5m --seed 42 --faults kill-leader,pause-leader
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/test/chaos"
	dockerchaos "github.com/gantryhq/gantry/test/chaos/docker"
)

func main() { os.Exit(run()) }

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run() int {
	fs := flag.NewFlagSet("gantry-chaos", flag.ContinueOnError)
	project := fs.String("project", env("GANTRY_PROJECT", "chaos"), "compose project of the cluster (container, network and volume prefix)")
	image := fs.String("image", env("GANTRY_IMAGE", "gantry:dev"), "the gantry image (reads the ledger volume)")
	ports := fs.String("ports", "18081,18082,18083", "host ports of master-1, master-2, ... (comma-separated)")
	duration := fs.Duration("duration", 5*time.Minute, "how long faults are injected")
	seed := fs.Uint64("seed", 0, "seed of the fault schedule and the clients (0: from the clock; the report prints it)")
	faults := fs.String("faults", strings.Join(dockerchaos.FaultNames, ","), "faults to inject, comma-separated (all: "+strings.Join(dockerchaos.FaultNames, ",")+")")
	clients := fs.Int("clients", 8, "concurrent submitting clients")
	pause := fs.Duration("pause", 150*time.Millisecond, "each client's pause between operations (sets the offered load with --clients)")
	quiet := fs.String("quiet", "2s-6s", "time between faults, min-max")
	hold := fs.String("hold", "3s-10s", "how long a fault lasts before its heal, min-max")
	settle := fs.Duration("settle", 4*time.Minute, "how long the checker waits for the cluster to settle")
	timeout := fs.Duration("request-timeout", 2*time.Second, "per-request timeout of the clients")
	taskSleep := fs.Duration("task-sleep", 100*time.Millisecond, "how long each task runs after recording its execution")
	workers := fs.Int("managed-workers", 1, "leader-started worker containers during the run (fixed scaling policy; 0 leaves the policy as it is)")
	reportPath := fs.String("report", "chaos-report.json", "where the JSON report goes")
	historyPath := fs.String("history", "chaos-history.jsonl", "where the request history goes (JSON lines)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	var portList []int
	for _, p := range strings.Split(*ports, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > 65535 {
			fmt.Fprintf(os.Stderr, "--ports: %q is not a port\n", p)
			return 2
		}
		portList = append(portList, n)
	}
	q, err1 := parseRange(*quiet)
	h, err2 := parseRange(*hold)
	if err1 != nil || err2 != nil {
		fmt.Fprintf(os.Stderr, "--quiet/--hold: want min-max durations like 2s-6s (%v %v)\n", err1, err2)
		return 2
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano() % 1e9)
	}
	t := dockerchaos.New(*project, *image, portList)
	t.TaskSleep = *taskSleep
	var names []string
	for _, f := range strings.Split(*faults, ",") {
		if f = strings.TrimSpace(f); f != "" {
			names = append(names, f)
		}
	}
	nemeses, err := dockerchaos.Nemeses(t, names)
	if err != nil {
		fmt.Fprintln(os.Stderr, "--faults:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := t.WaitLeader(ctx, 2*time.Minute); err != nil {
		fmt.Fprintln(os.Stderr, "the cluster has no leader:", err)
		return 1
	}
	if *workers > 0 {
		if err := t.SetScale(ctx, api.ScalePolicy{Mode: api.ScaleFixed, Count: *workers}); err != nil {
			fmt.Fprintln(os.Stderr, "set the scaling policy:", err)
			return 1
		}
	}
	rep, hist := chaos.Run(ctx, chaos.Config{
		Target: t, Nemeses: nemeses, Duration: *duration, Seed: *seed, Clients: *clients,
		Quiet: q, Hold: h, RequestTimeout: *timeout, Pause: *pause, Settle: *settle, HTTPClient: t.HTTP,
	})
	// Nothing stays faulted, whatever happened above.
	hctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	if err := t.HealAll(hctx); err != nil {
		fmt.Fprintln(os.Stderr, "healing the cluster after the run:", err)
	}
	cancel()
	rep.WriteText(os.Stdout)
	if err := rep.WriteJSON(*reportPath); err != nil {
		fmt.Fprintln(os.Stderr, "write the report:", err)
	}
	if err := hist.WriteFile(*historyPath); err != nil {
		fmt.Fprintln(os.Stderr, "write the history:", err)
	}
	fmt.Printf("report: %s, history: %s; replay the schedule with --seed %d --faults %s --duration %s\n",
		*reportPath, *historyPath, *seed, strings.Join(names, ","), *duration)
	if !rep.OK {
		return 1
	}
	return 0
}

func parseRange(s string) ([2]time.Duration, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		hi = lo
	}
	a, err := time.ParseDuration(lo)
	if err != nil {
		return [2]time.Duration{}, err
	}
	b, err := time.ParseDuration(hi)
	if err != nil {
		return [2]time.Duration{}, err
	}
	if b < a || a < 0 {
		return [2]time.Duration{}, fmt.Errorf("%s: max below min", s)
	}
	return [2]time.Duration{a, b}, nil
}
