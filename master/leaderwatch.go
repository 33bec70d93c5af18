package master

import (
	"sync"

	"github.com/hashicorp/raft"
)

// leaderWatch turns raft's leader observations into a channel that closes at
// the next change of the leader this master knows (a new leader, or none
// while an election runs). A follower that forwarded a request to the leader
// selects on it, so that a leader which stopped answering (paused, cut off)
// is abandoned as soon as raft notices, within a heartbeat timeout or so,
// instead of after the request's own deadline.
type leaderWatch struct {
	mu sync.Mutex
	ch chan struct{} // closed and replaced at every change; guarded by mu
}

func newLeaderWatch() *leaderWatch {
	return &leaderWatch{ch: make(chan struct{})}
}

// changed returns the channel of the next change.
func (w *leaderWatch) changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

// fire closes the current channel and starts the next one.
func (w *leaderWatch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.ch)
	w.ch = make(chan struct{})
}

// watchLeader registers a raft observer for leader changes and fires w on
// each until stop closes. It runs in m.wg.
func (m *Master) watchLeader(r *raft.Raft) {
	defer m.wg.Done()
	obs := make(chan raft.Observation, 16)
	o := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(o)
	defer r.DeregisterObserver(o)
	for {
		select {
		case <-m.stop:
			return
		case <-obs:
			m.leaderWatch.fire()
		}
	}
}

// LeaderChanged implements transport.Master: a channel closed at the next
// change of the raft leader this master knows. Take it before reading
// Leader, so that no change between the two is missed.
func (m *Master) LeaderChanged() <-chan struct{} {
	return m.leaderWatch.changed()
}
