// Package chaos is gantry's fault-injection harness: a workload of
// concurrent clients that records a history of every request, a seeded
// schedule of faults (nemeses) against a cluster, and a checker that
// verifies the correctness contract of the design (no acknowledged task
// lost, one task per idempotency key, terminal exactly once with a result
// from the current attempt, masters converged, reads never going back in
// time) and reports figures (executions per task from an independent
// ledger, stale results, unavailability per fault).
//
// The same harness runs against the docker compose cluster (cmd/gantry-chaos,
// `make chaos`) and against an in-process cluster whose network is a
// fault-injecting fabric (`make test`). A Target adapts a cluster; a Nemesis
// injects and heals one kind of fault.
package chaos

import (
	"bufio"
	"encoding/json"
	"os"
	"sync"
	"time"
)

// Op kinds.
const (
	OpSubmit = "submit"
	OpRead   = "read"
	// OpReuse submits an acknowledged key again with another task: it
	// must be refused (422 idempotency_key_conflict), never answered with
	// a task.
	OpReuse = "reuse"
)

// Op outcomes.
const (
	OutcomeOK      = "ok"      // the request succeeded
	OutcomeFail    = "fail"    // a definite failure: the request had no effect
	OutcomeUnknown = "unknown" // timeout, connection reset, 503: it may or may not have had an effect
)

// Op is one request in the history.
type Op struct {
	Client  int    `json:"client"`
	Kind    string `json:"kind"`
	Key     string `json:"key"`               // idempotency key (submit) or the key of the task read
	TaskID  string `json:"task_id,omitempty"` // returned by a submit, or the task read
	Master  string `json:"master"`
	Start   int64  `json:"start"` // nanoseconds since the run began
	End     int64  `json:"end"`
	Outcome string `json:"outcome"`
	State   string `json:"state,omitempty"` // read: the task state seen, or "notfound"
	Error   string `json:"error,omitempty"`
}

// History records ops from many goroutines.
type History struct {
	start time.Time

	mu  sync.Mutex
	ops []Op // guarded by mu
}

// NewHistory starts a history at now.
func NewHistory() *History { return &History{start: time.Now()} }

// Start is when the run began.
func (h *History) Start() time.Time { return h.start }

// Since returns t as an offset from the start of the run.
func (h *History) Since(t time.Time) int64 { return t.Sub(h.start).Nanoseconds() }

// At returns the time of an offset.
func (h *History) At(off int64) time.Time { return h.start.Add(time.Duration(off)) }

// Add records an op.
func (h *History) Add(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Ops returns a copy of every op recorded so far.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// WriteFile writes the history as JSON lines.
func (h *History) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, op := range h.Ops() {
		if err := enc.Encode(op); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadHistory reads a history written by WriteFile (to check it again).
func ReadHistory(path string) ([]Op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ops []Op
	dec := json.NewDecoder(bufio.NewReader(f))
	for dec.More() {
		var op Op
		if err := dec.Decode(&op); err != nil {
			return nil, err
		}
		ops = append(ops, op)
	}
	return ops, nil
}
