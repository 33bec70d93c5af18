package fsm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

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
//
// Persist writes one JSON value per line, so the lines after the header are
// cut into chunks that a few workers decode in parallel (JSON decoding is
// most of a restore's cost), while this goroutine inserts the decoded tasks
// in snapshot order: the resulting state is the same as decoding one value
// after another. Blank lines are skipped; anything else that is not exactly
// one JSON value per line is an error.
func readSnapshot(r io.Reader) (*state, uint64, error) {
	lr := &lineReader{r: bufio.NewReaderSize(r, 1<<20)}
	line, err := lr.next()
	if err != nil {
		return nil, 0, fmt.Errorf("snapshot header: %w", err)
	}
	var h snapshotHeader
	if err := json.Unmarshal(line, &h); err != nil {
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
	// Most tasks carry an idempotency key: size the index once rather than
	// growing it through every doubling (bounded, for a corrupt count).
	s.keys = make(map[string]uint64, min(max(h.Count, 0), 1<<21))

	chunks, stop := decodeTasks(lr, h.Count)
	defer stop()
	var prev uint64 // tasks come in strictly increasing sequence order, from 1
	i := 0
	for c := range chunks {
		<-c.done
		for _, r := range c.recs {
			if r.seq <= prev || r.seq > h.Seq {
				return nil, 0, fmt.Errorf("snapshot task %d of %d: bad or out-of-order id %q or bad state %q", i+1, h.Count, r.task.ID, r.task.State)
			}
			prev = r.seq
			s.insert(r)
			i++
		}
		if c.err != nil {
			return nil, 0, c.err
		}
	}
	return s, h.Index, nil
}

// snapshotChunk is a run of consecutive task lines of a snapshot and, once
// done is closed, their decoded records (up to the first bad one, then err).
type snapshotChunk struct {
	first int    // index of the first task of the chunk in the snapshot
	data  []byte // the lines, back to back
	ends  []int  // end offset of each line in data
	recs  []*record
	err   error
	done  chan struct{}
}

// Chunk sizes for decodeTasks.
const (
	chunkLines = 256
	chunkBytes = 256 << 10
)

// decodeTasks reads count task lines from lr and decodes them on
// GOMAXPROCS workers. It returns the chunks in snapshot order; after the last
// task it checks that only whitespace remains (a chunk with only err set
// otherwise). The channel closes after the last chunk. stop must be called
// before lr's reader is closed: it ends the goroutines and waits for them.
func decodeTasks(lr *lineReader, count int) (<-chan *snapshotChunk, func()) {
	workers := max(1, runtime.GOMAXPROCS(0))
	ordered := make(chan *snapshotChunk, 4*workers) // bounds the chunks in memory
	jobs := make(chan *snapshotChunk, 4*workers)
	quit := make(chan struct{})
	// free recycles the chunks' line buffers (decoded tasks do not share
	// memory with them).
	free := make(chan []byte, 8*workers+1)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range jobs {
				c.decode(count)
				select {
				case free <- c.data[:0]:
				default:
				}
				c.data, c.ends = nil, nil
				close(c.done)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		defer close(ordered)
		send := func(c *snapshotChunk) bool {
			select {
			case ordered <- c:
			case <-quit:
				return false
			}
			select {
			case jobs <- c:
			case <-quit:
				return false
			}
			return true
		}
		failed := func(err error) {
			c := &snapshotChunk{err: err, done: make(chan struct{})}
			close(c.done)
			select {
			case ordered <- c:
			case <-quit:
			}
		}
		for i := 0; i < count; {
			c := &snapshotChunk{first: i, ends: make([]int, 0, chunkLines), done: make(chan struct{})}
			select {
			case c.data = <-free:
			default:
				c.data = make([]byte, 0, chunkBytes+4<<10)
			}
			var err error
			for i < count && len(c.ends) < chunkLines && len(c.data) < chunkBytes {
				var line []byte
				if line, err = lr.next(); err != nil {
					break
				}
				c.data = append(c.data, line...)
				c.ends = append(c.ends, len(c.data))
				i++
			}
			if len(c.ends) > 0 && !send(c) {
				return
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				failed(fmt.Errorf("snapshot task %d of %d: %w", i+1, count, err))
				return
			}
		}
		if _, err := lr.next(); !errors.Is(err, io.EOF) {
			failed(fmt.Errorf("snapshot: trailing data after %d tasks", max(count, 0)))
		}
	}()
	var once sync.Once
	return ordered, func() {
		once.Do(func() {
			close(quit)
			wg.Wait()
		})
	}
}

// decode turns the chunk's lines into records, stopping at the first bad one.
func (c *snapshotChunk) decode(count int) {
	c.recs = make([]*record, 0, len(c.ends))
	start := 0
	for j, end := range c.ends {
		r := &record{}
		if err := decodeTask(c.data[start:end], &r.task); err != nil {
			c.err = fmt.Errorf("snapshot task %d of %d: %w", c.first+j+1, count, err)
			break
		}
		seq, ok := parseID(r.task.ID)
		if !ok || !r.task.State.Valid() {
			c.err = fmt.Errorf("snapshot task %d of %d: bad or out-of-order id %q or bad state %q", c.first+j+1, count, r.task.ID, r.task.State)
			break
		}
		r.seq = seq
		c.recs = append(c.recs, r)
		start = end
	}
}

// lineReader returns the non-blank lines of a stream.
type lineReader struct {
	r   *bufio.Reader
	buf []byte
}

// next returns the next line that is not only whitespace, without its line
// end; it is valid until the following call. At the end of the stream it
// returns io.EOF (a last line without a line end is returned first).
func (lr *lineReader) next() ([]byte, error) {
	for {
		line, err := lr.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			lr.buf = append(lr.buf[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = lr.r.ReadSlice('\n')
				lr.buf = append(lr.buf, line...)
			}
			line = lr.buf
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			return t, nil
		}
		if err != nil {
			return nil, io.EOF
		}
	}
}
