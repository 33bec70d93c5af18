package test

// Tests of what a failure does (exit codes that end a task at once, the
// output each attempt keeps) and of idempotency keys reused with another
// task, against in-process clusters. Nothing here asserts on durations.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/transport"
)

func TestSemantics_NoRetryExitCodes(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 4, Master: func(cfg *master.Config) { cfg.RetryBackoff = 50 * time.Millisecond }})
	cl := c.Client()
	for _, tt := range []struct {
		name     string
		spec     api.TaskSpec
		attempts int // attempts until the task failed
		exit     int
	}{
		{"a program that is not found fails at once", api.TaskSpec{Args: []string{"gantry-no-such-program"}, MaxAttempts: 5}, 1, 127},
		{"exit 127 from a shell fails at once", api.TaskSpec{Args: []string{"sh", "-c", "exit 127"}, MaxAttempts: 5}, 1, 127},
		{"a code the task names fails at once", api.TaskSpec{Args: []string{"sh", "-c", "exit 64"}, MaxAttempts: 5, NoRetryExitCodes: []int{2, 64}}, 1, 64},
		{"other codes are retried", api.TaskSpec{Args: []string{"sh", "-c", "exit 1"}, MaxAttempts: 2, NoRetryExitCodes: []int{2, 64}}, 2, 1},
		{"an empty list retries even 127", api.TaskSpec{Args: []string{"gantry-no-such-program"}, MaxAttempts: 2, NoRetryExitCodes: []int{}}, 2, 127},
	} {
		t.Run(tt.name, func(t *testing.T) {
			task := c.WaitTerminal(cl, c.Submit(cl, tt.spec).ID, semDeadline)
			if task.State != api.StateFailed || task.Attempt != tt.attempts || task.Failures != tt.attempts {
				t.Fatalf("state %s after %d attempts (%d failures), want failed after %d: %+v", task.State, task.Attempt, task.Failures, tt.attempts, task)
			}
			if task.Result == nil || task.Result.ExitCode != tt.exit {
				t.Fatalf("result %+v, want exit code %d", task.Result, tt.exit)
			}
			if want := tt.spec.NoRetryExitCodes; (want == nil) != (task.NoRetryExitCodes == nil) {
				t.Errorf("the task shows no_retry_exit_codes %v, submitted %v", task.NoRetryExitCodes, want)
			}
		})
	}
}

func TestSemantics_EarlierAttemptsKeepTheirOutput(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2, Master: func(cfg *master.Config) { cfg.RetryBackoff = 50 * time.Millisecond }})
	cl := c.Client()
	// Attempt 1 writes 100 KiB and ends with its error; attempt 2 succeeds.
	spec := Exec(`if [ "$GANTRY_ATTEMPT" = 1 ]; then i=0; while [ $i -lt 2000 ]; do echo "compiling unit $i of a long build ......................"; i=$((i+1)); done; echo "error: the first attempt failed here"; exit 3; fi; echo second`)
	spec.MaxAttempts = 2
	task := c.WaitTerminal(cl, c.Submit(cl, spec).ID, semDeadline)
	semSucceededOnce(t, task, "second\n")
	if len(task.Attempts) != 2 {
		t.Fatalf("%d attempts: %+v", len(task.Attempts), task.Attempts)
	}
	first := task.Attempts[0]
	if first.Outcome != api.OutcomeFailed || first.ExitCode != 3 {
		t.Errorf("attempt 1: outcome %s exit %d, want failed 3", first.Outcome, first.ExitCode)
	}
	if !strings.HasSuffix(first.Output, "error: the first attempt failed here\n") || len(first.Output) > api.MaxAttemptOutputBytes ||
		!strings.HasPrefix(first.Output, "[gantry: ") {
		t.Errorf("attempt 1 keeps %d bytes: %.120q ... %q", len(first.Output), first.Output, first.Output[max(0, len(first.Output)-60):])
	}
}

// A task's output past the limit keeps its beginning and its end, where a
// failing build prints its errors.
func TestSemantics_OutputKeepsHeadAndTail(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2})
	cl := c.Client()
	spec := Exec(`echo FIRST LINE; i=0; while [ $i -lt 4000 ]; do echo "line $i of the middle that nobody reads ........"; i=$((i+1)); done; echo LAST LINE; exit 2`)
	spec.MaxAttempts = 1
	task := c.WaitTerminal(cl, c.Submit(cl, spec).ID, semDeadline)
	r := task.Result
	if r == nil || !r.Truncated || len(r.Output) > api.MaxOutputBytes {
		t.Fatalf("result %+v", r)
	}
	if !strings.HasPrefix(r.Output, "FIRST LINE\n") || !strings.HasSuffix(r.Output, "LAST LINE\n") || !strings.Contains(r.Output, " bytes of output dropped] ...\n") {
		t.Errorf("output %d bytes: %.60q ... %q", len(r.Output), r.Output, r.Output[max(0, len(r.Output)-40):])
	}
}

// The same idempotency key with a different task is refused with 422
// naming the field, through any master, for one task and in a batch, and
// changes nothing; the same key with the same task still answers 200.
func TestSemantics_IdempotencyKeyReusedWithAnotherTask(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Slots: 2})
	cl := c.Client()
	orig := Exec("echo ORIGINAL")
	orig.IdempotencyKey = "import-2026-11-24"
	first, created, err := cl.Submit(semCtx(t), orig)
	if err != nil || !created {
		t.Fatalf("first submit: created %v err %v", created, err)
	}
	semSucceededOnce(t, c.WaitTerminal(cl, first.ID, semDeadline), "ORIGINAL\n")

	different, _ := json.Marshal(api.TaskSpec{Args: []string{"sh", "-c", "echo DIFFERENT"}})
	same, _ := json.Marshal(orig)
	for _, n := range c.Masters {
		status, out := semKeyedPost(t, c, n.URL()+"/v1/tasks", different, map[string]string{transport.HeaderIdempotencyKey: orig.IdempotencyKey})
		e := semDecode[api.Error](t, out)
		if status != http.StatusUnprocessableEntity || e.Code != api.CodeIdempotencyConflict || e.Field != "idempotency_key" || !strings.Contains(e.Message, first.ID) {
			t.Errorf("via %s: %d %s, want 422 idempotency_key_conflict naming the field and task %s", n.ID, status, out, first.ID)
		}
		status, out = semKeyedPost(t, c, n.URL()+"/v1/tasks", same, nil)
		if got := semDecode[api.Task](t, out); status != http.StatusOK || got.ID != first.ID {
			t.Errorf("identical repeat via %s: %d %s, want 200 with %s", n.ID, status, out, first.ID)
		}
	}
	// The typed client sees the sentinel.
	reuse := Exec("echo DIFFERENT")
	reuse.IdempotencyKey = orig.IdempotencyKey
	if _, _, err := cl.Submit(semCtx(t), reuse); !errors.Is(err, api.ErrIdempotencyConflict) {
		t.Errorf("client: %v, want ErrIdempotencyConflict", err)
	}
	// A batch with one reused key is refused whole.
	var specs []api.TaskSpec
	for i := range 3 {
		s := Exec(fmt.Sprintf("echo batch-%d", i))
		s.IdempotencyKey = fmt.Sprintf("batch-key-%d", i)
		specs = append(specs, s)
	}
	specs[1].IdempotencyKey = orig.IdempotencyKey
	for _, n := range c.Masters {
		_, err := c.Client(n).SubmitBatch(semCtx(t), specs)
		var e *api.Error
		if !errors.As(err, &e) || e.Code != api.CodeIdempotencyConflict || e.Field != "tasks[1].idempotency_key" || e.Status != http.StatusUnprocessableEntity {
			t.Errorf("batch via %s: %v, want 422 naming tasks[1].idempotency_key", n.ID, err)
		}
	}
	list, err := cl.List(semCtx(t), api.ListFilter{Limit: api.MaxListLimit}, transport.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Tasks) != 1 {
		t.Errorf("%d tasks after refused submissions, want only the original", len(list.Tasks))
	}
	after, err := cl.Task(semCtx(t), first.ID, transport.ReadOptions{})
	if err != nil || after.Result == nil || after.Result.Output != "ORIGINAL\n" || len(after.Args) != 3 || after.Args[2] != "echo ORIGINAL" {
		t.Errorf("the original task changed: %+v (%v)", after, err)
	}
	c.WaitConverged()
}
