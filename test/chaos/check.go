package chaos

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
)

// Checker verifies the correctness contract after a run, once the faults
// are healed.
type Checker struct {
	Target     Target
	History    *History
	Faults     []FaultEvent
	RunID      string
	HTTPClient *http.Client
	Log        func(format string, args ...any)
	// Settle bounds every wait for the cluster to settle (acknowledged tasks
	// ending, masters converging, containers matching records).
	Settle time.Duration
}

// Check is one verified invariant.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Duplicate is a task that ran more than once.
type Duplicate struct {
	TaskID     string   `json:"task_id"`
	Executions int      `json:"executions"`
	Attempts   []int    `json:"attempts"` // attempt of each execution
	Outcomes   []string `json:"outcomes"` // how each attempt ended in the record
	Faults     []string `json:"faults"`   // the fault active when each extra attempt started ("none")
}

// Figures are the numbers a run produced.
type Figures struct {
	Submissions           int     `json:"submissions"`        // distinct keys submitted
	Acknowledged          int     `json:"acknowledged"`       // keys acknowledged
	NeverAcknowledged     int     `json:"never_acknowledged"` // keys never acknowledged (outcome unknown or refused)
	Requests              int     `json:"requests"`           // submit requests, retries included
	FailedRequests        int     `json:"failed_requests"`    // submit requests that failed or timed out
	Reads                 int     `json:"reads"`              // successful reads checked for linearizability
	Tasks                 int     `json:"tasks"`              // tasks of this run in the cluster
	Succeeded             int     `json:"succeeded"`
	Failed                int     `json:"failed"`
	Lost                  int     `json:"lost"`
	StaleResults          uint64  `json:"stale_results"`
	Executions            int     `json:"executions"`
	DuplicateExecutions   int     `json:"duplicate_executions"`
	UnexplainedDuplicates int     `json:"unexplained_duplicates"` // duplicates with no fault around them
	MaxUnavailability     string  `json:"max_unavailability"`
	MaxUnavailabilitySecs float64 `json:"max_unavailability_seconds"`
}

func (c *Checker) logf(format string, args ...any) {
	if c.Log != nil {
		c.Log(format, args...)
	}
}

func (c *Checker) clients() map[string]*transport.Client {
	out := map[string]*transport.Client{}
	for id, u := range c.Target.Masters() {
		var opts []transport.ClientOption
		if c.HTTPClient != nil {
			opts = append(opts, transport.WithHTTPClient(c.HTTPClient))
		}
		out[id] = transport.NewClient([]string{u}, opts...)
	}
	return out
}

func (c *Checker) any() *transport.Client {
	var urls []string
	for _, u := range c.Target.Masters() {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	var opts []transport.ClientOption
	if c.HTTPClient != nil {
		opts = append(opts, transport.WithHTTPClient(c.HTTPClient))
	}
	return transport.NewClient(urls, opts...)
}

// listRun lists every task of this run (through the leader).
func (c *Checker) listRun(ctx context.Context) (map[string][]api.Task, error) {
	cl := c.any()
	byKey := map[string][]api.Task{}
	f := api.ListFilter{Limit: api.MaxListLimit}
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		page, err := cl.List(rctx, f, transport.ReadOptions{})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, t := range page.Tasks {
			if strings.HasPrefix(t.IdempotencyKey, c.RunID+"-") {
				byKey[t.IdempotencyKey] = append(byKey[t.IdempotencyKey], t)
			}
		}
		if page.Next == "" {
			return byKey, nil
		}
		f.After = page.Next
	}
}

// Run checks everything and fills the report.
func (c *Checker) Run(ctx context.Context, rep *Report) {
	if c.Settle == 0 {
		c.Settle = 3 * time.Minute
	}
	ops := c.History.Ops()
	acked := map[string]string{} // key -> id
	keys := map[string]bool{}
	for _, op := range ops {
		if op.Kind != OpSubmit {
			continue
		}
		keys[op.Key] = true
		rep.Figures.Requests++
		if op.Outcome == OutcomeOK {
			acked[op.Key] = op.TaskID
		} else {
			rep.Figures.FailedRequests++
		}
	}
	rep.Figures.Submissions = len(keys)
	rep.Figures.Acknowledged = len(acked)
	rep.Figures.NeverAcknowledged = len(keys) - len(acked)

	// Wait until every acknowledged task has ended.
	c.logf("checking: waiting for %d acknowledged tasks to end", len(acked))
	var byKey map[string][]api.Task
	deadline := time.Now().Add(c.Settle)
	for {
		var err error
		byKey, err = c.listRun(ctx)
		if err == nil {
			open := 0
			for key := range acked {
				ts := byKey[key]
				if len(ts) == 0 || !ts[0].State.Terminal() {
					open++
				}
			}
			if open == 0 {
				break
			}
			if time.Now().After(deadline) {
				c.logf("checking: %d acknowledged tasks did not end within %s", open, c.Settle)
				break
			}
		} else if time.Now().After(deadline) {
			rep.add(Check{Name: "cluster answers", OK: false, Detail: "could not list the tasks: " + err.Error()})
			return
		}
		sleep(ctx, time.Second)
	}

	c.checkTasks(rep, acked, byKey)
	c.checkReuse(rep, ops)
	c.checkLedger(ctx, rep, acked, byKey)
	c.checkStale(ctx, rep)
	c.checkDigests(ctx, rep)
	c.checkLinearizable(rep, ops)
	c.checkContainers(ctx, rep)
	c.availability(rep, ops)
}

// checkReuse: a key sent again with another task is refused with
// idempotency_key_conflict whenever an answer came back; never answered
// with a task. (checkTasks sees that it created none.)
func (c *Checker) checkReuse(rep *Report, ops []Op) {
	refused, unknown := 0, 0
	var bad []string
	for _, op := range ops {
		if op.Kind != OpReuse {
			continue
		}
		switch op.Outcome {
		case OutcomeFail:
			refused++
		case OutcomeOK:
			bad = append(bad, fmt.Sprintf("%s answered with task %s by %s", op.Key, op.TaskID, op.Master))
		default:
			unknown++
		}
	}
	detail := fmt.Sprintf("%d reused keys refused with idempotency_key_conflict, %d without an answer", refused, unknown)
	if len(bad) > 0 {
		detail = fmt.Sprintf("%d reused keys answered with a task: %s", len(bad), strings.Join(bad[:min(len(bad), 5)], "; "))
	}
	rep.add(Check{Name: "a key reused with another task is refused", OK: len(bad) == 0, Detail: detail})
}

// checkTasks: nothing lost, one task per key, terminal exactly once with a
// result from its current attempt.
func (c *Checker) checkTasks(rep *Report, acked map[string]string, byKey map[string][]api.Task) {
	var lost, dupKeys, wrongID, bad []string
	for key, id := range acked {
		ts := byKey[key]
		switch {
		case len(ts) == 0:
			lost = append(lost, fmt.Sprintf("%s (%s): missing", key, id))
			continue
		case !ts[0].State.Terminal():
			lost = append(lost, fmt.Sprintf("%s (%s): still %s", key, id, ts[0].State))
		}
		if ts[0].ID != id {
			wrongID = append(wrongID, fmt.Sprintf("%s: acknowledged as %s, stored as %s", key, id, ts[0].ID))
		}
	}
	for key, ts := range byKey {
		if len(ts) > 1 {
			var ids []string
			for _, t := range ts {
				ids = append(ids, t.ID)
			}
			dupKeys = append(dupKeys, fmt.Sprintf("%s: %v", key, ids))
		}
		for _, t := range ts {
			rep.Figures.Tasks++
			switch t.State {
			case api.StateSucceeded:
				rep.Figures.Succeeded++
			case api.StateFailed:
				rep.Figures.Failed++
			}
			if !t.State.Terminal() {
				continue
			}
			if msg := terminalProblem(t); msg != "" {
				bad = append(bad, t.ID+": "+msg)
			}
		}
	}
	rep.Figures.Lost = len(lost)
	rep.add(Check{Name: "no acknowledged submission lost", OK: len(lost) == 0, Detail: summarize(lost, "every acknowledged task exists and reached a terminal state")})
	rep.add(Check{Name: "one task per idempotency key", OK: len(dupKeys) == 0 && len(wrongID) == 0, Detail: summarize(append(dupKeys, wrongID...), "every key names exactly the task it was acknowledged with")})
	rep.add(Check{Name: "terminal exactly once, result from the current attempt", OK: len(bad) == 0, Detail: summarize(bad, fmt.Sprintf("%d terminal tasks checked", rep.Figures.Tasks))})
}

// terminalProblem returns what is wrong with a terminal task, or "".
func terminalProblem(t api.Task) string {
	succeeded := 0
	for _, a := range t.Attempts {
		if a.Outcome == api.OutcomeRunning {
			return fmt.Sprintf("attempt %d still running in a %s task", a.Attempt, t.State)
		}
		if a.Outcome == api.OutcomeSucceeded {
			succeeded++
			if a.Attempt != t.Attempt {
				return fmt.Sprintf("succeeded attempt %d is not the current attempt %d", a.Attempt, t.Attempt)
			}
		}
	}
	switch t.State {
	case api.StateSucceeded:
		if succeeded != 1 {
			return fmt.Sprintf("%d succeeded attempts", succeeded)
		}
		if t.Result == nil {
			return "succeeded without a result"
		}
	case api.StateFailed:
		if succeeded != 0 {
			return "failed with a succeeded attempt"
		}
		if t.Result == nil {
			return "failed without a result"
		}
	}
	if t.FinishedAt.IsZero() {
		return "terminal without finished_at"
	}
	return ""
}

// checkLedger counts executions independently of the masters' records.
func (c *Checker) checkLedger(ctx context.Context, rep *Report, acked map[string]string, byKey map[string][]api.Task) {
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	execs, err := c.Target.Ledger(lctx)
	cancel()
	if err != nil {
		rep.add(Check{Name: "executions in the ledger", OK: false, Detail: "cannot read the ledger: " + err.Error()})
		return
	}
	tasks := map[string]api.Task{}
	for _, ts := range byKey {
		for _, t := range ts {
			tasks[t.ID] = t
		}
	}
	per := map[string][]Execution{}
	for _, e := range execs {
		if _, ours := tasks[e.TaskID]; ours {
			per[e.TaskID] = append(per[e.TaskID], e)
			rep.Figures.Executions++
		}
	}
	var missing, phantom []string
	for id, t := range tasks {
		es := per[id]
		if t.State == api.StateSucceeded && len(es) == 0 {
			missing = append(missing, id)
		}
		for _, e := range es {
			if e.Attempt < 1 || e.Attempt > t.Attempt {
				phantom = append(phantom, fmt.Sprintf("%s attempt %d (task at attempt %d)", id, e.Attempt, t.Attempt))
			}
		}
		if len(es) <= 1 {
			continue
		}
		d := Duplicate{TaskID: id, Executions: len(es)}
		outcome := map[int]api.AttemptRecord{}
		for _, a := range t.Attempts {
			outcome[a.Attempt] = a
		}
		sort.Slice(es, func(i, j int) bool { return es[i].Attempt < es[j].Attempt })
		for i, e := range es {
			d.Attempts = append(d.Attempts, e.Attempt)
			a := outcome[e.Attempt]
			d.Outcomes = append(d.Outcomes, string(a.Outcome))
			if i == 0 {
				continue
			}
			rep.Figures.DuplicateExecutions++
			f := c.faultAt(a.StartedAt)
			if f == "" {
				f = "none"
				rep.Figures.UnexplainedDuplicates++
			}
			d.Faults = append(d.Faults, f)
		}
		rep.Duplicates = append(rep.Duplicates, d)
	}
	sort.Slice(rep.Duplicates, func(i, j int) bool { return rep.Duplicates[i].TaskID < rep.Duplicates[j].TaskID })
	rep.add(Check{Name: "every succeeded task executed at least once", OK: len(missing) == 0, Detail: summarize(missing, fmt.Sprintf("%d executions recorded in the ledger", rep.Figures.Executions))})
	rep.add(Check{Name: "no execution of an attempt that was never assigned", OK: len(phantom) == 0, Detail: summarize(phantom, "every execution matches an assigned attempt")})
}

// faultAt names the fault whose window (from 2s before its start to 15s
// after its heal) holds t, or "".
func (c *Checker) faultAt(t time.Time) string {
	for i := range c.Faults {
		f := &c.Faults[i]
		if !t.Before(f.Start.Add(-2*time.Second)) && !t.After(f.Healed.Add(15*time.Second)) {
			f.Duplicates++
			return f.Fault
		}
	}
	return ""
}

func (c *Checker) checkStale(ctx context.Context, rep *Report) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.any().Cluster(rctx, transport.ReadOptions{})
	if err == nil {
		rep.Figures.StaleResults = st.StaleResults
	}
}

// checkDigests waits until every master reports the same applied index and
// digest.
func (c *Checker) checkDigests(ctx context.Context, rep *Report) {
	clients := c.clients()
	urls := c.Target.Masters()
	deadline := time.Now().Add(c.Settle)
	var last []string
	for {
		var ds []api.Digest
		last = last[:0]
		for id, cl := range clients {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			d, err := cl.DigestAt(rctx, urls[id])
			cancel()
			if err != nil {
				last = append(last, id+": "+err.Error())
				continue
			}
			ds = append(ds, d)
			last = append(last, fmt.Sprintf("%s: index %d digest %.12s", d.ID, d.AppliedIndex, d.Digest))
		}
		same := len(ds) == len(clients)
		for _, d := range ds {
			same = same && d.AppliedIndex == ds[0].AppliedIndex && d.Digest == ds[0].Digest
		}
		if same {
			rep.add(Check{Name: "masters converge (equal state digests)", OK: true, Detail: fmt.Sprintf("%d masters at index %d, digest %.16s", len(ds), ds[0].AppliedIndex, ds[0].Digest)})
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(last)
			rep.add(Check{Name: "masters converge (equal state digests)", OK: false, Detail: strings.Join(last, "; ")})
			return
		}
		sleep(ctx, 500*time.Millisecond)
	}
}

// Model states for the linearizability check: a task is absent, live
// (pending or running), or one of its terminal states.
const (
	stAbsent = "absent"
	stLive   = "live"
)

// taskModel is the per-task model for porcupine: an acknowledged submission
// makes the task exist; a read sees it absent, live or terminal; once
// terminal it stays in that terminal state, and once it exists it never
// disappears (the run is far shorter than the retention).
var taskModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		for _, op := range h {
			id := op.Input.(lin).task
			by[id] = append(by[id], op)
		}
		out := make([][]porcupine.Operation, 0, len(by))
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return stAbsent },
	Step: func(state, input, output any) (bool, any) {
		s := state.(string)
		in := input.(lin)
		out := output.(string)
		if in.kind == OpSubmit {
			if s == stAbsent {
				return true, stLive
			}
			return true, s
		}
		switch {
		case out == "notfound":
			return s == stAbsent, s
		case out == stLive:
			return s == stAbsent || s == stLive, stLive
		default: // terminal
			return s == stAbsent || s == stLive || s == out, out
		}
	},
	DescribeOperation: func(input, output any) string {
		in := input.(lin)
		return fmt.Sprintf("%s %s -> %v", in.kind, in.task, output)
	},
}

type lin struct {
	kind string
	task string
}

// checkLinearizable checks that reads never go back in time for a task.
func (c *Checker) checkLinearizable(rep *Report, ops []Op) {
	var h []porcupine.Operation
	for _, op := range ops {
		if op.Outcome != OutcomeOK || op.TaskID == "" || op.Kind == OpReuse {
			continue
		}
		out := op.State
		switch {
		case op.Kind == OpSubmit:
			out = "ok"
		case out == string(api.StatePending), out == string(api.StateRunning):
			out = stLive
		}
		if op.Kind == OpRead {
			rep.Figures.Reads++
		}
		h = append(h, porcupine.Operation{ClientId: op.Client, Input: lin{op.Kind, op.TaskID}, Call: op.Start, Output: out, Return: op.End})
	}
	res := porcupine.CheckOperationsTimeout(taskModel, h, 2*time.Minute)
	switch res {
	case porcupine.Ok:
		rep.add(Check{Name: "reads never go back in time (linearizable per task)", OK: true, Detail: fmt.Sprintf("%d reads and acknowledged submissions checked with porcupine", len(h))})
	case porcupine.Illegal:
		rep.add(Check{Name: "reads never go back in time (linearizable per task)", OK: false, Detail: "porcupine found a read history that is not linearizable (see the history file)"})
	default:
		rep.add(Check{Name: "reads never go back in time (linearizable per task)", OK: true, Detail: "inconclusive: porcupine did not finish within 2 minutes"})
	}
}

// checkContainers compares containers with records, when the target can.
func (c *Checker) checkContainers(ctx context.Context, rep *Report) {
	a, ok := c.Target.(Auditor)
	if !ok {
		return
	}
	deadline := time.Now().Add(c.Settle)
	for {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := a.Audit(actx)
		cancel()
		clean := err == nil && len(res.Orphans) == 0 && len(res.Doubled) == 0 && len(res.Missing) == 0
		if clean || time.Now().After(deadline) {
			rep.Audit = &res
			detail := fmt.Sprintf("%d managed containers, all recorded", len(res.Containers))
			if err != nil {
				detail = "audit failed: " + err.Error()
			} else if !clean {
				detail = fmt.Sprintf("orphans %v, doubled %v, missing %v", res.Orphans, res.Doubled, res.Missing)
			}
			rep.add(Check{Name: "no container orphaned or doubled", OK: clean, Detail: detail})
			return
		}
		sleep(ctx, 2*time.Second)
	}
}

// availability computes, for each fault, the longest time without an
// acknowledged submission between its start and 10s after its heal (or the
// start of the next fault, when that comes sooner).
func (c *Checker) availability(rep *Report, ops []Op) {
	var acks []time.Time
	for _, op := range ops {
		if op.Kind == OpSubmit && op.Outcome == OutcomeOK {
			acks = append(acks, c.History.At(op.End))
		}
	}
	sort.Slice(acks, func(i, j int) bool { return acks[i].Before(acks[j]) })
	var worst time.Duration
	for i := range c.Faults {
		f := &c.Faults[i]
		from, to := f.Start, f.Healed.Add(10*time.Second)
		// The next fault's outage is its own: the window stops where it
		// starts.
		cut := i+1 < len(c.Faults) && c.Faults[i+1].Start.Before(to)
		if cut {
			to = c.Faults[i+1].Start
		}
		prev := from
		var gap time.Duration
		for _, a := range acks {
			if a.Before(from) {
				continue
			}
			if a.After(to) {
				break
			}
			gap = max(gap, a.Sub(prev))
			prev = a
		}
		if cut {
			gap = max(gap, to.Sub(prev))
		} else if prev.Before(to) && len(acks) > 0 && acks[len(acks)-1].After(to) {
			// The window ended with acknowledgements still coming: the tail
			// counts up to the next one.
			for _, a := range acks {
				if a.After(to) {
					gap = max(gap, a.Sub(prev))
					break
				}
			}
		}
		f.Gap, f.GapText = gap, gap.Round(time.Millisecond).String()
		worst = max(worst, gap)
	}
	rep.Faults = c.Faults
	rep.Figures.MaxUnavailability = worst.Round(time.Millisecond).String()
	rep.Figures.MaxUnavailabilitySecs = worst.Seconds()
}

// summarize returns "ok" when list is empty, else its first entries.
func summarize(list []string, ok string) string {
	if len(list) == 0 {
		return ok
	}
	sort.Strings(list)
	if len(list) > 10 {
		return fmt.Sprintf("%d: %s ... (%d more)", len(list), strings.Join(list[:10], "; "), len(list)-10)
	}
	return fmt.Sprintf("%d: %s", len(list), strings.Join(list, "; "))
}
