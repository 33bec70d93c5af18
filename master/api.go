package master

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
	"github.com/gantryhq/gantry/membership"
	"github.com/gantryhq/gantry/transport"
	"github.com/hashicorp/raft"
)

var _ transport.Master = (*Master)(nil)

// Leader implements transport.Master: the established leader, if known.
// This node counts as leader only once its Barrier has completed.
func (m *Master) Leader() (transport.LeaderInfo, bool) {
	if m.raft == nil {
		return transport.LeaderInfo{}, false
	}
	_, id := m.raft.LeaderWithID()
	if id == "" {
		return transport.LeaderInfo{}, false
	}
	if string(id) == m.cfg.ID {
		if m.leading() == nil {
			return transport.LeaderInfo{}, false
		}
		return transport.LeaderInfo{ID: m.cfg.ID, HTTP: m.cfg.HTTPAdvertise, Self: true}, true
	}
	if mb, ok := m.masterMember(string(id)); ok {
		return transport.LeaderInfo{ID: string(id), HTTP: mb.HTTP}, true
	}
	return transport.LeaderInfo{}, false
}

// masterMember returns the newest live gossip member of the master with id.
func (m *Master) masterMember(id string) (membership.Member, bool) {
	var best membership.Member
	found := false
	for _, mb := range m.gossip.Members() {
		if mb.Role != membership.RoleMaster || mb.ID != id || mb.HTTP == "" {
			continue
		}
		if mb.State != membership.StateAlive && mb.State != membership.StateSuspect {
			continue
		}
		if !found || mb.Started > best.Started {
			best, found = mb, true
		}
	}
	return best, found
}

// AwaitLeader implements transport.Master.
func (m *Master) AwaitLeader(ctx context.Context) (transport.LeaderInfo, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if li, ok := m.Leader(); ok {
			return li, nil
		}
		select {
		case <-ctx.Done():
			return transport.LeaderInfo{}, api.Unavailablef(api.CodeNoLeader, "no leader known")
		case <-m.stop:
			return transport.LeaderInfo{}, api.Unavailablef(api.CodeUnavailable, "this master is shutting down")
		case <-t.C:
		}
	}
}

func (m *Master) notLeader() error {
	return api.Unavailablef(api.CodeNotLeader, "master %s is not the leader", m.cfg.ID)
}

// Submit implements transport.Master. With atomic set (one request: a
// single task or a batch) a spec whose idempotency key names a task
// submitted with another spec refuses the whole request before anything is
// proposed; without it (a follower's coalesced submissions, each on its
// own) each such spec gets its own Conflict result.
func (m *Master) Submit(ctx context.Context, specs []api.TaskSpec, atomic bool) ([]api.SubmitResult, error) {
	if m.leading() == nil {
		return nil, m.notLeader()
	}
	for i := range specs {
		if err := specs[i].Normalize(""); err != nil {
			return nil, err
		}
	}
	if m.votersFormat(time.Now()) < fsm.ProtoNoRetry {
		for i := range specs {
			if specs[i].NoRetryExitCodes != nil {
				return nil, api.BadRequest(specField(specs, i, atomic, "no_retry_exit_codes"),
					"not every master runs a version that applies it yet (a rolling upgrade is in progress); retry once every master is upgraded")
			}
		}
	}
	// Known keys: a client retrying (the fast path, no write), or a key
	// reused with another spec (a conflict).
	out := make([]api.SubmitResult, len(specs))
	known := true
	var seen map[string]int // key -> first spec of this request with it (atomic batches)
	for i := range specs {
		s := &specs[i]
		if s.IdempotencyKey == "" {
			known = false
			if !atomic {
				break
			}
			continue
		}
		if atomic && len(specs) > 1 {
			if seen == nil {
				seen = make(map[string]int, len(specs))
			}
			if j, ok := seen[s.IdempotencyKey]; ok {
				if !specs[j].Equal(s) {
					field := specField(specs, i, atomic, "idempotency_key")
					return nil, &api.Error{Code: api.CodeIdempotencyConflict, Status: http.StatusUnprocessableEntity, Field: field,
						Message: fmt.Sprintf("%s: the key %q is also used by tasks[%d] of this request, with a different task", field, s.IdempotencyKey, j)}
				}
			} else {
				seen[s.IdempotencyKey] = i
			}
		}
		id, ok := m.fsm.LookupKey(s.IdempotencyKey)
		var t api.Task
		if ok {
			t, ok = m.fsm.Get(id)
		}
		if !ok {
			known = false
			if !atomic {
				break // the state machine flags conflicts of the rest
			}
			continue
		}
		if spec := t.Spec(); !spec.Equal(s) {
			if atomic {
				return nil, api.IdempotencyConflict(specField(specs, i, atomic, "idempotency_key"), s.IdempotencyKey, t.ID)
			}
			out[i] = api.SubmitResult{Task: t, Existing: true, Conflict: true}
			continue
		}
		out[i] = api.SubmitResult{Task: t, Existing: true}
	}
	if known {
		return out, nil
	}
	res, err := m.submits.do(ctx, specs)
	if err != nil {
		return nil, err
	}
	for i, r := range res {
		t, ok := m.fsm.Get(r.ID)
		if !ok {
			// Forgotten already (only with a tiny retention); report what
			// was committed.
			t = api.Task{ID: r.ID, State: api.StatePending}
		}
		out[i] = api.SubmitResult{Task: t, Existing: r.Existing, Conflict: r.Conflict}
		if r.Conflict && atomic {
			// Another request took the key between the check above and
			// the commit: the rest of this request was committed.
			e := api.IdempotencyConflict(specField(specs, i, atomic, "idempotency_key"), specs[i].IdempotencyKey, r.ID)
			if len(specs) > 1 {
				e.Message += "; the batch's other tasks were created: sending the batch again with the same keys returns them"
			}
			return nil, e
		}
	}
	return out, nil
}

// specField names a field of specs[i] in an error: "tasks[i].field" in a
// batch, "field" alone for one task.
func specField(specs []api.TaskSpec, i int, atomic bool, field string) string {
	if len(specs) == 1 || !atomic {
		return field
	}
	return "tasks[" + strconv.Itoa(i) + "]." + field
}

// verifyRead makes a read linearizable: this node must be the established
// leader and still hold a quorum.
func (m *Master) verifyRead(linearizable bool) error {
	if !linearizable {
		return nil
	}
	if m.leading() == nil {
		return m.notLeader()
	}
	if err := m.raft.VerifyLeader().Error(); err != nil {
		return raftError(err)
	}
	return nil
}

// Task implements transport.Master.
func (m *Master) Task(ctx context.Context, id string, linearizable bool) (api.Task, error) {
	if err := m.verifyRead(linearizable); err != nil {
		return api.Task{}, err
	}
	t, ok := m.fsm.Get(id)
	if !ok {
		return api.Task{}, api.NotFoundf("task %s not found", id)
	}
	return t, nil
}

// WaitTask implements transport.Master.
func (m *Master) WaitTask(ctx context.Context, id string, wait time.Duration, linearizable bool) (api.Task, error) {
	if err := m.verifyRead(linearizable); err != nil {
		return api.Task{}, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		t, ch, ok := m.fsm.WatchTask(id)
		if !ok {
			return api.Task{}, api.NotFoundf("task %s not found", id)
		}
		if ch == nil {
			return t, nil
		}
		select {
		case <-ch:
			continue
		case <-timer.C:
			m.fsm.UnwatchTask(id, ch)
			return t, nil
		case <-ctx.Done():
			m.fsm.UnwatchTask(id, ch)
			return t, ctx.Err()
		case <-m.stop:
			m.fsm.UnwatchTask(id, ch)
			return t, nil
		}
	}
}

// ListTasks implements transport.Master.
func (m *Master) ListTasks(ctx context.Context, f api.ListFilter, linearizable bool) (api.TaskList, error) {
	if err := m.verifyRead(linearizable); err != nil {
		return api.TaskList{}, err
	}
	return m.fsm.List(f)
}

// Cancel implements transport.Master. A running attempt's worker is told to
// stop it after the cancel is committed.
func (m *Master) Cancel(ctx context.Context, id string) (api.Task, error) {
	ls := m.leading()
	if ls == nil {
		return api.Task{}, m.notLeader()
	}
	resp, err := m.apply(&fsm.CancelEntry{At: now(), TaskID: id})
	if err != nil {
		return api.Task{}, err
	}
	cr := resp.(*fsm.CancelResponse)
	if cr.Err != nil {
		return api.Task{}, cr.Err
	}
	if cr.Running != nil {
		ls.detect.stopAttempt(cr.Worker, *cr.Running)
	}
	t, _ := m.fsm.Get(id)
	return t, nil
}

// ReportResults implements transport.Master.
func (m *Master) ReportResults(ctx context.Context, results []api.AttemptResult) ([]error, error) {
	if m.leading() == nil {
		return nil, m.notLeader()
	}
	for i := range results {
		if err := results[i].Validate(); err != nil {
			return nil, err
		}
	}
	return m.results.do(ctx, results)
}

// Self implements transport.Master.
func (m *Master) Self() api.NodeStatus {
	st := api.NodeStatus{ID: m.cfg.ID, Role: "unknown", Version: m.cfg.Version}
	if m.raft == nil {
		return st
	}
	st.AppliedIndex = m.raft.AppliedIndex()
	st.Role = roleName(m.raft.State())
	_, lid := m.raft.LeaderWithID()
	st.Leader = string(lid)
	st.Term = m.raft.CurrentTerm()
	st.CommitIndex = m.raft.CommitIndex()
	st.LastIndex = m.raft.LastIndex()
	return st
}

func roleName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	}
	return "shutdown"
}

// Digest implements transport.Master.
func (m *Master) Digest() api.Digest {
	idx, n, d := m.fsm.Digest()
	return api.Digest{ID: m.cfg.ID, AppliedIndex: idx, Tasks: n, Digest: d}
}

// Ready implements transport.Master.
func (m *Master) Ready() error {
	if m.raft == nil {
		return api.Unavailablef(api.CodeUnavailable, "not started")
	}
	_, lid := m.raft.LeaderWithID()
	if lid == "" {
		return api.Unavailablef(api.CodeNoLeader, "no leader known")
	}
	if string(lid) == m.cfg.ID && m.leading() == nil {
		return api.Unavailablef(api.CodeNoLeader, "leader %s is still applying its log", lid)
	}
	applied, commit := m.raft.AppliedIndex(), m.raft.CommitIndex()
	if applied < commit {
		return api.Unavailablef(api.CodeUnavailable, "catching up: applied %d of %d", applied, commit)
	}
	return nil
}

// Cluster implements transport.Master. The leader asks every master about
// itself (briefly) to fill roles and applied indexes, and, when its runtime
// is a ClusterLister, lists the cluster's worker containers (as briefly, at
// the same time) to name each worker by its container.
func (m *Master) Cluster(ctx context.Context, linearizable bool) (api.ClusterStatus, error) {
	if err := m.verifyRead(linearizable); err != nil {
		return api.ClusterStatus{}, err
	}
	st := api.ClusterStatus{Tasks: m.fsm.Counts(), StaleResults: m.fsm.StaleResults(), Term: m.raft.CurrentTerm()}
	_, lid := m.raft.LeaderWithID()
	st.Leader = string(lid)

	cf := m.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return st, raftError(err)
	}
	servers := cf.Configuration().Servers
	st.Masters = make([]api.MasterStatus, len(servers))
	var wg sync.WaitGroup
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ls := m.leading()
	var containers []Container // written by the lister goroutine, read after wg.Wait
	if lister, ok := m.cfg.Runtime.(ClusterLister); ok && ls != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs, err := lister.ListCluster(qctx)
			if err != nil {
				m.log.Debug("cannot list containers to name workers", "error", err)
				return
			}
			containers = cs
		}()
	}
	for i, srv := range servers {
		ms := api.MasterStatus{ID: string(srv.ID), RaftAddr: string(srv.Address), Voter: srv.Suffrage == raft.Voter, Role: "unknown"}
		if string(srv.ID) == m.cfg.ID {
			self := m.Self()
			ms.HTTPAddr, ms.Role, ms.AppliedIndex = m.cfg.HTTPAdvertise, self.Role, self.AppliedIndex
			st.Masters[i] = ms
			continue
		}
		if mb, ok := m.masterMember(string(srv.ID)); ok {
			ms.HTTPAddr = mb.HTTP
			wg.Add(1)
			go func(i int, ms api.MasterStatus) {
				defer wg.Done()
				if ns, err := m.peers.SelfAt(qctx, ms.HTTPAddr); err == nil && ns.ID == ms.ID {
					ms.Role, ms.AppliedIndex = ns.Role, ns.AppliedIndex
				}
				st.Masters[i] = ms
			}(i, ms)
			continue
		}
		st.Masters[i] = ms
	}
	wg.Wait()

	running := m.fsm.RunningCounts()
	views := m.workerViews()
	ids := make([]string, 0, len(views))
	for id := range views {
		ids = append(ids, id)
	}
	names := workerNames(ids, containers)
	for _, w := range views {
		state := w.State
		if state == membership.StateAlive && ls != nil && ls.dispatch.isSuspect(w.ID) {
			state = membership.StateSuspect // alive in gossip, but not answering the leader
		}
		st.Workers = append(st.Workers, api.WorkerStatus{
			ID: w.ID, HTTPAddr: w.HTTP, State: state, Slots: w.Slots, Running: running[w.ID], Draining: w.Draining || w.Leaving,
			Name: names[w.ID],
		})
	}
	sort.Slice(st.Workers, func(i, j int) bool { return st.Workers[i].ID < st.Workers[j].ID })
	return st, nil
}
