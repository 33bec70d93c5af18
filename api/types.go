package api

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"time"
)

// TaskState is where a task is in its life. Pending and running are live;
// succeeded, failed and canceled are terminal and final.
type TaskState string

// The task states.
const (
	StatePending   TaskState = "pending"
	StateRunning   TaskState = "running"
	StateSucceeded TaskState = "succeeded"
	StateFailed    TaskState = "failed"
	StateCanceled  TaskState = "canceled"
)

// States lists every task state in display order.
var States = []TaskState{StatePending, StateRunning, StateSucceeded, StateFailed, StateCanceled}

// Terminal reports whether s is a final state.
func (s TaskState) Terminal() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCanceled
}

// Valid reports whether s is one of the known states.
func (s TaskState) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// TypeExec is the task type that runs Args as a process on a worker. It is
// the default and, for now, the only type.
const TypeExec = "exec"

// Outcome says how one attempt of a task ended.
type Outcome string

// Attempt outcomes. Succeeded, Failed and Timeout are the task's own doing
// and count against max_attempts; Lost, Released and Undelivered are the
// cluster's doing and do not.
const (
	OutcomeRunning     Outcome = "running"     // the attempt is current and not finished
	OutcomeSucceeded   Outcome = "succeeded"   // the process exited 0
	OutcomeFailed      Outcome = "failed"      // the process exited non-zero or could not start
	OutcomeTimeout     Outcome = "timeout"     // killed after the task's timeout
	OutcomeCanceled    Outcome = "canceled"    // the task was canceled while this attempt ran
	OutcomeLost        Outcome = "lost"        // the worker died or stopped answering
	OutcomeReleased    Outcome = "released"    // the worker handed the attempt back (shutdown)
	OutcomeUndelivered Outcome = "undelivered" // the push to the worker failed; it never ran there
)

// CountsAsFailure reports whether an attempt ending with o burns one of the
// task's max_attempts.
func (o Outcome) CountsAsFailure() bool {
	return o == OutcomeFailed || o == OutcomeTimeout
}

// TaskSpec is what a client submits: everything about a task that the
// client chooses. Only Args is required for the exec type.
type TaskSpec struct {
	Type           string            `json:"type,omitempty"`
	Args           []string          `json:"args"`
	Payload        json.RawMessage   `json:"payload,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Timeout        string            `json:"timeout,omitempty"`
	MaxAttempts    int               `json:"max_attempts,omitempty"`
	Priority       int               `json:"priority,omitempty"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	// NoRetryExitCodes lists exit codes that end the task at once instead
	// of being retried (Asynq's SkipRetry). Nil means the cluster's default
	// (126 and 127: the program cannot run, or was not found); an empty
	// list retries every failure.
	NoRetryExitCodes []int `json:"no_retry_exit_codes,omitzero"`
}

// Equal reports whether s and o are the same submission: every field,
// once both are normalized. A key reused with a spec that is not Equal is
// an idempotency key conflict.
func (s *TaskSpec) Equal(o *TaskSpec) bool {
	return s.Type == o.Type && slices.Equal(s.Args, o.Args) && bytes.Equal(s.Payload, o.Payload) &&
		maps.Equal(s.Env, o.Env) && s.Timeout == o.Timeout && s.MaxAttempts == o.MaxAttempts &&
		s.Priority == o.Priority && s.IdempotencyKey == o.IdempotencyKey &&
		(s.NoRetryExitCodes == nil) == (o.NoRetryExitCodes == nil) && slices.Equal(s.NoRetryExitCodes, o.NoRetryExitCodes)
}

// Result is the outcome of the attempt that ended the task (or of the latest
// finished attempt while the task is retried).
type Result struct {
	ExitCode  int    `json:"exit_code"`
	Output    string `json:"output"`
	Truncated bool   `json:"truncated"`
	Error     string `json:"error,omitempty"`
}

// AttemptRecord is the history of one attempt of a task.
type AttemptRecord struct {
	Attempt    int       `json:"attempt"`
	Worker     string    `json:"worker"`
	Outcome    Outcome   `json:"outcome"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	Error      string    `json:"error,omitempty"`
	// ExitCode and Output are kept for attempts that ended with a result
	// (output: its last MaxAttemptOutputBytes), so that a retried task's
	// earlier failures can be read; the task's Result has the last one in
	// full.
	ExitCode int    `json:"exit_code,omitempty"`
	Output   string `json:"output,omitempty"`
}

// Task is a submitted task and everything the cluster knows about it.
type Task struct {
	ID             string            `json:"id"`
	Type           string            `json:"type"`
	Args           []string          `json:"args"`
	Payload        json.RawMessage   `json:"payload,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Timeout        string            `json:"timeout"`
	MaxAttempts    int               `json:"max_attempts"`
	Priority       int               `json:"priority"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	// NoRetryExitCodes as submitted; nil means the cluster's default.
	NoRetryExitCodes []int `json:"no_retry_exit_codes,omitzero"`

	State      TaskState `json:"state"`
	Attempt    int       `json:"attempt"`          // number of the current or last attempt; 0 before the first dispatch
	Worker     string    `json:"worker,omitempty"` // worker of the current or last attempt
	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitzero"`  // start of the current or last attempt
	FinishedAt time.Time `json:"finished_at,omitzero"` // when the task became terminal
	NotBefore  time.Time `json:"not_before,omitzero"`  // a pending retry waits until then
	Failures   int       `json:"failures"`             // attempts that failed or timed out
	Lost       int       `json:"lost"`                 // attempts lost with their worker
	Result     *Result   `json:"result,omitempty"`

	Attempts []AttemptRecord `json:"attempts"`
}

// Spec returns what was submitted of t, normalized.
func (t *Task) Spec() TaskSpec {
	return TaskSpec{
		Type: t.Type, Args: t.Args, Payload: t.Payload, Env: t.Env, Timeout: t.Timeout,
		MaxAttempts: t.MaxAttempts, Priority: t.Priority, IdempotencyKey: t.IdempotencyKey,
		NoRetryExitCodes: t.NoRetryExitCodes,
	}
}

// TimeoutDuration returns the task's timeout, or DefaultTimeout when unset or
// unparsable (specs are validated before they are stored).
func (t *Task) TimeoutDuration() time.Duration {
	d, err := time.ParseDuration(t.Timeout)
	if err != nil || d <= 0 {
		return DefaultTimeout
	}
	return d
}

// BatchRequest is the body of POST /v1/tasks/batch.
type BatchRequest struct {
	Tasks []TaskSpec `json:"tasks"`
}

// BatchResponse is the answer to POST /v1/tasks/batch.
type BatchResponse struct {
	Tasks []Task `json:"tasks"`
}

// SubmitResult is what a submission produced: the task, and whether it
// already existed under the same idempotency key. Conflict is set when that
// key's task was submitted with another spec: the submission is refused,
// Task is the existing one.
type SubmitResult struct {
	Task     Task
	Existing bool
	Conflict bool
}

// TaskList is one page of GET /v1/tasks. Next is the cursor for the following
// page (pass it as after=) or empty at the end.
type TaskList struct {
	Tasks []Task `json:"tasks"`
	Next  string `json:"next"`
}

// ListFilter selects a page of tasks.
type ListFilter struct {
	State TaskState // empty for all states
	After string    // exclusive cursor: a task ID
	Limit int
}

// Assignment is what the leader pushes to a worker: one attempt of a task.
type Assignment struct {
	TaskID  string            `json:"task_id"`
	Attempt int               `json:"attempt"`
	Type    string            `json:"type"`
	Args    []string          `json:"args"`
	Env     map[string]string `json:"env,omitempty"`
	Payload json.RawMessage   `json:"payload,omitempty"`
	Timeout string            `json:"timeout"`
}

// AttemptResult is what a worker reports when an attempt ends.
type AttemptResult struct {
	TaskID     string    `json:"task_id"`
	Attempt    int       `json:"attempt"`
	Worker     string    `json:"worker"`
	Outcome    Outcome   `json:"outcome"`
	ExitCode   int       `json:"exit_code"`
	Output     string    `json:"output"`
	Truncated  bool      `json:"truncated"`
	Error      string    `json:"error,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
}

// AttemptRef names one attempt of a task.
type AttemptRef struct {
	TaskID  string `json:"task_id"`
	Attempt int    `json:"attempt"`
}

// RunningAttempt is one attempt a worker holds: running, or finished with its
// result not yet accepted by a master.
type RunningAttempt struct {
	TaskID    string    `json:"task_id"`
	Attempt   int       `json:"attempt"`
	State     string    `json:"state"` // "running" or "reporting"
	StartedAt time.Time `json:"started_at"`
}

// WorkerAttempts is a worker's answer to GET /v1/attempts.
type WorkerAttempts struct {
	Worker   string           `json:"worker"`
	Slots    int              `json:"slots"`
	Draining bool             `json:"draining"`
	Attempts []RunningAttempt `json:"attempts"`
}

// MasterStatus describes one master in GET /v1/cluster.
type MasterStatus struct {
	ID           string `json:"id"`
	RaftAddr     string `json:"raft_addr"`
	HTTPAddr     string `json:"http_addr"`
	Role         string `json:"role"` // leader, follower, candidate, or unknown when not reachable
	Voter        bool   `json:"voter"`
	AppliedIndex uint64 `json:"applied_index"`
}

// Worker states as reported in GET /v1/cluster.
const (
	WorkerAlive   = "alive"
	WorkerSuspect = "suspect"
	WorkerDead    = "dead"
	WorkerLeft    = "left"
)

// WorkerStatus describes one worker in GET /v1/cluster.
type WorkerStatus struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"http_addr"`
	State    string `json:"state"`
	Slots    int    `json:"slots"`
	Running  int    `json:"running"`
	Draining bool   `json:"draining,omitempty"`
	// Name is the name of the container the worker runs in, when the
	// leader's container runtime knows it (a compose-started worker's ID is
	// its container's short ID; a managed worker's ID is its name).
	Name string `json:"name,omitempty"`
}

// TaskCounts counts tasks by state.
type TaskCounts struct {
	Pending   int `json:"pending"`
	Running   int `json:"running"`
	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Canceled  int `json:"canceled"`
}

// Add adds n to the count of state s.
func (c *TaskCounts) Add(s TaskState, n int) {
	switch s {
	case StatePending:
		c.Pending += n
	case StateRunning:
		c.Running += n
	case StateSucceeded:
		c.Succeeded += n
	case StateFailed:
		c.Failed += n
	case StateCanceled:
		c.Canceled += n
	}
}

// ClusterStatus is the answer to GET /v1/cluster.
type ClusterStatus struct {
	Leader       string         `json:"leader"`
	Term         uint64         `json:"term"`
	Masters      []MasterStatus `json:"masters"`
	Workers      []WorkerStatus `json:"workers"`
	Tasks        TaskCounts     `json:"tasks"`
	StaleResults uint64         `json:"stale_results"` // results refused because their attempt was not current
}

// NodeStatus is one master's view of itself, served by
// GET /v1/internal/self and gathered by the leader for GET /v1/cluster.
type NodeStatus struct {
	ID           string `json:"id"`
	Role         string `json:"role"`
	Leader       string `json:"leader"`
	Term         uint64 `json:"term"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
	LastIndex    uint64 `json:"last_index"`
	Version      string `json:"version"`
}

// AttemptsRequest is the body of a push from the leader to a worker.
type AttemptsRequest struct {
	Attempts []Assignment `json:"attempts"`
}

// ResultsRequest is the body of POST /v1/results: finished attempts a worker
// reports.
type ResultsRequest struct {
	Results []AttemptResult `json:"results"`
}

// ResultsResponse answers POST /v1/results: one entry per result, an empty
// string when accepted or the error code (stale_attempt, not_found) when
// refused for good.
type ResultsResponse struct {
	Errors []string `json:"errors"`
}

// Scaling modes.
const (
	ScaleAuto  = "auto"  // the desired count follows the backlog between min and max
	ScaleFixed = "fixed" // the desired count is count
)

// ScalePolicy says how many worker containers the leader keeps. It is
// replicated state: PUT /v1/scale commits it.
type ScalePolicy struct {
	Mode             string `json:"mode"`
	Count            int    `json:"count"`              // fixed mode
	Min              int    `json:"min"`                // auto mode
	Max              int    `json:"max"`                // auto mode
	BacklogPerWorker int    `json:"backlog_per_worker"` // auto: one worker per this many pending+running tasks
	Cooldown         string `json:"cooldown"`           // auto: the desired count must stay lower this long before scaling down
}

// Managed worker states, as the replicated record knows them.
const (
	ManagedCreating = "creating" // intent committed; the container may not exist yet
	ManagedRunning  = "running"  // created and started
	ManagedDraining = "draining" // gets no new attempts; removed once idle
	ManagedRemoving = "removing" // intent committed; the container is being stopped and removed
)

// ManagedWorker is the replicated record of one worker container the leader
// manages. Its name is the container's name and the worker's ID.
type ManagedWorker struct {
	Name  string    `json:"name"`
	State string    `json:"state"`
	Since time.Time `json:"since"`
}

// ManagedWorkerStatus is a managed worker as GET /v1/scale shows it: the
// record, the container Docker reports, and the worker gossip reports.
type ManagedWorkerStatus struct {
	ManagedWorker
	Container string `json:"container"` // running, created, exited, ... or missing
	Worker    string `json:"worker"`    // gossip state: alive, suspect, dead, left, or unknown
	Running   int    `json:"running"`   // attempts running on it
}

// ScaleStatus is the answer to GET /v1/scale.
type ScaleStatus struct {
	Policy      ScalePolicy           `json:"policy"`
	Desired     int                   `json:"desired"`
	Actual      int                   `json:"actual"` // managed containers running
	Runtime     string                `json:"runtime"`
	Workers     []ManagedWorkerStatus `json:"workers"`
	Orphans     []string              `json:"orphans,omitempty"` // containers of this cluster no record accounts for
	LastError   string                `json:"last_error,omitempty"`
	LastErrorAt time.Time             `json:"last_error_at,omitzero"`
	// ScaleUp is the leader's last scale-up check in auto mode.
	ScaleUp *ScaleUpCheck `json:"scale_up,omitempty"`
}

// ScaleUpCheck says why the leader added fewer workers than the policy
// asks for: a new container helps only with work still queued when it has
// started, so the backlog is projected over the observed start time at the
// observed completion rate.
type ScaleUpCheck struct {
	PolicyDesired int     `json:"policy_desired"` // what the policy wants for the backlog
	Needed        int     `json:"needed"`         // what the projected backlog needs
	Active        int     `json:"active"`         // managed workers creating or running
	DrainRate     float64 `json:"drain_rate"`     // tasks finished per second of busy time; -1 before one was measured
	StartSeconds  float64 `json:"start_seconds"`  // how long a new container takes to take work
	StartObserved bool    `json:"start_observed"` // measured on this leader's containers, not assumed
}

// Digest summarizes one master's replica: equal digests at equal applied
// indexes mean equal state. GET /v1/digest serves it (never forwarded).
type Digest struct {
	ID           string `json:"id"`
	AppliedIndex uint64 `json:"applied_index"` // last raft index the state machine applied
	Tasks        int    `json:"tasks"`
	Digest       string `json:"digest"` // hex SHA-256 of the state
}
