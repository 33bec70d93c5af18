package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/membership"
	"github.com/gantryhq/gantry/transport"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Config configures a worker.
type Config struct {
	ID            string       // logical worker ID, stable across restarts
	HTTPBind      string       // host:port for the worker API
	HTTPListener  net.Listener // optional: an already bound listener (tests)
	HTTPAdvertise string       // base URL the leader pushes to; default from the listener

	GossipBind      string
	GossipAdvertise string
	Join            []string // gossip seeds (masters or other workers)
	Cluster         string   // gossip label
	GossipKey       []byte

	Slots        int           // attempts run at once; must be at least 1
	Exec         ExecConfig    // how exec tasks run
	DrainTimeout time.Duration // on Shutdown, how long running attempts may finish before they are handed back; default 30s

	GossipProbeInterval    time.Duration
	GossipProbeTimeout     time.Duration
	GossipSuspicionMult    int
	GossipSuspicionMaxMult int // zero means memberlist's 6

	Version string
	Logger  hclog.Logger

	// HTTPClient reports results to the masters; nil means a default one.
	HTTPClient *http.Client
	// WrapGossip wraps the gossip transport (fault injection in tests).
	WrapGossip func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

// Worker runs attempts pushed by the leader and reports their results to any
// master, retrying until one accepts or refuses them for good.
type Worker struct {
	cfg    Config
	log    hclog.Logger
	gossip *membership.Membership
	client *transport.Client
	srv    *http.Server
	ln     net.Listener

	mu       sync.Mutex
	attempts map[api.AttemptRef]*attempt // guarded by mu
	draining bool                        // guarded by mu
	killed   bool                        // guarded by mu

	reg      *prometheus.Registry
	outcomes *prometheus.CounterVec // attempts ended, by outcome
	refused  prometheus.Counter     // results refused by the masters

	report chan struct{} // capacity 1: results are waiting
	stop   chan struct{} // closed when the reporter must stop
	runWG  sync.WaitGroup
	bgWG   sync.WaitGroup
	once   sync.Once
}

// attempt is one attempt the worker holds.
type attempt struct {
	a       api.Assignment
	started time.Time
	cancel  context.CancelFunc
	release bool               // guarded by Worker.mu: cancellation hands the attempt back
	result  *api.AttemptResult // guarded by Worker.mu: set when it ended; then it is "reporting"
}

var _ transport.Agent = (*Worker)(nil)

// New returns a worker; it starts nothing.
func New(cfg Config) (*Worker, error) {
	if cfg.ID == "" {
		return nil, errors.New("worker id is required")
	}
	if cfg.Slots < 1 {
		return nil, errors.New("slots must be at least 1")
	}
	if cfg.HTTPBind == "" && cfg.HTTPListener == nil {
		return nil, errors.New("worker http address is required")
	}
	if cfg.GossipBind == "" {
		return nil, errors.New("worker gossip address is required")
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.Cluster == "" {
		cfg.Cluster = "gantry"
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	cfg.Exec.WorkerID = cfg.ID
	w := &Worker{
		cfg:      cfg,
		log:      cfg.Logger,
		attempts: make(map[api.AttemptRef]*attempt),
		report:   make(chan struct{}, 1),
		stop:     make(chan struct{}),
		client:   transport.NewClient(nil, clientOpts(cfg.HTTPClient)...),
		reg:      prometheus.NewRegistry(),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gantry", Subsystem: "worker", Name: "attempts_total", Help: "Attempts this worker finished, by outcome.",
		}, []string{"outcome"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "gantry", Subsystem: "worker", Name: "results_refused_total", Help: "Results the masters refused for good (stale attempts).",
		}),
	}
	w.reg.MustRegister(w.outcomes, w.refused, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "gantry", Subsystem: "worker", Name: "running_attempts", Help: "Attempts running now.",
	}, func() float64 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return float64(w.runningLocked())
	}))
	w.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "gantry", Subsystem: "worker", Name: "slots", Help: "Attempts this worker runs at once.",
	}, func() float64 { return float64(cfg.Slots) }))
	return w, nil
}

func clientOpts(hc *http.Client) []transport.ClientOption {
	if hc == nil {
		return nil
	}
	return []transport.ClientOption{transport.WithHTTPClient(hc)}
}

// ID implements transport.Agent.
func (w *Worker) ID() string { return w.cfg.ID }

// HTTPAddr returns the advertised base URL.
func (w *Worker) HTTPAddr() string { return w.cfg.HTTPAdvertise }

// Gossip returns the worker's gossip membership.
func (w *Worker) Gossip() *membership.Membership { return w.gossip }

// Start serves the worker API, joins the gossip pool and starts reporting.
func (w *Worker) Start() error {
	ln := w.cfg.HTTPListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", w.cfg.HTTPBind); err != nil {
			return err
		}
	}
	w.ln = ln
	if w.cfg.HTTPAdvertise == "" {
		host, port, _ := net.SplitHostPort(ln.Addr().String())
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		w.cfg.HTTPAdvertise = "http://" + net.JoinHostPort(host, port)
	}
	w.cfg.HTTPAdvertise = transport.NormalizeURL(w.cfg.HTTPAdvertise)
	w.srv = &http.Server{Handler: transport.NewWorkerHandler(w, w.log, w.reg), ReadHeaderTimeout: 10 * time.Second}
	w.gossip = membership.New(membership.Config{
		BindAddr:         w.cfg.GossipBind,
		AdvertiseAddr:    w.cfg.GossipAdvertise,
		Seeds:            w.cfg.Join,
		Label:            w.cfg.Cluster,
		SecretKey:        w.cfg.GossipKey,
		Logger:           w.log,
		ProbeInterval:    w.cfg.GossipProbeInterval,
		ProbeTimeout:     w.cfg.GossipProbeTimeout,
		SuspicionMult:    w.cfg.GossipSuspicionMult,
		SuspicionMaxMult: w.cfg.GossipSuspicionMaxMult,
		WrapTransport:    w.cfg.WrapGossip,
		Meta: membership.Meta{
			Role:    membership.RoleWorker,
			ID:      w.cfg.ID,
			HTTP:    w.cfg.HTTPAdvertise,
			Slots:   w.cfg.Slots,
			Version: w.cfg.Version,
			Cluster: w.cfg.Cluster,
		},
	})
	w.bgWG.Add(1)
	go func() {
		defer w.bgWG.Done()
		if err := w.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error("worker http server stopped", "error", err)
		}
	}()
	if err := w.gossip.Start(); err != nil {
		_ = w.srv.Close()
		return err
	}
	w.bgWG.Add(1)
	go w.reporter()
	w.log.Info("worker started", "id", w.cfg.ID, "http", w.cfg.HTTPAdvertise, "gossip", w.gossip.LocalAddr(), "slots", w.cfg.Slots)
	return nil
}

// Accept implements transport.Agent.
func (w *Worker) Accept(as []api.Assignment) ([]bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.draining || w.killed {
		return nil, api.Unavailablef(api.CodeUnavailable, "worker %s is draining", w.cfg.ID)
	}
	ok := make([]bool, len(as))
	for i, a := range as {
		ref := api.AttemptRef{TaskID: a.TaskID, Attempt: a.Attempt}
		if _, dup := w.attempts[ref]; dup {
			ok[i] = true // a repeated push of the same attempt
			continue
		}
		// An older attempt of the same task is stale now: stop it.
		for r, old := range w.attempts {
			if r.TaskID == a.TaskID && old.result == nil {
				old.cancel()
			}
		}
		if w.runningLocked() >= w.cfg.Slots {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		at := &attempt{a: a, started: time.Now(), cancel: cancel}
		w.attempts[ref] = at
		w.runWG.Add(1)
		go w.run(ctx, ref, at)
		ok[i] = true
	}
	return ok, nil
}

func (w *Worker) runningLocked() int {
	n := 0
	for _, a := range w.attempts {
		if a.result == nil {
			n++
		}
	}
	return n
}

// run executes one attempt and queues its result.
func (w *Worker) run(ctx context.Context, ref api.AttemptRef, at *attempt) {
	defer w.runWG.Done()
	defer at.cancel()
	w.log.Debug("attempt started", "task", ref.TaskID, "attempt", ref.Attempt)
	res := RunExec(ctx, at.a, w.cfg.Exec)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.killed {
		return
	}
	outcome := res.Outcome
	if outcome == api.OutcomeCanceled && at.release {
		outcome = api.OutcomeReleased
	}
	at.result = &api.AttemptResult{
		TaskID: ref.TaskID, Attempt: ref.Attempt, Worker: w.cfg.ID, Outcome: outcome,
		ExitCode: res.ExitCode, Output: res.Output, Truncated: res.Truncated, Error: truncateUTF8(res.Error, api.MaxErrorLen),
		StartedAt: res.StartedAt.UTC(), FinishedAt: res.FinishedAt.UTC(),
	}
	w.outcomes.WithLabelValues(string(outcome)).Inc()
	w.log.Debug("attempt ended", "task", ref.TaskID, "attempt", ref.Attempt, "outcome", outcome, "exit_code", res.ExitCode)
	select {
	case w.report <- struct{}{}:
	default:
	}
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// Attempts implements transport.Agent.
func (w *Worker) Attempts() api.WorkerAttempts {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := api.WorkerAttempts{Worker: w.cfg.ID, Slots: w.cfg.Slots, Draining: w.draining, Attempts: []api.RunningAttempt{}}
	for ref, a := range w.attempts {
		st := "running"
		if a.result != nil {
			st = "reporting"
		}
		out.Attempts = append(out.Attempts, api.RunningAttempt{TaskID: ref.TaskID, Attempt: ref.Attempt, State: st, StartedAt: a.started.UTC()})
	}
	sort.Slice(out.Attempts, func(i, j int) bool {
		if out.Attempts[i].TaskID != out.Attempts[j].TaskID {
			return out.Attempts[i].TaskID < out.Attempts[j].TaskID
		}
		return out.Attempts[i].Attempt < out.Attempts[j].Attempt
	})
	return out
}

// CancelAttempt implements transport.Agent.
func (w *Worker) CancelAttempt(ref api.AttemptRef) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	a, ok := w.attempts[ref]
	if !ok {
		return false
	}
	if a.result == nil {
		w.log.Info("stopping attempt on the leader's request", "task", ref.TaskID, "attempt", ref.Attempt)
		a.cancel()
	}
	return true
}

// masterURLs returns the HTTP URLs of live masters from gossip.
func (w *Worker) masterURLs() []string {
	var out []string
	for _, mb := range w.gossip.Members() {
		if mb.Role == membership.RoleMaster && mb.HTTP != "" && (mb.State == membership.StateAlive || mb.State == membership.StateSuspect) {
			out = append(out, mb.HTTP)
		}
	}
	return out
}

// reporter sends finished attempts' results until a master accepts or
// refuses each for good. Transient failures are retried with backoff.
func (w *Worker) reporter() {
	defer w.bgWG.Done()
	backoff := 50 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		batch := w.pendingResults(256)
		if len(batch) == 0 {
			select {
			case <-w.stop:
				return
			case <-w.report:
				continue
			}
		}
		w.client.SetAddrs(w.masterURLs())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		codes, err := w.client.ReportResults(ctx, batch)
		cancel()
		if err != nil {
			if api.Retryable(err) || !isFinal(err) {
				w.log.Debug("reporting results failed; will retry", "count", len(batch), "error", err, "backoff", backoff)
				timer.Reset(backoff)
				select {
				case <-w.stop:
					return
				case <-timer.C:
				}
				if backoff < 2*time.Second {
					backoff *= 2
				}
				continue
			}
			// The whole request was refused as malformed: nothing to retry.
			w.log.Error("results refused", "count", len(batch), "error", err)
			codes = make([]string, len(batch))
			for i := range codes {
				codes[i] = api.CodeBadRequest
			}
		}
		backoff = 50 * time.Millisecond
		w.mu.Lock()
		for i, r := range batch {
			ref := api.AttemptRef{TaskID: r.TaskID, Attempt: r.Attempt}
			if codes[i] != "" {
				w.refused.Inc()
				w.log.Info("result refused", "task", r.TaskID, "attempt", r.Attempt, "reason", codes[i])
			}
			delete(w.attempts, ref)
		}
		w.mu.Unlock()
	}
}

// isFinal reports whether a whole-request error will not go away on retry.
func isFinal(err error) bool {
	var e *api.Error
	return errors.As(err, &e) && (e.Status == http.StatusBadRequest || e.Status == http.StatusRequestEntityTooLarge)
}

// pendingResults returns up to n results waiting to be reported.
func (w *Worker) pendingResults(n int) []api.AttemptResult {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []api.AttemptResult
	for _, a := range w.attempts {
		if a.result != nil {
			out = append(out, *a.result)
			if len(out) == n {
				break
			}
		}
	}
	return out
}

// Shutdown drains the worker: it stops taking attempts (and says so in
// gossip), lets running attempts finish for up to DrainTimeout, hands back
// the rest, waits for every result to be delivered (bounded by ctx), then
// leaves the gossip pool.
func (w *Worker) Shutdown(ctx context.Context) error {
	var err error
	w.once.Do(func() {
		w.mu.Lock()
		w.draining = true
		w.mu.Unlock()
		if uerr := w.gossip.UpdateMeta(func(m *membership.Meta) { m.Draining = true }); uerr != nil {
			w.log.Warn("could not gossip draining", "error", uerr)
		}
		w.log.Info("draining", "timeout", w.cfg.DrainTimeout)
		done := make(chan struct{})
		go func() { w.runWG.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(w.cfg.DrainTimeout):
			w.mu.Lock()
			n := 0
			for _, a := range w.attempts {
				if a.result == nil {
					a.release = true
					a.cancel()
					n++
				}
			}
			w.mu.Unlock()
			w.log.Warn("drain timeout: handing back running attempts", "count", n)
			<-done
		case <-ctx.Done():
		}
		// Wait for the reporter to deliver every result.
		t := time.NewTicker(50 * time.Millisecond)
		for len(w.pendingResults(1)) > 0 {
			select {
			case <-ctx.Done():
				w.log.Warn("shutdown deadline: some results were not delivered; the leader will requeue them")
				err = ctx.Err()
			case <-t.C:
				continue
			}
			break
		}
		t.Stop()
		if lerr := w.gossip.Leave(2 * time.Second); lerr != nil {
			w.log.Warn("gossip leave failed", "error", lerr)
		}
		w.halt(false)
		w.log.Info("worker stopped")
	})
	return err
}

// Kill stops the worker as a crash would: running processes are killed,
// their results dropped, and gossip stops without a leave.
func (w *Worker) Kill() {
	w.once.Do(func() {
		w.halt(true)
		w.log.Info("worker killed")
	})
}

func (w *Worker) halt(kill bool) {
	w.mu.Lock()
	if kill {
		w.killed = true
	}
	w.draining = true
	for _, a := range w.attempts {
		a.cancel()
	}
	w.mu.Unlock()
	_ = w.srv.Close()
	_ = w.gossip.Shutdown()
	close(w.stop)
	w.runWG.Wait()
	w.bgWG.Wait()
}
