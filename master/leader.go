package master

import (
	"context"
	"sync"
	"time"

	"github.com/gantryhq/gantry/fsm"
	"github.com/hashicorp/raft"
)

// gcBatch is how many terminal tasks one GC entry may forget.
const gcBatch = 5000

// leaderState exists while this node is the established leader. Its loops
// run under ctx, which is canceled when leadership is revoked.
type leaderState struct {
	ctx    context.Context
	cancel context.CancelFunc
	since  time.Time // when leadership was established
	wg     sync.WaitGroup

	dispatch *dispatcher
	detect   *detector
	scale    *scaler
}

// monitorLeadership follows raft's leadership notifications and runs one
// leaderLoop while this node leads. It is the only place leadership starts
// and ends.
func (m *Master) monitorLeadership() {
	defer m.wg.Done()
	var (
		stopLeader chan struct{}
		leaderDone chan struct{}
	)
	stopLoop := func() {
		if stopLeader != nil {
			close(stopLeader)
			<-leaderDone
			stopLeader, leaderDone = nil, nil
		}
	}
	for {
		select {
		case isLeader := <-m.notifyCh:
			switch {
			case isLeader && stopLeader == nil:
				stopLeader = make(chan struct{})
				leaderDone = make(chan struct{})
				go func(stop, done chan struct{}) {
					defer close(done)
					m.leaderLoop(stop)
				}(stopLeader, leaderDone)
				m.log.Info("won leadership", "term", m.raft.CurrentTerm())
			case !isLeader && stopLeader != nil:
				m.log.Info("lost leadership")
				stopLoop()
			}
		case <-m.stop:
			stopLoop()
			return
		}
	}
}

// leaderLoop waits for the log to be applied up to this term (Barrier), then
// establishes leadership until stop closes.
func (m *Master) leaderLoop(stop chan struct{}) {
	backoff := 100 * time.Millisecond
	for {
		err := m.raft.Barrier(m.cfg.ApplyTimeout).Error()
		if err == nil {
			break
		}
		m.log.Warn("barrier failed", "error", err)
		if m.raft.State() != raft.Leader {
			<-stop
			return
		}
		select {
		case <-stop:
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
	ls := m.establishLeadership()
	<-stop
	m.revokeLeadership(ls)
}

// establishLeadership starts the leader's loops. From here on this node
// serves leader-only requests.
func (m *Master) establishLeadership() *leaderState {
	ctx, cancel := context.WithCancel(context.Background())
	ls := &leaderState{ctx: ctx, cancel: cancel, since: time.Now()}
	ls.dispatch = newDispatcher(m, ls)
	ls.detect = newDetector(m, ls, ls.dispatch)
	ls.scale = newScaler(m, ls)
	ls.wg.Add(4)
	go func() { defer ls.wg.Done(); ls.scale.run() }()
	go func() { defer ls.wg.Done(); ls.dispatch.run() }()
	go func() { defer ls.wg.Done(); ls.detect.run() }()
	go func() { defer ls.wg.Done(); m.gcLoop(ctx) }()
	m.mu.Lock()
	m.leader = ls
	m.mu.Unlock()
	m.metrics.leaderships.Inc()
	m.log.Info("leadership established", "applied_index", m.fsm.AppliedIndex())
	return ls
}

// revokeLeadership stops the leader's loops and waits for them.
func (m *Master) revokeLeadership(ls *leaderState) {
	m.mu.Lock()
	if m.leader == ls {
		m.leader = nil
	}
	m.mu.Unlock()
	ls.cancel()
	ls.wg.Wait()
	m.log.Info("leadership revoked")
}

// leading returns the leader state when this node is the established leader.
func (m *Master) leading() *leaderState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.leader == nil || m.raft.State() != raft.Leader {
		return nil
	}
	return m.leader
}

// gcLoop forgets terminal tasks older than the retention period.
func (m *Master) gcLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			oldest, ok := m.fsm.OldestFinished()
			cutoff := time.Now().Add(-m.cfg.Retention)
			if !ok || !oldest.Before(cutoff) {
				break
			}
			resp, err := m.apply(&fsm.GCEntry{At: now(), Before: cutoff, Limit: gcBatch})
			if err != nil {
				m.log.Warn("gc failed", "error", err)
				break
			}
			removed := resp.(*fsm.GCResponse).Removed
			m.log.Info("forgot old terminal tasks", "removed", removed, "retention", m.cfg.Retention)
			if removed == 0 || ctx.Err() != nil {
				break
			}
		}
	}
}
