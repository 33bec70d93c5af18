package fsm

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gantryhq/gantry/api"
)

// resultWith applies one result in an entry carrying the given defaults.
func (h *harness) resultWith(e ResultEntry, res api.AttemptResult) error {
	h.t.Helper()
	e.At = h.mustGet(res.TaskID).StartedAt.Add(time.Millisecond)
	e.BackoffBase = base
	e.Results = []api.AttemptResult{res}
	resp := as[*ResultResponse](h.t, h.apply(&e))
	return resp.Errors[0]
}

func TestResult_NoRetryExitCodesEndTheTaskAtOnce(t *testing.T) {
	defaults := ResultEntry{NoRetryExitCodes: api.DefaultNoRetryExitCodes}
	for _, tt := range []struct {
		name      string
		codes     []int // the spec's no_retry_exit_codes
		entry     ResultEntry
		exit      int
		outcome   api.Outcome
		wantState api.TaskState
	}{
		{"127 by default", nil, defaults, 127, api.OutcomeFailed, api.StateFailed},
		{"126 by default", nil, defaults, 126, api.OutcomeFailed, api.StateFailed},
		{"1 is retried", nil, defaults, 1, api.OutcomeFailed, api.StatePending},
		{"the task's own list", []int{2, 64}, defaults, 64, api.OutcomeFailed, api.StateFailed},
		{"the task's list replaces the default", []int{2}, defaults, 127, api.OutcomeFailed, api.StatePending},
		{"an empty list retries everything", []int{}, defaults, 127, api.OutcomeFailed, api.StatePending},
		{"an entry of an older format has no default", nil, ResultEntry{}, 127, api.OutcomeFailed, api.StatePending},
		{"a timeout is retried whatever its code", []int{137}, defaults, 137, api.OutcomeTimeout, api.StatePending},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 5; s.NoRetryExitCodes = tt.codes }))
			h.mustAssign(sec(1), id, "w1")
			res := h.report(id, tt.outcome)
			res.ExitCode = tt.exit
			if err := h.resultWith(tt.entry, res); err != nil {
				t.Fatal(err)
			}
			got := h.mustGet(id)
			if got.State != tt.wantState || got.Failures != 1 {
				t.Fatalf("state %s failures %d, want %s after one failure", got.State, got.Failures, tt.wantState)
			}
			if got.State == api.StateFailed && (got.Result == nil || got.Result.ExitCode != tt.exit || got.FinishedAt.IsZero()) {
				t.Fatalf("failed task without its result: %+v", got)
			}
			checkInvariants(t, h.f)
		})
	}
}

func TestResult_EarlierAttemptsKeepTheEndOfTheirOutput(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 3 }))
	keep := ResultEntry{KeepOutput: 64}
	long := strings.Repeat("compiling ...\n", 20) + "main.c:12: error: ¿expected ';'?\n"
	outputs := []string{"first failure\n", long}
	for i, out := range outputs {
		h.mustAssign(sec(1+20*i), id, "w1")
		res := h.report(id, api.OutcomeFailed)
		res.ExitCode, res.Output = 2+i, out
		if err := h.resultWith(keep, res); err != nil {
			t.Fatal(err)
		}
	}
	h.mustAssign(sec(50), id, "w1")
	h.mustResult(sec(51), id, api.OutcomeSucceeded)
	got := h.mustGet(id)
	if len(got.Attempts) != 3 {
		t.Fatalf("%d attempts", len(got.Attempts))
	}
	if a := got.Attempts[0]; a.ExitCode != 2 || a.Output != "first failure\n" {
		t.Errorf("attempt 1 keeps %d %q", a.ExitCode, a.Output)
	}
	a := got.Attempts[1]
	if a.ExitCode != 3 || len(a.Output) > 64 || !utf8.ValidString(a.Output) ||
		!strings.HasPrefix(a.Output, "[gantry: ") || !strings.HasSuffix(a.Output, "expected ';'?\n") {
		t.Errorf("attempt 2 keeps %d %q (%d bytes)", a.ExitCode, a.Output, len(a.Output))
	}
	var dropped int
	if _, err := fmt.Sscanf(a.Output, "[gantry: %d bytes dropped]", &dropped); err != nil || dropped+len(a.Output[strings.IndexByte(a.Output, '\n')+1:]) != len(long) {
		t.Errorf("the marker of %q does not count the dropped bytes (%d, %v)", a.Output, dropped, err)
	}
	if a := got.Attempts[2]; a.Output != "" {
		t.Errorf("a success keeps its output in the history too: %q (it is the result)", a.Output)
	}
	// The history survives a snapshot.
	r := mustRestore(t, mustPersist(t, mustSnapshot(t, h.f)))
	back, _ := r.Get(id)
	if b1, b2 := mustJSON(t, back), mustJSON(t, got); b1 != b2 {
		t.Fatalf("restored\n%s\nwant\n%s", b1, b2)
	}
	// Without KeepOutput (an older format) the history keeps nothing.
	h2 := mustNewHarness(t)
	id2 := h2.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.MaxAttempts = 3 }))
	h2.mustAssign(sec(1), id2, "w1")
	h2.mustResult(sec(2), id2, api.OutcomeFailed)
	if a := h2.mustGet(id2).Attempts[0]; a.Output != "" || a.ExitCode != 0 {
		t.Errorf("an entry without keep_output kept %d %q", a.ExitCode, a.Output)
	}
}

func TestLastBytes(t *testing.T) {
	for _, tt := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{strings.Repeat("x", 100), 30, "[gantry: 97 bytes dropped]\nxxx"},
		{strings.Repeat("x", 100), 31, "[gantry: 96 bytes dropped]\nxxxx"},
		{strings.Repeat("é", 50), 32, "[gantry: 96 bytes dropped]\néé"},
		{strings.Repeat("é", 50), 30, "[gantry: 98 bytes dropped]\né"},
		{strings.Repeat("x", 100), 5, ""},
	} {
		if got := lastBytes(tt.s, tt.n); got != tt.want || len(got) > tt.n || !utf8.ValidString(got) {
			t.Errorf("lastBytes(%d bytes, %d) = %q, want %q", len(tt.s), tt.n, got, tt.want)
		}
	}
}

// Every field of a spec takes part in the idempotency check: the same key
// with any one field changed is a conflict; the same spec is not.
func TestSubmit_ReusedKeyWithAnyOtherFieldConflicts(t *testing.T) {
	base := func(s *api.TaskSpec) {
		s.IdempotencyKey = "k"
		s.Args = []string{"sh", "-c", "echo"}
		s.Env = map[string]string{"A": "1"}
		s.Payload = json.RawMessage(`{"n":1}`)
		s.Timeout = "1m"
		s.MaxAttempts = 2
		s.Priority = 3
		s.NoRetryExitCodes = []int{2}
	}
	for _, tt := range []struct {
		name     string
		change   func(*api.TaskSpec)
		conflict bool
	}{
		{"the same spec", func(*api.TaskSpec) {}, false},
		{"the same spec, payload spaced and codes unsorted", func(s *api.TaskSpec) {
			s.Payload = json.RawMessage(`{ "n" : 1 }`)
			s.NoRetryExitCodes = []int{2, 2}
		}, false},
		{"args", func(s *api.TaskSpec) { s.Args = []string{"sh", "-c", "echo DIFFERENT"} }, true},
		{"env", func(s *api.TaskSpec) { s.Env = map[string]string{"A": "2"} }, true},
		{"no env", func(s *api.TaskSpec) { s.Env = nil }, true},
		{"payload", func(s *api.TaskSpec) { s.Payload = json.RawMessage(`{"n":2}`) }, true},
		{"timeout", func(s *api.TaskSpec) { s.Timeout = "2m" }, true},
		{"max_attempts", func(s *api.TaskSpec) { s.MaxAttempts = 3 }, true},
		{"priority", func(s *api.TaskSpec) { s.Priority = 4 }, true},
		{"no_retry_exit_codes", func(s *api.TaskSpec) { s.NoRetryExitCodes = []int{3} }, true},
		{"no_retry_exit_codes empty", func(s *api.TaskSpec) { s.NoRetryExitCodes = []int{} }, true},
		{"no_retry_exit_codes default", func(s *api.TaskSpec) { s.NoRetryExitCodes = nil }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, specWith(base))
			before := mustJSON(t, h.mustGet(id))
			again := specWith(func(s *api.TaskSpec) { base(s); tt.change(s) })
			got := h.submit(sec(1), again).Results[0]
			if got != (SubmitOutcome{ID: id, Existing: true, Conflict: tt.conflict}) {
				t.Fatalf("got %+v, want existing %s with conflict %v", got, id, tt.conflict)
			}
			if after := mustJSON(t, h.mustGet(id)); after != before {
				t.Fatalf("the task changed:\n%s\n%s", before, after)
			}
			if c := h.f.Counts(); c.Pending != 1 {
				t.Fatalf("counts %+v", c)
			}
		})
	}
	// Within one entry, the second of two specs with one key is compared
	// with the first.
	h := mustNewHarness(t)
	a, b := specWith(base), specWith(func(s *api.TaskSpec) { base(s); s.Priority = 9 })
	res := h.submit(t0, a, a, b).Results
	if res[1] != (SubmitOutcome{ID: res[0].ID, Existing: true}) || res[2] != (SubmitOutcome{ID: res[0].ID, Existing: true, Conflict: true}) {
		t.Fatalf("one entry: %+v", res)
	}
}
