package test

// End-to-end tests of the task semantics the product promises: timeouts,
// retries and their backoff, cancellation, idempotency, priorities, batches
// and paging, long polls, payload and environment, and the fencing of stale
// results. Every test runs against its own in-process cluster of three
// masters and one or two workers. Nothing here asserts on durations; waits
// poll with generous deadlines.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/transport"
)

// semDeadline bounds every wait of these tests: generous, for the race
// detector on two shared cores.
const semDeadline = 60 * time.Second

// semCtx returns a context for one request.
func semCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// semQuote quotes s for sh.
func semQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// semWaitState waits until the task is in state st and returns it.
func semWaitState(t *testing.T, c *Cluster, cl *transport.Client, id string, st api.TaskState) api.Task {
	t.Helper()
	var task api.Task
	c.Eventually(semDeadline, fmt.Sprintf("task %s to be %s", id, st), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := cl.Task(ctx, id, transport.ReadOptions{})
		if err != nil {
			return false
		}
		task = got
		if got.State != st && got.State.Terminal() {
			t.Fatalf("task %s ended %s while waiting for %s: %+v", id, got.State, st, got)
		}
		return got.State == st
	})
	return task
}

// semWaitFile waits until path exists with non-empty content and returns it.
func semWaitFile(t *testing.T, c *Cluster, path string) string {
	t.Helper()
	var content string
	c.Eventually(semDeadline, "file "+path+" to be written", func() bool {
		b, err := os.ReadFile(path)
		if err != nil || len(bytes.TrimSpace(b)) == 0 || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		content = string(b)
		return true
	})
	return content
}

// semTouch creates an empty file.
func semTouch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// semGateScript is a shell script that waits until gate exists, then runs
// then.
func semGateScript(gate, then string) string {
	return "while [ ! -e " + semQuote(gate) + " ]; do sleep 0.05; done; " + then
}

// semHTTP sends one raw request to base and returns the status and body.
func semHTTP(t *testing.T, method, url string, body []byte, header map[string]string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(semCtx(t), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, b
}

// semKeyedPost POSTs a body that is safe to send again (it carries an
// idempotency key or is refused as bad input), retrying while the cluster
// answers 503.
func semKeyedPost(t *testing.T, c *Cluster, url string, body []byte, header map[string]string) (int, []byte) {
	t.Helper()
	var status int
	var out []byte
	c.Eventually(semDeadline, "POST "+url+" to be answered", func() bool {
		status, out = semHTTP(t, "POST", url, body, header)
		return status != http.StatusServiceUnavailable
	})
	return status, out
}

// semSucceededOnce asserts that a task succeeded with the expected output
// and that exactly one attempt in its history, the current one, succeeded.
func semSucceededOnce(t *testing.T, task api.Task, wantOutput string) {
	t.Helper()
	if task.State != api.StateSucceeded {
		t.Errorf("task %s: state %s, want succeeded (result %+v)", task.ID, task.State, task.Result)
		return
	}
	if task.Result == nil || task.Result.Output != wantOutput || task.Result.ExitCode != 0 {
		t.Errorf("task %s: result %+v, want exit code 0 and output %q", task.ID, task.Result, wantOutput)
	}
	n := 0
	for _, a := range task.Attempts {
		switch a.Outcome {
		case api.OutcomeSucceeded:
			n++
			if a.Attempt != task.Attempt {
				t.Errorf("task %s: succeeded attempt %d is not the current attempt %d", task.ID, a.Attempt, task.Attempt)
			}
		case api.OutcomeRunning:
			t.Errorf("task %s: attempt %d still running in a terminal task", task.ID, a.Attempt)
		}
	}
	if n != 1 {
		t.Errorf("task %s: %d succeeded attempts in its history, want exactly 1: %+v", task.ID, n, task.Attempts)
	}
}

func semDecode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, b, err)
	}
	return v
}

// semCheckHistory checks that the history holds attempts 1..n in order with
// the given outcomes, each finished on a worker.
func semCheckHistory(t *testing.T, task api.Task, want ...api.Outcome) {
	t.Helper()
	if len(task.Attempts) != len(want) {
		t.Fatalf("task %s: %d attempt records, want %d: %+v", task.ID, len(task.Attempts), len(want), task.Attempts)
	}
	for i, a := range task.Attempts {
		if a.Attempt != i+1 {
			t.Errorf("task %s: attempt record %d has number %d, want %d", task.ID, i, a.Attempt, i+1)
		}
		if a.Outcome != want[i] {
			t.Errorf("task %s: attempt %d outcome %q, want %q (error %q)", task.ID, a.Attempt, a.Outcome, want[i], a.Error)
		}
		if a.Worker == "" || a.StartedAt.IsZero() || a.FinishedAt.IsZero() {
			t.Errorf("task %s: attempt %d lacks worker or times: %+v", task.ID, a.Attempt, a)
		}
		if a.FinishedAt.Before(a.StartedAt) {
			t.Errorf("task %s: attempt %d finished (%s) before it started (%s)", task.ID, a.Attempt, a.FinishedAt, a.StartedAt)
		}
	}
}

func TestSemantics_Timeout(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2})
	cl := c.Client()

	once := Exec("sleep 30")
	once.Timeout, once.MaxAttempts = "300ms", 1
	twice := Exec("sleep 30")
	twice.Timeout, twice.MaxAttempts = "300ms", 2
	id1 := c.Submit(cl, once).ID
	id2 := c.Submit(cl, twice).ID
	// A process group that ignores SIGTERM is killed all the same.
	pids := filepath.Join(t.TempDir(), "pids")
	stubborn := Exec("trap '' TERM; echo before-timeout; sleep 30 & echo $$ $! > " + semQuote(pids) + "; wait; wait; echo survived")
	stubborn.Timeout, stubborn.MaxAttempts = "300ms", 1
	id3 := c.Submit(cl, stubborn).ID

	for _, tc := range []struct {
		id       string
		attempts int
	}{{id1, 1}, {id2, 2}, {id3, 1}} {
		task := c.WaitTerminal(cl, tc.id, semDeadline)
		if task.State != api.StateFailed {
			t.Errorf("task %s (max_attempts %d): state %s, want failed: %+v", task.ID, tc.attempts, task.State, task)
			continue
		}
		if task.Attempt != tc.attempts || task.Failures != tc.attempts {
			t.Errorf("task %s: attempt %d failures %d, want %d and %d", task.ID, task.Attempt, task.Failures, tc.attempts, tc.attempts)
		}
		outcomes := make([]api.Outcome, tc.attempts)
		for i := range outcomes {
			outcomes[i] = api.OutcomeTimeout
		}
		semCheckHistory(t, task, outcomes...)
		for _, a := range task.Attempts {
			if !strings.Contains(a.Error, "timeout") {
				t.Errorf("task %s: attempt %d error %q does not mention the timeout", task.ID, a.Attempt, a.Error)
			}
		}
		if task.Result == nil {
			t.Errorf("task %s: no result", task.ID)
			continue
		}
		if task.Result.ExitCode != -1 {
			t.Errorf("task %s: exit code %d, want -1", task.ID, task.Result.ExitCode)
		}
		if !strings.Contains(task.Result.Error, "timeout") {
			t.Errorf("task %s: result error %q does not mention the timeout", task.ID, task.Result.Error)
		}
		if task.FinishedAt.IsZero() {
			t.Errorf("task %s: failed without finished_at", task.ID)
		}
		if strings.Contains(task.Result.Output, "survived") {
			t.Errorf("task %s: the process outlived its timeout: output %q", task.ID, task.Result.Output)
		}
		if tc.id == id3 && task.Result.Output != "before-timeout\n" {
			t.Errorf("task %s: output %q, want what it printed before the timeout", task.ID, task.Result.Output)
		}
	}
	for _, f := range strings.Fields(semWaitFile(t, c, pids)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pid file: %v", err)
		}
		c.Eventually(semDeadline, fmt.Sprintf("process %d of the timed-out task to be killed", pid), func() bool {
			return ProcessGone(pid)
		})
	}
}

// semObserveRetries polls a task until it is terminal and checks every
// pending state it sees between attempts: the retry must wait (not_before)
// exactly the backoff after the failed attempt ended.
func semObserveRetries(t *testing.T, c *Cluster, cl *transport.Client, id string, base time.Duration) (api.Task, int) {
	t.Helper()
	var task api.Task
	seen := 0
	c.Eventually(semDeadline, "task "+id+" to end", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := cl.Task(ctx, id, transport.ReadOptions{})
		if err != nil {
			return false
		}
		task = got
		if got.State == api.StatePending && got.Attempt > 0 {
			seen++
			n := len(got.Attempts)
			if n == 0 || got.Attempts[n-1].Attempt != got.Attempt {
				t.Fatalf("task %s: pending retry without a record of attempt %d: %+v", id, got.Attempt, got.Attempts)
			}
			last := got.Attempts[n-1]
			if last.Outcome != api.OutcomeFailed || last.FinishedAt.IsZero() {
				t.Fatalf("task %s: pending retry after attempt %+v", id, last)
			}
			if got.NotBefore.IsZero() || !got.NotBefore.After(last.FinishedAt) {
				t.Fatalf("task %s: pending retry with not_before %s, want after the failed attempt's end %s",
					id, got.NotBefore, last.FinishedAt)
			}
			if d, want := got.NotBefore.Sub(last.FinishedAt), api.Backoff(base, got.Failures); d != want {
				t.Errorf("task %s: retry waits %s after attempt %d, want the backoff %s", id, d, got.Attempt, want)
			}
		}
		return got.State.Terminal()
	})
	return task, seen
}

// semCheckBackoffRespected checks from the history that no retry started
// before its backoff had passed (all timestamps are the leader's).
func semCheckBackoffRespected(t *testing.T, task api.Task, base time.Duration) {
	t.Helper()
	for i := 1; i < len(task.Attempts); i++ {
		prev, cur := task.Attempts[i-1], task.Attempts[i]
		if due := prev.FinishedAt.Add(api.Backoff(base, i)); cur.StartedAt.Before(due) {
			t.Errorf("task %s: attempt %d started at %s, before its retry was due at %s", task.ID, cur.Attempt, cur.StartedAt, due)
		}
	}
}

func TestSemantics_RetriesToFailed(t *testing.T) {
	const base = 300 * time.Millisecond
	c := NewCluster(t, Options{Workers: 1, Slots: 2, Master: func(cfg *master.Config) { cfg.RetryBackoff = base }})
	cl := c.Client()

	spec := Exec("echo try-$GANTRY_ATTEMPT; exit 7")
	spec.MaxAttempts = 3
	id := c.Submit(cl, spec).ID
	task, seen := semObserveRetries(t, c, cl, id, base)
	t.Logf("observed %d pending states between attempts", seen)

	if task.State != api.StateFailed {
		t.Fatalf("task %s: state %s, want failed: %+v", id, task.State, task)
	}
	if task.Attempt != 3 || task.Failures != 3 || task.Lost != 0 {
		t.Errorf("task %s: attempt %d failures %d lost %d, want 3, 3, 0", id, task.Attempt, task.Failures, task.Lost)
	}
	semCheckHistory(t, task, api.OutcomeFailed, api.OutcomeFailed, api.OutcomeFailed)
	semCheckBackoffRespected(t, task, base)
	if task.Result == nil || task.Result.ExitCode != 7 {
		t.Fatalf("task %s: result %+v, want exit code 7", id, task.Result)
	}
	if task.Result.Output != "try-3\n" {
		t.Errorf("task %s: result output %q, want the last attempt's %q", id, task.Result.Output, "try-3\n")
	}
	if !task.NotBefore.IsZero() {
		t.Errorf("task %s: failed task keeps not_before %s", id, task.NotBefore)
	}
}

func TestSemantics_RetryThenSucceed(t *testing.T) {
	const base = 300 * time.Millisecond
	c := NewCluster(t, Options{Workers: 1, Slots: 2, Master: func(cfg *master.Config) { cfg.RetryBackoff = base }})
	cl := c.Client()

	marker := filepath.Join(t.TempDir(), "marker")
	spec := Exec("if [ -e " + semQuote(marker) + " ]; then echo ok; else touch " + semQuote(marker) + "; echo first; exit 1; fi")
	id := c.Submit(cl, spec).ID
	task, seen := semObserveRetries(t, c, cl, id, base)
	t.Logf("observed %d pending states between attempts", seen)

	semSucceededOnce(t, task, "ok\n")
	if task.Attempt != 2 || task.Failures != 1 {
		t.Errorf("task %s: attempt %d failures %d, want 2 and 1", id, task.Attempt, task.Failures)
	}
	semCheckHistory(t, task, api.OutcomeFailed, api.OutcomeSucceeded)
	semCheckBackoffRespected(t, task, base)
	if task.Result == nil || task.Result.ExitCode != 0 {
		t.Errorf("task %s: result %+v, want exit code 0", id, task.Result)
	}
	if !task.NotBefore.IsZero() {
		t.Errorf("task %s: succeeded task keeps not_before %s", id, task.NotBefore)
	}
}

func TestSemantics_Cancel(t *testing.T) {
	// Retries wait long here, so a failed task stays pending in its backoff.
	c := NewCluster(t, Options{Workers: 1, Slots: 2, Master: func(cfg *master.Config) { cfg.RetryBackoff = 10 * time.Minute }})
	cl := c.Client()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	ranFile := filepath.Join(dir, "pending-ran")

	// Cancel a task waiting to be retried: it is canceled with the history
	// it has and never runs again.
	retryFile := filepath.Join(dir, "retry-runs")
	retry := Exec("echo run >> " + semQuote(retryFile) + "; exit 1")
	retry.MaxAttempts = 3
	retryID := c.Submit(cl, retry).ID
	var waiting api.Task
	c.Eventually(semDeadline, "task "+retryID+" to wait for its retry", func() bool {
		got, err := cl.Task(semCtx(t), retryID, transport.ReadOptions{})
		waiting = got
		return err == nil && got.State == api.StatePending && got.Attempt == 1
	})
	if waiting.NotBefore.IsZero() || waiting.Failures != 1 {
		t.Fatalf("task %s after a failure: not_before %s failures %d, want a retry wait and 1", retryID, waiting.NotBefore, waiting.Failures)
	}
	canceled, err := cl.Cancel(semCtx(t), retryID)
	if err != nil {
		t.Fatalf("cancel %s during its retry wait: %v", retryID, err)
	}
	if canceled.State != api.StateCanceled || canceled.Attempt != 1 || canceled.Failures != 1 || !canceled.NotBefore.IsZero() {
		t.Errorf("task canceled during its retry wait: state %s attempt %d failures %d not_before %s; want canceled, 1, 1, none",
			canceled.State, canceled.Attempt, canceled.Failures, canceled.NotBefore)
	}
	semCheckHistory(t, canceled, api.OutcomeFailed)

	// Occupy both slots of the only worker.
	running := c.Submit(cl, Exec("echo $$ > "+semQuote(pidFile)+"; exec sleep 30")).ID
	other := c.Submit(cl, Exec("sleep 30")).ID
	semWaitState(t, c, cl, running, api.StateRunning)
	semWaitState(t, c, cl, other, api.StateRunning)

	// A new task cannot run: it stays pending. Cancel it.
	pending := c.Submit(cl, Exec("touch "+semQuote(ranFile))).ID
	if got, err := cl.Task(semCtx(t), pending, transport.ReadOptions{}); err != nil || got.State != api.StatePending {
		t.Fatalf("task %s with every slot taken: state %s err %v, want pending", pending, got.State, err)
	}
	canceled, err = cl.Cancel(semCtx(t), pending)
	if err != nil {
		t.Fatalf("cancel pending %s: %v", pending, err)
	}
	if canceled.State != api.StateCanceled || canceled.Attempt != 0 || len(canceled.Attempts) != 0 || canceled.FinishedAt.IsZero() {
		t.Errorf("canceled pending task: state %s attempt %d attempts %+v finished_at %s; want canceled, 0, none, set",
			canceled.State, canceled.Attempt, canceled.Attempts, canceled.FinishedAt)
	}

	// Cancel the running task: its process dies and its slot frees up.
	pid, err := strconv.Atoi(strings.TrimSpace(semWaitFile(t, c, pidFile)))
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	if ProcessGone(pid) {
		t.Fatalf("process %d of the running task is not running before the cancel", pid)
	}
	canceled, err = cl.Cancel(semCtx(t), running)
	if err != nil {
		t.Fatalf("cancel running %s: %v", running, err)
	}
	if canceled.State != api.StateCanceled || canceled.FinishedAt.IsZero() {
		t.Errorf("canceled running task: state %s finished_at %s, want canceled and set", canceled.State, canceled.FinishedAt)
	}
	semCheckHistory(t, canceled, api.OutcomeCanceled)
	c.Eventually(semDeadline, fmt.Sprintf("process %d of the canceled task to be killed", pid), func() bool {
		return ProcessGone(pid)
	})
	next := c.Submit(cl, Exec("echo next")).ID
	semSucceededOnce(t, c.WaitTerminal(cl, next, semDeadline), "next\n")

	// Canceled tasks stay canceled; the pending one never ran.
	for _, id := range []string{pending, running} {
		got, err := cl.Task(semCtx(t), id, transport.ReadOptions{})
		if err != nil || got.State != api.StateCanceled {
			t.Errorf("task %s after the cancel: state %s err %v, want canceled", id, got.State, err)
		}
		if id == pending && (got.Attempt != 0 || len(got.Attempts) != 0) {
			t.Errorf("canceled pending task %s ran: attempt %d attempts %+v", id, got.Attempt, got.Attempts)
		}
	}
	if _, err := os.Stat(ranFile); !os.IsNotExist(err) {
		t.Errorf("the canceled pending task ran (stat %s: %v)", ranFile, err)
	}
	if got, err := cl.Task(semCtx(t), retryID, transport.ReadOptions{}); err != nil || got.State != api.StateCanceled || got.Attempt != 1 {
		t.Errorf("task %s canceled in its retry wait: state %s attempt %d err %v, want canceled at attempt 1", retryID, got.State, got.Attempt, err)
	}
	if b, err := os.ReadFile(retryFile); err != nil || string(b) != "run\n" {
		t.Errorf("task canceled in its retry wait ran %q (err %v), want once", b, err)
	}

	// Canceling a terminal task is a conflict; an unknown one is not found.
	for _, id := range []string{pending, running, next, retryID} {
		if _, err := cl.Cancel(semCtx(t), id); !errors.Is(err, api.ErrConflict) {
			t.Errorf("cancel terminal task %s: %v, want a 409 conflict", id, err)
		} else if api.StatusOf(err) != http.StatusConflict {
			t.Errorf("cancel terminal task %s: status %d, want 409", id, api.StatusOf(err))
		}
	}
	if _, err := cl.Cancel(semCtx(t), api.FormatTaskID(1<<40)); !errors.Is(err, api.ErrNotFound) || api.StatusOf(err) != http.StatusNotFound {
		t.Errorf("cancel unknown task: %v (status %d), want a 404 not found", err, api.StatusOf(err))
	}
	if _, err := cl.Cancel(semCtx(t), other); err != nil {
		t.Errorf("cancel %s: %v", other, err)
	}
}

func TestSemantics_Idempotency(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2})
	cl := c.Client()
	ctx := context.Background()

	// The same key in the body twice: one task.
	spec := Exec("echo keyed")
	spec.IdempotencyKey = "sem-body-key"
	first, created, err := cl.Submit(semCtx(t), spec)
	if err != nil || !created {
		t.Fatalf("first submit: created %v err %v, want created", created, err)
	}
	again, created, err := cl.Submit(semCtx(t), spec)
	if err != nil || created || again.ID != first.ID {
		t.Fatalf("second submit: id %s created %v err %v, want id %s not created", again.ID, created, err, first.ID)
	}
	if first.IdempotencyKey != spec.IdempotencyKey || again.IdempotencyKey != spec.IdempotencyKey {
		t.Errorf("tasks carry keys %q and %q, want %q", first.IdempotencyKey, again.IdempotencyKey, spec.IdempotencyKey)
	}
	// Raw: 200 with the same task, through a follower.
	body, _ := json.Marshal(spec)
	status, out := semKeyedPost(t, c, c.Followers()[0].URL()+"/v1/tasks", body, nil)
	if got := semDecode[api.Task](t, out); status != http.StatusOK || got.ID != first.ID {
		t.Errorf("raw resubmit: status %d id %s, want 200 and %s (%s)", status, got.ID, first.ID, out)
	}

	// The Idempotency-Key header, first through a follower (which must pass
	// the header on), then through the leader.
	hdr := map[string]string{transport.HeaderIdempotencyKey: "sem-header-key"}
	plain := []byte(`{"args":["sh","-c","echo header"]}`)
	status, out = semKeyedPost(t, c, c.Followers()[0].URL()+"/v1/tasks", plain, hdr)
	viaHeader := semDecode[api.Task](t, out)
	if status != http.StatusCreated || viaHeader.ID == "" || viaHeader.IdempotencyKey != "sem-header-key" {
		t.Fatalf("submit with the header: status %d task %s key %q, want 201 and the key (%s)", status, viaHeader.ID, viaHeader.IdempotencyKey, out)
	}
	status, out = semKeyedPost(t, c, c.Leader().URL()+"/v1/tasks", plain, hdr)
	if got := semDecode[api.Task](t, out); status != http.StatusOK || got.ID != viaHeader.ID {
		t.Errorf("resubmit with the header: status %d id %s, want 200 and %s", status, got.ID, viaHeader.ID)
	}
	// The same key in the body names the same task.
	bodyKeyed := Exec("echo header")
	bodyKeyed.IdempotencyKey = "sem-header-key"
	if got, created, err := cl.Submit(semCtx(t), bodyKeyed); err != nil || created || got.ID != viaHeader.ID {
		t.Errorf("body key after header key: id %s created %v err %v, want %s not created", got.ID, created, err, viaHeader.ID)
	}
	// Header and body agreeing is fine.
	withBoth, _ := json.Marshal(bodyKeyed)
	status, out = semKeyedPost(t, c, c.Leader().URL()+"/v1/tasks", withBoth, hdr)
	if got := semDecode[api.Task](t, out); status != http.StatusOK || got.ID != viaHeader.ID {
		t.Errorf("equal header and body keys: status %d id %s, want 200 and %s (%s)", status, got.ID, viaHeader.ID, out)
	}

	// Header and body disagreeing is bad input naming the field.
	before, err := cl.List(ctx, api.ListFilter{Limit: api.MaxListLimit}, transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mismatch := Exec("echo mismatch")
	mismatch.IdempotencyKey = "sem-body-other"
	mb, _ := json.Marshal(mismatch)
	for _, n := range c.Masters {
		status, out = semKeyedPost(t, c, n.URL()+"/v1/tasks", mb, map[string]string{transport.HeaderIdempotencyKey: "sem-header-other"})
		e := semDecode[api.Error](t, out)
		if status != http.StatusBadRequest || e.Field != "idempotency_key" || e.Code != api.CodeBadRequest {
			t.Errorf("differing keys via %s: status %d body %s, want 400 naming idempotency_key", n.ID, status, out)
		}
	}

	// The same new key sent concurrently to every master: one task.
	type res struct {
		id      string
		created bool
		err     error
	}
	results := make(chan res, 3*len(c.Masters))
	for i := 0; i < 3*len(c.Masters); i++ {
		go func(n *MasterNode) {
			s := Exec("echo concurrent")
			s.IdempotencyKey = "sem-concurrent"
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			task, created, err := c.Client(n).Submit(ctx, s)
			results <- res{task.ID, created, err}
		}(c.Masters[i%len(c.Masters)])
	}
	concurrentID, createdN := "", 0
	for i := 0; i < 3*len(c.Masters); i++ {
		r := <-results
		if r.err != nil {
			t.Errorf("concurrent submit: %v", r.err)
			continue
		}
		if r.created {
			createdN++
		}
		if concurrentID == "" {
			concurrentID = r.id
		} else if r.id != concurrentID {
			t.Errorf("concurrent submits with one key got tasks %s and %s", concurrentID, r.id)
		}
	}
	if createdN != 1 {
		t.Errorf("concurrent submits with one key: %d answered created, want exactly 1", createdN)
	}

	// Two different keys: two tasks.
	k1, k2 := Exec("echo k"), Exec("echo k")
	k1.IdempotencyKey, k2.IdempotencyKey = "sem-distinct-1", "sem-distinct-2"
	t1, c1, err1 := cl.Submit(semCtx(t), k1)
	t2, c2, err2 := cl.Submit(semCtx(t), k2)
	if err1 != nil || err2 != nil || !c1 || !c2 || t1.ID == t2.ID {
		t.Errorf("different keys: ids %s %s created %v %v errs %v %v, want two new tasks", t1.ID, t2.ID, c1, c2, err1, err2)
	}

	// A keyed batch, resubmitted: the same tasks, nothing new.
	var specs []api.TaskSpec
	for i := 0; i < 5; i++ {
		s := Exec(fmt.Sprintf("echo batch-%d", i))
		s.IdempotencyKey = fmt.Sprintf("sem-batch-%d", i)
		specs = append(specs, s)
	}
	batch, err := cl.SubmitBatch(semCtx(t), specs)
	if err != nil || len(batch) != len(specs) {
		t.Fatalf("batch: %d tasks err %v", len(batch), err)
	}
	mid, err := cl.List(ctx, api.ListFilter{Limit: api.MaxListLimit}, transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := len(before.Tasks) + 3 + len(specs); len(mid.Tasks) != want {
		t.Errorf("after three keyed tasks and a batch of %d: %d tasks, want %d", len(specs), len(mid.Tasks), want)
	}
	batch2, err := cl.SubmitBatch(semCtx(t), specs)
	if err != nil || len(batch2) != len(specs) {
		t.Fatalf("batch again: %d tasks err %v", len(batch2), err)
	}
	for i := range batch {
		if batch[i].ID != batch2[i].ID || batch[i].IdempotencyKey != specs[i].IdempotencyKey {
			t.Errorf("batch task %d: ids %s then %s (key %q), want the same task with key %q", i, batch[i].ID, batch2[i].ID, batch[i].IdempotencyKey, specs[i].IdempotencyKey)
		}
	}
	after, err := cl.List(ctx, api.ListFilter{Limit: api.MaxListLimit}, transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Tasks) != len(mid.Tasks) {
		t.Errorf("resubmitting a keyed batch changed the task count from %d to %d", len(mid.Tasks), len(after.Tasks))
	}
	keys := map[string]int{}
	for _, task := range after.Tasks {
		if task.IdempotencyKey != "" {
			keys[task.IdempotencyKey]++
		}
	}
	for k, n := range keys {
		if n != 1 {
			t.Errorf("key %s has %d tasks", k, n)
		}
	}
	// Everything still runs exactly once.
	semSucceededOnce(t, c.WaitTerminal(cl, first.ID, semDeadline), "keyed\n")
	semSucceededOnce(t, c.WaitTerminal(cl, viaHeader.ID, semDeadline), "header\n")
	for i, task := range batch {
		semSucceededOnce(t, c.WaitTerminal(cl, task.ID, semDeadline), fmt.Sprintf("batch-%d\n", i))
	}
}

func TestSemantics_Priorities(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 1})
	cl := c.Client()
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	order := filepath.Join(dir, "order")

	blocker := c.Submit(cl, Exec(semGateScript(gate, "echo blocker >> "+semQuote(order)))).ID
	semWaitState(t, c, cl, blocker, api.StateRunning)

	type item struct {
		label string
		prio  int
	}
	items := []item{{"p0-first", 0}, {"p5-first", 5}, {"m3", -3}, {"p5-second", 5}, {"p10", 10}, {"p0-second", 0}}
	var ids []string
	for _, it := range items {
		spec := Exec("echo " + it.label + " >> " + semQuote(order))
		spec.Priority = it.prio
		task := c.Submit(cl, spec)
		if task.Priority != it.prio {
			t.Errorf("task %s: priority %d, want %d", task.ID, task.Priority, it.prio)
		}
		ids = append(ids, task.ID)
	}
	// Nothing may start while the only slot is taken.
	for _, id := range ids {
		if got, err := cl.Task(semCtx(t), id, transport.ReadOptions{}); err != nil || got.State != api.StatePending {
			t.Errorf("task %s while the slot is taken: state %s err %v, want pending", id, got.State, err)
		}
	}
	semTouch(t, gate)
	for _, id := range append([]string{blocker}, ids...) {
		if task := c.WaitTerminal(cl, id, semDeadline); task.State != api.StateSucceeded {
			t.Fatalf("task %s: state %s, want succeeded: %+v", id, task.State, task.Result)
		}
	}
	b, err := os.ReadFile(order)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(b))
	want := []string{"blocker", "p10", "p5-first", "p5-second", "p0-first", "p0-second", "m3"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("execution order %v, want %v (priority descending, FIFO within a priority)", got, want)
	}
}

func TestSemantics_BatchAndPaging(t *testing.T) {
	c := NewCluster(t, Options{Workers: 2, Slots: 4})
	cl := c.Client()

	const n = 50
	req := api.BatchRequest{}
	failing := map[int]bool{}
	for i := 0; i < n; i++ {
		script := fmt.Sprintf("echo task-%d", i)
		if i%5 == 3 {
			script, failing[i] = fmt.Sprintf("echo task-%d; exit 3", i), true
		}
		spec := Exec(script)
		spec.MaxAttempts = 1
		spec.Env = map[string]string{"INDEX": strconv.Itoa(i)}
		req.Tasks = append(req.Tasks, spec)
	}
	body, _ := json.Marshal(req)
	status, out := semHTTP(t, "POST", c.Leader().URL()+"/v1/tasks/batch", body, nil)
	if status != http.StatusCreated {
		t.Fatalf("batch: status %d, want 201: %s", status, out)
	}
	resp := semDecode[api.BatchResponse](t, out)
	if len(resp.Tasks) != n {
		t.Fatalf("batch: %d tasks in the answer, want %d", len(resp.Tasks), n)
	}
	ids := make([]string, n)
	for i, task := range resp.Tasks {
		ids[i] = task.ID
		if task.Env["INDEX"] != strconv.Itoa(i) || len(task.Args) != 3 || task.Args[2] != req.Tasks[i].Args[2] {
			t.Errorf("batch answer %d is not task %d: env %v args %v", i, i, task.Env, task.Args)
		}
		if i > 0 && !(ids[i-1] < ids[i]) {
			t.Errorf("batch IDs not increasing: %s then %s", ids[i-1], ids[i])
		}
	}

	var succeeded, failed []string
	for i, id := range ids {
		task := c.WaitTerminal(cl, id, semDeadline)
		want := fmt.Sprintf("task-%d\n", i)
		if failing[i] {
			if task.State != api.StateFailed || task.Result == nil || task.Result.ExitCode != 3 || task.Result.Output != want {
				t.Errorf("task %d (%s): state %s result %+v, want failed with exit 3", i, id, task.State, task.Result)
			}
			failed = append(failed, id)
			continue
		}
		semSucceededOnce(t, task, want)
		succeeded = append(succeeded, id)
	}

	// Page through everything, then through each state.
	walk := func(state api.TaskState, limit int) ([]string, int) {
		var all []string
		pages := 0
		after := ""
		for {
			page, err := cl.List(semCtx(t), api.ListFilter{State: state, After: after, Limit: limit}, transport.ReadOptions{})
			if err != nil {
				t.Fatalf("list state=%q after=%q: %v", state, after, err)
			}
			pages++
			if len(page.Tasks) > limit {
				t.Fatalf("list limit %d returned %d tasks", limit, len(page.Tasks))
			}
			for _, task := range page.Tasks {
				if state != "" && task.State != state {
					t.Errorf("list state=%s returned task %s in state %s", state, task.ID, task.State)
				}
				all = append(all, task.ID)
			}
			if page.Next == "" {
				return all, pages
			}
			if len(page.Tasks) == 0 || page.Next != page.Tasks[len(page.Tasks)-1].ID {
				t.Fatalf("list next %q is not the last ID of its page", page.Next)
			}
			if pages > n {
				t.Fatal("paging does not end")
			}
			after = page.Next
		}
	}
	check := func(what string, got, want []string) {
		t.Helper()
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: walked %d tasks %v, want %d %v", what, len(got), got, len(want), want)
		}
	}
	all, pages := walk("", 20)
	check("list limit=20", all, ids)
	if pages != 3 {
		t.Errorf("list limit=20 over %d tasks took %d pages, want 3", n, pages)
	}
	got, _ := walk(api.StateSucceeded, 15)
	check("list state=succeeded limit=15", got, succeeded)
	got, _ = walk(api.StateFailed, 1000)
	check("list state=failed", got, failed)
	got, pages = walk(api.StateFailed, len(failed)/2)
	check("list state=failed in two pages", got, failed)
	if pages != 2 {
		t.Errorf("list of %d failed tasks by %d took %d pages, want 2 (no empty page at the end)", len(failed), len(failed)/2, pages)
	}
	got, _ = walk(api.StatePending, 20)
	check("list state=pending", got, nil)

	// Bad list queries name their field.
	for q, field := range map[string]string{"state=bogus": "state", "limit=0": "limit", "after=not%20an%20id": "after"} {
		status, out := semHTTP(t, "GET", c.Masters[0].URL()+"/v1/tasks?"+q, nil, nil)
		if e := semDecode[api.Error](t, out); status != http.StatusBadRequest || e.Field != field {
			t.Errorf("GET /v1/tasks?%s: status %d body %s, want 400 naming %s", q, status, out, field)
		}
	}
}

func TestSemantics_LongPoll(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2})
	cl := c.Client()
	gate := filepath.Join(t.TempDir(), "gate")
	id := c.Submit(cl, Exec(semGateScript(gate, "echo released"))).ID
	semWaitState(t, c, cl, id, api.StateRunning)

	// A short wait on a running task answers 200 with the running task.
	for _, n := range c.Masters {
		status, out := semHTTP(t, "GET", n.URL()+"/v1/tasks/"+id+"?wait=300ms", nil, nil)
		if task := semDecode[api.Task](t, out); status != http.StatusOK || task.ID != id || task.State != api.StateRunning {
			t.Errorf("wait=300ms via %s on a running task: status %d state %s, want 200 running (%s)", n.ID, status, task.State, out)
		}
	}

	// A long wait returns once the task ends: release the task only after
	// the long poll was sent.
	type answer struct {
		task api.Task
		err  error
	}
	sent := make(chan struct{})
	done := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var once bool
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) {
			if !once {
				once = true
				close(sent)
			}
		}})
		task, err := cl.Task(ctx, id, transport.ReadOptions{Wait: 20 * time.Second})
		done <- answer{task, err}
	}()
	select {
	case <-sent:
	case a := <-done:
		t.Fatalf("the long poll returned before it was sent: %+v", a)
	case <-time.After(semDeadline):
		t.Fatal("the long poll was never sent")
	}
	select {
	case a := <-done:
		t.Fatalf("the long poll returned before the task was released: state %s err %v", a.task.State, a.err)
	default:
	}
	semTouch(t, gate)
	var a answer
	select {
	case a = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the long poll did not return")
	}
	if a.err != nil {
		t.Fatalf("long poll: %v", a.err)
	}
	if !a.task.State.Terminal() {
		t.Fatalf("wait=20s returned the task %s, not terminal: it must return once the task ends", a.task.State)
	}
	semSucceededOnce(t, a.task, "released\n")

	// On a terminal task a wait returns at once with it; a bad wait is 400.
	status, out := semHTTP(t, "GET", c.Leader().URL()+"/v1/tasks/"+id+"?wait=5m", nil, nil)
	if task := semDecode[api.Task](t, out); status != http.StatusOK || task.State != api.StateSucceeded {
		t.Errorf("wait on a terminal task: status %d state %s", status, task.State)
	}
	status, out = semHTTP(t, "GET", c.Leader().URL()+"/v1/tasks/"+id+"?wait=forever", nil, nil)
	if e := semDecode[api.Error](t, out); status != http.StatusBadRequest || e.Field != "wait" {
		t.Errorf("wait=forever: status %d body %s, want 400 naming wait", status, out)
	}
}

func TestSemantics_PayloadAndEnv(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 4})
	cl := c.Client()
	marker := filepath.Join(t.TempDir(), "marker")

	text := Exec("cat")
	text.Payload = json.RawMessage(`"hello\nworld \"quoted\" ünï"`)
	object := Exec("cat")
	object.Payload = json.RawMessage(`{ "a": 1, "b": [true, null, "x"], "c": {"d": "e"} }`)
	env := Exec(`printf '%s|%s|%s|%s' "$FOO" "$BAZ" "$GANTRY_TASK_ID" "$GANTRY_ATTEMPT"`)
	env.Env = map[string]string{"FOO": "bar", "BAZ": "with space = and 'quotes'"}
	retried := Exec("if [ -e " + semQuote(marker) + " ]; then printf '%s %s' \"$GANTRY_TASK_ID\" \"$GANTRY_ATTEMPT\"; else touch " + semQuote(marker) + "; exit 1; fi")
	big := Exec("head -c 100000 /dev/zero | tr '\\0' x")
	exact := Exec(fmt.Sprintf("head -c %d /dev/zero | tr '\\0' y", api.MaxOutputBytes))

	ids := map[string]string{}
	for name, spec := range map[string]api.TaskSpec{"text": text, "object": object, "env": env, "retried": retried, "big": big, "exact": exact} {
		ids[name] = c.Submit(cl, spec).ID
	}
	wait := func(name string) api.Task {
		t.Helper()
		task := c.WaitTerminal(cl, ids[name], semDeadline)
		if task.State != api.StateSucceeded || task.Result == nil {
			t.Fatalf("task %s (%s): state %s result %+v, want succeeded", name, task.ID, task.State, task.Result)
		}
		return task
	}

	if got, want := wait("text").Result.Output, "hello\nworld \"quoted\" ünï"; got != want {
		t.Errorf("string payload on stdin: %q, want its text %q", got, want)
	}
	var gotObj, wantObj any
	out := wait("object").Result.Output
	if err := json.Unmarshal([]byte(out), &gotObj); err != nil {
		t.Errorf("object payload on stdin is not JSON: %q", out)
	}
	_ = json.Unmarshal(object.Payload, &wantObj)
	if fmt.Sprint(gotObj) != fmt.Sprint(wantObj) {
		t.Errorf("object payload on stdin: %s, want %s", out, object.Payload)
	}

	task := wait("env")
	if want := "bar|with space = and 'quotes'|" + task.ID + "|1"; task.Result.Output != want {
		t.Errorf("env: %q, want %q", task.Result.Output, want)
	}
	task = wait("retried")
	if want := task.ID + " 2"; task.Attempt != 2 || task.Result.Output != want {
		t.Errorf("retried task: attempt %d output %q, want attempt 2 and %q", task.Attempt, task.Result.Output, want)
	}

	task = wait("big")
	if r := task.Result; !r.Truncated || len(r.Output) > api.MaxOutputBytes || len(r.Output) < api.MaxOutputBytes-100 {
		t.Errorf("100000 bytes of output: kept %d bytes truncated=%v, want about %d and truncated", len(r.Output), r.Truncated, api.MaxOutputBytes)
	} else if head, tail, ok := strings.Cut(r.Output, "\n... [gantry: "); !ok || strings.Trim(head, "x") != "" || len(head) != api.MaxOutputBytes/4 ||
		!strings.Contains(tail, " bytes of output dropped] ...\n") || strings.Trim(tail[strings.Index(tail, "...\n")+4:], "x") != "" {
		t.Errorf("100000 bytes of output: want the first 16 KiB, a marker line, the end; got %.40q ... %.80q", r.Output, r.Output[len(head):])
	}
	task = wait("exact")
	if r := task.Result; r.Truncated || len(r.Output) != api.MaxOutputBytes || strings.Trim(r.Output, "y") != "" {
		t.Errorf("exactly %d bytes of output: kept %d bytes truncated=%v, want all of it, not truncated", api.MaxOutputBytes, len(r.Output), r.Truncated)
	}

	// Reserved names are refused.
	bad := Exec("true")
	bad.Env = map[string]string{"GANTRY_TASK_ID": "mine"}
	if _, _, err := cl.Submit(semCtx(t), bad); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("env GANTRY_TASK_ID: %v, want 400", err)
	} else if e := (*api.Error)(nil); errors.As(err, &e) && e.Field != "env" {
		t.Errorf("env GANTRY_TASK_ID: field %q, want env", e.Field)
	}
}

func TestSemantics_StaleResults(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2})
	cl := c.Client()
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	gate := filepath.Join(dir, "gate")

	// A task that finished on its second attempt.
	id := c.Submit(cl, Exec("if [ -e "+semQuote(marker)+" ]; then echo ok; else touch "+semQuote(marker)+"; exit 1; fi")).ID
	done := c.WaitTerminal(cl, id, semDeadline)
	semSucceededOnce(t, done, "ok\n")
	if done.Attempt != 2 {
		t.Fatalf("task %s ended at attempt %d, want 2", id, done.Attempt)
	}
	// A task that is running now.
	live := c.Submit(cl, Exec(semGateScript(gate, "echo real")))
	running := semWaitState(t, c, cl, live.ID, api.StateRunning)

	st, err := cl.Cluster(semCtx(t), transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := st.StaleResults

	now := time.Now().UTC()
	forged := func(id string, attempt int, worker string, outcome api.Outcome) api.AttemptResult {
		return api.AttemptResult{TaskID: id, Attempt: attempt, Worker: worker, Outcome: outcome, ExitCode: 0,
			Output: "forged\n", StartedAt: now, FinishedAt: now}
	}
	stale := []api.AttemptResult{
		forged(id, 1, done.Worker, api.OutcomeSucceeded),                      // an old attempt of a finished task
		forged(id, 2, "w-impostor", api.OutcomeSucceeded),                     // the current attempt from the wrong worker
		forged(id, 3, done.Worker, api.OutcomeSucceeded),                      // an attempt that never was
		forged(id, 2, done.Worker, api.OutcomeFailed),                         // the current attempt with another outcome
		forged(live.ID, running.Attempt, "w-impostor", api.OutcomeSucceeded),  // a running task, wrong worker
		forged(live.ID, running.Attempt+1, running.Worker, api.OutcomeFailed), // a running task, future attempt
	}
	codes, err := cl.ReportResults(semCtx(t), stale)
	if err != nil {
		t.Fatalf("report stale results: %v", err)
	}
	for i, code := range codes {
		if code != api.CodeStaleAttempt {
			t.Errorf("stale result %d (%+v): code %q, want %q", i, stale[i], code, api.CodeStaleAttempt)
		}
	}
	// Unknown tasks are not found (and not stale).
	codes, err = cl.ReportResults(semCtx(t), []api.AttemptResult{forged(api.FormatTaskID(1<<40), 1, "w1", api.OutcomeSucceeded)})
	if err != nil || len(codes) != 1 || codes[0] != api.CodeNotFound {
		t.Errorf("result for an unknown task: codes %v err %v, want [%s]", codes, err, api.CodeNotFound)
	}

	st, err = cl.Cluster(semCtx(t), transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.StaleResults < before+uint64(len(stale)) {
		t.Errorf("stale_results went from %d to %d after %d stale results, want at least %d", before, st.StaleResults, len(stale), before+uint64(len(stale)))
	}
	// Every master counts them the same way.
	for _, n := range c.Masters {
		c.Eventually(semDeadline, "master "+n.ID+" to count the stale results", func() bool {
			return n.M.FSM().StaleResults() >= before+uint64(len(stale))
		})
	}

	// Nothing forged changed either task.
	after, err := cl.Task(semCtx(t), id, transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	semSucceededOnce(t, after, "ok\n")
	if after.Attempt != done.Attempt || len(after.Attempts) != len(done.Attempts) || !after.FinishedAt.Equal(done.FinishedAt) {
		t.Errorf("finished task changed by stale results: %+v, was %+v", after, done)
	}
	if got, err := cl.Task(semCtx(t), live.ID, transport.ReadOptions{}); err != nil || got.State != api.StateRunning || got.Attempt != running.Attempt {
		t.Errorf("running task after stale results: state %s attempt %d err %v, want still running attempt %d", got.State, got.Attempt, err, running.Attempt)
	}
	semTouch(t, gate)
	semSucceededOnce(t, c.WaitTerminal(cl, live.ID, semDeadline), "real\n")
}

// On an idle cluster a submission starts its task in the same Raft entry
// (its first attempt starts at its creation time); while no slot is free it
// waits for the dispatcher like any other, and never jumps the queue.
func TestSemantics_StartsAtSubmitWhenASlotIsFree(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 1})
	cl := c.Client()
	// The leader starts tasks at submit once gossip shows it every voter's
	// entry format (checked once a second): right after the start, a task
	// may still go through the dispatcher.
	var first api.Task
	deadline := time.Now().Add(semDeadline)
	for {
		first = c.WaitTerminal(cl, c.Submit(cl, Exec("true")).ID, semDeadline)
		if first.State != api.StateSucceeded || len(first.Attempts) != 1 {
			t.Fatalf("a task submitted to an idle cluster: %+v", first)
		}
		if first.Attempts[0].StartedAt.Equal(first.CreatedAt) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !first.Attempts[0].StartedAt.Equal(first.CreatedAt) {
		t.Errorf("no task submitted to an idle cluster started in its submit entry; the last: %+v", first)
	}

	gate := filepath.Join(t.TempDir(), "gate")
	blocker := c.Submit(cl, Exec(semGateScript(gate, "true"))).ID
	semWaitState(t, c, cl, blocker, api.StateRunning)
	next := c.Submit(cl, Exec("true"))
	if got, err := cl.Task(semCtx(t), next.ID, transport.ReadOptions{}); err != nil || got.State != api.StatePending {
		t.Errorf("task %s submitted while the only slot is taken: state %s err %v, want pending", next.ID, got.State, err)
	}
	semTouch(t, gate)
	done := c.WaitTerminal(cl, next.ID, semDeadline)
	if done.State != api.StateSucceeded || len(done.Attempts) != 1 || !done.Attempts[0].StartedAt.After(done.CreatedAt) {
		t.Errorf("task %s: %+v, want one attempt started by the dispatcher after its creation", next.ID, done)
	}
	if b := c.WaitTerminal(cl, blocker, semDeadline); b.State != api.StateSucceeded {
		t.Errorf("blocker %s: %s", blocker, b.State)
	}
}

// A leader starts tasks in their submit entry only when every voter applies
// that entry format: with one master standing in for an older version, every
// task is started by the dispatcher, in an assign entry of its own.
func TestSemantics_NoSubmitAssignBeforeEveryVoterAppliesIt(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2, Master: func(cfg *master.Config) {
		if cfg.ID == "m3" {
			cfg.EntryFormat = 1
		}
	}})
	cl := c.Client()
	for i := 0; i < 5; i++ {
		done := c.WaitTerminal(cl, c.Submit(cl, Exec("true")).ID, semDeadline)
		if done.State != api.StateSucceeded || len(done.Attempts) == 0 || done.Attempts[0].StartedAt.Equal(done.CreatedAt) {
			t.Fatalf("task %s was started in its submit entry although m3 does not apply that format: %+v", done.ID, done)
		}
	}
}

// TestSemantics_BinaryEntriesWaitForEveryVoter runs a rolling upgrade: while
// one voter applies only entry format 2, the leader writes JSON entries;
// once it restarts with the current format, the leader writes binary ones,
// and every replica applies both into the same state.
func TestSemantics_BinaryEntriesWaitForEveryVoter(t *testing.T) {
	var old atomic.Bool
	old.Store(true)
	c := NewCluster(t, Options{Workers: 1, Slots: 2, Master: func(cfg *master.Config) {
		if cfg.ID == "m3" && old.Load() {
			cfg.EntryFormat = fsm.ProtoSubmitAssign
		}
	}})
	cl := c.Client()
	for i := 0; i < 5; i++ {
		if done := c.WaitTerminal(cl, c.Submit(cl, Exec("true")).ID, semDeadline); done.State != api.StateSucceeded {
			t.Fatalf("task %s: %s", done.ID, done.State)
		}
	}
	for _, n := range c.Masters {
		if all, bin := n.M.AppliedEntries(); all == 0 || bin != 0 {
			t.Fatalf("%s applied %d entries, %d binary, while m3 applies format 2; want some, none binary", n.ID, all, bin)
		}
	}

	old.Store(false)
	m3 := c.Masters[2]
	c.StopMaster(m3)
	c.StartMaster(m3)
	var binaryEverywhere bool
	c.Eventually(30*time.Second, "every master applies binary entries", func() bool {
		if done := c.WaitTerminal(cl, c.Submit(cl, Exec("true")).ID, semDeadline); done.State != api.StateSucceeded {
			t.Fatalf("task %s: %s", done.ID, done.State)
		}
		binaryEverywhere = true
		for _, n := range c.Masters {
			if _, bin := n.M.AppliedEntries(); bin == 0 {
				binaryEverywhere = false
			}
		}
		return binaryEverywhere
	})
	c.WaitConverged()
}
