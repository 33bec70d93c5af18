package test

// Bad input against a live cluster: raw HTTP requests (not the typed
// client, which would refuse to build most of them) sent to a follower, which
// forwards them, and to the leader. Each must get a clear 4xx naming the
// offending field, and none may crash a node or change the replicated state
// (invariant 7 of the correctness contract).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
)

// badCase is one bad request and the answer it must get.
type badCase struct {
	name   string
	method string
	path   string
	body   []byte
	header map[string]string
	status int
	code   string
	field  string
}

// badJSON marshals v or fails the test.
func badJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// badHTTPClient has a generous timeout: the race detector on two shared
// cores is slow, and long bodies are sent.
var badHTTPClient = &http.Client{Timeout: 60 * time.Second}

// badDo sends one raw request and returns the status, headers and body.
func badDo(t *testing.T, method, url string, body []byte, header map[string]string) (int, http.Header, []byte, error) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := badHTTPClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// badSend sends a request that is safe to repeat (bad input changes
// nothing), retrying while the cluster answers 503 or the connection fails.
func badSend(t *testing.T, c *Cluster, method, url string, body []byte, header map[string]string) (int, http.Header, []byte) {
	t.Helper()
	var (
		status int
		hdr    http.Header
		out    []byte
		last   error
	)
	c.Eventually(60*time.Second, method+" "+url+" to be answered", func() bool {
		status, hdr, out, last = badDo(t, method, url, body, header)
		if last != nil {
			t.Logf("%s %s: %v (retrying)", method, url, last)
			return false
		}
		return status != http.StatusServiceUnavailable
	})
	return status, hdr, out
}

func badInputCases(t *testing.T) []badCase {
	submit := func(name string, body string, field string) badCase {
		return badCase{name: name, method: "POST", path: "/v1/tasks", body: []byte(body), status: 400, code: api.CodeBadRequest, field: field}
	}
	submitV := func(name string, v any, field string) badCase {
		return badCase{name: name, method: "POST", path: "/v1/tasks", body: badJSON(t, v), status: 400, code: api.CodeBadRequest, field: field}
	}
	get := func(name, path, field string) badCase {
		return badCase{name: name, method: "GET", path: path, status: 400, code: api.CodeBadRequest, field: field}
	}
	args := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "a"
		}
		return out
	}
	env := func(n int) map[string]string {
		out := map[string]string{}
		for i := 0; i < n; i++ {
			out[fmt.Sprintf("V%d", i)] = "x"
		}
		return out
	}
	batch := func(n int) map[string]any {
		tasks := make([]map[string]any, n)
		for i := range tasks {
			tasks[i] = map[string]any{"args": []string{"true"}}
		}
		return map[string]any{"tasks": tasks}
	}
	badBatch := batch(5)
	badBatch["tasks"].([]map[string]any)[3]["args"] = []string{}
	zeroBatch := batch(3)
	zeroBatch["tasks"].([]map[string]any)[2]["max_attempts"] = 0
	unknownID := api.FormatTaskID(1 << 40)

	return []badCase{
		submit("malformed JSON", `{"args":["echo",}`, ""),
		submit("truncated JSON", `{"args":["echo"`, ""),
		submit("not an object", `["echo"]`, ""),
		{name: "empty body", method: "POST", path: "/v1/tasks", status: 400, code: api.CodeBadRequest, field: ""},
		submit("whitespace body", " \n\t ", ""),
		submit("unknown top-level field", `{"args":["echo"],"command":"rm"}`, "command"),
		submit("args as string", `{"args":"echo hi"}`, "args"),
		submit("args element as number", `{"args":["echo",1]}`, "args"),
		submit("max_attempts as string", `{"args":["echo"],"max_attempts":"3"}`, "max_attempts"),
		submit("priority as float", `{"args":["echo"],"priority":1.5}`, "priority"),
		submit("env value as number", `{"args":["echo"],"env":{"A":1}}`, "env"),
		submit("env as array", `{"args":["echo"],"env":["A=1"]}`, "env"),
		submit("timeout as number", `{"args":["echo"],"timeout":30}`, "timeout"),
		submit("empty args", `{"args":[]}`, "args"),
		submit("null args", `{"args":null}`, "args"),
		submit("no args", `{"timeout":"5s"}`, "args"),
		submit("args[0] empty", `{"args":["","x"]}`, "args"),
		submit("args with NUL", `{"args":["echo","a\u0000b"]}`, "args"),
		submitV("too many args", map[string]any{"args": args(api.MaxArgs + 1)}, "args"),
		submitV("args over 64 KiB", map[string]any{"args": []string{"echo", strings.Repeat("a", api.MaxArgsBytes/2), strings.Repeat("b", api.MaxArgsBytes/2)}}, "args"),
		submit("env bad name", `{"args":["echo"],"env":{"1ABC":"x"}}`, "env"),
		submit("env name with dash", `{"args":["echo"],"env":{"A-B":"x"}}`, "env"),
		submit("env GANTRY_ prefix", `{"args":["echo"],"env":{"GANTRY_TOKEN":"x"}}`, "env"),
		submitV("env too many entries", map[string]any{"args": []string{"echo"}, "env": env(api.MaxEnvVars + 1)}, "env"),
		submitV("payload over 256 KiB", map[string]any{"args": []string{"cat"}, "payload": strings.Repeat("p", api.MaxPayloadBytes)}, "payload"),
		submit("timeout abc", `{"args":["echo"],"timeout":"abc"}`, "timeout"),
		submit("timeout -1s", `{"args":["echo"],"timeout":"-1s"}`, "timeout"),
		submit("timeout 1ms under the minimum", `{"args":["echo"],"timeout":"1ms"}`, "timeout"),
		submit("timeout 1000h over the maximum", `{"args":["echo"],"timeout":"1000h"}`, "timeout"),
		submit("negative max_attempts", `{"args":["echo"],"max_attempts":-1}`, "max_attempts"),
		submit("max_attempts 101", `{"args":["echo"],"max_attempts":101}`, "max_attempts"),
		submit("max_attempts 0", `{"args":["echo"],"max_attempts":0}`, "max_attempts"),
		submit("duplicate key", `{"args":["echo","a"],"args":["echo","b"]}`, "args"),
		submit("duplicate key in env", `{"args":["echo"],"env":{"A":"1","A":"2"}}`, "env.A"),
		submit("duplicate key in the payload", `{"args":["cat"],"payload":{"user":1,"user":2}}`, "payload.user"),
		submit("no_retry_exit_codes 0", `{"args":["echo"],"no_retry_exit_codes":[0]}`, "no_retry_exit_codes"),
		submit("no_retry_exit_codes 256", `{"args":["echo"],"no_retry_exit_codes":[2,256]}`, "no_retry_exit_codes"),
		submit("no_retry_exit_codes as string", `{"args":["echo"],"no_retry_exit_codes":"2"}`, "no_retry_exit_codes"),
		submit("priority 5000", `{"args":["echo"],"priority":5000}`, "priority"),
		submit("priority -5000", `{"args":["echo"],"priority":-5000}`, "priority"),
		submit("unknown type docker", `{"type":"docker","args":["echo"]}`, "type"),
		submitV("idempotency key too long", map[string]any{"args": []string{"echo"}, "idempotency_key": strings.Repeat("k", api.MaxIdempotencyKeyLen+1)}, "idempotency_key"),
		submit("idempotency key with spaces", `{"args":["echo"],"idempotency_key":"my key"}`, "idempotency_key"),
		{name: "idempotency key header with spaces", method: "POST", path: "/v1/tasks", body: []byte(`{"args":["echo"]}`), header: map[string]string{transport.HeaderIdempotencyKey: "my key"}, status: 400, code: api.CodeBadRequest, field: "idempotency_key"},
		{name: "idempotency key header too long", method: "POST", path: "/v1/tasks", body: []byte(`{"args":["echo"]}`), header: map[string]string{transport.HeaderIdempotencyKey: strings.Repeat("k", api.MaxIdempotencyKeyLen+1)}, status: 400, code: api.CodeBadRequest, field: "idempotency_key"},
		{name: "idempotency key header contradicts body", method: "POST", path: "/v1/tasks", body: []byte(`{"args":["echo"],"idempotency_key":"a"}`), header: map[string]string{transport.HeaderIdempotencyKey: "b"}, status: 400, code: api.CodeBadRequest, field: "idempotency_key"},
		{name: "body over 1 MiB", method: "POST", path: "/v1/tasks", body: badJSON(t, map[string]any{"args": []string{"cat"}, "payload": strings.Repeat("p", api.MaxRequestBytes)}), status: 413, code: api.CodeTooLarge, field: ""},
		submit("trailing garbage after JSON", `{"args":["echo"]} garbage`, ""),
		submit("two JSON objects", `{"args":["echo"]}{"args":["echo"]}`, ""),

		{name: "batch with 0 tasks", method: "POST", path: "/v1/tasks/batch", body: []byte(`{"tasks":[]}`), status: 400, code: api.CodeBadRequest, field: "tasks"},
		{name: "batch without tasks", method: "POST", path: "/v1/tasks/batch", body: []byte(`{}`), status: 400, code: api.CodeBadRequest, field: "tasks"},
		{name: "batch with 1001 tasks", method: "POST", path: "/v1/tasks/batch", body: badJSON(t, batch(api.MaxBatchTasks+1)), status: 400, code: api.CodeBadRequest, field: "tasks"},
		{name: "batch with one bad task", method: "POST", path: "/v1/tasks/batch", body: badJSON(t, badBatch), status: 400, code: api.CodeBadRequest, field: "tasks[3].args"},
		{name: "batch with max_attempts 0", method: "POST", path: "/v1/tasks/batch", body: badJSON(t, zeroBatch), status: 400, code: api.CodeBadRequest, field: "tasks[2].max_attempts"},
		{name: "batch with a duplicate key", method: "POST", path: "/v1/tasks/batch", body: []byte(`{"tasks":[{"args":["true"]},{"args":["true"],"priority":1,"priority":2}]}`), status: 400, code: api.CodeBadRequest, field: "tasks[1].priority"},
		{name: "batch reusing a key for two tasks", method: "POST", path: "/v1/tasks/batch", body: []byte(`{"tasks":[{"args":["true"],"idempotency_key":"twice"},{"args":["false"],"idempotency_key":"twice"}]}`), status: 422, code: api.CodeIdempotencyConflict, field: "tasks[1].idempotency_key"},
		{name: "batch with a bad timeout", method: "POST", path: "/v1/tasks/batch", body: []byte(`{"tasks":[{"args":["a"]},{"args":["b"],"timeout":"1ms"}]}`), status: 400, code: api.CodeBadRequest, field: "tasks[1].timeout"},
		{name: "batch malformed", method: "POST", path: "/v1/tasks/batch", body: []byte(`{"tasks":[`), status: 400, code: api.CodeBadRequest, field: ""},

		get("list state=bogus", "/v1/tasks?state=bogus", "state"),
		get("list limit=0", "/v1/tasks?limit=0", "limit"),
		get("list limit=abc", "/v1/tasks?limit=abc", "limit"),
		get("list limit=1001", "/v1/tasks?limit=1001", "limit"),
		get("list after not an ID", "/v1/tasks?after=a%20b", "after"),
		get("get wait=abc", "/v1/tasks/"+unknownID+"?wait=abc", "wait"),
		get("get wait=10h", "/v1/tasks/"+unknownID+"?wait=10h", "wait"),
		get("get wait=-1s", "/v1/tasks/"+unknownID+"?wait=-1s", "wait"),
		get("get id too long", "/v1/tasks/"+strings.Repeat("f", api.MaxTaskIDLen+1), "id"),
		get("get stale=maybe", "/v1/tasks/"+unknownID+"?stale=maybe", "stale"),
		{name: "get unknown id", method: "GET", path: "/v1/tasks/" + unknownID, status: 404, code: api.CodeNotFound, field: ""},
		{name: "cancel unknown id", method: "POST", path: "/v1/tasks/" + unknownID + "/cancel", status: 404, code: api.CodeNotFound, field: ""},
		{name: "cancel bad id", method: "POST", path: "/v1/tasks/a%20b/cancel", status: 400, code: api.CodeBadRequest, field: "id"},
		{name: "results with a bad outcome", method: "POST", path: "/v1/results", body: []byte(`{"results":[{"task_id":"` + unknownID + `","attempt":1,"worker":"w1","outcome":"exploded"}]}`), status: 400, code: api.CodeBadRequest, field: "results[0].outcome"},
		{name: "delete is not allowed", method: "DELETE", path: "/v1/tasks", status: 405, code: "method_not_allowed", field: ""},
		{name: "unknown endpoint", method: "GET", path: "/v1/jobs", status: 404, code: api.CodeNotFound, field: ""},
	}
}

func TestBadInput(t *testing.T) {
	c := NewCluster(t, Options{Masters: 3, Workers: 1})
	leader := c.Leader()
	follower := c.Followers()[0]
	cases := badInputCases(t)

	for _, target := range []struct {
		name string
		node *MasterNode
	}{{"follower", follower}, {"leader", leader}} {
		t.Run(target.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					status, hdr, body := badSend(t, c, tc.method, target.node.URL()+tc.path, tc.body, tc.header)
					var e api.Error
					if err := json.Unmarshal(body, &e); err != nil {
						t.Fatalf("%d with a body that is not JSON: %v: %.300s", status, err, body)
					}
					if status != tc.status || e.Code != tc.code || e.Field != tc.field {
						t.Errorf("got %d code %q field %q, want %d code %q field %q; message %q", status, e.Code, e.Field, tc.status, tc.code, tc.field, e.Message)
					}
					if ct := hdr.Get("Content-Type"); ct != "application/json" {
						t.Errorf("Content-Type %q", ct)
					}
					if e.Message == "" {
						t.Error("no message")
					}
					if tc.field != "" && !strings.Contains(e.Message, tc.field) {
						t.Errorf("message %q does not name the field %q", e.Message, tc.field)
					}
				})
			}
		})
	}

	// The cluster is healthy and nothing was created.
	for _, n := range c.Masters {
		c.Eventually(60*time.Second, n.ID+" to answer /readyz with 200", func() bool {
			status, _, _, err := badDo(t, "GET", n.URL()+"/readyz", nil, nil)
			return err == nil && status == http.StatusOK
		})
		if got := n.M.FSM().Counts(); got != (api.TaskCounts{}) {
			t.Errorf("%s holds tasks after bad input only: %+v", n.ID, got)
		}
	}
	cl := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cl.List(ctx, api.ListFilter{Limit: api.MaxListLimit}, transport.ReadOptions{})
	if err != nil || len(list.Tasks) != 0 {
		t.Fatalf("after bad input only, the list holds %d tasks (err %v): %+v", len(list.Tasks), err, list.Tasks)
	}

	// A valid submission still works, through the follower.
	status, _, body := badSend(t, c, "POST", follower.URL()+"/v1/tasks", []byte(`{"args":["sh","-c","echo still works"]}`), map[string]string{transport.HeaderIdempotencyKey: "bad-input-valid"})
	if status != http.StatusCreated && status != http.StatusOK {
		t.Fatalf("valid submission: %d %s", status, body)
	}
	var task api.Task
	if err := json.Unmarshal(body, &task); err != nil {
		t.Fatal(err)
	}
	checkSucceededOnce(t, c.WaitTerminal(cl, task.ID, 90*time.Second), "still works\n")
	want := api.TaskCounts{Succeeded: 1}
	for _, n := range c.Masters {
		c.Eventually(60*time.Second, n.ID+" to hold exactly the one task", func() bool {
			return n.M.FSM().Counts() == want
		})
	}
}

// TestBadInput_MalformedQueryEscape: a query parameter whose %-escape cannot
// be decoded is bad input too. The servers drop such a parameter silently
// (r.URL.Query() ignores parse errors), so ?after=%%% lists from the start
// instead of failing with a 400 naming "after".
func TestBadInput_MalformedQueryEscape(t *testing.T) {
	c := NewCluster(t, Options{Masters: 3, Workers: 1})
	leader := c.Leader()
	follower := c.Followers()[0]
	for _, n := range []*MasterNode{follower, leader} {
		for _, tc := range []struct{ path, field string }{
			{"/v1/tasks?after=%%%", "after"},
			{"/v1/tasks?limit=%zz", "limit"},
			{"/v1/tasks/" + api.FormatTaskID(1) + "?wait=%zz", "wait"},
		} {
			status, _, body := badSend(t, c, "GET", n.URL()+tc.path, nil, nil)
			var e api.Error
			_ = json.Unmarshal(body, &e)
			if status != http.StatusBadRequest || e.Field != tc.field {
				t.Errorf("%s: GET %s: got %d field %q, want 400 naming %q; body %.200s", n.ID, tc.path, status, e.Field, tc.field, body)
			}
		}
	}
}
