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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gantryhq/gantry/api"
)

// Client is the typed Go client of gantry's HTTP API. It holds a list of
// master URLs; when one cannot be reached it tries the next, and it
// remembers the last one that answered.
type Client struct {
	hc      *http.Client
	attempt time.Duration // bound of one request to one master; 0: none

	mu    sync.Mutex
	addrs []string // base URLs, guarded by mu
	cur   int      // index of the address to try first, guarded by mu
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithHTTPClient sets the underlying HTTP client.
func WithHTTPClient(hc *http.Client) ClientOption { return func(c *Client) { c.hc = hc } }

// WithAttemptTimeout bounds each request to one master (plus the long poll
// it asks for): a master that does not answer in time (paused, cut off) is
// given up on, and a request that may be sent again goes to the next one.
func WithAttemptTimeout(d time.Duration) ClientOption { return func(c *Client) { c.attempt = d } }

// NewClient returns a client for the given master URLs ("http://host:port";
// a missing scheme means http).
func NewClient(addrs []string, opts ...ClientOption) *Client {
	c := &Client{hc: &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
	}}}
	for _, o := range opts {
		o(c)
	}
	c.SetAddrs(addrs)
	return c
}

// NormalizeURL adds http:// to an address without a scheme and trims a
// trailing slash.
func NormalizeURL(a string) string {
	a = strings.TrimSpace(a)
	if a == "" {
		return ""
	}
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	return strings.TrimRight(a, "/")
}

// SetAddrs replaces the list of master URLs.
func (c *Client) SetAddrs(addrs []string) {
	var out []string
	for _, a := range addrs {
		if a = NormalizeURL(a); a != "" {
			out = append(out, a)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addrs = out
	if c.cur >= len(out) {
		c.cur = 0
	}
}

// Addrs returns the current list of master URLs.
func (c *Client) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.addrs...)
}

// call describes one request.
type call struct {
	method string
	path   string // with query
	body   any
	header map[string]string
	// retryAnywhere: the request may be sent again to another master even
	// after it was sent (reads, keyed submissions, fenced results).
	retryAnywhere bool
	wait          time.Duration // the long poll asked for: added to the attempt timeout
}

// Response is the raw outcome of a call.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// do sends the call to the first master that answers and returns its
// response for 2xx, or the decoded *api.Error.
func (c *Client) do(ctx context.Context, cl call) (*Response, error) {
	var payload []byte
	if cl.body != nil {
		var err error
		if payload, err = json.Marshal(cl.body); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	addrs := append([]string(nil), c.addrs...)
	start := c.cur
	c.mu.Unlock()
	if len(addrs) == 0 {
		return nil, errors.New("no master address configured (use --addr or GANTRY_ADDR)")
	}
	var lastErr error
	for i := 0; i < len(addrs); i++ {
		idx := (start + i) % len(addrs)
		actx, cancel := ctx, context.CancelFunc(func() {})
		if c.attempt > 0 {
			actx, cancel = context.WithTimeoutCause(ctx, c.attempt+cl.wait, errAttemptTimeout)
		}
		resp, err := c.once(actx, addrs[idx], cl, payload)
		if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errAttemptTimeout) {
			err = fmt.Errorf("%s did not answer within %s: %w", addrs[idx], c.attempt+cl.wait, errAttemptTimeout)
		}
		cancel()
		if err == nil {
			c.mu.Lock()
			if len(c.addrs) == len(addrs) {
				c.cur = idx
			}
			c.mu.Unlock()
			if resp.Status >= 200 && resp.Status < 300 {
				return resp, nil
			}
			return resp, errorFromBody(resp)
		}
		lastErr = err
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !isNotSent(err) && !cl.retryAnywhere {
			return nil, fmt.Errorf("%s %s: %w (the request may have been processed)", cl.method, addrs[idx], err)
		}
	}
	return nil, fmt.Errorf("no master answered (tried %s): %w", strings.Join(addrs, ", "), lastErr)
}

func (c *Client) once(ctx context.Context, base string, cl call, payload []byte) (*Response, error) {
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, base+cl.path, rd)
	if err != nil {
		return nil, err
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range cl.header {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// errAttemptTimeout: one master did not answer within the attempt timeout.
var errAttemptTimeout = errors.New("no answer in time")

// isNotSent reports whether err means the request never reached a server
// (so sending it elsewhere cannot duplicate it).
func isNotSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

func errorFromBody(resp *Response) error {
	e := &api.Error{}
	if err := json.Unmarshal(resp.Body, e); err != nil || (e.Message == "" && e.Code == "") {
		e = &api.Error{Message: fmt.Sprintf("HTTP %d: %s", resp.Status, strings.TrimSpace(string(resp.Body)))}
	} else if e.Message == "" {
		e.Message = fmt.Sprintf("HTTP %d: %s", resp.Status, e.Code)
	}
	e.Status = resp.Status
	if e.Code == "" {
		e.Code = codeForStatus(resp.Status)
	}
	return e
}

func decode[T any](resp *Response, err error) (T, error) {
	var v T
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(resp.Body, &v); err != nil {
		return v, fmt.Errorf("decode response: %w", err)
	}
	return v, nil
}

// Submit submits one task. created is false when the idempotency key named
// an existing task, which is returned.
func (c *Client) Submit(ctx context.Context, spec api.TaskSpec) (t api.Task, created bool, err error) {
	resp, err := c.do(ctx, call{method: "POST", path: "/v1/tasks", body: spec, retryAnywhere: spec.IdempotencyKey != ""})
	t, err = decode[api.Task](resp, err)
	return t, err == nil && resp.Status == http.StatusCreated, err
}

// SubmitBatch submits tasks atomically in one raft entry.
func (c *Client) SubmitBatch(ctx context.Context, specs []api.TaskSpec) ([]api.Task, error) {
	keyed := len(specs) > 0
	for _, s := range specs {
		keyed = keyed && s.IdempotencyKey != ""
	}
	out, err := decode[api.BatchResponse](c.do(ctx, call{method: "POST", path: "/v1/tasks/batch", body: api.BatchRequest{Tasks: specs}, retryAnywhere: keyed}))
	return out.Tasks, err
}

// ReadOptions tune reads.
type ReadOptions struct {
	Stale bool          // serve from whichever master answers, without asking the leader
	Wait  time.Duration // Task only: long-poll until terminal or this long
}

func (o ReadOptions) query() url.Values {
	q := url.Values{}
	if o.Stale {
		q.Set("stale", "true")
	}
	if o.Wait > 0 {
		q.Set("wait", o.Wait.String())
	}
	return q
}

func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// Task returns one task.
func (c *Client) Task(ctx context.Context, id string, o ReadOptions) (api.Task, error) {
	return decode[api.Task](c.do(ctx, call{method: "GET", path: withQuery("/v1/tasks/"+url.PathEscape(id), o.query()), retryAnywhere: true, wait: o.Wait}))
}

// List returns a page of tasks.
func (c *Client) List(ctx context.Context, f api.ListFilter, o ReadOptions) (api.TaskList, error) {
	q := o.query()
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return decode[api.TaskList](c.do(ctx, call{method: "GET", path: withQuery("/v1/tasks", q), retryAnywhere: true}))
}

// Cancel cancels a task and returns it.
func (c *Client) Cancel(ctx context.Context, id string) (api.Task, error) {
	return decode[api.Task](c.do(ctx, call{method: "POST", path: "/v1/tasks/" + url.PathEscape(id) + "/cancel", retryAnywhere: true}))
}

// Cluster describes the cluster.
func (c *Client) Cluster(ctx context.Context, o ReadOptions) (api.ClusterStatus, error) {
	return decode[api.ClusterStatus](c.do(ctx, call{method: "GET", path: withQuery("/v1/cluster", o.query()), retryAnywhere: true}))
}

// ReportResults reports finished attempts. Each returned string is empty
// when accepted or the error code of a final refusal.
func (c *Client) ReportResults(ctx context.Context, results []api.AttemptResult) ([]string, error) {
	out, err := decode[api.ResultsResponse](c.do(ctx, call{method: "POST", path: "/v1/results", body: api.ResultsRequest{Results: results}, retryAnywhere: true}))
	if err == nil && len(out.Errors) != len(results) {
		return nil, fmt.Errorf("results: got %d answers for %d results", len(out.Errors), len(results))
	}
	return out.Errors, err
}

// Scale describes scaling.
func (c *Client) Scale(ctx context.Context, o ReadOptions) (api.ScaleStatus, error) {
	return decode[api.ScaleStatus](c.do(ctx, call{method: "GET", path: withQuery("/v1/scale", o.query()), retryAnywhere: true}))
}

// SetScale replaces the scaling policy (setting the same policy twice is
// harmless, so it is retried anywhere).
func (c *Client) SetScale(ctx context.Context, p api.ScalePolicy) (api.ScaleStatus, error) {
	return decode[api.ScaleStatus](c.do(ctx, call{method: "PUT", path: "/v1/scale", body: p, retryAnywhere: true}))
}

// Ready returns nil when the first reachable master is ready.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.do(ctx, call{method: "GET", path: "/readyz"})
	return err
}

// DigestAt asks the master at base URL for its state digest.
func (c *Client) DigestAt(ctx context.Context, base string) (api.Digest, error) {
	resp, err := c.once(ctx, NormalizeURL(base), call{method: "GET", path: "/v1/digest"}, nil)
	if err == nil && resp.Status != http.StatusOK {
		err = errorFromBody(resp)
	}
	return decode[api.Digest](resp, err)
}

// SelfAt asks the master at base URL about itself.
func (c *Client) SelfAt(ctx context.Context, base string) (api.NodeStatus, error) {
	resp, err := c.once(ctx, NormalizeURL(base), call{method: "GET", path: "/v1/internal/self"}, nil)
	if err == nil && resp.Status != http.StatusOK {
		err = errorFromBody(resp)
	}
	return decode[api.NodeStatus](resp, err)
}

// Health returns nil when the first reachable address answers /healthz.
func (c *Client) Health(ctx context.Context) error {
	_, err := c.do(ctx, call{method: "GET", path: "/healthz"})
	return err
}
