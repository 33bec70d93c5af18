package fsm

import (
	"testing"

	"github.com/gantryhq/gantry/api"
)

func TestDigest_EqualForEqualLogsAndAfterRestore(t *testing.T) {
	a, b := mustNewHarness(t), mustNewHarness(t)
	for _, h := range []*harness{a, b} {
		id := h.mustSubmit(t0, spec("echo", "x"))
		h.mustAssign(t0, id, "w1")
		h.mustResult(t0, id, api.OutcomeSucceeded)
		h.mustSubmit(t0, spec("true"))
	}
	ia, na, da := a.f.Digest()
	ib, nb, db := b.f.Digest()
	if ia != ib || na != nb || da != db || na != 2 {
		t.Fatalf("equal logs, different digests: %d/%d/%s vs %d/%d/%s", ia, na, da, ib, nb, db)
	}
	r := mustRestore(t, mustPersist(t, mustSnapshot(t, a.f)))
	if ir, _, dr := r.Digest(); ir != ia || dr != da {
		t.Fatalf("restored digest %d/%s, want %d/%s", ir, dr, ia, da)
	}
	// Any change shows.
	b.cancel(t0, b.mustSubmit(t0, spec("true")))
	if _, _, d := b.f.Digest(); d == da {
		t.Fatal("digest did not change with the state")
	}
	a.apply(&ScaleOpEntry{At: t0, Op: ScaleCreate, Prefix: "w", Count: 1})
	if _, _, d := a.f.Digest(); d == da {
		t.Fatal("digest ignores the scaling state")
	}
}
