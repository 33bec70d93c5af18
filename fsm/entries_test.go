package fsm

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

// sampleEntries returns one realistic entry of every type, fields filled.
func sampleEntries() []Entry {
	return []Entry{
		&SubmitEntry{At: t0, Tasks: []api.TaskSpec{
			spec("echo", "hello"),
			specWith(func(s *api.TaskSpec) {
				s.Args = []string{"sh", "-c", "exit 3"}
				s.Payload = json.RawMessage(`{"n": 1}`)
				s.Env = map[string]string{"A": "1", "B": "<&>"}
				s.Timeout = "90s"
				s.MaxAttempts = 5
				s.Priority = -7
				s.IdempotencyKey = "order-42"
			}),
		}},
		&AssignEntry{At: t0.Add(time.Second), Assignments: []Assignment{
			{TaskID: "0000000000000001", Attempt: 1, Worker: "w1"},
			{TaskID: "0000000000000002", Attempt: 3, Worker: "w2"},
		}},
		&ResultEntry{At: t0.Add(2 * time.Second), BackoffBase: 1500 * time.Millisecond, Results: []api.AttemptResult{
			{TaskID: "0000000000000001", Attempt: 1, Worker: "w1", Outcome: api.OutcomeSucceeded, Output: "hello\n", StartedAt: t0, FinishedAt: t0.Add(time.Second)},
			{TaskID: "0000000000000002", Attempt: 3, Worker: "w2", Outcome: api.OutcomeFailed, ExitCode: 3, Truncated: true, Error: "exit status 3"},
		}},
		&RequeueEntry{At: t0.Add(3 * time.Second), Outcome: api.OutcomeLost, Reason: "worker w2 dead", Attempts: []api.AttemptRef{
			{TaskID: "0000000000000002", Attempt: 4},
		}},
		&CancelEntry{At: t0.Add(4 * time.Second), TaskID: "0000000000000002"},
		&GCEntry{At: t0.Add(5 * time.Second), Before: t0, Limit: 100},
		&SetScaleEntry{At: t0.Add(6 * time.Second), Policy: api.ScalePolicy{Mode: api.ScaleAuto, Min: 1, Max: 8, BacklogPerWorker: 5, Cooldown: "1m0s"}},
		&ScaleOpEntry{At: t0.Add(7 * time.Second), Op: ScaleCreate, Prefix: "gantry-worker", Count: 2},
		&ScaleOpEntry{At: t0.Add(8 * time.Second), Op: ScaleDrain, Names: []string{"gantry-worker-1"}},
		&SubmitAssignEntry{At: t0.Add(9 * time.Second), Tasks: []api.TaskSpec{spec("echo", "now")}, Workers: []string{"w1"}},
	}
}

func TestEntryType_NumbersNeverChange(t *testing.T) {
	// Old logs and snapshots hold these bytes: renumbering breaks them.
	tests := []struct {
		typ  EntryType
		num  uint8
		name string
	}{
		{EntrySubmit, 1, "submit"},
		{EntryAssign, 2, "assign"},
		{EntryResult, 3, "result"},
		{EntryRequeue, 4, "requeue"},
		{EntryCancel, 5, "cancel"},
		{EntryGC, 6, "gc"},
		{EntrySetScale, 7, "set-scale"},
		{EntryScaleOp, 8, "scale-op"},
		{EntrySubmitAssign, 9, "submit-assign"},
		{0, 0, "entry(0)"},
		{10, 10, "entry(10)"},
	}
	for _, tt := range tests {
		if uint8(tt.typ) != tt.num {
			t.Errorf("%s = %d, want %d", tt.name, tt.typ, tt.num)
		}
		if got := tt.typ.String(); got != tt.name {
			t.Errorf("EntryType(%d).String() = %q, want %q", tt.num, got, tt.name)
		}
	}
}

func TestEncode_RoundTripsEveryType(t *testing.T) {
	for _, e := range sampleEntries() {
		t.Run(e.Type().String(), func(t *testing.T) {
			b := mustEncode(t, e)
			if EntryType(b[0]) != e.Type() {
				t.Fatalf("type byte %d, want %d", b[0], e.Type())
			}
			if !json.Valid(b[1:]) {
				t.Fatalf("body is not JSON: %q", b[1:])
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("decoded\n%#v\nwant\n%#v", got, e)
			}
		})
	}
}

func TestDecode_GoldenBytes(t *testing.T) {
	// Bytes as written by this version: later versions must decode them the
	// same way (the log outlives the binary).
	tests := []struct {
		data string
		want Entry
	}{
		{"\x01" + `{"at":"2025-03-01T12:00:00Z","tasks":[{"type":"exec","args":["true"],"timeout":"30m0s","max_attempts":3,"priority":2,"idempotency_key":"k"}]}` + "\n",
			&SubmitEntry{At: t0, Tasks: []api.TaskSpec{{Type: "exec", Args: []string{"true"}, Timeout: "30m0s", MaxAttempts: 3, Priority: 2, IdempotencyKey: "k"}}}},
		{"\x02" + `{"at":"2025-03-01T12:00:00Z","assignments":[{"task_id":"0000000000000001","attempt":1,"worker":"w1"}]}` + "\n",
			&AssignEntry{At: t0, Assignments: []Assignment{{TaskID: "0000000000000001", Attempt: 1, Worker: "w1"}}}},
		{"\x03" + `{"at":"2025-03-01T12:00:00Z","backoff_base":1000000000,"results":[{"task_id":"0000000000000001","attempt":1,"worker":"w1","outcome":"failed","exit_code":2,"output":"x","truncated":false,"started_at":"0001-01-01T00:00:00Z","finished_at":"0001-01-01T00:00:00Z"}]}` + "\n",
			&ResultEntry{At: t0, BackoffBase: time.Second, Results: []api.AttemptResult{{TaskID: "0000000000000001", Attempt: 1, Worker: "w1", Outcome: api.OutcomeFailed, ExitCode: 2, Output: "x"}}}},
		{"\x04" + `{"at":"2025-03-01T12:00:00Z","outcome":"undelivered","reason":"push failed","attempts":[{"task_id":"0000000000000001","attempt":1}]}` + "\n",
			&RequeueEntry{At: t0, Outcome: api.OutcomeUndelivered, Reason: "push failed", Attempts: []api.AttemptRef{{TaskID: "0000000000000001", Attempt: 1}}}},
		{"\x05" + `{"at":"2025-03-01T12:00:00Z","task_id":"0000000000000001"}` + "\n",
			&CancelEntry{At: t0, TaskID: "0000000000000001"}},
		{"\x06" + `{"at":"2025-03-01T12:00:00Z","before":"2025-03-01T11:00:00Z","limit":10}` + "\n",
			&GCEntry{At: t0, Before: t0.Add(-time.Hour), Limit: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.want.Type().String(), func(t *testing.T) {
			got, err := Decode([]byte(tt.data))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("decoded\n%#v\nwant\n%#v", got, tt.want)
			}
			if b := mustEncode(t, got); string(b) != tt.data {
				t.Fatalf("re-encoded\n%q\nwant\n%q", b, tt.data)
			}
		})
	}
}

func TestDecode_RejectsCorruptEntries(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"nil", ""},
		{"zero type", "\x00{}"},
		{"zero type alone", "\x00"},
		{"unknown type", "\x0a{}"},
		{"type 255", "\xff{}"},
		{"no body", "\x01"},
		{"whitespace body", "\x01 \n"},
		{"truncated body", "\x01{\"at\":"},
		{"array body", "\x01[]"},
		{"string body", "\x05\"x\""},
		{"wrong field type", "\x01{\"tasks\":5}"},
		{"duration as string", "\x03{\"backoff_base\":\"1s\"}"},
		{"bad time", "\x05{\"at\":\"yesterday\"}"},
		{"trailing value", "\x05{} {}"},
		{"trailing garbage", "\x05{}x"},
		{"trailing brace", "\x05{\"task_id\":\"0000000000000001\"}}"},
		{"trailing bracket", "\x05{}]"},
		{"trailing brace after newline", "\x05{}\n}"},
		{"json text without type byte", `{"at":"2025-03-01T12:00:00Z"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode([]byte(tt.data))
			if !errors.Is(err, ErrCorruptEntry) {
				t.Fatalf("Decode(%q) = %#v, %v; want an error wrapping ErrCorruptEntry", tt.data, e, err)
			}
			if e != nil {
				t.Fatalf("Decode(%q) returned an entry with its error", tt.data)
			}
		})
	}
}

func TestDecode_AcceptsWhitespaceNullAndUnknownFields(t *testing.T) {
	tests := []struct {
		name string
		data string
		want Entry
	}{
		{"trailing whitespace", "\x05{\"task_id\":\"a\"} \n\t", &CancelEntry{TaskID: "a"}},
		{"leading whitespace", "\x05 \n{\"task_id\":\"a\"}", &CancelEntry{TaskID: "a"}},
		{"null body", "\x06null", &GCEntry{}},
		{"unknown field", "\x06{\"limit\":3,\"future_field\":[1,2]}", &GCEntry{Limit: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.data))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("decoded %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestDecode_ErrorNamesTheType(t *testing.T) {
	_, err := Decode([]byte("\x04{"))
	if err == nil || !strings.Contains(err.Error(), "requeue") {
		t.Fatalf("error %v does not name the entry type", err)
	}
}

func TestEncode_RefusesTimesJSONCannotHold(t *testing.T) {
	// The leader encodes before proposing, so an unrepresentable time is an
	// error there and never reaches the log.
	e := &CancelEntry{At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), TaskID: "0000000000000001"}
	b, err := Encode(e)
	if err == nil || b != nil || !strings.Contains(err.Error(), "cancel") {
		t.Fatalf("Encode = %q, %v; want an error naming the entry type", b, err)
	}
}
