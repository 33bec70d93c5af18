package fsm

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/google/btree"
	"github.com/hashicorp/raft"
)

// t0 is the leader's clock at the start of every test.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// farFuture is later than any time a test uses.
var farFuture = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)

const base = time.Second // the backoff base tests put in result entries

// harness drives an FSM through its raft interface: every entry is encoded
// and applied as a raft.Log with the next index, and its bytes are kept so
// the log can be replayed into another FSM.
type harness struct {
	t      testing.TB
	f      *FSM
	index  uint64
	log    []*raft.Log // every log applied, in order
	format int         // the entry format entries are encoded in (0: JSON)
}

func mustNewHarness(t testing.TB) *harness {
	t.Helper()
	return &harness{t: t, f: New()}
}

func mustEncode(t testing.TB, e Entry) []byte {
	t.Helper()
	b, err := Encode(e)
	if err != nil {
		t.Fatalf("encode %T: %v", e, err)
	}
	return b
}

// encode encodes e in the harness's entry format.
func (h *harness) encode(e Entry) []byte {
	h.t.Helper()
	b, err := EncodeFormat(e, h.format)
	if err != nil {
		h.t.Fatalf("encode %T: %v", e, err)
	}
	return b
}

// nextLog wraps data as the next raft log of type typ.
func (h *harness) nextLog(typ raft.LogType, data []byte) *raft.Log {
	h.index++
	l := &raft.Log{Index: h.index, Term: 1, Type: typ, Data: data}
	h.log = append(h.log, l)
	return l
}

// apply encodes e and applies it with Apply.
func (h *harness) apply(e Entry) any {
	h.t.Helper()
	return h.f.Apply(h.nextLog(raft.LogCommand, h.encode(e)))
}

// applyBatch encodes entries and applies them with one ApplyBatch.
func (h *harness) applyBatch(entries ...Entry) []any {
	h.t.Helper()
	logs := make([]*raft.Log, len(entries))
	for i, e := range entries {
		logs[i] = h.nextLog(raft.LogCommand, h.encode(e))
	}
	return h.f.ApplyBatch(logs)
}

func as[T any](t testing.TB, v any) T {
	t.Helper()
	r, ok := v.(T)
	if !ok {
		var zero T
		t.Fatalf("response is %T, want %T", v, zero)
	}
	return r
}

// spec returns a normalized spec running args.
func spec(args ...string) api.TaskSpec {
	s := api.TaskSpec{Args: args}
	if err := s.Normalize(""); err != nil {
		panic(err)
	}
	return s
}

// specWith returns a normalized spec changed by fn before normalizing.
func specWith(fn func(*api.TaskSpec)) api.TaskSpec {
	s := api.TaskSpec{Args: []string{"true"}}
	fn(&s)
	if err := s.Normalize(""); err != nil {
		panic(err)
	}
	return s
}

func (h *harness) submit(at time.Time, specs ...api.TaskSpec) *SubmitResponse {
	h.t.Helper()
	return as[*SubmitResponse](h.t, h.apply(&SubmitEntry{At: at, Tasks: specs}))
}

// mustSubmit submits one new task and returns its ID.
func (h *harness) mustSubmit(at time.Time, s api.TaskSpec) string {
	h.t.Helper()
	resp := h.submit(at, s)
	if len(resp.Results) != 1 || resp.Results[0].Existing {
		h.t.Fatalf("submit: %+v, want one new task", resp.Results)
	}
	return resp.Results[0].ID
}

func (h *harness) assign(at time.Time, id string, attempt int, worker string) bool {
	h.t.Helper()
	resp := as[*AssignResponse](h.t, h.apply(&AssignEntry{At: at, Assignments: []Assignment{{TaskID: id, Attempt: attempt, Worker: worker}}}))
	if len(resp.Accepted) != 1 {
		h.t.Fatalf("assign: %d answers, want 1", len(resp.Accepted))
	}
	return resp.Accepted[0]
}

// mustAssign assigns the next attempt of id to worker and returns its number.
func (h *harness) mustAssign(at time.Time, id, worker string) int {
	h.t.Helper()
	attempt := h.mustGet(id).Attempt + 1
	if !h.assign(at, id, attempt, worker) {
		h.t.Fatalf("assign %s attempt %d to %s refused (task %+v)", id, attempt, worker, h.mustGet(id))
	}
	return attempt
}

func (h *harness) result(at time.Time, res api.AttemptResult) error {
	h.t.Helper()
	resp := as[*ResultResponse](h.t, h.apply(&ResultEntry{At: at, BackoffBase: base, Results: []api.AttemptResult{res}}))
	if len(resp.Errors) != 1 {
		h.t.Fatalf("result: %d answers, want 1", len(resp.Errors))
	}
	return resp.Errors[0]
}

// report builds the result of the current attempt of id.
func (h *harness) report(id string, outcome api.Outcome) api.AttemptResult {
	h.t.Helper()
	task := h.mustGet(id)
	return api.AttemptResult{TaskID: id, Attempt: task.Attempt, Worker: task.Worker, Outcome: outcome, ExitCode: exitCode(outcome), Output: "out " + id}
}

func exitCode(o api.Outcome) int {
	if o == api.OutcomeSucceeded {
		return 0
	}
	return 1
}

// mustResult reports the current attempt of id with outcome and requires it
// to be accepted.
func (h *harness) mustResult(at time.Time, id string, outcome api.Outcome) {
	h.t.Helper()
	if err := h.result(at, h.report(id, outcome)); err != nil {
		h.t.Fatalf("result %s %s: %v", id, outcome, err)
	}
}

func (h *harness) requeue(at time.Time, outcome api.Outcome, refs ...api.AttemptRef) []bool {
	h.t.Helper()
	resp := as[*RequeueResponse](h.t, h.apply(&RequeueEntry{At: at, Outcome: outcome, Reason: "worker w gone", Attempts: refs}))
	return resp.Requeued
}

func (h *harness) cancel(at time.Time, id string) *CancelResponse {
	h.t.Helper()
	return as[*CancelResponse](h.t, h.apply(&CancelEntry{At: at, TaskID: id}))
}

func (h *harness) gc(at, before time.Time, limit int) int {
	h.t.Helper()
	return as[*GCResponse](h.t, h.apply(&GCEntry{At: at, Before: before, Limit: limit})).Removed
}

func (h *harness) mustGet(id string) api.Task {
	h.t.Helper()
	task, ok := h.f.Get(id)
	if !ok {
		h.t.Fatalf("task %s not found", id)
	}
	return task
}

// ref names the current attempt of id.
func (h *harness) ref(id string) api.AttemptRef {
	h.t.Helper()
	return api.AttemptRef{TaskID: id, Attempt: h.mustGet(id).Attempt}
}

// mustSucceed runs id to success on worker.
func (h *harness) mustSucceed(at time.Time, id, worker string) {
	h.t.Helper()
	h.mustAssign(at, id, worker)
	h.mustResult(at, id, api.OutcomeSucceeded)
}

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if target == nil {
		if err != nil {
			t.Fatalf("error %v, want nil", err)
		}
		return
	}
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v", err, target)
	}
}

func wantState(t testing.TB, f *FSM, id string, want api.TaskState) api.Task {
	t.Helper()
	task, ok := f.Get(id)
	if !ok {
		t.Fatalf("task %s not found", id)
	}
	if task.State != want {
		t.Fatalf("task %s is %s, want %s", id, task.State, want)
	}
	return task
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return string(b)
}

// listAll pages through every task (in pages of pageSize) with filter state.
func listAll(t testing.TB, f *FSM, state api.TaskState, pageSize int) []api.Task {
	t.Helper()
	var out []api.Task
	after := ""
	for pages := 0; ; pages++ {
		page, err := f.List(api.ListFilter{State: state, After: after, Limit: pageSize})
		if err != nil {
			t.Fatalf("list state=%q after=%q: %v", state, after, err)
		}
		if len(page.Tasks) > pageSize {
			t.Fatalf("list returned %d tasks, limit %d", len(page.Tasks), pageSize)
		}
		out = append(out, page.Tasks...)
		if page.Next == "" {
			return out
		}
		if page.Next != page.Tasks[len(page.Tasks)-1].ID {
			t.Fatalf("next %q is not the last ID of the page", page.Next)
		}
		after = page.Next
		if pages > 1_000_000 {
			t.Fatal("list does not end")
		}
	}
}

// bufSink is a raft.SnapshotSink over a bytes.Buffer.
type bufSink struct {
	bytes.Buffer
	closed, canceled bool
}

func (s *bufSink) ID() string    { return "test" }
func (s *bufSink) Cancel() error { s.canceled = true; return nil }
func (s *bufSink) Close() error  { s.closed = true; return nil }

var _ raft.SnapshotSink = (*bufSink)(nil)

// mustSnapshot takes a snapshot of f (not yet persisted).
func mustSnapshot(t testing.TB, f *FSM) raft.FSMSnapshot {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return snap
}

// mustPersist writes snap out and returns the bytes.
func mustPersist(t testing.TB, snap raft.FSMSnapshot) []byte {
	t.Helper()
	sink := &bufSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	snap.Release()
	if !sink.closed || sink.canceled {
		t.Fatalf("persist left the sink closed=%v canceled=%v, want closed", sink.closed, sink.canceled)
	}
	return sink.Bytes()
}

// mustRestore restores data into a fresh FSM.
func mustRestore(t testing.TB, data []byte) *FSM {
	t.Helper()
	f := New()
	if err := f.Restore(readCloser{bytes.NewReader(data)}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	return f
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// fingerprint is everything the read methods say about an FSM's replicated
// state, as JSON, to compare two FSMs.
func fingerprint(t testing.TB, f *FSM) string {
	t.Helper()
	all, err := f.List(api.ListFilter{Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, task := range all.Tasks {
		if task.IdempotencyKey != "" {
			id, _ := f.LookupKey(task.IdempotencyKey)
			keys[task.IdempotencyKey] = id
		}
	}
	readyNow, nextNow := f.Ready(t0, 1<<20)
	readyAll, _ := f.Ready(farFuture, 1<<20)
	oldest, ok := f.OldestFinished()
	var oldestNano int64
	if ok {
		oldestNano = oldest.UnixNano()
	}
	return mustJSON(t, map[string]any{
		"tasks":          all.Tasks,
		"counts":         f.Counts(),
		"stale":          f.StaleResults(),
		"keys":           keys,
		"ready_now":      ids(readyNow),
		"next_now":       nextNow.UnixNano(),
		"ready_all":      ids(readyAll),
		"running":        f.Running(),
		"running_counts": f.RunningCounts(),
		"scale":          f.Scale(),
		"oldest":         oldestNano,
		"seq":            seqOf(f),
	})
}

func seqOf(f *FSM) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.seq
}

func ids(tasks []api.Task) []string {
	out := make([]string, len(tasks))
	for i, task := range tasks {
		out[i] = task.ID
	}
	return out
}

// checkInvariants checks everything that holds after any sequence of
// entries, valid or not: the indexes agree with the tasks, the counts with a
// recount through List, Running with the running tasks, and every task's
// history is well formed.
func checkInvariants(t testing.TB, f *FSM) {
	t.Helper()
	checkIndexes(t, f)

	all := listAll(t, f, "", 37)
	var recount api.TaskCounts
	for i, task := range all {
		recount.Add(task.State, 1)
		if i > 0 && all[i-1].ID >= task.ID {
			t.Fatalf("list out of order: %s before %s", all[i-1].ID, task.ID)
		}
		checkTask(t, task)
	}
	if got := f.Counts(); got != recount {
		t.Fatalf("counts %+v, recount over list %+v", got, recount)
	}
	for _, st := range api.States {
		byState := listAll(t, f, st, 23)
		var want []string
		for _, task := range all {
			if task.State == st {
				want = append(want, task.ID)
			}
		}
		if got := ids(byState); !slices.Equal(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("list state=%s: %v, want %v", st, got, want)
		}
	}

	// Running and RunningCounts against the running tasks, both ways.
	wantRunning := map[string][]RunningAttempt{}
	for _, task := range all {
		if task.State == api.StateRunning {
			wantRunning[task.Worker] = append(wantRunning[task.Worker], RunningAttempt{
				AttemptRef: api.AttemptRef{TaskID: task.ID, Attempt: task.Attempt},
				Worker:     task.Worker, StartedAt: task.StartedAt,
			})
		}
	}
	if got := f.Running(); !reflect.DeepEqual(got, wantRunning) {
		t.Fatalf("running %+v, want %+v", got, wantRunning)
	}
	wantCounts := map[string]int{}
	for w, list := range wantRunning {
		wantCounts[w] = len(list)
	}
	if got := f.RunningCounts(); !reflect.DeepEqual(got, wantCounts) {
		t.Fatalf("running counts %v, want %v", got, wantCounts)
	}

	// Ready far in the future holds every pending task due by then (all of
	// them, unless an entry carried an absurd time), by priority then FIFO.
	var pending []api.Task
	for _, task := range all {
		if task.State == api.StatePending && (task.NotBefore.IsZero() || task.NotBefore.UnixNano() <= farFuture.UnixNano()) {
			pending = append(pending, task)
		}
	}
	slices.SortStableFunc(pending, func(a, b api.Task) int { return cmp.Compare(b.Priority, a.Priority) })
	ready, _ := f.Ready(farFuture, len(all)+1)
	if got, want := ids(ready), ids(pending); !slices.Equal(got, want) {
		t.Fatalf("ready(far future) %v, want %v", got, want)
	}

	// Idempotency keys name their tasks.
	for _, task := range all {
		if task.IdempotencyKey == "" {
			continue
		}
		if id, ok := f.LookupKey(task.IdempotencyKey); !ok || id != task.ID {
			t.Fatalf("LookupKey(%q) = %q, %v; want %s", task.IdempotencyKey, id, ok, task.ID)
		}
	}

	// OldestFinished is the earliest finish among terminal tasks.
	var oldest time.Time
	haveOldest := false
	for _, task := range all {
		if task.State.Terminal() && (!haveOldest || task.FinishedAt.UnixNano() < oldest.UnixNano()) {
			oldest, haveOldest = task.FinishedAt, true
		}
	}
	if got, ok := f.OldestFinished(); ok != haveOldest || (ok && got.UnixNano() != oldest.UnixNano()) {
		t.Fatalf("OldestFinished = %v, %v; want %v, %v", got, ok, oldest, haveOldest)
	}
}

// checkTask checks the shape of one task.
func checkTask(t testing.TB, task api.Task) {
	t.Helper()
	seq, ok := parseID(task.ID)
	if !ok || seq == 0 || api.FormatTaskID(seq) != task.ID {
		t.Fatalf("task ID %q is not 16 hex digits of a sequence number", task.ID)
	}
	if !task.State.Valid() {
		t.Fatalf("task %s state %q", task.ID, task.State)
	}
	if len(task.Attempts) != task.Attempt {
		t.Fatalf("task %s at attempt %d has %d attempt records", task.ID, task.Attempt, len(task.Attempts))
	}
	failures, lost := 0, 0
	for i, a := range task.Attempts {
		if a.Attempt != i+1 {
			t.Fatalf("task %s attempt record %d is numbered %d", task.ID, i, a.Attempt)
		}
		if a.Worker == "" {
			t.Fatalf("task %s attempt %d has no worker", task.ID, a.Attempt)
		}
		if a.Outcome == api.OutcomeRunning && (task.State != api.StateRunning || i != len(task.Attempts)-1) {
			t.Fatalf("task %s (%s) has attempt %d still running", task.ID, task.State, a.Attempt)
		}
		if a.Outcome.CountsAsFailure() {
			failures++
		}
		if a.Outcome == api.OutcomeLost {
			lost++
		}
	}
	if failures != task.Failures || lost != task.Lost {
		t.Fatalf("task %s failures=%d lost=%d, history says %d and %d", task.ID, task.Failures, task.Lost, failures, lost)
	}
	if task.Lost > api.MaxLostAttempts || (task.Lost == api.MaxLostAttempts && task.State != api.StateFailed) {
		t.Fatalf("task %s lost %d attempts and is %s", task.ID, task.Lost, task.State)
	}
	if task.Attempt == 0 && task.Worker != "" {
		t.Fatalf("task %s never assigned but has worker %q", task.ID, task.Worker)
	}
	switch task.State {
	case api.StateRunning:
		last := task.Attempts[len(task.Attempts)-1]
		if task.Worker == "" || last.Outcome != api.OutcomeRunning || last.Worker != task.Worker || !task.NotBefore.IsZero() || !task.FinishedAt.IsZero() {
			t.Fatalf("running task %s is malformed: %+v", task.ID, task)
		}
	case api.StatePending:
		if !task.FinishedAt.IsZero() {
			t.Fatalf("pending task %s has finished_at", task.ID)
		}
	default:
		if !task.NotBefore.IsZero() {
			t.Fatalf("%s task %s has not_before", task.State, task.ID)
		}
	}
}

// checkIndexes rebuilds every index from the task tree and compares.
func checkIndexes(t testing.TB, f *FSM) {
	t.Helper()
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.s
	want := newState()
	var maxSeq uint64
	s.tasks.Ascend(func(r *record) bool {
		if seq, ok := parseID(r.task.ID); !ok || seq != r.seq {
			t.Fatalf("record seq %d holds task %q", r.seq, r.task.ID)
		}
		maxSeq = max(maxSeq, r.seq)
		want.insert(&record{seq: r.seq, task: r.task})
		return true
	})
	if maxSeq > s.seq {
		t.Fatalf("task seq %d beyond the last given out %d", maxSeq, s.seq)
	}
	if s.counts != want.counts {
		t.Fatalf("counts %+v, rebuilt %+v", s.counts, want.counts)
	}
	if !reflect.DeepEqual(s.keys, want.keys) {
		t.Fatalf("keys %v, rebuilt %v", s.keys, want.keys)
	}
	if !reflect.DeepEqual(s.running, want.running) {
		t.Fatalf("running index %v, rebuilt %v", s.running, want.running)
	}
	eq := func(name string, got, want any) {
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s index %v, rebuilt %v", name, got, want)
		}
	}
	eq("ready", items(s.ready), items(want.ready))
	eq("delayed", items(s.delayed), items(want.delayed))
	eq("finished", items(s.finished), items(want.finished))
	for _, st := range api.States {
		eq(fmt.Sprintf("byState[%s]", st), items(s.byState[st]), items(want.byState[st]))
	}
	if len(s.byState) != len(api.States) {
		t.Fatalf("byState has %d states", len(s.byState))
	}
}

func items[T any](tree *btree.BTreeG[T]) []T {
	out := []T{}
	tree.Ascend(func(v T) bool { out = append(out, v); return true })
	return out
}
