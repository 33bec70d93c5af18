//go:build e2e

package e2e

// Benchmarks under compose, run by `make bench-docker`:
//
//	go test -tags e2e -count=1 -timeout 30m -run '^$' -bench . -benchtime 1x -v ./test/e2e/...
//
// They report figures and assert nothing about time:
//
//   - BenchmarkDocker_Failover: GANTRY_BENCH_ROUNDS rounds (5) of SIGKILL to
//     the leader's container while 8 clients submit (each request with a
//     500ms timeout, an unknown outcome retried on the next master with the
//     same idempotency key). Per round: the longest gap between acknowledged
//     submissions, when acknowledgements resumed after the kill (the end of
//     that gap), and the time until the survivors agreed on a new leader
//     (their /v1/internal/self, polled every 100ms). Both times start when
//     `docker kill` is run, so they include the CLI's own latency (a few
//     hundred ms here); the ack gap does not. The killed master is restarted
//     and caught up between rounds.
//   - BenchmarkDocker_ScaleUp: GANTRY_BENCH_SCALE_ROUNDS rounds (3) of a
//     backlog on a cluster with no worker at all (policy auto, min 0, max 4):
//     the time from the backlog's commit (created_at) to the first task
//     running on a new managed container (its attempt's started_at), and to
//     the container's creation; it scales back to 0 between rounds.
//
// The results are printed as tables and written as JSON to bench-docker.json
// at the repository root (not tracked by git; delete it at will).

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

var (
	benchMu      sync.Mutex
	benchResults = map[string]any{}
)

// saveBench records one benchmark's results and rewrites bench-docker.json.
func saveBench(b *testing.B, name string, v any) {
	benchMu.Lock()
	defer benchMu.Unlock()
	benchResults[name] = v
	ver, _ := dockerOut("version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})")
	benchResults["environment"] = map[string]any{
		"cpus":         runtime.NumCPU(),
		"docker":       strings.TrimSpace(ver),
		"image":        imageName(),
		"generated_at": time.Now().UTC().Format(time.RFC3339),
		"command":      "make bench-docker",
	}
	data, err := json.MarshalIndent(benchResults, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(root(b), "bench-docker.json")
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		b.Fatalf("write %s: %v", path, err)
	}
	fmt.Printf("results written to %s\n", path)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func secs(d time.Duration) float64 { return float64(d.Round(time.Millisecond)) / float64(time.Second) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func maxOf(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

type failoverRound struct {
	Round          int     `json:"round"`
	Killed         string  `json:"killed"`
	NewLeader      string  `json:"new_leader"`
	GapS           float64 `json:"longest_ack_gap_s"`
	ResumedS       float64 `json:"kill_to_acks_resumed_s"`
	ElectedS       float64 `json:"kill_to_leader_agreed_s"`
	Acks           int     `json:"acks"`
	Retries        int     `json:"retried_requests"`
	NotAcked       int     `json:"keys_not_acked"`
	CatchUpS       float64 `json:"restart_to_caught_up_s"`
	RoundDurationS float64 `json:"round_s"`
}

func BenchmarkDocker_Failover(b *testing.B) {
	rounds := envInt("GANTRY_BENCH_ROUNDS", 5)
	const clients = 8
	const per = 500 * time.Millisecond
	c := NewCluster(b, Options{Workers: 2, Slots: 4})
	// Keep Docker out of the picture: one managed worker, no scaling.
	c.SetScale(b, api.ScalePolicy{Mode: api.ScaleFixed, Count: 1})
	c.WaitSettled(b, 1, 180*time.Second)

	var results []failoverRound
	for r := 1; r <= rounds; r++ {
		start := time.Now()
		leader := c.WaitLeader(b, 90*time.Second, -1)
		name := c.ContainerOf(leader)
		g := startLoad(c, fmt.Sprintf("bench-failover-r%d", r), clients, per)
		poll(b, 60*time.Second, "steady load", func() (bool, string) {
			n, _ := g.acks(time.Time{})
			return n >= 50 && time.Since(start) > 3*time.Second, fmt.Sprintf("%d acks", n)
		})
		killedAt := time.Now()
		if out, err := docker("kill", "-s", "KILL", name); err != nil {
			g.finish()
			b.Fatalf("docker kill %s: %v\n%s", name, err, out)
		}
		newLeader := c.WaitLeader(b, 90*time.Second, MasterIndex(leader))
		elected := time.Since(killedAt)
		seenAt := time.Now()
		poll(b, 90*time.Second, "acknowledgements after the new leader", func() (bool, string) {
			_, n := g.acks(seenAt)
			return n >= 50 && time.Since(seenAt) > 3*time.Second, fmt.Sprintf("%d acks since the new leader", n)
		})
		g.finish()

		g.mu.Lock()
		acks := append([]time.Time(nil), g.ackedAt...)
		retries, notAcked := g.retries, len(g.failed)
		g.mu.Unlock()
		sort.Slice(acks, func(i, j int) bool { return acks[i].Before(acks[j]) })
		// The longest gap between consecutive acknowledgements from just
		// before the kill on, and when acknowledgements resumed after it.
		var gap, resumed time.Duration
		prev := time.Time{}
		for _, at := range acks {
			if !prev.IsZero() && at.After(killedAt.Add(-2*time.Second)) && at.Sub(prev) > gap {
				gap = at.Sub(prev)
				resumed = at.Sub(killedAt)
			}
			prev = at
		}

		Start(b, name)
		restartAt := time.Now()
		c.WaitCaughtUp(b, leader, 180*time.Second)
		fr := failoverRound{
			Round: r, Killed: leader, NewLeader: newLeader, GapS: secs(gap), ResumedS: secs(resumed), ElectedS: secs(elected),
			Acks: len(acks), Retries: retries, NotAcked: notAcked, CatchUpS: secs(time.Since(restartAt)), RoundDurationS: secs(time.Since(start)),
		}
		results = append(results, fr)
		fmt.Printf("failover round %d: killed %s, new leader %s, longest ack gap %.3fs, kill->acks resumed %.3fs, kill->leader agreed %.3fs, %d acks\n",
			r, leader, newLeader, fr.GapS, fr.ResumedS, fr.ElectedS, fr.Acks)
	}

	var gaps, resumes, elects []float64
	for _, r := range results {
		gaps = append(gaps, r.GapS)
		resumes = append(resumes, r.ResumedS)
		elects = append(elects, r.ElectedS)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nfailover under compose: SIGKILL to the leader's container, %d clients, %s per request, retried on the next master\n", clients, per)
	fmt.Fprintf(&sb, "%-6s %-7s %-7s %12s %14s %15s %6s %8s %11s\n", "round", "killed", "leader", "ack gap (s)", "->resumed (s)", "->leader (s)", "acks", "retries", "catch-up(s)")
	for _, r := range results {
		fmt.Fprintf(&sb, "%-6d %-7s %-7s %12.3f %14.3f %15.3f %6d %8d %11.3f\n", r.Round, r.Killed, r.NewLeader, r.GapS, r.ResumedS, r.ElectedS, r.Acks, r.Retries, r.CatchUpS)
	}
	fmt.Fprintf(&sb, "%-6s %-7s %-7s %12.3f %14.3f %15.3f\n", "median", "", "", median(gaps), median(resumes), median(elects))
	fmt.Fprintf(&sb, "%-6s %-7s %-7s %12.3f %14.3f %15.3f\n", "max", "", "", maxOf(gaps), maxOf(resumes), maxOf(elects))
	fmt.Print(sb.String())
	saveBench(b, "failover", map[string]any{
		"description":                    "SIGKILL to the leader container under docker compose while clients submit; longest gap between acknowledged submissions per round",
		"clients":                        clients,
		"request_timeout":                per.String(),
		"rounds":                         results,
		"median_longest_ack_gap_s":       median(gaps),
		"max_longest_ack_gap_s":          maxOf(gaps),
		"median_kill_to_acks_resumed_s":  median(resumes),
		"median_kill_to_leader_agreed_s": median(elects),
	})
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(gaps), "gap-median-s")
	b.ReportMetric(maxOf(gaps), "gap-max-s")
}

type scaleRound struct {
	Round          int     `json:"round"`
	Worker         string  `json:"first_new_worker"`
	ToTaskS        float64 `json:"backlog_to_first_task_on_new_container_s"`
	ToContainerS   float64 `json:"backlog_to_container_created_s"`
	AckToTaskS     float64 `json:"ack_to_first_task_s"`
	NewContainers  int     `json:"new_containers"`
	BacklogTasks   int     `json:"backlog_tasks"`
	ScaleDownS     float64 `json:"drained_back_to_min_s"`
	RoundDurationS float64 `json:"round_s"`
}

func BenchmarkDocker_ScaleUp(b *testing.B) {
	rounds := envInt("GANTRY_BENCH_SCALE_ROUNDS", 3)
	const backlog = 8
	policy := api.ScalePolicy{Mode: api.ScaleAuto, Min: 0, Max: 4, BacklogPerWorker: 2, Cooldown: "2s"}
	c := NewCluster(b, Options{Workers: -1, Slots: 2})
	c.SetScale(b, policy)

	var results []scaleRound
	for r := 1; r <= rounds; r++ {
		start := time.Now()
		c.WaitSettled(b, 0, 240*time.Second)
		before := map[string]bool{}
		for _, ct := range c.MustManaged(b) {
			before[ct.Name] = true
		}
		cw := watchCreated(c, before)
		tasks := submitBacklog(b, c, fmt.Sprintf("bench-scale-r%d", r), backlog, "2")
		ackAt := time.Now()
		committed := tasks[0].CreatedAt
		var first api.AttemptRecord
		for _, task := range tasks {
			got := c.WaitTerminal(b, task.ID, 300*time.Second)
			for _, a := range got.Attempts {
				if before[a.Worker] || a.StartedAt.IsZero() {
					continue
				}
				if first.StartedAt.IsZero() || a.StartedAt.Before(first.StartedAt) {
					first = a
				}
			}
		}
		if first.StartedAt.IsZero() {
			b.Fatalf("round %d: no task ran on a new managed container", r)
		}
		createdAt := cw.finish()
		created := createdAt[first.Worker]
		newOnes := len(createdAt)
		drainStart := time.Now()
		c.WaitSettled(b, 0, 240*time.Second)
		sr := scaleRound{
			Round: r, Worker: first.Worker, ToTaskS: secs(first.StartedAt.Sub(committed)), AckToTaskS: secs(first.StartedAt.Sub(ackAt)),
			NewContainers: newOnes, BacklogTasks: backlog, ScaleDownS: secs(time.Since(drainStart)), RoundDurationS: secs(time.Since(start)),
		}
		if !created.IsZero() {
			sr.ToContainerS = secs(created.Sub(committed))
		}
		results = append(results, sr)
		fmt.Printf("scale-up round %d: first task on new container %s %.3fs after the backlog (container created after %.3fs)\n", r, sr.Worker, sr.ToTaskS, sr.ToContainerS)
	}

	var toTask, toCont []float64
	for _, r := range results {
		toTask = append(toTask, r.ToTaskS)
		toCont = append(toCont, r.ToContainerS)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nscale-up reaction: %d tasks of 2s on a cluster with no worker, policy auto min 0 max 4 backlog_per_worker 2\n", backlog)
	fmt.Fprintf(&sb, "%-6s %-28s %20s %22s %16s %14s\n", "round", "first new worker", "->1st task (s)", "->container (s)", "new containers", "back to 0 (s)")
	for _, r := range results {
		fmt.Fprintf(&sb, "%-6d %-28s %20.3f %22.3f %16d %14.3f\n", r.Round, r.Worker, r.ToTaskS, r.ToContainerS, r.NewContainers, r.ScaleDownS)
	}
	fmt.Fprintf(&sb, "%-6s %-28s %20.3f %22.3f\n", "median", "", median(toTask), median(toCont))
	fmt.Print(sb.String())
	saveBench(b, "scale_up", map[string]any{
		"description":                    "time from a backlog's commit (created_at) to the first task running on a newly started managed worker container (its attempt's started_at); leader clock",
		"policy":                         policy,
		"backlog_tasks":                  backlog,
		"rounds":                         results,
		"median_backlog_to_first_task_s": median(toTask),
		"median_backlog_to_container_s":  median(toCont),
	})
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(toTask), "reaction-median-s")
}

// createdWatcher records the creation time (docker inspect .Created) of
// every managed container that is not in before, as soon as it appears.
type createdWatcher struct {
	stop    chan struct{}
	done    chan struct{}
	created map[string]time.Time
}

func watchCreated(c *Cluster, before map[string]bool) *createdWatcher {
	w := &createdWatcher{stop: make(chan struct{}), done: make(chan struct{}), created: map[string]time.Time{}}
	go func() {
		defer close(w.done)
		for {
			if cs, err := c.Managed(); err == nil {
				for _, ct := range cs {
					if before[ct.Name] {
						continue
					}
					if _, ok := w.created[ct.Name]; ok {
						continue
					}
					if out, err := dockerOut("inspect", "-f", "{{.Created}}", ct.ID); err == nil {
						if at, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(out)); err == nil {
							w.created[ct.Name] = at
						}
					}
				}
			}
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

// finish stops the watcher and returns what it saw.
func (w *createdWatcher) finish() map[string]time.Time {
	close(w.stop)
	<-w.done
	return w.created
}
