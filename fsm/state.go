package fsm

import (
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gantryhq/gantry/api"
	"github.com/google/btree"
)

// record is one stored task. Records are immutable once stored: every change
// stores a modified copy, so a snapshot can hold the old ones while Apply
// goes on.
type record struct {
	seq  uint64
	task api.Task
}

type readyKey struct {
	prio int
	seq  uint64
}

type timeKey struct {
	at  int64 // unix nanoseconds
	seq uint64
}

func lessRecord(a, b *record) bool { return a.seq < b.seq }
func lessReady(a, b readyKey) bool {
	if a.prio != b.prio {
		return a.prio > b.prio // higher priority first
	}
	return a.seq < b.seq // FIFO within a priority
}
func lessTime(a, b timeKey) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}

const degree = 32

// state is the replicated data and its indexes. It has no lock of its own;
// FSM guards it.
type state struct {
	seq   uint64                  // last task sequence number given out
	tasks *btree.BTreeG[*record]  // every task by seq; cloned cheaply for snapshots
	keys  map[string]uint64       // idempotency key -> seq
	ready *btree.BTreeG[readyKey] // pending tasks due now, by priority then seq
	// delayed holds pending tasks waiting for their retry time.
	delayed *btree.BTreeG[timeKey]
	// byState indexes seqs by state, for listing with a state filter.
	byState map[api.TaskState]*btree.BTreeG[uint64]
	// finished indexes terminal tasks by finish time, for garbage collection.
	finished *btree.BTreeG[timeKey]
	// running maps worker -> task seq -> attempt for running tasks.
	running map[string]map[uint64]int
	counts  api.TaskCounts
	stale   uint64 // results refused because their attempt was not current
	scale   scaleState
}

func newState() *state {
	s := &state{
		tasks:    btree.NewG(degree, lessRecord),
		keys:     make(map[string]uint64),
		ready:    btree.NewG(degree, lessReady),
		delayed:  btree.NewG(degree, lessTime),
		byState:  make(map[api.TaskState]*btree.BTreeG[uint64]),
		finished: btree.NewG(degree, lessTime),
		running:  make(map[string]map[uint64]int),
		scale:    newScaleState(),
	}
	for _, st := range api.States {
		s.byState[st] = btree.NewOrderedG[uint64](degree)
	}
	return s
}

// parseID turns a task ID back into its sequence number.
func parseID(id string) (uint64, bool) {
	if len(id) != 16 {
		return 0, false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(id, 16, 64)
	return n, err == nil
}

func (s *state) get(id string) (*record, bool) {
	seq, ok := parseID(id)
	if !ok {
		return nil, false
	}
	return s.getSeq(seq)
}

func (s *state) getSeq(seq uint64) (*record, bool) {
	return s.tasks.Get(&record{seq: seq})
}

// index adds r to the indexes of its state.
func (s *state) index(r *record) {
	t := &r.task
	s.byState[t.State].ReplaceOrInsert(r.seq)
	s.counts.Add(t.State, 1)
	switch {
	case t.State == api.StatePending && t.NotBefore.IsZero():
		s.ready.ReplaceOrInsert(readyKey{t.Priority, r.seq})
	case t.State == api.StatePending:
		s.delayed.ReplaceOrInsert(timeKey{t.NotBefore.UnixNano(), r.seq})
	case t.State == api.StateRunning:
		m := s.running[t.Worker]
		if m == nil {
			m = make(map[uint64]int)
			s.running[t.Worker] = m
		}
		m[r.seq] = t.Attempt
	case t.State.Terminal():
		s.finished.ReplaceOrInsert(timeKey{t.FinishedAt.UnixNano(), r.seq})
	}
	if t.IdempotencyKey != "" {
		s.keys[t.IdempotencyKey] = r.seq
	}
}

// unindex removes r from the indexes of its state (not from tasks or keys).
func (s *state) unindex(r *record) {
	t := &r.task
	s.byState[t.State].Delete(r.seq)
	s.counts.Add(t.State, -1)
	switch {
	case t.State == api.StatePending && t.NotBefore.IsZero():
		s.ready.Delete(readyKey{t.Priority, r.seq})
	case t.State == api.StatePending:
		s.delayed.Delete(timeKey{t.NotBefore.UnixNano(), r.seq})
	case t.State == api.StateRunning:
		if m := s.running[t.Worker]; m != nil {
			delete(m, r.seq)
			if len(m) == 0 {
				delete(s.running, t.Worker)
			}
		}
	case t.State.Terminal():
		s.finished.Delete(timeKey{t.FinishedAt.UnixNano(), r.seq})
	}
}

// replace stores next in place of old and fixes the indexes.
func (s *state) replace(old, next *record) {
	s.unindex(old)
	s.tasks.ReplaceOrInsert(next)
	s.index(next)
}

// insert stores a new record.
func (s *state) insert(r *record) {
	s.tasks.ReplaceOrInsert(r)
	s.index(r)
}

// remove forgets r entirely.
func (s *state) remove(r *record) {
	s.unindex(r)
	s.tasks.Delete(r)
	if k := r.task.IdempotencyKey; k != "" && s.keys[k] == r.seq {
		delete(s.keys, k)
	}
}

// modify returns a copy of r whose attempt history can be changed without
// touching r.
func modify(r *record) *record {
	n := &record{seq: r.seq, task: r.task}
	n.task.Attempts = slices.Clone(r.task.Attempts)
	return n
}

// finishAttempt closes the current attempt record of t.
func finishAttempt(t *api.Task, outcome api.Outcome, at time.Time, errText string) {
	if n := len(t.Attempts); n > 0 && t.Attempts[n-1].Attempt == t.Attempt {
		a := &t.Attempts[n-1]
		a.Outcome = outcome
		a.FinishedAt = at
		a.Error = errText
	}
}

// applySubmit adds the entry's tasks and returns one outcome per spec.
func (s *state) applySubmit(e *SubmitEntry) *SubmitResponse {
	resp := &SubmitResponse{Results: make([]SubmitOutcome, len(e.Tasks))}
	for i, spec := range e.Tasks {
		// A key seen earlier in this entry is found here too: insert
		// indexes every new task's key at once.
		if spec.IdempotencyKey != "" {
			if seq, ok := s.keys[spec.IdempotencyKey]; ok {
				o := SubmitOutcome{ID: api.FormatTaskID(seq), Existing: true}
				if r, ok := s.getSeq(seq); ok {
					known := r.task.Spec()
					o.Conflict = !known.Equal(&spec)
				}
				resp.Results[i] = o
				continue
			}
		}
		s.seq++
		r := &record{seq: s.seq, task: api.Task{
			ID:               api.FormatTaskID(s.seq),
			Type:             spec.Type,
			Args:             spec.Args,
			Payload:          spec.Payload,
			Env:              spec.Env,
			Timeout:          spec.Timeout,
			MaxAttempts:      spec.MaxAttempts,
			Priority:         spec.Priority,
			IdempotencyKey:   spec.IdempotencyKey,
			NoRetryExitCodes: spec.NoRetryExitCodes,
			State:            api.StatePending,
			CreatedAt:        e.At,
			Attempts:         []api.AttemptRecord{},
		}}
		s.insert(r)
		resp.Results[i] = SubmitOutcome{ID: r.task.ID}
	}
	return resp
}

// applySubmitAssign adds the tasks, then starts attempt 1 of each new one
// whose worker the entry names, under the rules of applyAssign.
func (s *state) applySubmitAssign(e *SubmitAssignEntry) *SubmitAssignResponse {
	sub := s.applySubmit(&SubmitEntry{At: e.At, Tasks: e.Tasks})
	resp := &SubmitAssignResponse{Results: sub.Results, Assigned: make([]bool, len(e.Tasks))}
	as := &AssignEntry{At: e.At}
	var idx []int
	for i, o := range sub.Results {
		if i < len(e.Workers) && e.Workers[i] != "" && !o.Existing {
			as.Assignments = append(as.Assignments, Assignment{TaskID: o.ID, Attempt: 1, Worker: e.Workers[i]})
			idx = append(idx, i)
		}
	}
	for j, ok := range s.applyAssign(as).Accepted {
		resp.Assigned[idx[j]] = ok
	}
	return resp
}

// applyAssign starts the entry's attempts and reports which were accepted.
func (s *state) applyAssign(e *AssignEntry) *AssignResponse {
	resp := &AssignResponse{Accepted: make([]bool, len(e.Assignments))}
	for i, a := range e.Assignments {
		r, ok := s.get(a.TaskID)
		if !ok || a.Worker == "" {
			continue
		}
		t := &r.task
		if t.State != api.StatePending || a.Attempt != t.Attempt+1 || t.NotBefore.After(e.At) || s.blocksAssign(a.Worker) {
			continue
		}
		n := modify(r)
		nt := &n.task
		nt.State = api.StateRunning
		nt.Attempt = a.Attempt
		nt.Worker = a.Worker
		nt.StartedAt = e.At
		nt.NotBefore = time.Time{}
		nt.Attempts = append(nt.Attempts, api.AttemptRecord{
			Attempt: a.Attempt, Worker: a.Worker, Outcome: api.OutcomeRunning, StartedAt: e.At,
		})
		s.replace(r, n)
		resp.Accepted[i] = true
	}
	return resp
}

// applyResult records the entry's results; each gets nil when accepted,
// api.ErrStaleAttempt when its attempt is not current, api.ErrNotFound when
// the task is unknown.
func (s *state) applyResult(e *ResultEntry) *ResultResponse {
	resp := &ResultResponse{Errors: make([]error, len(e.Results))}
	for i := range e.Results {
		resp.Errors[i] = s.applyOneResult(e, &e.Results[i])
	}
	return resp
}

func (s *state) applyOneResult(e *ResultEntry, res *api.AttemptResult) error {
	r, ok := s.get(res.TaskID)
	if !ok {
		return api.NotFoundf("task %s not found", res.TaskID)
	}
	t := &r.task
	if t.Attempt == res.Attempt && t.Worker == res.Worker && t.State != api.StateRunning {
		// The same attempt reported again after its result was accepted
		// (the worker's first report timed out): accept idempotently when it
		// is the same outcome, otherwise it is stale.
		if n := len(t.Attempts); n > 0 && t.Attempts[n-1].Attempt == res.Attempt &&
			(t.Attempts[n-1].Outcome == res.Outcome || t.Attempts[n-1].Outcome == recordedOutcome(res.Outcome)) {
			return nil
		}
	}
	if t.State != api.StateRunning || t.Attempt != res.Attempt || t.Worker != res.Worker {
		s.stale++
		return api.Stalef("task %s attempt %d on worker %s is not current (task is %s at attempt %d)",
			res.TaskID, res.Attempt, res.Worker, t.State, t.Attempt)
	}
	n := modify(r)
	nt := &n.task
	result := &api.Result{ExitCode: res.ExitCode, Output: res.Output, Truncated: res.Truncated, Error: res.Error}
	switch res.Outcome {
	case api.OutcomeSucceeded:
		finishAttempt(nt, res.Outcome, e.At, res.Error)
		nt.State = api.StateSucceeded
		nt.FinishedAt = e.At
		nt.Result = result
	case api.OutcomeFailed, api.OutcomeTimeout:
		finishAttempt(nt, res.Outcome, e.At, res.Error)
		keepOutput(nt, res, e.KeepOutput)
		nt.Failures++
		nt.Result = result
		if nt.Failures >= nt.MaxAttempts || res.Outcome == api.OutcomeFailed && noRetry(nt, e, res.ExitCode) {
			nt.State = api.StateFailed
			nt.FinishedAt = e.At
		} else {
			nt.State = api.StatePending
			nt.NotBefore = e.At.Add(api.Backoff(e.BackoffBase, nt.Failures))
		}
	default: // released, or canceled by the worker itself: hand back, no penalty
		finishAttempt(nt, recordedOutcome(res.Outcome), e.At, res.Error)
		nt.State = api.StatePending
		nt.NotBefore = time.Time{}
	}
	s.replace(r, n)
	return nil
}

// noRetry reports whether exit code ends task t at once: it is one of the
// task's no_retry_exit_codes, or of the entry's default when the task names
// none.
func noRetry(t *api.Task, e *ResultEntry, code int) bool {
	codes := t.NoRetryExitCodes
	if codes == nil {
		codes = e.NoRetryExitCodes
	}
	return slices.Contains(codes, code)
}

// keepOutput records in the current (failed) attempt's history its exit
// code and the last keep bytes of its output (nothing when keep is 0, as
// before ProtoNoRetry), so that the output of a failure survives the
// attempts after it. Successes keep none: their output is the task's
// result, and most tasks succeed.
func keepOutput(t *api.Task, res *api.AttemptResult, keep int) {
	if keep <= 0 {
		return
	}
	if n := len(t.Attempts); n > 0 && t.Attempts[n-1].Attempt == t.Attempt {
		a := &t.Attempts[n-1]
		a.ExitCode = res.ExitCode
		a.Output = lastBytes(res.Output, keep)
	}
}

// lastBytes returns the longest end of s that fits in n bytes behind a
// marker line saying how many bytes were dropped, starting at a UTF-8
// boundary (s itself when it fits). It is a pure function of its inputs, as
// Apply must be.
func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for start := len(s) - n; start < len(s); start++ {
		marker := "[gantry: " + strconv.Itoa(start) + " bytes dropped]\n"
		if len(marker)+len(s)-start <= n && utf8.RuneStart(s[start]) {
			return marker + s[start:]
		}
	}
	return ""
}

// recordedOutcome is the outcome the attempt history keeps for a reported
// one: the task's own outcomes as they are, anything else as a hand-back
// (released), so a repeated report of a worker-canceled attempt is
// recognised as the same report.
func recordedOutcome(o api.Outcome) api.Outcome {
	switch o {
	case api.OutcomeSucceeded, api.OutcomeFailed, api.OutcomeTimeout:
		return o
	}
	return api.OutcomeReleased
}

// applyRequeue takes running attempts back and reports which were.
func (s *state) applyRequeue(e *RequeueEntry) *RequeueResponse {
	resp := &RequeueResponse{Requeued: make([]bool, len(e.Attempts))}
	for i, ref := range e.Attempts {
		r, ok := s.get(ref.TaskID)
		if !ok || r.task.State != api.StateRunning || r.task.Attempt != ref.Attempt {
			continue
		}
		n := modify(r)
		nt := &n.task
		outcome := e.Outcome
		if outcome != api.OutcomeUndelivered {
			outcome = api.OutcomeLost
		}
		finishAttempt(nt, outcome, e.At, e.Reason)
		if outcome == api.OutcomeLost {
			nt.Lost++
		}
		if nt.Lost >= api.MaxLostAttempts {
			nt.State = api.StateFailed
			nt.FinishedAt = e.At
			nt.Result = &api.Result{ExitCode: -1, Error: "poison: the task lost " + strconv.Itoa(nt.Lost) + " workers"}
		} else {
			nt.State = api.StatePending
			nt.NotBefore = time.Time{}
		}
		s.replace(r, n)
		resp.Requeued[i] = true
	}
	return resp
}

// applyCancel cancels a live task.
func (s *state) applyCancel(e *CancelEntry) *CancelResponse {
	r, ok := s.get(e.TaskID)
	if !ok {
		return &CancelResponse{Err: api.NotFoundf("task %s not found", e.TaskID)}
	}
	t := &r.task
	if t.State.Terminal() {
		return &CancelResponse{Err: api.Conflictf("task %s is already %s", e.TaskID, t.State)}
	}
	resp := &CancelResponse{}
	n := modify(r)
	nt := &n.task
	if t.State == api.StateRunning {
		resp.Running = &api.AttemptRef{TaskID: t.ID, Attempt: t.Attempt}
		resp.Worker = t.Worker
		finishAttempt(nt, api.OutcomeCanceled, e.At, "task canceled")
	}
	nt.State = api.StateCanceled
	nt.FinishedAt = e.At
	nt.NotBefore = time.Time{}
	s.replace(r, n)
	return resp
}

// applyGC forgets old terminal tasks.
func (s *state) applyGC(e *GCEntry) *GCResponse {
	before := e.Before.UnixNano()
	var victims []*record
	s.finished.Ascend(func(k timeKey) bool {
		if k.at >= before || len(victims) >= e.Limit {
			return false
		}
		if r, ok := s.getSeq(k.seq); ok {
			victims = append(victims, r)
		}
		return true
	})
	for _, r := range victims {
		s.remove(r)
	}
	return &GCResponse{Removed: len(victims)}
}
