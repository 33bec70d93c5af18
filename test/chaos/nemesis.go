package chaos

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/gantryhq/gantry/api"
)

// Target adapts a cluster for the harness.
type Target interface {
	// Masters returns the HTTP base URL of every master, by master ID.
	Masters() map[string]string
	// TaskSpec returns the task to submit under key. Its execution must
	// append one line "<task id> <attempt> <worker>" to the ledger.
	TaskSpec(key string) api.TaskSpec
	// Ledger returns every execution the tasks recorded so far.
	Ledger(ctx context.Context) ([]Execution, error)
}

// Auditor is implemented by targets that can compare the worker containers
// that exist with the replicated records (no orphans, no doubles).
type Auditor interface {
	Audit(ctx context.Context) (AuditResult, error)
}

// AuditResult is what an Auditor found.
type AuditResult struct {
	Containers []string `json:"containers"` // managed containers that exist
	Records    []string `json:"records"`    // managed workers the cluster records
	Orphans    []string `json:"orphans"`    // containers without a record
	Missing    []string `json:"missing"`    // running records without a container
	Doubled    []string `json:"doubled"`    // names that exist more than once
}

// Execution is one line of the ledger: one process start of an attempt.
type Execution struct {
	TaskID  string `json:"task_id"`
	Attempt int    `json:"attempt"`
	Worker  string `json:"worker"`
}

// Nemesis injects one kind of fault and heals it.
type Nemesis interface {
	// Name is the fault's name, as in FAULTS=kill-leader,...
	Name() string
	// Inject starts the fault and describes what it did. It may pick its
	// victims with rng.
	Inject(ctx context.Context, rng *rand.Rand) (string, error)
	// Heal ends the fault (restart, unpause, reconnect). It must be safe
	// to call when Inject failed half way.
	Heal(ctx context.Context) error
}

// FaultEvent is one fault of the schedule as it happened.
type FaultEvent struct {
	Fault      string        `json:"fault"`
	Desc       string        `json:"desc"`
	Start      time.Time     `json:"start"`
	Healed     time.Time     `json:"healed"`
	Error      string        `json:"error,omitempty"`
	HealErr    string        `json:"heal_error,omitempty"`
	Gap        time.Duration `json:"longest_submit_gap_ns"` // longest time without an acknowledged submission, from the fault's start until 10s after its heal
	GapText    string        `json:"longest_submit_gap"`
	Duplicates int           `json:"duplicate_executions"` // executions beyond one attributed to this fault
}

// Schedule injects faults on a seeded random schedule: a quiet period, a
// fault held for a while, its heal; repeated until ctx ends. Every fault is
// healed before the next starts.
type Schedule struct {
	Nemeses []Nemesis
	Rand    *rand.Rand
	Quiet   [2]time.Duration // between faults: uniform in [min, max]
	Hold    [2]time.Duration // how long a fault lasts: uniform in [min, max]
	Log     func(format string, args ...any)
}

func (s *Schedule) between(r [2]time.Duration) time.Duration {
	if r[1] <= r[0] {
		return r[0]
	}
	return r[0] + time.Duration(s.Rand.Int64N(int64(r[1]-r[0])))
}

// Run runs the schedule until ctx ends and returns the faults.
func (s *Schedule) Run(ctx context.Context) []FaultEvent {
	var events []FaultEvent
	for {
		sleep(ctx, s.between(s.Quiet))
		if ctx.Err() != nil || len(s.Nemeses) == 0 {
			return events
		}
		n := s.Nemeses[s.Rand.IntN(len(s.Nemeses))]
		ev := FaultEvent{Fault: n.Name(), Start: time.Now()}
		ictx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		desc, err := n.Inject(ictx, s.Rand)
		cancel()
		ev.Desc = desc
		if err != nil {
			ev.Error = err.Error()
			s.Log("fault %-18s FAILED to inject: %v", n.Name(), err)
		} else {
			s.Log("fault %-18s %s", n.Name(), desc)
			sleep(ctx, s.between(s.Hold))
		}
		hctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		if herr := n.Heal(hctx); herr != nil {
			ev.HealErr = herr.Error()
			s.Log("heal  %-18s FAILED: %v", n.Name(), herr)
		} else {
			s.Log("heal  %-18s after %s", n.Name(), time.Since(ev.Start).Round(100*time.Millisecond))
		}
		cancel()
		ev.Healed = time.Now()
		events = append(events, ev)
	}
}
