package fsm

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
	"unsafe"

	"github.com/gantryhq/gantry/api"
)

// decodeTask decodes one task line of a snapshot. It is json.Unmarshal into
// an api.Task, with a fast path for the commonest line, the one a backlog is
// made of: a task that never ran, with flat fields only (no payload, env,
// result or attempt history), exactly as Persist's encoder writes it. The
// fast path accepts only lines on which it gives the same task as
// json.Unmarshal; on anything else (escapes, non-ASCII, unknown keys, nested
// values, other spacing, ...) it declines and json.Unmarshal decides.
// TestDecodeTask_MatchesUnmarshal and FuzzDecodeTask check the equivalence.
func decodeTask(line []byte, t *api.Task) error {
	if fastDecodeTask(line, t) {
		return nil
	}
	*t = api.Task{}
	return json.Unmarshal(line, t)
}

// fastDecodeTask decodes line into *t (which must be zero) and reports
// whether it could; when it could not, *t holds garbage.
func fastDecodeTask(line []byte, t *api.Task) bool {
	p := fastParser{b: line}
	if !p.lit('{') {
		return false
	}
	if p.lit('}') {
		return p.end()
	}
	for {
		key, ok := p.str()
		if !ok || !p.lit(':') {
			return false
		}
		switch key {
		case "id":
			t.ID, ok = p.strVal()
		case "type":
			t.Type, ok = p.strVal()
		case "timeout":
			t.Timeout, ok = p.strVal()
		case "idempotency_key":
			t.IdempotencyKey, ok = p.strVal()
		case "worker":
			t.Worker, ok = p.strVal()
		case "state":
			var s string
			s, ok = p.strVal()
			t.State = api.TaskState(s)
		case "max_attempts":
			t.MaxAttempts, ok = p.int()
		case "priority":
			t.Priority, ok = p.int()
		case "attempt":
			t.Attempt, ok = p.int()
		case "failures":
			t.Failures, ok = p.int()
		case "lost":
			t.Lost, ok = p.int()
		case "created_at":
			ok = p.time(&t.CreatedAt)
		case "started_at":
			ok = p.time(&t.StartedAt)
		case "finished_at":
			ok = p.time(&t.FinishedAt)
		case "not_before":
			ok = p.time(&t.NotBefore)
		case "args":
			t.Args, ok = p.strings()
		case "attempts":
			// Only an empty history: records are nested objects.
			ok = p.lit('[') && p.lit(']')
			t.Attempts = []api.AttemptRecord{}
		default:
			return false
		}
		if !ok {
			return false
		}
		if p.lit('}') {
			return p.end()
		}
		if !p.lit(',') {
			return false
		}
	}
}

// fastParser reads the compact JSON that encoding/json writes. Every method
// reports false on anything it does not handle exactly like encoding/json.
type fastParser struct {
	b []byte
	i int
}

func (p *fastParser) lit(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *fastParser) end() bool { return p.i == len(p.b) }

// rawStr returns the bytes of a string without escapes, control characters
// or bytes outside ASCII (json.Unmarshal rewrites invalid UTF-8).
func (p *fastParser) rawStr() ([]byte, bool) {
	if !p.lit('"') {
		return nil, false
	}
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, true
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf:
			return nil, false
		}
		p.i++
	}
	return nil, false
}

// str returns a string without allocating (for keys).
func (p *fastParser) str() (string, bool) {
	s, ok := p.rawStr()
	if !ok {
		return "", false
	}
	return unsafeString(s), true
}

func (p *fastParser) strVal() (string, bool) {
	s, ok := p.rawStr()
	return string(s), ok
}

// int reads an integer as encoding/json accepts it for an int field.
func (p *fastParser) int() (int, bool) {
	start := p.i
	if p.i < len(p.b) && p.b[p.i] == '-' {
		p.i++
	}
	digits := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	if p.i == digits || (p.b[digits] == '0' && p.i-digits > 1) {
		return 0, false // no digits, or a leading zero (invalid JSON)
	}
	if p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		return 0, false
	}
	n, err := strconv.ParseInt(unsafeString(p.b[start:p.i]), 10, strconv.IntSize)
	return int(n), err == nil
}

// time reads a time through time.Time's UnmarshalJSON, as encoding/json does.
type timeUnmarshaler interface{ UnmarshalJSON([]byte) error }

func (p *fastParser) time(t timeUnmarshaler) bool {
	start := p.i
	if _, ok := p.rawStr(); !ok {
		return false
	}
	return t.UnmarshalJSON(p.b[start:p.i]) == nil
}

// strings reads a non-null array of strings.
func (p *fastParser) strings() ([]string, bool) {
	if !p.lit('[') {
		return nil, false
	}
	out := []string{}
	if p.lit(']') {
		return out, true
	}
	for {
		s, ok := p.strVal()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if p.lit(']') {
			return out, true
		}
		if !p.lit(',') {
			return nil, false
		}
	}
}

// unsafeString views b as a string for a lookup or a parse that does not keep
// it.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
