package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// LeaderInfo names the current leader.
type LeaderInfo struct {
	ID   string // raft ID
	HTTP string // base URL of its HTTP API
	Self bool   // the leader is this master
}

// Master is what the HTTP server needs from a master node. Leader-only
// methods return api.ErrNotLeader on a follower; the server forwards those
// requests to the leader before calling them.
type Master interface {
	// ID returns this master's raft ID.
	ID() string
	// Leader returns the current established leader, if one is known.
	Leader() (LeaderInfo, bool)
	// AwaitLeader blocks until a leader is known or ctx ends.
	AwaitLeader(ctx context.Context) (LeaderInfo, error)
	// LeaderChanged returns a channel closed at the next change of the
	// leader this master knows (a new one, or none). Taken before Leader,
	// it tells a follower that the leader it forwarded a request to has
	// been replaced, so the request can be sent to the next one.
	LeaderChanged() <-chan struct{}

	// Submit commits new tasks (leader only). Specs are normalized. With
	// atomic (one request) a key reused with another spec refuses the
	// whole request (api.ErrIdempotencyConflict); without it (independent
	// submissions) each such spec gets a result with Conflict set.
	Submit(ctx context.Context, specs []api.TaskSpec, atomic bool) ([]api.SubmitResult, error)
	// Task returns a task; with linearizable set it first confirms this node
	// still leads (leader only).
	Task(ctx context.Context, id string, linearizable bool) (api.Task, error)
	// WaitTask is Task, held until the task is terminal or wait passes.
	WaitTask(ctx context.Context, id string, wait time.Duration, linearizable bool) (api.Task, error)
	// ListTasks returns a page of tasks in submission order.
	ListTasks(ctx context.Context, f api.ListFilter, linearizable bool) (api.TaskList, error)
	// Cancel cancels a task (leader only).
	Cancel(ctx context.Context, id string) (api.Task, error)
	// ReportResults commits finished attempts (leader only): one error (or
	// nil) per result.
	ReportResults(ctx context.Context, results []api.AttemptResult) ([]error, error)
	// Cluster describes the cluster.
	Cluster(ctx context.Context, linearizable bool) (api.ClusterStatus, error)
	// Scale describes scaling: policy, desired and actual counts, managed
	// workers.
	Scale(ctx context.Context, linearizable bool) (api.ScaleStatus, error)
	// SetScale commits a new scaling policy (leader only).
	SetScale(ctx context.Context, p api.ScalePolicy) (api.ScaleStatus, error)
	// Self describes this master alone.
	Self() api.NodeStatus
	// Digest summarizes this master's replica.
	Digest() api.Digest
	// Ready returns nil when a leader is known and this node has applied
	// the log up to the leader's commit index.
	Ready() error
}

// ServerOptions tunes a Server.
type ServerOptions struct {
	// LeaderWait is how long a request waits for a leader before it gets
	// 503. Zero means 5s.
	LeaderWait time.Duration
	Logger     hclog.Logger
	// Client forwards requests to the leader. Nil means a default client.
	Client *http.Client
	// Registry, when set, gets the HTTP metrics and is served at /metrics.
	Registry *prometheus.Registry
	// ForwardTimeout bounds how long a follower waits for the leader's
	// answer to a forwarded request (plus the ?wait= of a long poll) before
	// it gives up on that leader. A leader that is replaced is given up at
	// once, whatever this says. Zero means 15s; a master sets it from its
	// raft timers.
	ForwardTimeout time.Duration
}

// Server serves gantry's HTTP API v1 for one master.
type Server struct {
	m    Master
	opts ServerOptions
	log  hclog.Logger
	hc   *http.Client
	mux  *http.ServeMux

	coalesce *coalescer // a follower's single submissions, batched for the leader

	requests *prometheus.CounterVec   // nil without a registry
	latency  *prometheus.HistogramVec // nil without a registry
}

// NewServer returns the HTTP API of m.
func NewServer(m Master, opts ServerOptions) *Server {
	if opts.LeaderWait == 0 {
		opts.LeaderWait = 5 * time.Second
	}
	if opts.ForwardTimeout == 0 {
		opts.ForwardTimeout = 15 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		}}
	}
	s := &Server{m: m, opts: opts, log: opts.Logger.Named("http"), hc: opts.Client, mux: http.NewServeMux()}
	s.coalesce = newCoalescer(s)
	if opts.Registry != nil {
		s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gantry", Name: "http_requests_total", Help: "HTTP requests served, by route, method and status code.",
		}, []string{"route", "method", "code"})
		s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "gantry", Name: "http_request_duration_seconds", Help: "HTTP request latency, by route and method (long polls included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "method"})
		opts.Registry.MustRegister(s.requests, s.latency)
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	}
	s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(HeaderServedBy, s.m.ID())
	s.mux.ServeHTTP(w, r)
}

// handler is a route body: the request, its already read body, and whether
// reads must be linearizable.
type handler func(w http.ResponseWriter, r *http.Request, body []byte, linearizable bool)

// route describes one path: per method, the handler and how it is served.
type route struct {
	h        handler
	leader   bool  // served by the leader: forwarded by followers
	stale    bool  // ?stale=true serves it locally instead
	maxBytes int64 // body limit
	// viaLeader, when set, serves the request on a follower instead of a
	// plain forward (same contract as forward).
	viaLeader func(w http.ResponseWriter, r *http.Request, body []byte, li LeaderInfo, changed <-chan struct{}) error
	// resend reports whether a request that reached a leader which then
	// gave no answer may be sent again to the next leader: it must mean
	// the same thing twice (reads, keyed submissions, fenced results, a
	// policy). Nil means only GET requests may.
	resend func(r *http.Request, body []byte) bool
}

func (s *Server) routes() {
	s.handle("/healthz", map[string]route{"GET": {h: s.healthz}})
	s.handle("/readyz", map[string]route{"GET": {h: s.readyz}})
	s.handle("/v1/tasks", map[string]route{
		"POST": {h: s.submit, leader: true, maxBytes: api.MaxRequestBytes, viaLeader: s.submitViaLeader},
		"GET":  {h: s.list, leader: true, stale: true},
	})
	s.handle("/v1/tasks/batch", map[string]route{
		"POST": {h: s.submitBatch, leader: true, maxBytes: api.MaxBatchRequestBytes, resend: batchKeyed},
	})
	s.handle("/v1/tasks/{id}", map[string]route{
		"GET": {h: s.get, leader: true, stale: true},
	})
	s.handle("/v1/tasks/{id}/cancel", map[string]route{
		"POST": {h: s.cancel, leader: true, maxBytes: api.MaxRequestBytes},
	})
	s.handle("/v1/cluster", map[string]route{
		"GET": {h: s.cluster, leader: true, stale: true},
	})
	s.handle("/v1/results", map[string]route{
		"POST": {h: s.results, leader: true, maxBytes: api.MaxBatchRequestBytes, resend: always},
	})
	s.handle("/v1/scale", map[string]route{
		"GET": {h: s.scale, leader: true, stale: true},
		"PUT": {h: s.setScale, leader: true, maxBytes: api.MaxRequestBytes, resend: always},
	})
	s.handle("/v1/internal/self", map[string]route{"GET": {h: s.self}})
	s.handle(pathInternalSubmit, map[string]route{
		"POST": {h: s.submitInternal, leader: true, maxBytes: api.MaxBatchRequestBytes},
	})
	s.handle("/v1/digest", map[string]route{"GET": {h: s.digest}})
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.NotFoundf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
}

func (s *Server) handle(pattern string, methods map[string]route) {
	allowed := make([]string, 0, len(methods))
	for m := range methods {
		allowed = append(allowed, m)
	}
	sort.Strings(allowed)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if s.requests != nil {
			start := time.Now()
			sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
			w = sw
			defer func() {
				s.requests.WithLabelValues(pattern, r.Method, strconv.Itoa(sw.code)).Inc()
				s.latency.WithLabelValues(pattern, r.Method).Observe(time.Since(start).Seconds())
			}()
		}
		rt, ok := methods[r.Method]
		if !ok {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, &api.Error{Code: "method_not_allowed", Message: "method " + r.Method + " is not allowed on " + r.URL.Path})
			return
		}
		s.serve(w, r, rt)
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// serve reads the body within its limit, then runs the handler here or on
// the leader.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, rt route) {
	var body []byte
	if rt.maxBytes > 0 {
		var err error
		if body, err = readBody(w, r, rt.maxBytes); err != nil {
			writeError(w, err)
			return
		}
	}
	if !rt.leader {
		rt.h(w, r, body, false)
		return
	}
	q, err := query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	if rt.stale {
		if v := q.Get("stale"); v != "" {
			stale, err := strconv.ParseBool(v)
			if err != nil {
				writeError(w, api.BadRequest("stale", "%q is not true or false", v))
				return
			}
			if stale {
				rt.h(w, r, body, false)
				return
			}
		}
	}
	// Wait for a leader and send the request there. A request that was not
	// sent (the leader could not be dialed: it just died and the others
	// have not noticed yet) is sent again to the next leader. So is one
	// that reached a leader which was then replaced, or stopped answering,
	// when the route says it means the same thing twice: the client sees
	// one answer within about an election instead of a timeout.
	deadline := time.Now().Add(s.opts.LeaderWait)
	resends := 0
	for {
		changed := s.m.LeaderChanged()
		ctx, cancel := context.WithDeadline(r.Context(), deadline)
		li, err := s.m.AwaitLeader(ctx)
		cancel()
		if err != nil {
			if r.Context().Err() != nil {
				return // the client went away
			}
			msg := "no leader was elected within %s; retry"
			if resends > 0 {
				msg = "no leader was elected within %s after the leader changed: the outcome is unknown; retry with the same idempotency key"
			}
			writeError(w, api.Unavailablef(api.CodeNoLeader, msg, s.opts.LeaderWait))
			return
		}
		if li.Self {
			rt.h(w, r, body, true)
			return
		}
		if by := r.Header.Get(HeaderForwarded); by != "" {
			writeError(w, api.Unavailablef(api.CodeNotLeader, "forwarded by %s but this master is not the leader (the leader is %s); retry", by, li.ID))
			return
		}
		if rt.viaLeader != nil {
			err = rt.viaLeader(w, r, body, li, changed)
		} else {
			err = s.forward(w, r, body, li, changed, rt.resend)
		}
		if err == nil {
			return
		}
		if errors.Is(err, errResend) {
			// The leader took the request and was replaced or went
			// silent: wait (briefly) for raft to move on, then send it
			// to whoever leads now.
			resends++
			if resends > maxResends {
				writeError(w, api.Unavailablef(api.CodeUnavailable, "the leader changed %d times while the request was in flight (last %v); the outcome is unknown, retry with the same idempotency key", resends, err))
				return
			}
			s.log.Debug("sending the request to the next leader", "leader", li.ID, "path", r.URL.Path, "why", err)
			deadline = time.Now().Add(s.opts.LeaderWait)
			select {
			case <-r.Context().Done():
				return
			case <-changed:
			case <-time.After(leaderRetryDelay):
			}
			continue
		}
		if time.Now().After(deadline) {
			writeError(w, api.Unavailablef(api.CodeUnavailable, "the leader %s cannot be reached: %v; retry", li.ID, err))
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(leaderRetryDelay):
		}
	}
}

// leaderRetryDelay is the pause before a follower tries again to reach a
// leader it could not dial.
const leaderRetryDelay = 50 * time.Millisecond

// maxResends bounds how often one request is sent to a new leader after
// the one it was sent to was replaced or stopped answering.
const maxResends = 4

// errResend is returned (wrapped) by forward and submitViaLeader, having
// written nothing, when the request reached a leader that gave no answer
// and may be sent to the next one.
var errResend = errors.New("the leader gave no answer")

// Why a forwarded request was given up on, as context causes.
var (
	errLeaderChanged  = errors.New("the leader changed before it answered")
	errForwardTimeout = errors.New("the leader did not answer in time")
)

// always is a route's resend rule for requests that mean the same thing
// when sent twice.
func always(*http.Request, []byte) bool { return true }

// batchKeyed allows a batch to be sent again when every task has an
// idempotency key.
func batchKeyed(r *http.Request, body []byte) bool {
	specs, err := DecodeBatch(body)
	if err != nil {
		return true // it is refused for its body wherever it goes
	}
	for _, sp := range specs {
		if sp.IdempotencyKey == "" {
			return false
		}
	}
	return true
}

// nextLeader decides whether a request that reached a leader but got no
// answer (err) goes to the next leader: yes when the leader was replaced
// meanwhile; when the connection failed or timed out while raft still
// names the same leader, yes if raft replaces it within LeaderWait (a
// leader that died is noticed within an election), no otherwise.
func (s *Server) nextLeader(r *http.Request, changed <-chan struct{}, err error) bool {
	if errors.Is(err, errLeaderChanged) {
		return true
	}
	t := time.NewTimer(s.opts.LeaderWait)
	defer t.Stop()
	select {
	case <-changed:
		return true
	case <-t.C:
		return false
	case <-r.Context().Done():
		return false
	}
}

// forwardTimeout is how long a follower waits for the leader's answer to
// r: ForwardTimeout, plus the long poll asked for.
func (s *Server) forwardTimeout(r *http.Request) time.Duration {
	d := s.opts.ForwardTimeout
	if v := r.URL.Query().Get("wait"); v != "" {
		if w, err := api.ParseWait(v); err == nil {
			d += w
		}
	}
	return d
}

// doWatched sends req and waits for the headers of its answer, giving up
// with errLeaderChanged when changed closes first, or with
// errForwardTimeout after timeout (which also bounds reading the body).
// The returned cancel must be called once the body is read.
func (s *Server) doWatched(req *http.Request, changed <-chan struct{}, timeout time.Duration) (*http.Response, context.CancelFunc, error) {
	ctx, cancelCause := context.WithCancelCause(req.Context())
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, timeout, errForwardTimeout)
	cancel := func() { cancelTimeout(); cancelCause(nil) }
	// 0: waiting for the headers; 1: answered; 2: abandoned.
	var state atomic.Int32
	done := make(chan struct{})
	go func() {
		select {
		case <-changed:
			if state.CompareAndSwap(0, 2) {
				cancelCause(errLeaderChanged)
			}
		case <-done:
		}
	}()
	resp, err := s.hc.Do(req.WithContext(ctx))
	answered := state.CompareAndSwap(0, 1)
	close(done)
	if err == nil && answered {
		return resp, cancel, nil
	}
	if resp != nil {
		resp.Body.Close()
	}
	if cause := context.Cause(ctx); cause != nil && req.Context().Err() == nil && !isNotSent(err) {
		err = cause
	} else if err == nil {
		err = errLeaderChanged
	}
	cancel()
	return nil, nil, err
}

// forward sends the request to the leader and copies its answer back. It
// returns an error, having written nothing, when the request could not be
// sent at all (the leader refused the connection), or (errResend) when it
// reached a leader that was then replaced (nextLeader) and resend allows
// sending it again; the caller may then retry. Any answer of the leader,
// errors included, is copied back as it is.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, body []byte, li LeaderInfo, changed <-chan struct{}, resend func(*http.Request, []byte) bool) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, strings.TrimRight(li.HTTP, "/")+r.URL.RequestURI(), rd)
	if err != nil {
		writeError(w, api.Unavailablef(api.CodeUnavailable, "cannot forward to the leader %s at %q: %v", li.ID, li.HTTP, err))
		return nil
	}
	for _, h := range []string{"Content-Type", HeaderIdempotencyKey, "Accept"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	req.Header.Set(HeaderForwarded, s.m.ID())
	resp, cancel, err := s.doWatched(req, changed, s.forwardTimeout(r))
	if err != nil {
		if r.Context().Err() != nil {
			return nil
		}
		if isNotSent(err) {
			return err
		}
		if (resend == nil && r.Method == http.MethodGet || resend != nil && resend(r, body)) && s.nextLeader(r, changed, err) {
			return fmt.Errorf("%w: %s: %v", errResend, li.ID, err)
		}
		if r.Context().Err() != nil {
			return nil
		}
		msg := "forwarding to the leader %s failed: %v; retry"
		if r.Method != http.MethodGet {
			msg = "forwarding to the leader %s failed: %v; the outcome is unknown, retry with the same idempotency key"
		}
		writeError(w, api.Unavailablef(api.CodeUnavailable, msg, li.ID, err))
		return nil
	}
	defer cancel()
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", "Retry-After", "Location", HeaderServedBy} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request, _ []byte, _ bool) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "id": s.m.ID()})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request, _ []byte, _ bool) {
	if err := s.m.Ready(); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "id": s.m.ID()})
}

func (s *Server) self(w http.ResponseWriter, r *http.Request, _ []byte, _ bool) {
	writeJSON(w, http.StatusOK, s.m.Self())
}

func (s *Server) digest(w http.ResponseWriter, r *http.Request, _ []byte, _ bool) {
	writeJSON(w, http.StatusOK, s.m.Digest())
}

// DecodeSubmit decodes and normalizes the body of POST /v1/tasks; header is
// the Idempotency-Key header (may be empty).
func DecodeSubmit(body []byte, header string) (api.TaskSpec, error) {
	var spec api.TaskSpec
	if err := DecodeJSON(body, &spec); err != nil {
		return spec, err
	}
	if header != "" {
		if spec.IdempotencyKey != "" && spec.IdempotencyKey != header {
			return spec, api.BadRequest("idempotency_key", "differs from the Idempotency-Key header")
		}
		spec.IdempotencyKey = header
	}
	if spec.MaxAttempts == 0 && bytes.Contains(body, []byte(`"max_attempts"`)) {
		var probe struct {
			MaxAttempts *int `json:"max_attempts"`
		}
		if json.Unmarshal(body, &probe) == nil && probe.MaxAttempts != nil {
			return spec, zeroAttempts("")
		}
	}
	if err := spec.Normalize(""); err != nil {
		return spec, err
	}
	return spec, nil
}

// zeroAttempts is the 400 for an explicit "max_attempts": 0, which would
// otherwise be indistinguishable from an absent one (the default, 3).
func zeroAttempts(prefix string) error {
	field := "max_attempts"
	if prefix != "" {
		field = prefix + "." + field
	}
	return api.BadRequest(field, "0 is out of range [1, %d]; leave it out for the default (%d)", api.MaxMaxAttempts, api.DefaultMaxAttempts)
}

// explicitZeroAttempts returns the index of the first task of a batch body
// that sets "max_attempts": 0, or -1. Only bodies that mention the field
// and have a task with 0 (absent or explicit) are read again.
func explicitZeroAttempts(body []byte, specs []api.TaskSpec) int {
	if !bytes.Contains(body, []byte(`"max_attempts"`)) || !slices.ContainsFunc(specs, func(s api.TaskSpec) bool { return s.MaxAttempts == 0 }) {
		return -1
	}
	var probe struct {
		Tasks []struct {
			MaxAttempts *int `json:"max_attempts"`
		} `json:"tasks"`
	}
	if json.Unmarshal(body, &probe) != nil {
		return -1
	}
	for i, t := range probe.Tasks {
		if t.MaxAttempts != nil && *t.MaxAttempts == 0 {
			return i
		}
	}
	return -1
}

// DecodeBatch decodes and normalizes the body of POST /v1/tasks/batch.
// Errors inside a task name it: tasks[3].args.
func DecodeBatch(body []byte) ([]api.TaskSpec, error) {
	// Fast path: one strict pass into the specs. Only when it fails is the
	// body decoded task by task, to name the task at fault.
	var direct struct {
		Tasks []api.TaskSpec `json:"tasks"`
	}
	if err := DecodeJSON(body, &direct); err == nil && len(direct.Tasks) > 0 && len(direct.Tasks) <= api.MaxBatchTasks {
		if i := explicitZeroAttempts(body, direct.Tasks); i >= 0 {
			return nil, zeroAttempts("tasks[" + strconv.Itoa(i) + "]")
		}
		ok := true
		for i := range direct.Tasks {
			if direct.Tasks[i].Normalize("tasks["+strconv.Itoa(i)+"]") != nil {
				ok = false
				break
			}
		}
		if ok {
			return direct.Tasks, nil
		}
	}
	var req struct {
		Tasks []json.RawMessage `json:"tasks"`
	}
	if err := DecodeJSON(body, &req); err != nil {
		return nil, err
	}
	if len(req.Tasks) == 0 {
		return nil, api.BadRequest("tasks", "is required and must hold at least one task")
	}
	if len(req.Tasks) > api.MaxBatchTasks {
		return nil, api.BadRequest("tasks", "has %d tasks; the limit is %d", len(req.Tasks), api.MaxBatchTasks)
	}
	specs := make([]api.TaskSpec, len(req.Tasks))
	for i, raw := range req.Tasks {
		prefix := "tasks[" + strconv.Itoa(i) + "]"
		if err := DecodeJSON(raw, &specs[i]); err != nil {
			return nil, prefixField(err, prefix)
		}
		if specs[i].MaxAttempts == 0 && explicitZeroAttempts([]byte(`{"tasks":[`+string(raw)+`]}`), specs[i:i+1]) == 0 {
			return nil, zeroAttempts(prefix)
		}
		if err := specs[i].Normalize(prefix); err != nil {
			return nil, err
		}
	}
	return specs, nil
}

// prefixField puts prefix before the field an *api.Error names (or names
// prefix itself when the error names none).
func prefixField(err error, prefix string) error {
	var e *api.Error
	if !errors.As(err, &e) {
		return err
	}
	out := *e
	if out.Field == "" {
		out.Field = prefix
		out.Message = prefix + ": " + out.Message
	} else {
		out.Message = prefix + "." + out.Message
		out.Field = prefix + "." + out.Field
	}
	return &out
}

// query parses the request's query strictly: a malformed escape is a 400
// naming the parameter.
func query(r *http.Request) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		field := ""
		for _, part := range strings.Split(r.URL.RawQuery, "&") {
			k, v, _ := strings.Cut(part, "=")
			if _, kerr := url.QueryUnescape(k); kerr != nil {
				break
			}
			if _, verr := url.QueryUnescape(v); verr != nil {
				field, _ = url.QueryUnescape(k)
				break
			}
		}
		return nil, api.BadRequest(field, "malformed query string: %v", err)
	}
	return q, nil
}

func (s *Server) submit(w http.ResponseWriter, r *http.Request, body []byte, _ bool) {
	spec, err := DecodeSubmit(body, r.Header.Get(HeaderIdempotencyKey))
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := s.m.Submit(r.Context(), []api.TaskSpec{spec}, true)
	if err != nil {
		writeError(w, err)
		return
	}
	status := http.StatusCreated
	if res[0].Existing {
		status = http.StatusOK
	}
	w.Header().Set("Location", "/v1/tasks/"+res[0].Task.ID)
	writeJSON(w, status, res[0].Task)
}

func (s *Server) submitBatch(w http.ResponseWriter, r *http.Request, body []byte, _ bool) {
	specs, err := DecodeBatch(body)
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := s.m.Submit(r.Context(), specs, true)
	if err != nil {
		writeError(w, err)
		return
	}
	out := api.BatchResponse{Tasks: make([]api.Task, len(res))}
	for i, sr := range res {
		out.Tasks[i] = sr.Task
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, _ []byte, lin bool) {
	id := r.PathValue("id")
	if err := api.ValidTaskID(id); err != nil {
		writeError(w, err)
		return
	}
	q, err := query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	wait, err := api.ParseWait(q.Get("wait"))
	if err != nil {
		writeError(w, err)
		return
	}
	var t api.Task
	if wait > 0 {
		t, err = s.m.WaitTask(r.Context(), id, wait, lin)
	} else {
		t, err = s.m.Task(r.Context(), id, lin)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// ParseListQuery parses the query of GET /v1/tasks.
func ParseListQuery(q map[string][]string) (api.ListFilter, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	f := api.ListFilter{State: api.TaskState(get("state")), After: get("after"), Limit: api.DefaultListLimit}
	if f.State != "" && !f.State.Valid() {
		return f, api.BadRequest("state", "%q is not one of pending, running, succeeded, failed, canceled", f.State)
	}
	if f.After != "" {
		if err := api.ValidTaskID(f.After); err != nil {
			return f, api.BadRequest("after", "is not a task ID")
		}
	}
	if v := get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > api.MaxListLimit {
			return f, api.BadRequest("limit", "%q must be a number from 1 to %d", v, api.MaxListLimit)
		}
		f.Limit = n
	}
	return f, nil
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, _ []byte, lin bool) {
	q, err := query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	f, err := ParseListQuery(q)
	if err != nil {
		writeError(w, err)
		return
	}
	out, err := s.m.ListTasks(r.Context(), f, lin)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) cancel(w http.ResponseWriter, r *http.Request, _ []byte, _ bool) {
	id := r.PathValue("id")
	if err := api.ValidTaskID(id); err != nil {
		writeError(w, err)
		return
	}
	t, err := s.m.Cancel(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (s *Server) cluster(w http.ResponseWriter, r *http.Request, _ []byte, lin bool) {
	st, err := s.m.Cluster(r.Context(), lin)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) scale(w http.ResponseWriter, r *http.Request, _ []byte, lin bool) {
	st, err := s.m.Scale(r.Context(), lin)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// DecodeScalePolicy decodes and normalizes the body of PUT /v1/scale.
func DecodeScalePolicy(body []byte) (api.ScalePolicy, error) {
	var p api.ScalePolicy
	if err := DecodeJSON(body, &p); err != nil {
		return p, err
	}
	return p, p.Normalize()
}

func (s *Server) setScale(w http.ResponseWriter, r *http.Request, body []byte, _ bool) {
	p, err := DecodeScalePolicy(body)
	if err != nil {
		writeError(w, err)
		return
	}
	st, err := s.m.SetScale(r.Context(), p)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) results(w http.ResponseWriter, r *http.Request, body []byte, _ bool) {
	var req api.ResultsRequest
	if err := DecodeJSON(body, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Results) == 0 || len(req.Results) > api.MaxBatchTasks {
		writeError(w, api.BadRequest("results", "must hold 1 to %d results", api.MaxBatchTasks))
		return
	}
	for i := range req.Results {
		if err := req.Results[i].Validate(); err != nil {
			var e *api.Error
			if errors.As(err, &e) {
				e.Field = "results[" + strconv.Itoa(i) + "]." + e.Field
				e.Message = "results[" + strconv.Itoa(i) + "]." + e.Message
			}
			writeError(w, err)
			return
		}
	}
	errs, err := s.m.ReportResults(r.Context(), req.Results)
	if err != nil {
		writeError(w, err)
		return
	}
	out := api.ResultsResponse{Errors: make([]string, len(errs))}
	for i, e := range errs {
		if e != nil {
			var ae *api.Error
			if errors.As(e, &ae) {
				out.Errors[i] = ae.Code
			} else {
				out.Errors[i] = api.CodeInternal
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}
