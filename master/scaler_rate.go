package master

import (
	"math"
	"sort"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/membership"
)

// Scale-up check tuning.
const (
	// rateWindow is how much busy time (time with a backlog) the completion
	// rate is measured over: long enough to smooth a few slow tasks, short
	// enough to follow a change of workload within seconds.
	rateWindow = 5 * time.Second
	// startDefault is the container start time assumed until this leader
	// has seen one of its own containers join.
	startDefault = 2500 * time.Millisecond
	// startSamples is how many observed start times the median is taken of.
	startSamples = 5
	// startProbe is how often a pending start is looked for in gossip
	// between reconcile rounds, so the sample is not rounded up to the
	// scale interval.
	startProbe = 100 * time.Millisecond
	// stalledFraction: a backlog with no completion for start/stalledFraction
	// of busy time is a queue that is not moving. Quick tasks complete well
	// within that; waiting longer would delay the start of a worker that
	// a long backlog needs by more than it could save.
	stalledFraction = 4
)

// upInput is what the scale-up check decides from.
type upInput struct {
	Policy  api.ScalePolicy
	Backlog int           // pending + running tasks
	Pending int           // tasks waiting for a slot
	Active  int           // managed workers creating or running
	Rate    float64       // tasks reaching a terminal state per second; 0 when none are
	Start   time.Duration // how long a new container takes to take work
}

// upCount returns how many workers to add to the Active ones. In fixed
// mode, with no observed completions, or when the policy wants no more,
// it is what the policy wants (at least 0). Otherwise a new worker only
// helps with what is still queued when it has started: it sizes the
// policy for the backlog projected to that moment (Backlog − Rate·Start),
// adds nothing beyond min when no task would still be waiting then, and
// never adds more than the policy itself wants.
func upCount(in upInput) int {
	d := in.Policy.Desired(in.Backlog)
	if d <= in.Active {
		return 0
	}
	if in.Policy.Mode == api.ScaleFixed || in.Rate <= 0 {
		return d - in.Active
	}
	done := in.Rate * in.Start.Seconds() // tasks the current workers finish meanwhile
	target := max(in.Active, in.Policy.Min)
	if float64(in.Pending)-done > 0 {
		left := int(math.Ceil(float64(in.Backlog) - done))
		target = max(target, in.Policy.Desired(left))
	}
	return max(min(target, d)-in.Active, 0)
}

// stallWait returns how much longer the backlog must go without a
// completion before drainMeter.rate falls low enough for upCount to add a
// worker (its stall bound inFlight ÷ stall gets low enough, or the queue
// counts as not moving), or 0 when waiting alone will not change the
// answer (nothing can run, the policy wants no more, or the stall is not
// what holds the scale-up back). The scaler rechecks then instead of at
// its next tick, so a queue that turns out not to move is scaled up as
// soon as that is known.
func stallWait(in upInput, inFlight int, stall time.Duration) time.Duration {
	p := in.Policy
	if p.Mode == api.ScaleFixed || inFlight <= 0 || in.Active >= p.Desired(in.Backlog) {
		return 0
	}
	need := in.Start / stalledFraction
	// upCount adds a worker once Rate·Start < min(Pending, Backlog − Active·per).
	if x := min(in.Pending, in.Backlog-in.Active*max(p.BacklogPerWorker, 1)); x > 0 {
		need = min(need, time.Duration(float64(inFlight)*float64(in.Start)/float64(x)))
	}
	if need <= stall {
		return 0
	}
	return need - stall + time.Millisecond
}

// drainMeter measures how fast tasks reach a terminal state, from the
// replicated task counts sampled at every reconcile round. It counts only
// busy time (intervals that began with a backlog or saw completions): an
// idle cluster says nothing about how fast its workers drain, so the rate
// of the last busy period is what the next burst is judged by. It is
// leader-only, in-memory state, owned by the scaler's goroutine.
type drainMeter struct {
	have     bool
	last     time.Time
	lastDone int  // terminal tasks at the last sample
	lastBusy bool // a backlog at the last sample
	spans    []drainSpan
	busy     time.Duration // sum of spans
	stall    time.Duration // busy time since the last completion
}

type drainSpan struct {
	d time.Duration
	n int // completions in d
}

// observe takes a sample: done terminal tasks and a backlog of pending
// plus running tasks at now.
func (m *drainMeter) observe(now time.Time, done, backlog int) {
	if !m.have {
		m.have, m.last, m.lastDone, m.lastBusy = true, now, done, backlog > 0
		return
	}
	dt := max(now.Sub(m.last), 0)
	n := done - m.lastDone
	busy := m.lastBusy || n > 0
	m.last, m.lastDone, m.lastBusy = now, done, backlog > 0
	switch {
	case n < 0:
		// GC forgot terminal tasks: this interval's completions are
		// unknown, so it is left out.
		return
	case !busy:
		m.stall = 0 // the next backlog starts a fresh stall
		return
	}
	m.spans = append(m.spans, drainSpan{d: dt, n: n})
	m.busy += dt
	for len(m.spans) > 1 && m.busy-m.spans[0].d >= rateWindow {
		m.busy -= m.spans[0].d
		m.spans = m.spans[1:]
	}
	if n > 0 {
		m.stall = 0
	} else {
		m.stall += dt
	}
}

// rate returns the completion rate to judge a backlog by, with inFlight
// tasks running or able to run at once (the backlog, up to the slots of
// the live workers) and containers that take start to start: completions
// per second of busy time over the window, counting at least inFlight
// completions, and capped by inFlight ÷ stall; 0 once the queue has not
// moved for start/stalledFraction.
//
// Tasks finish in waves of up to inFlight, so over a short window (the
// first moments of a burst) the plain count reads far too low: counting
// at least one wave keeps a burst from looking slow before its first
// tasks are through. The cap (had every task in flight finished just now,
// the rate would still be no higher) makes a queue that stopped moving,
// or never moved, read slower the longer it stalls; past a fraction of a
// start time it is taken as not moving at all, which is what bounds the
// delay a long backlog sees. With no slot to run on nothing can finish,
// and the rate is 0.
func (m *drainMeter) rate(inFlight int, start time.Duration) float64 {
	bound := 0.0
	if inFlight > 0 && m.stall < start/stalledFraction {
		bound = math.Inf(1)
		if m.stall > 0 {
			bound = float64(inFlight) / m.stall.Seconds()
		}
	}
	k := 0
	for _, s := range m.spans {
		k += s.n
	}
	if m.busy <= 0 {
		return bound
	}
	return min(float64(max(k, inFlight))/m.busy.Seconds(), bound)
}

// windowRate returns completions per second of busy time over the
// window, 0 before any: what the last busy period drained at.
func (m *drainMeter) windowRate() float64 {
	k := 0
	for _, s := range m.spans {
		k += s.n
	}
	if m.busy <= 0 {
		return 0
	}
	return float64(k) / m.busy.Seconds()
}

// startTimes measures how long the leader's own new containers take from
// Create to a worker alive in gossip. Leader-only, in-memory state, owned
// by the scaler's goroutine.
type startTimes struct {
	pending map[string]time.Time // container name -> Create called
	samples []time.Duration      // the last startSamples, oldest first
}

func newStartTimes() *startTimes { return &startTimes{pending: make(map[string]time.Time)} }

// created notes that the container name was created at at.
func (t *startTimes) created(name string, at time.Time) { t.pending[name] = at }

// seen takes a sample for every pending container whose worker gossip
// shows alive, and forgets those that keep(name) rejects (no record any
// more).
func (t *startTimes) seen(views map[string]workerView, now time.Time, keep func(string) bool) {
	for name, at := range t.pending {
		if v, ok := views[name]; ok && v.State == membership.StateAlive {
			t.samples = append(t.samples, max(now.Sub(at), 0))
			if len(t.samples) > startSamples {
				t.samples = t.samples[1:]
			}
			delete(t.pending, name)
			continue
		}
		if keep != nil && !keep(name) {
			delete(t.pending, name)
		}
	}
}

// waiting reports whether a start is being timed.
func (t *startTimes) waiting() bool { return len(t.pending) > 0 }

// estimate returns the median observed start time, or startDefault and
// false when none was observed yet.
func (t *startTimes) estimate() (time.Duration, bool) {
	if len(t.samples) == 0 {
		return startDefault, false
	}
	s := append([]time.Duration(nil), t.samples...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], true
}

// upCheck is the last scale-up check, for GET /v1/scale.
type upCheck struct {
	done     bool // a check ran in auto mode
	policy   int  // the policy's desired count
	needed   int  // after the rate check
	active   int
	rate     float64
	start    time.Duration
	observed bool // start was measured, not assumed
}

// status is the check as GET /v1/scale shows it.
func (c upCheck) status() *api.ScaleUpCheck {
	rate := c.rate
	if math.IsInf(rate, 1) {
		rate = -1
	}
	return &api.ScaleUpCheck{PolicyDesired: c.policy, Needed: c.needed, Active: c.active,
		DrainRate: math.Round(rate*10) / 10, StartSeconds: math.Round(c.start.Seconds()*100) / 100, StartObserved: c.observed}
}
