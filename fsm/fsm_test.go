package fsm

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/hashicorp/raft"
)

func sec(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

// buildMixedState puts tasks in every state into h: pending (ready and
// delayed, with and without keys), running on two workers, succeeded,
// failed (by attempts and by poison), canceled, and one stale result.
func buildMixedState(t testing.TB, h *harness) {
	t.Helper()
	ids := make([]string, 0, 10)
	for i := range 10 {
		s := specWith(func(s *api.TaskSpec) {
			s.Args = []string{"job", fmt.Sprint(i)}
			s.Priority = i % 3
			if i%2 == 0 {
				s.IdempotencyKey = fmt.Sprintf("key-%d", i)
			}
			if i == 4 {
				s.MaxAttempts = 1
			}
		})
		ids = append(ids, h.mustSubmit(sec(i), s))
	}
	// 0: pending, never run. 1: running on w1. 2: running on w2.
	h.mustAssign(sec(20), ids[1], "w1")
	h.mustAssign(sec(20), ids[2], "w2")
	// 3: succeeded.
	h.mustSucceed(sec(21), ids[3], "w1")
	// 4: failed (max_attempts 1).
	h.mustAssign(sec(22), ids[4], "w1")
	h.mustResult(sec(23), ids[4], api.OutcomeFailed)
	// 5: pending, delayed retry after a timeout.
	h.mustAssign(sec(24), ids[5], "w2")
	h.mustResult(sec(25), ids[5], api.OutcomeTimeout)
	// 6: canceled while pending. 7: canceled while running.
	h.cancel(sec(26), ids[6])
	h.mustAssign(sec(26), ids[7], "w1")
	h.cancel(sec(27), ids[7])
	// 8: failed as poison.
	for range api.MaxLostAttempts {
		h.mustAssign(sec(28), ids[8], "w3")
		h.requeue(sec(29), api.OutcomeLost, h.ref(ids[8]))
	}
	// 9: pending after one lost and one undelivered attempt.
	h.mustAssign(sec(30), ids[9], "w3")
	h.requeue(sec(31), api.OutcomeLost, h.ref(ids[9]))
	h.mustAssign(sec(32), ids[9], "w1")
	h.requeue(sec(33), api.OutcomeUndelivered, h.ref(ids[9]))
	// One stale result.
	if err := h.result(sec(34), api.AttemptResult{TaskID: ids[1], Attempt: 1, Worker: "w9", Outcome: api.OutcomeSucceeded}); !errors.Is(err, api.ErrStaleAttempt) {
		t.Fatalf("stale result: %v", err)
	}
	checkInvariants(t, h.f)
}

// ---- submit ----

func TestSubmit_IDsAreSixteenHexDigitsInSequence(t *testing.T) {
	h := mustNewHarness(t)
	var got []string
	for i := range 3 {
		resp := h.submit(sec(i), spec("a"), spec("b"), spec("c"), spec("d"), spec("e"), spec("f"))
		for _, r := range resp.Results {
			got = append(got, r.ID)
		}
	}
	hex16 := regexp.MustCompile(`^[0-9a-f]{16}$`)
	for i, id := range got {
		if !hex16.MatchString(id) {
			t.Fatalf("ID %q is not 16 lowercase hex digits", id)
		}
		if want := fmt.Sprintf("%016x", i+1); id != want {
			t.Fatalf("ID %d = %s, want %s", i, id, want)
		}
	}
	if !slices.IsSorted(got) {
		t.Fatalf("IDs do not sort in submission order: %v", got)
	}
	if got[16] != "0000000000000011" {
		t.Fatalf("17th ID %s", got[16])
	}
}

func TestSubmit_StoresTheSpecAsAPendingTask(t *testing.T) {
	h := mustNewHarness(t)
	s := sampleEntries()[0].(*SubmitEntry).Tasks[1]
	id := h.mustSubmit(sec(5), s)
	task := wantState(t, h.f, id, api.StatePending)
	if task.Type != s.Type || !slices.Equal(task.Args, s.Args) || string(task.Payload) != string(s.Payload) ||
		task.Env["B"] != "<&>" || len(task.Env) != 2 || task.Timeout != "1m30s" || task.MaxAttempts != 5 ||
		task.Priority != -7 || task.IdempotencyKey != "order-42" {
		t.Fatalf("task does not carry its spec: %+v", task)
	}
	if !task.CreatedAt.Equal(sec(5)) || task.Attempt != 0 || task.Worker != "" || len(task.Attempts) != 0 ||
		!task.NotBefore.IsZero() || !task.StartedAt.IsZero() || !task.FinishedAt.IsZero() || task.Result != nil {
		t.Fatalf("new task has state it should not: %+v", task)
	}
	if c := h.f.Counts(); c != (api.TaskCounts{Pending: 1}) {
		t.Fatalf("counts %+v", c)
	}
}

func TestSubmit_IdempotencyKeyWithinOneEntry(t *testing.T) {
	h := mustNewHarness(t)
	k := func(key string) api.TaskSpec { return specWith(func(s *api.TaskSpec) { s.IdempotencyKey = key }) }
	resp := h.submit(t0, k("k1"), spec("x"), k("k1"), k("k2"), spec("y"), k("k2"))
	want := []SubmitOutcome{
		{ID: "0000000000000001"},
		{ID: "0000000000000002"},
		{ID: "0000000000000001", Existing: true},
		{ID: "0000000000000003"},
		{ID: "0000000000000004"},
		{ID: "0000000000000003", Existing: true},
	}
	if !slices.Equal(resp.Results, want) {
		t.Fatalf("results %+v, want %+v", resp.Results, want)
	}
	if c := h.f.Counts(); c.Pending != 4 {
		t.Fatalf("counts %+v, want 4 pending", c)
	}
	for key, id := range map[string]string{"k1": "0000000000000001", "k2": "0000000000000003"} {
		if got, ok := h.f.LookupKey(key); !ok || got != id {
			t.Fatalf("LookupKey(%s) = %s, %v; want %s", key, got, ok, id)
		}
	}
	if _, ok := h.f.LookupKey(""); ok {
		t.Fatal("the empty key is remembered")
	}
	checkInvariants(t, h.f)
}

func TestSubmit_IdempotencyKeyAcrossEntries(t *testing.T) {
	h := mustNewHarness(t)
	first := specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "order-1"; s.Args = []string{"first"} })
	id := h.mustSubmit(t0, first)
	h.mustSucceed(sec(1), id, "w1")
	before := mustJSON(t, h.mustGet(id))

	// A retry with the same spec yields the same task; the same key with
	// a different spec is a conflict, naming that task, and changes
	// nothing either.
	resp := h.submit(sec(2), first)
	if got := resp.Results[0]; got != (SubmitOutcome{ID: id, Existing: true}) {
		t.Fatalf("retry gave %+v, want existing %s", got, id)
	}
	again := specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "order-1"; s.Args = []string{"second"} })
	resp = h.submit(sec(2), again, spec("other"))
	if got := resp.Results[0]; got != (SubmitOutcome{ID: id, Existing: true, Conflict: true}) {
		t.Fatalf("reuse with another spec gave %+v, want a conflict with %s", got, id)
	}
	if got := resp.Results[1]; got != (SubmitOutcome{ID: "0000000000000002"}) {
		t.Fatalf("second spec gave %+v", got)
	}
	if after := mustJSON(t, h.mustGet(id)); after != before {
		t.Fatalf("existing task changed:\n%s\n%s", before, after)
	}
	if c := h.f.Counts(); c != (api.TaskCounts{Pending: 1, Succeeded: 1}) {
		t.Fatalf("counts %+v", c)
	}
}

func TestSubmit_BatchOfMany(t *testing.T) {
	h := mustNewHarness(t)
	specs := make([]api.TaskSpec, api.MaxBatchTasks)
	for i := range specs {
		specs[i] = specWith(func(s *api.TaskSpec) {
			s.Args = []string{"n", fmt.Sprint(i)}
			s.IdempotencyKey = fmt.Sprint("k", i%500)
		})
	}
	resp := h.submit(t0, specs...)
	if len(resp.Results) != len(specs) {
		t.Fatalf("%d results for %d specs", len(resp.Results), len(specs))
	}
	for i, r := range resp.Results {
		if want := api.FormatTaskID(uint64(i%500) + 1); r.ID != want || r.Existing != (i >= 500) {
			t.Fatalf("result %d = %+v, want ID %s existing=%v", i, r, want, i >= 500)
		}
	}
	if c := h.f.Counts(); c.Pending != 500 {
		t.Fatalf("counts %+v", c)
	}
	if got := listAll(t, h.f, "", 64); len(got) != 500 {
		t.Fatalf("listed %d tasks", len(got))
	}
	checkInvariants(t, h.f)
}

func TestSubmit_EmptyEntry(t *testing.T) {
	h := mustNewHarness(t)
	if resp := h.submit(t0); len(resp.Results) != 0 {
		t.Fatalf("results %+v", resp.Results)
	}
	if id := h.mustSubmit(t0, spec("x")); id != "0000000000000001" {
		t.Fatalf("first ID after an empty submit is %s", id)
	}
}

// ---- assign ----

func TestAssign_StartsAPendingTask(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	if !h.assign(sec(3), id, 1, "w1") {
		t.Fatal("assign refused")
	}
	task := wantState(t, h.f, id, api.StateRunning)
	want := []api.AttemptRecord{{Attempt: 1, Worker: "w1", Outcome: api.OutcomeRunning, StartedAt: sec(3)}}
	if task.Attempt != 1 || task.Worker != "w1" || !task.StartedAt.Equal(sec(3)) || !slices.Equal(task.Attempts, want) {
		t.Fatalf("running task %+v", task)
	}
	if c := h.f.Counts(); c != (api.TaskCounts{Running: 1}) {
		t.Fatalf("counts %+v", c)
	}
	running := h.f.Running()
	wantRunning := []RunningAttempt{{AttemptRef: api.AttemptRef{TaskID: id, Attempt: 1}, Worker: "w1", StartedAt: sec(3)}}
	if len(running) != 1 || !slices.Equal(running["w1"], wantRunning) {
		t.Fatalf("running %+v", running)
	}
	if rc := h.f.RunningCounts(); len(rc) != 1 || rc["w1"] != 1 {
		t.Fatalf("running counts %v", rc)
	}
	if ready, _ := h.f.Ready(farFuture, 10); len(ready) != 0 {
		t.Fatalf("running task still ready: %v", ids(ready))
	}
}

func TestAssign_AppendsToAttemptHistory(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	h.mustAssign(sec(1), id, "w1")
	h.mustResult(sec(2), id, api.OutcomeReleased)
	h.mustAssign(sec(3), id, "w2")
	task := h.mustGet(id)
	want := []api.AttemptRecord{
		{Attempt: 1, Worker: "w1", Outcome: api.OutcomeReleased, StartedAt: sec(1), FinishedAt: sec(2)},
		{Attempt: 2, Worker: "w2", Outcome: api.OutcomeRunning, StartedAt: sec(3)},
	}
	if !slices.Equal(task.Attempts, want) {
		t.Fatalf("attempts %+v, want %+v", task.Attempts, want)
	}
}

func TestAssign_Refusals(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the task ID and the time of its next possible assign.
		setup   func(h *harness) (id string, attempt int, worker string, at time.Time)
		unknown bool
	}{
		{"unknown id", func(h *harness) (string, int, string, time.Time) {
			return "00000000000000ff", 1, "w1", sec(1)
		}, true},
		{"malformed id", func(h *harness) (string, int, string, time.Time) {
			return "not-an-id", 1, "w1", sec(1)
		}, true},
		{"empty worker", func(h *harness) (string, int, string, time.Time) {
			return h.mustSubmit(t0, spec("x")), 1, "", sec(1)
		}, false},
		{"attempt zero", func(h *harness) (string, int, string, time.Time) {
			return h.mustSubmit(t0, spec("x")), 0, "w1", sec(1)
		}, false},
		{"attempt skips one", func(h *harness) (string, int, string, time.Time) {
			return h.mustSubmit(t0, spec("x")), 2, "w1", sec(1)
		}, false},
		{"attempt repeats the last", func(h *harness) (string, int, string, time.Time) {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(2), id, api.OutcomeReleased)
			return id, 1, "w1", sec(3)
		}, false},
		{"negative attempt", func(h *harness) (string, int, string, time.Time) {
			return h.mustSubmit(t0, spec("x")), -1, "w1", sec(1)
		}, false},
		{"already running", func(h *harness) (string, int, string, time.Time) {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			return id, 2, "w2", sec(2)
		}, false},
		{"succeeded", func(h *harness) (string, int, string, time.Time) {
			id := h.mustSubmit(t0, spec("x"))
			h.mustSucceed(sec(1), id, "w1")
			return id, 2, "w1", sec(2)
		}, false},
		{"failed", func(h *harness) (string, int, string, time.Time) {
			id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 1 }))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(1), id, api.OutcomeFailed)
			return id, 2, "w1", farFuture
		}, false},
		{"canceled", func(h *harness) (string, int, string, time.Time) {
			id := h.mustSubmit(t0, spec("x"))
			h.cancel(sec(1), id)
			return id, 1, "w1", sec(2)
		}, false},
		{"not yet due after a failure", func(h *harness) (string, int, string, time.Time) {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(10), id, api.OutcomeFailed) // due at sec(10)+base
			return id, 2, "w1", sec(10).Add(base - time.Nanosecond)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id, attempt, worker, at := tt.setup(h)
			before, _ := h.f.Get(id)
			counts := h.f.Counts()
			if h.assign(at, id, attempt, worker) {
				t.Fatalf("assign of %s attempt %d to %q accepted", id, attempt, worker)
			}
			after, ok := h.f.Get(id)
			if ok == tt.unknown {
				t.Fatalf("task exists=%v after refused assign", ok)
			}
			if mustJSON(t, after) != mustJSON(t, before) || h.f.Counts() != counts {
				t.Fatalf("refused assign changed the task:\n%+v\n%+v", before, after)
			}
			checkInvariants(t, h.f)
		})
	}
}

func TestAssign_DelayedTaskAcceptedOnceDue(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	h.mustAssign(sec(1), id, "w1")
	h.mustResult(sec(10), id, api.OutcomeFailed)
	due := sec(10).Add(api.Backoff(base, 1))
	if task := h.mustGet(id); !task.NotBefore.Equal(due) {
		t.Fatalf("not_before %v, want %v", task.NotBefore, due)
	}
	if !h.assign(due, id, 2, "w2") {
		t.Fatal("assign at exactly not_before refused")
	}
	if task := h.mustGet(id); !task.NotBefore.IsZero() || task.Worker != "w2" {
		t.Fatalf("task after assign: %+v", task)
	}
	checkInvariants(t, h.f)
}

func TestAssign_SeveralInOneEntry(t *testing.T) {
	h := mustNewHarness(t)
	a := h.mustSubmit(t0, spec("a"))
	b := h.mustSubmit(t0, spec("b"))
	resp := as[*AssignResponse](t, h.apply(&AssignEntry{At: sec(1), Assignments: []Assignment{
		{TaskID: a, Attempt: 1, Worker: "w1"},
		{TaskID: b, Attempt: 1, Worker: "w2"},
		{TaskID: a, Attempt: 1, Worker: "w3"}, // a is running now
		{TaskID: "0000000000000009", Attempt: 1, Worker: "w1"},
	}}))
	if want := []bool{true, true, false, false}; !slices.Equal(resp.Accepted, want) {
		t.Fatalf("accepted %v, want %v", resp.Accepted, want)
	}
	if task := h.mustGet(a); task.Worker != "w1" {
		t.Fatalf("a runs on %s", task.Worker)
	}
	checkInvariants(t, h.f)
}

// ---- result ----

func TestResult_SucceededIsTerminalWithItsResult(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	h.mustAssign(sec(1), id, "w1")
	res := api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded, ExitCode: 0, Output: "done", Truncated: true, Error: ""}
	wantErr(t, h.result(sec(4), res), nil)
	task := wantState(t, h.f, id, api.StateSucceeded)
	if !task.FinishedAt.Equal(sec(4)) || task.Result == nil || *task.Result != (api.Result{Output: "done", Truncated: true}) {
		t.Fatalf("succeeded task %+v result %+v", task, task.Result)
	}
	if a := task.Attempts[0]; a.Outcome != api.OutcomeSucceeded || !a.FinishedAt.Equal(sec(4)) {
		t.Fatalf("attempt record %+v", a)
	}
	if c := h.f.Counts(); c != (api.TaskCounts{Succeeded: 1}) {
		t.Fatalf("counts %+v", c)
	}
	if len(h.f.Running()) != 0 || len(h.f.RunningCounts()) != 0 {
		t.Fatalf("finished attempt still running: %v", h.f.Running())
	}
	if at, ok := h.f.OldestFinished(); !ok || !at.Equal(sec(4)) {
		t.Fatalf("OldestFinished = %v, %v", at, ok)
	}
}

func TestResult_FailureRetriesWithBackoffUntilMaxAttempts(t *testing.T) {
	for _, outcome := range []api.Outcome{api.OutcomeFailed, api.OutcomeTimeout} {
		t.Run(string(outcome), func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 4 }))
			backoff := 3 * time.Second
			at := sec(10)
			for n := 1; n <= 4; n++ {
				h.mustAssign(at, id, fmt.Sprint("w", n))
				at = at.Add(time.Minute)
				res := h.report(id, outcome)
				res.ExitCode, res.Error = 7, "boom"
				resp := as[*ResultResponse](t, h.apply(&ResultEntry{At: at, BackoffBase: backoff, Results: []api.AttemptResult{res}}))
				wantErr(t, resp.Errors[0], nil)
				task := h.mustGet(id)
				if task.Failures != n || task.Result == nil || task.Result.ExitCode != 7 || task.Result.Error != "boom" {
					t.Fatalf("after failure %d: %+v", n, task)
				}
				if a := task.Attempts[n-1]; a.Outcome != outcome || a.Error != "boom" || !a.FinishedAt.Equal(at) {
					t.Fatalf("attempt record %+v", a)
				}
				if n < 4 {
					wantState(t, h.f, id, api.StatePending)
					due := at.Add(api.Backoff(backoff, n))
					if !task.NotBefore.Equal(due) || !task.FinishedAt.IsZero() {
						t.Fatalf("after failure %d: not_before %v, want %v; finished_at %v", n, task.NotBefore, due, task.FinishedAt)
					}
					at = due
				} else {
					wantState(t, h.f, id, api.StateFailed)
					if !task.FinishedAt.Equal(at) || !task.NotBefore.IsZero() {
						t.Fatalf("failed task %+v", task)
					}
				}
				checkInvariants(t, h.f)
			}
			if c := h.f.Counts(); c != (api.TaskCounts{Failed: 1}) {
				t.Fatalf("counts %+v", c)
			}
		})
	}
}

func TestResult_BackoffComesFromTheEntry(t *testing.T) {
	for _, b := range []time.Duration{0, time.Millisecond, 7 * time.Second, time.Hour} {
		h := mustNewHarness(t)
		id := h.mustSubmit(t0, spec("x"))
		h.mustAssign(sec(1), id, "w1")
		h.apply(&ResultEntry{At: sec(2), BackoffBase: b, Results: []api.AttemptResult{h.report(id, api.OutcomeFailed)}})
		task := h.mustGet(id)
		if want := sec(2).Add(api.Backoff(b, 1)); !task.NotBefore.Equal(want) {
			t.Fatalf("base %v: not_before %v, want %v", b, task.NotBefore, want)
		}
		checkInvariants(t, h.f)
	}
}

func TestResult_ReleasedOrCanceledByWorkerRequeuesWithoutPenalty(t *testing.T) {
	for _, outcome := range []api.Outcome{api.OutcomeReleased, api.OutcomeCanceled} {
		t.Run(string(outcome), func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 1 }))
			for n := 1; n <= 3; n++ {
				h.mustAssign(sec(n), id, "w1")
				h.mustResult(sec(n), id, outcome)
				task := wantState(t, h.f, id, api.StatePending)
				if task.Failures != 0 || task.Lost != 0 || !task.NotBefore.IsZero() || !task.FinishedAt.IsZero() {
					t.Fatalf("handed-back task %+v", task)
				}
				if a := task.Attempts[n-1]; a.Outcome != api.OutcomeReleased {
					t.Fatalf("attempt record outcome %s, want released", a.Outcome)
				}
				if ready, _ := h.f.Ready(sec(n), 10); len(ready) != 1 || ready[0].ID != id {
					t.Fatalf("handed-back task not ready at once: %v", ids(ready))
				}
			}
			checkInvariants(t, h.f)
		})
	}
}

func TestResult_RefusesStaleAttempt(t *testing.T) {
	tests := []struct {
		name  string
		setup func(h *harness) api.AttemptResult
	}{
		{"older attempt", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.requeue(sec(2), api.OutcomeLost, h.ref(id))
			h.mustAssign(sec(3), id, "w1")
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}
		}},
		{"future attempt", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			return api.AttemptResult{TaskID: id, Attempt: 2, Worker: "w1", Outcome: api.OutcomeSucceeded}
		}},
		{"wrong worker", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w2", Outcome: api.OutcomeSucceeded}
		}},
		{"never assigned", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}
		}},
		{"attempt requeued as lost", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.requeue(sec(2), api.OutcomeLost, h.ref(id))
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}
		}},
		{"attempt requeued as undelivered", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.requeue(sec(2), api.OutcomeUndelivered, h.ref(id))
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeFailed}
		}},
		{"task canceled while running", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.cancel(sec(2), id)
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}
		}},
		{"other outcome after success", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustSucceed(sec(1), id, "w1")
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeFailed}
		}},
		{"same outcome after success from another worker", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustSucceed(sec(1), id, "w1")
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w2", Outcome: api.OutcomeSucceeded}
		}},
		{"success after a failure was accepted", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(2), id, api.OutcomeFailed)
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}
		}},
		{"failure after a release was accepted", func(h *harness) api.AttemptResult {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(2), id, api.OutcomeReleased)
			return api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeFailed}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			res := tt.setup(h)
			before := mustJSON(t, h.mustGet(res.TaskID))
			stale := h.f.StaleResults()
			err := h.result(sec(50), res)
			wantErr(t, err, api.ErrStaleAttempt)
			if api.StatusOf(err) != 409 {
				t.Fatalf("status %d", api.StatusOf(err))
			}
			if got := h.f.StaleResults(); got != stale+1 {
				t.Fatalf("stale results %d, want %d", got, stale+1)
			}
			if after := mustJSON(t, h.mustGet(res.TaskID)); after != before {
				t.Fatalf("stale result changed the task:\n%s\n%s", before, after)
			}
			checkInvariants(t, h.f)
		})
	}
}

func TestResult_DuplicateReportIsAcceptedIdempotently(t *testing.T) {
	tests := []struct {
		outcome api.Outcome
		state   api.TaskState
	}{
		{api.OutcomeSucceeded, api.StateSucceeded},
		{api.OutcomeFailed, api.StatePending},
		{api.OutcomeTimeout, api.StatePending},
		{api.OutcomeReleased, api.StatePending},
		{api.OutcomeCanceled, api.StatePending}, // canceled by the worker itself
	}
	for _, tt := range tests {
		t.Run(string(tt.outcome), func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			res := h.report(id, tt.outcome)
			wantErr(t, h.result(sec(2), res), nil)
			before := mustJSON(t, wantState(t, h.f, id, tt.state))
			for range 3 {
				wantErr(t, h.result(sec(3), res), nil)
			}
			if after := mustJSON(t, h.mustGet(id)); after != before {
				t.Fatalf("duplicate changed the task:\n%s\n%s", before, after)
			}
			if n := h.f.StaleResults(); n != 0 {
				t.Fatalf("duplicates counted as %d stale results", n)
			}
			checkInvariants(t, h.f)
		})
	}
}

func TestResult_WorkerCanceledReportAfterCancelIsAccepted(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	h.mustAssign(sec(1), id, "w1")
	h.cancel(sec(2), id)
	before := mustJSON(t, h.mustGet(id))
	wantErr(t, h.result(sec(3), api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeCanceled}), nil)
	if after := mustJSON(t, h.mustGet(id)); after != before || h.f.StaleResults() != 0 {
		t.Fatalf("canceled report after cancel changed the task or counted stale:\n%s\n%s", before, after)
	}
}

func TestResult_UnknownTaskIsNotFound(t *testing.T) {
	h := mustNewHarness(t)
	h.mustSubmit(t0, spec("x"))
	for _, id := range []string{"0000000000000002", "ffffffffffffffff", "nope", ""} {
		err := h.result(sec(1), api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded})
		wantErr(t, err, api.ErrNotFound)
		if errors.Is(err, api.ErrStaleAttempt) {
			t.Fatalf("not-found is also stale: %v", err)
		}
	}
	if n := h.f.StaleResults(); n != 0 {
		t.Fatalf("unknown tasks counted as %d stale results", n)
	}
}

func TestResult_SeveralInOneEntry(t *testing.T) {
	h := mustNewHarness(t)
	a := h.mustSubmit(t0, spec("a"))
	b := h.mustSubmit(t0, spec("b"))
	h.mustAssign(sec(1), a, "w1")
	h.mustAssign(sec(1), b, "w2")
	ok := h.report(a, api.OutcomeSucceeded)
	resp := as[*ResultResponse](t, h.apply(&ResultEntry{At: sec(2), BackoffBase: base, Results: []api.AttemptResult{
		ok,
		{TaskID: b, Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}, // wrong worker
		{TaskID: "0000000000000063", Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded},
		ok, // the same report twice in one entry
		h.report(b, api.OutcomeFailed),
	}}))
	if len(resp.Errors) != 5 {
		t.Fatalf("%d errors", len(resp.Errors))
	}
	wantErr(t, resp.Errors[0], nil)
	wantErr(t, resp.Errors[1], api.ErrStaleAttempt)
	wantErr(t, resp.Errors[2], api.ErrNotFound)
	wantErr(t, resp.Errors[3], nil)
	wantErr(t, resp.Errors[4], nil)
	if h.f.StaleResults() != 1 {
		t.Fatalf("stale results %d, want 1", h.f.StaleResults())
	}
	wantState(t, h.f, a, api.StateSucceeded)
	wantState(t, h.f, b, api.StatePending)
	checkInvariants(t, h.f)
}

// ---- requeue ----

func TestRequeue_LostRequeuesUntilPoison(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 1 }))
	for n := 1; n <= api.MaxLostAttempts; n++ {
		h.mustAssign(sec(n), id, fmt.Sprint("w", n))
		if got := h.requeue(sec(n).Add(time.Millisecond), api.OutcomeLost, h.ref(id)); !slices.Equal(got, []bool{true}) {
			t.Fatalf("requeue %d: %v", n, got)
		}
		task := h.mustGet(id)
		a := task.Attempts[n-1]
		if task.Lost != n || task.Failures != 0 || a.Outcome != api.OutcomeLost || a.Error != "worker w gone" || !a.FinishedAt.Equal(sec(n).Add(time.Millisecond)) {
			t.Fatalf("after loss %d: %+v", n, task)
		}
		if n < api.MaxLostAttempts {
			wantState(t, h.f, id, api.StatePending)
			if !task.NotBefore.IsZero() {
				t.Fatalf("lost attempt delays the retry to %v", task.NotBefore)
			}
		} else {
			wantState(t, h.f, id, api.StateFailed)
			if task.Result == nil || task.Result.ExitCode != -1 || !strings.Contains(task.Result.Error, "poison") ||
				!task.FinishedAt.Equal(sec(n).Add(time.Millisecond)) {
				t.Fatalf("poisoned task %+v result %+v", task, task.Result)
			}
		}
		checkInvariants(t, h.f)
	}
}

func TestRequeue_UndeliveredDoesNotCount(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	for n := 1; n <= 2*api.MaxLostAttempts; n++ {
		h.mustAssign(sec(n), id, "w1")
		if got := h.requeue(sec(n), api.OutcomeUndelivered, h.ref(id)); !got[0] {
			t.Fatalf("requeue %d refused", n)
		}
		task := wantState(t, h.f, id, api.StatePending)
		if task.Lost != 0 || task.Failures != 0 || task.Attempts[n-1].Outcome != api.OutcomeUndelivered || !task.NotBefore.IsZero() {
			t.Fatalf("after undelivered %d: %+v", n, task)
		}
	}
	checkInvariants(t, h.f)
}

func TestRequeue_AnyOtherOutcomeCountsAsLost(t *testing.T) {
	for _, outcome := range []api.Outcome{"", api.OutcomeFailed, "bogus"} {
		h := mustNewHarness(t)
		id := h.mustSubmit(t0, spec("x"))
		h.mustAssign(sec(1), id, "w1")
		h.requeue(sec(2), outcome, h.ref(id))
		if task := h.mustGet(id); task.Lost != 1 || task.Attempts[0].Outcome != api.OutcomeLost {
			t.Fatalf("outcome %q: %+v", outcome, task)
		}
	}
}

func TestRequeue_IgnoresStaleRefs(t *testing.T) {
	tests := []struct {
		name  string
		setup func(h *harness) api.AttemptRef
	}{
		{"unknown task", func(h *harness) api.AttemptRef { return api.AttemptRef{TaskID: "0000000000000042", Attempt: 1} }},
		{"malformed id", func(h *harness) api.AttemptRef { return api.AttemptRef{TaskID: "x", Attempt: 1} }},
		{"pending task", func(h *harness) api.AttemptRef {
			return api.AttemptRef{TaskID: h.mustSubmit(t0, spec("x")), Attempt: 0}
		}},
		{"older attempt", func(h *harness) api.AttemptRef {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(2), id, api.OutcomeReleased)
			h.mustAssign(sec(3), id, "w2")
			return api.AttemptRef{TaskID: id, Attempt: 1}
		}},
		{"attempt already requeued", func(h *harness) api.AttemptRef {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			ref := h.ref(id)
			h.requeue(sec(2), api.OutcomeLost, ref)
			return ref
		}},
		{"succeeded task", func(h *harness) api.AttemptRef {
			id := h.mustSubmit(t0, spec("x"))
			h.mustSucceed(sec(1), id, "w1")
			return h.ref(id)
		}},
		{"canceled task", func(h *harness) api.AttemptRef {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.cancel(sec(2), id)
			return h.ref(id)
		}},
	}
	for _, tt := range tests {
		for _, outcome := range []api.Outcome{api.OutcomeLost, api.OutcomeUndelivered} {
			t.Run(tt.name+"/"+string(outcome), func(t *testing.T) {
				h := mustNewHarness(t)
				ref := tt.setup(h)
				before := fingerprint(t, h.f)
				if got := h.requeue(sec(9), outcome, ref); !slices.Equal(got, []bool{false}) {
					t.Fatalf("requeued %v", got)
				}
				if after := fingerprint(t, h.f); after != before {
					t.Fatalf("ignored requeue changed state:\n%s\n%s", before, after)
				}
			})
		}
	}
}

func TestRequeue_SeveralInOneEntry(t *testing.T) {
	h := mustNewHarness(t)
	a := h.mustSubmit(t0, spec("a"))
	b := h.mustSubmit(t0, spec("b"))
	h.mustAssign(sec(1), a, "w1")
	h.mustAssign(sec(1), b, "w1")
	got := h.requeue(sec(2), api.OutcomeLost, h.ref(a), api.AttemptRef{TaskID: b, Attempt: 7}, h.ref(b), h.ref(a))
	if want := []bool{true, false, true, false}; !slices.Equal(got, want) {
		t.Fatalf("requeued %v, want %v", got, want)
	}
	if c := h.f.Counts(); c != (api.TaskCounts{Pending: 2}) || len(h.f.Running()) != 0 {
		t.Fatalf("counts %+v running %v", c, h.f.Running())
	}
	if h.mustGet(a).Lost != 1 {
		t.Fatal("the second ref of a counted again")
	}
	checkInvariants(t, h.f)
}

// ---- cancel ----

func TestCancel(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(h *harness) string
		err         error
		running     bool
		wantOutcome api.Outcome // of the last attempt after cancel, when there is one
	}{
		{"pending", func(h *harness) string { return h.mustSubmit(t0, spec("x")) }, nil, false, ""},
		{"pending delayed", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(2), id, api.OutcomeFailed)
			return id
		}, nil, false, api.OutcomeFailed},
		{"running", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w7")
			return id
		}, nil, true, api.OutcomeCanceled},
		{"succeeded", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			h.mustSucceed(sec(1), id, "w1")
			return id
		}, api.ErrConflict, false, api.OutcomeSucceeded},
		{"failed", func(h *harness) string {
			id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 1 }))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(2), id, api.OutcomeTimeout)
			return id
		}, api.ErrConflict, false, api.OutcomeTimeout},
		{"canceled", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			h.cancel(sec(1), id)
			return id
		}, api.ErrConflict, false, ""},
		{"unknown", func(h *harness) string { return "00000000000000aa" }, api.ErrNotFound, false, ""},
		{"malformed", func(h *harness) string { return "../etc" }, api.ErrNotFound, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id := tt.setup(h)
			before, existed := h.f.Get(id)
			resp := h.cancel(sec(30), id)
			wantErr(t, resp.Err, tt.err)
			if tt.running {
				if resp.Running == nil || *resp.Running != (api.AttemptRef{TaskID: id, Attempt: before.Attempt}) || resp.Worker != before.Worker {
					t.Fatalf("cancel of a running task answered %+v %+v", resp, resp.Running)
				}
			} else if resp.Running != nil || resp.Worker != "" {
				t.Fatalf("cancel answered running attempt %+v on %q", resp.Running, resp.Worker)
			}
			after, ok := h.f.Get(id)
			if ok != existed {
				t.Fatalf("task exists=%v after cancel", ok)
			}
			switch {
			case !existed:
			case tt.err != nil:
				if mustJSON(t, after) != mustJSON(t, before) {
					t.Fatalf("refused cancel changed the task:\n%+v\n%+v", before, after)
				}
			default:
				if after.State != api.StateCanceled || !after.FinishedAt.Equal(sec(30)) || !after.NotBefore.IsZero() {
					t.Fatalf("canceled task %+v", after)
				}
				if got := h.f.Counts(); got.Canceled != 1 || got.Pending+got.Running != 0 {
					t.Fatalf("counts %+v", got)
				}
			}
			if n := len(after.Attempts); n > 0 && after.Attempts[n-1].Outcome != tt.wantOutcome {
				t.Fatalf("last attempt outcome %s, want %s", after.Attempts[n-1].Outcome, tt.wantOutcome)
			}
			if len(h.f.Running()) != 0 {
				t.Fatalf("still running: %v", h.f.Running())
			}
			checkInvariants(t, h.f)
		})
	}
}

// ---- terminal states ----

func TestTerminalStates_AreFinal(t *testing.T) {
	tests := []struct {
		name  string
		setup func(h *harness) string
	}{
		{"succeeded", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			h.mustSucceed(sec(1), id, "w1")
			return id
		}},
		{"failed by attempts", func(h *harness) string {
			id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 1 }))
			h.mustAssign(sec(1), id, "w1")
			h.mustResult(sec(2), id, api.OutcomeFailed)
			return id
		}},
		{"failed as poison", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			for range api.MaxLostAttempts {
				h.mustAssign(sec(1), id, "w1")
				h.requeue(sec(2), api.OutcomeLost, h.ref(id))
			}
			return id
		}},
		{"canceled while pending", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			h.cancel(sec(1), id)
			return id
		}},
		{"canceled while running", func(h *harness) string {
			id := h.mustSubmit(t0, spec("x"))
			h.mustAssign(sec(1), id, "w1")
			h.cancel(sec(2), id)
			return id
		}},
	}
	outcomes := []api.Outcome{api.OutcomeSucceeded, api.OutcomeFailed, api.OutcomeTimeout, api.OutcomeCanceled, api.OutcomeReleased, api.OutcomeLost, api.OutcomeUndelivered, api.OutcomeRunning, ""}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id := tt.setup(h)
			task := h.mustGet(id)
			if !task.State.Terminal() {
				t.Fatalf("setup left the task %s", task.State)
			}
			before := mustJSON(t, task)
			counts := h.f.Counts()
			at := sec(100)
			for attempt := task.Attempt - 1; attempt <= task.Attempt+2; attempt++ {
				for _, w := range []string{"w1", "w2", task.Worker} {
					if h.assign(at, id, attempt, w) {
						t.Fatalf("assign attempt %d to %s accepted", attempt, w)
					}
					for _, o := range outcomes {
						h.result(at, api.AttemptResult{TaskID: id, Attempt: attempt, Worker: w, Outcome: o})
					}
				}
				h.requeue(at, api.OutcomeLost, api.AttemptRef{TaskID: id, Attempt: attempt})
				h.requeue(at, api.OutcomeUndelivered, api.AttemptRef{TaskID: id, Attempt: attempt})
			}
			wantErr(t, h.cancel(at, id).Err, api.ErrConflict)
			h.submit(at, specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "unrelated" }))
			if after := mustJSON(t, h.mustGet(id)); after != before {
				t.Fatalf("terminal task changed:\n%s\n%s", before, after)
			}
			if c := h.f.Counts(); c.Pending != counts.Pending+1 || c.Running != 0 {
				t.Fatalf("counts %+v (before %+v)", c, counts)
			}
			checkInvariants(t, h.f)
		})
	}
}

// ---- gc ----

func TestGC_RemovesOldTerminalTasksOldestFirst(t *testing.T) {
	h := mustNewHarness(t)
	key := func(k string) api.TaskSpec {
		return specWith(func(s *api.TaskSpec) { s.IdempotencyKey = k; s.MaxAttempts = 1 })
	}
	a := h.mustSubmit(t0, key("a"))    // finishes at sec(5)
	b := h.mustSubmit(t0, key("b"))    // finishes at sec(2)
	c := h.mustSubmit(t0, key("c"))    // finishes at sec(3)
	d := h.mustSubmit(t0, key("d"))    // finishes at sec(10), exactly at Before
	e := h.mustSubmit(t0, key("e"))    // finishes at sec(11)
	live := h.mustSubmit(t0, key("p")) // stays pending
	run := h.mustSubmit(t0, key("r"))  // stays running
	h.mustSucceed(sec(5), a, "w1")
	h.mustAssign(sec(1), b, "w1")
	h.mustResult(sec(2), b, api.OutcomeFailed)
	h.cancel(sec(3), c)
	h.cancel(sec(10), d)
	h.mustSucceed(sec(11), e, "w1")
	h.mustAssign(sec(1), run, "w2")
	checkInvariants(t, h.f)

	if n := h.gc(sec(20), sec(10), 0); n != 0 {
		t.Fatalf("gc with limit 0 removed %d", n)
	}
	if n := h.gc(sec(20), sec(10), -1); n != 0 {
		t.Fatalf("gc with limit -1 removed %d", n)
	}
	if n := h.gc(sec(20), sec(10), 2); n != 2 {
		t.Fatalf("gc removed %d, want 2", n)
	}
	gone := func(id, k string) {
		t.Helper()
		if _, ok := h.f.Get(id); ok {
			t.Fatalf("task %s still there", id)
		}
		if _, ok := h.f.LookupKey(k); ok {
			t.Fatalf("key %s still remembered", k)
		}
	}
	kept := func(id, k string) {
		t.Helper()
		h.mustGet(id)
		if got, ok := h.f.LookupKey(k); !ok || got != id {
			t.Fatalf("key %s lost", k)
		}
	}
	gone(b, "b")
	gone(c, "c")
	kept(a, "a")
	if at, ok := h.f.OldestFinished(); !ok || !at.Equal(sec(5)) {
		t.Fatalf("OldestFinished = %v, %v; want %v", at, ok, sec(5))
	}
	checkInvariants(t, h.f)

	if n := h.gc(sec(21), sec(10), 100); n != 1 {
		t.Fatalf("second gc removed %d, want 1 (only a)", n)
	}
	gone(a, "a")
	kept(d, "d")
	kept(e, "e")
	kept(live, "p")
	kept(run, "r")
	if c := h.f.Counts(); c != (api.TaskCounts{Pending: 1, Running: 1, Succeeded: 1, Canceled: 1}) {
		t.Fatalf("counts %+v", c)
	}
	checkInvariants(t, h.f)

	// A forgotten key makes a new task, with a new ID.
	resp := h.submit(sec(22), key("b"), key("p"))
	if got := resp.Results[0]; got.Existing || got.ID != "0000000000000008" {
		t.Fatalf("resubmitted forgotten key: %+v", got)
	}
	if got := resp.Results[1]; !got.Existing || got.ID != live {
		t.Fatalf("resubmitted retained key: %+v", got)
	}

	// Everything terminal can go; live tasks never do.
	if n := h.gc(sec(30), farFuture, 100); n != 2 {
		t.Fatalf("final gc removed %d, want 2", n)
	}
	if _, ok := h.f.OldestFinished(); ok {
		t.Fatal("OldestFinished with no terminal task")
	}
	if c := h.f.Counts(); c != (api.TaskCounts{Pending: 2, Running: 1}) {
		t.Fatalf("counts %+v", c)
	}
	checkInvariants(t, h.f)
}

// ---- ready ----

func TestReady_HigherPriorityFirstThenFIFO(t *testing.T) {
	h := mustNewHarness(t)
	prios := []int{0, 5, 0, 5, -1, 10, api.MaxPriority, api.MinPriority}
	for _, p := range prios {
		h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.Priority = p }))
	}
	want := []string{"0000000000000007", "0000000000000006", "0000000000000002", "0000000000000004", "0000000000000001", "0000000000000003", "0000000000000005", "0000000000000008"}
	got, next := h.f.Ready(t0, 100)
	if !slices.Equal(ids(got), want) || !next.IsZero() {
		t.Fatalf("ready %v next %v, want %v", ids(got), next, want)
	}
	for limit := range len(want) + 1 {
		got, _ := h.f.Ready(t0, limit)
		if !slices.Equal(ids(got), want[:limit]) {
			t.Fatalf("limit %d: %v", limit, ids(got))
		}
	}
}

func TestReady_DelayedTasksOnlyOnceDue(t *testing.T) {
	h := mustNewHarness(t)
	low := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.Priority = 1 }))
	high := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.Priority = 9 }))
	high2 := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.Priority = 9 }))
	// high fails at sec(10): due at sec(11). high2 fails at sec(20): due at sec(21).
	h.mustAssign(sec(1), high, "w1")
	h.mustResult(sec(10), high, api.OutcomeFailed)
	h.mustAssign(sec(1), high2, "w1")
	h.mustResult(sec(20), high2, api.OutcomeFailed)

	tests := []struct {
		now  time.Time
		want []string
		next time.Time
	}{
		{sec(10), []string{low}, sec(11)},
		{sec(11).Add(-time.Nanosecond), []string{low}, sec(11)},
		{sec(11), []string{high, low}, sec(21)},
		{sec(15), []string{high, low}, sec(21)},
		{sec(21), []string{high, high2, low}, time.Time{}},
		{farFuture, []string{high, high2, low}, time.Time{}},
	}
	for _, tt := range tests {
		got, next := h.f.Ready(tt.now, 10)
		if !slices.Equal(ids(got), tt.want) || !next.Equal(tt.next) {
			t.Fatalf("Ready(%v) = %v, %v; want %v, %v", tt.now.Sub(t0), ids(got), next, tt.want, tt.next)
		}
	}
	// Running and terminal tasks are never ready.
	h.mustAssign(sec(21), high, "w2")
	h.cancel(sec(21), low)
	if got, _ := h.f.Ready(farFuture, 10); !slices.Equal(ids(got), []string{high2}) {
		t.Fatalf("ready %v", ids(got))
	}
}

func TestReady_NextDueTimeWhenManyDueTasksAreWaiting(t *testing.T) {
	// Regression: Ready stops scanning due delayed tasks at 4*limit; it must
	// still report when the first not-yet-due one becomes due.
	h := mustNewHarness(t)
	var delayed []string
	for i := range 9 {
		id := h.mustSubmit(t0, spec("x"))
		h.mustAssign(sec(1), id, "w1")
		h.mustResult(sec(10+i), id, api.OutcomeFailed) // due at sec(11+i)
		delayed = append(delayed, id)
	}
	got, next := h.f.Ready(sec(18), 1) // eight are due, one is not
	if !slices.Equal(ids(got), delayed[:1]) {
		t.Fatalf("ready %v", ids(got))
	}
	if !next.Equal(sec(19)) {
		t.Fatalf("next %v, want %v", next, sec(19))
	}
}

func TestReady_NonPositiveLimit(t *testing.T) {
	// Regression: a negative limit (a caller's free-slot count gone below
	// zero) used to panic with a slice out of range.
	h := mustNewHarness(t)
	h.mustSubmit(t0, spec("x"))
	id := h.mustSubmit(t0, spec("y"))
	h.mustAssign(sec(1), id, "w1")
	h.mustResult(sec(1), id, api.OutcomeFailed)
	for _, limit := range []int{0, -1, -100} {
		got, next := h.f.Ready(t0, limit)
		if len(got) != 0 || !next.Equal(sec(1).Add(base)) {
			t.Fatalf("Ready(limit %d) = %v, %v", limit, ids(got), next)
		}
	}
}

// ---- list ----

func TestList_PaginatesWithNext(t *testing.T) {
	for _, n := range []int{0, 1, 9, 10, 11, 20, 25} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			h := mustNewHarness(t)
			for range n {
				h.mustSubmit(t0, spec("x"))
			}
			var got []string
			after := ""
			pages := 0
			for {
				page, err := h.f.List(api.ListFilter{After: after, Limit: 10})
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if page.Tasks == nil {
					t.Fatal("nil task slice (encodes as null, not [])")
				}
				got = append(got, ids(page.Tasks)...)
				if page.Next == "" {
					break
				}
				if len(page.Tasks) != 10 || page.Next != page.Tasks[9].ID {
					t.Fatalf("page of %d with next %q", len(page.Tasks), page.Next)
				}
				after = page.Next
			}
			if len(got) != n {
				t.Fatalf("listed %d of %d", len(got), n)
			}
			for i, id := range got {
				if id != api.FormatTaskID(uint64(i+1)) {
					t.Fatalf("task %d is %s", i, id)
				}
			}
			if want := max(1, (n+9)/10); pages != want {
				t.Fatalf("%d pages, want %d", pages, want)
			}
		})
	}
}

func TestList_DefaultLimit(t *testing.T) {
	h := mustNewHarness(t)
	specs := make([]api.TaskSpec, api.DefaultListLimit+5)
	for i := range specs {
		specs[i] = spec("x")
	}
	h.submit(t0, specs...)
	page, err := h.f.List(api.ListFilter{})
	if err != nil || len(page.Tasks) != api.DefaultListLimit || page.Next != api.FormatTaskID(api.DefaultListLimit) {
		t.Fatalf("list: %d tasks, next %q, %v", len(page.Tasks), page.Next, err)
	}
}

func TestList_StateFilter(t *testing.T) {
	h := mustNewHarness(t)
	buildMixedState(t, h)
	want := map[api.TaskState][]string{
		api.StatePending:   {"0000000000000001", "0000000000000006", "000000000000000a"},
		api.StateRunning:   {"0000000000000002", "0000000000000003"},
		api.StateSucceeded: {"0000000000000004"},
		api.StateFailed:    {"0000000000000005", "0000000000000009"},
		api.StateCanceled:  {"0000000000000007", "0000000000000008"},
	}
	for st, w := range want {
		for _, size := range []int{1, 2, 100} {
			if got := ids(listAll(t, h.f, st, size)); !slices.Equal(got, w) {
				t.Fatalf("state %s page size %d: %v, want %v", st, size, got, w)
			}
		}
		page, err := h.f.List(api.ListFilter{State: st, After: w[0]})
		if err != nil || !slices.Equal(ids(page.Tasks), w[1:]) {
			t.Fatalf("state %s after %s: %v %v", st, w[0], ids(page.Tasks), err)
		}
	}
}

func TestList_BadRequest(t *testing.T) {
	h := mustNewHarness(t)
	h.mustSubmit(t0, spec("x"))
	tests := []struct {
		filter api.ListFilter
		field  string
	}{
		{api.ListFilter{After: "1"}, "after"},
		{api.ListFilter{After: "000000000000000A"}, "after"},
		{api.ListFilter{After: "00000000000000001"}, "after"},
		{api.ListFilter{After: "000000000000000g"}, "after"},
		{api.ListFilter{After: "-000000000000001"}, "after"},
		{api.ListFilter{State: "bogus"}, "state"},
		{api.ListFilter{State: "Pending"}, "state"},
		{api.ListFilter{State: "bogus", After: "ffffffffffffffff"}, "state"},
	}
	for _, tt := range tests {
		_, err := h.f.List(tt.filter)
		wantErr(t, err, api.ErrBadRequest)
		var e *api.Error
		if !errors.As(err, &e) || e.Field != tt.field {
			t.Fatalf("List(%+v) error %v does not name field %q", tt.filter, err, tt.field)
		}
	}
}

func TestList_AfterTheLargestID(t *testing.T) {
	// Regression: after+1 wrapped to 0 and listed from the start again.
	h := mustNewHarness(t)
	h.mustSubmit(t0, spec("x"))
	for _, st := range []api.TaskState{"", api.StatePending} {
		page, err := h.f.List(api.ListFilter{State: st, After: "ffffffffffffffff"})
		if err != nil || len(page.Tasks) != 0 || page.Next != "" || page.Tasks == nil {
			t.Fatalf("state %q: %+v, %v", st, page, err)
		}
	}
}

func TestList_AfterAForgottenID(t *testing.T) {
	h := mustNewHarness(t)
	for range 3 {
		h.mustSubmit(t0, spec("x"))
	}
	h.cancel(sec(1), "0000000000000002")
	h.gc(sec(2), farFuture, 10)
	page, err := h.f.List(api.ListFilter{After: "0000000000000002"})
	if err != nil || !slices.Equal(ids(page.Tasks), []string{"0000000000000003"}) {
		t.Fatalf("list: %v %v", ids(page.Tasks), err)
	}
}

// ---- running ----

func TestRunning_GroupsByWorker(t *testing.T) {
	h := mustNewHarness(t)
	for range 4 {
		h.mustSubmit(t0, spec("x"))
	}
	h.mustAssign(sec(1), "0000000000000003", "w1")
	h.mustAssign(sec(2), "0000000000000001", "w1")
	h.mustAssign(sec(3), "0000000000000002", "w2")
	want := map[string][]RunningAttempt{
		"w1": {
			{AttemptRef: api.AttemptRef{TaskID: "0000000000000001", Attempt: 1}, Worker: "w1", StartedAt: sec(2)},
			{AttemptRef: api.AttemptRef{TaskID: "0000000000000003", Attempt: 1}, Worker: "w1", StartedAt: sec(1)},
		},
		"w2": {
			{AttemptRef: api.AttemptRef{TaskID: "0000000000000002", Attempt: 1}, Worker: "w2", StartedAt: sec(3)},
		},
	}
	got := h.f.Running()
	if len(got) != 2 || !slices.Equal(got["w1"], want["w1"]) || !slices.Equal(got["w2"], want["w2"]) {
		t.Fatalf("running %+v", got)
	}
	if rc := h.f.RunningCounts(); len(rc) != 2 || rc["w1"] != 2 || rc["w2"] != 1 {
		t.Fatalf("running counts %v", rc)
	}
	// Mutating the answer does not touch the state machine.
	got["w1"][0].Worker = "mutated"
	delete(got, "w2")
	if again := h.f.Running(); again["w1"][0].Worker != "w1" || len(again) != 2 {
		t.Fatalf("running changed through its answer: %+v", again)
	}
	h.mustResult(sec(4), "0000000000000002", api.OutcomeSucceeded)
	if rc := h.f.RunningCounts(); len(rc) != 1 {
		t.Fatalf("worker with no attempts still listed: %v", rc)
	}
}

// ---- watch ----

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestWatchTask_ClosedWhenTerminal(t *testing.T) {
	tests := []struct {
		name string
		// steps moves the task (already submitted) on; the channel must close
		// with the last step and not before.
		steps []func(h *harness, id string)
	}{
		{"result succeeded", []func(*harness, string){
			func(h *harness, id string) { h.mustAssign(sec(1), id, "w1") },
			func(h *harness, id string) { h.mustResult(sec(2), id, api.OutcomeSucceeded) },
		}},
		{"result failed after retries", []func(*harness, string){
			func(h *harness, id string) { h.mustAssign(sec(1), id, "w1") },
			func(h *harness, id string) { h.mustResult(sec(2), id, api.OutcomeFailed) },
			func(h *harness, id string) { h.mustAssign(sec(9), id, "w1") },
			func(h *harness, id string) { h.mustResult(sec(10), id, api.OutcomeTimeout) },
		}},
		{"requeue to poison", []func(*harness, string){
			func(h *harness, id string) { h.mustAssign(sec(1), id, "w1") },
			func(h *harness, id string) { h.requeue(sec(2), api.OutcomeLost, h.ref(id)) },
			func(h *harness, id string) { h.mustAssign(sec(3), id, "w1") },
			func(h *harness, id string) { h.requeue(sec(4), api.OutcomeUndelivered, h.ref(id)) },
			func(h *harness, id string) { h.mustAssign(sec(5), id, "w1") },
			func(h *harness, id string) { h.mustResult(sec(6), id, api.OutcomeReleased) },
			func(h *harness, id string) { h.mustAssign(sec(7), id, "w1") },
			func(h *harness, id string) { h.requeue(sec(8), api.OutcomeLost, h.ref(id)) },
			func(h *harness, id string) { h.mustAssign(sec(9), id, "w1") },
			func(h *harness, id string) { h.requeue(sec(10), api.OutcomeLost, h.ref(id)) },
		}},
		{"cancel pending", []func(*harness, string){
			func(h *harness, id string) { h.cancel(sec(1), id) },
		}},
		{"cancel running", []func(*harness, string){
			func(h *harness, id string) { h.mustAssign(sec(1), id, "w1") },
			func(h *harness, id string) {
				// A stale result and activity on another task first.
				h.result(sec(2), api.AttemptResult{TaskID: id, Attempt: 1, Worker: "w2", Outcome: api.OutcomeSucceeded})
				h.mustSucceed(sec(2), h.mustSubmit(sec(2), spec("other")), "w3")
			},
			func(h *harness, id string) { h.cancel(sec(3), id) },
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 2 }))
			task, ch, ok := h.f.WatchTask(id)
			if !ok || ch == nil || task.ID != id {
				t.Fatalf("WatchTask = %+v, %v, %v", task, ch, ok)
			}
			_, ch2, _ := h.f.WatchTask(id)
			for i, step := range tt.steps {
				step(h, id)
				last := i == len(tt.steps)-1
				if closed(ch) != last || closed(ch2) != last {
					t.Fatalf("after step %d of %d: closed=%v/%v, task %s", i+1, len(tt.steps), closed(ch), closed(ch2), h.mustGet(id).State)
				}
			}
			wantTerminal := h.mustGet(id)
			if !wantTerminal.State.Terminal() {
				t.Fatalf("task ended %s", wantTerminal.State)
			}
			h.f.mu.RLock()
			left := len(h.f.watch)
			h.f.mu.RUnlock()
			if left != 0 {
				t.Fatalf("%d watch lists left after the task ended", left)
			}
			h.f.UnwatchTask(id, ch) // after close: harmless
		})
	}
}

func TestWatchTask_TerminalAndUnknownTasks(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	h.cancel(sec(1), id)
	task, ch, ok := h.f.WatchTask(id)
	if !ok || ch != nil || task.State != api.StateCanceled {
		t.Fatalf("WatchTask(terminal) = %s, %v, %v", task.State, ch, ok)
	}
	if _, ch, ok := h.f.WatchTask("0000000000000002"); ok || ch != nil {
		t.Fatal("WatchTask(unknown) found something")
	}
	if _, ch, ok := h.f.WatchTask("bad"); ok || ch != nil {
		t.Fatal("WatchTask(malformed) found something")
	}
}

func TestUnwatchTask_DropsOnlyThatChannel(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	_, a, _ := h.f.WatchTask(id)
	_, b, _ := h.f.WatchTask(id)
	h.f.UnwatchTask(id, a)
	h.f.UnwatchTask(id, a) // twice: harmless
	h.f.UnwatchTask("bad", b)
	h.f.UnwatchTask(id, nil)
	h.f.UnwatchTask("0000000000000009", b)
	h.f.mu.RLock()
	n := len(h.f.watch[1])
	h.f.mu.RUnlock()
	if n != 1 {
		t.Fatalf("%d channels watched, want 1", n)
	}
	h.cancel(sec(1), id)
	if closed(a) || !closed(b) {
		t.Fatalf("closed a=%v b=%v; want only b", closed(a), closed(b))
	}
	h.f.UnwatchTask(id, b)
	_, c, _ := h.f.WatchTask(h.mustSubmit(t0, spec("y")))
	h.f.UnwatchTask("0000000000000002", c)
	h.f.mu.RLock()
	n = len(h.f.watch)
	h.f.mu.RUnlock()
	if n != 0 {
		t.Fatalf("%d watch lists left", n)
	}
}

// ---- apply / batch ----

func TestApplyBatch_NonCommandLogsGetNil(t *testing.T) {
	h := mustNewHarness(t)
	logs := []*raft.Log{
		h.nextLog(raft.LogCommand, mustEncode(t, &SubmitEntry{At: t0, Tasks: []api.TaskSpec{spec("x")}})),
		h.nextLog(raft.LogConfiguration, []byte("not an entry")),
		h.nextLog(raft.LogNoop, nil),
		h.nextLog(raft.LogBarrier, nil),
		h.nextLog(raft.LogCommand, mustEncode(t, &AssignEntry{At: sec(1), Assignments: []Assignment{{TaskID: "0000000000000001", Attempt: 1, Worker: "w1"}}})),
		h.nextLog(raft.LogConfiguration, nil),
	}
	out := h.f.ApplyBatch(logs)
	if len(out) != len(logs) {
		t.Fatalf("%d answers for %d logs", len(out), len(logs))
	}
	as[*SubmitResponse](t, out[0])
	if got := as[*AssignResponse](t, out[4]); !got.Accepted[0] {
		t.Fatal("assign refused")
	}
	for _, i := range []int{1, 2, 3, 5} {
		if out[i] != nil {
			t.Fatalf("answer %d for a %s log is %#v, want nil", i, logs[i].Type, out[i])
		}
	}
	if got := h.f.AppliedIndex(); got != 6 {
		t.Fatalf("applied index %d, want 6", got)
	}
	if got := h.f.Apply(h.nextLog(raft.LogConfiguration, []byte{0xff})); got != nil {
		t.Fatalf("Apply(configuration) = %#v", got)
	}
	if got := h.f.AppliedIndex(); got != 7 {
		t.Fatalf("applied index %d, want 7", got)
	}
	if out := h.f.ApplyBatch(nil); len(out) != 0 {
		t.Fatalf("empty batch answered %v", out)
	}
}

func TestApplyBatch_SameAsOneByOne(t *testing.T) {
	one := mustNewHarness(t)
	buildMixedState(t, one)
	batched := mustNewHarness(t)
	var out []any
	for i := 0; i < len(one.log); i += 5 {
		out = append(out, batched.f.ApplyBatch(one.log[i:min(i+5, len(one.log))])...)
	}
	if a, b := fingerprint(t, one.f), fingerprint(t, batched.f); a != b {
		t.Fatalf("batched state differs:\n%s\n%s", a, b)
	}
	if len(out) != len(one.log) || one.f.AppliedIndex() != batched.f.AppliedIndex() {
		t.Fatalf("%d answers; applied %d vs %d", len(out), one.f.AppliedIndex(), batched.f.AppliedIndex())
	}
}

func TestAppliedIndex_NeverGoesBack(t *testing.T) {
	f := New()
	if f.AppliedIndex() != 0 {
		t.Fatal("fresh FSM has an applied index")
	}
	b := mustEncode(t, &GCEntry{At: t0, Before: t0, Limit: 1})
	f.Apply(&raft.Log{Index: 10, Type: raft.LogCommand, Data: b})
	f.Apply(&raft.Log{Index: 4, Type: raft.LogCommand, Data: b})
	if got := f.AppliedIndex(); got != 10 {
		t.Fatalf("applied index %d, want 10", got)
	}
}

func TestApply_UndecodableCommandPanics(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown type", []byte{0x7f, '{', '}'}},
		{"bad json", []byte("\x01{nope")},
		{"trailing data", []byte("\x05{}}")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, spec("x"))
			msg := mustPanic(t, func() {
				h.f.ApplyBatch([]*raft.Log{
					h.nextLog(raft.LogCommand, mustEncode(t, &CancelEntry{At: sec(1), TaskID: id})),
					h.nextLog(raft.LogCommand, tt.data),
				})
			})
			if !strings.Contains(msg, "raft log index 3") || !strings.Contains(msg, ErrCorruptEntry.Error()) {
				t.Fatalf("panic %q does not name the index and the cause", msg)
			}
			// The lock was released, and the entry before the bad one applied.
			if !h.f.mu.TryLock() {
				t.Fatal("FSM still locked after the panic")
			}
			h.f.mu.Unlock()
			wantState(t, h.f, id, api.StateCanceled)
			mustPanic(t, func() { h.f.Apply(h.nextLog(raft.LogCommand, tt.data)) })
		})
	}
}

func mustPanic(t *testing.T, fn func()) (msg string) {
	t.Helper()
	defer func() {
		r := recover()
		if r == nil {
			t.Fatal("no panic")
		}
		msg = fmt.Sprint(r)
	}()
	fn()
	return ""
}

func TestChanges_KickedAfterApply(t *testing.T) {
	h := mustNewHarness(t)
	if closed := func() bool {
		select {
		case <-h.f.Changes():
			return true
		default:
			return false
		}
	}; closed() {
		t.Fatal("kick before any apply")
	}
	h.mustSubmit(t0, spec("x"))
	h.mustSubmit(t0, spec("y"))
	select {
	case <-h.f.Changes():
	default:
		t.Fatal("no kick after apply")
	}
	select {
	case <-h.f.Changes():
		t.Fatal("kicks are not coalesced")
	default:
	}
}

// ---- determinism ----

func TestDeterminism_SameLogSameState(t *testing.T) {
	a := mustNewHarness(t)
	buildMixedState(t, a)
	a.gc(sec(40), sec(23), 2)
	a.submit(sec(41), specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "key-0" }), specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "key-4" }))

	// Replay the same bytes, one entry at a time, into a fresh FSM.
	b := New()
	for _, l := range a.log {
		cp := *l
		cp.Data = slices.Clone(l.Data)
		b.Apply(&cp)
	}
	fa, fb := fingerprint(t, a.f), fingerprint(t, b)
	if fa != fb {
		t.Fatalf("same log, different state:\n%s\n%s", fa, fb)
	}
	la, _ := a.f.List(api.ListFilter{Limit: 1000})
	lb, _ := b.List(api.ListFilter{Limit: 1000})
	if mustJSON(t, la) != mustJSON(t, lb) {
		t.Fatal("List output differs")
	}
	checkInvariants(t, b)
}

func TestGet_ReturnsACopy(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, spec("x"))
	task := h.mustGet(id)
	task.State = api.StateSucceeded
	task.Attempt = 9
	wantState(t, h.f, id, api.StatePending)
	if _, ok := h.f.Get("0000000000000000"); ok {
		t.Fatal("Get(0) found a task")
	}
}

// ---- submit-assign ----

// A submit-assign entry adds the tasks and starts attempt 1 of each new one
// on its worker in the same entry; a known key and a retiring worker start
// nothing, and the state equals a submit followed by an assign.
func TestSubmitAssign_SubmitsAndStartsInOneEntry(t *testing.T) {
	h := mustNewHarness(t)
	known := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "k" }))
	as[*ScaleOpResponse](t, h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "m", Count: 1}))
	h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreated, Names: []string{"m-1"}})
	h.apply(&ScaleOpEntry{At: t0, Op: ScaleDrain, Names: []string{"m-1"}})

	e := &SubmitAssignEntry{At: sec(2), Tasks: []api.TaskSpec{
		spec("a"),
		specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "k" }), // known: existing task
		spec("b"),
		spec("c"), // draining worker: refused
		spec("d"), // no worker
	}, Workers: []string{"w1", "w2", "w2", "m-1", ""}}
	r := as[*SubmitAssignResponse](t, h.apply(e))
	if len(r.Results) != 5 || !r.Results[1].Existing || r.Results[1].ID != known {
		t.Fatalf("results %+v", r.Results)
	}
	if want := []bool{true, false, true, false, false}; !slices.Equal(r.Assigned, want) {
		t.Fatalf("assigned %v, want %v", r.Assigned, want)
	}
	for _, i := range []int{0, 2} {
		task := wantState(t, h.f, r.Results[i].ID, api.StateRunning)
		want := []api.AttemptRecord{{Attempt: 1, Worker: e.Workers[i], Outcome: api.OutcomeRunning, StartedAt: sec(2)}}
		if task.Attempt != 1 || task.Worker != e.Workers[i] || !task.CreatedAt.Equal(sec(2)) || !task.StartedAt.Equal(sec(2)) || !slices.Equal(task.Attempts, want) {
			t.Errorf("task %d: %+v", i, task)
		}
	}
	wantState(t, h.f, known, api.StatePending)
	wantState(t, h.f, r.Results[3].ID, api.StatePending)
	wantState(t, h.f, r.Results[4].ID, api.StatePending)

	// The same as a submit, then an assign.
	g := mustNewHarness(t)
	g.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "k" }))
	g.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "m", Count: 1})
	g.apply(&ScaleOpEntry{At: t0, Op: ScaleCreated, Names: []string{"m-1"}})
	g.apply(&ScaleOpEntry{At: t0, Op: ScaleDrain, Names: []string{"m-1"}})
	sub := g.submit(sec(2), e.Tasks...)
	g.apply(&AssignEntry{At: sec(2), Assignments: []Assignment{
		{TaskID: sub.Results[0].ID, Attempt: 1, Worker: "w1"}, {TaskID: sub.Results[2].ID, Attempt: 1, Worker: "w2"},
	}})
	_, _, da := h.f.Digest()
	_, _, db := g.f.Digest()
	if da != db {
		t.Errorf("submit-assign digest %s differs from submit + assign %s", da, db)
	}
	// Replaying the log gives the same state.
	rep := New()
	for _, l := range h.log {
		rep.Apply(l)
	}
	if _, _, dr := rep.Digest(); dr != da {
		t.Errorf("replayed digest %s, want %s", dr, da)
	}
}

func TestSubmitAssign_EncodesAndDecodes(t *testing.T) {
	e := &SubmitAssignEntry{At: t0, Tasks: []api.TaskSpec{spec("a")}, Workers: []string{"w"}}
	b := mustEncode(t, e)
	if EntryType(b[0]) != EntrySubmitAssign || EntrySubmitAssign.String() != "submit-assign" {
		t.Fatalf("type byte %d", b[0])
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if g, ok := got.(*SubmitAssignEntry); !ok || len(g.Tasks) != 1 || g.Workers[0] != "w" || !g.At.Equal(t0) {
		t.Fatalf("decoded %#v", got)
	}
}
