// Command gantry-bench runs the benchmark of package test/bench (`make
// bench`): gantry beside a 3-member etcd cluster on this machine, both as
// local processes on loopback. It prints the figures as they come and a
// table at the end, and writes bench-report.json and the failover chart.
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

	"github.com/gantryhq/gantry/test/bench"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("gantry-bench", flag.ContinueOnError)
	bin := fs.String("gantry", "bin/gantry", "the gantry binary")
	etcd := fs.String("etcd", "", "the etcd binary (default: $ETCD, etcd on PATH); \"none\" skips etcd")
	dir := fs.String("dir", "", "data and logs (default: a temporary directory, removed afterwards)")
	repeats := fs.Int("repeats", 3, "runs per figure")
	dur := fs.Duration("duration", 5*time.Second, "length of one throughput run")
	clients := fs.String("clients", "1,16,64,256", "concurrencies of the submit benchmark")
	rounds := fs.Int("rounds", 10, "leader kills per system")
	lossRounds := fs.Int("worker-loss-rounds", 5, "SIGKILLs of a busy worker")
	heartbeat := fs.Duration("raft-heartbeat-timeout", 0, "gantry's raft heartbeat timeout (0: the binary's default)")
	election := fs.Duration("raft-election-timeout", 0, "gantry's raft election timeout (0: the binary's default)")
	lease := fs.Duration("raft-lease-timeout", 0, "gantry's raft lease timeout (0: the binary's default)")
	phases := fs.String("phases", "all", "phases to run: all, or some of submit,batch,failover,e2e,completion,workerloss,statescale")
	stateTasks := fs.Int("state-tasks", 1_000_000, "pending tasks of the state-scale figures")
	slots := fs.Int("worker-slots", 32, "slots of each of the 3 workers that run the task figures")
	logLevel := fs.String("log-level", "warn", "log level of the gantry processes (their logs are in --dir)")
	report := fs.String("report", "bench-report.json", "where the JSON report goes")
	chart := fs.String("chart", "docs/failover.svg", "where the failover chart goes (\"\": none)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	cfg := bench.Config{Gantry: *bin, Repeats: *repeats, For: *dur, Rounds: *rounds, WorkerLossRounds: *lossRounds,
		Timers: bench.Timers{Heartbeat: *heartbeat, Election: *election, Lease: *lease}}
	if cfg.Timers.Heartbeat > 0 && (cfg.Timers.Election <= 0 || cfg.Timers.Lease <= 0) {
		fmt.Fprintln(os.Stderr, "--raft-heartbeat-timeout needs --raft-election-timeout and --raft-lease-timeout")
		return 2
	}
	cfg.LogLevel = *logLevel
	cfg.Slots = *slots
	cfg.StateTasks = *stateTasks
	if *phases != "all" {
		cfg.Phases = map[string]bool{}
		for _, p := range strings.Split(*phases, ",") {
			cfg.Phases[strings.TrimSpace(p)] = true
		}
	}
	for _, c := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "--clients: %q is not a positive number\n", c)
			return 2
		}
		cfg.Clients = append(cfg.Clients, n)
	}
	switch *etcd {
	case "none":
	case "":
		b, err := bench.FindEtcd()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		cfg.Etcd = b
	default:
		cfg.Etcd = *etcd
	}
	cfg.Dir = *dir
	temp := false
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "gantry-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		cfg.Dir, temp = d, true
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if rep != nil {
		rep.WriteText(os.Stdout)
		if werr := rep.WriteJSON(*report); werr != nil {
			fmt.Fprintln(os.Stderr, werr)
		}
		if *chart != "" {
			if werr := rep.WriteChart(*chart); werr != nil {
				fmt.Fprintln(os.Stderr, werr)
			}
		}
		fmt.Printf("\nreport: %s%s\n", *report, map[bool]string{true: ", chart: " + *chart, false: ""}[*chart != ""])
	}
	if err != nil {
		// Keep the temporary directory: its logs explain the failure.
		fmt.Fprintln(os.Stderr, "bench:", err, "(logs kept in", cfg.Dir+")")
		return 1
	}
	if temp {
		os.RemoveAll(cfg.Dir)
	}
	return 0
}
