package fsm

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/gantryhq/gantry/api"
)

// fastLines are task lines for the fast path: as Persist writes them, and
// edits of them it must decline or decode exactly like json.Unmarshal.
func fastLines(t testing.TB) [][]byte {
	h := mustNewHarness(t)
	buildMixedState(t, h)
	h.mustSubmit(sec(70), specWith(func(s *api.TaskSpec) { s.Args = []string{"sh", "-c", "echo \"quoted\" \u00e9\n"} }))
	h.mustSubmit(sec(71), specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "k\u2603" }))
	h.mustSubmit(sec(72), specWith(func(s *api.TaskSpec) { s.Priority = -5; s.IdempotencyKey = "plain" }))
	var out [][]byte
	for _, task := range listAll(t, h.f, "", 100) {
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(&task); err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.TrimSpace(buf.Bytes()))
	}
	pending := string(out[len(out)-1]) // a never-run task: the fast path's shape
	for _, edit := range [][2]string{
		{`"priority":-5`, `"priority":-0`},
		{`"priority":-5`, `"priority":05`},
		{`"priority":-5`, `"priority":5.0`},
		{`"priority":-5`, `"priority":5e1`},
		{`"priority":-5`, `"priority":99999999999999999999`},
		{`"priority":-5`, `"priority":-`},
		{`"priority":-5`, `"priority":null`},
		{`"priority":-5`, `"Priority":7`},
		{`"priority":-5`, `"priority":7,"priority":8`},
		{`"priority":-5`, `"priority":-5,"unknown":1`},
		{`"attempts":[]`, `"attempts":null`},
		{`"attempts":[]`, `"attempts":[ ]`},
		{`"attempts":[]`, `"attempts":[],"args":[]`},
		{`"attempts":[]`, `"attempts":[],"args":["a","b"]`},
		{`"attempts":[]`, `"attempts":[],"args":["a",]`},
		{`"attempts":[]`, `"attempts":[],"args":null`},
		{`"state":"pending"`, `"state":"exploded"`},
		{`"state":"pending"`, `"state":"pend\ing"`},
		{`"state":"pending"`, `"state":"pend` + "\xff" + `ing"`},
		{`"state":"pending"`, `"state":"pend` + "\t" + `ing"`},
		{`"state":"pending"`, `"state": "pending"`},
		{`"created_at":"`, `"created_at":"x`},
		{`"created_at":"`, `"started_at":"2025-01-01T00:00:00+02:00","created_at":"`},
		{`"created_at":"`, `"not_before":"0001-01-01T00:00:00Z","created_at":"`},
		{`}`, `}}`},
		{`}`, `,}`},
		{`{`, `{{`},
	} {
		if !strings.Contains(pending, edit[0]) {
			t.Fatalf("%s is not in %s", edit[0], pending)
		}
		out = append(out, []byte(strings.Replace(pending, edit[0], edit[1], 1)))
	}
	return append(out, []byte(`{}`), []byte(`{"id":"0000000000000001"`), []byte(`[]`), []byte(``), []byte(`null`))
}

func checkDecodeTask(t *testing.T, line []byte) (fast bool) {
	t.Helper()
	var want api.Task
	wantErr := json.Unmarshal(line, &want)
	var fastTask api.Task
	if fastDecodeTask(line, &fastTask) {
		if wantErr != nil {
			t.Fatalf("fast path accepted %q, which json.Unmarshal refuses: %v", line, wantErr)
		}
		if !reflect.DeepEqual(fastTask, want) {
			t.Fatalf("fast path decoded %q as\n%#v\nwant\n%#v", line, fastTask, want)
		}
		fast = true
	}
	var got api.Task
	err := decodeTask(line, &got)
	if (err != nil) != (wantErr != nil) || (err == nil && !reflect.DeepEqual(got, want)) {
		t.Fatalf("decodeTask(%q) = %#v, %v; want %#v, %v", line, got, err, want, wantErr)
	}
	return fast
}

func TestDecodeTask_MatchesUnmarshal(t *testing.T) {
	fast := 0
	for _, line := range fastLines(t) {
		if checkDecodeTask(t, line) {
			fast++
		}
	}
	if fast < 10 {
		t.Fatalf("the fast path took only %d lines", fast)
	}
	// The backlog's line takes the fast path.
	task := api.Task{ID: "0000000000000001", Type: api.TypeExec, Args: []string{"sh", "-c", "echo hello"}, Timeout: "30m0s",
		MaxAttempts: 3, IdempotencyKey: "key", State: api.StatePending, CreatedAt: t0, Attempts: []api.AttemptRecord{}}
	line, _ := json.Marshal(&task)
	if !checkDecodeTask(t, line) {
		t.Fatalf("the fast path declined %s", line)
	}
}

func FuzzDecodeTask(f *testing.F) {
	for _, line := range fastLines(f) {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		checkDecodeTask(t, line)
	})
}
