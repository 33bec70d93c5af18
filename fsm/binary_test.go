package fsm

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

// mustEncodeBinary encodes e in the newest binary version.
func mustEncodeBinary(t testing.TB, e Entry) []byte {
	t.Helper()
	return mustEncodeFormat(t, e, Proto)
}

func mustEncodeFormat(t testing.TB, e Entry, format int) []byte {
	t.Helper()
	b, err := EncodeFormat(e, format)
	if err != nil {
		t.Fatalf("encode %T in format %d: %v", e, format, err)
	}
	return b
}

func TestBinary_RoundTripsTheHotTypes(t *testing.T) {
	n := 0
	for _, e := range sampleEntries() {
		b := mustEncodeBinary(t, e)
		if hasBinary(e.Type()) != (b[0]&binaryFlag != 0) {
			t.Fatalf("%s: type byte %#x", e.Type(), b[0])
		}
		if b[0]&binaryFlag != 0 {
			n++
			if j := mustEncode(t, e); len(b) >= len(j) {
				t.Errorf("%s: binary %d bytes, JSON %d: not smaller", e.Type(), len(b), len(j))
			}
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", e.Type(), err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("%s: round trip\n got %#v\nwant %#v", e.Type(), got, e)
		}
	}
	if n != 4 {
		t.Fatalf("%d sample entries had a binary form, want 4 (submit, submit-assign, assign, result)", n)
	}
}

func TestBinary_OlderFormatsWriteJSON(t *testing.T) {
	for _, format := range []int{0, 1, ProtoSubmitAssign} {
		for _, e := range sampleEntries() {
			b, err := EncodeFormat(e, format)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != string(mustEncode(t, e)) {
				t.Fatalf("format %d, %s: not the JSON encoding", format, e.Type())
			}
		}
	}
}

// TestBinary_GoldenBytes pins the format: a change to it must be a new
// binary version, because logs written today are read by later code.
func TestBinary_GoldenBytes(t *testing.T) {
	e := &SubmitEntry{At: time.Unix(1700000000, 5).UTC(), Tasks: []api.TaskSpec{{
		Type: "exec", Args: []string{"true"}, Env: map[string]string{"B": "2", "A": "1"},
		Timeout: "1s", MaxAttempts: 3, Priority: -1, IdempotencyKey: "k",
	}}}
	const want = "8101" + // submit | binaryFlag, version 1
		"01" + "80c49fd50c" + "05" + // time: flag, seconds 1700000000 (varint), nanoseconds 5
		"02" + // one spec
		"0465786563" + // type "exec"
		"02" + "0474727565" + // args ["true"]
		"00" + // payload nil
		"03" + "0141" + "0131" + "0142" + "0132" + // env, keys sorted
		"023173" + "06" + "01" + "016b" // timeout "1s", max_attempts 3, priority -1, key "k"
	b := mustEncodeFormat(t, e, ProtoBinary)
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("bytes\n got %s\nwant %s", got, want)
	}
	// Version 2 appends each spec's no-retry codes, and puts the entry's
	// default codes and kept output after a result entry's backoff base.
	e.Tasks[0].NoRetryExitCodes = []int{2, 64}
	const want2 = "8102" + "01" + "80c49fd50c" + "05" + "02" + "0465786563" + "02" + "0474727565" + "00" +
		"03" + "0141" + "0131" + "0142" + "0132" + "023173" + "06" + "01" + "016b" +
		"03" + "04" + "8001" // no_retry_exit_codes [2, 64]
	if got := hex.EncodeToString(mustEncodeFormat(t, e, ProtoNoRetry)); got != want2 {
		t.Fatalf("version 2 bytes\n got %s\nwant %s", got, want2)
	}
	r := &ResultEntry{At: time.Unix(1700000000, 5).UTC(), BackoffBase: time.Second, NoRetryExitCodes: []int{126, 127}, KeepOutput: 4096, Results: []api.AttemptResult{}}
	const wantResult = "8302" + "01" + "80c49fd50c" + "05" + "80a8d6b907" + // backoff 1s
		"03" + "fc01" + "fe01" + // no_retry_exit_codes [126, 127]
		"8040" + // keep_output 4096
		"01" // no results
	if got := hex.EncodeToString(mustEncodeFormat(t, r, ProtoNoRetry)); got != wantResult {
		t.Fatalf("version 2 result bytes\n got %s\nwant %s", got, wantResult)
	}
}

// Version 1 (entry format 3) cannot carry the fields version 2 added: the
// leader must not lose them silently, so encoding refuses them.
func TestBinary_Version1RefusesNewerFields(t *testing.T) {
	for _, e := range []Entry{
		&SubmitEntry{At: t0, Tasks: []api.TaskSpec{{Args: []string{"x"}, NoRetryExitCodes: []int{}}}},
		&SubmitAssignEntry{At: t0, Tasks: []api.TaskSpec{{Args: []string{"x"}, NoRetryExitCodes: []int{3}}}, Workers: []string{""}},
		&ResultEntry{At: t0, NoRetryExitCodes: []int{126}},
		&ResultEntry{At: t0, KeepOutput: 1},
	} {
		if b, err := EncodeFormat(e, ProtoBinary); err == nil || !strings.Contains(err.Error(), "version 2") {
			t.Errorf("%s in format %d: %x, %v; want a refusal", e.Type(), ProtoBinary, b, err)
		}
		got, err := Decode(mustEncodeFormat(t, e, ProtoNoRetry))
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Errorf("%s in format %d: %#v, %v", e.Type(), ProtoNoRetry, got, err)
		}
	}
	// Version 1 entries still decode, with the new fields zero.
	e := &ResultEntry{At: t0, BackoffBase: time.Second, Results: []api.AttemptResult{{TaskID: "t", Attempt: 1, Worker: "w", Outcome: api.OutcomeFailed, ExitCode: 127}}}
	b := mustEncodeFormat(t, e, ProtoBinary)
	if b[1] != 1 {
		t.Fatalf("format %d wrote version %d", ProtoBinary, b[1])
	}
	if got, err := Decode(b); err != nil || !reflect.DeepEqual(got, e) {
		t.Fatalf("version 1: %#v, %v", got, err)
	}
}

func TestBinary_KeepsNilAndEmptyApart(t *testing.T) {
	e := &SubmitAssignEntry{At: t0, Tasks: []api.TaskSpec{
		{Args: nil, Payload: nil, Env: nil},
		{Args: []string{}, Payload: json.RawMessage{}, Env: map[string]string{}},
		{Args: []string{""}, Payload: json.RawMessage(`null`), Env: map[string]string{"": ""}, NoRetryExitCodes: []int{}},
		{Args: []string{"x"}, NoRetryExitCodes: nil},
	}, Workers: []string{}}
	got, err := Decode(mustEncodeBinary(t, e))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, e) {
		t.Fatalf("round trip\n got %#v\nwant %#v", got, e)
	}
	// Nil lists, and lists of the smallest elements (every field empty).
	for _, e := range []Entry{
		&AssignEntry{At: t0}, &ResultEntry{}, &SubmitEntry{},
		&AssignEntry{Assignments: make([]Assignment, 3)},
		&ResultEntry{Results: make([]api.AttemptResult, 3)},
		&SubmitEntry{Tasks: make([]api.TaskSpec, 3)},
		&SubmitAssignEntry{Tasks: make([]api.TaskSpec, 2), Workers: make([]string, 2)},
	} {
		if got, err := Decode(mustEncodeBinary(t, e)); err != nil || !reflect.DeepEqual(got, e) {
			t.Fatalf("%s: %#v, %v; want %#v", e.Type(), got, err, e)
		}
	}
}

// fill sets every field of v (recursively) to a random value, so a field
// added to an entry or to api.TaskSpec/api.AttemptResult without a place in
// the binary format fails the round trip below.
func fill(t *testing.T, rng *rand.Rand, v reflect.Value) {
	switch v.Type() {
	case reflect.TypeFor[time.Time]():
		if rng.IntN(8) == 0 {
			v.Set(reflect.ValueOf(time.Time{}))
			return
		}
		// Any instant in years 0-9999, in UTC as decoding gives it.
		lo := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
		hi := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
		v.Set(reflect.ValueOf(time.Unix(lo+rng.Int64N(hi-lo), rng.Int64N(1e9)).UTC()))
		return
	case reflect.TypeFor[json.RawMessage]():
		if rng.IntN(4) == 0 {
			return // nil
		}
		payloads := []string{``, `{}`, `null`, `[1, 2 , {"a" : "<&>"}]`, `"\u00e9\n"`, `-1.5e3`}
		v.SetBytes([]byte(payloads[rng.IntN(len(payloads))]))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(randString(rng))
	case reflect.Int, reflect.Int64:
		switch rng.IntN(3) {
		case 0:
			v.SetInt(rng.Int64() - rng.Int64())
		case 1:
			v.SetInt(int64(rng.IntN(200)) - 100)
		}
	case reflect.Bool:
		v.SetBool(rng.IntN(2) == 0)
	case reflect.Slice:
		if rng.IntN(5) == 0 {
			return // nil
		}
		n := rng.IntN(4)
		s := reflect.MakeSlice(v.Type(), n, n)
		for i := range n {
			fill(t, rng, s.Index(i))
		}
		v.Set(s)
	case reflect.Map:
		if rng.IntN(5) == 0 {
			return // nil
		}
		m := reflect.MakeMap(v.Type())
		for range rng.IntN(4) {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(t, rng, k)
			fill(t, rng, e)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			fill(t, rng, v.Field(i))
		}
	default:
		t.Fatalf("fill: no rule for %s (%s): add one, and the field to the binary format", v.Type(), v.Kind())
	}
}

func randString(rng *rand.Rand) string {
	const chars = "ab\x00\"\\é日\n"
	var sb strings.Builder
	for range rng.IntN(6) {
		sb.WriteString(string([]rune(chars)[rng.IntN(len([]rune(chars)))]))
	}
	return sb.String()
}

func TestBinary_RandomEntriesRoundTripEveryField(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 2000 {
		var e Entry
		switch i % 4 {
		case 0:
			e = &SubmitEntry{}
		case 1:
			e = &SubmitAssignEntry{}
		case 2:
			e = &AssignEntry{}
		case 3:
			e = &ResultEntry{}
		}
		fill(t, rng, reflect.ValueOf(e).Elem())
		b := mustEncodeBinary(t, e)
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", e.Type(), err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("%s: round trip\n got %#v\nwant %#v", e.Type(), got, e)
		}
		// Equal entries, equal bytes (maps are written in key order).
		if b2 := mustEncodeBinary(t, got); string(b2) != string(b) {
			t.Fatalf("%s: encoding is not stable", e.Type())
		}
	}
}

func TestBinary_RejectsCorruptEntries(t *testing.T) {
	for _, e := range sampleEntries() {
		if !hasBinary(e.Type()) {
			continue
		}
		b := mustEncodeBinary(t, e)
		// Every truncation is an error, never a panic.
		for n := 1; n < len(b); n++ {
			if got, err := Decode(b[:n]); err == nil || !errors.Is(err, ErrCorruptEntry) {
				t.Fatalf("%s cut to %d of %d bytes: %#v, %v", e.Type(), n, len(b), got, err)
			}
		}
		if _, err := Decode(append(append([]byte{}, b...), 0)); err == nil || !strings.Contains(err.Error(), "trailing") {
			t.Fatalf("%s with a trailing byte: %v", e.Type(), err)
		}
		for _, v := range []byte{0, binaryVersion + 1, 0xff} {
			bad := append([]byte{}, b...)
			bad[1] = v
			if _, err := Decode(bad); err == nil || !strings.Contains(err.Error(), "version") {
				t.Fatalf("%s with version %d: %v", e.Type(), v, err)
			}
		}
	}
	for _, tt := range []struct{ name, data, want string }{
		{"no binary form", "\x85\x01", "no binary form"},
		{"huge count", "\x81\x01\x00\xff\xff\xff\xff\x0f", "exceeds"},
		{"bad time flag", "\x81\x01\x02", "time flag"},
		{"nanoseconds too large", "\x81\x01\x01\x00\x80\x94\xeb\xdc\x03\x00", "nanoseconds"},
		{"year 10000", "\x81\x01\x01\x80\xcc\xac\xff\xdf\x0e\x00\x00", "year 10000"},
		{"zero time with flag 1", "\x81\x01\x01\xff\xdb\x8f\xf9\xce\x03\x00\x00", "zero time"},
		{"bad boolean", "\x83\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00", "boolean"},
		{"duplicate env key", "\x81\x01\x00\x02\x00\x00\x00\x03\x01a\x00\x01a\x00\x00\x00\x00\x00", "duplicate env key"},
		{"overlong string", "\x81\x01\x00\x02\x09abcdefgh", "truncated"},
		{"payload not JSON", "\x81\x01\x00\x02\x00\x00\x04{\"n\x00\x00\x00\x00\x00", "payload is not valid JSON"},
	} {
		got, err := Decode([]byte(tt.data))
		if err == nil || !errors.Is(err, ErrCorruptEntry) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %#v, %v; want ErrCorruptEntry saying %q", tt.name, got, err, tt.want)
		}
	}
}

func TestBinary_RefusesPayloadsThatAreNotJSON(t *testing.T) {
	// Found by FuzzApply: a payload that is not JSON would leave a task
	// the API and snapshots cannot encode. The leader cannot write one, and
	// a replica refuses one.
	for _, p := range []string{`{"n`, `1 0`, `nope`} {
		e := &SubmitEntry{At: t0, Tasks: []api.TaskSpec{{Args: []string{"true"}, Payload: json.RawMessage(p)}}}
		if b, err := EncodeFormat(e, ProtoBinary); err == nil || !strings.Contains(err.Error(), "payload") {
			t.Fatalf("payload %q: EncodeFormat = %q, %v; want an error", p, b, err)
		}
	}
}

// TestBinary_InvalidUTF8BecomesWhatJSONMakesOfIt: found by FuzzApply. A
// string with invalid UTF-8 must reach the state as a JSON entry would bring
// it (each bad byte as U+FFFD), or a replica restored from a snapshot would
// differ from one that applied the log.
func TestBinary_InvalidUTF8BecomesWhatJSONMakesOfIt(t *testing.T) {
	bad := "a\x80b\xff\xfe日\xe6\x97"
	e := &ResultEntry{At: t0, Results: []api.AttemptResult{{TaskID: bad, Worker: "w\xc3", Outcome: api.Outcome(bad), Output: bad, Error: bad}}}
	a := &SubmitAssignEntry{At: t0, Tasks: []api.TaskSpec{{Type: bad, Args: []string{bad}, Env: map[string]string{bad: bad}, IdempotencyKey: bad}}, Workers: []string{bad}}
	for _, e := range []Entry{e, a, &AssignEntry{At: t0, Assignments: []Assignment{{TaskID: bad, Worker: bad}}}} {
		fromJSON, err := Decode(mustEncode(t, e))
		if err != nil {
			t.Fatal(err)
		}
		fromBinary, err := Decode(mustEncodeBinary(t, e))
		if err != nil {
			t.Fatalf("%s: %v", e.Type(), err)
		}
		if !reflect.DeepEqual(fromJSON, fromBinary) {
			t.Fatalf("%s:\n JSON   %#v\n binary %#v", e.Type(), fromJSON, fromBinary)
		}
	}
	// A replica refuses raw invalid UTF-8 (no encoder writes it).
	if _, err := Decode([]byte("\x85\x01\x00")); err == nil {
		t.Fatal("cancel has no binary form")
	}
	if got, err := Decode([]byte("\x82\x01\x00\x02\x01\x80\x00\x00")); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("assignment with task ID 0x80: %#v, %v", got, err)
	}
	// Env keys that would collide once made valid are refused.
	collide := &SubmitEntry{At: t0, Tasks: []api.TaskSpec{{Env: map[string]string{"\x80": "1", "\x81": "2"}}}}
	if _, err := EncodeFormat(collide, ProtoBinary); err == nil || !strings.Contains(err.Error(), "env keys") {
		t.Fatalf("colliding env keys: %v", err)
	}
}

func TestBinary_RefusesTimesJSONCannotHold(t *testing.T) {
	e := &SubmitEntry{At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
	if b, err := EncodeFormat(e, ProtoBinary); err == nil || b != nil || !strings.Contains(err.Error(), "submit") {
		t.Fatalf("EncodeFormat = %q, %v; want an error naming the entry type", b, err)
	}
}

// TestBinary_SameStateAsJSON applies the same entries in both formats to two
// state machines: a log may mix formats, so they must agree exactly.
func TestBinary_SameStateAsJSON(t *testing.T) {
	j, b := mustNewHarness(t), mustNewHarness(t)
	b.format = ProtoBinary
	entries := append(sampleEntries(), applySeeds()...)
	for _, e := range entries {
		jr, br := j.apply(e), b.apply(e)
		if !reflect.DeepEqual(jr, br) {
			t.Fatalf("%s: responses differ:\n%#v\n%#v", e.Type(), jr, br)
		}
	}
	ji, jn, jd := j.f.Digest()
	bi, bn, bd := b.f.Digest()
	if ji != bi || jn != bn || jd != bd {
		t.Fatalf("digests differ: JSON %d %d %s, binary %d %d %s", ji, jn, jd, bi, bn, bd)
	}
}

// BenchmarkDecode compares decoding a 100-task submit entry in each format.
func BenchmarkDecode(b *testing.B) {
	e := &SubmitEntry{At: t0}
	for i := range 100 {
		e.Tasks = append(e.Tasks, specWith(func(s *api.TaskSpec) { s.IdempotencyKey = "bench-" + string(rune('a'+i%26)) }))
	}
	for _, format := range []int{ProtoSubmitAssign, ProtoBinary} {
		data, err := EncodeFormat(e, format)
		if err != nil {
			b.Fatal(err)
		}
		name := "json"
		if format == ProtoBinary {
			name = "binary"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Decode(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
