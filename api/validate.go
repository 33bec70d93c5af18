package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on what a client may send. They are part of the API contract and
// documented in docs/API.md; anything past them is a 400 (or 413 for whole
// bodies) naming the field.
const (
	MaxRequestBytes       = 1 << 20  // body of POST /v1/tasks and of other single requests
	MaxBatchRequestBytes  = 16 << 20 // body of POST /v1/tasks/batch
	MaxBatchTasks         = 1000     // tasks in one batch
	MaxArgs               = 256      // elements of args
	MaxArgsBytes          = 64 << 10 // all args together
	MaxEnvVars            = 128      // entries of env
	MaxEnvBytes           = 32 << 10 // all env keys and values together
	MaxPayloadBytes       = 256 << 10
	MaxIdempotencyKeyLen  = 256
	MaxNoRetryExitCodes   = 64       // entries of no_retry_exit_codes
	MaxAttemptOutputBytes = 4 << 10  // output kept in the history of each attempt (the last bytes)
	MaxOutputBytes        = 64 << 10 // combined stdout+stderr kept per attempt
	MaxErrorLen           = 4 << 10  // error text kept per attempt
	MaxTaskIDLen          = 64
	MaxWorkerIDLen        = 128

	MinTimeout     = 100 * time.Millisecond
	MaxTimeout     = 7 * 24 * time.Hour
	DefaultTimeout = 30 * time.Minute

	DefaultMaxAttempts = 3
	MaxMaxAttempts     = 100
	MinPriority        = -1000
	MaxPriority        = 1000

	DefaultListLimit = 100
	MaxListLimit     = 1000
	MaxWait          = 5 * time.Minute // longest ?wait= long poll
)

// Normalize fills the defaults of a spec (type exec, timeout, max_attempts)
// and validates it. prefix names the spec in error fields, e.g. "tasks[3]".
// It returns an *Error naming the first bad field.
func (s *TaskSpec) Normalize(prefix string) error {
	f := func(name string) string {
		if prefix == "" {
			return name
		}
		return prefix + "." + name
	}
	if s.Type == "" {
		s.Type = TypeExec
	}
	if s.Type != TypeExec {
		return BadRequest(f("type"), "unknown task type %q (supported: %q)", s.Type, TypeExec)
	}
	if len(s.Args) == 0 {
		return BadRequest(f("args"), "is required and must hold at least the program to run")
	}
	if len(s.Args) > MaxArgs {
		return BadRequest(f("args"), "has %d elements; the limit is %d", len(s.Args), MaxArgs)
	}
	if s.Args[0] == "" {
		return BadRequest(f("args"), "the program (args[0]) must not be empty")
	}
	n := 0
	for i, a := range s.Args {
		n += len(a)
		if strings.IndexByte(a, 0) >= 0 {
			return BadRequest(f("args"), "element %d contains a NUL byte", i)
		}
		if !utf8.ValidString(a) {
			return BadRequest(f("args"), "element %d is not valid UTF-8", i)
		}
	}
	if n > MaxArgsBytes {
		return BadRequest(f("args"), "total %d bytes; the limit is %d", n, MaxArgsBytes)
	}
	if len(s.Env) > MaxEnvVars {
		return BadRequest(f("env"), "has %d entries; the limit is %d", len(s.Env), MaxEnvVars)
	}
	n = 0
	for k, v := range s.Env {
		n += len(k) + len(v)
		if !validEnvName(k) {
			return BadRequest(f("env"), "%q is not a valid variable name (letters, digits and _, not starting with a digit)", k)
		}
		if strings.HasPrefix(k, "GANTRY_") {
			return BadRequest(f("env"), "%q: names starting with GANTRY_ are reserved", k)
		}
		if strings.IndexByte(v, 0) >= 0 || !utf8.ValidString(v) {
			return BadRequest(f("env"), "value of %q contains a NUL byte or invalid UTF-8", k)
		}
	}
	if n > MaxEnvBytes {
		return BadRequest(f("env"), "total %d bytes; the limit is %d", n, MaxEnvBytes)
	}
	if len(s.Payload) > MaxPayloadBytes {
		return BadRequest(f("payload"), "is %d bytes; the limit is %d", len(s.Payload), MaxPayloadBytes)
	}
	if len(s.Payload) > 0 {
		if bytes.Equal(bytes.TrimSpace(s.Payload), []byte("null")) {
			s.Payload = nil
		} else if !json.Valid(s.Payload) {
			return BadRequest(f("payload"), "is not valid JSON")
		} else {
			var buf bytes.Buffer
			if err := json.Compact(&buf, s.Payload); err != nil {
				return BadRequest(f("payload"), "is not valid JSON")
			}
			s.Payload = buf.Bytes()
		}
	}
	if s.Timeout == "" {
		s.Timeout = DefaultTimeout.String()
	} else {
		d, err := time.ParseDuration(s.Timeout)
		if err != nil {
			return BadRequest(f("timeout"), "%q is not a duration (use e.g. \"30s\", \"5m\")", s.Timeout)
		}
		if d < MinTimeout || d > MaxTimeout {
			return BadRequest(f("timeout"), "%s is out of range [%s, %s]", d, MinTimeout, MaxTimeout)
		}
		s.Timeout = d.String()
	}
	// An absent max_attempts is 0 here and means the default; an explicit
	// 0 is refused by the request decoder, which sees the difference.
	switch {
	case s.MaxAttempts < 0:
		return BadRequest(f("max_attempts"), "%d is out of range [1, %d]", s.MaxAttempts, MaxMaxAttempts)
	case s.MaxAttempts == 0:
		s.MaxAttempts = DefaultMaxAttempts
	case s.MaxAttempts > MaxMaxAttempts:
		return BadRequest(f("max_attempts"), "%d is out of range [1, %d]", s.MaxAttempts, MaxMaxAttempts)
	}
	if s.NoRetryExitCodes != nil {
		if len(s.NoRetryExitCodes) > MaxNoRetryExitCodes {
			return BadRequest(f("no_retry_exit_codes"), "has %d codes; the limit is %d", len(s.NoRetryExitCodes), MaxNoRetryExitCodes)
		}
		codes := slices.Clone(s.NoRetryExitCodes)
		for _, c := range codes {
			if c < 1 || c > 255 {
				return BadRequest(f("no_retry_exit_codes"), "%d is not an exit code of a failure (1 to 255)", c)
			}
		}
		slices.Sort(codes)
		s.NoRetryExitCodes = slices.Compact(codes)
	}
	if s.Priority < MinPriority || s.Priority > MaxPriority {
		return BadRequest(f("priority"), "%d is out of range [%d, %d]", s.Priority, MinPriority, MaxPriority)
	}
	if len(s.IdempotencyKey) > MaxIdempotencyKeyLen {
		return BadRequest(f("idempotency_key"), "is %d bytes; the limit is %d", len(s.IdempotencyKey), MaxIdempotencyKeyLen)
	}
	if !utf8.ValidString(s.IdempotencyKey) {
		return BadRequest(f("idempotency_key"), "is not valid UTF-8")
	}
	for _, r := range s.IdempotencyKey {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == utf8.RuneError {
			return BadRequest(f("idempotency_key"), "must be printable characters without spaces")
		}
	}
	return nil
}

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Validate checks a worker's result report.
func (r *AttemptResult) Validate() error {
	if r.TaskID == "" || len(r.TaskID) > MaxTaskIDLen {
		return BadRequest("task_id", "is required (at most %d bytes)", MaxTaskIDLen)
	}
	if r.Attempt < 1 {
		return BadRequest("attempt", "must be at least 1")
	}
	if r.Worker == "" || len(r.Worker) > MaxWorkerIDLen {
		return BadRequest("worker", "is required (at most %d bytes)", MaxWorkerIDLen)
	}
	switch r.Outcome {
	case OutcomeSucceeded, OutcomeFailed, OutcomeTimeout, OutcomeCanceled, OutcomeReleased:
	default:
		return BadRequest("outcome", "%q is not a reportable outcome", r.Outcome)
	}
	if len(r.Output) > MaxOutputBytes {
		return BadRequest("output", "is %d bytes; the limit is %d", len(r.Output), MaxOutputBytes)
	}
	if len(r.Error) > MaxErrorLen {
		return BadRequest("error", "is %d bytes; the limit is %d", len(r.Error), MaxErrorLen)
	}
	return nil
}

// ParseWait parses the ?wait= long-poll parameter.
func ParseWait(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, BadRequest("wait", "%q is not a duration (use e.g. \"30s\")", s)
	}
	if d < 0 || d > MaxWait {
		return 0, BadRequest("wait", "%s is out of range [0s, %s]", d, MaxWait)
	}
	return d, nil
}

// ValidTaskID reports whether id could name a task (used to reject garbage
// path segments early with a 400 rather than a 404).
func ValidTaskID(id string) error {
	if id == "" || len(id) > MaxTaskIDLen {
		return BadRequest("id", "must be 1 to %d characters", MaxTaskIDLen)
	}
	for _, r := range id {
		if r < 0x21 || r > 0x7e {
			return BadRequest("id", "contains a character that cannot appear in a task ID")
		}
	}
	return nil
}

// DefaultRetryBackoff is the base delay before a failed attempt is retried.
const DefaultRetryBackoff = time.Second

// MaxRetryBackoff caps the retry delay.
const MaxRetryBackoff = 5 * time.Minute

// Backoff returns the delay before retrying a task whose failures-th attempt
// failed: base, 2*base, 4*base ... capped at MaxRetryBackoff. It is
// deterministic; the state machine uses it with the base the leader put in
// the log entry.
func Backoff(base time.Duration, failures int) time.Duration {
	if failures < 1 || base <= 0 {
		return 0
	}
	d := base
	for i := 1; i < failures && d < MaxRetryBackoff; i++ {
		d *= 2
	}
	if d > MaxRetryBackoff {
		d = MaxRetryBackoff
	}
	return d
}

// DefaultNoRetryExitCodes are the exit codes that end a task at once when
// its spec names none: a shell's 126 (found but cannot run) and 127 (not
// found). Retrying cannot make a missing program appear.
var DefaultNoRetryExitCodes = []int{126, 127}

// MaxLostAttempts is how many attempts a task may lose with their workers
// before it fails as poison.
const MaxLostAttempts = 3

// FormatTaskID formats the sequence number the state machine assigned to a
// task as its ID: 16 lowercase hex digits, so IDs sort in submission order.
func FormatTaskID(seq uint64) string {
	return fmt.Sprintf("%016x", seq)
}

// MaxManagedWorkers bounds the worker containers one cluster's leader keeps.
const MaxManagedWorkers = 100

// DefaultScalePolicy is the policy until PUT /v1/scale sets one.
var DefaultScalePolicy = ScalePolicy{Mode: ScaleAuto, Min: 1, Max: 4, BacklogPerWorker: 10, Cooldown: "30s"}

// Normalize fills the defaults of a policy (mode auto, backlog_per_worker
// 10, cooldown 30s; in fixed mode min and max follow count) and validates it.
func (p *ScalePolicy) Normalize() error {
	if p.Mode == "" {
		p.Mode = ScaleAuto
	}
	if p.BacklogPerWorker == 0 {
		p.BacklogPerWorker = DefaultScalePolicy.BacklogPerWorker
	}
	if p.Cooldown == "" {
		p.Cooldown = DefaultScalePolicy.Cooldown
	}
	d, err := time.ParseDuration(p.Cooldown)
	if err != nil {
		return BadRequest("cooldown", "%q is not a duration (use e.g. \"30s\")", p.Cooldown)
	}
	if d < 0 || d > time.Hour {
		return BadRequest("cooldown", "%s is out of range [0s, 1h]", d)
	}
	p.Cooldown = d.String()
	if p.BacklogPerWorker < 1 || p.BacklogPerWorker > 1000000 {
		return BadRequest("backlog_per_worker", "%d is out of range [1, 1000000]", p.BacklogPerWorker)
	}
	switch p.Mode {
	case ScaleFixed:
		if p.Count < 0 || p.Count > MaxManagedWorkers {
			return BadRequest("count", "%d is out of range [0, %d]", p.Count, MaxManagedWorkers)
		}
		p.Min, p.Max = p.Count, p.Count
	case ScaleAuto:
		if p.Min < 0 || p.Min > MaxManagedWorkers {
			return BadRequest("min", "%d is out of range [0, %d]", p.Min, MaxManagedWorkers)
		}
		if p.Max < p.Min || p.Max > MaxManagedWorkers {
			return BadRequest("max", "%d must be at least min (%d) and at most %d", p.Max, p.Min, MaxManagedWorkers)
		}
		p.Count = 0
	default:
		return BadRequest("mode", "%q is not auto or fixed", p.Mode)
	}
	return nil
}

// CooldownDuration returns the parsed cooldown (the policy is normalized).
func (p ScalePolicy) CooldownDuration() time.Duration {
	d, _ := time.ParseDuration(p.Cooldown)
	return d
}

// Desired returns how many managed workers the policy wants for a backlog of
// pending plus running tasks: count in fixed mode; in auto mode
// ceil(backlog / backlog_per_worker), clamped to [min, max].
func (p ScalePolicy) Desired(backlog int) int {
	if p.Mode == ScaleFixed {
		return p.Count
	}
	per := max(p.BacklogPerWorker, 1)
	n := (backlog + per - 1) / per
	return min(max(n, p.Min), p.Max)
}
