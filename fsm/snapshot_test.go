package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/gantryhq/gantry/api"
)

// moreEntries is a script of entries applied after a snapshot: every type,
// touching tasks of buildMixedState in every state.
func moreEntries() []Entry {
	return []Entry{
		&SubmitEntry{At: sec(60), Tasks: []api.TaskSpec{spec("new"), specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "key-0" }), specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "fresh"; s.Priority = 50 })}},
		&AssignEntry{At: sec(61), Assignments: []Assignment{{TaskID: "0000000000000001", Attempt: 1, Worker: "w4"}, {TaskID: "0000000000000006", Attempt: 2, Worker: "w4"}, {TaskID: "000000000000000b", Attempt: 1, Worker: "w5"}}},
		&ResultEntry{At: sec(62), BackoffBase: base, Results: []api.AttemptResult{
			{TaskID: "0000000000000002", Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded, Output: "ok"},
			{TaskID: "0000000000000003", Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}, // stale: w2 runs it
			{TaskID: "0000000000000001", Attempt: 1, Worker: "w4", Outcome: api.OutcomeFailed},
		}},
		&RequeueEntry{At: sec(63), Outcome: api.OutcomeLost, Attempts: []api.AttemptRef{{TaskID: "0000000000000003", Attempt: 1}, {TaskID: "000000000000000b", Attempt: 1}}},
		&CancelEntry{At: sec(64), TaskID: "000000000000000a"},
		&CancelEntry{At: sec(64), TaskID: "0000000000000004"},
		&GCEntry{At: sec(65), Before: sec(30), Limit: 3},
		&SubmitEntry{At: sec(66), Tasks: []api.TaskSpec{spec("after-gc"), specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "key-4" })}},
	}
}

func TestSnapshot_RestoreRoundTrip(t *testing.T) {
	h := mustNewHarness(t)
	buildMixedState(t, h)
	want := fingerprint(t, h.f)
	data := mustPersist(t, mustSnapshot(t, h.f))
	r := mustRestore(t, data)
	if got := fingerprint(t, r); got != want {
		t.Fatalf("restored state differs:\n%s\n%s", want, got)
	}
	checkInvariants(t, r)
	if r.StaleResults() != 1 {
		t.Fatalf("stale results %d", r.StaleResults())
	}
	if got := r.AppliedIndex(); got != h.f.AppliedIndex() {
		t.Fatalf("restored applied index %d, want %d", got, h.f.AppliedIndex())
	}
	for _, key := range []string{"key-0", "key-2", "key-4", "key-6", "key-8"} {
		a, aok := h.f.LookupKey(key)
		b, bok := r.LookupKey(key)
		if a != b || aok != bok || !aok {
			t.Fatalf("LookupKey(%s): %s %v vs %s %v", key, a, aok, b, bok)
		}
	}

	// The same entries applied to both give the same answers and states; IDs
	// continue from the same sequence number.
	rh := &harness{t: t, f: r, index: h.index}
	for _, e := range moreEntries() {
		a, b := mustJSON(t, h.apply(e)), mustJSON(t, rh.apply(e))
		if a != b {
			t.Fatalf("%s entry answered differently:\n%s\n%s", e.Type(), a, b)
		}
	}
	if a, b := fingerprint(t, h.f), fingerprint(t, r); a != b {
		t.Fatalf("states differ after the same entries:\n%s\n%s", a, b)
	}
	if _, ok := r.Get("000000000000000d"); !ok {
		t.Fatal("IDs did not continue from the snapshot's sequence")
	}
	checkInvariants(t, r)
}

func TestSnapshot_IsUnaffectedByLaterApplies(t *testing.T) {
	h := mustNewHarness(t)
	buildMixedState(t, h)
	want := fingerprint(t, h.f)
	snap := mustSnapshot(t, h.f)
	for _, e := range moreEntries() {
		h.apply(e)
	}
	for range 300 { // enough inserts to split and copy many tree nodes
		h.submit(sec(70), spec("more"))
	}
	changed := fingerprint(t, h.f)
	if changed == want {
		t.Fatal("the later entries changed nothing")
	}
	data := mustPersist(t, snap)
	if got := fingerprint(t, mustRestore(t, data)); got != want {
		t.Fatalf("snapshot saw later applies:\n%s\n%s", want, got)
	}
	if got := fingerprint(t, h.f); got != changed {
		t.Fatal("persisting the snapshot changed the live state")
	}
	// Persisting twice gives the same bytes.
	if again := mustPersist(t, snap); !bytes.Equal(again, data) {
		t.Fatal("a snapshot persisted twice differs")
	}
}

func TestSnapshot_PersistWhileApplying(t *testing.T) {
	// Persist runs on raft's snapshot goroutine while Apply goes on; the race
	// detector checks they share nothing mutable.
	h := mustNewHarness(t)
	buildMixedState(t, h)
	want := fingerprint(t, h.f)
	snap := mustSnapshot(t, h.f)
	done := make(chan []byte)
	go func() {
		sink := &bufSink{}
		if err := snap.Persist(sink); err != nil {
			t.Error(err)
		}
		done <- sink.Bytes()
	}()
	for _, e := range moreEntries() {
		h.apply(e)
	}
	for i := range 200 {
		id := h.mustSubmit(sec(80), spec("x"))
		if i%2 == 0 {
			h.mustSucceed(sec(81), id, "w1")
		}
	}
	h.gc(sec(82), farFuture, 50)
	data := <-done
	if got := fingerprint(t, mustRestore(t, data)); got != want {
		t.Fatalf("snapshot persisted during applies differs:\n%s\n%s", want, got)
	}
}

func TestSnapshot_EmptyFSM(t *testing.T) {
	data := mustPersist(t, mustSnapshot(t, New()))
	r := mustRestore(t, data)
	if c := r.Counts(); c != (api.TaskCounts{}) || r.StaleResults() != 0 {
		t.Fatalf("restored empty FSM: %+v", c)
	}
	h := &harness{t: t, f: r}
	if id := h.mustSubmit(t0, spec("x")); id != "0000000000000001" {
		t.Fatalf("first ID %s", id)
	}
}

func TestSnapshot_GCdTasksAndKeysStayForgotten(t *testing.T) {
	h := mustNewHarness(t)
	id := h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "once" }))
	h.cancel(sec(1), id)
	h.gc(sec(2), farFuture, 10)
	r := mustRestore(t, mustPersist(t, mustSnapshot(t, h.f)))
	if _, ok := r.LookupKey("once"); ok {
		t.Fatal("forgotten key came back")
	}
	rh := &harness{t: t, f: r}
	if got := rh.mustSubmit(sec(3), specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "once" })); got != "0000000000000002" {
		t.Fatalf("resubmitted key got ID %s; the sequence must not restart", got)
	}
}

// snapshotLines returns a persisted snapshot of buildMixedState split into
// its JSON lines (header first).
func snapshotLines(t *testing.T) []string {
	t.Helper()
	h := mustNewHarness(t)
	buildMixedState(t, h)
	data := string(mustPersist(t, mustSnapshot(t, h.f)))
	return strings.Split(strings.TrimSuffix(data, "\n"), "\n")
}

func editHeader(t *testing.T, line string, fn func(map[string]any)) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	return mustJSON(t, m)
}

func editTask(t *testing.T, line string, fn func(*api.Task)) string {
	t.Helper()
	var task api.Task
	if err := json.Unmarshal([]byte(line), &task); err != nil {
		t.Fatal(err)
	}
	fn(&task)
	return mustJSON(t, task)
}

func TestRestore_RejectsBadSnapshots(t *testing.T) {
	lines := snapshotLines(t)
	join := func(ls ...string) string { return strings.Join(ls, "\n") + "\n" }
	header, tasks := lines[0], lines[1:]
	withHeader := func(fn func(map[string]any)) string {
		return join(append([]string{editHeader(t, header, fn)}, tasks...)...)
	}
	withTask := func(i int, fn func(*api.Task)) string {
		ls := append([]string{header}, tasks...)
		ls[i+1] = editTask(t, ls[i+1], fn)
		return join(ls...)
	}
	tests := []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"garbage", "this is not a snapshot"},
		{"binary", "\x00\x01\x02\xff"},
		{"header only, tasks missing", join(header)},
		{"truncated task", join(header, tasks[0][:len(tasks[0])/2])},
		{"one task short", join(append([]string{header}, tasks[:len(tasks)-1]...)...)},
		{"version 0", withHeader(func(m map[string]any) { m["version"] = 0 })},
		{"version 2", withHeader(func(m map[string]any) { m["version"] = 2 })},
		{"version missing", withHeader(func(m map[string]any) { delete(m, "version") })},
		{"count too large", withHeader(func(m map[string]any) { m["count"] = len(tasks) + 1 })},
		{"count too small", withHeader(func(m map[string]any) { m["count"] = len(tasks) - 1 })},
		{"seq below a task", withHeader(func(m map[string]any) { m["seq"] = 3 })},
		{"trailing task", join(append([]string{header}, append(tasks, tasks[0])...)...)},
		{"trailing garbage", join(append([]string{header}, tasks...)...) + "xyz"},
		{"trailing brace", join(append([]string{header}, tasks...)...) + "}"},
		{"bad task id", withTask(2, func(task *api.Task) { task.ID = "task-3" })},
		{"uppercase task id", withTask(9, func(task *api.Task) { task.ID = "000000000000000A" })},
		{"zero task id", withTask(0, func(task *api.Task) { task.ID = "0000000000000000" })},
		{"duplicate task id", withTask(3, func(task *api.Task) { task.ID = "0000000000000003" })},
		{"tasks out of order", withTask(3, func(task *api.Task) { task.ID = "0000000000000001" })},
		{"bad state", withTask(4, func(task *api.Task) { task.State = "exploded" })},
		{"empty state", withTask(4, func(task *api.Task) { task.State = "" })},
		{"task not an object", join(header, "[]")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNewHarness(t)
			id := h.mustSubmit(t0, spec("kept"))
			_, ch, _ := h.f.WatchTask(id)
			before := fingerprint(t, h.f)
			rc := &trackingCloser{Reader: strings.NewReader(tt.data)}
			if err := h.f.Restore(rc); err == nil {
				t.Fatalf("Restore accepted %q", truncate(tt.data))
			}
			if !rc.closed {
				t.Fatal("Restore did not close its reader")
			}
			if after := fingerprint(t, h.f); after != before {
				t.Fatal("a failed Restore changed the state")
			}
			if closed(ch) {
				t.Fatal("a failed Restore woke watchers")
			}
		})
	}
	// The unedited lines restore: the edits above are what broke them.
	mustRestore(t, []byte(join(lines...)))
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

type trackingCloser struct {
	io.Reader
	closed bool
}

func (c *trackingCloser) Close() error { c.closed = true; return nil }

func TestRestore_ReplacesStateWakesWatchersAndKicks(t *testing.T) {
	src := mustNewHarness(t)
	buildMixedState(t, src)
	data := mustPersist(t, mustSnapshot(t, src.f))

	h := mustNewHarness(t)
	for range 20 {
		h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.Priority = 99 }))
	}
	h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "only-here" }))
	_, a, _ := h.f.WatchTask("0000000000000001")
	_, b, _ := h.f.WatchTask("0000000000000015")
	<-h.f.Changes()
	if err := h.f.Restore(readCloser{bytes.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
	if !closed(a) || !closed(b) {
		t.Fatal("Restore did not wake watchers")
	}
	select {
	case <-h.f.Changes():
	default:
		t.Fatal("Restore did not kick the dispatcher")
	}
	if got, want := fingerprint(t, h.f), fingerprint(t, src.f); got != want {
		t.Fatalf("restore over existing state differs from the source:\n%s\n%s", want, got)
	}
	if _, ok := h.f.LookupKey("only-here"); ok {
		t.Fatal("a key from before the restore survived it")
	}
	if got := h.f.AppliedIndex(); got != src.f.AppliedIndex() {
		t.Fatalf("applied index %d, want the snapshot's %d", got, src.f.AppliedIndex())
	}
	h.f.mu.RLock()
	n := len(h.f.watch)
	h.f.mu.RUnlock()
	if n != 0 {
		t.Fatalf("%d watch lists left after restore", n)
	}
	checkInvariants(t, h.f)
}

// failingSink fails every write after the first n bytes.
type failingSink struct {
	bufSink
	n int
}

var errDiskFull = errors.New("disk full")

func (s *failingSink) Write(p []byte) (int, error) {
	if s.Len()+len(p) > s.n {
		return 0, errDiskFull
	}
	return s.bufSink.Write(p)
}

func TestPersist_CancelsTheSinkOnWriteError(t *testing.T) {
	h := mustNewHarness(t)
	for i := range 3000 { // more than the 1 MiB write buffer
		h.mustSubmit(t0, specWith(func(s *api.TaskSpec) { s.Args = []string{"echo", strings.Repeat("x", 400), fmt.Sprint(i)} }))
	}
	for _, n := range []int{0, 100, 1 << 20} {
		sink := &failingSink{n: n}
		err := mustSnapshot(t, h.f).Persist(sink)
		if !errors.Is(err, errDiskFull) {
			t.Fatalf("limit %d: persist error %v", n, err)
		}
		if !sink.canceled || sink.closed {
			t.Fatalf("limit %d: sink canceled=%v closed=%v; want canceled only", n, sink.canceled, sink.closed)
		}
	}
}
