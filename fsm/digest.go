package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Digest returns a SHA-256 of the whole replicated state (every task in
// sequence order, the counters and the scaling state) with the raft index it
// was taken at and the number of tasks. Replicas that applied the same log
// return the same digest; a difference at equal indexes is divergence.
// It costs a pass over every task.
func (f *FSM) Digest() (index uint64, tasks int, digest string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h := sha256.New()
	enc := json.NewEncoder(h)
	fmt.Fprintf(h, "seq %d stale %d\n", f.s.seq, f.s.stale)
	f.s.tasks.Ascend(func(r *record) bool {
		_ = enc.Encode(&r.task) // writing to a hash cannot fail
		return true
	})
	_ = enc.Encode(f.s.scale.snapshot())
	return f.applied, f.s.tasks.Len(), hex.EncodeToString(h.Sum(nil))
}
