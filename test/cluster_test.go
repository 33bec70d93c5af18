package test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
)

// checkExactlyOnce asserts the invariants every completed task must hold:
// terminal, succeeded with the expected output, and exactly one attempt in
// its history that succeeded (the current one).
func checkSucceededOnce(t *testing.T, task api.Task, wantOutput string) {
	t.Helper()
	if task.State != api.StateSucceeded {
		t.Errorf("task %s: state %s, want succeeded (result %+v)", task.ID, task.State, task.Result)
		return
	}
	if task.Result == nil || task.Result.Output != wantOutput {
		t.Errorf("task %s: output %q, want %q", task.ID, resultOutput(task), wantOutput)
	}
	n := 0
	for _, a := range task.Attempts {
		if a.Outcome == api.OutcomeSucceeded {
			n++
			if a.Attempt != task.Attempt {
				t.Errorf("task %s: succeeded attempt %d is not the current attempt %d", task.ID, a.Attempt, task.Attempt)
			}
		}
		if a.Outcome == api.OutcomeRunning {
			t.Errorf("task %s: attempt %d still running in a terminal task", task.ID, a.Attempt)
		}
	}
	if n != 1 {
		t.Errorf("task %s: %d succeeded attempts in its history, want exactly 1: %+v", task.ID, n, task.Attempts)
	}
}

func resultOutput(t api.Task) string {
	if t.Result == nil {
		return "<no result>"
	}
	return t.Result.Output
}

func TestCluster_SubmitToEveryMaster(t *testing.T) {
	c := NewCluster(t, Options{Workers: 2})
	type sub struct {
		id   string
		want string
	}
	var subs []sub
	for _, n := range c.Masters {
		cl := c.Client(n) // this master only: followers must forward
		for i := 0; i < 5; i++ {
			want := fmt.Sprintf("from %s #%d\n", n.ID, i)
			task := c.Submit(cl, api.TaskSpec{Args: []string{"sh", "-c", "printf '%s' \"$MSG\""}, Env: map[string]string{"MSG": want}})
			if task.State != api.StatePending && task.State != api.StateRunning && !task.State.Terminal() {
				t.Fatalf("submitted task has state %q", task.State)
			}
			subs = append(subs, sub{task.ID, want})
		}
	}
	all := c.Client()
	for _, s := range subs {
		checkSucceededOnce(t, c.WaitTerminal(all, s.id, 60*time.Second), s.want)
	}
	// Every master answers reads, followers included (forwarded or stale).
	for _, n := range c.Masters {
		for _, stale := range []bool{false, true} {
			cl := c.Client(n)
			var task api.Task
			c.Eventually(10*time.Second, "a read from "+n.ID, func() bool {
				var err error
				task, err = cl.Task(context.Background(), subs[0].id, transport.ReadOptions{Stale: stale})
				return err == nil && task.State == api.StateSucceeded
			})
		}
	}
}

func TestCluster_LeaderKillLosesNothing(t *testing.T) {
	c := NewCluster(t, Options{Workers: 2, Slots: 2})
	leader := c.Leader()
	cl := c.Client()

	// A mix: some tasks finish quickly, some are still running at the kill,
	// most are still pending behind them.
	var ids []string
	for i := 0; i < 24; i++ {
		spec := Exec(fmt.Sprintf("sleep 0.%d; echo task-%d", i%4, i))
		spec.IdempotencyKey = fmt.Sprintf("leader-kill-%d", i)
		ids = append(ids, c.Submit(cl, spec).ID)
	}
	c.Eventually(20*time.Second, "some tasks running", func() bool {
		return leader.M.FSM().Counts().Running > 0
	})
	c.KillMaster(leader)

	newLeader := c.Leader()
	if newLeader == leader {
		t.Fatal("the killed master still leads")
	}
	// New submissions succeed through every surviving master.
	for _, n := range c.Masters {
		if !n.Up() {
			continue
		}
		spec := Exec("echo after-kill")
		spec.IdempotencyKey = "after-kill-" + n.ID
		ids = append(ids, c.Submit(c.Client(n), spec).ID)
	}
	for i, id := range ids {
		task := c.WaitTerminal(cl, id, 90*time.Second)
		want := fmt.Sprintf("task-%d\n", i)
		if i >= 24 {
			want = "after-kill\n"
		}
		checkSucceededOnce(t, task, want)
	}
	// The old leader comes back from its data directory and catches up.
	c.StartMaster(leader)
	want := newLeader.M.FSM().Counts()
	c.Eventually(30*time.Second, "the restarted master to catch up", func() bool {
		return leader.M.FSM().Counts() == want
	})
	c.WaitConverged()
}

func TestCluster_ConcurrentSubmitsAcrossLeaderKill(t *testing.T) {
	c := NewCluster(t, Options{Workers: 2, Slots: 4})
	leader := c.Leader()

	// Clients keep submitting, with idempotency keys, while the leader dies.
	var (
		mu    sync.Mutex
		acked = map[string]string{} // key -> id
	)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cl := c.Client()
			for i := 0; i < 60 && ctx.Err() == nil; i++ {
				key := fmt.Sprintf("c%d-%d", w, i)
				spec := Exec("echo " + key)
				spec.IdempotencyKey = key
				deadline := time.Now().Add(30 * time.Second)
				for time.Now().Before(deadline) && ctx.Err() == nil {
					rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					task, _, err := cl.Submit(rctx, spec)
					cancel()
					if err == nil {
						mu.Lock()
						acked[key] = task.ID
						mu.Unlock()
						break
					}
					time.Sleep(50 * time.Millisecond) // back off before retrying the same key
				}
			}
		}(w)
	}
	c.Eventually(20*time.Second, "some acknowledged submissions", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 20
	})
	c.KillMaster(leader)
	wg.Wait()
	stop()

	cl := c.Client()
	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 40 {
		t.Fatalf("only %d submissions acknowledged", len(acked))
	}
	seen := map[string]string{}
	for key, id := range acked {
		if other, dup := seen[id]; dup {
			t.Errorf("keys %s and %s got the same task %s", key, other, id)
		}
		seen[id] = key
		task := c.WaitTerminal(cl, id, 90*time.Second)
		checkSucceededOnce(t, task, key+"\n")
		if task.IdempotencyKey != key {
			t.Errorf("task %s has key %q, want %q", id, task.IdempotencyKey, key)
		}
	}
	// Resubmitting every key yields the same task, not a new one.
	for key, id := range acked {
		spec := Exec("echo " + key)
		spec.IdempotencyKey = key
		task, created, err := cl.Submit(context.Background(), spec)
		if err != nil || created || task.ID != id {
			t.Errorf("resubmit %s: id %s created %v err %v, want id %s not created", key, task.ID, created, err, id)
		}
	}
	// No duplicate tasks at all: the number of tasks equals the number of keys.
	list, err := cl.List(context.Background(), api.ListFilter{Limit: api.MaxListLimit}, transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]int{}
	for _, task := range list.Tasks {
		if strings.HasPrefix(task.IdempotencyKey, "c") {
			keys[task.IdempotencyKey]++
		}
	}
	for k, n := range keys {
		if n != 1 {
			t.Errorf("key %s has %d tasks", k, n)
		}
	}
	c.WaitConverged()
}
