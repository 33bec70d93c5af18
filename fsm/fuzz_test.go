package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/hashicorp/raft"
)

// The seeds below run as ordinary tests in `go test`; `go test -fuzz` explores
// from them. Crashers found by the fuzzer are kept in testdata/fuzz.

func FuzzDecode(f *testing.F) {
	for _, e := range sampleEntries() {
		f.Add(mustEncode(f, e))
	}
	for _, e := range applySeeds() {
		f.Add(mustEncode(f, e))
	}
	for _, e := range sampleEntries() {
		if b, err := EncodeFormat(e, Proto); err == nil && b[0]&binaryFlag != 0 {
			f.Add(b)
			f.Add(b[:len(b)-1])
		}
	}
	for _, s := range []string{
		"", "\x00", "\x01", "\x06", "\x07", "\xff", "\x01{", "\x01}", "\x01null", "\x01[]", "\x01\"x\"",
		"\x05{}}", "\x05{}]", "\x05{} {}", "\x05{}\n", "\x07{}",
		"\x03{\"backoff_base\":1e99}", "\x03{\"backoff_base\":-1}", "\x03{\"backoff_base\":9223372036854775807}",
		"\x02{\"assignments\":[{\"attempt\":-1,\"task_id\":\"\\u0000\"}]}",
		"\x01{\"tasks\":[{\"payload\":  [1, 2 , {\"a\" : \"<>\"}] ,\"env\":{\"A\":\"1\",\"A\":\"2\"}}]}",
		"\x01{\"tasks\":[{\"args\":[\"\xff\xfe\"],\"idempotency_key\":\"\\ud800\"}]}",
		"\x05{\"at\":\"0000-01-01T00:00:00+01:00\"}",
		"\x05{\"at\":\"9999-12-31T23:59:59.999999999-23:59\"}",
		"\x06{\"before\":\"2025-03-01T12:00:00.123456789+05:30\",\"limit\":-9}",
		`{"at":"2025-03-01T12:00:00Z"}`,
		"\x81", "\x81\x01", "\x81\x02\x00\x00", "\x81\x01\x00\x00", "\x81\x01\x00\xff\xff\xff\xff\x0f",
		"\x82\x01\x00\x02\x01\x00\x00\x00", "\x83\x01\x01\x00\x00\x00", "\x85\x01\x00",
		"\x89\x01\x00\x00\x00", "\x83\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrCorruptEntry) || e != nil {
				t.Fatalf("Decode(%q) = %#v, %v; want nil and ErrCorruptEntry", b, e, err)
			}
			return
		}
		if e == nil || EntryType(b[0]&^binaryFlag) != e.Type() {
			t.Fatalf("Decode(%q) = %#v for type byte %d", b, e, b[0])
		}
		format := ProtoSubmitAssign // JSON in, JSON out; binary in, binary out
		if b[0]&binaryFlag != 0 {
			format = ProtoBinary
		}
		b1, err := EncodeFormat(e, format)
		if err != nil {
			t.Fatalf("a decoded %s entry does not encode: %v", e.Type(), err)
		}
		e1, err := Decode(b1)
		if err != nil {
			t.Fatalf("re-encoded entry %q does not decode: %v", b1, err)
		}
		b2, err := EncodeFormat(e1, format)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not stable:\n%q\n%q", b1, b2)
		}
		e2, err := Decode(b2)
		if err != nil || !reflect.DeepEqual(e1, e2) {
			t.Fatalf("decode(encode(x)) != x:\n%#v\n%#v (%v)", e1, e2, err)
		}
	})
}

// mustPrepared returns an FSM with a task in each interesting state:
//
//	1 pending, key k1          5 canceled
//	2 running on w1, attempt 1 6 running on w2, attempt 3, lost twice
//	3 pending, delayed to 6s   7 failed (max_attempts 1)
//	4 succeeded, key k4        8 pending after a release by w3
func mustPrepared(t testing.TB) *harness {
	t.Helper()
	h := mustNewHarness(t)
	key := func(k string, maxAttempts int) api.TaskSpec {
		return specWith(func(s *api.TaskSpec) { s.IdempotencyKey = k; s.MaxAttempts = maxAttempts })
	}
	h.submit(t0, key("k1", 3), spec("2"), spec("3"), key("k4", 3), spec("5"), spec("6"), key("", 1), spec("8"))
	h.mustAssign(sec(1), "0000000000000002", "w1")
	h.mustAssign(sec(1), "0000000000000003", "w1")
	h.mustResult(sec(5), "0000000000000003", api.OutcomeFailed)
	h.mustSucceed(sec(2), "0000000000000004", "w2")
	h.cancel(sec(2), "0000000000000005")
	for range 2 {
		h.mustAssign(sec(3), "0000000000000006", "w2")
		h.requeue(sec(3), api.OutcomeLost, h.ref("0000000000000006"))
	}
	h.mustAssign(sec(4), "0000000000000006", "w2")
	h.mustAssign(sec(4), "0000000000000007", "w3")
	h.mustResult(sec(4), "0000000000000007", api.OutcomeTimeout)
	h.mustAssign(sec(4), "0000000000000008", "w3")
	h.mustResult(sec(4), "0000000000000008", api.OutcomeReleased)
	return h
}

// applySeeds are valid, sometimes odd, entries aimed at mustPrepared's tasks.
func applySeeds() []Entry {
	res := func(id string, attempt int, worker string, o api.Outcome) api.AttemptResult {
		return api.AttemptResult{TaskID: id, Attempt: attempt, Worker: worker, Outcome: o}
	}
	zero := time.Time{}
	end := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	return []Entry{
		&SubmitEntry{At: sec(10), Tasks: []api.TaskSpec{{IdempotencyKey: "k1"}, {MaxAttempts: -1, Priority: 1 << 40}, {}, {IdempotencyKey: "k new"}, {IdempotencyKey: "k new"}}},
		&SubmitEntry{At: zero},
		&AssignEntry{At: sec(10), Assignments: []Assignment{{TaskID: "0000000000000001", Attempt: 1, Worker: "w9"}, {TaskID: "0000000000000003", Attempt: 2, Worker: "w9"}, {TaskID: "0000000000000008", Attempt: 2, Worker: "w1"}}},
		&AssignEntry{At: sec(5), Assignments: []Assignment{{TaskID: "0000000000000003", Attempt: 2, Worker: "w9"}, {TaskID: "0000000000000001", Attempt: 1}}},
		&ResultEntry{At: sec(10), BackoffBase: base, Results: []api.AttemptResult{res("0000000000000002", 1, "w1", api.OutcomeSucceeded), res("0000000000000006", 3, "w2", api.OutcomeFailed)}},
		&ResultEntry{At: sec(10), BackoffBase: -5, Results: []api.AttemptResult{res("0000000000000002", 1, "w1", api.OutcomeTimeout), res("0000000000000002", 1, "w1", api.OutcomeTimeout)}},
		&ResultEntry{At: sec(10), Results: []api.AttemptResult{res("0000000000000008", 1, "w3", api.OutcomeReleased), res("0000000000000004", 1, "w2", api.OutcomeSucceeded), res("0000000000000008", 1, "w3", api.OutcomeCanceled)}},
		&ResultEntry{At: sec(10), Results: []api.AttemptResult{res("0000000000000002", 1, "w1", api.OutcomeRunning), res("0000000000000001", 0, "", ""), res("0000000000000009", 1, "w1", api.OutcomeSucceeded)}},
		&ResultEntry{At: end, BackoffBase: time.Hour, Results: []api.AttemptResult{res("0000000000000002", 1, "w1", api.OutcomeFailed)}},
		&ResultEntry{At: zero, BackoffBase: 1 << 62, Results: []api.AttemptResult{res("0000000000000006", 3, "w2", api.OutcomeTimeout)}},
		&RequeueEntry{At: sec(10), Outcome: api.OutcomeLost, Attempts: []api.AttemptRef{{TaskID: "0000000000000006", Attempt: 3}, {TaskID: "0000000000000002", Attempt: 1}}},
		&RequeueEntry{At: sec(10), Outcome: api.OutcomeUndelivered, Attempts: []api.AttemptRef{{TaskID: "0000000000000002", Attempt: 1}, {TaskID: "0000000000000002", Attempt: 1}}},
		&RequeueEntry{At: zero, Outcome: "", Attempts: []api.AttemptRef{{TaskID: "0000000000000006", Attempt: 3}}},
		&CancelEntry{At: sec(10), TaskID: "0000000000000002"},
		&CancelEntry{At: sec(10), TaskID: "0000000000000003"},
		&CancelEntry{At: zero, TaskID: "0000000000000004"},
		&CancelEntry{At: end, TaskID: "0000000000000006"},
		&GCEntry{At: sec(10), Before: farFuture, Limit: 1 << 62},
		&GCEntry{At: sec(10), Before: sec(3), Limit: 1},
		&GCEntry{At: sec(10), Before: zero, Limit: -1},
	}
}

func FuzzApply(f *testing.F) {
	for _, e := range applySeeds() {
		f.Add(mustEncode(f, e))
	}
	for _, e := range sampleEntries() {
		f.Add(mustEncode(f, e))
	}
	for _, e := range append(applySeeds(), sampleEntries()...) {
		if b, err := EncodeFormat(e, ProtoBinary); err == nil && b[0]&binaryFlag != 0 {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			return // Apply panics on these by design (TestApply_UndecodableCommandPanics)
		}
		if r, ok := e.(*ResultEntry); ok && r.At.Add(api.MaxRetryBackoff).Year() > 9999 {
			// A retry time past year 9999 has no JSON form, so the task could
			// not be listed or snapshotted: a known limit (DESIGN.md), out of
			// reach of a leader whose clock is anywhere near now.
			return
		}
		h := mustPrepared(t)
		twin := mustPrepared(t)
		before := map[string]api.Task{}
		for _, task := range listAll(t, h.f, "", 100) {
			before[task.ID] = task
		}

		resp := h.f.Apply(h.nextLog(raft.LogCommand, b))
		if !answers(e, resp) {
			t.Fatalf("%s entry answered %#v", e.Type(), resp)
		}
		checkInvariants(t, h.f)
		after := listAll(t, h.f, "", 100)
		seen := map[string]bool{}
		for _, task := range after {
			seen[task.ID] = true
			old, ok := before[task.ID]
			if !ok {
				continue
			}
			if old.State.Terminal() && mustJSON(t, old) != mustJSON(t, task) {
				t.Fatalf("terminal task %s changed:\n%+v\n%+v", task.ID, old, task)
			}
			if task.Attempt < old.Attempt {
				t.Fatalf("task %s attempt went back %d -> %d", task.ID, old.Attempt, task.Attempt)
			}
		}
		for id, old := range before {
			if !seen[id] && (e.Type() != EntryGC || !old.State.Terminal()) {
				t.Fatalf("%s task %s vanished under a %s entry", old.State, id, e.Type())
			}
		}

		// Deterministic: the same bytes give the same answer and state.
		if got := twin.f.Apply(twin.nextLog(raft.LogCommand, bytes.Clone(b))); mustJSON(t, got) != mustJSON(t, resp) {
			t.Fatalf("answers differ: %s vs %s", mustJSON(t, got), mustJSON(t, resp))
		}
		print := fingerprint(t, h.f)
		if got := fingerprint(t, twin.f); got != print {
			t.Fatalf("same entry, different states:\n%s\n%s", print, got)
		}

		// Delivered twice (raft never does that, but the state must stay sane).
		h.f.Apply(h.nextLog(raft.LogCommand, b))
		checkInvariants(t, h.f)

		// The state still snapshots and restores.
		r := mustRestore(t, mustPersist(t, mustSnapshot(t, twin.f)))
		if got := fingerprint(t, r); got != print {
			t.Fatalf("restored state differs:\n%s\n%s", print, got)
		}
		checkInvariants(t, r)
	})
}

// answers reports whether resp is the answer type of e's entry type.
func answers(e Entry, resp any) bool {
	switch e.(type) {
	case *SubmitEntry:
		r, ok := resp.(*SubmitResponse)
		return ok && len(r.Results) == len(e.(*SubmitEntry).Tasks)
	case *AssignEntry:
		r, ok := resp.(*AssignResponse)
		return ok && len(r.Accepted) == len(e.(*AssignEntry).Assignments)
	case *ResultEntry:
		r, ok := resp.(*ResultResponse)
		return ok && len(r.Errors) == len(e.(*ResultEntry).Results)
	case *RequeueEntry:
		r, ok := resp.(*RequeueResponse)
		return ok && len(r.Requeued) == len(e.(*RequeueEntry).Attempts)
	case *CancelEntry:
		_, ok := resp.(*CancelResponse)
		return ok
	case *GCEntry:
		_, ok := resp.(*GCResponse)
		return ok
	case *SetScaleEntry:
		_, ok := resp.(*SetScaleResponse)
		return ok
	case *ScaleOpEntry:
		_, ok := resp.(*ScaleOpResponse)
		return ok
	case *SubmitAssignEntry:
		r, ok := resp.(*SubmitAssignResponse)
		n := len(e.(*SubmitAssignEntry).Tasks)
		return ok && len(r.Results) == n && len(r.Assigned) == n
	}
	return false
}
