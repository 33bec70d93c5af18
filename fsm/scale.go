package fsm

import (
	"fmt"
	"sort"

	"github.com/gantryhq/gantry/api"
)

// scaleState is the replicated part of scaling: the policy and the record of
// every managed worker container, keyed by name.
type scaleState struct {
	policy  api.ScalePolicy
	seq     uint64 // last container sequence number given out
	workers map[string]api.ManagedWorker
}

func newScaleState() scaleState {
	return scaleState{policy: api.DefaultScalePolicy, workers: make(map[string]api.ManagedWorker)}
}

// SetScaleResponse is what applying a SetScaleEntry returns.
type SetScaleResponse struct{ Err error }

// ScaleOpResponse is what applying a ScaleOpEntry returns: the names the
// operation changed (for create, the names it allocated).
type ScaleOpResponse struct{ Names []string }

// blocksAssign reports whether a worker may get no new attempts because its
// container is being drained or removed.
func (s *state) blocksAssign(worker string) bool {
	w, ok := s.scale.workers[worker]
	return ok && (w.State == api.ManagedDraining || w.State == api.ManagedRemoving)
}

func (s *state) applySetScale(e *SetScaleEntry) *SetScaleResponse {
	p := e.Policy
	if err := p.Normalize(); err != nil {
		return &SetScaleResponse{Err: err}
	}
	s.scale.policy = p
	return &SetScaleResponse{}
}

func (s *state) applyScaleOp(e *ScaleOpEntry) *ScaleOpResponse {
	resp := &ScaleOpResponse{}
	sc := &s.scale
	move := func(from []string, to string) {
		for _, name := range e.Names {
			w, ok := sc.workers[name]
			if !ok {
				continue
			}
			for _, f := range from {
				if w.State == f {
					w.State, w.Since = to, e.At
					sc.workers[name] = w
					resp.Names = append(resp.Names, name)
					break
				}
			}
		}
	}
	switch e.Op {
	case ScaleCreate:
		if e.Prefix == "" || e.Count < 1 {
			return resp
		}
		n := min(e.Count, api.MaxManagedWorkers-len(sc.workers))
		for i := 0; i < n; i++ {
			sc.seq++
			name := fmt.Sprintf("%s-%d", e.Prefix, sc.seq)
			sc.workers[name] = api.ManagedWorker{Name: name, State: api.ManagedCreating, Since: e.At}
			resp.Names = append(resp.Names, name)
		}
	case ScaleCreated:
		move([]string{api.ManagedCreating}, api.ManagedRunning)
	case ScaleDrain:
		move([]string{api.ManagedRunning}, api.ManagedDraining)
	case ScaleUndrain:
		move([]string{api.ManagedDraining}, api.ManagedRunning)
	case ScaleRemove:
		move([]string{api.ManagedCreating, api.ManagedDraining}, api.ManagedRemoving)
	case ScaleRemoved:
		for _, name := range e.Names {
			if _, ok := sc.workers[name]; ok {
				delete(sc.workers, name)
				resp.Names = append(resp.Names, name)
			}
		}
	}
	return resp
}

// ScaleState is a copy of the replicated scaling state.
type ScaleState struct {
	Policy  api.ScalePolicy
	Workers []api.ManagedWorker // sorted by name
}

// Scale returns the scaling policy and the managed worker records.
func (f *FSM) Scale() ScaleState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.scale.copy()
}

func (sc *scaleState) copy() ScaleState {
	out := ScaleState{Policy: sc.policy, Workers: make([]api.ManagedWorker, 0, len(sc.workers))}
	for _, w := range sc.workers {
		out.Workers = append(out.Workers, w)
	}
	sort.Slice(out.Workers, func(i, j int) bool { return out.Workers[i].Name < out.Workers[j].Name })
	return out
}

// scaleSnapshot is the scaling state in a snapshot header.
type scaleSnapshot struct {
	Policy  api.ScalePolicy     `json:"policy"`
	Seq     uint64              `json:"seq"`
	Workers []api.ManagedWorker `json:"workers"`
}

func (sc *scaleState) snapshot() *scaleSnapshot {
	c := sc.copy()
	return &scaleSnapshot{Policy: c.Policy, Seq: sc.seq, Workers: c.Workers}
}

func restoreScale(ss *scaleSnapshot) (scaleState, error) {
	sc := newScaleState()
	if ss == nil {
		return sc, nil
	}
	p := ss.Policy
	if err := p.Normalize(); err != nil {
		return sc, fmt.Errorf("snapshot scale policy: %v", err)
	}
	sc.policy, sc.seq = p, ss.Seq
	for _, w := range ss.Workers {
		switch w.State {
		case api.ManagedCreating, api.ManagedRunning, api.ManagedDraining, api.ManagedRemoving:
		default:
			return sc, fmt.Errorf("snapshot managed worker %q: bad state %q", w.Name, w.State)
		}
		if w.Name == "" {
			return sc, fmt.Errorf("snapshot managed worker without a name")
		}
		if _, dup := sc.workers[w.Name]; dup {
			return sc, fmt.Errorf("snapshot managed worker %q listed twice", w.Name)
		}
		sc.workers[w.Name] = w
	}
	return sc, nil
}
