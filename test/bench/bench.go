package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/test/bench/statescale"
	"github.com/gantryhq/gantry/transport"
)

// Config is one benchmark run.
type Config struct {
	Gantry string // the gantry binary
	Etcd   string // the etcd binary ("" skips etcd)
	Dir    string // data and logs
	Timers Timers // gantry's raft timers (zero: the binary's defaults)
	// StateTasks is the pending backlog of the state-scale figures
	// (default 1,000,000).
	StateTasks int
	// Slots of each of the 3 workers of the task figures (default 32: no-op
	// tasks spend most of their slot time waiting for commits, so fewer
	// slots measure the pipeline's latency rather than its throughput).
	Slots int
	// LogLevel of the gantry processes (default warn).
	LogLevel string
	Repeats  int // runs per throughput figure (default 3)
	For      time.Duration
	Clients  []int // concurrencies (default 1, 16, 64, 256)
	Batch    int   // tasks per batch request (default 100)
	Rounds   int   // failover rounds per system (default 10)
	// WorkerLossRounds: SIGKILLs of a busy worker (default 5).
	WorkerLossRounds int
	// Phases to run (nil: all): submit, batch, failover, e2e, completion,
	// workerloss, statescale.
	Phases map[string]bool
	Out    io.Writer
}

func (c *Config) on(phase string) bool { return c.Phases == nil || c.Phases[phase] }

// Row is one concurrency of the submit benchmark.
type Row struct {
	Clients   int  `json:"clients"`
	Gantry    Figs `json:"gantry"`
	Etcd      Figs `json:"etcd"`
	Ratio     Stat `json:"ratio"` // gantry/etcd throughput, per run
	HaveRatio bool `json:"have_ratio"`
}

// Figs are the figures of one system at one concurrency.
type Figs struct {
	PerSec Stat `json:"per_sec"`
	P50ms  Stat `json:"p50_ms"`
	P99ms  Stat `json:"p99_ms"`
	Errors int  `json:"errors"`
}

// Report is everything a run measured.
type Report struct {
	Date     time.Time `json:"date"`
	Machine  string    `json:"machine"`
	Timers   string    `json:"gantry_raft_timers"`
	EtcdVer  string    `json:"etcd_version"`
	Submit   []Row     `json:"submit"`
	Batch    *BatchFig `json:"batch,omitempty"`
	Failover struct {
		Gantry Stat    `json:"gantry_gap_s"`
		Etcd   Stat    `json:"etcd_gap_s"`
		Chart  []Chart `json:"-"`
	} `json:"failover"`
	E2E struct {
		P50ms       Stat    `json:"p50_ms"`
		P99ms       Stat    `json:"p99_ms"`
		CommitP50ms Stat    `json:"commit_p50_ms"`
		Ratio       float64 `json:"p50_over_commit_p50"`
	} `json:"e2e"`
	Completion struct {
		PerSec     Stat    `json:"per_sec"`
		ForkExec   Stat    `json:"fork_exec_per_sec"`
		Ratio      float64 `json:"ratio"`
		Workers    int     `json:"workers"`
		Slots      int     `json:"slots_each"`
		Tasks      int     `json:"tasks"`
		Concurrent int     `json:"fork_exec_goroutines"`
	} `json:"completion"`
	WorkerLoss Stat               `json:"worker_loss_s"`
	StateScale *statescale.Result `json:"state_scale,omitempty"`
	Notes      []string           `json:"notes,omitempty"`
}

// BatchFig is the batch submit figure.
type BatchFig struct {
	Clients     int  `json:"clients"`
	Size        int  `json:"size"`
	TasksPerSec Stat `json:"tasks_per_sec"`
	// VsEtcd64 is tasks/s over etcd's single-put throughput at 64 clients
	// (or the highest concurrency measured), per run.
	VsEtcd Stat `json:"ratio_vs_etcd_put"`
}

// Chart is submissions per 100 ms through one leader kill.
type Chart struct {
	System  string
	Buckets []int
	KillAt  time.Duration
}

func (c *Config) defaults() {
	if c.Repeats < 1 {
		c.Repeats = 3
	}
	if c.For <= 0 {
		c.For = 5 * time.Second
	}
	if len(c.Clients) == 0 {
		c.Clients = []int{1, 16, 64, 256}
	}
	if c.Batch < 1 {
		c.Batch = 100
	}
	if c.Rounds < 1 {
		c.Rounds = 10
	}
	if c.WorkerLossRounds < 1 {
		c.WorkerLossRounds = 5
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.StateTasks < 1 {
		c.StateTasks = 1_000_000
	}
	if c.Slots < 1 {
		c.Slots = 32
	}
	if c.LogLevel == "" {
		c.LogLevel = "warn"
	}
}

func (c *Config) logf(format string, args ...any) {
	fmt.Fprintf(c.Out, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Run runs the whole benchmark.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	rep := &Report{Date: time.Now().UTC(), Machine: machine()}
	rep.Timers = "binary defaults"
	if cfg.Timers.Heartbeat > 0 {
		rep.Timers = fmt.Sprintf("heartbeat %s, election %s, lease %s", cfg.Timers.Heartbeat, cfg.Timers.Election, cfg.Timers.Lease)
	}
	g, err := StartGantry(cfg.Gantry, filepath.Join(cfg.Dir, "gantry"), 3, cfg.Timers, cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	defer g.Stop()
	gs := NewGantrySys(g)
	if err := gs.Ready(ctx); err != nil {
		return nil, err
	}
	var es *EtcdSys
	if cfg.Etcd != "" {
		out, _ := exec.Command(cfg.Etcd, "--version").CombinedOutput()
		rep.EtcdVer = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
		e, err := StartEtcd(cfg.Etcd, filepath.Join(cfg.Dir, "etcd"), 3)
		if err != nil {
			return nil, err
		}
		defer e.Stop()
		if es, err = NewEtcdSys(e, 4); err != nil {
			return nil, err
		}
		defer es.Close()
		if err := es.Ready(ctx); err != nil {
			return nil, err
		}
	}
	cfg.logf("gantry (%s) and %s up; %d runs of %s per figure", rep.Timers, orNone(rep.EtcdVer), cfg.Repeats, cfg.For)

	if cfg.on("submit") {
		// Submit throughput and latency, gantry and etcd interleaved so each
		// ratio comes from one run.
		rows := make([]Row, len(cfg.Clients))
		type acc struct{ per, p50, p99 []float64 }
		gacc := make([]acc, len(cfg.Clients))
		eacc := make([]acc, len(cfg.Clients))
		var ratios [][]float64 = make([][]float64, len(cfg.Clients))
		for r := 0; r < cfg.Repeats; r++ {
			for i, cl := range cfg.Clients {
				load := Load{Clients: cl, For: cfg.For, Timeout: 5 * time.Second}
				gr := load.Run(ctx, gs)
				gacc[i].per = append(gacc[i].per, gr.PerSec)
				gacc[i].p50 = append(gacc[i].p50, ms(gr.P50))
				gacc[i].p99 = append(gacc[i].p99, ms(gr.P99))
				rows[i].Gantry.Errors += gr.Errors
				line := fmt.Sprintf("run %d, %3d clients: gantry %7.0f/s p50 %6.1fms p99 %6.1fms", r+1, cl, gr.PerSec, ms(gr.P50), ms(gr.P99))
				if es != nil {
					er := load.Run(ctx, es)
					eacc[i].per = append(eacc[i].per, er.PerSec)
					eacc[i].p50 = append(eacc[i].p50, ms(er.P50))
					eacc[i].p99 = append(eacc[i].p99, ms(er.P99))
					rows[i].Etcd.Errors += er.Errors
					if er.PerSec > 0 {
						ratios[i] = append(ratios[i], gr.PerSec/er.PerSec)
					}
					line += fmt.Sprintf(" | etcd %7.0f/s p50 %6.1fms p99 %6.1fms", er.PerSec, ms(er.P50), ms(er.P99))
				}
				cfg.logf("%s", line)
			}
		}
		for i, cl := range cfg.Clients {
			rows[i].Clients = cl
			rows[i].Gantry.PerSec, rows[i].Gantry.P50ms, rows[i].Gantry.P99ms = stat(gacc[i].per), stat(gacc[i].p50), stat(gacc[i].p99)
			if es != nil {
				rows[i].Etcd.PerSec, rows[i].Etcd.P50ms, rows[i].Etcd.P99ms = stat(eacc[i].per), stat(eacc[i].p50), stat(eacc[i].p99)
				rows[i].Ratio, rows[i].HaveRatio = stat(ratios[i]), len(ratios[i]) > 0
			}
		}
		rep.Submit = rows
	}

	// Batch submit: 16 clients, Batch tasks a request, beside etcd's
	// single puts at 64 clients (or the highest concurrency measured).
	if cfg.on("batch") {
		ref := len(cfg.Clients) - 1
		for i, cl := range cfg.Clients {
			if cl == 64 {
				ref = i
			}
		}
		bs := NewGantrySys(g)
		bs.Batch = cfg.Batch
		var per, vs []float64
		for r := 0; r < cfg.Repeats; r++ {
			br := Load{Clients: 16, For: cfg.For, Timeout: 10 * time.Second}.Run(ctx, bs)
			per = append(per, br.PerSec)
			line := fmt.Sprintf("run %d, batch of %d, 16 clients: gantry %7.0f tasks/s", r+1, cfg.Batch, br.PerSec)
			if es != nil {
				er := Load{Clients: cfg.Clients[ref], For: cfg.For, Timeout: 5 * time.Second}.Run(ctx, es)
				if er.PerSec > 0 {
					vs = append(vs, br.PerSec/er.PerSec)
				}
				line += fmt.Sprintf(" | etcd put at %d clients %7.0f/s", cfg.Clients[ref], er.PerSec)
			}
			cfg.logf("%s", line)
		}
		rep.Batch = &BatchFig{Clients: 16, Size: cfg.Batch, TasksPerSec: stat(per), VsEtcd: stat(vs)}
	}

	if cfg.on("failover") {
		// Failover: SIGKILL the leader under 8 clients with 500 ms requests.
		gaps := func(sys System) (Stat, Chart, error) {
			var v []float64
			var chart Chart
			for r := 0; r < cfg.Rounds; r++ {
				leader, err := sys.Leader(ctx)
				if err != nil {
					return Stat{}, chart, err
				}
				killAt := 1500 * time.Millisecond
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(killAt)
					sys.Kill(leader)
				}()
				res := Load{Clients: 8, For: killAt + 6*time.Second, Timeout: 500 * time.Millisecond}.Run(ctx, sys)
				wg.Wait()
				v = append(v, res.MaxGap.Seconds())
				if r == 0 {
					chart = Chart{System: sys.Name(), Buckets: res.Buckets, KillAt: killAt}
				}
				cfg.logf("failover round %d, %s: killed member %d, longest gap %.3fs (%d errors)", r+1, sys.Name(), leader+1, res.MaxGap.Seconds(), res.Errors)
				if err := sys.Restart(ctx, leader); err != nil {
					return Stat{}, chart, err
				}
			}
			return stat(v), chart, nil
		}
		st, ch, err := gaps(gs)
		if err != nil {
			return rep, err
		}
		rep.Failover.Gantry = st
		rep.Failover.Chart = append(rep.Failover.Chart, ch)
		if es != nil {
			st, ch, err := gaps(es)
			if err != nil {
				return rep, err
			}
			rep.Failover.Etcd = st
			rep.Failover.Chart = append(rep.Failover.Chart, ch)
		}
	}

	// The task figures run on a fresh cluster with workers: the one above
	// holds every task the write figures submitted.
	g.Stop()
	if es != nil {
		es.E.Stop()
	}
	g, err = StartGantry(cfg.Gantry, filepath.Join(cfg.Dir, "gantry-tasks"), 3, cfg.Timers, cfg.LogLevel)
	if err != nil {
		return rep, err
	}
	defer g.Stop()
	gs = NewGantrySys(g)
	if err := gs.Ready(ctx); err != nil {
		return rep, err
	}
	workers, slots := 3, cfg.Slots
	for i := 0; i < workers; i++ {
		if _, err := g.AddWorker(slots); err != nil {
			return rep, err
		}
	}
	cl := gs.Client()
	if err := waitWorkers(ctx, cl, workers); err != nil {
		return rep, err
	}
	// The tasks submitted so far (thousands of no-ops) run first: the task
	// figures are taken on an idle cluster.
	t0 := time.Now()
	if err := poll(ctx, 10*time.Minute, "the backlog to drain", func() error {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := cl.Cluster(rctx, transport.ReadOptions{})
		if err != nil {
			return err
		}
		if n := st.Tasks.Pending + st.Tasks.Running; n > 0 {
			return fmt.Errorf("%d tasks pending or running", n)
		}
		return nil
	}); err != nil {
		return rep, err
	}
	cfg.logf("the workers ran the submitted backlog in %s", time.Since(t0).Round(100*time.Millisecond))

	// End-to-end latency at light load beside the single-commit latency.
	if cfg.on("e2e") {
		var p50, p99, commit []float64
		for r := 0; r < cfg.Repeats; r++ {
			var lats, commits []time.Duration
			for i := 0; i < 100; i++ {
				t0 := time.Now()
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				t, _, err := cl.Submit(rctx, api.TaskSpec{Args: []string{"true"}, IdempotencyKey: fmt.Sprintf("e2e-%d-%d-%d", time.Now().UnixNano(), r, i)})
				if err != nil {
					cancel()
					return rep, err
				}
				commits = append(commits, time.Since(t0))
				for !t.State.Terminal() && err == nil {
					var cur api.Task
					if cur, err = cl.Task(rctx, t.ID, transport.ReadOptions{Wait: 10 * time.Second}); err == nil {
						t = cur
					}
				}
				cancel()
				if err != nil {
					return rep, fmt.Errorf("e2e: task %s not ended within 30s (state %s): %w", t.ID, t.State, err)
				}
				lats = append(lats, time.Since(t0))
				if d := time.Since(t0); d > 2*time.Second {
					note := fmt.Sprintf("e2e: task %s took %s (state %s, attempts %+v)", t.ID, d.Round(time.Millisecond), t.State, t.Attempts)
					rep.Notes = append(rep.Notes, note)
					cfg.logf("%s", note)
				}
				time.Sleep(10 * time.Millisecond)
			}
			a, b := pct(lats)
			c, _ := pct(commits)
			p50, p99, commit = append(p50, ms(a)), append(p99, ms(b)), append(commit, ms(c))
			cfg.logf("e2e run %d: no-op task p50 %.1fms p99 %.1fms; submit commit p50 %.1fms", r+1, ms(a), ms(b), ms(c))
		}
		rep.E2E.P50ms, rep.E2E.P99ms, rep.E2E.CommitP50ms = stat(p50), stat(p99), stat(commit)
		if rep.E2E.CommitP50ms.Median > 0 {
			rep.E2E.Ratio = rep.E2E.P50ms.Median / rep.E2E.CommitP50ms.Median
		}
	}

	// Completion throughput beside the machine's fork/exec rate.
	if cfg.on("completion") {
		const n = 3000
		var per, fe []float64
		conc := 2 * runtime.NumCPU()
		for r := 0; r < cfg.Repeats; r++ {
			rate, err := completion(ctx, cl, n, cfg.Batch, fmt.Sprintf("done-%d-%d", time.Now().UnixNano(), r))
			if err != nil {
				return rep, err
			}
			fork := forkExecRate(3*time.Second, conc)
			per, fe = append(per, rate), append(fe, fork)
			cfg.logf("completion run %d: %d no-op tasks at %.0f/s; fork/exec of true %.0f/s (%d goroutines)", r+1, n, rate, fork, conc)
		}
		rep.Completion.PerSec, rep.Completion.ForkExec = stat(per), stat(fe)
		rep.Completion.Ratio = rep.Completion.PerSec.Median / rep.Completion.ForkExec.Median
		rep.Completion.Workers, rep.Completion.Slots, rep.Completion.Tasks, rep.Completion.Concurrent = workers, slots, n, conc
	}

	// Worker loss: SIGKILL a busy worker; time until its attempts run
	// elsewhere.
	if cfg.on("workerloss") {
		var v []float64
		for r := 0; r < cfg.WorkerLossRounds; r++ {
			d, err := workerLoss(ctx, g, cl, fmt.Sprintf("loss-%d-%d", time.Now().UnixNano(), r))
			if err != nil {
				return rep, err
			}
			v = append(v, d.Seconds())
			cfg.logf("worker loss round %d: attempts running elsewhere %.3fs after the SIGKILL", r+1, d.Seconds())
		}
		rep.WorkerLoss = stat(v)
	}
	g.Stop()

	// State scale: a backlog of StateTasks pending tasks in one state
	// machine, in this process, with the clusters stopped.
	if cfg.on("statescale") {
		cfg.logf("state scale: %d pending tasks in one state machine", cfg.StateTasks)
		res, err := statescale.Run(cfg.StateTasks, cfg.Out)
		if err != nil {
			return rep, err
		}
		rep.StateScale = &res
	}
	return rep, nil
}

func orNone(s string) string {
	if s == "" {
		return "no etcd"
	}
	return s
}

func pct(v []time.Duration) (p50, p99 time.Duration) {
	if len(v) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[(len(s)*99+99)/100-1]
}

func waitWorkers(ctx context.Context, cl *transport.Client, n int) error {
	return poll(ctx, 60*time.Second, fmt.Sprintf("%d workers alive", n), func() error {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := cl.Cluster(rctx, transport.ReadOptions{})
		if err != nil {
			return err
		}
		alive := 0
		for _, w := range st.Workers {
			if w.State == "alive" {
				alive++
			}
		}
		if alive < n {
			return fmt.Errorf("%d alive", alive)
		}
		return nil
	})
}

// completion submits n no-op tasks in batches and returns the tasks
// completed per second, from the first submission to the last result.
func completion(ctx context.Context, cl *transport.Client, n, batch int, prefix string) (float64, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	st0, err := cl.Cluster(rctx, transport.ReadOptions{})
	if err != nil {
		return 0, err
	}
	done0 := st0.Tasks.Succeeded + st0.Tasks.Failed
	start := time.Now()
	for i := 0; i < n; i += batch {
		specs := make([]api.TaskSpec, 0, batch)
		for j := i; j < min(n, i+batch); j++ {
			specs = append(specs, api.TaskSpec{Args: []string{"true"}, IdempotencyKey: fmt.Sprintf("%s-%d", prefix, j)})
		}
		if _, err := cl.SubmitBatch(rctx, specs); err != nil {
			return 0, err
		}
	}
	for {
		st, err := cl.Cluster(rctx, transport.ReadOptions{})
		if err != nil {
			return 0, err
		}
		if st.Tasks.Succeeded+st.Tasks.Failed-done0 >= n {
			return float64(n) / time.Since(start).Seconds(), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// forkExecRate is how many times per second conc goroutines can fork and
// exec `true` on this machine: the ceiling of any worker running no-op
// tasks.
func forkExecRate(d time.Duration, conc int) float64 {
	bin, err := exec.LookPath("true")
	if err != nil {
		return 0
	}
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if exec.Command(bin).Run() == nil {
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// workerLoss fills every slot with long tasks, adds an idle worker, kills
// the worker running the first task and returns how long until every
// attempt it ran is running again on another worker. The tasks are
// canceled afterwards.
func workerLoss(ctx context.Context, g *Gantry, cl *transport.Client, prefix string) (time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	st, err := cl.Cluster(rctx, transport.ReadOptions{})
	if err != nil {
		return 0, err
	}
	slots := 0
	for _, w := range st.Workers {
		if w.State == "alive" {
			slots += w.Slots
		}
	}
	var specs []api.TaskSpec
	for i := 0; i < slots; i++ {
		specs = append(specs, api.TaskSpec{Args: []string{"sleep", "300"}, IdempotencyKey: fmt.Sprintf("%s-%d", prefix, i)})
	}
	ts, err := cl.SubmitBatch(rctx, specs)
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, t := range ts {
			cctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			_, _ = cl.Cancel(cctx, t.ID)
			c()
		}
	}()
	var running []api.Task
	if err := poll(rctx, time.Minute, "every slot busy", func() error {
		running = running[:0]
		for _, t := range ts {
			cur, err := cl.Task(rctx, t.ID, transport.ReadOptions{Stale: true})
			if err != nil {
				return err
			}
			if cur.State != api.StateRunning {
				return fmt.Errorf("%s is %s", t.ID, cur.State)
			}
			running = append(running, cur)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	if _, err := g.AddWorker(slots); err != nil {
		return 0, err
	}
	alive := 0
	for _, w := range st.Workers {
		if w.State == "alive" {
			alive++
		}
	}
	if err := waitWorkers(rctx, cl, alive+1); err != nil {
		return 0, err
	}
	victim := running[0].Attempts[len(running[0].Attempts)-1].Worker
	var mine []api.Task
	for _, t := range running {
		if t.Attempts[len(t.Attempts)-1].Worker == victim {
			mine = append(mine, t)
		}
	}
	var vp *proc
	for _, p := range g.Workers {
		if strings.Contains(strings.Join(p.args, " "), "--id "+victim+" ") {
			vp = p
		}
	}
	if vp == nil {
		return 0, fmt.Errorf("no process for worker %s", victim)
	}
	killed := time.Now()
	vp.kill(syscall.SIGKILL)
	err = poll(rctx, 2*time.Minute, "the lost attempts running elsewhere", func() error {
		for _, t := range mine {
			cur, err := cl.Task(rctx, t.ID, transport.ReadOptions{Stale: true})
			if err != nil {
				return err
			}
			last := cur.Attempts[len(cur.Attempts)-1]
			if cur.State != api.StateRunning || last.Worker == victim {
				return fmt.Errorf("%s %s on %s", t.ID, cur.State, last.Worker)
			}
		}
		return nil
	})
	return time.Since(killed), err
}

func machine() string {
	var u syscall.Utsname
	_ = syscall.Uname(&u)
	str := func(a [65]int8) string {
		b := make([]byte, 0, 65)
		for _, c := range a {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		return string(b)
	}
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s), %s %s, %s", runtime.NumCPU(), model, str(u.Sysname), str(u.Release), runtime.Version())
}
