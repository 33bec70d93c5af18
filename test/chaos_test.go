package test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/test/chaos"
)

// TestChaosInProcess runs the chaos harness (test/chaos: a workload of
// concurrent clients, a seeded schedule of faults, the checker of the
// correctness contract) against a 3-master, 2-worker in-process cluster
// whose network is a Fabric. The faults are network partitions (the leader
// from the other masters, both ways and one way; a worker from the
// masters), a slow and lossy network, and a leader crash with its restart.
//
// GANTRY_CHAOS_SEED (default 1) and GANTRY_CHAOS_DURATION (default 30s, the
// time faults are injected) override the run; GANTRY_CHAOS_OUT names a
// directory for the report and the history (on failure they are written to
// a temporary directory anyway, to replay the check).
func TestChaosInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos run: skipped in -short mode")
	}
	seed := uint64(1)
	if s := os.Getenv("GANTRY_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("GANTRY_CHAOS_SEED=%q: %v", s, err)
		}
		seed = v
	}
	duration := 30 * time.Second
	if s := os.Getenv("GANTRY_CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("GANTRY_CHAOS_DURATION=%q: %v", s, err)
		}
		duration = d
	}

	f := NewFabric()
	c := NewCluster(t, Options{Masters: 3, Workers: 2, Fabric: f})
	target := newChaosTarget(c, filepath.Join(t.TempDir(), "ledger"))
	out := &chaosLog{t: t}
	start := time.Now()
	rep, hist := chaos.Run(context.Background(), chaos.Config{
		Target:   target,
		Nemeses:  chaosNemeses(c, f),
		Duration: duration,
		Seed:     seed,
		Clients:  4,
		Quiet:    [2]time.Duration{time.Second, 2 * time.Second},
		Hold:     [2]time.Duration{2 * time.Second, 4 * time.Second},
		Settle:   60 * time.Second,
		Out:      out,
	})
	var buf bytes.Buffer
	rep.WriteText(&buf)
	t.Log(buf.String())
	t.Logf("chaos run took %s", time.Since(start).Round(100*time.Millisecond))

	dir := os.Getenv("GANTRY_CHAOS_OUT")
	if dir == "" && !rep.OK {
		dir = filepath.Join(os.TempDir(), "gantry-"+rep.RunID)
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Errorf("report directory: %v", err)
		} else {
			if err := rep.WriteJSON(filepath.Join(dir, "report.json")); err != nil {
				t.Errorf("write report: %v", err)
			}
			if err := hist.WriteFile(filepath.Join(dir, "history.jsonl")); err != nil {
				t.Errorf("write history: %v", err)
			}
			t.Logf("report and history written to %s", dir)
		}
	}
	if !rep.OK {
		t.Fatalf("chaos run (seed %d) violated an invariant; the report is above", seed)
	}
}

// chaosLog writes the harness's output lines to t.Log.
type chaosLog struct {
	mu sync.Mutex
	t  *testing.T
}

func (w *chaosLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(line)
	}
	return len(p), nil
}

// chaosTarget adapts an in-process cluster to the chaos harness. Its tasks
// append "<task id> <attempt> <worker>" to a ledger file as their first act.
type chaosTarget struct {
	masters map[string]string
	ledger  string
}

func newChaosTarget(c *Cluster, ledger string) *chaosTarget {
	x := &chaosTarget{masters: map[string]string{}, ledger: ledger}
	for _, n := range c.Masters {
		x.masters[n.ID] = n.URL()
	}
	return x
}

// Masters implements chaos.Target.
func (x *chaosTarget) Masters() map[string]string {
	out := make(map[string]string, len(x.masters))
	for id, u := range x.masters {
		out[id] = u
	}
	return out
}

// TaskSpec implements chaos.Target.
func (x *chaosTarget) TaskSpec(key string) api.TaskSpec {
	return api.TaskSpec{
		Args: []string{"sh", "-c", `echo "$GANTRY_TASK_ID $GANTRY_ATTEMPT $GANTRY_WORKER" >> "$LEDGER"`},
		Env:  map[string]string{"LEDGER": x.ledger},
	}
}

// Ledger implements chaos.Target.
func (x *chaosTarget) Ledger(ctx context.Context) ([]chaos.Execution, error) {
	f, err := os.Open(x.ledger)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []chaos.Execution
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			return nil, fmt.Errorf("ledger line %q: want <task> <attempt> <worker>", sc.Text())
		}
		a, err := strconv.Atoi(fields[1])
		if err != nil {
			return nil, fmt.Errorf("ledger line %q: %v", sc.Text(), err)
		}
		out = append(out, chaos.Execution{TaskID: fields[0], Attempt: a, Worker: fields[2]})
	}
	return out, sc.Err()
}

// chaosNemesis is a fault made of two functions.
type chaosNemesis struct {
	name   string
	inject func(ctx context.Context, rng *rand.Rand) (string, error)
	heal   func(ctx context.Context) error
}

func (n *chaosNemesis) Name() string { return n.name }
func (n *chaosNemesis) Inject(ctx context.Context, rng *rand.Rand) (string, error) {
	return n.inject(ctx, rng)
}
func (n *chaosNemesis) Heal(ctx context.Context) error { return n.heal(ctx) }

// chaosNemeses returns the faults of the in-process run. The schedule calls
// Inject and Heal from the test's goroutine, one fault at a time, so they
// may use the cluster's methods; every heal removes every fabric rule and
// restarts every stopped master, which also makes it safe after a failed
// inject.
func chaosNemeses(c *Cluster, f *Fabric) []chaos.Nemesis {
	heal := func(ctx context.Context) error {
		f.HealAll()
		for _, n := range c.Masters {
			if !n.Up() {
				c.StartMaster(n)
			}
		}
		return nil
	}
	others := func(l *MasterNode) []string {
		var out []string
		for _, n := range c.Masters {
			if n != l {
				out = append(out, n.ID)
			}
		}
		return out
	}
	return []chaos.Nemesis{
		&chaosNemesis{name: "partition-leader", heal: heal, inject: func(ctx context.Context, rng *rand.Rand) (string, error) {
			l, err := chaosLeader(ctx, c)
			if err != nil {
				return "", err
			}
			for _, o := range others(l) {
				f.Cut(l.ID, o)
			}
			return fmt.Sprintf("leader %s cut from masters %v both ways", l.ID, others(l)), nil
		}},
		&chaosNemesis{name: "oneway-leader", heal: heal, inject: func(ctx context.Context, rng *rand.Rand) (string, error) {
			l, err := chaosLeader(ctx, c)
			if err != nil {
				return "", err
			}
			for _, o := range others(l) {
				f.CutOneWay(l.ID, o)
			}
			return fmt.Sprintf("leader %s cannot send to masters %v (it still hears them)", l.ID, others(l)), nil
		}},
		&chaosNemesis{name: "partition-worker", heal: heal, inject: func(ctx context.Context, rng *rand.Rand) (string, error) {
			w := c.Workers[rng.IntN(len(c.Workers))]
			var ms []string
			for _, n := range c.Masters {
				f.Cut(w.ID, n.ID)
				ms = append(ms, n.ID)
			}
			return fmt.Sprintf("worker %s cut from masters %v both ways", w.ID, ms), nil
		}},
		&chaosNemesis{name: "slow-network", heal: heal, inject: func(ctx context.Context, rng *rand.Rand) (string, error) {
			d := time.Duration(10+rng.IntN(40)) * time.Millisecond
			p := 0.02 + 0.08*rng.Float64()
			nodes := f.Nodes()
			for i, a := range nodes {
				for _, b := range nodes[i+1:] {
					f.Delay(a, b, d)
					f.Drop(a, b, p)
				}
			}
			return fmt.Sprintf("every link delayed %s, %.0f%% of packets and dials dropped", d, 100*p), nil
		}},
		&chaosNemesis{name: "kill-leader", heal: heal, inject: func(ctx context.Context, rng *rand.Rand) (string, error) {
			l, err := chaosLeader(ctx, c)
			if err != nil {
				return "", err
			}
			c.KillMaster(l)
			return fmt.Sprintf("leader %s killed (restarted at heal)", l.ID), nil
		}},
	}
}

// chaosLeader waits (up to 10s) for a running master that is the
// established leader.
func chaosLeader(ctx context.Context, c *Cluster) (*MasterNode, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, n := range c.Masters {
			if !n.Up() {
				continue
			}
			if li, ok := n.M.Leader(); ok && li.Self {
				return n, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errors.New("no established leader")
		}
		time.Sleep(50 * time.Millisecond) // a pause between polls
	}
}
