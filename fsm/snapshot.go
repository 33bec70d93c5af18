package fsm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/google/btree"
	"github.com/hashicorp/raft"
)

// snapshotVersion is written in every snapshot header; Restore refuses
// versions it does not know.
const snapshotVersion = 1

// snapshotHeader is the first JSON value of a snapshot. It is followed by
// exactly Count task values in sequence order.
type snapshotHeader struct {
	Version int    `json:"version"`
	Index   uint64 `json:"index"` // last raft index applied when taken
	Seq     uint64 `json:"seq"`
	Stale   uint64 `json:"stale_results"`
	Count   int    `json:"count"`
	// Scale is the scaling state; absent in snapshots taken before it existed.
	Scale *scaleSnapshot `json:"scale,omitempty"`
}

// snapshot is a point-in-time copy of the state: a copy-on-write clone of the
// task tree, taken in O(1) under the lock and written out later.
type snapshot struct {
	header snapshotHeader
	tasks  *btree.BTreeG[*record]
}

// Snapshot implements raft.FSM. It only clones; Persist does the work.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock() // Clone mutates the tree's copy-on-write context
	defer f.mu.Unlock()
	return &snapshot{
		header: snapshotHeader{Version: snapshotVersion, Index: f.applied, Seq: f.s.seq, Stale: f.s.stale, Count: f.s.tasks.Len(), Scale: f.s.scale.snapshot()},
		tasks:  f.s.tasks.Clone(),
	}, nil
}

// Persist implements raft.FSMSnapshot.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(s.header); err != nil {
		return fmt.Errorf("snapshot header: %w", err)
	}
	var err error
	s.tasks.Ascend(func(r *record) bool {
		err = enc.Encode(&r.task)
		return err == nil
	})
	if err != nil {
		return fmt.Errorf("snapshot task: %w", err)
	}
	return bw.Flush()
}

// Release implements raft.FSMSnapshot.
func (s *snapshot) Release() {}

// Restore implements raft.FSM: it decodes the snapshot into a fresh state and
// swaps it in. Waiters on tasks are woken so they re-read.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, index, err := readSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.s = s
	f.applied = index
	for seq, list := range f.watch {
		for _, ch := range list {
			close(ch)
		}
		delete(f.watch, seq)
	}
	f.mu.Unlock()
	select {
	case f.changes <- struct{}{}:
	default:
	}
	return nil
}

// readSnapshot decodes a snapshot into a fresh state and returns it with the
// raft index the snapshot was taken at.
func readSnapshot(r io.Reader) (*state, uint64, error) {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<20))
	var h snapshotHeader
	if err := dec.Decode(&h); err != nil {
		return nil, 0, fmt.Errorf("snapshot header: %w", err)
	}
	if h.Version != snapshotVersion {
		return nil, 0, fmt.Errorf("snapshot version %d is not supported (want %d)", h.Version, snapshotVersion)
	}
	s := newState()
	s.seq = h.Seq
	s.stale = h.Stale
	sc, err := restoreScale(h.Scale)
	if err != nil {
		return nil, 0, err
	}
	s.scale = sc
	var prev uint64 // tasks come in strictly increasing sequence order, from 1
	for i := 0; i < h.Count; i++ {
		r := &record{}
		if err := dec.Decode(&r.task); err != nil {
			return nil, 0, fmt.Errorf("snapshot task %d of %d: %w", i+1, h.Count, err)
		}
		seq, ok := parseID(r.task.ID)
		if !ok || seq <= prev || seq > h.Seq || !r.task.State.Valid() {
			return nil, 0, fmt.Errorf("snapshot task %d of %d: bad or out-of-order id %q or bad state %q", i+1, h.Count, r.task.ID, r.task.State)
		}
		prev = seq
		r.seq = seq
		s.insert(r)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("snapshot: trailing data after %d tasks", h.Count)
	}
	return s, h.Index, nil
}
