// Package statescale measures how gantry's replicated state machine (package
// fsm) behaves with a large backlog of pending tasks in one master: heap per
// task, the time to apply the submissions, to persist a snapshot and restore
// it, and how fast the dispatcher's assign path drains the backlog.
//
// It drives the FSM the way a master does: submissions go through Apply as
// encoded SubmitEntry logs of up to 1000 normalized specs (the master's
// submit batcher), and dispatching is Ready in priority order followed by one
// AssignEntry of up to 1024 assignments per round (the dispatcher). Nothing
// here needs raft, a network or Docker.
//
// Run(1_000_000, os.Stderr) gives the "state scale" figures; statescale_test.go
// runs it small in every go test, and with GANTRY_BENCH_MILLION=1 at one
// million tasks.
package statescale

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
	"github.com/hashicorp/raft"
)

// Tuning that mirrors the master.
const (
	submitBatch    = 1000  // specs per submit entry (master.maxSubmitBatch)
	assignBatch    = 1024  // assignments per assign entry (master.maxAssignBatch)
	logsPerApply   = 64    // raft hands a BatchingFSM up to MaxAppendEntries logs at once
	dispatchTarget = 20000 // assignments measured for DispatchPerSecond
	workers        = 100   // workers the assignments are spread over
)

// Result holds the figures of one run.
type Result struct {
	N                 int     `json:"n"`                   // pending tasks submitted
	HeapBytesPerTask  float64 `json:"heap_bytes_per_task"` // live heap growth after GC / N
	SubmitSeconds     float64 `json:"submit_seconds"`      // applying the N submissions (decode + apply)
	SnapshotSeconds   float64 `json:"snapshot_seconds"`    // Snapshot + Persist into a file
	SnapshotBytes     int64   `json:"snapshot_bytes"`
	RestoreSeconds    float64 `json:"restore_seconds"` // Restore from that file into a fresh FSM
	DispatchPerSecond float64 `json:"dispatch_per_second"`
	Dispatched        int     `json:"dispatched"` // assignments accepted during the dispatch measurement

	Tasks          int    `json:"tasks"`          // tasks in the original state
	RestoredTasks  int    `json:"restored_tasks"` // tasks in the restored state
	Digest         string `json:"digest"`         // of the original, before dispatching
	RestoredDigest string `json:"restored_digest"`
}

// At is the leader clock every entry of a run carries, so that runs are
// reproducible.
var At = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// Spec returns the i-th submitted spec: a small exec task with a ~30 character
// idempotency key, normalized as the API normalizes before proposing.
// Priorities cycle over a few values so the ready index has several bands.
func Spec(i int) api.TaskSpec {
	s := api.TaskSpec{
		Args:           []string{"sh", "-c", "echo hello"},
		Priority:       i % 3,
		IdempotencyKey: fmt.Sprintf("statescale-%019d", i),
	}
	if err := s.Normalize(""); err != nil {
		panic(err) // a constant spec
	}
	return s
}

// applier feeds encoded entries to an FSM as consecutive raft logs.
type applier struct {
	f     *fsm.FSM
	index uint64
}

func (a *applier) apply(entries ...fsm.Entry) ([]any, error) {
	logs := make([]*raft.Log, len(entries))
	for i, e := range entries {
		data, err := fsm.Encode(e)
		if err != nil {
			return nil, err
		}
		a.index++
		logs[i] = &raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: data}
	}
	return a.f.ApplyBatch(logs), nil
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// submit applies n submissions to f through a, in the master's batches, and
// returns how long the applies took (encoding, the leader's work, excluded).
func submit(a *applier, n int) (time.Duration, error) {
	var took time.Duration
	var pending []fsm.Entry
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		logs := make([]*raft.Log, len(pending))
		for i, e := range pending {
			data, err := fsm.Encode(e)
			if err != nil {
				return err
			}
			a.index++
			logs[i] = &raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: data}
		}
		pending = pending[:0]
		t := time.Now()
		out := a.f.ApplyBatch(logs)
		took += time.Since(t)
		for _, o := range out {
			r, ok := o.(*fsm.SubmitResponse)
			if !ok {
				return fmt.Errorf("submit answered %T", o)
			}
			for _, res := range r.Results {
				if res.Existing {
					return errors.New("a fresh idempotency key was reported existing")
				}
			}
		}
		return nil
	}
	for i := 0; i < n; i += submitBatch {
		e := &fsm.SubmitEntry{At: At.Add(time.Duration(i) * time.Microsecond)}
		for j := i; j < min(n, i+submitBatch); j++ {
			e.Tasks = append(e.Tasks, Spec(j))
		}
		pending = append(pending, e)
		if len(pending) == logsPerApply {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	return took, flush()
}

// fileSink is a raft.SnapshotSink writing to a file.
type fileSink struct {
	*os.File
	canceled bool
}

func (s *fileSink) ID() string { return "statescale" }

func (s *fileSink) Cancel() error {
	s.canceled = true
	return s.File.Close()
}

// dispatch runs dispatcher rounds (Ready, then one AssignEntry) until target
// assignments were accepted or nothing is ready, and returns how many were
// accepted and how long it took.
func dispatch(a *applier, target int) (int, time.Duration, error) {
	names := make([]string, workers)
	for i := range names {
		names[i] = fmt.Sprintf("worker-%03d", i)
	}
	done := 0
	t := time.Now()
	for round := 0; done < target; round++ {
		at := At.Add(time.Hour + time.Duration(round)*time.Millisecond)
		tasks, _ := a.f.Ready(at, min(assignBatch, target-done))
		if len(tasks) == 0 {
			break
		}
		e := &fsm.AssignEntry{At: at, Assignments: make([]fsm.Assignment, len(tasks))}
		for i, tk := range tasks {
			e.Assignments[i] = fsm.Assignment{TaskID: tk.ID, Attempt: tk.Attempt + 1, Worker: names[(done+i)%workers]}
		}
		out, err := a.apply(e)
		if err != nil {
			return done, 0, err
		}
		for _, ok := range out[0].(*fsm.AssignResponse).Accepted {
			if !ok {
				return done, 0, errors.New("an assignment of a ready task was refused")
			}
			done++
		}
	}
	return done, time.Since(t), nil
}

// Run measures the state machine with n pending tasks and logs progress to
// log.
func Run(n int, log io.Writer) (Result, error) {
	res := Result{N: n}
	logf := func(format string, args ...any) { fmt.Fprintf(log, "statescale: "+format+"\n", args...) }

	before := heapAlloc()
	a := &applier{f: fsm.New()}
	took, err := submit(a, n)
	if err != nil {
		return res, err
	}
	res.SubmitSeconds = took.Seconds()
	after := heapAlloc()
	res.HeapBytesPerTask = (float64(after) - float64(before)) / float64(n)
	logf("submitted %d tasks in %.2fs; heap %.1f MiB, %.0f B/task", n, res.SubmitSeconds, float64(after-before)/(1<<20), res.HeapBytesPerTask)
	if c := a.f.Counts(); c.Pending != n {
		return res, fmt.Errorf("%d pending tasks, want %d", c.Pending, n)
	}

	file, err := os.CreateTemp("", "gantry-statescale-*.snap")
	if err != nil {
		return res, err
	}
	defer os.Remove(file.Name())
	t := time.Now()
	snap, err := a.f.Snapshot()
	if err != nil {
		return res, err
	}
	sink := &fileSink{File: file}
	if err := snap.Persist(sink); err != nil {
		return res, fmt.Errorf("persist: %w", err)
	}
	snap.Release()
	res.SnapshotSeconds = time.Since(t).Seconds()
	if sink.canceled {
		return res, errors.New("persist canceled the sink")
	}
	st, err := os.Stat(file.Name())
	if err != nil {
		return res, err
	}
	res.SnapshotBytes = st.Size()
	logf("snapshot: %.2fs, %.1f MiB", res.SnapshotSeconds, float64(res.SnapshotBytes)/(1<<20))

	rc, err := os.Open(file.Name())
	if err != nil {
		return res, err
	}
	restored := fsm.New()
	runtime.GC() // do not charge the restore for the snapshot's garbage
	t = time.Now()
	if err := restored.Restore(rc); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	res.RestoreSeconds = time.Since(t).Seconds()
	logf("restore: %.2fs", res.RestoreSeconds)

	_, res.Tasks, res.Digest = a.f.Digest()
	_, res.RestoredTasks, res.RestoredDigest = restored.Digest()
	if res.Digest != res.RestoredDigest || res.Tasks != res.RestoredTasks {
		return res, fmt.Errorf("restored state differs: %d tasks digest %s, want %d tasks digest %s",
			res.RestoredTasks, res.RestoredDigest, res.Tasks, res.Digest)
	}
	runtime.GC()

	done, took, err := dispatch(a, min(dispatchTarget, n))
	if err != nil {
		return res, err
	}
	res.Dispatched = done
	if took > 0 {
		res.DispatchPerSecond = float64(done) / took.Seconds()
	}
	logf("dispatch: %d assignments in %.2fs, %.0f/s", done, took.Seconds(), res.DispatchPerSecond)
	if c := a.f.Counts(); c.Running != done || c.Pending != n-done {
		return res, fmt.Errorf("after dispatch: %+v, want %d running", c, done)
	}
	runtime.KeepAlive(a.f)
	return res, nil
}
