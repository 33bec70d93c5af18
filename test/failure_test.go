package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/membership"
	"github.com/gantryhq/gantry/transport"
	"github.com/gantryhq/gantry/worker"
	"github.com/hashicorp/raft"
)

// The failure tests kill, restart and stop masters and workers of an
// in-process cluster and check the correctness contract (DESIGN.md section 2)
// after each fault. Tasks leave a marker file per attempt
// ($MARK/<task>-<attempt>) as their first act, so a test knows an attempt's
// process really runs before it kills the worker holding it.

// failSpec returns a spec that touches its attempt's marker, sleeps for
// a long time on the attempts listed in slow, and otherwise prints
// "attempt=N".
func failSpec(markDir string, slow ...int) api.TaskSpec {
	cond := "false"
	for _, a := range slow {
		cond += fmt.Sprintf(` || [ "$GANTRY_ATTEMPT" = %d ]`, a)
	}
	script := `touch "$MARK/$GANTRY_TASK_ID-$GANTRY_ATTEMPT"; if ` + cond + `; then sleep 120; fi; echo "attempt=$GANTRY_ATTEMPT"`
	return api.TaskSpec{Args: []string{"sh", "-c", script}, Env: map[string]string{"MARK": markDir}}
}

// failMarked reports whether attempt of task id has started its process.
func failMarked(markDir, id string, attempt int) bool {
	_, err := os.Stat(filepath.Join(markDir, fmt.Sprintf("%s-%d", id, attempt)))
	return err == nil
}

// failReadTask reads a task (linearizably, through any master), retrying only
// on errors.
func failReadTask(c *Cluster, cl *transport.Client, id string) api.Task {
	c.t.Helper()
	return ReadEventually(c, "a read of task "+id, func(ctx context.Context) (api.Task, error) {
		return cl.Task(ctx, id, transport.ReadOptions{})
	})
}

// failReadCluster reads /v1/cluster (linearizably), retrying only on errors.
func failReadCluster(c *Cluster, cl *transport.Client) api.ClusterStatus {
	c.t.Helper()
	return ReadEventually(c, "a read of /v1/cluster", func(ctx context.Context) (api.ClusterStatus, error) {
		return cl.Cluster(ctx, transport.ReadOptions{})
	})
}

// failReadAll lists every task (linearizably), retrying only on errors.
func failReadAll(c *Cluster, cl *transport.Client) api.TaskList {
	c.t.Helper()
	list := ReadEventually(c, "a list of all tasks", func(ctx context.Context) (api.TaskList, error) {
		return cl.List(ctx, api.ListFilter{Limit: api.MaxListLimit}, transport.ReadOptions{})
	})
	if list.Next != "" {
		c.t.Fatalf("more than %d tasks: the test lists one page only", api.MaxListLimit)
	}
	return list
}

// failWaitAttempt waits until task id runs attempt (its process has
// started) and returns the task.
func failWaitAttempt(c *Cluster, cl *transport.Client, markDir, id string, attempt int) api.Task {
	c.t.Helper()
	var task api.Task
	c.Eventually(60*time.Second, fmt.Sprintf("task %s to run attempt %d", id, attempt), func() bool {
		if !failMarked(markDir, id, attempt) {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		task, err = cl.Task(ctx, id, transport.ReadOptions{})
		return err == nil && task.State == api.StateRunning && task.Attempt == attempt
	})
	return task
}

// failWorkerNode returns the running worker node with the given ID.
func failWorkerNode(c *Cluster, id string) *WorkerNode {
	c.t.Helper()
	for _, n := range c.Workers {
		if n.ID == id && n.Up() {
			return n
		}
	}
	c.t.Fatalf("no running worker %q", id)
	return nil
}

// failWorkerState returns the state /v1/cluster shows for a worker ("" when
// not listed).
func failWorkerState(st api.ClusterStatus, id string) string {
	for _, w := range st.Workers {
		if w.ID == id {
			return w.State
		}
	}
	return ""
}

// failThrottle makes a polled condition cheap: it is evaluated at most once per
// interval (reads of /v1/cluster walk the gossip pool of every master).
func failThrottle(interval time.Duration, cond func() bool) func() bool {
	var next time.Time
	return func() bool {
		if time.Now().Before(next) {
			return false
		}
		next = time.Now().Add(interval)
		return cond()
	}
}

// failWaitWorkerState waits until /v1/cluster shows the worker in one of states.
func failWaitWorkerState(c *Cluster, cl *transport.Client, id string, states ...string) {
	c.t.Helper()
	last, done := "<no answer>", false
	defer func() {
		if !done {
			c.t.Logf("worker %s was last seen %q, want one of %q", id, last, states)
		}
	}()
	c.Eventually(30*time.Second, fmt.Sprintf("worker %s to be %s", id, strings.Join(states, " or ")), failThrottle(200*time.Millisecond, func() bool {
		last = failWorkerState(failReadCluster(c, cl), id)
		for _, s := range states {
			if last == s {
				return true
			}
		}
		return false
	}))
	done = true
}

// failJSON is a stable rendering used to compare states between masters (the
// FSM's values come from JSON log entries or JSON snapshots, so JSON is the
// faithful comparison).
func failJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func failOutcomes(task api.Task) map[api.Outcome]int {
	out := map[api.Outcome]int{}
	for _, a := range task.Attempts {
		out[a.Outcome]++
	}
	return out
}

func TestFailure_WorkerKilledMidTask(t *testing.T) {
	c := NewCluster(t, Options{Workers: 2})
	cl := c.Client()
	mark := t.TempDir()

	spec := failSpec(mark, 1)
	spec.IdempotencyKey = "killed-mid-task"
	id := c.Submit(cl, spec).ID
	running := failWaitAttempt(c, cl, mark, id, 1)
	victim := failWorkerNode(c, running.Worker)
	c.KillWorker(victim)

	task := c.WaitTerminal(cl, id, 60*time.Second)
	checkSucceededOnce(t, task, "attempt=2\n")
	if task.Attempt != 2 {
		t.Errorf("task ended at attempt %d, want 2: %+v", task.Attempt, task.Attempts)
	}
	if task.Worker == victim.ID {
		t.Errorf("attempt %d ran on the killed worker %s", task.Attempt, victim.ID)
	}
	if task.Lost != 1 || task.Failures != 0 {
		t.Errorf("lost=%d failures=%d, want lost=1 failures=0", task.Lost, task.Failures)
	}
	if len(task.Attempts) != 2 {
		t.Fatalf("attempt history has %d records, want 2: %+v", len(task.Attempts), task.Attempts)
	}
	if a := task.Attempts[0]; a.Attempt != 1 || a.Worker != victim.ID || a.Outcome != api.OutcomeLost {
		t.Errorf("attempt 1 record is %+v, want attempt 1 on %s with outcome lost", a, victim.ID)
	}

	// The dead worker's late result for attempt 1 is fenced off and counted.
	before := failReadCluster(c, cl).StaleResults
	late := api.AttemptResult{
		TaskID: id, Attempt: 1, Worker: victim.ID, Outcome: api.OutcomeSucceeded,
		Output: "late result from the dead worker\n", StartedAt: task.Attempts[0].StartedAt, FinishedAt: time.Now().UTC(),
	}
	var codes []string
	c.Eventually(30*time.Second, "the late result to be answered", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		codes, err = cl.ReportResults(ctx, []api.AttemptResult{late})
		if err != nil && !api.Retryable(err) && !isNetErr(err) {
			t.Fatalf("report late result: %v", err)
		}
		return err == nil
	})
	if len(codes) != 1 || codes[0] != api.CodeStaleAttempt {
		t.Errorf("late result answered %q, want [%q]", codes, api.CodeStaleAttempt)
	}
	after := failReadTask(c, cl, id)
	if !bytes.Equal(failJSON(t, after), failJSON(t, task)) {
		t.Errorf("a stale result changed the task:\nbefore %+v\nafter  %+v", task, after)
	}
	if got := failReadCluster(c, cl).StaleResults; got != before+1 {
		t.Errorf("stale_results is %d after one stale report, want %d", got, before+1)
	}
}

func TestFailure_WorkerRestartedSameID(t *testing.T) {
	// One worker: the attempt can only come back to the new process of the
	// same logical worker.
	c := NewCluster(t, Options{Workers: 1})
	cl := c.Client()
	mark := t.TempDir()

	spec := failSpec(mark, 1)
	spec.IdempotencyKey = "restarted-worker"
	id := c.Submit(cl, spec).ID
	running := failWaitAttempt(c, cl, mark, id, 1)
	n := failWorkerNode(c, running.Worker)
	oldName := n.W.Gossip().Name()
	c.KillWorker(n)
	c.StartWorker(n)
	if newName := n.W.Gossip().Name(); newName == oldName {
		t.Fatalf("the restarted worker reuses the gossip node name %q", oldName)
	}

	task := c.WaitTerminal(cl, id, 60*time.Second)
	checkSucceededOnce(t, task, "attempt=2\n")
	if task.Attempt != 2 || task.Worker != n.ID {
		t.Errorf("task ended at attempt %d on %s, want attempt 2 on %s", task.Attempt, task.Worker, n.ID)
	}
	if task.Lost != 1 || task.Failures != 0 {
		t.Errorf("lost=%d failures=%d, want lost=1 failures=0", task.Lost, task.Failures)
	}
	if len(task.Attempts) != 2 || task.Attempts[0].Outcome != api.OutcomeLost || task.Attempts[0].Worker != n.ID {
		t.Errorf("attempt history %+v, want attempt 1 lost on %s then attempt 2 succeeded", task.Attempts, n.ID)
	}
	// The new process serves new work too.
	next := c.Submit(cl, Exec("echo again"))
	checkSucceededOnce(t, c.WaitTerminal(cl, next.ID, 60*time.Second), "again\n")
}

func TestFailure_PoisonAfterThreeLostWorkers(t *testing.T) {
	c := NewCluster(t, Options{Workers: 0})
	for i := 1; i <= api.MaxLostAttempts+1; i++ {
		c.AddWorker(fmt.Sprintf("p%d", i), 1)
	}
	c.WaitWorkers(api.MaxLostAttempts + 1)
	cl := c.Client()
	mark := t.TempDir()

	spec := failSpec(mark, 1, 2, 3, 4, 5)
	spec.IdempotencyKey = "poison"
	id := c.Submit(cl, spec).ID
	killed := map[string]bool{}
	for attempt := 1; attempt <= api.MaxLostAttempts; attempt++ {
		running := failWaitAttempt(c, cl, mark, id, attempt)
		if killed[running.Worker] {
			t.Fatalf("attempt %d was given to the killed worker %s", attempt, running.Worker)
		}
		killed[running.Worker] = true
		c.KillWorker(failWorkerNode(c, running.Worker))
	}

	task := c.WaitTerminal(cl, id, 60*time.Second)
	if task.State != api.StateFailed {
		t.Fatalf("task is %s after losing %d workers, want failed: %+v", task.State, api.MaxLostAttempts, task)
	}
	if task.Result == nil || !strings.Contains(task.Result.Error, "poison") {
		t.Errorf("result %+v, want a poison error", task.Result)
	}
	if task.Lost != api.MaxLostAttempts || task.Failures != 0 || task.Attempt != api.MaxLostAttempts {
		t.Errorf("lost=%d failures=%d attempt=%d, want lost=%d failures=0 attempt=%d",
			task.Lost, task.Failures, task.Attempt, api.MaxLostAttempts, api.MaxLostAttempts)
	}
	if got := failOutcomes(task); got[api.OutcomeLost] != api.MaxLostAttempts || len(task.Attempts) != api.MaxLostAttempts {
		t.Errorf("attempt history %+v, want %d lost attempts", task.Attempts, api.MaxLostAttempts)
	}
	if failMarked(mark, id, api.MaxLostAttempts+1) {
		t.Errorf("a poisoned task ran attempt %d", api.MaxLostAttempts+1)
	}
}

func TestFailure_GracefulWorkerShutdown(t *testing.T) {
	const quickDrain = "gs-quick" // the worker that drains for 300ms only
	c := NewCluster(t, Options{Workers: 0, Worker: func(cfg *worker.Config) {
		if cfg.ID == quickDrain {
			cfg.DrainTimeout = 300 * time.Millisecond
		}
	}})
	cl := c.Client()
	mark := t.TempDir()

	// A short task running at shutdown finishes and is delivered before the
	// worker goes (its drain timeout is the harness's 5s).
	patient := c.AddWorker("gs-patient", 1)
	c.WaitWorkers(1)
	short := api.TaskSpec{
		Args: []string{"sh", "-c", `touch "$MARK/$GANTRY_TASK_ID-$GANTRY_ATTEMPT"; sleep 1; echo short-done`},
		Env:  map[string]string{"MARK": mark},
	}
	id := c.Submit(cl, short).ID
	failWaitAttempt(c, cl, mark, id, 1)
	c.StopWorker(patient)
	// Shutdown returns once every result was accepted by a master: the task
	// is terminal now, not eventually.
	task := failReadTask(c, cl, id)
	checkSucceededOnce(t, task, "short-done\n")
	if task.Attempt != 1 || task.Worker != patient.ID || task.Lost != 0 || task.Failures != 0 || len(task.Attempts) != 1 {
		t.Errorf("task %+v, want one succeeded attempt on %s, nothing lost", task, patient.ID)
	}

	// A long task outlives the drain timeout: it is handed back (released)
	// and completes elsewhere without counting a failure or a loss.
	quick := c.AddWorker(quickDrain, 1)
	failWaitWorkerState(c, cl, quick.ID, api.WorkerAlive)
	failWaitWorkerState(c, cl, patient.ID, api.WorkerLeft, api.WorkerDead) // gone; left is checked at the end
	long := failSpec(mark, 1)
	id = c.Submit(cl, long).ID
	running := failWaitAttempt(c, cl, mark, id, 1)
	if running.Worker != quick.ID {
		t.Fatalf("the long task runs on %s, want %s", running.Worker, quick.ID)
	}
	other := c.AddWorker("gs-other", 1)
	failWaitWorkerState(c, cl, other.ID, api.WorkerAlive)
	c.StopWorker(quick)

	task = c.WaitTerminal(cl, id, 60*time.Second)
	checkSucceededOnce(t, task, fmt.Sprintf("attempt=%d\n", task.Attempt))
	if task.Worker != other.ID {
		t.Errorf("the released task finished on %s, want %s", task.Worker, other.ID)
	}
	if task.Lost != 0 || task.Failures != 0 {
		t.Errorf("lost=%d failures=%d after a graceful hand-back, want 0 and 0", task.Lost, task.Failures)
	}
	if len(task.Attempts) == 0 || task.Attempts[0].Outcome != api.OutcomeReleased || task.Attempts[0].Worker != quick.ID {
		t.Errorf("attempt history %+v, want attempt 1 released by %s", task.Attempts, quick.ID)
	}
	for _, a := range task.Attempts {
		if a.Outcome.CountsAsFailure() || a.Outcome == api.OutcomeLost {
			t.Errorf("attempt %d ended %s: a graceful shutdown must cost nothing", a.Attempt, a.Outcome)
		}
	}

	// Both stopped workers left the pool, as opposed to dying. Once gone a
	// worker's state is final, so wait for it to be gone, then look.
	failWaitWorkerState(c, cl, quick.ID, api.WorkerLeft, api.WorkerDead)
	st := failReadCluster(c, cl)
	for _, n := range []*WorkerNode{patient, quick} {
		if got := failWorkerState(st, n.ID); got != api.WorkerLeft {
			t.Errorf("/v1/cluster shows the gracefully stopped worker %s as %q, want %q", n.ID, got, api.WorkerLeft)
		}
	}
	if got := failWorkerState(st, other.ID); got != api.WorkerAlive {
		t.Errorf("/v1/cluster shows the running worker %s as %q, want %q", other.ID, got, api.WorkerAlive)
	}
}

func TestFailure_MasterRestartFromDisk(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1})
	cl := c.Client()

	// Every terminal state.
	var ids []string
	for i := 0; i < 6; i++ {
		spec := Exec(fmt.Sprintf("echo restart-%d", i))
		spec.IdempotencyKey = fmt.Sprintf("restart-ok-%d", i)
		ids = append(ids, c.Submit(cl, spec).ID)
	}
	failing := Exec("echo failing; exit 3")
	failing.MaxAttempts = 1
	failing.IdempotencyKey = "restart-fail"
	ids = append(ids, c.Submit(cl, failing).ID)
	for _, id := range ids {
		c.WaitTerminal(cl, id, 60*time.Second)
	}
	canceled := Exec("sleep 120")
	canceled.IdempotencyKey = "restart-cancel"
	cid := c.Submit(cl, canceled).ID
	c.Eventually(30*time.Second, "a cancel to be acknowledged", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cl.Cancel(ctx, cid)
		return err == nil
	})

	// Pending tasks too: with no live worker nothing moves them.
	c.KillWorker(c.Workers[0])
	failWaitWorkerState(c, cl, c.Workers[0].ID, api.WorkerDead)
	var pending []string
	for i := 0; i < 3; i++ {
		spec := Exec(fmt.Sprintf("echo pending-%d", i))
		spec.IdempotencyKey = fmt.Sprintf("restart-pending-%d", i)
		pending = append(pending, c.Submit(cl, spec).ID)
	}

	before := failReadAll(c, cl)
	counts := c.Leader().M.FSM().Counts()
	if counts.Succeeded != 6 || counts.Failed != 1 || counts.Canceled != 1 || counts.Pending != 3 || counts.Running != 0 {
		t.Fatalf("before the restart: counts %+v, want 6 succeeded, 1 failed, 1 canceled, 3 pending", counts)
	}
	for _, n := range c.Masters {
		c.KillMaster(n)
	}
	for _, n := range c.Masters {
		c.StartMaster(n)
	}
	leader := c.Leader()
	afterList := failReadAll(c, cl)
	if !bytes.Equal(failJSON(t, afterList), failJSON(t, before)) {
		t.Errorf("the task list changed across a full restart:\nbefore %s\nafter  %s", failJSON(t, before), failJSON(t, afterList))
	}
	for _, n := range c.Masters {
		c.Eventually(30*time.Second, "master "+n.ID+" to replay its state", func() bool {
			return n.M.FSM().Counts() == counts
		})
	}
	if got := leader.M.FSM().Counts(); got != counts {
		t.Errorf("after the restart: counts %+v, want %+v", got, counts)
	}

	// New submissions work, and the pending tasks run once a worker comes.
	fresh := Exec("echo after-restart")
	fresh.IdempotencyKey = "restart-fresh"
	freshID := c.Submit(cl, fresh).ID
	c.AddWorker("w-new", 2)
	checkSucceededOnce(t, c.WaitTerminal(cl, freshID, 60*time.Second), "after-restart\n")
	for i, id := range pending {
		checkSucceededOnce(t, c.WaitTerminal(cl, id, 60*time.Second), fmt.Sprintf("pending-%d\n", i))
	}
}

func TestFailure_LaggingMasterInstallsSnapshot(t *testing.T) {
	const trailing = 8
	c := NewCluster(t, Options{Workers: 2, Slots: 4, Master: func(cfg *master.Config) {
		cfg.SnapshotThreshold = 16
		cfg.TrailingLogs = trailing
		cfg.SnapshotInterval = 200 * time.Millisecond
	}})
	cl := c.Client()
	lagger := c.Followers()[0]
	lagLast := lagger.M.Raft().LastIndex()
	c.KillMaster(lagger)

	const total = 120
	for b := 0; b < total/30; b++ {
		var specs []api.TaskSpec
		for i := b * 30; i < (b+1)*30; i++ {
			spec := Exec(fmt.Sprintf("echo snap-%d", i))
			spec.IdempotencyKey = fmt.Sprintf("snap-%d", i)
			specs = append(specs, spec)
		}
		c.Eventually(30*time.Second, "a batch submission", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := cl.SubmitBatch(ctx, specs)
			if err != nil && !api.Retryable(err) && !isNetErr(err) {
				t.Fatalf("submit batch: %v", err)
			}
			return err == nil
		})
	}
	leader := c.Leader()
	c.Eventually(90*time.Second, "every task to succeed", func() bool {
		return leader.M.FSM().Counts().Succeeded == total
	})
	// Snapshot now so the log the lagging master misses is surely compacted.
	if err := leader.M.Raft().Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		t.Fatalf("leader snapshot: %v", err)
	}
	stats := leader.M.Raft().Stats()
	snapIdx, _ := strconv.ParseUint(stats["last_snapshot_index"], 10, 64)
	lastIdx, _ := strconv.ParseUint(stats["last_log_index"], 10, 64)
	if snapIdx <= lagLast+1 || lastIdx <= lagLast+trailing+1 {
		t.Fatalf("the leader has not compacted past the lagging master's last index %d (snapshot %d, last %d)", lagLast, snapIdx, lastIdx)
	}

	c.StartMaster(lagger)
	all := api.ListFilter{Limit: api.MaxListLimit}
	c.Eventually(60*time.Second, "the lagging master to catch up", func() bool {
		if lagger.M.FSM().Counts() != leader.M.FSM().Counts() || lagger.M.FSM().StaleResults() != leader.M.FSM().StaleResults() {
			return false
		}
		a, err1 := lagger.M.FSM().List(all)
		b, err2 := leader.M.FSM().List(all)
		return err1 == nil && err2 == nil && bytes.Equal(failJSON(t, a), failJSON(t, b))
	})
	if got := lagger.M.FSM().Counts(); got.Succeeded != total {
		t.Errorf("the caught-up master counts %+v, want %d succeeded", got, total)
	}
	// The entries it missed were gone from the leader's log: it can only have
	// caught up by installing a snapshot, which its own store now holds.
	lagSnap, _ := strconv.ParseUint(lagger.M.Raft().Stats()["last_snapshot_index"], 10, 64)
	if lagSnap <= lagLast {
		t.Errorf("the lagging master's last snapshot index is %d, want one past its old last index %d", lagSnap, lagLast)
	}
	snaps, err := os.ReadDir(filepath.Join(lagger.DataDir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range snaps {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			found = true
		}
	}
	if !found {
		t.Errorf("no snapshot in %s after catching up", filepath.Join(lagger.DataDir, "snapshots"))
	}
}

func TestFailure_TwoOfThreeMastersDown(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1})
	cl := c.Client()
	warm := Exec("echo before-outage")
	warm.IdempotencyKey = "outage-warm"
	checkSucceededOnce(t, c.WaitTerminal(cl, c.Submit(cl, warm).ID, 60*time.Second), "before-outage\n")

	// Kill a follower, then the leader: the survivor is a follower, so no
	// entry of the outage can sit uncommitted in a log and commit later.
	leader := c.Leader()
	followers := c.Followers()
	survivor, other := followers[0], followers[1]
	c.KillMaster(other)
	c.KillMaster(leader)

	scl := c.Client(survivor)
	var keys []string
	submit := func(key string) {
		t.Helper()
		keys = append(keys, key)
		spec := Exec("echo " + key)
		spec.IdempotencyKey = key
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a safety net only
		defer cancel()
		task, _, err := scl.Submit(ctx, spec)
		if err == nil {
			t.Errorf("submission %s was acknowledged (task %s) with two of three masters down", key, task.ID)
			return
		}
		if ctx.Err() != nil {
			t.Errorf("submission %s did not return: %v", key, err)
			return
		}
		if !api.Retryable(err) || api.StatusOf(err) != 503 {
			t.Errorf("submission %s failed with %v (status %d), want a retryable 503", key, err, api.StatusOf(err))
		}
	}
	submit("outage-1") // at once: the survivor may still believe in the dead leader
	var readyErr error
	c.Eventually(30*time.Second, "/readyz on the survivor to answer 503", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		readyErr = scl.Ready(ctx)
		return readyErr != nil && api.StatusOf(readyErr) == 503
	})
	submit("outage-2") // no leader known at all
	batchCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	_, err := scl.SubmitBatch(batchCtx, []api.TaskSpec{{Args: []string{"true"}, IdempotencyKey: "outage-3"}})
	cancel()
	keys = append(keys, "outage-3")
	if err == nil || !api.Retryable(err) {
		t.Errorf("batch submission during the outage: %v, want a retryable error", err)
	}

	c.StartMaster(other)
	c.StartMaster(leader)
	c.Leader()
	list := failReadAll(c, cl)
	for _, task := range list.Tasks {
		if strings.HasPrefix(task.IdempotencyKey, "outage-") && task.IdempotencyKey != "outage-warm" {
			t.Errorf("submission %s made during the outage exists as task %s", task.IdempotencyKey, task.ID)
		}
	}
	for _, n := range c.Masters {
		for _, k := range keys {
			if id, ok := n.M.FSM().LookupKey(k); ok {
				t.Errorf("master %s knows key %s (task %s)", n.ID, k, id)
			}
		}
	}
	if len(list.Tasks) != 1 {
		t.Errorf("%d tasks after the outage, want only the one acknowledged before it", len(list.Tasks))
	}
	// The cluster works again, and a key refused during the outage is new.
	again := Exec("echo outage-2")
	again.IdempotencyKey = "outage-2"
	checkSucceededOnce(t, c.WaitTerminal(cl, c.Submit(cl, again).ID, 60*time.Second), "outage-2\n")
}

func TestFailure_LeaderGracefulStop(t *testing.T) {
	c := NewCluster(t, Options{Workers: 2, Slots: 2})
	cl := c.Client()
	old := c.Leader()

	var ids []string
	for i := 0; i < 16; i++ {
		spec := Exec(fmt.Sprintf("sleep 0.%d; echo graceful-%d", 3+i%5, i))
		spec.IdempotencyKey = fmt.Sprintf("graceful-%d", i)
		ids = append(ids, c.Submit(cl, spec).ID)
	}
	c.Eventually(20*time.Second, "tasks running", func() bool {
		return old.M.FSM().Counts().Running > 0
	})
	c.StopMaster(old)

	if old.M.Raft().State() != raft.Shutdown {
		t.Errorf("the stopped master's raft is %s, want Shutdown", old.M.Raft().State())
	}
	if li, ok := old.M.Leader(); ok && li.Self {
		t.Error("the stopped master still counts itself as the leader")
	}
	next := c.Leader()
	if next == old {
		t.Fatal("the stopped master still leads")
	}
	for _, n := range c.Masters {
		if n.Up() && n != next {
			if li, ok := n.M.Leader(); ok && li.ID != next.ID {
				t.Errorf("master %s follows %s, want %s", n.ID, li.ID, next.ID)
			}
		}
	}
	spec := Exec("echo after-stop")
	spec.IdempotencyKey = "graceful-after"
	ids = append(ids, c.Submit(cl, spec).ID)
	for i, id := range ids {
		want := fmt.Sprintf("graceful-%d\n", i)
		if i == 16 {
			want = "after-stop\n"
		}
		task := c.WaitTerminal(cl, id, 90*time.Second)
		checkSucceededOnce(t, task, want)
		if task.Failures != 0 {
			t.Errorf("task %s: %d failures across a graceful leader stop", id, task.Failures)
		}
	}
}

// The tests below drive the gossip layer (package membership) directly, the
// way every master and worker uses it, to pin down bugs that make the
// cluster tests above hang or fail at random.

// failStartGossip starts a gossip node of its own test pool.
func failStartGossip(t *testing.T, label, id string, seeds []string) *membership.Membership {
	t.Helper()
	m := membership.New(membership.Config{
		BindAddr: addr(FreePort(t)), Seeds: seeds, Label: label,
		Meta:          membership.Meta{Role: membership.RoleWorker, ID: id, HTTP: "http://127.0.0.1:1", Slots: 1},
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 80 * time.Millisecond, SuspicionMult: 2,
	})
	if err := m.Start(); err != nil {
		t.Fatalf("gossip %s: %v", id, err)
	}
	return m
}

// failGossipMember returns obs's view of the member named name. A Members call
// that does not return is reported as the deadlock it is (a generous bound
// so the test fails instead of hanging the whole binary).
func failGossipMember(t *testing.T, obs *membership.Membership, name string) (membership.Member, bool) {
	t.Helper()
	type answer struct {
		m  membership.Member
		ok bool
	}
	ch := make(chan answer, 1)
	go func() {
		for _, mb := range obs.Members() {
			if mb.Name == name {
				ch <- answer{mb, true}
				return
			}
		}
		ch <- answer{}
	}()
	select {
	case a := <-ch:
		return a.m, a.ok
	case <-time.After(15 * time.Second):
		t.Fatalf("Membership.Members() has not returned for 15s: deadlocked")
		return membership.Member{}, false
	}
}

// TestFailure_GossipMembersWhileNodesComeAndGo lists the pool continuously,
// as the leader's dispatcher, detector and HTTP handlers do, while nodes join
// and die. Members holds Membership.mu while it takes memberlist's node lock;
// memberlist calls NotifyJoin/NotifyLeave with its node lock held and those
// take Membership.mu: lock-order inversion, and the node hangs for good.
func TestFailure_GossipMembersWhileNodesComeAndGo(t *testing.T) {
	const label = "gantry-test-churn"
	obs := failStartGossip(t, label, "observer", nil)
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		deadlock = true // until proven otherwise; then the observer is leaked, not shut down
	)
	defer func() {
		if !deadlock {
			close(stop)
			wg.Wait()
			_ = obs.Shutdown()
		}
	}()
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				obs.Members()
			}
		}()
	}
	for cycle := 0; cycle < 5; cycle++ {
		peer := failStartGossip(t, label, fmt.Sprintf("peer%d", cycle), []string{obs.LocalAddr()})
		Eventually(t, 30*time.Second, peer.Name()+" to join", func() bool {
			mb, ok := failGossipMember(t, obs, peer.Name())
			return ok && mb.State == membership.StateAlive
		})
		_ = peer.Shutdown() // a crash: no leave
		Eventually(t, 30*time.Second, peer.Name()+" to be seen dead", func() bool {
			mb, ok := failGossipMember(t, obs, peer.Name())
			return ok && mb.State == membership.StateDead
		})
	}
	deadlock = false
}

// TestFailure_GossipMembersWhileMetaChanges lists the pool while a member
// changes its metadata (a worker gossiping that it drains). Members reads
// the fields of memberlist's *Node after memberlist's lock is released, while
// memberlist overwrites them on every alive message: a data race (found
// with -race).
func TestFailure_GossipMembersWhileMetaChanges(t *testing.T) {
	const label = "gantry-test-meta"
	obs := failStartGossip(t, label, "observer", nil)
	defer obs.Shutdown()
	peer := failStartGossip(t, label, "peer", []string{obs.LocalAddr()})
	defer peer.Shutdown()
	Eventually(t, 30*time.Second, "the peer to join", func() bool {
		_, ok := failGossipMember(t, obs, peer.Name())
		return ok
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			obs.Members()
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for i := 1; i <= 10; i++ {
		draining := i%2 == 1
		if err := peer.UpdateMeta(func(m *membership.Meta) { m.Draining = draining }); err != nil {
			t.Fatalf("update meta: %v", err)
		}
		Eventually(t, 30*time.Second, fmt.Sprintf("update %d to spread", i), func() bool {
			mb, ok := failGossipMember(t, obs, peer.Name())
			return ok && mb.Draining == draining
		})
	}
}

// TestFailure_GossipLeaveShowsLeft: a node that leaves gracefully must be
// told apart from one that died (GET /v1/cluster shows workers as left).
func TestFailure_GossipLeaveShowsLeft(t *testing.T) {
	const label = "gantry-test-leave"
	obs := failStartGossip(t, label, "observer", nil)
	defer obs.Shutdown()
	peer := failStartGossip(t, label, "peer", []string{obs.LocalAddr()})
	Eventually(t, 30*time.Second, "the peer to join", func() bool {
		_, ok := failGossipMember(t, obs, peer.Name())
		return ok
	})
	if err := peer.Leave(2 * time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	_ = peer.Shutdown()
	var mb membership.Member
	Eventually(t, 30*time.Second, "the peer to be gone", func() bool {
		var ok bool
		mb, ok = failGossipMember(t, obs, peer.Name())
		return ok && mb.State != membership.StateAlive && mb.State != membership.StateSuspect
	})
	if mb.State != membership.StateLeft {
		t.Errorf("a node that left gracefully is seen as %q, want %q", mb.State, membership.StateLeft)
	}
}
