package fsm

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gantryhq/gantry/api"
)

// The binary entry format (ProtoBinary).
//
// The hot entries (submit, submit-assign, assign, result) are written once by
// the leader and decoded by every replica, so their encoding is a large part
// of the cost of a task. From ProtoBinary on, the leader writes them in a
// compact binary form instead of JSON: the type byte with binaryFlag set,
// then a version byte (binaryVersion), then the fields in declaration order:
//
//   - integers as varints (unsigned: uvarint), booleans as one byte 0 or 1;
//   - strings as a uvarint length and the bytes, always valid UTF-8: the
//     encoder replaces each invalid byte with U+FFFD, exactly as encoding/json
//     does, so a binary entry holds the same strings a JSON one would;
//   - slices, maps and raw JSON as a uvarint n+1 and n elements, 0 meaning
//     nil, so that nil and empty survive the round trip exactly; map entries
//     sorted by key, so equal entries encode to equal bytes; a raw JSON
//     payload must be valid JSON (checked both ways), as in a JSON entry;
//   - times as a flag byte (0: the zero time), then the Unix seconds
//     (varint) and the nanoseconds (uvarint), decoded in UTC. Like JSON,
//     the format holds years 0 to 9999 only: the snapshot, which is JSON,
//     must be able to hold every time the state does.
//
// Decoding checks every length against the bytes left, so a corrupt entry
// is an error and never a panic or a huge allocation. JSON entries stay
// readable forever: a log may mix both.
//
// Version 2 (entry format ProtoNoRetry) adds, at the end of each spec, its
// no_retry_exit_codes (a list of varints, 0 for nil), and after a result
// entry's backoff base the entry's default no-retry codes and KeepOutput.
// Version 1 entries decode as before, with those fields zero.
const (
	binaryFlag    = 0x80
	binaryVersion = 2
)

// ProtoBinary is the entry format that added the binary encoding.
const ProtoBinary = 3

// hasBinary reports whether entries of type t have a binary form.
func hasBinary(t EntryType) bool {
	switch t {
	case EntrySubmit, EntrySubmitAssign, EntryAssign, EntryResult:
		return true
	}
	return false
}

// EncodeFormat returns the log bytes of e in the newest encoding that
// format (an entry format level, as gossiped: 1 to Proto) allows: binary
// for the hot entry types from ProtoBinary on, JSON otherwise.
func EncodeFormat(e Entry, format int) ([]byte, error) {
	if format < ProtoBinary || !hasBinary(e.Type()) {
		return Encode(e)
	}
	version := byte(binaryVersion)
	if format < ProtoNoRetry {
		version = 1
	}
	w := benc{b: make([]byte, 0, 256), version: version}
	w.b = append(w.b, byte(e.Type())|binaryFlag, version)
	switch e := e.(type) {
	case *SubmitEntry:
		w.time(e.At)
		w.specs(e.Tasks)
	case *SubmitAssignEntry:
		w.time(e.At)
		w.specs(e.Tasks)
		w.strs(e.Workers)
	case *AssignEntry:
		w.time(e.At)
		w.count(len(e.Assignments), e.Assignments == nil)
		for _, a := range e.Assignments {
			w.str(a.TaskID)
			w.int(int64(a.Attempt))
			w.str(a.Worker)
		}
	case *ResultEntry:
		w.time(e.At)
		w.int(int64(e.BackoffBase))
		if version >= 2 {
			w.ints(e.NoRetryExitCodes)
			w.int(int64(e.KeepOutput))
		} else if e.NoRetryExitCodes != nil || e.KeepOutput != 0 {
			w.fail("no_retry_exit_codes and keep_output need binary version 2")
		}
		w.count(len(e.Results), e.Results == nil)
		for i := range e.Results {
			w.result(&e.Results[i])
		}
	default:
		return nil, fmt.Errorf("encode %s entry: no binary form", e.Type())
	}
	if w.err != nil {
		return nil, fmt.Errorf("encode %s entry: %w", e.Type(), w.err)
	}
	return w.b, nil
}

// decodeBinary parses the body (after the type byte) of a binary entry.
func decodeBinary(t EntryType, body []byte) (Entry, error) {
	r := bdec{b: body}
	r.version = r.byte()
	if r.err == nil && (r.version < 1 || r.version > binaryVersion) {
		return nil, fmt.Errorf("%w: %s: unknown binary version %d", ErrCorruptEntry, t, r.version)
	}
	var e Entry
	switch t {
	case EntrySubmit:
		s := &SubmitEntry{At: r.time()}
		s.Tasks = r.specs()
		e = s
	case EntrySubmitAssign:
		s := &SubmitAssignEntry{At: r.time()}
		s.Tasks = r.specs()
		s.Workers = r.strs()
		e = s
	case EntryAssign:
		a := &AssignEntry{At: r.time()}
		if n, ok := r.count(3); ok { // the smallest assignment is 3 bytes
			a.Assignments = make([]Assignment, n)
			for i := range a.Assignments {
				x := &a.Assignments[i]
				x.TaskID = r.str()
				x.Attempt = r.intv()
				x.Worker = r.str()
			}
		}
		e = a
	case EntryResult:
		res := &ResultEntry{At: r.time(), BackoffBase: time.Duration(r.int())}
		if r.version >= 2 {
			res.NoRetryExitCodes = r.ints()
			res.KeepOutput = r.intv()
		}
		if n, ok := r.count(10); ok { // the smallest result is 10 bytes
			res.Results = make([]api.AttemptResult, n)
			for i := range res.Results {
				r.result(&res.Results[i])
			}
		}
		e = res
	default:
		return nil, fmt.Errorf("%w: %s has no binary form", ErrCorruptEntry, t)
	}
	if r.err == nil && len(r.b) > 0 {
		r.err = fmt.Errorf("%d bytes of trailing data", len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: %s binary body: %v", ErrCorruptEntry, t, r.err)
	}
	return e, nil
}

// benc appends binary fields of one version; err holds the first value it
// cannot write.
type benc struct {
	b       []byte
	version byte
	err     error
}

func (w *benc) fail(format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf(format, args...)
	}
}

func (w *benc) ints(v []int) {
	w.count(len(v), v == nil)
	for _, x := range v {
		w.int(int64(x))
	}
}

func (w *benc) uint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }
func (w *benc) int(v int64)   { w.b = binary.AppendVarint(w.b, v) }

func (w *benc) bool(v bool) {
	if v {
		w.b = append(w.b, 1)
	} else {
		w.b = append(w.b, 0)
	}
}

func (w *benc) str(s string) {
	s = jsonString(s)
	w.uint(uint64(len(s)))
	w.b = append(w.b, s...)
}

// jsonString returns s as a JSON entry would carry it: encoding/json writes
// each byte that is not part of valid UTF-8 as U+FFFD. The API refuses
// invalid UTF-8 in what users send, but a worker's ID, say, is not checked:
// a binary entry must hold the same strings a JSON one would, or replicas
// restored from a snapshot (JSON) would differ from those that applied the
// log.
func jsonString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var sb strings.Builder
	sb.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			sb.WriteRune(utf8.RuneError)
		} else {
			sb.WriteString(s[i : i+size])
		}
		i += size
	}
	return sb.String()
}

// count writes n+1, or 0 for nil.
func (w *benc) count(n int, isNil bool) {
	if isNil {
		w.uint(0)
		return
	}
	w.uint(uint64(n) + 1)
}

func (w *benc) strs(ss []string) {
	w.count(len(ss), ss == nil)
	for _, s := range ss {
		w.str(s)
	}
}

func (w *benc) raw(p json.RawMessage) {
	if len(p) > 0 && !json.Valid(p) && w.err == nil {
		w.err = fmt.Errorf("payload is not valid JSON")
	}
	w.count(len(p), p == nil)
	w.b = append(w.b, p...)
}

func (w *benc) env(m map[string]string) {
	w.count(len(m), m == nil)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		// Two keys that differ only in invalid UTF-8 would become one.
		if i > 0 && jsonString(k) == jsonString(keys[i-1]) && w.err == nil {
			w.err = fmt.Errorf("env keys %q and %q are the same once made valid UTF-8", keys[i-1], k)
		}
		w.str(k)
		w.str(m[k])
	}
}

// jsonYear reports whether JSON (RFC 3339) can hold a time of year y.
func jsonYear(y int) bool { return y >= 0 && y <= 9999 }

func (w *benc) time(t time.Time) {
	if t.IsZero() {
		w.b = append(w.b, 0)
		return
	}
	if y := t.UTC().Year(); !jsonYear(y) && w.err == nil {
		w.err = fmt.Errorf("time %v: year %d is outside 0-9999", t, y)
	}
	w.b = append(w.b, 1)
	w.int(t.Unix())
	w.uint(uint64(t.Nanosecond()))
}

func (w *benc) specs(specs []api.TaskSpec) {
	w.count(len(specs), specs == nil)
	for i := range specs {
		s := &specs[i]
		w.str(s.Type)
		w.strs(s.Args)
		w.raw(s.Payload)
		w.env(s.Env)
		w.str(s.Timeout)
		w.int(int64(s.MaxAttempts))
		w.int(int64(s.Priority))
		w.str(s.IdempotencyKey)
		if w.version >= 2 {
			w.ints(s.NoRetryExitCodes)
		} else if s.NoRetryExitCodes != nil {
			w.fail("no_retry_exit_codes needs binary version 2")
		}
	}
}

func (w *benc) result(x *api.AttemptResult) {
	w.str(x.TaskID)
	w.int(int64(x.Attempt))
	w.str(x.Worker)
	w.str(string(x.Outcome))
	w.int(int64(x.ExitCode))
	w.str(x.Output)
	w.bool(x.Truncated)
	w.str(x.Error)
	w.time(x.StartedAt)
	w.time(x.FinishedAt)
}

// bdec reads binary fields of one version. The first error sticks: every
// later read returns a zero value, and the caller checks err once at the
// end.
type bdec struct {
	b       []byte
	version byte
	err     error
}

func (r *bdec) ints() []int {
	n, ok := r.count(1)
	if !ok {
		return nil
	}
	v := make([]int, n)
	for i := range v {
		v[i] = r.intv()
	}
	return v
}

func (r *bdec) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
	r.b = nil
}

func (r *bdec) byte() byte {
	if len(r.b) == 0 {
		r.fail("truncated")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *bdec) uint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad uvarint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *bdec) int() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// intv reads a varint that must fit an int.
func (r *bdec) intv() int {
	v := r.int()
	if v < math.MinInt || v > math.MaxInt {
		r.fail("integer out of range")
		return 0
	}
	return int(v)
}

func (r *bdec) bool() bool {
	switch r.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	r.fail("bad boolean")
	return false
}

// take returns the next n bytes.
func (r *bdec) take(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.fail("truncated")
		return nil
	}
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p
}

func (r *bdec) str() string {
	n := r.uint()
	if n == 0 {
		return ""
	}
	p := r.take(n)
	if r.err == nil && !utf8.Valid(p) {
		r.fail("a string is not valid UTF-8")
		return ""
	}
	return string(p)
}

// count reads n+1 (0: nil). Every element takes at least minSize bytes, so
// a count larger than the bytes left can only be corrupt: checking it bounds
// the allocation by the entry's size.
func (r *bdec) count(minSize int) (int, bool) {
	c := r.uint()
	if c == 0 || r.err != nil {
		return 0, false
	}
	n := c - 1
	if n > uint64(len(r.b))/uint64(minSize) {
		r.fail("count %d exceeds the data", n)
		return 0, false
	}
	return int(n), true
}

func (r *bdec) strs() []string {
	n, ok := r.count(1)
	if !ok {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = r.str()
	}
	return ss
}

// raw reads a JSON payload. Like a JSON entry, a binary one can only carry
// valid JSON there: the state must stay encodable for the API and snapshots.
func (r *bdec) raw() json.RawMessage {
	n, ok := r.count(1)
	if !ok {
		return nil
	}
	p := slices.Clone(r.take(uint64(n)))
	if len(p) > 0 && r.err == nil && !json.Valid(p) {
		r.fail("payload is not valid JSON")
	}
	return p
}

func (r *bdec) env() map[string]string {
	n, ok := r.count(2)
	if !ok {
		return nil
	}
	m := make(map[string]string, n)
	for range n {
		k := r.str()
		if _, dup := m[k]; dup && r.err == nil {
			r.fail("duplicate env key %q", k)
		}
		m[k] = r.str()
	}
	return m
}

func (r *bdec) time() time.Time {
	switch r.byte() {
	case 0:
		return time.Time{}
	case 1:
		sec := r.int()
		ns := r.uint()
		if ns >= 1e9 {
			r.fail("bad nanoseconds")
			return time.Time{}
		}
		t := time.Unix(sec, int64(ns)).UTC()
		if t.IsZero() {
			r.fail("zero time with the non-zero flag")
		}
		if !jsonYear(t.Year()) {
			r.fail("year %d is outside 0-9999", t.Year())
			return time.Time{}
		}
		return t
	}
	r.fail("bad time flag")
	return time.Time{}
}

// specs reads task specs. The smallest spec is 8 bytes.
func (r *bdec) specs() []api.TaskSpec {
	n, ok := r.count(8)
	if !ok {
		return nil
	}
	specs := make([]api.TaskSpec, n)
	for i := range specs {
		s := &specs[i]
		s.Type = r.str()
		s.Args = r.strs()
		s.Payload = r.raw()
		s.Env = r.env()
		s.Timeout = r.str()
		s.MaxAttempts = r.intv()
		s.Priority = r.intv()
		s.IdempotencyKey = r.str()
		if r.version >= 2 {
			s.NoRetryExitCodes = r.ints()
		}
	}
	return specs
}

func (r *bdec) result(x *api.AttemptResult) {
	x.TaskID = r.str()
	x.Attempt = r.intv()
	x.Worker = r.str()
	x.Outcome = api.Outcome(r.str())
	x.ExitCode = r.intv()
	x.Output = r.str()
	x.Truncated = r.bool()
	x.Error = r.str()
	x.StartedAt = r.time()
	x.FinishedAt = r.time()
}
