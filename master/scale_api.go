package master

import (
	"context"
	"sort"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
)

// SetScale implements transport.Master: it commits a new scaling policy.
func (m *Master) SetScale(ctx context.Context, p api.ScalePolicy) (api.ScaleStatus, error) {
	ls := m.leading()
	if ls == nil {
		return api.ScaleStatus{}, m.notLeader()
	}
	if err := p.Normalize(); err != nil {
		return api.ScaleStatus{}, err
	}
	resp, err := m.apply(&fsm.SetScaleEntry{At: now(), Policy: p})
	if err != nil {
		return api.ScaleStatus{}, err
	}
	if err := resp.(*fsm.SetScaleResponse).Err; err != nil {
		return api.ScaleStatus{}, err
	}
	m.log.Info("scaling policy set", "mode", p.Mode, "count", p.Count, "min", p.Min, "max", p.Max, "backlog_per_worker", p.BacklogPerWorker, "cooldown", p.Cooldown)
	ls.scale.poke()
	return m.Scale(ctx, false)
}

// Scale implements transport.Master: the policy, the desired and actual
// counts and every managed worker with its container and gossip state
// (on the leader in auto mode, also the last scale-up check: what the
// policy wants, what the rate check needs, the completion rate and the
// container start time it used). The
// leader knows the containers; any other master answers from its replica
// with container states unknown.
func (m *Master) Scale(ctx context.Context, linearizable bool) (api.ScaleStatus, error) {
	if err := m.verifyRead(linearizable); err != nil {
		return api.ScaleStatus{}, err
	}
	st := m.fsm.Scale()
	counts := m.fsm.Counts()
	out := api.ScaleStatus{
		Policy:  st.Policy,
		Desired: st.Policy.Desired(counts.Pending + counts.Running),
		Workers: []api.ManagedWorkerStatus{},
	}
	var ss scalerStatus
	ls := m.leading()
	switch {
	case m.cfg.Runtime == nil:
		out.Runtime = "none: scaling is off on this master"
		if m.cfg.RuntimeNote != "" {
			out.Runtime = "none: " + m.cfg.RuntimeNote
		}
	case ls == nil:
		out.Runtime = "only the leader talks to the runtime"
	default:
		ss = ls.scale.status()
		out.Runtime = ss.describe
		if out.Runtime == "" {
			out.Runtime = "not yet contacted"
		}
		out.Desired = ss.desired
		if ss.check.done {
			out.ScaleUp = ss.check.status()
		}
		out.LastError, out.LastErrorAt = ss.lastErr, ss.lastErrAt
	}
	containers := make(map[string]Container, len(ss.observed))
	for _, c := range ss.observed {
		containers[c.Name] = c
	}
	views := m.workerViews()
	running := m.fsm.RunningCounts()
	known := map[string]bool{}
	for _, w := range st.Workers {
		known[w.Name] = true
		ws := api.ManagedWorkerStatus{ManagedWorker: w, Container: "unknown", Worker: "unknown", Running: running[w.Name]}
		if ss.listed {
			ws.Container = "missing"
			if c, ok := containers[w.Name]; ok {
				ws.Container = c.State
				if c.Running() {
					out.Actual++
				}
			}
		}
		if v, ok := views[w.Name]; ok {
			ws.Worker = v.State
		}
		out.Workers = append(out.Workers, ws)
	}
	for _, c := range ss.observed {
		if !known[c.Name] {
			out.Orphans = append(out.Orphans, c.Name)
		}
	}
	sort.Strings(out.Orphans)
	return out, nil
}
