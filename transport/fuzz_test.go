package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

// submitSeeds are bodies of POST /v1/tasks, valid and not.
var submitSeeds = []string{
	`{"args":["echo","hi"]}`,
	`{"type":"exec","args":["sh","-c","exit 3"],"timeout":"5s","max_attempts":1,"priority":-1000,"idempotency_key":"k-1"}`,
	`{"args":["cat"],"payload":{ "a" : [1, 2, {"b": null}] },"env":{"NAME":"world","_X1":""}}`,
	`{"args":["cat"],"payload":"text <&> \u2028"}`,
	`{"args":["cat"],"payload":null}`,
	`{"args":["x"],"timeout":"+1.5h"}`,
	`{"args":["x"],"timeout":"0.1000000001s"}`,
	`null`,
	``,
	`   `,
	`{`,
	`{"args":`,
	`[]`,
	`"str"`,
	`{"args":"echo"}`,
	`{"args":["a",1]}`,
	`{"args":[]}`,
	`{"args":[""]}`,
	`{"args":["a\u0000b"]}`,
	`{"args":["\ud800"]}`,
	`{"args":["x"],"bogus":1}`,
	`{"args":["x"],"":1}`,
	`{"args":["x"],"a\"b":1}`,
	`{"ARGS":["x"]}`,
	`{"args":["x"],"max_attempts":"3"}`,
	`{"args":["x"],"max_attempts":-1}`,
	`{"args":["x"],"max_attempts":101}`,
	`{"args":["x"],"max_attempts":1e3}`,
	`{"args":["x"],"priority":1.5}`,
	`{"args":["x"],"priority":5000}`,
	`{"args":["x"],"priority":99999999999999999999}`,
	`{"args":["x"],"env":{"A":1}}`,
	`{"args":["x"],"env":{"1A":"x"}}`,
	`{"args":["x"],"env":{"GANTRY_X":"x"}}`,
	`{"args":["x"],"env":[]}`,
	`{"args":["x"],"timeout":5}`,
	`{"args":["x"],"timeout":"abc"}`,
	`{"args":["x"],"timeout":"-1s"}`,
	`{"args":["x"],"timeout":"1ms"}`,
	`{"args":["x"],"timeout":"1000h"}`,
	`{"args":["x"],"type":"docker"}`,
	`{"args":["x"],"idempotency_key":"a b"}`,
	`{"args":["x"],"idempotency_key":"\u00a0\u0085"}`,
	`{"args":["x"]} xyz`,
	`{"args":["x"]}{"args":["y"]}`,
	`{"args":["x"]}}`,
	`{"args":["x"],"payload":{"a":}}`,
	`{"args":["x"],"args":["y"]}`,
}

var submitHeaders = []string{"", "k-1", "a b", strings.Repeat("k", api.MaxIdempotencyKeyLen+1)}

// checkDecodeError checks what every decoding error must be: an *api.Error
// with status 400 (or 413), a code and a message, naming the field of a type
// error or unknown field when the input names one.
func checkDecodeError(t *testing.T, body []byte, v any, err error) {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T %v is not an *api.Error", err, err)
	}
	if e.Status != 400 && e.Status != 413 {
		t.Fatalf("error %v has status %d, want 400 or 413", e, e.Status)
	}
	if e.Code != codeForStatus(e.Status) || e.Message == "" {
		t.Fatalf("error %+v lacks its code or message", e)
	}
	// The same decoding by encoding/json tells whether a field was named.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	jerr := dec.Decode(v)
	var typ *json.UnmarshalTypeError
	if errors.As(jerr, &typ) && typ.Field != "" && e.Field == "" {
		t.Fatalf("type error at field %q reported without a field: %+v", typ.Field, e)
	}
	if jerr != nil && strings.HasPrefix(jerr.Error(), "json: unknown field ") && e.Field == "" {
		t.Fatalf("%v reported without a field: %+v", jerr, e)
	}
}

// checkSpec checks that a spec DecodeSubmit or DecodeBatch accepted is valid
// and normalized: Normalize again changes nothing, and encoding it and
// decoding it again yields the same spec.
func checkSpec(t *testing.T, s api.TaskSpec) {
	t.Helper()
	if s.Type != api.TypeExec {
		t.Fatalf("type %q", s.Type)
	}
	if len(s.Args) == 0 || len(s.Args) > api.MaxArgs || s.Args[0] == "" {
		t.Fatalf("args %q", s.Args)
	}
	d, err := time.ParseDuration(s.Timeout)
	if err != nil || d < api.MinTimeout || d > api.MaxTimeout || d.String() != s.Timeout {
		t.Fatalf("timeout %q is not a normalized duration in range", s.Timeout)
	}
	if s.MaxAttempts < 1 || s.MaxAttempts > api.MaxMaxAttempts {
		t.Fatalf("max_attempts %d", s.MaxAttempts)
	}
	if s.Priority < api.MinPriority || s.Priority > api.MaxPriority {
		t.Fatalf("priority %d", s.Priority)
	}
	if len(s.IdempotencyKey) > api.MaxIdempotencyKeyLen || strings.ContainsAny(s.IdempotencyKey, " \t\r\n\x00") {
		t.Fatalf("idempotency key %q", s.IdempotencyKey)
	}
	if len(s.Payload) > 0 && (!json.Valid(s.Payload) || len(s.Payload) > api.MaxPayloadBytes) {
		t.Fatalf("payload %q", s.Payload)
	}

	again := cloneSpec(s)
	if err := again.Normalize(""); err != nil {
		t.Fatalf("Normalize of a normalized spec failed: %v\nspec %+v", err, s)
	}
	if !reflect.DeepEqual(again, s) {
		t.Fatalf("Normalize is not idempotent:\nonce  %+v\ntwice %+v", s, again)
	}

	// What a client sends for it decodes to the same spec (the payload as
	// the same JSON value: encoding may escape differently).
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	back, err := DecodeSubmit(b, "")
	if err != nil {
		t.Fatalf("re-decoding %s: %v", b, err)
	}
	if !sameJSON(back.Payload, s.Payload) {
		t.Fatalf("payload %s came back as %s", s.Payload, back.Payload)
	}
	back.Payload, s.Payload = nil, nil
	if len(back.Env) == 0 && len(s.Env) == 0 {
		back.Env, s.Env = nil, nil
	}
	if !reflect.DeepEqual(back, s) {
		t.Fatalf("round trip changed the spec:\nsent %+v\ngot  %+v", s, back)
	}
}

func cloneSpec(s api.TaskSpec) api.TaskSpec {
	c := s
	c.Args = append([]string(nil), s.Args...)
	if s.Env != nil {
		c.Env = make(map[string]string, len(s.Env))
		for k, v := range s.Env {
			c.Env[k] = v
		}
	}
	if s.Payload != nil {
		c.Payload = append(json.RawMessage(nil), s.Payload...)
	}
	return c
}

func sameJSON(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func FuzzDecodeSubmit(f *testing.F) {
	for i, s := range submitSeeds {
		f.Add([]byte(s), submitHeaders[i%len(submitHeaders)])
	}
	f.Add([]byte(`{"args":["x"],"idempotency_key":"k-1"}`), "k-1")
	f.Add([]byte(`{"args":["x"],"idempotency_key":"k-1"}`), "k-2")
	f.Add([]byte(`{"args":["x"],"payload":"`+strings.Repeat("p", api.MaxPayloadBytes)+`"}`), "")
	f.Fuzz(func(t *testing.T, body []byte, header string) {
		spec, err := DecodeSubmit(body, header)
		if err != nil {
			checkDecodeError(t, body, &api.TaskSpec{}, err)
			return
		}
		if header != "" && spec.IdempotencyKey != header {
			t.Fatalf("key %q, want the header's %q", spec.IdempotencyKey, header)
		}
		checkSpec(t, spec)
	})
}

func FuzzDecodeBatch(f *testing.F) {
	for _, s := range submitSeeds {
		if s != "" {
			f.Add([]byte(`{"tasks":[` + s + `]}`))
			f.Add([]byte(`{"tasks":[{"args":["ok"]},` + s + `]}`))
		}
	}
	for _, s := range []string{
		`{"tasks":[]}`, `{"tasks":null}`, `{}`, `{"tasks":{}}`, `{"tasks":[1]}`, `{"tasks":[null]}`,
		`{"tasks":[{"args":["a"]}],"x":1}`, `{"tasks":[{"args":["a"]}]} 1`,
		`{"tasks":[{"args":["a"]},{"args":["b"],"idempotency_key":"k"},{"args":["c"],"priority":3}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"tasks":[` + strings.Repeat(`{"args":["x"]},`, api.MaxBatchTasks) + `{"args":["x"]}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		specs, err := DecodeBatch(body)
		if err != nil {
			checkDecodeError(t, body, &api.BatchRequest{}, err)
			var e *api.Error
			errors.As(err, &e)
			// An error inside a task names it: tasks[i].field, or tasks[i]
			// when the element itself is not an object.
			if strings.HasPrefix(e.Field, "tasks[") && !strings.Contains(e.Field, "].") && !strings.HasSuffix(e.Field, "]") {
				t.Fatalf("field %q", e.Field)
			}
			return
		}
		if len(specs) == 0 || len(specs) > api.MaxBatchTasks {
			t.Fatalf("accepted a batch of %d tasks", len(specs))
		}
		for _, s := range specs {
			checkSpec(t, s)
		}
	})
}

func FuzzParseListQuery(f *testing.F) {
	for _, s := range []string{
		"", "state=pending", "state=running&limit=1000", "limit=1", "limit=0", "limit=1001", "limit=-1", "limit=abc",
		"limit=+5", "limit=0x10", "limit=9999999999999999999999", "state=bogus", "state=", "after=0000000000000001",
		"after=a%20b", "after=%%%", "after=" + strings.Repeat("a", api.MaxTaskIDLen+1), "state=pending&state=failed",
		"after=%00", "state=PENDING", "limit=%201", "stale=true&wait=1s",
	} {
		f.Add(s)
	}
	valid := map[string]bool{"state": true, "after": true, "limit": true}
	f.Fuzz(func(t *testing.T, raw string) {
		q, _ := url.ParseQuery(raw)
		lf, err := ParseListQuery(q)
		if err != nil {
			var e *api.Error
			if !errors.As(err, &e) || e.Status != 400 || e.Code != api.CodeBadRequest || e.Message == "" {
				t.Fatalf("error %T %+v is not a 400 *api.Error", err, err)
			}
			if !valid[e.Field] {
				t.Fatalf("error names field %q", e.Field)
			}
			return
		}
		if lf.Limit < 1 || lf.Limit > api.MaxListLimit {
			t.Fatalf("limit %d", lf.Limit)
		}
		if lf.State != "" && !lf.State.Valid() {
			t.Fatalf("state %q", lf.State)
		}
		if lf.After != "" && api.ValidTaskID(lf.After) != nil {
			t.Fatalf("after %q", lf.After)
		}
		if got := q.Get("state"); api.TaskState(got) != lf.State {
			t.Fatalf("state %q parsed as %q", got, lf.State)
		}
	})
}
