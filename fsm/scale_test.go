package fsm

import (
	"slices"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/hashicorp/raft"
)

func (h *harness) scaleOp(at time.Time, op string, names ...string) []string {
	h.t.Helper()
	return as[*ScaleOpResponse](h.t, h.apply(&ScaleOpEntry{At: at, Op: op, Names: names})).Names
}

func (h *harness) managed(name string) (api.ManagedWorker, bool) {
	for _, w := range h.f.Scale().Workers {
		if w.Name == name {
			return w, true
		}
	}
	return api.ManagedWorker{}, false
}

func TestScale_DefaultPolicyAndSetScale(t *testing.T) {
	h := mustNewHarness(t)
	if got := h.f.Scale().Policy; got != api.DefaultScalePolicy {
		t.Fatalf("default policy %+v, want %+v", got, api.DefaultScalePolicy)
	}
	p := api.ScalePolicy{Mode: api.ScaleFixed, Count: 3}
	if err := p.Normalize(); err != nil {
		t.Fatal(err)
	}
	if r := as[*SetScaleResponse](t, h.apply(&SetScaleEntry{At: t0, Policy: p})); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := h.f.Scale().Policy; got != p {
		t.Fatalf("policy %+v, want %+v", got, p)
	}
	// An invalid policy is refused and changes nothing.
	bad := api.ScalePolicy{Mode: api.ScaleAuto, Min: 5, Max: 2}
	r := as[*SetScaleResponse](t, h.apply(&SetScaleEntry{At: t0, Policy: bad}))
	wantErr(t, r.Err, api.ErrBadRequest)
	if got := h.f.Scale().Policy; got != p {
		t.Fatalf("policy changed by a refused entry: %+v", got)
	}
}

func TestScale_LifeOfAManagedWorker(t *testing.T) {
	h := mustNewHarness(t)
	names := as[*ScaleOpResponse](t, h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "c-worker", Count: 2})).Names
	if !slices.Equal(names, []string{"c-worker-1", "c-worker-2"}) {
		t.Fatalf("created %v", names)
	}
	for _, n := range names {
		if w, _ := h.managed(n); w.State != api.ManagedCreating || !w.Since.Equal(t0) {
			t.Fatalf("%s: %+v", n, w)
		}
	}
	// Names are never reused, even after a removal.
	h.scaleOp(t0, ScaleRemove, "c-worker-2")
	h.scaleOp(t0, ScaleRemoved, "c-worker-2")
	more := as[*ScaleOpResponse](t, h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "c-worker", Count: 1})).Names
	if !slices.Equal(more, []string{"c-worker-3"}) {
		t.Fatalf("created %v after a removal", more)
	}

	steps := []struct {
		op, from, to string
	}{
		{ScaleCreated, api.ManagedCreating, api.ManagedRunning},
		{ScaleDrain, api.ManagedRunning, api.ManagedDraining},
		{ScaleUndrain, api.ManagedDraining, api.ManagedRunning},
		{ScaleDrain, api.ManagedRunning, api.ManagedDraining},
		{ScaleRemove, api.ManagedDraining, api.ManagedRemoving},
	}
	for i, s := range steps {
		at := t0.Add(time.Duration(i+1) * time.Second)
		if got := h.scaleOp(at, s.op, "c-worker-1"); !slices.Equal(got, []string{"c-worker-1"}) {
			t.Fatalf("%s: changed %v", s.op, got)
		}
		if w, _ := h.managed("c-worker-1"); w.State != s.to || !w.Since.Equal(at) {
			t.Fatalf("after %s: %+v, want %s", s.op, w, s.to)
		}
	}
	// Operations that do not fit the state change nothing.
	for _, op := range []string{ScaleCreated, ScaleDrain, ScaleUndrain} {
		if got := h.scaleOp(t0, op, "c-worker-1", "nope"); len(got) != 0 {
			t.Fatalf("%s on a removing worker changed %v", op, got)
		}
	}
	if got := h.scaleOp(t0, ScaleRemoved, "c-worker-1", "nope"); !slices.Equal(got, []string{"c-worker-1"}) {
		t.Fatalf("removed %v", got)
	}
	if _, ok := h.managed("c-worker-1"); ok {
		t.Fatal("record survived removed")
	}
	// A half-done creation can be reverted.
	if got := h.scaleOp(t0, ScaleRemove, "c-worker-3"); !slices.Equal(got, []string{"c-worker-3"}) {
		t.Fatalf("remove of a creating worker changed %v", got)
	}
	// A malformed create allocates nothing.
	if got := as[*ScaleOpResponse](t, h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Count: 3})).Names; len(got) != 0 {
		t.Fatalf("create without a prefix made %v", got)
	}
}

func TestScale_CreateIsBoundedByTheLimit(t *testing.T) {
	h := mustNewHarness(t)
	got := as[*ScaleOpResponse](t, h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "w", Count: api.MaxManagedWorkers + 50})).Names
	if len(got) != api.MaxManagedWorkers || len(h.f.Scale().Workers) != api.MaxManagedWorkers {
		t.Fatalf("created %d, want the limit %d", len(got), api.MaxManagedWorkers)
	}
}

func TestScale_DrainingWorkerGetsNoAttempts(t *testing.T) {
	h := mustNewHarness(t)
	names := as[*ScaleOpResponse](t, h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "w", Count: 1})).Names
	h.scaleOp(t0, ScaleCreated, names...)
	a := h.mustSubmit(t0, spec("true"))
	b := h.mustSubmit(t0, spec("true"))
	if !h.assign(t0, a, 1, names[0]) {
		t.Fatal("a running managed worker refused an attempt")
	}
	h.scaleOp(t0, ScaleDrain, names...)
	if h.assign(t0, b, 1, names[0]) {
		t.Fatal("a draining worker got a new attempt")
	}
	// Its running attempt still finishes normally.
	h.mustResult(t0, a, api.OutcomeSucceeded)
	wantState(t, h.f, a, api.StateSucceeded)
	h.scaleOp(t0, ScaleRemove, names...)
	if h.assign(t0, b, 1, names[0]) {
		t.Fatal("a removing worker got a new attempt")
	}
	if !h.assign(t0, b, 1, "other") {
		t.Fatal("another worker was refused")
	}
}

func TestScale_SnapshotRoundTrip(t *testing.T) {
	h := mustNewHarness(t)
	p := api.ScalePolicy{Mode: api.ScaleAuto, Min: 2, Max: 9, BacklogPerWorker: 3, Cooldown: "10s"}
	if err := p.Normalize(); err != nil {
		t.Fatal(err)
	}
	h.apply(&SetScaleEntry{At: t0, Policy: p})
	names := as[*ScaleOpResponse](t, h.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "w", Count: 3})).Names
	h.scaleOp(t0, ScaleCreated, names[0], names[1])
	h.scaleOp(t0, ScaleDrain, names[1])

	r := mustRestore(t, mustPersist(t, mustSnapshot(t, h.f)))
	if got, want := mustJSON(t, r.Scale()), mustJSON(t, h.f.Scale()); got != want {
		t.Fatalf("restored scale state\n%s\nwant\n%s", got, want)
	}
	// The name sequence continues where it was.
	got := as[*ScaleOpResponse](t, r.Apply(h.nextLog(raft.LogCommand, mustEncode(t, &ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "w", Count: 1})))).Names
	if !slices.Equal(got, []string{"w-4"}) {
		t.Fatalf("after restore created %v, want [w-4]", got)
	}
}

func TestScalePolicy_NormalizeAndDesired(t *testing.T) {
	tests := []struct {
		name    string
		in      api.ScalePolicy
		field   string // error field, "" for valid
		backlog int
		desired int
	}{
		{"defaults", api.ScalePolicy{Max: 4}, "", 35, 4},
		{"auto clamps up to min", api.ScalePolicy{Min: 2, Max: 5, BacklogPerWorker: 10}, "", 0, 2},
		{"auto rounds up", api.ScalePolicy{Min: 0, Max: 5, BacklogPerWorker: 10}, "", 11, 2},
		{"fixed ignores backlog", api.ScalePolicy{Mode: api.ScaleFixed, Count: 3}, "", 1000, 3},
		{"fixed zero", api.ScalePolicy{Mode: api.ScaleFixed}, "", 1000, 0},
		{"bad mode", api.ScalePolicy{Mode: "manual"}, "mode", 0, 0},
		{"max below min", api.ScalePolicy{Min: 3, Max: 2}, "max", 0, 0},
		{"negative min", api.ScalePolicy{Min: -1, Max: 2}, "min", 0, 0},
		{"too many", api.ScalePolicy{Max: api.MaxManagedWorkers + 1}, "max", 0, 0},
		{"fixed too many", api.ScalePolicy{Mode: api.ScaleFixed, Count: api.MaxManagedWorkers + 1}, "count", 0, 0},
		{"bad cooldown", api.ScalePolicy{Max: 1, Cooldown: "soon"}, "cooldown", 0, 0},
		{"long cooldown", api.ScalePolicy{Max: 1, Cooldown: "2h"}, "cooldown", 0, 0},
		{"bad backlog", api.ScalePolicy{Max: 1, BacklogPerWorker: -1}, "backlog_per_worker", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.in
			err := p.Normalize()
			if tt.field != "" {
				e, ok := err.(*api.Error)
				if !ok || e.Field != tt.field {
					t.Fatalf("err %v, want a 400 on %s", err, tt.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Desired(tt.backlog); got != tt.desired {
				t.Fatalf("desired(%d) = %d, want %d", tt.backlog, got, tt.desired)
			}
			again := p
			if err := again.Normalize(); err != nil || again != p {
				t.Fatalf("normalize is not idempotent: %+v vs %+v (%v)", again, p, err)
			}
		})
	}
}
