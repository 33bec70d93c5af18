package fsm

import (
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/hashicorp/raft"
)

// SubmitOutcome is the state machine's answer for one submitted spec.
type SubmitOutcome struct {
	ID       string
	Existing bool // the idempotency key was known; ID is the earlier task
	// Conflict: the key was known for a task submitted with another spec.
	// Nothing was added; ID is that task. (A response only: the state is
	// the same as for Existing, so replicas of any version agree.)
	Conflict bool
}

// SubmitResponse is what applying a SubmitEntry returns.
type SubmitResponse struct{ Results []SubmitOutcome }

// SubmitAssignResponse is what applying a SubmitAssignEntry returns: the
// outcome of every spec, and whether its attempt 1 was started on the
// worker the entry named.
type SubmitAssignResponse struct {
	Results  []SubmitOutcome
	Assigned []bool
}

// AssignResponse is what applying an AssignEntry returns.
type AssignResponse struct{ Accepted []bool }

// ResultResponse is what applying a ResultEntry returns: one error (or nil)
// per result.
type ResultResponse struct{ Errors []error }

// RequeueResponse is what applying a RequeueEntry returns.
type RequeueResponse struct{ Requeued []bool }

// CancelResponse is what applying a CancelEntry returns. Running and Worker
// name the attempt that was running, so the leader can tell its worker.
type CancelResponse struct {
	Err     error
	Running *api.AttemptRef
	Worker  string
}

// GCResponse is what applying a GCEntry returns.
type GCResponse struct{ Removed int }

// FSM is gantry's replicated state machine. It implements raft.FSM and
// raft.BatchingFSM; its read methods are safe from any goroutine.
type FSM struct {
	mu      sync.RWMutex
	s       *state                     // guarded by mu
	applied uint64                     // last applied raft index, guarded by mu
	watch   map[uint64][]chan struct{} // seq -> closed when the task ends, guarded by mu
	changes chan struct{}              // capacity 1: a kick after every apply that can change dispatch
	// Command entries applied since start, and how many were binary; guarded by mu.
	entries, binaryEntries uint64
}

// New returns an empty state machine.
func New() *FSM {
	return &FSM{
		s:       newState(),
		watch:   make(map[uint64][]chan struct{}),
		changes: make(chan struct{}, 1),
	}
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// Changes returns a channel that receives (coalesced) after every applied
// entry that may change what can be dispatched: the dispatcher's kick.
func (f *FSM) Changes() <-chan struct{} { return f.changes }

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM: it applies committed entries in
// order under one lock acquisition. A command that cannot be decoded panics:
// replicas that disagree about the log are worse than a stopped node.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	// Decode outside the lock: readers wait only for the applying itself.
	// The entries before an undecodable one are applied, then Apply panics.
	entries := make([]Entry, len(logs))
	var binary uint64
	var bad error
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		e, err := Decode(l.Data)
		if err != nil {
			bad = fmt.Errorf("fsm: raft log index %d: %w", l.Index, err)
			logs = logs[:i]
			break
		}
		entries[i] = e
		if l.Data[0]&binaryFlag != 0 {
			binary++
		}
	}
	var ended []uint64
	f.mu.Lock()
	for i, l := range logs {
		if l.Index > f.applied {
			f.applied = l.Index
		}
		if entries[i] != nil {
			out[i] = f.applyLocked(entries[i], &ended)
			f.entries++
		}
	}
	f.binaryEntries += binary
	f.closeWatchersLocked(ended)
	f.mu.Unlock()
	if bad != nil {
		panic(bad.Error())
	}
	select {
	case f.changes <- struct{}{}:
	default:
	}
	return out
}

// AppliedEntries returns how many command entries this replica applied
// since it started (entries restored from a snapshot not included), and how
// many of them were in the binary format.
func (f *FSM) AppliedEntries() (all, binary uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.entries, f.binaryEntries
}

// applyLocked applies one decoded entry and collects tasks that ended.
func (f *FSM) applyLocked(e Entry, ended *[]uint64) any {
	s := f.s
	var resp any
	switch e := e.(type) {
	case *SubmitEntry:
		resp = s.applySubmit(e)
	case *SubmitAssignEntry:
		resp = s.applySubmitAssign(e)
	case *AssignEntry:
		resp = s.applyAssign(e)
	case *ResultEntry:
		resp = s.applyResult(e)
		for _, r := range e.Results {
			f.noteEnded(r.TaskID, ended)
		}
	case *RequeueEntry:
		resp = s.applyRequeue(e)
		for _, r := range e.Attempts {
			f.noteEnded(r.TaskID, ended)
		}
	case *CancelEntry:
		resp = s.applyCancel(e)
		f.noteEnded(e.TaskID, ended)
	case *GCEntry:
		resp = s.applyGC(e)
	case *SetScaleEntry:
		resp = s.applySetScale(e)
	case *ScaleOpEntry:
		resp = s.applyScaleOp(e)
	}
	return resp
}

func (f *FSM) noteEnded(id string, ended *[]uint64) {
	seq, ok := parseID(id)
	if !ok || len(f.watch[seq]) == 0 {
		return
	}
	if r, ok := f.s.getSeq(seq); ok && !r.task.State.Terminal() {
		return
	}
	*ended = append(*ended, seq)
}

func (f *FSM) closeWatchersLocked(seqs []uint64) {
	for _, seq := range seqs {
		for _, ch := range f.watch[seq] {
			close(ch)
		}
		delete(f.watch, seq)
	}
}

// Get returns the task with the given ID.
func (f *FSM) Get(id string) (api.Task, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	r, ok := f.s.get(id)
	if !ok {
		return api.Task{}, false
	}
	return r.task, true
}

// WatchTask returns the task and, when it is not terminal, a channel closed
// once it becomes terminal, is forgotten, or the state is restored from a
// snapshot (callers re-read after it closes).
func (f *FSM) WatchTask(id string) (api.Task, <-chan struct{}, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.s.get(id)
	if !ok {
		return api.Task{}, nil, false
	}
	if r.task.State.Terminal() {
		return r.task, nil, true
	}
	ch := make(chan struct{})
	f.watch[r.seq] = append(f.watch[r.seq], ch)
	return r.task, ch, true
}

// UnwatchTask drops a channel from WatchTask that is no longer waited on.
func (f *FSM) UnwatchTask(id string, ch <-chan struct{}) {
	seq, ok := parseID(id)
	if !ok || ch == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	list := f.watch[seq]
	for i, c := range list {
		if c == ch {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(f.watch, seq)
	} else {
		f.watch[seq] = list
	}
}

// LookupKey returns the ID of the task submitted with an idempotency key.
func (f *FSM) LookupKey(key string) (string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	seq, ok := f.s.keys[key]
	if !ok {
		return "", false
	}
	return api.FormatTaskID(seq), true
}

// List returns a page of tasks in submission order. The filter must be
// validated; an After that is not a task ID is api.ErrBadRequest.
func (f *FSM) List(filter api.ListFilter) (api.TaskList, error) {
	var after uint64
	if filter.After != "" {
		seq, ok := parseID(filter.After)
		if !ok {
			return api.TaskList{}, api.BadRequest("after", "%q is not a task ID", filter.After)
		}
		after = seq
	}
	if filter.State != "" && !filter.State.Valid() {
		return api.TaskList{}, api.BadRequest("state", "%q is not a task state", filter.State)
	}
	if after == math.MaxUint64 {
		// Nothing sorts after the largest ID (and after+1 would wrap to 0).
		return api.TaskList{Tasks: []api.Task{}}, nil
	}
	limit := filter.Limit
	if limit <= 0 {
		limit = api.DefaultListLimit
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := api.TaskList{Tasks: []api.Task{}}
	more := false
	if filter.State == "" {
		f.s.tasks.AscendGreaterOrEqual(&record{seq: after + 1}, func(r *record) bool {
			if len(out.Tasks) == limit {
				more = true
				return false
			}
			out.Tasks = append(out.Tasks, r.task)
			return true
		})
	} else {
		idx := f.s.byState[filter.State]
		if idx == nil {
			return api.TaskList{}, api.BadRequest("state", "%q is not a task state", filter.State)
		}
		idx.AscendGreaterOrEqual(after+1, func(seq uint64) bool {
			if len(out.Tasks) == limit {
				more = true
				return false
			}
			if r, ok := f.s.getSeq(seq); ok {
				out.Tasks = append(out.Tasks, r.task)
			}
			return true
		})
	}
	if more && len(out.Tasks) > 0 {
		out.Next = out.Tasks[len(out.Tasks)-1].ID
	}
	return out, nil
}

// Counts returns the number of tasks in each state.
func (f *FSM) Counts() api.TaskCounts {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.counts
}

// StaleResults returns how many results were refused as stale.
func (f *FSM) StaleResults() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.stale
}

// AppliedIndex returns the index of the last raft entry applied.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// Ready returns up to limit pending tasks that may run at now, highest
// priority first and FIFO within a priority, and the earliest time a
// delayed task becomes due after now (zero when none waits).
func (f *FSM) Ready(now time.Time, limit int) ([]api.Task, time.Time) {
	if limit < 0 {
		limit = 0
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	type cand struct {
		k readyKey
		r *record
	}
	var cands []cand
	var next time.Time
	nowNano := now.UnixNano()
	f.s.delayed.Ascend(func(k timeKey) bool {
		if k.at > nowNano {
			next = time.Unix(0, k.at)
			return false
		}
		if r, ok := f.s.getSeq(k.seq); ok {
			cands = append(cands, cand{readyKey{r.task.Priority, k.seq}, r})
		}
		return len(cands) < 4*limit
	})
	if next.IsZero() {
		// The scan above stopped at its cap among due tasks: find the first
		// one that is not yet due.
		f.s.delayed.AscendGreaterOrEqual(timeKey{at: nowNano, seq: math.MaxUint64}, func(k timeKey) bool {
			if k.at > nowNano {
				next = time.Unix(0, k.at)
				return false
			}
			return true
		})
	}
	n := 0
	f.s.ready.Ascend(func(k readyKey) bool {
		if n == limit {
			return false
		}
		if r, ok := f.s.getSeq(k.seq); ok {
			cands = append(cands, cand{k, r})
			n++
		}
		return true
	})
	sort.Slice(cands, func(i, j int) bool { return lessReady(cands[i].k, cands[j].k) })
	if len(cands) > limit {
		cands = cands[:limit]
	}
	out := make([]api.Task, len(cands))
	for i, c := range cands {
		out[i] = c.r.task
	}
	return out, next
}

// RunningAttempt is one running attempt as the state machine records it.
type RunningAttempt struct {
	api.AttemptRef
	Worker    string
	StartedAt time.Time
}

// Running returns every running attempt, grouped by worker ID.
func (f *FSM) Running() map[string][]RunningAttempt {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string][]RunningAttempt, len(f.s.running))
	for w, m := range f.s.running {
		list := make([]RunningAttempt, 0, len(m))
		for seq, attempt := range m {
			ra := RunningAttempt{AttemptRef: api.AttemptRef{TaskID: api.FormatTaskID(seq), Attempt: attempt}, Worker: w}
			if r, ok := f.s.getSeq(seq); ok {
				ra.StartedAt = r.task.StartedAt
			}
			list = append(list, ra)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].TaskID < list[j].TaskID })
		out[w] = list
	}
	return out
}

// RunningCounts returns the number of running attempts per worker.
func (f *FSM) RunningCounts() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]int, len(f.s.running))
	for w, m := range f.s.running {
		out[w] = len(m)
	}
	return out
}

// OldestFinished returns the finish time of the oldest terminal task and
// whether there is one.
func (f *FSM) OldestFinished() (time.Time, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.s.finished.Min()
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, k.at), true
}
