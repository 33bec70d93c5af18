package master

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
	"github.com/hashicorp/go-hclog"
)

// detector runs on the leader and keeps the replicated record of running
// attempts true to what workers actually do. It is level-triggered: every
// WorkerCheckInterval it asks each live worker what it holds, and on every
// gossip change it looks at which workers died.
//
//   - A worker gossip declares dead or left, or one that has not answered
//     for WorkerTimeout, has its attempts requeued (outcome lost).
//   - A live worker that answers but no longer holds an attempt the record
//     says it runs (it restarted, or the push never arrived) has that attempt
//     requeued, once the push is known to have ended before the question.
//   - A worker holding an attempt that is not current is told to stop it.
//
// A new leader requeues nothing during WorkerGrace, except on a live
// worker's own answer: its gossip view may still be incomplete, and timers
// the old leader armed are not its to trust.
type detector struct {
	m   *Master
	ls  *leaderState
	d   *dispatcher
	log hclog.Logger

	lastOK map[string]time.Time // worker ID -> last answer; owned by run's goroutine
}

func newDetector(m *Master, ls *leaderState, d *dispatcher) *detector {
	return &detector{m: m, ls: ls, d: d, log: m.log.Named("detector"), lastOK: make(map[string]time.Time)}
}

func (x *detector) run() {
	t := time.NewTicker(x.m.cfg.WorkerCheckInterval)
	defer t.Stop()
	x.check(true)
	for {
		select {
		case <-x.ls.ctx.Done():
			return
		case <-t.C:
			x.check(true)
		case <-x.m.gossipKick:
			x.d.poke() // new or returning workers may take work
			x.check(false)
		}
	}
}

type pollResult struct {
	held map[api.AttemptRef]string // attempt -> state (running, reporting)
	err  error
}

// check compares the record with the workers. With poll set it also asks
// every live worker what it holds.
func (x *detector) check(poll bool) {
	ctx := x.ls.ctx
	if ctx.Err() != nil {
		return
	}
	views := x.m.workerViews()
	pollStart := time.Now()
	polls := map[string]pollResult{}
	if poll {
		var mu sync.Mutex
		var wg sync.WaitGroup
		timeout := min(x.m.cfg.WorkerTimeout, 2*time.Second)
		for _, v := range views {
			if !v.live() || v.HTTP == "" {
				continue
			}
			wg.Add(1)
			go func(id, base string) {
				defer wg.Done()
				pctx, cancel := context.WithTimeout(ctx, timeout)
				wa, err := x.m.workers.Attempts(pctx, base)
				cancel()
				pr := pollResult{err: err}
				if err == nil && wa.Worker != id {
					pr.err = fmt.Errorf("answered as worker %q", wa.Worker)
				}
				if pr.err == nil {
					pr.held = make(map[api.AttemptRef]string, len(wa.Attempts))
					for _, a := range wa.Attempts {
						pr.held[api.AttemptRef{TaskID: a.TaskID, Attempt: a.Attempt}] = a.State
					}
				}
				mu.Lock()
				polls[id] = pr
				mu.Unlock()
			}(v.ID, v.HTTP)
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
	}

	graceOver := time.Since(x.ls.since) >= x.m.cfg.WorkerGrace
	running := x.m.fsm.Running() // read after the polls: results accepted meanwhile are gone from it
	current := make(map[api.AttemptRef]string)
	for w, list := range running {
		for _, ra := range list {
			current[ra.AttemptRef] = w
		}
	}
	x.d.prune(func() map[api.AttemptRef]bool {
		out := make(map[api.AttemptRef]bool, len(current))
		for ref := range current {
			out[ref] = true
		}
		return out
	}())

	// Workers that answered: they are found; requeue what they lost and stop
	// what is not current.
	for id, pr := range polls {
		x.d.setSuspect(id, pr.err != nil)
		if pr.err != nil {
			continue
		}
		x.lastOK[id] = pollStart
		x.d.setLost(id, false)
		var gone []api.AttemptRef
		for _, ra := range running[id] {
			if _, ok := pr.held[ra.AttemptRef]; !ok && x.d.deliveredBefore(ra.AttemptRef, id, pollStart) {
				gone = append(gone, ra.AttemptRef)
			}
		}
		x.requeue(id, gone, "worker "+id+" does not hold the attempt (restarted, or the push was lost)")
		for ref, state := range pr.held {
			if current[ref] != id && state == "running" {
				x.stopAttempt(id, ref)
			}
		}
	}

	if !graceOver {
		return
	}
	for id, list := range running {
		if len(list) == 0 {
			continue
		}
		v, known := views[id]
		refs := make([]api.AttemptRef, len(list))
		for i, ra := range list {
			refs[i] = ra.AttemptRef
		}
		switch {
		case !known:
			x.d.setLost(id, true)
			x.requeue(id, refs, "worker "+id+" is not in the gossip pool")
		case !v.live():
			x.d.setLost(id, true)
			x.requeue(id, refs, "worker "+id+" is "+v.State+" (gossip)")
		case poll:
			pr, polled := polls[id]
			if polled && pr.err == nil {
				continue
			}
			last, ok := x.lastOK[id]
			if !ok {
				last = x.ls.since
			}
			if time.Since(last) >= x.m.cfg.WorkerTimeout {
				x.d.setLost(id, true)
				why := "no answer"
				if polled {
					why = pr.err.Error()
				}
				x.requeue(id, refs, fmt.Sprintf("worker %s has not answered for %s: %s", id, time.Since(last).Round(time.Millisecond), truncate(why, 200)))
			}
		}
	}
}

// requeue commits the loss of a worker's attempts.
func (x *detector) requeue(worker string, refs []api.AttemptRef, reason string) {
	if len(refs) == 0 || x.ls.ctx.Err() != nil {
		return
	}
	resp, err := x.m.apply(&fsm.RequeueEntry{At: now(), Outcome: api.OutcomeLost, Reason: truncate(reason, 512), Attempts: refs})
	if err != nil {
		if x.ls.ctx.Err() == nil {
			x.log.Warn("requeue failed; will retry", "worker", worker, "error", err)
		}
		return
	}
	n := 0
	for _, ok := range resp.(*fsm.RequeueResponse).Requeued {
		if ok {
			n++
		}
	}
	x.m.metrics.requeued.WithLabelValues(string(api.OutcomeLost)).Add(float64(n))
	if n > 0 {
		x.log.Warn("requeued lost attempts", "worker", worker, "count", n, "reason", reason)
		x.d.poke()
	}
}

// stopAttempt tells a worker, in the background, to stop an attempt that is
// no longer current. Failures are fine: the next check asks again.
func (x *detector) stopAttempt(worker string, ref api.AttemptRef) {
	v, ok := x.m.workerViews()[worker]
	if !ok || v.HTTP == "" {
		return
	}
	go func() {
		// A side effect outside Raft: confirm this node still leads, so a
		// leader that was paused and still holds an old view cannot stop an
		// attempt its successor dispatched.
		if x.ls.ctx.Err() != nil || x.m.raft.VerifyLeader().Error() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(x.ls.ctx, 2*time.Second)
		defer cancel()
		if err := x.m.workers.Cancel(ctx, v.HTTP, ref); err != nil {
			x.log.Debug("stop attempt failed", "worker", worker, "task", ref.TaskID, "attempt", ref.Attempt, "error", err)
		}
	}()
}
