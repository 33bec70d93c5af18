package master

import (
	"github.com/gantryhq/gantry/membership"
)

// workerView is one logical worker as gossip shows it: the newest process
// that ran under that ID.
type workerView struct {
	ID       string
	HTTP     string
	Node     string // memberlist node name of that process
	State    string // alive, suspect, dead, left
	Slots    int
	Draining bool
	Leaving  bool
	Started  int64
}

// live reports whether the worker's newest process is alive or suspect.
func (w workerView) live() bool {
	return w.State == membership.StateAlive || w.State == membership.StateSuspect
}

// workerViews returns the workers gossip knows, by logical ID. A live
// process beats a dead one; among equals the newest start wins.
func (m *Master) workerViews() map[string]workerView {
	out := make(map[string]workerView)
	for _, mb := range m.gossip.Members() {
		if mb.Role != membership.RoleWorker || mb.ID == "" {
			continue
		}
		v := workerView{ID: mb.ID, HTTP: mb.HTTP, Node: mb.Name, State: mb.State, Slots: mb.Slots, Draining: mb.Draining, Leaving: mb.Leaving, Started: mb.Started}
		cur, ok := out[mb.ID]
		switch {
		case !ok:
		case v.live() && !cur.live():
		case v.live() == cur.live() && v.Started > cur.Started:
		default:
			continue
		}
		out[mb.ID] = v
	}
	return out
}
