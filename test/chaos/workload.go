package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
)

// Workload submits tasks and reads them back from concurrent clients, each
// request to a randomly chosen master, recording every request in a
// History. A submission whose outcome is unknown is retried with the same
// idempotency key until it is acknowledged or refused.
type Workload struct {
	Target         Target
	History        *History
	Clients        int           // concurrent clients
	RequestTimeout time.Duration // per request
	Pause          time.Duration // between one client's operations (0: 20ms)
	ReadRatio      float64       // chance of a read after each submission (0: 0.5)
	RunID          string        // prefix of every idempotency key
	Seed           uint64
	HTTPClient     *http.Client // optional

	submitting atomic.Bool // new submissions are started while set
	inflight   atomic.Int64
	errs       atomic.Int64

	mu    sync.Mutex
	acked []ackedTask // guarded by mu
}

type ackedTask struct{ key, id string }

// Counts are the workload's progress figures.
type Counts struct {
	Acked    int
	InFlight int64
	Errors   int64
}

// Counts returns the progress so far.
func (w *Workload) Counts() Counts {
	w.mu.Lock()
	n := len(w.acked)
	w.mu.Unlock()
	return Counts{Acked: n, InFlight: w.inflight.Load(), Errors: w.errs.Load()}
}

// Acked returns every acknowledged submission: key -> task ID.
func (w *Workload) Acked() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]string, len(w.acked))
	for _, a := range w.acked {
		out[a.key] = a.id
	}
	return out
}

// Run runs the clients until submit is canceled (no new submissions; those
// in flight keep retrying) and then until drain is canceled (retries stop).
func (w *Workload) Run(submit, drain context.Context) {
	if w.Clients < 1 {
		w.Clients = 1
	}
	if w.RequestTimeout == 0 {
		w.RequestTimeout = 2 * time.Second
	}
	if w.Pause == 0 {
		w.Pause = 20 * time.Millisecond
	}
	if w.ReadRatio == 0 {
		w.ReadRatio = 0.5
	}
	w.submitting.Store(true)
	go func() { <-submit.Done(); w.submitting.Store(false) }()
	var wg sync.WaitGroup
	for c := 0; c < w.Clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			w.client(c, drain)
		}(c)
	}
	wg.Wait()
}

// masters returns the IDs and URLs of the masters, sorted by ID.
func (w *Workload) masters() ([]string, map[string]*transport.Client) {
	urls := w.Target.Masters()
	ids := make([]string, 0, len(urls))
	clients := make(map[string]*transport.Client, len(urls))
	for id, u := range urls {
		ids = append(ids, id)
		var opts []transport.ClientOption
		if w.HTTPClient != nil {
			opts = append(opts, transport.WithHTTPClient(w.HTTPClient))
		}
		clients[id] = transport.NewClient([]string{u}, opts...)
	}
	sort.Strings(ids)
	return ids, clients
}

func (w *Workload) client(c int, drain context.Context) {
	rng := rand.New(rand.NewPCG(w.Seed, uint64(c)+1))
	ids, clients := w.masters()
	pick := func() string { return ids[rng.IntN(len(ids))] }
	for n := 0; w.submitting.Load() && drain.Err() == nil; n++ {
		key := fmt.Sprintf("%s-c%d-%d", w.RunID, c, n)
		w.submitOne(c, key, pick, clients, drain)
		if rng.Float64() < w.ReadRatio {
			if t, ok := w.randomAcked(rng); ok {
				w.readOne(c, t, pick(), clients)
			}
		}
		if rng.Float64() < reuseRatio {
			if t, ok := w.randomAcked(rng); ok {
				w.reuseOne(c, t, pick(), clients)
			}
		}
		sleep(drain, w.Pause)
	}
}

// submitOne submits one key until it is acknowledged or definitely refused,
// moving to another master after every failure.
func (w *Workload) submitOne(c int, key string, pick func() string, clients map[string]*transport.Client, drain context.Context) {
	w.inflight.Add(1)
	defer w.inflight.Add(-1)
	spec := w.Target.TaskSpec(key)
	spec.IdempotencyKey = key
	backoff := 50 * time.Millisecond
	for drain.Err() == nil {
		m := pick()
		start := time.Now()
		ctx, cancel := context.WithTimeout(drain, w.RequestTimeout)
		t, _, err := clients[m].Submit(ctx, spec)
		cancel()
		op := Op{Client: c, Kind: OpSubmit, Key: key, Master: m, Start: w.History.Since(start), End: w.History.Since(time.Now())}
		switch {
		case err == nil:
			op.Outcome, op.TaskID = OutcomeOK, t.ID
			w.History.Add(op)
			w.mu.Lock()
			w.acked = append(w.acked, ackedTask{key: key, id: t.ID})
			w.mu.Unlock()
			return
		case definite(err):
			op.Outcome, op.Error = OutcomeFail, err.Error()
			w.History.Add(op)
			w.errs.Add(1)
			return
		default:
			op.Outcome, op.Error = OutcomeUnknown, err.Error()
			w.History.Add(op)
			w.errs.Add(1)
		}
		sleep(drain, backoff)
		backoff = min(2*backoff, time.Second)
	}
}

// definite reports whether a submission error means it had no effect: a
// 4xx answer.
func definite(err error) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Status >= 400 && e.Status < 500
}

func (w *Workload) randomAcked(rng *rand.Rand) (ackedTask, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.acked) == 0 {
		return ackedTask{}, false
	}
	return w.acked[rng.IntN(len(w.acked))], true
}

// reuseRatio is the chance, after each submission, that a client sends an
// acknowledged key again with another task (a user's mistake the cluster
// must refuse).
const reuseRatio = 0.05

// reuseOne submits t's key with a task that differs from its own by one
// argument, once.
func (w *Workload) reuseOne(c int, t ackedTask, m string, clients map[string]*transport.Client) {
	spec := w.Target.TaskSpec(t.key)
	spec.IdempotencyKey = t.key
	spec.Args = append(append([]string(nil), spec.Args...), "reused")
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), w.RequestTimeout)
	got, _, err := clients[m].Submit(ctx, spec)
	cancel()
	op := Op{Client: c, Kind: OpReuse, Key: t.key, TaskID: got.ID, Master: m, Start: w.History.Since(start), End: w.History.Since(time.Now())}
	var e *api.Error
	switch {
	case err == nil:
		op.Outcome = OutcomeOK
	case errors.As(err, &e) && e.Code == api.CodeIdempotencyConflict:
		op.Outcome, op.Error = OutcomeFail, e.Code
	default:
		op.Outcome, op.Error = OutcomeUnknown, err.Error()
	}
	w.History.Add(op)
}

// readOne reads a task through a master, linearizably (through the leader).
func (w *Workload) readOne(c int, t ackedTask, m string, clients map[string]*transport.Client) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), w.RequestTimeout)
	task, err := clients[m].Task(ctx, t.id, transport.ReadOptions{})
	cancel()
	op := Op{Client: c, Kind: OpRead, Key: t.key, TaskID: t.id, Master: m, Start: w.History.Since(start), End: w.History.Since(time.Now())}
	switch {
	case err == nil:
		op.Outcome, op.State = OutcomeOK, string(task.State)
	case errors.Is(err, api.ErrNotFound):
		op.Outcome, op.State = OutcomeOK, "notfound"
	default:
		op.Outcome, op.Error = OutcomeUnknown, err.Error()
	}
	w.History.Add(op)
}

// sleep pauses for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
