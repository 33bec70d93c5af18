package chaos

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/gantryhq/gantry/api"
)

func TestModel_ReadsNeverGoBackInTime(t *testing.T) {
	op := func(client int, kind, task, out string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: lin{kind, task}, Output: out, Call: call, Return: ret}
	}
	tests := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"submit, live, terminal", []porcupine.Operation{
			op(0, OpSubmit, "a", "ok", 0, 10),
			op(1, OpRead, "a", stLive, 20, 30),
			op(2, OpRead, "a", "succeeded", 40, 50),
			op(1, OpRead, "a", "succeeded", 60, 70),
		}, porcupine.Ok},
		{"terminal then live", []porcupine.Operation{
			op(0, OpSubmit, "a", "ok", 0, 10),
			op(1, OpRead, "a", "succeeded", 20, 30),
			op(2, OpRead, "a", stLive, 40, 50),
		}, porcupine.Illegal},
		{"terminal state changes", []porcupine.Operation{
			op(1, OpRead, "a", "failed", 20, 30),
			op(2, OpRead, "a", "succeeded", 40, 50),
		}, porcupine.Illegal},
		{"not found after an acknowledged submit", []porcupine.Operation{
			op(0, OpSubmit, "a", "ok", 0, 10),
			op(1, OpRead, "a", "notfound", 20, 30),
		}, porcupine.Illegal},
		{"concurrent reads may see either", []porcupine.Operation{
			op(0, OpSubmit, "a", "ok", 0, 10),
			op(1, OpRead, "a", "succeeded", 20, 60),
			op(2, OpRead, "a", stLive, 30, 50),
		}, porcupine.Ok},
		{"tasks are independent", []porcupine.Operation{
			op(1, OpRead, "a", "succeeded", 20, 30),
			op(2, OpRead, "b", stLive, 40, 50),
		}, porcupine.Ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := porcupine.CheckOperationsTimeout(taskModel, tt.ops, 10*time.Second); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTerminalProblem(t *testing.T) {
	now := time.Now()
	ok := api.Task{ID: "t", State: api.StateSucceeded, Attempt: 2, FinishedAt: now, Result: &api.Result{},
		Attempts: []api.AttemptRecord{{Attempt: 1, Outcome: api.OutcomeLost}, {Attempt: 2, Outcome: api.OutcomeSucceeded}}}
	if p := terminalProblem(ok); p != "" {
		t.Fatalf("a sound task: %s", p)
	}
	bad := []func(*api.Task){
		func(t *api.Task) { t.Attempts[1].Outcome = api.OutcomeRunning },
		func(t *api.Task) { t.Attempts[0].Outcome = api.OutcomeSucceeded },
		func(t *api.Task) { t.Result = nil },
		func(t *api.Task) { t.Attempt = 3 },
		func(t *api.Task) { t.FinishedAt = time.Time{} },
		func(t *api.Task) { t.State = api.StateFailed },
	}
	for i, mutate := range bad {
		task := ok
		task.Attempts = append([]api.AttemptRecord(nil), ok.Attempts...)
		mutate(&task)
		if terminalProblem(task) == "" {
			t.Errorf("mutation %d went unnoticed: %+v", i, task)
		}
	}
}

// staticTarget is a Target for checker tests that never talks to a cluster.
type staticTarget struct{ execs []Execution }

func (s staticTarget) Masters() map[string]string       { return map[string]string{} }
func (s staticTarget) TaskSpec(key string) api.TaskSpec { return api.TaskSpec{Args: []string{"true"}} }
func (s staticTarget) Ledger(context.Context) ([]Execution, error) {
	return s.execs, nil
}

func TestCheckTasks_FindsLostAndDuplicateKeys(t *testing.T) {
	now := time.Now()
	done := func(id, key string) api.Task {
		return api.Task{ID: id, IdempotencyKey: key, State: api.StateSucceeded, Attempt: 1, FinishedAt: now, Result: &api.Result{},
			Attempts: []api.AttemptRecord{{Attempt: 1, Outcome: api.OutcomeSucceeded}}}
	}
	c := &Checker{RunID: "r"}
	rep := &Report{}
	acked := map[string]string{"r-1": "01", "r-2": "02", "r-3": "03", "r-4": "04"}
	byKey := map[string][]api.Task{
		"r-1": {done("01", "r-1")},
		"r-2": {done("02", "r-2"), done("05", "r-2")}, // two tasks for one key
		"r-3": {{ID: "03", IdempotencyKey: "r-3", State: api.StateRunning}},
		// r-4 missing
	}
	c.checkTasks(rep, acked, byKey)
	got := map[string]Check{}
	for _, ck := range rep.Checks {
		got[ck.Name] = ck
	}
	if ck := got["no acknowledged submission lost"]; ck.OK || !strings.Contains(ck.Detail, "r-3") || !strings.Contains(ck.Detail, "r-4") {
		t.Fatalf("lost check: %+v", ck)
	}
	if ck := got["one task per idempotency key"]; ck.OK || !strings.Contains(ck.Detail, "r-2") {
		t.Fatalf("key check: %+v", ck)
	}
	if rep.Figures.Lost != 2 {
		t.Fatalf("lost %d, want 2", rep.Figures.Lost)
	}
}

func TestCheckLedger_CountsAndAttributesDuplicates(t *testing.T) {
	start := time.Now()
	fault := FaultEvent{Fault: "kill-worker", Start: start, Healed: start.Add(5 * time.Second)}
	task := api.Task{ID: "01", State: api.StateSucceeded, Attempt: 2, Attempts: []api.AttemptRecord{
		{Attempt: 1, Outcome: api.OutcomeLost, StartedAt: start.Add(-time.Second)},
		{Attempt: 2, Outcome: api.OutcomeSucceeded, StartedAt: start.Add(3 * time.Second)},
	}}
	quiet := api.Task{ID: "02", State: api.StateSucceeded, Attempt: 2, Attempts: []api.AttemptRecord{
		{Attempt: 1, Outcome: api.OutcomeLost, StartedAt: start.Add(time.Minute)},
		{Attempt: 2, Outcome: api.OutcomeSucceeded, StartedAt: start.Add(2 * time.Minute)},
	}}
	never := api.Task{ID: "03", State: api.StateSucceeded, Attempt: 1}
	c := &Checker{Faults: []FaultEvent{fault}, Target: staticTarget{execs: []Execution{
		{TaskID: "01", Attempt: 1}, {TaskID: "01", Attempt: 2},
		{TaskID: "02", Attempt: 1}, {TaskID: "02", Attempt: 2},
		{TaskID: "02", Attempt: 7}, // never assigned
		{TaskID: "99", Attempt: 1}, // another run's task
	}}}
	rep := &Report{}
	c.checkLedger(context.Background(), rep, nil, map[string][]api.Task{"a": {task}, "b": {quiet}, "c": {never}})
	if rep.Figures.Executions != 5 || rep.Figures.DuplicateExecutions != 3 || rep.Figures.UnexplainedDuplicates != 2 {
		t.Fatalf("figures %+v", rep.Figures)
	}
	if len(rep.Duplicates) != 2 || rep.Duplicates[0].Faults[0] != "kill-worker" {
		t.Fatalf("duplicates %+v", rep.Duplicates)
	}
	oks := map[string]bool{}
	for _, ck := range rep.Checks {
		oks[ck.Name] = ck.OK
	}
	if oks["every succeeded task executed at least once"] || oks["no execution of an attempt that was never assigned"] {
		t.Fatalf("checks passed a task that never ran and a phantom attempt: %+v", rep.Checks)
	}
}

func TestAvailability_LongestGapPerFault(t *testing.T) {
	h := NewHistory()
	at := func(d time.Duration) int64 { return int64(d) }
	var ops []Op
	for _, d := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 5500 * time.Millisecond, 30 * time.Second} {
		ops = append(ops, Op{Kind: OpSubmit, Outcome: OutcomeOK, End: at(d)})
	}
	ops = append(ops, Op{Kind: OpSubmit, Outcome: OutcomeUnknown, End: at(3 * time.Second)})
	c := &Checker{History: h, Faults: []FaultEvent{{Fault: "kill-leader", Start: h.At(at(1500 * time.Millisecond)), Healed: h.At(at(4 * time.Second))}}}
	rep := &Report{}
	c.availability(rep, ops)
	// Acks in [1.5s, 14s]: 2s, 5s, 5.5s; then the next one at 30s.
	if got := rep.Faults[0].Gap; got != 24500*time.Millisecond {
		t.Fatalf("gap %s, want 24.5s", got)
	}
}

func TestCheckReuse(t *testing.T) {
	c := &Checker{}
	for _, tt := range []struct {
		ops  []Op
		want bool
	}{
		{[]Op{{Kind: OpReuse, Outcome: OutcomeFail, Error: "idempotency_key_conflict"}, {Kind: OpReuse, Outcome: OutcomeUnknown}}, true},
		{[]Op{{Kind: OpReuse, Outcome: OutcomeFail}, {Kind: OpReuse, Key: "k", TaskID: "t", Outcome: OutcomeOK}}, false},
		{[]Op{{Kind: OpSubmit, Outcome: OutcomeOK}}, true},
	} {
		rep := &Report{}
		c.checkReuse(rep, tt.ops)
		if len(rep.Checks) != 1 || rep.Checks[0].OK != tt.want {
			t.Errorf("%+v: %+v, want ok=%v", tt.ops, rep.Checks, tt.want)
		}
	}
}
