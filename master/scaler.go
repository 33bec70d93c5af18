package master

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
	"github.com/gantryhq/gantry/membership"
	"github.com/hashicorp/go-hclog"
)

// Scaler tuning.
const (
	scaleMaxBackoff = 30 * time.Second
)

// scaler runs on the leader and reconciles worker containers against the
// replicated scaling state, level-triggered: every ScaleInterval and on
// every kick (the queue changed) it compares what the policy wants, what
// the records say and what the runtime has, and takes the next steps.
//
// Every step that changes Docker is preceded by a committed intent (create,
// remove) and by a check that this node still leads, so a new leader finds
// in the log what the old one was doing: a creating record whose container
// exists is adopted, one whose container is missing is created (a name
// conflict means adopt), a removing record is removed. Containers of this
// cluster that no record accounts for are orphans and are removed after
// OrphanGrace.
//
// In auto mode a scale-up is checked against how fast the workers drain
// the queue and how long a new container takes to start (scaler_rate.go):
// a container that would start after the backlog is gone is not created.
type scaler struct {
	m   *Master
	ls  *leaderState
	rt  Runtime
	log hclog.Logger

	kick chan struct{} // capacity 1

	// Owned by run's goroutine.
	lowSince   time.Time            // since when fewer workers are wanted than are active
	orphanSeen map[string]time.Time // container -> first seen without a record
	backoff    time.Duration
	nextTry    time.Time
	drain      drainMeter    // completion rate over busy time, this term
	starts     *startTimes   // how long this leader's containers take to join
	recheck    time.Duration // after a held-back scale-up: check again this soon (0: at the tick)

	mu        sync.Mutex
	observed  []Container // last List, guarded by mu
	listedAt  time.Time   // guarded by mu
	desired   int         // guarded by mu
	describe  string      // guarded by mu
	lastErr   string      // guarded by mu
	lastErrAt time.Time   // guarded by mu
	check     upCheck     // last scale-up check, guarded by mu
}

func newScaler(m *Master, ls *leaderState) *scaler {
	return &scaler{m: m, ls: ls, rt: m.cfg.Runtime, log: m.log.Named("scaler"), kick: make(chan struct{}, 1), orphanSeen: make(map[string]time.Time), starts: newStartTimes()}
}

// poke asks for a reconcile round soon.
func (s *scaler) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *scaler) run() {
	if s.rt == nil {
		return
	}
	t := time.NewTicker(s.m.cfg.ScaleInterval)
	defer t.Stop()
	recheck := time.NewTimer(time.Hour)
	defer recheck.Stop()
	probe := time.NewTicker(startProbe)
	defer probe.Stop()
	for {
		s.once()
		stopTimer(recheck)
		if s.recheck > 0 && s.recheck < s.m.cfg.ScaleInterval {
			recheck.Reset(s.recheck)
		}
		if !s.waitRound(t.C, recheck.C, probe.C) {
			return
		}
	}
}

// waitRound blocks until the next reconcile round is due (a tick, a kick
// or a recheck) and reports false when leadership ends. Between rounds it
// only times the starts of new containers.
func (s *scaler) waitRound(tick, recheck, probe <-chan time.Time) bool {
	for {
		var probing <-chan time.Time
		if s.starts.waiting() {
			probing = probe
		}
		select {
		case <-s.ls.ctx.Done():
			return false
		case <-tick:
			return true
		case <-s.kick:
			return true
		case <-recheck:
			return true
		case <-probing:
			s.starts.seen(s.m.workerViews(), time.Now(), nil)
		}
	}
}

// stopTimer stops t and drains a tick it already fired.
func stopTimer(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
}

// fail records an error, logs it and backs off.
func (s *scaler) fail(what string, err error) {
	if s.ls.ctx.Err() != nil {
		return
	}
	if s.backoff == 0 {
		s.backoff = s.m.cfg.ScaleInterval
	} else {
		s.backoff = min(2*s.backoff, scaleMaxBackoff)
	}
	s.nextTry = time.Now().Add(s.backoff)
	msg := what + ": " + err.Error()
	s.log.Warn("scaling step failed; will retry", "step", what, "error", err, "retry_in", s.backoff)
	s.mu.Lock()
	s.lastErr, s.lastErrAt = msg, time.Now().UTC()
	s.mu.Unlock()
}

// leads confirms, just before a Docker call that changes something, that
// this node still leads: the leader loop is alive and a quorum still
// follows it.
func (s *scaler) leads() bool {
	if s.ls.ctx.Err() != nil {
		return false
	}
	if err := s.m.raft.VerifyLeader().Error(); err != nil {
		s.log.Warn("not acting on the runtime: leadership not confirmed", "error", err)
		return false
	}
	return true
}

// op commits one scale operation and returns the names it changed.
func (s *scaler) op(e *fsm.ScaleOpEntry) ([]string, error) {
	e.At = now()
	resp, err := s.m.apply(e)
	if err != nil {
		return nil, err
	}
	return resp.(*fsm.ScaleOpResponse).Names, nil
}

// prefix is the name prefix of this cluster's managed workers. It differs
// from compose's own names (<project>-worker-N in compose v2,
// <project>_worker_N in v1) so a leader never mistakes a compose worker for
// one of its own.
func (s *scaler) prefix() string { return s.m.cfg.Cluster + "-managed" }

// once runs one reconcile round.
func (s *scaler) once() {
	ctx := s.ls.ctx
	s.recheck = 0
	if ctx.Err() != nil || time.Now().Before(s.nextTry) {
		return
	}
	if d, err := s.rt.Describe(ctx); err != nil {
		s.setDescribe("unavailable: " + err.Error())
		s.fail("describe runtime", err)
		return
	} else {
		s.setDescribe(d)
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	containers, err := s.rt.List(lctx)
	cancel()
	if err != nil {
		s.fail("list containers", err)
		return
	}
	s.mu.Lock()
	s.observed, s.listedAt = containers, time.Now()
	s.mu.Unlock()
	byName := make(map[string]Container, len(containers))
	for _, c := range containers {
		byName[c.Name] = c
	}

	st := s.m.fsm.Scale()
	counts := s.m.fsm.Counts()
	running := s.m.fsm.RunningCounts()
	backlog := counts.Pending + counts.Running
	desired := st.Policy.Desired(backlog)
	now := time.Now()
	s.drain.observe(now, counts.Succeeded+counts.Failed+counts.Canceled, backlog)
	s.observeStarts(now, st.Workers)
	s.mu.Lock()
	s.desired = desired
	s.mu.Unlock()

	ok := true
	// 1. Carry every record one step further.
	var active, draining, creating, live []api.ManagedWorker
	for _, w := range st.Workers {
		switch w.State {
		case api.ManagedCreating:
			creating = append(creating, w)
			active = append(active, w)
		case api.ManagedRunning:
			live = append(live, w)
			active = append(active, w)
		case api.ManagedDraining:
			draining = append(draining, w)
		}
	}
	ok = s.finishCreating(ctx, creating, byName) && ok
	ok = s.keepRunning(ctx, live, byName) && ok
	ok = s.removeDrained(draining, running) && ok
	ok = s.finishRemoving(ctx, st.Workers) && ok

	// 2. Compare with the policy.
	switch n := len(active); {
	case desired > n:
		s.lowSince = time.Time{}
		if create := s.checkUp(st.Policy, counts, n); create > 0 || len(draining) > 0 {
			ok = s.scaleUp(ctx, desired-n, create, draining, byName) && ok
		}
	case desired < n:
		if s.lowSince.IsZero() {
			s.lowSince = time.Now()
		}
		// A fixed count is an order, not a reading of the backlog: no cooldown.
		if st.Policy.Mode == api.ScaleFixed || time.Since(s.lowSince) >= st.Policy.CooldownDuration() {
			ok = s.scaleDown(n-desired, creating, live, running) && ok
		}
	default:
		s.lowSince = time.Time{}
	}
	if n := len(active); desired <= n {
		s.noteCheck(st.Policy, desired, n)
	}

	// 3. Reap containers no record accounts for.
	ok = s.reapOrphans(ctx, containers, st.Workers) && ok
	if ok {
		s.backoff, s.nextTry = 0, time.Time{}
	}
}

func (s *scaler) setDescribe(d string) {
	s.mu.Lock()
	s.describe = d
	s.mu.Unlock()
}

// ensure makes the container of name exist and run: create it (a conflict
// means it exists: adopt it) or start it.
func (s *scaler) ensure(ctx context.Context, name string, c Container, exists bool) error {
	if exists && c.Running() {
		return nil
	}
	if !s.leads() {
		return errNotLeading
	}
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if !exists {
		at := time.Now()
		err := s.rt.Create(cctx, name)
		if err == nil {
			s.starts.created(name, at)
			s.log.Info("created worker container", "name", name)
			return nil
		}
		if !errors.Is(err, ErrContainerExists) {
			return err
		}
		s.log.Info("worker container already exists: adopting it", "name", name)
	}
	if err := s.rt.Start(cctx, name); err != nil {
		return err
	}
	s.log.Info("started worker container", "name", name)
	return nil
}

var errNotLeading = errors.New("leadership not confirmed")

func (s *scaler) finishCreating(ctx context.Context, creating []api.ManagedWorker, byName map[string]Container) bool {
	ok := true
	for _, w := range creating {
		c, exists := byName[w.Name]
		if err := s.ensure(ctx, w.Name, c, exists); err != nil {
			if !errors.Is(err, errNotLeading) {
				s.fail("create "+w.Name, err)
			}
			ok = false
			continue
		}
		if _, err := s.op(&fsm.ScaleOpEntry{Op: fsm.ScaleCreated, Names: []string{w.Name}}); err != nil {
			s.fail("commit created "+w.Name, err)
			ok = false
		}
	}
	return ok
}

// keepRunning restarts (or recreates) running workers whose containers
// stopped or vanished behind the leader's back.
func (s *scaler) keepRunning(ctx context.Context, live []api.ManagedWorker, byName map[string]Container) bool {
	ok := true
	for _, w := range live {
		c, exists := byName[w.Name]
		if exists && c.Running() {
			continue
		}
		s.log.Warn("managed worker container is not running; bringing it back", "name", w.Name, "state", c.State, "exists", exists)
		if err := s.ensure(ctx, w.Name, c, exists); err != nil && !errors.Is(err, errNotLeading) {
			s.fail("restart "+w.Name, err)
			ok = false
		}
	}
	return ok
}

// removeDrained commits the removal of draining workers that run nothing.
func (s *scaler) removeDrained(draining []api.ManagedWorker, running map[string]int) bool {
	var idle []string
	for _, w := range draining {
		if running[w.Name] == 0 {
			idle = append(idle, w.Name)
		}
	}
	if len(idle) == 0 {
		return true
	}
	if _, err := s.op(&fsm.ScaleOpEntry{Op: fsm.ScaleRemove, Names: idle}); err != nil {
		s.fail("commit remove", err)
		return false
	}
	return true
}

// finishRemoving stops and removes containers whose removal is committed.
func (s *scaler) finishRemoving(ctx context.Context, workers []api.ManagedWorker) bool {
	ok := true
	for _, w := range workers {
		if w.State != api.ManagedRemoving {
			continue
		}
		if !s.leads() {
			return false
		}
		rctx, cancel := context.WithTimeout(ctx, s.m.cfg.WorkerStopTimeout+30*time.Second)
		err := s.rt.Remove(rctx, w.Name, s.m.cfg.WorkerStopTimeout)
		cancel()
		if err != nil {
			s.fail("remove "+w.Name, err)
			ok = false
			continue
		}
		s.log.Info("removed worker container", "name", w.Name)
		if _, err := s.op(&fsm.ScaleOpEntry{Op: fsm.ScaleRemoved, Names: []string{w.Name}}); err != nil {
			s.fail("commit removed "+w.Name, err)
			ok = false
		}
	}
	return ok
}

// scaleUp brings need more workers: draining ones are wanted again first
// (they run already, so no start time is saved by leaving them), then up
// to create new ones minus those undrained are committed and created at
// once.
func (s *scaler) scaleUp(ctx context.Context, need, create int, draining []api.ManagedWorker, byName map[string]Container) bool {
	var back []string
	for _, w := range draining {
		if len(back) == need {
			break
		}
		back = append(back, w.Name)
	}
	if len(back) > 0 {
		names, err := s.op(&fsm.ScaleOpEntry{Op: fsm.ScaleUndrain, Names: back})
		if err != nil {
			s.fail("commit undrain", err)
			return false
		}
		need -= len(names)
		create -= len(names)
		s.log.Info("draining workers are wanted again", "names", names)
	}
	need = min(need, create)
	if need <= 0 {
		return true
	}
	names, err := s.op(&fsm.ScaleOpEntry{Op: fsm.ScaleCreate, Prefix: s.prefix(), Count: need})
	if err != nil {
		s.fail("commit create", err)
		return false
	}
	s.log.Info("scaling up", "new", names)
	created := make([]api.ManagedWorker, len(names))
	for i, n := range names {
		created[i] = api.ManagedWorker{Name: n, State: api.ManagedCreating}
	}
	return s.finishCreating(ctx, created, byName)
}

// scaleDown takes excess workers out of service: half-created ones are
// reverted first, then running ones are drained, idle ones (and among them
// the newest) first. Draining workers finish what they run before removal.
func (s *scaler) scaleDown(excess int, creating, live []api.ManagedWorker, running map[string]int) bool {
	var revert []string
	for i := len(creating) - 1; i >= 0 && len(revert) < excess; i-- {
		revert = append(revert, creating[i].Name)
	}
	if len(revert) > 0 {
		if _, err := s.op(&fsm.ScaleOpEntry{Op: fsm.ScaleRemove, Names: revert}); err != nil {
			s.fail("commit remove", err)
			return false
		}
		excess -= len(revert)
	}
	if excess <= 0 {
		return true
	}
	cands := append([]api.ManagedWorker(nil), live...)
	sort.Slice(cands, func(i, j int) bool {
		ri, rj := running[cands[i].Name], running[cands[j].Name]
		if ri != rj {
			return ri < rj // idle first
		}
		return nameSeq(cands[i].Name) > nameSeq(cands[j].Name) // newest first
	})
	var drain []string
	for _, w := range cands[:min(excess, len(cands))] {
		drain = append(drain, w.Name)
	}
	if len(drain) == 0 {
		return true
	}
	if _, err := s.op(&fsm.ScaleOpEntry{Op: fsm.ScaleDrain, Names: drain}); err != nil {
		s.fail("commit drain", err)
		return false
	}
	s.log.Info("scaling down: draining", "names", drain)
	s.lowSince = time.Now() // the next step down waits a full cooldown again
	return true
}

// nameSeq returns the sequence number at the end of a managed worker name.
func nameSeq(name string) int {
	i := strings.LastIndexByte(name, '-')
	n, _ := strconv.Atoi(name[i+1:])
	return n
}

// reapOrphans removes containers of this cluster that no record accounts
// for, once they have been seen for OrphanGrace.
func (s *scaler) reapOrphans(ctx context.Context, containers []Container, records []api.ManagedWorker) bool {
	known := make(map[string]bool, len(records))
	for _, w := range records {
		known[w.Name] = true
	}
	ok := true
	seen := make(map[string]bool)
	for _, c := range containers {
		if known[c.Name] {
			continue
		}
		seen[c.Name] = true
		first, ok2 := s.orphanSeen[c.Name]
		if !ok2 {
			s.orphanSeen[c.Name] = time.Now()
			s.log.Warn("container of this cluster has no record; will remove it after the grace period", "name", c.Name, "grace", s.m.cfg.OrphanGrace)
			continue
		}
		if time.Since(first) < s.m.cfg.OrphanGrace {
			continue
		}
		if !s.leads() {
			return false
		}
		rctx, cancel := context.WithTimeout(ctx, s.m.cfg.WorkerStopTimeout+30*time.Second)
		err := s.rt.Remove(rctx, c.Name, s.m.cfg.WorkerStopTimeout)
		cancel()
		if err != nil {
			s.fail("remove orphan "+c.Name, err)
			ok = false
			continue
		}
		s.log.Warn("removed orphan container", "name", c.Name)
		delete(s.orphanSeen, c.Name)
	}
	for name := range s.orphanSeen {
		if !seen[name] {
			delete(s.orphanSeen, name)
		}
	}
	return ok
}

// scalerStatus is what the scaler last saw.
type scalerStatus struct {
	describe  string
	observed  []Container
	listed    bool // observed is from a successful List
	desired   int
	check     upCheck
	lastErr   string
	lastErrAt time.Time
}

// status describes the scaler for GET /v1/scale.
func (s *scaler) status() scalerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return scalerStatus{
		describe: s.describe, observed: append([]Container(nil), s.observed...), listed: !s.listedAt.IsZero(),
		desired: s.desired, check: s.check, lastErr: s.lastErr, lastErrAt: s.lastErrAt,
	}
}

// observeStarts times the starts of this leader's new containers whose
// workers gossip now shows alive, and stops timing those without a record.
func (s *scaler) observeStarts(now time.Time, records []api.ManagedWorker) {
	if !s.starts.waiting() {
		return
	}
	known := make(map[string]bool, len(records))
	for _, w := range records {
		known[w.Name] = true
	}
	s.starts.seen(s.m.workerViews(), now, func(name string) bool { return known[name] })
}

// checkUp returns how many new containers to create when the policy wants
// more than the n active workers (upCount), records the check for
// GET /v1/scale and, when a stalled queue would justify more after a
// while, when to check again.
func (s *scaler) checkUp(p api.ScalePolicy, counts api.TaskCounts, n int) int {
	start, observed := s.starts.estimate()
	backlog := counts.Pending + counts.Running
	inFlight := s.inFlight(counts)
	in := upInput{
		Policy: p, Backlog: backlog, Pending: counts.Pending, Active: n,
		Rate: s.drain.rate(inFlight, start), Start: start,
	}
	add := upCount(in)
	desired := p.Desired(in.Backlog)
	if add < desired-n {
		s.recheck = stallWait(in, inFlight, s.drain.stall)
		s.log.Debug("scale-up held back: the backlog drains before a new worker would start",
			"policy", desired, "needed", n+add, "rate", in.Rate, "start", start, "start_observed", observed)
	}
	s.mu.Lock()
	s.check = upCheck{done: p.Mode == api.ScaleAuto, policy: desired, needed: n + add, active: n, rate: in.Rate, start: start, observed: observed}
	s.mu.Unlock()
	return add
}

// noteCheck records a round that wanted no scale-up, with the rate the
// last busy period drained at.
func (s *scaler) noteCheck(p api.ScalePolicy, desired, n int) {
	start, observed := s.starts.estimate()
	rate := s.drain.windowRate()
	s.mu.Lock()
	s.check = upCheck{done: p.Mode == api.ScaleAuto, policy: desired, needed: desired, active: n, rate: rate, start: start, observed: observed}
	s.mu.Unlock()
}

// inFlight returns how many tasks run or can run at once: the running
// ones, or the backlog up to the slots of the live workers that take work
// (tasks just submitted may not be assigned yet, but they are about to
// be).
func (s *scaler) inFlight(counts api.TaskCounts) int {
	slots := 0
	for _, v := range s.m.workerViews() {
		if v.State == membership.StateAlive && !v.Draining && !v.Leaving {
			slots += v.Slots
		}
	}
	return max(counts.Running, min(counts.Pending+counts.Running, slots))
}
