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
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

// fakeMaster implements Master for the server tests. Its leader can be
// changed while requests wait in AwaitLeader; every call is recorded.
type fakeMaster struct {
	id string

	mu        sync.Mutex
	leader    LeaderInfo
	hasLeader bool
	changed   chan struct{} // closed and replaced whenever the leader changes
	awaiting  chan struct{} // receives (without blocking) when AwaitLeader starts waiting
	calls     []fakeCall
	specs     [][]api.TaskSpec
	keys      map[string]string // idempotency key -> task ID
	keySpecs  map[string]api.TaskSpec
	seq       int
	errs      map[string]error // method name -> error it returns
	policy    api.ScalePolicy
	readyErr  error
	gate      chan struct{} // when set, Submit waits until it is closed
}

type fakeCall struct {
	method string
	lin    bool
	arg    any
}

var _ Master = (*fakeMaster)(nil)

func newFakeMaster(id string) *fakeMaster {
	return &fakeMaster{
		id: id, changed: make(chan struct{}), awaiting: make(chan struct{}, 1),
		keys: map[string]string{}, keySpecs: map[string]api.TaskSpec{}, errs: map[string]error{},
	}
}

// setLeader makes li the leader (ok false: no leader known).
func (f *fakeMaster) setLeader(li LeaderInfo, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leader, f.hasLeader = li, ok
	close(f.changed)
	f.changed = make(chan struct{})
}

// lead makes this master the leader.
func (f *fakeMaster) lead() {
	f.setLeader(LeaderInfo{ID: f.id, HTTP: "http://self.invalid", Self: true}, true)
}

// follow makes the master at url (with raft ID id) the leader.
func (f *fakeMaster) follow(id, url string) { f.setLeader(LeaderInfo{ID: id, HTTP: url}, true) }

func (f *fakeMaster) setErr(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = err
}

func (f *fakeMaster) record(method string, lin bool, arg any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{method: method, lin: lin, arg: arg})
	return f.errs[method]
}

// callsTo returns the recorded calls of one method.
func (f *fakeMaster) callsTo(method string) []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeCall
	for _, c := range f.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

// businessCalls returns every recorded call except leader lookups.
func (f *fakeMaster) businessCalls() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeCall
	for _, c := range f.calls {
		if c.method != "AwaitLeader" {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeMaster) ID() string { return f.id }

func (f *fakeMaster) Leader() (LeaderInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leader, f.hasLeader
}

func (f *fakeMaster) LeaderChanged() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeMaster) AwaitLeader(ctx context.Context) (LeaderInfo, error) {
	_ = f.record("AwaitLeader", false, nil)
	for {
		f.mu.Lock()
		li, ok, ch := f.leader, f.hasLeader, f.changed
		f.mu.Unlock()
		if ok {
			return li, nil
		}
		select {
		case f.awaiting <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return LeaderInfo{}, api.Unavailablef(api.CodeNoLeader, "no leader known")
		case <-ch:
		}
	}
}

func (f *fakeMaster) Submit(ctx context.Context, specs []api.TaskSpec, atomic bool) ([]api.SubmitResult, error) {
	if err := f.record("Submit", true, specs); err != nil {
		return nil, err
	}
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, specs)
	out := make([]api.SubmitResult, len(specs))
	for i, s := range specs {
		if id, ok := f.keys[s.IdempotencyKey]; ok && s.IdempotencyKey != "" {
			known := f.keySpecs[s.IdempotencyKey]
			if !known.Equal(&s) {
				if atomic {
					return nil, api.IdempotencyConflict("idempotency_key", s.IdempotencyKey, id)
				}
				out[i] = api.SubmitResult{Task: api.Task{ID: id, Args: known.Args, State: api.StatePending}, Existing: true, Conflict: true}
				continue
			}
			out[i] = api.SubmitResult{Task: api.Task{ID: id, Args: s.Args, State: api.StatePending}, Existing: true}
			continue
		}
		f.seq++
		id := api.FormatTaskID(uint64(f.seq))
		if s.IdempotencyKey != "" {
			f.keys[s.IdempotencyKey] = id
			f.keySpecs[s.IdempotencyKey] = s
		}
		out[i] = api.SubmitResult{Task: api.Task{ID: id, Args: s.Args, State: api.StatePending, IdempotencyKey: s.IdempotencyKey}}
	}
	return out, nil
}

func (f *fakeMaster) Task(ctx context.Context, id string, lin bool) (api.Task, error) {
	if err := f.record("Task", lin, id); err != nil {
		return api.Task{}, err
	}
	return api.Task{ID: id, State: api.StateSucceeded, Result: &api.Result{Output: "from " + f.id}}, nil
}

func (f *fakeMaster) WaitTask(ctx context.Context, id string, wait time.Duration, lin bool) (api.Task, error) {
	if err := f.record("WaitTask", lin, wait); err != nil {
		return api.Task{}, err
	}
	return api.Task{ID: id, State: api.StateSucceeded, Result: &api.Result{Output: "from " + f.id}}, nil
}

func (f *fakeMaster) ListTasks(ctx context.Context, lf api.ListFilter, lin bool) (api.TaskList, error) {
	if err := f.record("ListTasks", lin, lf); err != nil {
		return api.TaskList{}, err
	}
	return api.TaskList{Tasks: []api.Task{{ID: api.FormatTaskID(1), State: api.StatePending}}}, nil
}

func (f *fakeMaster) Cancel(ctx context.Context, id string) (api.Task, error) {
	if err := f.record("Cancel", true, id); err != nil {
		return api.Task{}, err
	}
	return api.Task{ID: id, State: api.StateCanceled}, nil
}

func (f *fakeMaster) ReportResults(ctx context.Context, rs []api.AttemptResult) ([]error, error) {
	if err := f.record("ReportResults", true, rs); err != nil {
		return nil, err
	}
	out := make([]error, len(rs))
	for i, r := range rs {
		if r.Attempt > 1 {
			out[i] = api.Stalef("attempt %d is stale", r.Attempt)
		}
	}
	return out, nil
}

func (f *fakeMaster) Cluster(ctx context.Context, lin bool) (api.ClusterStatus, error) {
	if err := f.record("Cluster", lin, nil); err != nil {
		return api.ClusterStatus{}, err
	}
	li, _ := f.Leader()
	return api.ClusterStatus{Leader: li.ID, Masters: []api.MasterStatus{{ID: f.id}}}, nil
}

func (f *fakeMaster) Self() api.NodeStatus { return api.NodeStatus{ID: f.id, Role: "follower"} }

func (f *fakeMaster) Digest() api.Digest { return api.Digest{ID: f.id, Digest: "fake"} }

func (f *fakeMaster) Scale(ctx context.Context, lin bool) (api.ScaleStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return api.ScaleStatus{Policy: f.policy, Runtime: "fake"}, nil
}

func (f *fakeMaster) SetScale(ctx context.Context, p api.ScalePolicy) (api.ScaleStatus, error) {
	f.mu.Lock()
	f.policy = p
	f.mu.Unlock()
	return f.Scale(ctx, false)
}

func (f *fakeMaster) Ready() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readyErr
}

// recorded is one request as a server received it.
type recorded struct {
	Method string
	URI    string
	Header http.Header
	Body   []byte
}

// node is a fake master served by httptest, recording every request.
type node struct {
	f      *fakeMaster
	srv    *httptest.Server
	server *Server

	mu   sync.Mutex
	reqs []recorded
}

func (n *node) URL() string { return n.srv.URL }

func (n *node) requests() []recorded {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]recorded(nil), n.reqs...)
}

// newNode serves a fake master with the given ID.
func newNode(t *testing.T, id string, opts ServerOptions) *node {
	t.Helper()
	n := &node{f: newFakeMaster(id)}
	if opts.LeaderWait == 0 {
		opts.LeaderWait = 200 * time.Millisecond
	}
	s := NewServer(n.f, opts)
	n.server = s
	n.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body []byte
		if r.Body != nil {
			body, _ = io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		n.mu.Lock()
		n.reqs = append(n.reqs, recorded{Method: r.Method, URI: r.URL.RequestURI(), Header: r.Header.Clone(), Body: body})
		n.mu.Unlock()
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(n.srv.Close)
	return n
}

// closedURL returns the URL of a loopback port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// response is what a raw request got back.
type response struct {
	Status int
	Header http.Header
	Body   []byte
	Err    api.Error // the decoded error body, for non-2xx
}

func doRaw(t *testing.T, method, url string, body []byte, header map[string]string) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	out := response{Status: resp.StatusCode, Header: resp.Header, Body: b}
	if resp.StatusCode >= 300 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: error with Content-Type %q, want application/json; body %s", method, url, ct, b)
		}
		if err := json.Unmarshal(b, &out.Err); err != nil {
			t.Errorf("%s %s: error body is not JSON: %v: %s", method, url, err, b)
		}
		if out.Err.Code == "" || out.Err.Message == "" {
			t.Errorf("%s %s: error body lacks code or message: %s", method, url, b)
		}
	}
	return out
}

func wantError(t *testing.T, what string, r response, status int, code, field string) {
	t.Helper()
	if r.Status != status || r.Err.Code != code || r.Err.Field != field {
		t.Errorf("%s: got %d code %q field %q, want %d code %q field %q; body %s", what, r.Status, r.Err.Code, r.Err.Field, status, code, field, r.Body)
	}
	if ra := r.Header.Get("Retry-After"); (status == http.StatusServiceUnavailable) != (ra != "") {
		t.Errorf("%s: status %d with Retry-After %q", what, r.Status, ra)
	}
}

func TestServer_MethodNotAllowed(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{})
	// No leader is known: a wrong method must be refused without waiting.
	for _, tt := range []struct {
		method, path string
		allow        []string
	}{
		{"DELETE", "/v1/tasks", []string{"GET", "POST"}},
		{"PUT", "/v1/tasks", []string{"GET", "POST"}},
		{"PATCH", "/v1/tasks/0000000000000001", []string{"GET"}},
		{"POST", "/v1/tasks/0000000000000001", []string{"GET"}},
		{"GET", "/v1/tasks/batch", []string{"POST"}},
		{"GET", "/v1/tasks/0000000000000001/cancel", []string{"POST"}},
		{"DELETE", "/v1/cluster", []string{"GET"}},
		{"GET", "/v1/results", []string{"POST"}},
		{"POST", "/healthz", []string{"GET"}},
		{"POST", "/readyz", []string{"GET"}},
		{"POST", "/v1/internal/self", []string{"GET"}},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := doRaw(t, tt.method, n.URL()+tt.path, nil, nil)
			if r.Status != http.StatusMethodNotAllowed || r.Err.Code != "method_not_allowed" {
				t.Fatalf("got %d %s, want 405 method_not_allowed", r.Status, r.Body)
			}
			var allow []string
			for _, m := range strings.Split(r.Header.Get("Allow"), ",") {
				allow = append(allow, strings.TrimSpace(m))
			}
			slices.Sort(allow)
			if !slices.Equal(allow, tt.allow) {
				t.Errorf("Allow %q, want %v", r.Header.Get("Allow"), tt.allow)
			}
			if r.Header.Get(HeaderServedBy) != "m1" {
				t.Errorf("%s = %q, want m1", HeaderServedBy, r.Header.Get(HeaderServedBy))
			}
		})
	}
	if c := n.f.businessCalls(); len(c) != 0 {
		t.Errorf("the master was called for refused methods: %+v", c)
	}
}

func TestServer_UnknownPathIs404JSON(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{})
	n.f.lead()
	for _, p := range []string{"/", "/nope", "/v1", "/v1/", "/v1/taskss", "/v1/tasks/0000000000000001/cancel/x", "/v1/tasks/a/b", "/v2/tasks"} {
		for _, m := range []string{"GET", "POST"} {
			r := doRaw(t, m, n.URL()+p, nil, nil)
			wantError(t, m+" "+p, r, http.StatusNotFound, api.CodeNotFound, "")
		}
	}
}

func TestServer_HealthReadySelf(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{})
	// /healthz, /readyz and /v1/internal/self never wait for a leader.
	if r := doRaw(t, "GET", n.URL()+"/healthz", nil, nil); r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"m1"`) {
		t.Errorf("healthz: %d %s", r.Status, r.Body)
	}
	if r := doRaw(t, "GET", n.URL()+"/readyz", nil, nil); r.Status != http.StatusOK {
		t.Errorf("readyz: %d %s", r.Status, r.Body)
	}
	n.f.mu.Lock()
	n.f.readyErr = api.Unavailablef(api.CodeNoLeader, "no leader known")
	n.f.mu.Unlock()
	wantError(t, "readyz without leader", doRaw(t, "GET", n.URL()+"/readyz", nil, nil), http.StatusServiceUnavailable, api.CodeNoLeader, "")
	var ns api.NodeStatus
	r := doRaw(t, "GET", n.URL()+"/v1/internal/self", nil, nil)
	if err := json.Unmarshal(r.Body, &ns); err != nil || ns.ID != "m1" {
		t.Errorf("self: %d %s", r.Status, r.Body)
	}
	// The client's view of the same endpoints.
	cl := NewClient([]string{n.URL()})
	if err := cl.Health(context.Background()); err != nil {
		t.Errorf("Health: %v", err)
	}
	if err := cl.Ready(context.Background()); !errors.Is(err, api.ErrNoLeader) {
		t.Errorf("Ready: %v, want ErrNoLeader", err)
	}
	if ns, err := cl.SelfAt(context.Background(), strings.TrimPrefix(n.URL(), "http://")); err != nil || ns.ID != "m1" {
		t.Errorf("SelfAt: %+v %v", ns, err)
	}
}

// TestErrorMapping checks both directions: the server writes an error as
// its status, code and field (503 with Retry-After), and the client turns
// that answer back into an *api.Error that errors.Is the sentinel.
func TestErrorMapping(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{})
	n.f.lead()
	cl := NewClient([]string{n.URL()})
	for _, tt := range []struct {
		name      string
		err       error
		status    int
		code      string
		field     string
		sentinel  error
		retryable bool
	}{
		{"not found", api.NotFoundf("task x not found"), 404, api.CodeNotFound, "", api.ErrNotFound, false},
		{"wrapped not found", fmt.Errorf("lookup: %w", api.ErrNotFound), 404, api.CodeNotFound, "", api.ErrNotFound, false},
		{"code without status", &api.Error{Code: api.CodeNotFound, Message: "gone"}, 404, api.CodeNotFound, "", api.ErrNotFound, false},
		{"conflict", api.Conflictf("task is already succeeded"), 409, api.CodeConflict, "", api.ErrConflict, false},
		{"stale attempt", api.Stalef("attempt 1 is stale"), 409, api.CodeStaleAttempt, "", api.ErrStaleAttempt, false},
		{"bad request", api.BadRequest("id", "is odd"), 400, api.CodeBadRequest, "id", api.ErrBadRequest, false},
		{"too large", api.TooLarge("payload", 10), 413, api.CodeTooLarge, "payload", api.ErrTooLarge, false},
		{"no leader", api.Unavailablef(api.CodeNoLeader, "no leader"), 503, api.CodeNoLeader, "", api.ErrNoLeader, true},
		{"not leader", api.Unavailablef(api.CodeNotLeader, "lost leadership"), 503, api.CodeNotLeader, "", api.ErrNotLeader, true},
		{"unavailable", api.Unavailablef(api.CodeUnavailable, "shutting down"), 503, api.CodeUnavailable, "", api.ErrUnavailable, true},
		{"plain error", errors.New("disk on fire"), 500, api.CodeInternal, "", api.ErrInternal, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n.f.setErr("Task", tt.err)
			r := doRaw(t, "GET", n.URL()+"/v1/tasks/0000000000000001", nil, nil)
			wantError(t, "server", r, tt.status, tt.code, tt.field)
			if tt.status == 503 && r.Header.Get("Retry-After") != "1" {
				t.Errorf("Retry-After %q, want 1", r.Header.Get("Retry-After"))
			}

			_, err := cl.Task(context.Background(), api.FormatTaskID(1), ReadOptions{})
			var e *api.Error
			if !errors.As(err, &e) {
				t.Fatalf("client error %T %v is not an *api.Error", err, err)
			}
			if !errors.Is(err, tt.sentinel) {
				t.Errorf("client error %v (code %q) is not %v", err, e.Code, tt.sentinel)
			}
			if e.Status != tt.status || e.Field != tt.field || api.StatusOf(err) != tt.status {
				t.Errorf("client error status %d field %q, want %d %q", e.Status, e.Field, tt.status, tt.field)
			}
			if api.Retryable(err) != tt.retryable {
				t.Errorf("Retryable = %v, want %v", api.Retryable(err), tt.retryable)
			}
			if e.Message == "" {
				t.Error("client error has no message")
			}
		})
	}
}

// TestClient_DecodesForeignErrors: an answer that is not gantry's error body
// (a proxy's page, an empty body) still maps to the code of its status.
func TestClient_DecodesForeignErrors(t *testing.T) {
	for _, tt := range []struct {
		status    int
		body      string
		sentinel  error
		retryable bool
	}{
		{404, "<html>not here</html>", api.ErrNotFound, false},
		{400, "", api.ErrBadRequest, false},
		{409, "conflict", api.ErrConflict, false},
		{413, "too big", api.ErrTooLarge, false},
		{503, "upstream down", api.ErrUnavailable, true},
		{502, "bad gateway", api.ErrInternal, false},
	} {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			_, err := NewClient([]string{srv.URL}).Task(context.Background(), "x", ReadOptions{})
			if !errors.Is(err, tt.sentinel) || api.StatusOf(err) != tt.status || api.Retryable(err) != tt.retryable {
				t.Errorf("got %v (status %d, retryable %v), want %v", err, api.StatusOf(err), api.Retryable(err), tt.sentinel)
			}
			if tt.body != "" && !strings.Contains(err.Error(), tt.body) {
				t.Errorf("error %q does not quote the body %q", err, tt.body)
			}
		})
	}
}

func TestServer_SubmitNormalizesAndDeduplicates(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{})
	n.f.lead()
	r := doRaw(t, "POST", n.URL()+"/v1/tasks", []byte(`{"args":["echo","hi"],"payload":{ "a" : 1 }}`), map[string]string{HeaderIdempotencyKey: "k1"})
	if r.Status != http.StatusCreated {
		t.Fatalf("submit: %d %s", r.Status, r.Body)
	}
	var task api.Task
	if err := json.Unmarshal(r.Body, &task); err != nil {
		t.Fatal(err)
	}
	if loc := r.Header.Get("Location"); loc != "/v1/tasks/"+task.ID {
		t.Errorf("Location %q for task %s", loc, task.ID)
	}
	specs := n.f.specs[0]
	want := api.TaskSpec{Type: api.TypeExec, Args: []string{"echo", "hi"}, Payload: json.RawMessage(`{"a":1}`), Timeout: api.DefaultTimeout.String(), MaxAttempts: api.DefaultMaxAttempts, IdempotencyKey: "k1"}
	if len(specs) != 1 || fmt.Sprint(specs[0]) != fmt.Sprint(want) {
		t.Errorf("the master got %+v, want %+v", specs, want)
	}
	// The same key and task again: 200 with the same task; the client
	// says not created.
	r = doRaw(t, "POST", n.URL()+"/v1/tasks", []byte(`{"args":["echo","hi"],"idempotency_key":"k1","payload":{"a":1}}`), map[string]string{HeaderIdempotencyKey: "k1"})
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), task.ID) {
		t.Errorf("resubmit: %d %s, want 200 with %s", r.Status, r.Body, task.ID)
	}
	cl := NewClient([]string{n.URL()})
	got, created, err := cl.Submit(context.Background(), api.TaskSpec{Args: []string{"echo", "hi"}, Payload: json.RawMessage(`{"a": 1}`), IdempotencyKey: "k1"})
	if err != nil || created || got.ID != task.ID {
		t.Errorf("client resubmit: %s created %v err %v, want %s not created", got.ID, created, err, task.ID)
	}
	// The same key with another task is refused, naming the field.
	wantError(t, "key reused", doRaw(t, "POST", n.URL()+"/v1/tasks", []byte(`{"args":["echo","DIFFERENT"]}`), map[string]string{HeaderIdempotencyKey: "k1"}),
		http.StatusUnprocessableEntity, api.CodeIdempotencyConflict, "idempotency_key")
	if _, _, err := cl.Submit(context.Background(), api.TaskSpec{Args: []string{"echo"}, IdempotencyKey: "k1"}); !errors.Is(err, api.ErrIdempotencyConflict) {
		t.Errorf("client reuse: %v, want ErrIdempotencyConflict", err)
	}
	got, created, err = cl.Submit(context.Background(), api.TaskSpec{Args: []string{"echo"}})
	if err != nil || !created || got.ID == task.ID {
		t.Errorf("client submit: %s created %v err %v, want a new task", got.ID, created, err)
	}
	// A header that contradicts the body's key is refused.
	r = doRaw(t, "POST", n.URL()+"/v1/tasks", []byte(`{"args":["echo"],"idempotency_key":"k1"}`), map[string]string{HeaderIdempotencyKey: "k2"})
	wantError(t, "contradicting keys", r, 400, api.CodeBadRequest, "idempotency_key")
	// A batch is one Submit call.
	tasks, err := cl.SubmitBatch(context.Background(), []api.TaskSpec{{Args: []string{"a"}}, {Args: []string{"b"}}})
	if err != nil || len(tasks) != 2 {
		t.Fatalf("batch: %v %v", tasks, err)
	}
	if n := len(n.f.callsTo("Submit")); n != 7 {
		t.Errorf("%d Submit calls, want 7 (the contradicting keys never reach the master)", n)
	}
}

func TestServer_OtherEndpoints(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{})
	n.f.lead()
	cl := NewClient([]string{n.URL()})
	ctx := context.Background()

	task, err := cl.Task(ctx, api.FormatTaskID(7), ReadOptions{Wait: 3 * time.Second})
	if err != nil || task.ID != api.FormatTaskID(7) {
		t.Fatalf("Task with wait: %+v %v", task, err)
	}
	if c := n.f.callsTo("WaitTask"); len(c) != 1 || c[0].arg != 3*time.Second || !c[0].lin {
		t.Errorf("WaitTask calls %+v, want one with 3s, linearizable", c)
	}
	list, err := cl.List(ctx, api.ListFilter{State: api.StatePending, After: api.FormatTaskID(3), Limit: 7}, ReadOptions{})
	if err != nil || len(list.Tasks) != 1 {
		t.Fatalf("List: %+v %v", list, err)
	}
	if c := n.f.callsTo("ListTasks"); len(c) != 1 || c[0].arg != (api.ListFilter{State: api.StatePending, After: api.FormatTaskID(3), Limit: 7}) || !c[0].lin {
		t.Errorf("ListTasks calls %+v", c)
	}
	if task, err := cl.Cancel(ctx, api.FormatTaskID(7)); err != nil || task.State != api.StateCanceled {
		t.Errorf("Cancel: %+v %v", task, err)
	}
	if st, err := cl.Cluster(ctx, ReadOptions{}); err != nil || st.Leader != "m1" {
		t.Errorf("Cluster: %+v %v", st, err)
	}
	res := api.AttemptResult{TaskID: api.FormatTaskID(7), Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded}
	stale := res
	stale.Attempt = 2
	codes, err := cl.ReportResults(ctx, []api.AttemptResult{res, stale})
	if err != nil || !slices.Equal(codes, []string{"", api.CodeStaleAttempt}) {
		t.Errorf("ReportResults: %q %v", codes, err)
	}
	bad := res
	bad.Outcome = "exploded"
	_, err = cl.ReportResults(ctx, []api.AttemptResult{res, bad})
	var e *api.Error
	if !errors.As(err, &e) || e.Field != "results[1].outcome" || e.Status != 400 {
		t.Errorf("bad result: %v (%+v), want 400 naming results[1].outcome", err, e)
	}
	r := doRaw(t, "POST", n.URL()+"/v1/results", []byte(`{"results":[]}`), nil)
	wantError(t, "no results", r, 400, api.CodeBadRequest, "results")

	for _, tt := range []struct{ path, field string }{
		{"/v1/tasks/" + strings.Repeat("a", api.MaxTaskIDLen+1), "id"},
		{"/v1/tasks/a%20b", "id"},
		{"/v1/tasks/0000000000000001?wait=abc", "wait"},
		{"/v1/tasks/0000000000000001?wait=-1s", "wait"},
		{"/v1/tasks/0000000000000001?wait=6m", "wait"},
		{"/v1/tasks?state=bogus", "state"},
		{"/v1/tasks?limit=0", "limit"},
		{"/v1/tasks?limit=1001", "limit"},
		{"/v1/tasks?limit=abc", "limit"},
		{"/v1/tasks?after=a%20b", "after"},
		{"/v1/cluster?stale=maybe", "stale"},
	} {
		wantError(t, tt.path, doRaw(t, "GET", n.URL()+tt.path, nil, nil), 400, api.CodeBadRequest, tt.field)
	}
	wantError(t, "cancel bad id", doRaw(t, "POST", n.URL()+"/v1/tasks/a%20b/cancel", nil, nil), 400, api.CodeBadRequest, "id")
}

// forwardSetup is a follower whose leader is another fake master.
func forwardSetup(t *testing.T) (follower, leader *node) {
	t.Helper()
	leader = newNode(t, "lead", ServerOptions{})
	leader.f.lead()
	follower = newNode(t, "fol", ServerOptions{})
	follower.f.follow("lead", leader.URL()+"/") // a trailing slash must not matter
	return follower, leader
}

func TestServer_ForwardsOneHopToTheLeader(t *testing.T) {
	follower, leader := forwardSetup(t)
	body := []byte(`{"args":["echo","forwarded"],  "env":{"A":"1"}}`)
	r := doRaw(t, "POST", follower.URL()+"/v1/tasks", body, map[string]string{HeaderIdempotencyKey: "key-1"})
	if r.Status != http.StatusCreated {
		t.Fatalf("forwarded submit: %d %s", r.Status, r.Body)
	}
	var task api.Task
	if err := json.Unmarshal(r.Body, &task); err != nil || task.IdempotencyKey != "key-1" {
		t.Fatalf("forwarded submit answered %s (%v)", r.Body, err)
	}
	if got := r.Header.Get(HeaderServedBy); got != "lead" {
		t.Errorf("%s = %q, want lead", HeaderServedBy, got)
	}
	if got := r.Header.Get("Location"); got != "/v1/tasks/"+task.ID {
		t.Errorf("Location %q not copied from the leader", got)
	}
	// A single submission reaches the leader as a coalesced internal
	// request carrying the normalized spec (the key from the header in it).
	reqs := leader.requests()
	if len(reqs) != 1 {
		t.Fatalf("the leader got %d requests, want exactly 1", len(reqs))
	}
	got := reqs[0]
	if got.Method != "POST" || got.URI != pathInternalSubmit {
		t.Errorf("the leader got %s %s, want POST %s", got.Method, got.URI, pathInternalSubmit)
	}
	var in internalSubmitRequest
	if err := json.Unmarshal(got.Body, &in); err != nil || len(in.Specs) != 1 ||
		in.Specs[0].IdempotencyKey != "key-1" || strings.Join(in.Specs[0].Args, " ") != "echo forwarded" || in.Specs[0].Env["A"] != "1" {
		t.Errorf("the leader got body %s (%v)", got.Body, err)
	}
	if v := got.Header.Get(HeaderForwarded); v != "fol" {
		t.Errorf("%s = %q, want fol", HeaderForwarded, v)
	}
	if v := got.Header.Get("Content-Type"); v != "application/json" {
		t.Errorf("Content-Type = %q", v)
	}
	if c := leader.f.callsTo("Submit"); len(c) != 1 {
		t.Errorf("Submit on the leader: %+v", c)
	}
	if c := follower.f.businessCalls(); len(c) != 0 {
		t.Errorf("the follower served the request itself: %+v", c)
	}

	// Reads are forwarded with their query and served linearizably.
	r = doRaw(t, "GET", follower.URL()+"/v1/tasks?state=running&limit=7", nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("forwarded list: %d %s", r.Status, r.Body)
	}
	if reqs := leader.requests(); len(reqs) != 2 || reqs[1].URI != "/v1/tasks?state=running&limit=7" {
		t.Errorf("the leader got %+v", reqs)
	}
	if c := leader.f.callsTo("ListTasks"); len(c) != 1 || !c[0].lin || c[0].arg != (api.ListFilter{State: api.StateRunning, Limit: 7}) {
		t.Errorf("ListTasks on the leader: %+v", c)
	}
	// ?stale=false is an explicit linearizable read: forwarded too.
	r = doRaw(t, "GET", follower.URL()+"/v1/tasks/0000000000000009?stale=false", nil, nil)
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), "from lead") {
		t.Errorf("stale=false read: %d %s, want it served by the leader", r.Status, r.Body)
	}

	// The leader's errors come back unchanged, Retry-After included.
	leader.f.setErr("Task", api.NotFoundf("task gone"))
	wantError(t, "forwarded 404", doRaw(t, "GET", follower.URL()+"/v1/tasks/0000000000000001", nil, nil), 404, api.CodeNotFound, "")
	leader.f.setErr("Task", api.Unavailablef(api.CodeNotLeader, "stepped down"))
	wantError(t, "forwarded 503", doRaw(t, "GET", follower.URL()+"/v1/tasks/0000000000000001", nil, nil), 503, api.CodeNotLeader, "")
	// A submission is validated by the follower already; its 400 names the
	// field and nothing reaches the leader.
	n := len(leader.requests())
	wantError(t, "follower 400", doRaw(t, "POST", follower.URL()+"/v1/tasks", []byte(`{"args":[]}`), nil), 400, api.CodeBadRequest, "args")
	if len(leader.requests()) != n {
		t.Errorf("an invalid submission reached the leader")
	}
	// The leader's error on a coalesced submission comes back unchanged.
	leader.f.setErr("Submit", api.Unavailablef(api.CodeNotLeader, "stepped down"))
	wantError(t, "coalesced 503", doRaw(t, "POST", follower.URL()+"/v1/tasks", []byte(`{"args":["true"]}`), nil), 503, api.CodeNotLeader, "")
	leader.f.setErr("Submit", nil)

	// Through the typed client, with errors.Is across two servers.
	cl := NewClient([]string{follower.URL()})
	if _, err := cl.Task(context.Background(), api.FormatTaskID(1), ReadOptions{}); !errors.Is(err, api.ErrNotLeader) {
		t.Errorf("client through follower: %v, want ErrNotLeader", err)
	}
	if c := follower.f.businessCalls(); len(c) != 0 {
		t.Errorf("the follower served requests itself: %+v", c)
	}
}

// A follower coalesces concurrent single submissions into few internal
// requests, and every client still gets its own answer: its task, 201 for a
// new one and 200 for a key seen before.
func TestServer_CoalescesFollowerSubmissions(t *testing.T) {
	follower, leader := forwardSetup(t)
	r := doRaw(t, "POST", follower.URL()+"/v1/tasks", []byte(`{"args":["echo","seen"]}`), map[string]string{HeaderIdempotencyKey: "seen"})
	if r.Status != http.StatusCreated {
		t.Fatalf("first submit: %d %s", r.Status, r.Body)
	}
	before := len(leader.requests())
	gate := make(chan struct{})
	leader.f.mu.Lock()
	leader.f.gate = gate
	leader.f.mu.Unlock()
	const n = 60
	type answer struct {
		key    string
		status int
		task   api.Task
	}
	answers := make(chan answer, n)
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%d", i)
		if i%10 == 0 {
			key = "seen"
		}
		go func(key string) {
			r := doRaw(t, "POST", follower.URL()+"/v1/tasks", []byte(`{"args":["echo","`+key+`"]}`), map[string]string{HeaderIdempotencyKey: key})
			var task api.Task
			_ = json.Unmarshal(r.Body, &task)
			answers <- answer{key, r.Status, task}
		}(key)
	}
	// Release the leader once every submission is either in a request it
	// holds or waiting in the follower.
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	defer release() // a failed test must not leave the leader's handlers blocked
	held := func() int {
		k := 0
		for _, c := range leader.f.callsTo("Submit")[1:] {
			k += len(c.arg.([]api.TaskSpec))
		}
		return k
	}
	deadline := time.Now().Add(30 * time.Second)
	for held()+int(follower.server.coalesce.waiting.Load()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d submissions held by the leader and %d waiting in the follower, want %d in all", held(), follower.server.coalesce.waiting.Load(), n)
		}
		time.Sleep(5 * time.Millisecond) // a pause between polls
	}
	release()
	ids := map[string]string{}
	for i := 0; i < n; i++ {
		a := <-answers
		want := http.StatusCreated
		if a.key == "seen" {
			want = http.StatusOK
		}
		if a.status != want || a.task.ID == "" {
			t.Errorf("key %s: status %d task %+v, want %d", a.key, a.status, a.task, want)
		}
		if prev, ok := ids[a.key]; ok && prev != a.task.ID {
			t.Errorf("key %s answered as %s and %s", a.key, prev, a.task.ID)
		}
		ids[a.key] = a.task.ID
	}
	if len(ids) != n-n/10+1 {
		t.Errorf("%d distinct keys answered, want %d", len(ids), n-n/10+1)
	}
	// Every submission reached the leader once, in fewer requests: at most
	// one per sender while the leader was held, and two for what waited.
	if got := held(); got != n {
		t.Errorf("the leader was handed %d submissions, want %d", got, n)
	}
	reqs := leader.requests()[before:]
	if len(reqs) > coalesceInflight+2 {
		t.Errorf("the leader got %d requests for %d submissions, want at most %d: waiting submissions were not coalesced", len(reqs), n, coalesceInflight+2)
	}
	for _, r := range reqs {
		if r.URI != pathInternalSubmit {
			t.Errorf("the leader got %s %s", r.Method, r.URI)
		}
	}
	t.Logf("%d submissions reached the leader in %d requests", n, len(reqs))
}

func TestServer_ForwardedRequestIsNotForwardedAgain(t *testing.T) {
	leader := newNode(t, "lead", ServerOptions{})
	leader.f.lead()
	// f2 believes lead leads; f1 believes f2 leads (a stale view).
	f2 := newNode(t, "f2", ServerOptions{})
	f2.f.follow("lead", leader.URL())
	f1 := newNode(t, "f1", ServerOptions{})
	f1.f.follow("f2", f2.URL())

	for _, tt := range []struct {
		method, path string
		body         []byte
	}{
		{"POST", "/v1/tasks", []byte(`{"args":["echo"]}`)},
		{"GET", "/v1/tasks/0000000000000001", nil},
		{"POST", "/v1/tasks/0000000000000001/cancel", nil},
	} {
		before := len(f2.requests())
		r := doRaw(t, tt.method, f1.URL()+tt.path, tt.body, nil)
		wantError(t, tt.method+" "+tt.path+" via f1", r, 503, api.CodeNotLeader, "")
		if reqs := f2.requests(); len(reqs) != before+1 || reqs[len(reqs)-1].Header.Get(HeaderForwarded) != "f1" {
			t.Errorf("f2 got %d new requests, want 1 forwarded by f1", len(reqs)-before)
		}
		if n := len(leader.requests()); n != 0 {
			t.Fatalf("the request made a second hop: the leader got %d requests", n)
		}
	}
	// A request that claims to be forwarded is never forwarded again.
	r := doRaw(t, "POST", f2.URL()+"/v1/tasks", []byte(`{"args":["echo"]}`), map[string]string{HeaderForwarded: "someone"})
	wantError(t, "forwarded request at a follower", r, 503, api.CodeNotLeader, "")
	if n := len(leader.requests()); n != 0 {
		t.Errorf("the leader got %d requests", n)
	}
	if !strings.Contains(r.Err.Message, "someone") {
		t.Errorf("message %q does not name the forwarder", r.Err.Message)
	}
	// ... but the leader serves a forwarded request.
	r = doRaw(t, "POST", leader.URL()+"/v1/tasks", []byte(`{"args":["echo"]}`), map[string]string{HeaderForwarded: "f2"})
	if r.Status != http.StatusCreated {
		t.Errorf("leader with forwarded header: %d %s", r.Status, r.Body)
	}
	for _, f := range []*node{f1, f2} {
		if c := f.f.businessCalls(); len(c) != 0 {
			t.Errorf("%s served a request itself: %+v", f.f.id, c)
		}
	}
}

func TestServer_ForwardToUnreachableLeader(t *testing.T) {
	f := newNode(t, "fol", ServerOptions{})
	f.f.follow("lead", closedURL(t))
	r := doRaw(t, "POST", f.URL()+"/v1/tasks", []byte(`{"args":["echo"]}`), nil)
	wantError(t, "submit", r, 503, api.CodeUnavailable, "")
	wantError(t, "read", doRaw(t, "GET", f.URL()+"/v1/cluster", nil, nil), 503, api.CodeUnavailable, "")
	// Stale reads do not need the leader.
	if r := doRaw(t, "GET", f.URL()+"/v1/cluster?stale=true", nil, nil); r.Status != 200 {
		t.Errorf("stale read: %d %s", r.Status, r.Body)
	}

	// A leader that takes the request and drops the connection: the
	// outcome of a write is unknown, and the answer says so.
	drop, hits := counter(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	f.f.follow("lead", drop.URL)
	r = doRaw(t, "POST", f.URL()+"/v1/tasks", []byte(`{"args":["echo"]}`), map[string]string{HeaderIdempotencyKey: "k"})
	wantError(t, "submit to a dropping leader", r, 503, api.CodeUnavailable, "")
	if !strings.Contains(r.Err.Message, "idempotency key") {
		t.Errorf("a failed forward of a write should say its outcome is unknown: %q", r.Err.Message)
	}
	if hits() != 1 {
		t.Errorf("the leader got %d requests, want 1 (a sent request is never forwarded twice)", hits())
	}
}

func TestServer_ForwardRetriesALeaderThatCannotBeDialed(t *testing.T) {
	leader := newNode(t, "lead", ServerOptions{})
	leader.f.lead()
	f := newNode(t, "fol", ServerOptions{LeaderWait: 5 * time.Minute})
	f.f.follow("dead", closedURL(t))
	done := make(chan response, 1)
	go func() {
		done <- doRaw(t, "POST", f.URL()+"/v1/tasks", []byte(`{"args":["echo"]}`), nil)
	}()
	// Wait until the follower has tried the dead leader at least twice.
	deadline := time.Now().Add(time.Minute)
	for len(f.f.callsTo("AwaitLeader")) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the follower did not retry the leader it could not dial")
		}
		select {
		case r := <-done:
			t.Fatalf("answered while the leader could not be dialed: %d %s", r.Status, r.Body)
		case <-time.After(10 * time.Millisecond):
		}
	}
	f.f.follow("lead", leader.URL())
	select {
	case r := <-done:
		if r.Status != http.StatusCreated {
			t.Fatalf("after the new leader was known: %d %s", r.Status, r.Body)
		}
	case <-time.After(time.Minute):
		t.Fatal("the request was not forwarded to the new leader")
	}
	if n := len(leader.requests()); n != 1 {
		t.Errorf("the leader got %d requests, want 1", n)
	}
}

func TestServer_NoLeaderIs503AfterLeaderWait(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{LeaderWait: 100 * time.Millisecond})
	for _, tt := range []struct {
		method, path string
		body         []byte
	}{
		{"POST", "/v1/tasks", []byte(`{"args":["echo"]}`)},
		{"POST", "/v1/tasks/batch", []byte(`{"tasks":[{"args":["echo"]}]}`)},
		{"GET", "/v1/tasks", nil},
		{"GET", "/v1/tasks/0000000000000001", nil},
		{"POST", "/v1/tasks/0000000000000001/cancel", nil},
		{"GET", "/v1/cluster", nil},
		{"POST", "/v1/results", []byte(`{"results":[]}`)},
	} {
		r := doRaw(t, tt.method, n.URL()+tt.path, tt.body, nil)
		wantError(t, tt.method+" "+tt.path, r, 503, api.CodeNoLeader, "")
		if r.Header.Get("Retry-After") != "1" {
			t.Errorf("%s %s: Retry-After %q", tt.method, tt.path, r.Header.Get("Retry-After"))
		}
	}
	if c := n.f.businessCalls(); len(c) != 0 {
		t.Errorf("the master was called without a leader: %+v", c)
	}
	if c := n.f.callsTo("AwaitLeader"); len(c) != 7 {
		t.Errorf("%d AwaitLeader calls, want 7", len(c))
	}
	cl := NewClient([]string{n.URL()})
	_, _, err := cl.Submit(context.Background(), api.TaskSpec{Args: []string{"x"}})
	if !errors.Is(err, api.ErrNoLeader) || !api.Retryable(err) {
		t.Errorf("client: %v, want a retryable ErrNoLeader", err)
	}
}

func TestServer_HoldsRequestUntilALeaderIsElected(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{LeaderWait: 5 * time.Minute})
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Post(n.URL()+"/v1/tasks", "application/json", strings.NewReader(`{"args":["echo"]}`))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- result{status: resp.StatusCode, body: string(b)}
	}()
	select {
	case <-n.f.awaiting:
	case r := <-done:
		t.Fatalf("the request was answered before a leader was known: %+v", r)
	case <-time.After(time.Minute):
		t.Fatal("the request never waited for a leader")
	}
	n.f.lead()
	select {
	case r := <-done:
		if r.err != nil || r.status != http.StatusCreated {
			t.Fatalf("after the election: %+v, want 201", r)
		}
	case <-time.After(time.Minute):
		t.Fatal("the request was not served once a leader was elected")
	}
}

func TestServer_StaleReadsAreServedLocally(t *testing.T) {
	// The leader would fail the test if asked.
	leader := newNode(t, "lead", ServerOptions{})
	leader.f.lead()
	leader.f.setErr("Task", errors.New("the leader must not be asked"))
	leader.f.setErr("ListTasks", errors.New("the leader must not be asked"))
	leader.f.setErr("Cluster", errors.New("the leader must not be asked"))
	f := newNode(t, "fol", ServerOptions{LeaderWait: 5 * time.Minute})
	f.f.follow("lead", leader.URL())

	check := func(what string) {
		t.Helper()
		for _, p := range []string{
			"/v1/tasks/0000000000000001?stale=true",
			"/v1/tasks/0000000000000001?stale=1&wait=1s",
			"/v1/tasks?stale=true&state=pending",
			"/v1/cluster?stale=true",
		} {
			if r := doRaw(t, "GET", f.URL()+p, nil, nil); r.Status != http.StatusOK {
				t.Errorf("%s: GET %s: %d %s", what, p, r.Status, r.Body)
			}
		}
		for _, c := range f.f.businessCalls() {
			if c.lin {
				t.Errorf("%s: stale read %s was linearizable", what, c.method)
			}
		}
	}
	check("with a leader")
	if n := len(leader.requests()); n != 0 {
		t.Errorf("stale reads reached the leader %d times", n)
	}
	if n := len(f.f.callsTo("AwaitLeader")); n != 0 {
		t.Errorf("stale reads waited for a leader %d times", n)
	}
	// Without any leader (and a long LeaderWait) they are still served.
	f.f.setLeader(LeaderInfo{}, false)
	check("without a leader")
	cl := NewClient([]string{f.URL()})
	if task, err := cl.Task(context.Background(), api.FormatTaskID(1), ReadOptions{Stale: true}); err != nil || task.Result.Output != "from fol" {
		t.Errorf("client stale read: %+v %v", task, err)
	}
	// stale has no effect on writes, and a bad value is a 400.
	wantError(t, "stale=maybe", doRaw(t, "GET", f.URL()+"/v1/tasks?stale=maybe", nil, nil), 400, api.CodeBadRequest, "stale")
}

func TestServer_BodyLimits(t *testing.T) {
	follower, leader := forwardSetup(t)
	small := []byte(`{"args":["echo"]}`)
	pad := func(b []byte, n int) []byte {
		return append(append([]byte(nil), b...), bytes.Repeat([]byte(" "), n-len(b))...)
	}

	// Exactly at the limit is fine, one byte more is 413 on the follower
	// itself: nothing is forwarded.
	r := doRaw(t, "POST", follower.URL()+"/v1/tasks", pad(small, api.MaxRequestBytes), nil)
	if r.Status != http.StatusCreated {
		t.Errorf("body of exactly the limit: %d %s", r.Status, r.Body)
	}
	before := len(leader.requests())
	r = doRaw(t, "POST", follower.URL()+"/v1/tasks", pad(small, api.MaxRequestBytes+1), nil)
	wantError(t, "body over the limit", r, 413, api.CodeTooLarge, "")
	if n := len(leader.requests()) - before; n != 0 {
		t.Errorf("an oversized body was forwarded %d times", n)
	}
	r = doRaw(t, "POST", leader.URL()+"/v1/tasks/0000000000000001/cancel", make([]byte, api.MaxRequestBytes+10), nil)
	wantError(t, "cancel body over the limit", r, 413, api.CodeTooLarge, "")

	// A batch may be larger than a single submission.
	batch := pad([]byte(`{"tasks":[{"args":["echo"]}]}`), 2*api.MaxRequestBytes)
	if r := doRaw(t, "POST", leader.URL()+"/v1/tasks/batch", batch, nil); r.Status != http.StatusCreated {
		t.Errorf("2 MiB batch: %d %s", r.Status, r.Body)
	}
	r = doRaw(t, "POST", leader.URL()+"/v1/tasks/batch", pad(batch, api.MaxBatchRequestBytes+1), nil)
	wantError(t, "batch over the limit", r, 413, api.CodeTooLarge, "")

	// The client sees ErrTooLarge.
	cl := NewClient([]string{follower.URL()})
	_, _, err := cl.Submit(context.Background(), api.TaskSpec{Args: []string{"echo"}, Payload: json.RawMessage(`"` + strings.Repeat("x", api.MaxRequestBytes) + `"`)})
	if !errors.Is(err, api.ErrTooLarge) || api.StatusOf(err) != 413 {
		t.Errorf("client: %v, want ErrTooLarge", err)
	}
	// Within the body limit, a payload over its own limit is a 400 naming it.
	_, _, err = cl.Submit(context.Background(), api.TaskSpec{Args: []string{"echo"}, Payload: json.RawMessage(`"` + strings.Repeat("x", api.MaxPayloadBytes) + `"`)})
	var e *api.Error
	if !errors.As(err, &e) || e.Status != 400 || e.Field != "payload" {
		t.Errorf("client: %v, want 400 naming payload", err)
	}
}

// counter is an httptest server that counts requests and answers with h.
func counter(t *testing.T, h http.HandlerFunc) (*httptest.Server, func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func TestClient_FailsOverWhenAMasterCannotBeReached(t *testing.T) {
	good := newNode(t, "m2", ServerOptions{})
	good.f.lead()
	dead := closedURL(t)
	cl := NewClient([]string{dead, strings.TrimPrefix(good.URL(), "http://") + "/"})
	if got := cl.Addrs(); len(got) != 2 || got[1] != good.URL() {
		t.Fatalf("Addrs() = %q: want normalized URLs", got)
	}
	ctx := context.Background()
	// A refused connection never reached a server: any request moves on,
	// a submission without idempotency key included.
	if _, _, err := cl.Submit(ctx, api.TaskSpec{Args: []string{"echo"}}); err != nil {
		t.Fatalf("submit without key: %v", err)
	}
	if _, err := cl.Task(ctx, api.FormatTaskID(1), ReadOptions{}); err != nil {
		t.Fatalf("read: %v", err)
	}
	if n := len(good.requests()); n != 2 {
		t.Errorf("the reachable master got %d requests, want 2", n)
	}
	// Every master down: an error naming them all.
	cl = NewClient([]string{dead, closedURL(t)})
	_, err := cl.Task(ctx, api.FormatTaskID(1), ReadOptions{})
	if err == nil || !strings.Contains(err.Error(), "no master answered") {
		t.Errorf("all down: %v", err)
	}
	if _, err := NewClient(nil).Task(ctx, "x", ReadOptions{}); err == nil {
		t.Error("no addresses: no error")
	}
}

func TestClient_RetriesElsewhereOnlyWhatIsSafeToRepeat(t *testing.T) {
	// The first master reads the request, then drops the connection without
	// answering: the request may have been processed.
	drop := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		conn.Close()
	}
	for _, tt := range []struct {
		name       string
		do         func(*Client) error
		retryOther bool
	}{
		{"submit without key", func(c *Client) error {
			_, _, err := c.Submit(context.Background(), api.TaskSpec{Args: []string{"echo"}})
			return err
		}, false},
		{"submit with key", func(c *Client) error {
			_, _, err := c.Submit(context.Background(), api.TaskSpec{Args: []string{"echo"}, IdempotencyKey: "k"})
			return err
		}, true},
		{"batch with a key on every task", func(c *Client) error {
			_, err := c.SubmitBatch(context.Background(), []api.TaskSpec{{Args: []string{"a"}, IdempotencyKey: "k1"}, {Args: []string{"b"}, IdempotencyKey: "k2"}})
			return err
		}, true},
		{"batch with a task without key", func(c *Client) error {
			_, err := c.SubmitBatch(context.Background(), []api.TaskSpec{{Args: []string{"a"}, IdempotencyKey: "k1"}, {Args: []string{"b"}}})
			return err
		}, false},
		{"read", func(c *Client) error {
			_, err := c.Task(context.Background(), api.FormatTaskID(1), ReadOptions{})
			return err
		}, true},
		{"cancel", func(c *Client) error {
			_, err := c.Cancel(context.Background(), api.FormatTaskID(1))
			return err
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			first, firstHits := counter(t, drop)
			second := newNode(t, "m2", ServerOptions{})
			second.f.lead()
			cl := NewClient([]string{first.URL, second.URL()})
			err := tt.do(cl)
			if firstHits() != 1 {
				t.Fatalf("the first master got %d requests, want 1", firstHits())
			}
			secondHits := len(second.requests())
			if tt.retryOther {
				if err != nil || secondHits != 1 {
					t.Errorf("err %v, second master got %d requests; want it retried there once", err, secondHits)
				}
				return
			}
			if err == nil || secondHits != 0 {
				t.Errorf("err %v, second master got %d requests; want an error and no retry", err, secondHits)
			}
			if err != nil && !strings.Contains(err.Error(), "may have been processed") {
				t.Errorf("error %q does not warn that the request may have been processed", err)
			}
		})
	}
}

func TestClient_AnsweredErrorsAreNotRetriedElsewhere(t *testing.T) {
	// A master that answers (even 503) is the answer: the caller decides.
	first := newNode(t, "m1", ServerOptions{LeaderWait: 50 * time.Millisecond})
	second := newNode(t, "m2", ServerOptions{})
	second.f.lead()
	cl := NewClient([]string{first.URL(), second.URL()})
	_, err := cl.Task(context.Background(), api.FormatTaskID(1), ReadOptions{})
	if !errors.Is(err, api.ErrNoLeader) {
		t.Errorf("got %v, want ErrNoLeader from the first master", err)
	}
	if n := len(second.requests()); n != 0 {
		t.Errorf("the second master got %d requests", n)
	}
}

// fakeAgent implements Agent.
type fakeAgent struct {
	mu       sync.Mutex
	accepted []api.Assignment
	canceled []api.AttemptRef
	err      error
}

func (a *fakeAgent) ID() string { return "w1" }

func (a *fakeAgent) Accept(as []api.Assignment) ([]bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return nil, a.err
	}
	a.accepted = append(a.accepted, as...)
	out := make([]bool, len(as))
	for i := range as {
		out[i] = as[i].Attempt < 5
	}
	return out, nil
}

func (a *fakeAgent) Attempts() api.WorkerAttempts {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := api.WorkerAttempts{Worker: "w1", Slots: 2}
	for _, as := range a.accepted {
		out.Attempts = append(out.Attempts, api.RunningAttempt{TaskID: as.TaskID, Attempt: as.Attempt, State: "running"})
	}
	return out
}

func (a *fakeAgent) CancelAttempt(ref api.AttemptRef) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.canceled = append(a.canceled, ref)
	return ref.Attempt == 1
}

func TestWorkerHandlerAndClient(t *testing.T) {
	ag := &fakeAgent{}
	srv := httptest.NewServer(NewWorkerHandler(ag, nil, nil))
	defer srv.Close()
	wc := NewWorkerClient(nil)
	ctx := context.Background()

	ok, err := wc.Push(ctx, srv.URL, []api.Assignment{
		{TaskID: "t1", Attempt: 1, Args: []string{"echo"}, Timeout: "1s"},
		{TaskID: "t2", Attempt: 7, Args: []string{"echo"}},
	})
	if err != nil || !slices.Equal(ok, []bool{true, false}) {
		t.Fatalf("Push: %v %v", ok, err)
	}
	wa, err := wc.Attempts(ctx, srv.URL)
	if err != nil || wa.Worker != "w1" || len(wa.Attempts) != 2 {
		t.Errorf("Attempts: %+v %v", wa, err)
	}
	if err := wc.Cancel(ctx, srv.URL, api.AttemptRef{TaskID: "t1", Attempt: 1}); err != nil {
		t.Errorf("Cancel: %v", err)
	}
	if len(ag.canceled) != 1 || ag.canceled[0] != (api.AttemptRef{TaskID: "t1", Attempt: 1}) {
		t.Errorf("canceled %+v", ag.canceled)
	}

	// Bad pushes are 400s naming the field; a refusing worker is a 503.
	for _, tt := range []struct {
		body  string
		field string
	}{
		{`{"attempts":[{"task_id":"","attempt":1,"args":["x"]}]}`, "attempts"},
		{`{"attempts":[{"task_id":"t","attempt":0,"args":["x"]}]}`, "attempts"},
		{`{"attempts":[{"task_id":"t","attempt":1,"args":[]}]}`, "attempts"},
		{`{"attempts":[{"task_id":"t","attempt":"1","args":["x"]}]}`, "attempts.attempt"},
		{`{"attempts":[],"bogus":1}`, "bogus"},
		{``, ""},
	} {
		r := doRaw(t, "POST", srv.URL+"/v1/attempts", []byte(tt.body), nil)
		wantError(t, "push "+tt.body, r, 400, api.CodeBadRequest, tt.field)
	}
	ag.err = api.Unavailablef(api.CodeUnavailable, "draining")
	_, err = wc.Push(ctx, srv.URL, []api.Assignment{{TaskID: "t3", Attempt: 1, Args: []string{"x"}}})
	if !errors.Is(err, api.ErrUnavailable) || api.StatusOf(err) != 503 {
		t.Errorf("Push to a draining worker: %v, want 503 ErrUnavailable", err)
	}
	r := doRaw(t, "POST", srv.URL+"/v1/attempts/cancel", make([]byte, api.MaxRequestBytes+1), nil)
	wantError(t, "cancel over the limit", r, 413, api.CodeTooLarge, "")
	r = doRaw(t, "GET", srv.URL+"/nope", nil, nil)
	wantError(t, "unknown path", r, 404, api.CodeNotFound, "")
	if err := wc.Cancel(ctx, closedURL(t), api.AttemptRef{TaskID: "t", Attempt: 1}); err == nil {
		t.Error("Cancel on a dead worker: no error")
	}
}

// TestServer_MalformedQueryIsRejected: a query parameter whose escape cannot
// be decoded must be a 400 naming it, not silently dropped (a client paging
// with a mangled cursor would otherwise be sent back to the first page).
func TestServer_MalformedQueryIsRejected(t *testing.T) {
	n := newNode(t, "m1", ServerOptions{})
	n.f.lead()
	for _, tt := range []struct{ path, field string }{
		{"/v1/tasks?after=%%%", "after"},
		{"/v1/tasks?state=%zz", "state"},
		{"/v1/tasks?limit=%zz", "limit"},
		{"/v1/tasks/0000000000000001?wait=%zz", "wait"},
	} {
		r := doRaw(t, "GET", n.URL()+tt.path, nil, nil)
		wantError(t, "GET "+tt.path, r, 400, api.CodeBadRequest, tt.field)
	}
}

// TestDecode_FieldNamesInBatches: every 400 for a task of a batch names the
// task, as Normalize's errors do ("tasks[1].args"), also for type errors
// and unknown fields.
func TestDecode_FieldNamesInBatches(t *testing.T) {
	for _, tt := range []struct{ body, field string }{
		{`{"tasks":[{"args":["a"]},{"args":[]}]}`, "tasks[1].args"},               // Normalize error
		{`{"tasks":[{"args":["a"]},{"args":"x"}]}`, "tasks[1].args"},              // type error
		{`{"tasks":[{"args":["a"]},{"args":["a"],"bogus":1}]}`, "tasks[1].bogus"}, // unknown field
	} {
		_, err := DecodeBatch([]byte(tt.body))
		var e *api.Error
		if !errors.As(err, &e) || e.Field != tt.field {
			t.Errorf("%s: got %v (field %q), want field %q", tt.body, err, fieldOf(err), tt.field)
		}
	}
}

// TestDecodeJSON_Messages checks the wording of decoding errors.
func TestDecodeJSON_Messages(t *testing.T) {
	for _, tt := range []struct{ body, want string }{
		{`[]`, "expected an object, got array"},
		{`"x"`, "expected an object, got string"},
		{`{"args":"x"}`, "args: expected an array, got string"},
		{`{"args":["x"]} {}`, "unexpected data after the JSON object"},
		{`{"args":`, "the JSON body ends too early"},
		{`  `, "the request body is empty"},
	} {
		_, err := DecodeSubmit([]byte(tt.body), "")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want a message with %q", tt.body, err, tt.want)
		}
	}
}

func fieldOf(err error) string {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Field
	}
	return "<not an *api.Error>"
}
