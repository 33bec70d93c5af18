package fsm

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gantryhq/gantry/api"
	"github.com/hashicorp/raft"
)

// This file checks the FSM against a small reference model written from the
// rules in DESIGN.md, over long seeded random sequences of entries, valid and
// not, applied one by one and in batches. After every step it checks the
// answers and the state against the model, the structural invariants
// (checkInvariants), and that nothing moves backwards: terminal tasks never
// change, attempt numbers never decrease, forgotten tasks never return.

// mTask is the model's view of a task.
type mTask struct {
	id         string
	seq        uint64
	state      api.TaskState
	attempt    int
	worker     string
	prio       int
	max        int
	key        string
	failures   int
	lost       int
	notBefore  time.Time
	finishedAt time.Time
	last       api.Outcome // outcome of the latest attempt, "" before the first
	spec       api.TaskSpec
	lastCode   int    // exit code kept in the latest attempt's history
	lastOut    string // output kept in the latest attempt's history
}

type model struct {
	seq   uint64
	tasks map[string]*mTask
	keys  map[string]string
	stale uint64
}

func newModel() *model {
	return &model{tasks: map[string]*mTask{}, keys: map[string]string{}}
}

// recorded is what the history keeps for a reported outcome.
func recorded(o api.Outcome) api.Outcome {
	switch o {
	case api.OutcomeSucceeded, api.OutcomeFailed, api.OutcomeTimeout:
		return o
	}
	return api.OutcomeReleased
}

// tailOf is what an attempt's history keeps of output: all of it when it
// fits in keep bytes, else a marker line naming the bytes dropped and the
// longest end that fits with it, cut at a character boundary.
func tailOf(output string, keep int) string {
	if len(output) <= keep {
		return output
	}
	best := ""
	for drop := len(output); drop > 0; drop-- {
		if drop < len(output) && !utf8.RuneStart(output[drop]) {
			continue
		}
		cand := fmt.Sprintf("[gantry: %d bytes dropped]\n", drop) + output[drop:]
		if len(cand) <= keep {
			best = cand
		} else {
			break
		}
	}
	return best
}

func (m *model) apply(e Entry) any {
	switch e := e.(type) {
	case *SubmitEntry:
		resp := &SubmitResponse{Results: make([]SubmitOutcome, len(e.Tasks))}
		for i, s := range e.Tasks {
			if id, ok := m.keys[s.IdempotencyKey]; ok && s.IdempotencyKey != "" {
				resp.Results[i] = SubmitOutcome{ID: id, Existing: true, Conflict: !reflect.DeepEqual(m.tasks[id].spec, s)}
				continue
			}
			m.seq++
			t := &mTask{id: api.FormatTaskID(m.seq), seq: m.seq, state: api.StatePending, prio: s.Priority, max: s.MaxAttempts, key: s.IdempotencyKey, spec: s}
			m.tasks[t.id] = t
			if t.key != "" {
				m.keys[t.key] = t.id
			}
			resp.Results[i] = SubmitOutcome{ID: t.id}
		}
		return resp
	case *SubmitAssignEntry:
		sub := m.apply(&SubmitEntry{At: e.At, Tasks: e.Tasks}).(*SubmitResponse)
		resp := &SubmitAssignResponse{Results: sub.Results, Assigned: make([]bool, len(e.Tasks))}
		as := &AssignEntry{At: e.At}
		var idx []int
		for i, o := range sub.Results {
			if e.Workers[i] != "" && !o.Existing {
				as.Assignments = append(as.Assignments, Assignment{TaskID: o.ID, Attempt: 1, Worker: e.Workers[i]})
				idx = append(idx, i)
			}
		}
		for j, ok := range m.apply(as).(*AssignResponse).Accepted {
			resp.Assigned[idx[j]] = ok
		}
		return resp
	case *AssignEntry:
		resp := &AssignResponse{Accepted: make([]bool, len(e.Assignments))}
		for i, a := range e.Assignments {
			t := m.tasks[a.TaskID]
			if t == nil || a.Worker == "" || t.state != api.StatePending || a.Attempt != t.attempt+1 || t.notBefore.After(e.At) {
				continue
			}
			t.state, t.attempt, t.worker, t.notBefore, t.last = api.StateRunning, a.Attempt, a.Worker, time.Time{}, api.OutcomeRunning
			t.lastCode, t.lastOut = 0, ""
			resp.Accepted[i] = true
		}
		return resp
	case *ResultEntry:
		resp := &ResultResponse{Errors: make([]error, len(e.Results))}
		for i, r := range e.Results {
			t := m.tasks[r.TaskID]
			switch {
			case t == nil:
				resp.Errors[i] = api.ErrNotFound
			case t.state != api.StateRunning && r.Attempt == t.attempt && r.Worker == t.worker && t.attempt > 0 &&
				(t.last == r.Outcome || t.last == recorded(r.Outcome)):
				// a duplicate of the accepted report
			case t.state != api.StateRunning || r.Attempt != t.attempt || r.Worker != t.worker:
				m.stale++
				resp.Errors[i] = api.ErrStaleAttempt
			case r.Outcome == api.OutcomeSucceeded:
				t.state, t.finishedAt, t.last = api.StateSucceeded, e.At, r.Outcome
			case r.Outcome.CountsAsFailure():
				t.failures++
				t.last = r.Outcome
				if e.KeepOutput > 0 {
					t.lastCode, t.lastOut = r.ExitCode, tailOf(r.Output, e.KeepOutput)
				}
				codes := t.spec.NoRetryExitCodes
				if codes == nil {
					codes = e.NoRetryExitCodes
				}
				if t.failures >= t.max || r.Outcome == api.OutcomeFailed && slices.Contains(codes, r.ExitCode) {
					t.state, t.finishedAt = api.StateFailed, e.At
				} else {
					t.state, t.notBefore = api.StatePending, e.At.Add(api.Backoff(e.BackoffBase, t.failures))
				}
			default:
				t.state, t.last = api.StatePending, api.OutcomeReleased
			}
		}
		return resp
	case *RequeueEntry:
		resp := &RequeueResponse{Requeued: make([]bool, len(e.Attempts))}
		for i, ref := range e.Attempts {
			t := m.tasks[ref.TaskID]
			if t == nil || t.state != api.StateRunning || t.attempt != ref.Attempt {
				continue
			}
			resp.Requeued[i] = true
			t.last = api.OutcomeLost
			if e.Outcome == api.OutcomeUndelivered {
				t.last = api.OutcomeUndelivered
			} else {
				t.lost++
			}
			if t.lost >= api.MaxLostAttempts {
				t.state, t.finishedAt = api.StateFailed, e.At
			} else {
				t.state = api.StatePending
			}
		}
		return resp
	case *CancelEntry:
		t := m.tasks[e.TaskID]
		switch {
		case t == nil:
			return &CancelResponse{Err: api.ErrNotFound}
		case t.state.Terminal():
			return &CancelResponse{Err: api.ErrConflict}
		}
		resp := &CancelResponse{}
		if t.state == api.StateRunning {
			resp.Running = &api.AttemptRef{TaskID: t.id, Attempt: t.attempt}
			resp.Worker = t.worker
			t.last = api.OutcomeCanceled
		}
		t.state, t.finishedAt, t.notBefore = api.StateCanceled, e.At, time.Time{}
		return resp
	case *GCEntry:
		var done []*mTask
		for _, t := range m.tasks {
			if t.state.Terminal() && t.finishedAt.UnixNano() < e.Before.UnixNano() {
				done = append(done, t)
			}
		}
		slices.SortFunc(done, func(a, b *mTask) int {
			return cmp.Or(cmp.Compare(a.finishedAt.UnixNano(), b.finishedAt.UnixNano()), cmp.Compare(a.seq, b.seq))
		})
		done = done[:max(0, min(len(done), e.Limit))]
		for _, t := range done {
			delete(m.tasks, t.id)
			if t.key != "" {
				delete(m.keys, t.key)
			}
		}
		return &GCResponse{Removed: len(done)}
	}
	panic(fmt.Sprintf("model: unknown entry %T", e))
}

func sameResponse(t testing.TB, e Entry, got, want any) {
	t.Helper()
	fail := func() {
		t.Fatalf("%s entry %s\nanswered %s\nmodel    %s", e.Type(), mustJSON(t, e), mustJSON(t, got), mustJSON(t, want))
	}
	switch w := want.(type) {
	case *SubmitResponse:
		if !slices.Equal(as[*SubmitResponse](t, got).Results, w.Results) {
			fail()
		}
	case *SubmitAssignResponse:
		g := as[*SubmitAssignResponse](t, got)
		if !slices.Equal(g.Results, w.Results) || !slices.Equal(g.Assigned, w.Assigned) {
			fail()
		}
	case *AssignResponse:
		if !slices.Equal(as[*AssignResponse](t, got).Accepted, w.Accepted) {
			fail()
		}
	case *RequeueResponse:
		if !slices.Equal(as[*RequeueResponse](t, got).Requeued, w.Requeued) {
			fail()
		}
	case *ResultResponse:
		g := as[*ResultResponse](t, got)
		if len(g.Errors) != len(w.Errors) {
			fail()
		}
		for i := range w.Errors {
			if (w.Errors[i] == nil) != (g.Errors[i] == nil) || (w.Errors[i] != nil && !errors.Is(g.Errors[i], w.Errors[i])) {
				fail()
			}
		}
	case *CancelResponse:
		g := as[*CancelResponse](t, got)
		if (w.Err == nil) != (g.Err == nil) || (w.Err != nil && !errors.Is(g.Err, w.Err)) ||
			!reflect.DeepEqual(g.Running, w.Running) || g.Worker != w.Worker {
			fail()
		}
	case *GCResponse:
		if as[*GCResponse](t, got).Removed != w.Removed {
			fail()
		}
	}
}

// sameState compares every task, the counts, the stale counter and the keys
// with the model.
func sameState(t testing.TB, f *FSM, m *model, all []api.Task) {
	t.Helper()
	if len(all) != len(m.tasks) {
		t.Fatalf("%d tasks, model has %d", len(all), len(m.tasks))
	}
	for _, task := range all {
		mt := m.tasks[task.ID]
		if mt == nil {
			t.Fatalf("task %s is not in the model", task.ID)
		}
		last := api.Outcome("")
		if n := len(task.Attempts); n > 0 {
			last = task.Attempts[n-1].Outcome
		}
		if task.State != mt.state || task.Attempt != mt.attempt || task.Worker != mt.worker || task.Priority != mt.prio ||
			task.MaxAttempts != mt.max || task.IdempotencyKey != mt.key || task.Failures != mt.failures || task.Lost != mt.lost ||
			!task.NotBefore.Equal(mt.notBefore) || !task.FinishedAt.Equal(mt.finishedAt) || last != mt.last ||
			!slices.Equal(task.NoRetryExitCodes, mt.spec.NoRetryExitCodes) {
			t.Fatalf("task %s\n%+v\nmodel %+v", task.ID, task, *mt)
		}
		if n := len(task.Attempts); n > 0 && (task.Attempts[n-1].ExitCode != mt.lastCode || task.Attempts[n-1].Output != mt.lastOut) {
			t.Fatalf("task %s: the latest attempt keeps exit code %d output %q; model %d %q", task.ID, task.Attempts[n-1].ExitCode, task.Attempts[n-1].Output, mt.lastCode, mt.lastOut)
		}
	}
	if got := f.StaleResults(); got != m.stale {
		t.Fatalf("stale results %d, model %d", got, m.stale)
	}
	for key, id := range m.keys {
		if got, ok := f.LookupKey(key); !ok || got != id {
			t.Fatalf("LookupKey(%s) = %s, %v; model %s", key, got, ok, id)
		}
	}
}

// checkReady compares Ready(now, limit) with the model: the eligible tasks by
// priority then FIFO, and the next due time. Ready considers at most
// 4*limit due delayed tasks (oldest due first), so the answer is exact only
// while no more than that many are due; past that it must still be a
// well-ordered selection of eligible tasks of the right length.
func checkReady(t testing.TB, f *FSM, m *model, now time.Time, limit int) {
	t.Helper()
	var eligible []*mTask
	var next time.Time
	dueDelayed := 0
	for _, mt := range m.tasks {
		if mt.state != api.StatePending {
			continue
		}
		if mt.notBefore.IsZero() || !mt.notBefore.After(now) {
			eligible = append(eligible, mt)
			if !mt.notBefore.IsZero() {
				dueDelayed++
			}
		} else if next.IsZero() || mt.notBefore.Before(next) {
			next = mt.notBefore
		}
	}
	order := func(a, b *mTask) int { return cmp.Or(cmp.Compare(b.prio, a.prio), cmp.Compare(a.seq, b.seq)) }
	slices.SortFunc(eligible, order)
	got, gotNext := f.Ready(now, limit)
	if !gotNext.Equal(next) {
		t.Fatalf("Ready(%v, %d) next %v, model %v", now, limit, gotNext, next)
	}
	if len(got) != min(limit, len(eligible)) {
		t.Fatalf("Ready(%v, %d) gave %d tasks of %d eligible", now, limit, len(got), len(eligible))
	}
	if dueDelayed <= 4*limit {
		want := make([]string, len(got))
		for i := range want {
			want[i] = eligible[i].id
		}
		if !slices.Equal(ids(got), want) {
			t.Fatalf("Ready(%v, %d) = %v, model %v", now, limit, ids(got), want)
		}
		return
	}
	for i, task := range got {
		mt := m.tasks[task.ID]
		if mt == nil || !slices.Contains(eligible, mt) {
			t.Fatalf("Ready gave %s, which is not eligible", task.ID)
		}
		if i > 0 && order(m.tasks[got[i-1].ID], mt) > 0 {
			t.Fatalf("Ready out of order: %v", ids(got))
		}
	}
}

// gen makes random entries, mostly plausible, some not.
type gen struct {
	format  int // the entry format written: fields of newer formats stay zero
	rng     *rand.Rand
	m       *model
	now     time.Time
	ids     []string // every ID ever given out
	sent    []api.AttemptResult
	workers []string
}

func (g *gen) pick(n int) int { return g.rng.IntN(n) }

func (g *gen) chance(p float64) bool { return g.rng.Float64() < p }

func (g *gen) at() time.Time {
	if g.chance(0.05) { // a new leader whose clock is behind
		return g.now.Add(-time.Duration(g.pick(10_000)) * time.Millisecond)
	}
	return g.now
}

// taskIn returns a task in state st when there is one (most of the time),
// else any ID ever given out, else a bogus one.
func (g *gen) taskIn(st api.TaskState) *mTask {
	if g.chance(0.8) {
		var c []*mTask
		for _, id := range g.ids {
			if t := g.m.tasks[id]; t != nil && t.state == st {
				c = append(c, t)
			}
		}
		if len(c) > 0 {
			return c[g.pick(len(c))]
		}
	}
	if len(g.ids) > 0 && g.chance(0.9) {
		id := g.ids[g.pick(len(g.ids))]
		if t := g.m.tasks[id]; t != nil {
			return t
		}
		return &mTask{id: id, attempt: 1 + g.pick(3), worker: g.worker()} // forgotten
	}
	bogus := []string{"", "x", "0000000000000000", "ffffffffffffffff", "00000000000fffff", "000000000000000G"}
	return &mTask{id: bogus[g.pick(len(bogus))], attempt: 1, worker: g.worker()}
}

func (g *gen) worker() string {
	if g.chance(0.03) {
		return ""
	}
	return g.workers[g.pick(len(g.workers))]
}

func (g *gen) skew(n int) int {
	switch g.pick(10) {
	case 0:
		return n - 1
	case 1:
		return n + 1
	case 2:
		return n + 2
	}
	return n
}

func (g *gen) entry() Entry {
	switch p := g.pick(100); {
	case p < 12:
		e := &SubmitEntry{At: g.at()}
		for range 1 + g.pick(2) {
			if len(g.ids) > 0 && g.chance(0.15) { // a client's retry: the same spec, key and all
				if t := g.m.tasks[g.ids[g.pick(len(g.ids))]]; t != nil && t.key != "" {
					e.Tasks = append(e.Tasks, t.spec)
					continue
				}
			}
			e.Tasks = append(e.Tasks, specWith(func(s *api.TaskSpec) {
				s.Args = []string{"job", fmt.Sprint(g.pick(1000))}
				s.Priority = g.pick(5) - 2
				s.MaxAttempts = 1 + g.pick(4)
				if g.chance(0.4) {
					s.IdempotencyKey = fmt.Sprint("key-", g.pick(40))
				}
				if g.format >= ProtoNoRetry && g.chance(0.3) {
					s.NoRetryExitCodes = [][]int{{}, {2}, {1, 2}, {126}}[g.pick(4)]
				}
			}))
		}
		if g.chance(0.3) { // started at submit on the workers named
			sa := &SubmitAssignEntry{At: e.At, Tasks: e.Tasks}
			for range e.Tasks {
				sa.Workers = append(sa.Workers, g.worker())
			}
			return sa
		}
		return e
	case p < 42:
		e := &AssignEntry{At: g.at()}
		for range 1 + g.pick(3) {
			t := g.taskIn(api.StatePending)
			w := g.worker()
			e.Assignments = append(e.Assignments, Assignment{TaskID: t.id, Attempt: g.skew(t.attempt + 1), Worker: w})
		}
		return e
	case p < 70:
		e := &ResultEntry{At: g.at(), BackoffBase: time.Duration(g.pick(3000)) * time.Millisecond}
		if g.format >= ProtoNoRetry {
			e.NoRetryExitCodes = api.DefaultNoRetryExitCodes
			e.KeepOutput = []int{0, 40, 64}[g.pick(3)]
		}
		for range 1 + g.pick(2) {
			if len(g.sent) > 0 && g.chance(0.15) { // a report sent again
				e.Results = append(e.Results, g.sent[g.pick(len(g.sent))])
				continue
			}
			t := g.taskIn(api.StateRunning)
			outcomes := []api.Outcome{api.OutcomeSucceeded, api.OutcomeSucceeded, api.OutcomeFailed, api.OutcomeFailed, api.OutcomeTimeout, api.OutcomeReleased, api.OutcomeCanceled}
			o := outcomes[g.pick(len(outcomes))]
			if g.chance(0.02) {
				o = []api.Outcome{"", api.OutcomeLost, api.OutcomeRunning, "weird"}[g.pick(4)]
			}
			w := t.worker
			if g.chance(0.1) {
				w = g.worker()
			}
			code := []int{0, 1, 2, 2, 126, 127}[g.pick(6)]
			out := []string{"o", "", "a longer output: é the end\n"}[g.pick(3)]
			if g.chance(0.1) {
				out = strings.Repeat("line of output\n", 1+g.pick(8))
			}
			r := api.AttemptResult{TaskID: t.id, Attempt: g.skew(t.attempt), Worker: w, Outcome: o, ExitCode: code, Output: out}
			e.Results = append(e.Results, r)
			g.sent = append(g.sent, r)
			if len(g.sent) > 30 {
				g.sent = g.sent[1:]
			}
		}
		return e
	case p < 80:
		outcome := api.OutcomeLost
		switch g.pick(20) {
		case 0:
			outcome = "whatever"
		case 1, 2, 3, 4, 5, 6, 7:
			outcome = api.OutcomeUndelivered
		}
		e := &RequeueEntry{At: g.at(), Outcome: outcome, Reason: "gone"}
		for range 1 + g.pick(3) {
			t := g.taskIn(api.StateRunning)
			e.Attempts = append(e.Attempts, api.AttemptRef{TaskID: t.id, Attempt: g.skew(t.attempt)})
		}
		return e
	case p < 88:
		states := []api.TaskState{api.StatePending, api.StateRunning, api.StateSucceeded}
		return &CancelEntry{At: g.at(), TaskID: g.taskIn(states[g.pick(len(states))]).id}
	default:
		return &GCEntry{At: g.at(), Before: g.now.Add(-time.Duration(g.pick(40)) * time.Second), Limit: g.pick(25) - 2}
	}
}

// tracker checks that nothing moves backwards between steps.
type tracker struct {
	prev   map[string]api.Task
	gone   map[string]bool
	maxSeq uint64
}

// gcRan says a GC entry was among this step's entries; batched says the
// step had several (so a live task may have ended and been collected in it).
func (tr *tracker) step(t testing.TB, all []api.Task, gcRan, batched bool) {
	t.Helper()
	cur := make(map[string]api.Task, len(all))
	for _, task := range all {
		cur[task.ID] = task
		if tr.gone[task.ID] {
			t.Fatalf("forgotten task %s is back", task.ID)
		}
		old, ok := tr.prev[task.ID]
		if !ok {
			seq, _ := parseID(task.ID)
			if seq <= tr.maxSeq {
				t.Fatalf("new task %s does not follow %016x", task.ID, tr.maxSeq)
			}
			tr.maxSeq = seq
			continue
		}
		if old.State.Terminal() && mustJSON(t, old) != mustJSON(t, task) {
			t.Fatalf("terminal task changed:\n%+v\n%+v", old, task)
		}
		if task.Attempt < old.Attempt || task.Failures < old.Failures || task.Lost < old.Lost {
			t.Fatalf("task %s went back: attempt %d->%d failures %d->%d lost %d->%d", task.ID, old.Attempt, task.Attempt, old.Failures, task.Failures, old.Lost, task.Lost)
		}
		if !slices.EqualFunc(old.Attempts[:max(0, len(old.Attempts)-1)], task.Attempts[:max(0, len(old.Attempts)-1)], func(a, b api.AttemptRecord) bool { return a == b }) {
			t.Fatalf("task %s rewrote finished attempts", task.ID)
		}
	}
	for id, old := range tr.prev {
		if _, ok := cur[id]; !ok {
			if !gcRan || (!old.State.Terminal() && !batched) {
				t.Fatalf("task %s (%s) vanished without gc", id, old.State)
			}
			tr.gone[id] = true
		}
	}
	tr.prev = cur
}

func TestProperty_RandomOperationsKeepInvariants(t *testing.T) {
	steps := 2000
	if testing.Short() {
		steps = 400
	}
	for _, seed := range []uint64{1, 2, 20250301} {
		for _, format := range []int{ProtoSubmitAssign, ProtoBinary, ProtoNoRetry} {
			t.Run(fmt.Sprintf("seed%d/format%d", seed, format), func(t *testing.T) {
				runRandom(t, seed, steps, format)
			})
		}
	}
}

// runRandom applies steps random entries, encoded in format, checking the
// FSM against the model after each.
func runRandom(t *testing.T, seed uint64, steps, format int) {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	h := mustNewHarness(t)
	h.format = format
	m := newModel()
	g := &gen{format: format, rng: rng, m: m, now: t0, workers: []string{"w1", "w2", "w3", "w4"}}
	tr := &tracker{prev: map[string]api.Task{}, gone: map[string]bool{}}
	var (
		snap      raft.FSMSnapshot
		snapPrint string
		snapLogs  int
		accepted  = map[EntryType]int{}
	)
	for step := range steps {
		g.now = g.now.Add(time.Duration(rng.IntN(2500)) * time.Millisecond)
		n := 1
		if g.chance(0.15) {
			n = 2 + g.pick(4)
		}
		entries := make([]Entry, n)
		for i := range entries {
			entries[i] = g.entry()
		}
		var got []any
		if n == 1 && g.chance(0.5) {
			got = []any{h.apply(entries[0])}
		} else {
			// One batch, with raft's own log types mixed in.
			var logs []*raft.Log
			var cmd []int
			for _, e := range entries {
				if g.chance(0.2) {
					logs = append(logs, h.nextLog([]raft.LogType{raft.LogNoop, raft.LogConfiguration, raft.LogBarrier}[g.pick(3)], []byte{0xde, 0xad}))
				}
				cmd = append(cmd, len(logs))
				logs = append(logs, h.nextLog(raft.LogCommand, h.encode(e)))
			}
			out := h.f.ApplyBatch(logs)
			for i, r := range out {
				if !slices.Contains(cmd, i) && r != nil {
					t.Fatalf("non-command log answered %#v", r)
				}
			}
			for _, i := range cmd {
				got = append(got, out[i])
			}
		}
		gcRan := false
		for i, e := range entries {
			if _, ok := e.(*GCEntry); ok {
				gcRan = true
			}
			want := m.apply(e)
			sameResponse(t, e, got[i], want)
			var results []SubmitOutcome
			switch r := got[i].(type) {
			case *SubmitResponse:
				results = r.Results
			case *SubmitAssignResponse:
				results = r.Results
			}
			for _, o := range results {
				if !o.Existing {
					g.ids = append(g.ids, o.ID)
				}
			}
			if isAccepted(got[i]) {
				accepted[e.Type()]++
			}
		}
		if h.f.AppliedIndex() != h.index {
			t.Fatalf("applied index %d, want %d", h.f.AppliedIndex(), h.index)
		}

		checkInvariants(t, h.f)
		all := listAll(t, h.f, "", 1000)
		sameState(t, h.f, m, all)
		tr.step(t, all, gcRan, n > 1)
		for _, tt := range []struct {
			now   time.Time
			limit int
		}{{g.now, 1 + g.pick(5)}, {g.now, 1 << 20}, {g.now.Add(time.Duration(g.pick(5000)) * time.Millisecond), g.pick(8)}} {
			checkReady(t, h.f, m, tt.now, tt.limit)
		}
		for _, task := range all {
			if task.State.Terminal() && (task.FinishedAt.IsZero() || (task.State == api.StateSucceeded && task.Result == nil)) {
				t.Fatalf("terminal task %+v", task)
			}
			if task.State == api.StatePending && task.Failures > 0 && task.Failures >= task.MaxAttempts {
				t.Fatalf("pending task out of attempts: %+v", task)
			}
		}

		if step == steps/2 {
			snap = mustSnapshot(t, h.f)
			snapPrint = fingerprint(t, h.f)
			snapLogs = len(h.log)
		}
	}
	t.Logf("seed %d: %d tasks, counts %+v, stale %d, accepted entries %v", seed, len(m.tasks), h.f.Counts(), h.f.StaleResults(), accepted)
	for _, typ := range []EntryType{EntrySubmit, EntrySubmitAssign, EntryAssign, EntryResult, EntryRequeue, EntryCancel, EntryGC} {
		if accepted[typ] < 10 {
			t.Fatalf("only %d %s entries did anything: the generator is too timid", accepted[typ], typ)
		}
	}
	final := fingerprint(t, h.f)

	// Determinism: the same log bytes, applied in other batch sizes to a
	// fresh FSM, give the same state.
	replay := New()
	for i := 0; i < len(h.log); {
		n := 1 + rng.IntN(7)
		replay.ApplyBatch(h.log[i:min(i+n, len(h.log))])
		i += n
	}
	if got := fingerprint(t, replay); got != final {
		t.Fatalf("replay differs:\n%s\n%s", final, got)
	}

	// The snapshot taken mid-way, persisted only now, still holds the state
	// of its time; restoring it and replaying the rest of the log ends in the
	// same state.
	r := mustRestore(t, mustPersist(t, snap))
	if got := fingerprint(t, r); got != snapPrint {
		t.Fatalf("mid-way snapshot differs from its time:\n%s\n%s", snapPrint, got)
	}
	for _, l := range h.log[snapLogs:] {
		r.Apply(l)
	}
	if got := fingerprint(t, r); got != final {
		t.Fatalf("snapshot + rest of log differs:\n%s\n%s", final, got)
	}
	checkInvariants(t, r)
}

// isAccepted reports whether an answer says the entry changed something.
func isAccepted(resp any) bool {
	switch r := resp.(type) {
	case *SubmitResponse:
		return slices.ContainsFunc(r.Results, func(o SubmitOutcome) bool { return !o.Existing })
	case *SubmitAssignResponse:
		return slices.ContainsFunc(r.Results, func(o SubmitOutcome) bool { return !o.Existing })
	case *AssignResponse:
		return slices.Contains(r.Accepted, true)
	case *ResultResponse:
		return slices.Contains(r.Errors, nil)
	case *RequeueResponse:
		return slices.Contains(r.Requeued, true)
	case *CancelResponse:
		return r.Err == nil
	case *GCResponse:
		return r.Removed > 0
	}
	return false
}
