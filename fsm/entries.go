package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/gantryhq/gantry/api"
)

// Proto is the entry format this code applies: 1 is entry types 1 to 8, 2
// adds SubmitAssignEntry, 3 (ProtoBinary) the binary encoding of the hot
// entries, 4 (ProtoNoRetry) exit codes that end a task at once and the
// output kept in each attempt's history. Masters gossip it, and a leader
// writes an entry of a newer format only once every voter applies it, so a
// rolling upgrade never hands an older replica an entry it cannot apply.
const Proto = ProtoNoRetry

// ProtoNoRetry is the entry format that added no_retry_exit_codes (in task
// specs, and the cluster's default in result entries) and the output of
// earlier attempts (ResultEntry.KeepOutput): binary version 2.
const ProtoNoRetry = 4

// ProtoSubmitAssign is the entry format that added SubmitAssignEntry.
const ProtoSubmitAssign = 2

// EntryType is the first byte of every Raft log entry gantry writes. The list
// is append-only: never renumber or reuse a value, because old logs and
// snapshots must keep decoding the same way.
type EntryType uint8

// The entry types.
const (
	_                 EntryType = iota // 0 is never written: it catches zeroed data
	EntrySubmit                        // 1: new tasks
	EntryAssign                        // 2: attempts given to workers
	EntryResult                        // 3: attempts finished by workers
	EntryRequeue                       // 4: attempts taken back from lost workers
	EntryCancel                        // 5: a task canceled
	EntryGC                            // 6: old terminal tasks forgotten
	EntrySetScale                      // 7: the scaling policy
	EntryScaleOp                       // 8: a step in the life of a managed worker container
	EntrySubmitAssign                  // 9: new tasks, some started at once on workers with free slots
)

func (t EntryType) String() string {
	switch t {
	case EntrySubmit:
		return "submit"
	case EntryAssign:
		return "assign"
	case EntryResult:
		return "result"
	case EntryRequeue:
		return "requeue"
	case EntryCancel:
		return "cancel"
	case EntryGC:
		return "gc"
	case EntrySetScale:
		return "set-scale"
	case EntryScaleOp:
		return "scale-op"
	case EntrySubmitAssign:
		return "submit-assign"
	}
	return fmt.Sprintf("entry(%d)", uint8(t))
}

// Entry is one command in the Raft log. Every field a command needs,
// timestamps included, is chosen by the leader before it is proposed, so
// applying it is deterministic.
type Entry interface {
	Type() EntryType
}

// SubmitEntry adds tasks. The state machine numbers them; a spec whose
// idempotency key is already known yields the existing task instead.
// Specs are normalized and validated before they are proposed.
type SubmitEntry struct {
	At    time.Time      `json:"at"`
	Tasks []api.TaskSpec `json:"tasks"`
}

// SubmitAssignEntry adds tasks like a SubmitEntry and, in the same entry,
// starts attempt 1 of the i-th new task on Workers[i] (when not empty), so
// that an idle cluster runs a task one commit after its submission instead
// of two. A spec answered by an existing task (its key was known) starts
// nothing; an assignment the state refuses (a retiring worker) leaves its
// task pending for the dispatcher. Workers is as long as Tasks.
type SubmitAssignEntry struct {
	At      time.Time      `json:"at"`
	Tasks   []api.TaskSpec `json:"tasks"`
	Workers []string       `json:"workers"`
}

// Assignment gives attempt Attempt of a pending task to Worker.
type Assignment struct {
	TaskID  string `json:"task_id"`
	Attempt int    `json:"attempt"`
	Worker  string `json:"worker"`
}

// AssignEntry starts attempts on workers. An assignment whose task is not
// pending, not yet due, or whose attempt is not the next one is refused.
type AssignEntry struct {
	At          time.Time    `json:"at"`
	Assignments []Assignment `json:"assignments"`
}

// ResultEntry records finished attempts. BackoffBase is the leader's retry
// backoff base, carried in the entry so every replica computes the same
// retry time. From ProtoNoRetry on, the entry also carries the leader's
// other settings for what a result does: NoRetryExitCodes, the exit codes
// that fail a task at once when its spec names none, and KeepOutput, how
// many bytes of an attempt's output its history record keeps. Before that
// format both are zero, which is what older replicas do: retry every
// failure, keep no output in the history.
type ResultEntry struct {
	At               time.Time           `json:"at"`
	BackoffBase      time.Duration       `json:"backoff_base"`
	Results          []api.AttemptResult `json:"results"`
	NoRetryExitCodes []int               `json:"no_retry_exit_codes,omitzero"`
	KeepOutput       int                 `json:"keep_output,omitempty"`
}

// RequeueEntry takes running attempts back: their worker is lost
// (OutcomeLost, counted towards poison) or never received them
// (OutcomeUndelivered, not counted).
type RequeueEntry struct {
	At       time.Time        `json:"at"`
	Outcome  api.Outcome      `json:"outcome"`
	Reason   string           `json:"reason"`
	Attempts []api.AttemptRef `json:"attempts"`
}

// CancelEntry cancels one task.
type CancelEntry struct {
	At     time.Time `json:"at"`
	TaskID string    `json:"task_id"`
}

// GCEntry forgets up to Limit terminal tasks that finished before Before,
// oldest first, together with their idempotency keys.
type GCEntry struct {
	At     time.Time `json:"at"`
	Before time.Time `json:"before"`
	Limit  int       `json:"limit"`
}

// SetScaleEntry replaces the scaling policy. The policy is normalized
// before it is proposed; an invalid one is refused (and changes nothing).
type SetScaleEntry struct {
	At     time.Time       `json:"at"`
	Policy api.ScalePolicy `json:"policy"`
}

// Scale operations, in the order a managed worker goes through them.
const (
	ScaleCreate  = "create"  // allocate Count new names (Prefix-<seq>), state creating
	ScaleCreated = "created" // creating -> running
	ScaleDrain   = "drain"   // running -> draining: no new attempts
	ScaleUndrain = "undrain" // draining -> running: wanted again
	ScaleRemove  = "remove"  // creating or draining -> removing
	ScaleRemoved = "removed" // the record is dropped: the container is gone
)

// ScaleOpEntry records one step for managed worker containers. The leader
// commits each intent before acting on Docker, so a new leader can finish or
// revert whatever the old one started.
type ScaleOpEntry struct {
	At     time.Time `json:"at"`
	Op     string    `json:"op"`
	Prefix string    `json:"prefix,omitempty"` // create: container names are Prefix-<seq>
	Count  int       `json:"count,omitempty"`  // create
	Names  []string  `json:"names,omitempty"`  // every other op
}

// Type implements Entry.
func (*SetScaleEntry) Type() EntryType { return EntrySetScale }

// Type implements Entry.
func (*ScaleOpEntry) Type() EntryType { return EntryScaleOp }

// Type implements Entry.
func (*SubmitEntry) Type() EntryType { return EntrySubmit }

// Type implements Entry.
func (*SubmitAssignEntry) Type() EntryType { return EntrySubmitAssign }

// Type implements Entry.
func (*AssignEntry) Type() EntryType { return EntryAssign }

// Type implements Entry.
func (*ResultEntry) Type() EntryType { return EntryResult }

// Type implements Entry.
func (*RequeueEntry) Type() EntryType { return EntryRequeue }

// Type implements Entry.
func (*CancelEntry) Type() EntryType { return EntryCancel }

// Type implements Entry.
func (*GCEntry) Type() EntryType { return EntryGC }

// Encode returns the log bytes of e in the first format: its type byte
// followed by its JSON body. EncodeFormat writes newer formats.
func Encode(e Entry) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(byte(e.Type()))
	if err := json.NewEncoder(&buf).Encode(e); err != nil {
		return nil, fmt.Errorf("encode %s entry: %w", e.Type(), err)
	}
	return buf.Bytes(), nil
}

// ErrCorruptEntry is wrapped by every Decode failure.
var ErrCorruptEntry = errors.New("corrupt log entry")

// Decode parses log bytes written by Encode or EncodeFormat. It never panics; any input that
// is not a well-formed entry of a known type returns an error wrapping
// ErrCorruptEntry.
func Decode(b []byte) (Entry, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrCorruptEntry)
	}
	if b[0]&binaryFlag != 0 {
		return decodeBinary(EntryType(b[0]&^binaryFlag), b[1:])
	}
	var e Entry
	switch EntryType(b[0]) {
	case EntrySubmit:
		e = &SubmitEntry{}
	case EntryAssign:
		e = &AssignEntry{}
	case EntryResult:
		e = &ResultEntry{}
	case EntryRequeue:
		e = &RequeueEntry{}
	case EntryCancel:
		e = &CancelEntry{}
	case EntryGC:
		e = &GCEntry{}
	case EntrySetScale:
		e = &SetScaleEntry{}
	case EntryScaleOp:
		e = &ScaleOpEntry{}
	case EntrySubmitAssign:
		e = &SubmitAssignEntry{}
	default:
		return nil, fmt.Errorf("%w: unknown type %d", ErrCorruptEntry, b[0])
	}
	dec := json.NewDecoder(bytes.NewReader(b[1:]))
	if err := dec.Decode(e); err != nil {
		return nil, fmt.Errorf("%w: %s body: %v", ErrCorruptEntry, e.Type(), err)
	}
	// Only whitespace may follow the body. (dec.More would let a stray
	// closing '}' or ']' through.)
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %s body: trailing data", ErrCorruptEntry, e.Type())
	}
	return e, nil
}
