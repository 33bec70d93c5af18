package master

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
	"github.com/gantryhq/gantry/membership"
	"github.com/hashicorp/go-hclog"
)

// Dispatcher tuning.
const (
	dispatchIdle      = time.Second            // re-check at least this often
	maxPushInflight   = 64                     // concurrent pushes to workers
	avoidAfterFail    = 2 * time.Second        // a worker that failed a push gets no work for this long
	avoidAfterRefusal = 500 * time.Millisecond // a worker that refused attempts (full) gets none for this long
	pushRecordMaxAge  = 2 * time.Minute        // push bookkeeping is kept this long
	maxAssignBatch    = 1024                   // assignments per raft entry
)

// dispatcher runs on the leader: it matches ready tasks to live workers with
// free slots, commits the assignments, then pushes them (commit first, push
// second). A push that fails is requeued as undelivered.
type dispatcher struct {
	m   *Master
	ls  *leaderState
	log hclog.Logger

	kick chan struct{} // capacity 1
	sem  chan struct{} // bounds concurrent pushes

	mu     sync.Mutex
	pushes map[api.AttemptRef]time.Time // zero while the push is in flight, else when it ended
	avoid  map[string]time.Time         // worker ID -> no new work before this time
	lost   map[string]bool              // workers the detector declared lost until they answer again
	// suspect holds workers whose last answer to the detector failed: they
	// get no new work, and /v1/cluster shows them as suspect.
	suspect map[string]bool
	// reserved counts, per worker, slots promised to submissions whose
	// SubmitAssignEntry is not applied yet.
	reserved map[string]int
}

func newDispatcher(m *Master, ls *leaderState) *dispatcher {
	return &dispatcher{
		m:        m,
		ls:       ls,
		log:      m.log.Named("dispatcher"),
		kick:     make(chan struct{}, 1),
		sem:      make(chan struct{}, maxPushInflight),
		pushes:   make(map[api.AttemptRef]time.Time),
		avoid:    make(map[string]time.Time),
		lost:     make(map[string]bool),
		suspect:  make(map[string]bool),
		reserved: make(map[string]int),
	}
}

// poke asks for a dispatch round soon.
func (d *dispatcher) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func (d *dispatcher) run() {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-d.ls.ctx.Done():
			return
		case <-d.m.fsm.Changes():
			d.ls.scale.poke() // the backlog may have changed
		case <-d.kick:
		case <-timer.C:
		}
		wait := d.once()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

type freeWorker struct {
	id, http string
	free     int
	running  int
}

// once runs one dispatch round and returns how long to wait before the
// next one absent any kick.
// capacity is what the free slots are computed from, read without d.mu.
type capacity struct {
	views    map[string]workerView
	running  map[string]int
	retiring map[string]bool // managed workers being drained or removed
}

func (d *dispatcher) capacity() capacity {
	c := capacity{views: d.m.workerViews(), running: d.m.fsm.RunningCounts(), retiring: map[string]bool{}}
	for _, w := range d.m.fsm.Scale().Workers {
		c.retiring[w.Name] = w.State == api.ManagedDraining || w.State == api.ManagedRemoving
	}
	return c
}

// freeLocked returns the workers that may take work now, with their free
// slots (committed attempts and the reservations of submissions in flight
// subtracted), sorted by ID, and the total. Callers hold d.mu.
func (d *dispatcher) freeLocked(t0 time.Time, c capacity) ([]*freeWorker, int) {
	var ws []*freeWorker
	total := 0
	for _, v := range c.views {
		if v.State != membership.StateAlive || v.Draining || v.Leaving || c.retiring[v.ID] || d.lost[v.ID] || d.suspect[v.ID] || t0.Before(d.avoid[v.ID]) {
			continue
		}
		if free := v.Slots - c.running[v.ID] - d.reserved[v.ID]; free > 0 {
			ws = append(ws, &freeWorker{id: v.ID, http: v.HTTP, free: free, running: c.running[v.ID]})
			total += free
		}
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].id < ws[j].id })
	return ws, total
}

// mostFree picks the worker with the most free slots (the first by ID on a
// tie), or nil.
func mostFree(ws []*freeWorker) *freeWorker {
	var best *freeWorker
	for _, w := range ws {
		if w.free > 0 && (best == nil || w.free > best.free) {
			best = w
		}
	}
	return best
}

// reserve picks workers for up to n new submissions, to be started in the
// entry that submits them (SubmitAssignEntry), and reserves their slots
// until release. It picks none while ready tasks wait: those go first, in
// priority order, through the dispatcher. prio orders the submissions
// (higher first, then in order).
func (d *dispatcher) reserve(prio []int) []*freeWorker {
	t0 := time.Now()
	if d.m.votersFormat(t0) < fsm.ProtoSubmitAssign {
		return nil
	}
	if ready, _ := d.m.fsm.Ready(t0, 1); len(ready) > 0 {
		return nil
	}
	c := d.capacity()
	d.mu.Lock()
	defer d.mu.Unlock()
	ws, total := d.freeLocked(t0, c)
	if total == 0 {
		return nil
	}
	order := make([]int, len(prio))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return prio[order[a]] > prio[order[b]] })
	out := make([]*freeWorker, len(prio))
	for _, i := range order {
		w := mostFree(ws)
		if w == nil {
			break
		}
		w.free--
		out[i] = w
		d.reserved[w.id]++
	}
	return out
}

// release ends the reservations of reserve.
func (d *dispatcher) release(ws []*freeWorker) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, w := range ws {
		if w == nil {
			continue
		}
		if d.reserved[w.id]--; d.reserved[w.id] <= 0 {
			delete(d.reserved, w.id)
		}
	}
}

// started pushes the attempts a committed SubmitAssignEntry started.
func (d *dispatcher) started(specs []api.TaskSpec, ws []*freeWorker, resp *fsm.SubmitAssignResponse) {
	batches := make(map[*freeWorker][]api.Assignment)
	d.mu.Lock()
	for i, ok := range resp.Assigned {
		if !ok || ws[i] == nil {
			continue
		}
		d.m.metrics.assigned.Inc()
		ref := api.AttemptRef{TaskID: resp.Results[i].ID, Attempt: 1}
		d.pushes[ref] = time.Time{}
		sp := specs[i]
		batches[ws[i]] = append(batches[ws[i]], api.Assignment{
			TaskID: ref.TaskID, Attempt: 1, Type: sp.Type, Args: sp.Args, Env: sp.Env, Payload: sp.Payload, Timeout: sp.Timeout,
		})
	}
	d.mu.Unlock()
	d.pushAll(batches)
}

// pushAll pushes each worker its batch, concurrently within the bound.
func (d *dispatcher) pushAll(batches map[*freeWorker][]api.Assignment) {
	for w, batch := range batches {
		d.sem <- struct{}{}
		go func(w *freeWorker, batch []api.Assignment) {
			defer func() { <-d.sem }()
			d.push(w, batch)
		}(w, batch)
	}
}

func (d *dispatcher) once() time.Duration {
	t0 := time.Now()
	c := d.capacity()
	d.mu.Lock()
	ws, total := d.freeLocked(t0, c)
	d.mu.Unlock()
	if total == 0 {
		return dispatchIdle
	}
	if total > maxAssignBatch {
		total = maxAssignBatch
	}
	tasks, next := d.m.fsm.Ready(t0, total)
	if len(tasks) == 0 {
		return untilOr(next, dispatchIdle)
	}
	entry := &fsm.AssignEntry{At: now()}
	target := make([]*freeWorker, len(tasks))
	for i, t := range tasks {
		best := mostFree(ws)
		if best == nil {
			tasks = tasks[:i]
			break
		}
		best.free--
		target[i] = best
		entry.Assignments = append(entry.Assignments, fsm.Assignment{TaskID: t.ID, Attempt: t.Attempt + 1, Worker: best.id})
	}
	// The pushes count as in flight from before the commit: the detector
	// must not take an attempt it finds running in the record, but not yet
	// on its worker, for a lost one.
	d.mu.Lock()
	for _, a := range entry.Assignments {
		d.pushes[api.AttemptRef{TaskID: a.TaskID, Attempt: a.Attempt}] = time.Time{}
	}
	d.mu.Unlock()
	resp, err := d.m.apply(entry)
	if err != nil {
		// The outcome is unknown: an attempt that did commit was never
		// pushed, so its push "ended" now and the detector requeues it.
		end := time.Now()
		d.mu.Lock()
		for _, a := range entry.Assignments {
			d.pushes[api.AttemptRef{TaskID: a.TaskID, Attempt: a.Attempt}] = end
		}
		d.mu.Unlock()
		if d.ls.ctx.Err() == nil {
			d.log.Warn("assign failed", "error", err)
		}
		return 200 * time.Millisecond
	}
	accepted := resp.(*fsm.AssignResponse).Accepted
	batches := make(map[*freeWorker][]api.Assignment)
	d.mu.Lock()
	for i, ok := range accepted {
		t, a := tasks[i], entry.Assignments[i]
		if !ok {
			delete(d.pushes, api.AttemptRef{TaskID: a.TaskID, Attempt: a.Attempt})
			continue
		}
		d.m.metrics.assigned.Inc()
		batches[target[i]] = append(batches[target[i]], api.Assignment{
			TaskID: t.ID, Attempt: a.Attempt, Type: t.Type, Args: t.Args, Env: t.Env, Payload: t.Payload, Timeout: t.Timeout,
		})
	}
	d.mu.Unlock()
	d.pushAll(batches)
	if len(tasks) == total {
		return 0 // there may be more
	}
	return untilOr(next, dispatchIdle)
}

// untilOr returns the time until next, or def when next is zero or later.
func untilOr(next time.Time, def time.Duration) time.Duration {
	if next.IsZero() {
		return def
	}
	if d := time.Until(next); d < def {
		if d < 0 {
			return 0
		}
		return d
	}
	return def
}

// push sends one worker its attempts and requeues what it did not take.
func (d *dispatcher) push(w *freeWorker, batch []api.Assignment) {
	ctx, cancel := context.WithTimeout(d.ls.ctx, d.m.cfg.PushTimeout)
	accepted, err := d.m.workers.Push(ctx, w.http, batch)
	cancel()
	end := time.Now()
	var undelivered []api.AttemptRef
	d.mu.Lock()
	for i, a := range batch {
		ref := api.AttemptRef{TaskID: a.TaskID, Attempt: a.Attempt}
		d.pushes[ref] = end
		if err != nil || !accepted[i] {
			undelivered = append(undelivered, ref)
		}
	}
	switch {
	case err != nil:
		d.avoid[w.id] = end.Add(avoidAfterFail)
	case len(undelivered) > 0:
		// The worker is fuller than the record says (it is still stopping
		// stale attempts): let it settle rather than churn the log.
		d.avoid[w.id] = end.Add(avoidAfterRefusal)
	}
	d.mu.Unlock()
	d.m.metrics.pushErrors.Add(float64(len(undelivered)))
	if len(undelivered) == 0 || d.ls.ctx.Err() != nil {
		return // on leadership loss the next leader reconciles with the worker
	}
	reason := "worker " + w.id + " refused the attempt"
	if err != nil {
		reason = "push to worker " + w.id + " failed: " + err.Error()
	}
	d.log.Warn("attempts not delivered; requeuing", "worker", w.id, "count", len(undelivered), "error", err)
	resp, rerr := d.m.apply(&fsm.RequeueEntry{At: now(), Outcome: api.OutcomeUndelivered, Reason: truncate(reason, 512), Attempts: undelivered})
	if rerr != nil {
		if d.ls.ctx.Err() == nil {
			d.log.Warn("requeue of undelivered attempts failed; the detector will retry", "error", rerr)
		}
		return
	}
	for _, ok := range resp.(*fsm.RequeueResponse).Requeued {
		if ok {
			d.m.metrics.requeued.WithLabelValues(string(api.OutcomeUndelivered)).Inc()
		}
	}
}

// deliveredBefore reports whether the push of ref, if this leader made it,
// ended before t: only then may a worker's not holding it mean it is lost.
func (d *dispatcher) deliveredBefore(ref api.AttemptRef, worker string, t time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	end, ok := d.pushes[ref]
	if !ok {
		// Pushed by an earlier leader, before this one began, unless a
		// submission that starts attempts on this worker is in flight: its
		// attempts are recorded as pushed only once their entry is applied.
		return d.reserved[worker] == 0
	}
	return !end.IsZero() && end.Before(t)
}

// setLost marks a worker lost (no new work) or found again.
func (d *dispatcher) setLost(id string, lost bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if lost {
		d.lost[id] = true
	} else if d.lost[id] {
		delete(d.lost, id)
		delete(d.avoid, id)
		d.poke()
	}
}

// setSuspect records whether the worker's last answer to the detector failed.
func (d *dispatcher) setSuspect(id string, suspect bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if suspect {
		d.suspect[id] = true
	} else if d.suspect[id] {
		delete(d.suspect, id)
		d.poke()
	}
}

// isSuspect reports whether the worker's last answer failed.
func (d *dispatcher) isSuspect(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.suspect[id] || d.lost[id]
}

// prune drops push bookkeeping of attempts no longer running.
func (d *dispatcher) prune(running map[api.AttemptRef]bool) {
	cutoff := time.Now().Add(-pushRecordMaxAge)
	d.mu.Lock()
	defer d.mu.Unlock()
	for ref, end := range d.pushes {
		if !end.IsZero() && (!running[ref] || end.Before(cutoff)) {
			delete(d.pushes, ref)
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
