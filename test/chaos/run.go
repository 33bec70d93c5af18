package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/gantryhq/gantry/transport"
)

// Config is one chaos run.
type Config struct {
	Target   Target
	Nemeses  []Nemesis
	Duration time.Duration // how long faults are injected
	Seed     uint64
	Clients  int
	Quiet    [2]time.Duration // between faults (default 2s to 6s)
	Hold     [2]time.Duration // fault duration (default 3s to 10s)
	// RequestTimeout bounds each client request (default 2s).
	RequestTimeout time.Duration
	// Pause is each client's pause between operations (default 20ms): with
	// Clients it sets the offered load, which should stay below what the
	// workers complete so the backlog does not grow through a long run.
	Pause time.Duration
	// Settle bounds the waits of the checker (default 3m).
	Settle     time.Duration
	Progress   time.Duration // progress line interval (default 5s); negative: none
	Out        io.Writer     // where the schedule, progress and report go (default stdout)
	HTTPClient *http.Client  // optional, for the workload and the checker
}

// Report is the outcome of a run.
type Report struct {
	OK         bool         `json:"ok"`
	Seed       uint64       `json:"seed"`
	RunID      string       `json:"run_id"`
	Started    time.Time    `json:"started"`
	Duration   string       `json:"duration"`
	Clients    int          `json:"clients"`
	Nemeses    []string     `json:"nemeses"`
	Checks     []Check      `json:"checks"`
	Figures    Figures      `json:"figures"`
	Faults     []FaultEvent `json:"faults"`
	Duplicates []Duplicate  `json:"duplicates"`
	Audit      *AuditResult `json:"containers,omitempty"`
}

func (r *Report) add(c Check) {
	r.Checks = append(r.Checks, c)
}

// Run runs the workload under a fault schedule for cfg.Duration, heals,
// lets the cluster settle and checks the history. The history is returned
// too (write it next to the report to replay the check).
func Run(ctx context.Context, cfg Config) (*Report, *History) {
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Clients < 1 {
		cfg.Clients = 4
	}
	if cfg.Quiet == [2]time.Duration{} {
		cfg.Quiet = [2]time.Duration{2 * time.Second, 6 * time.Second}
	}
	if cfg.Hold == [2]time.Duration{} {
		cfg.Hold = [2]time.Duration{3 * time.Second, 10 * time.Second}
	}
	if cfg.Progress == 0 {
		cfg.Progress = 5 * time.Second
	}
	var outMu sync.Mutex
	h := NewHistory()
	logf := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(cfg.Out, "%8s  %s\n", time.Since(h.Start()).Round(100*time.Millisecond), fmt.Sprintf(format, args...))
	}
	runID := "chaos" + strconv.FormatUint(cfg.Seed, 36) + "x" + strconv.FormatInt(time.Now().UnixMilli()%1e8, 36)
	rep := &Report{Seed: cfg.Seed, RunID: runID, Started: h.Start(), Duration: cfg.Duration.String(), Clients: cfg.Clients}
	for _, n := range cfg.Nemeses {
		rep.Nemeses = append(rep.Nemeses, n.Name())
	}
	logf("chaos run %s: seed %d, %s, %d clients, faults %s", runID, cfg.Seed, cfg.Duration, cfg.Clients, strings.Join(rep.Nemeses, ","))

	w := &Workload{Target: cfg.Target, History: h, Clients: cfg.Clients, RequestTimeout: cfg.RequestTimeout, Pause: cfg.Pause, RunID: runID, Seed: cfg.Seed, HTTPClient: cfg.HTTPClient}
	submit, stopSubmit := context.WithCancel(ctx)
	drain, stopDrain := context.WithCancel(context.Background())
	defer stopSubmit()
	defer stopDrain()
	workDone := make(chan struct{})
	go func() { defer close(workDone); w.Run(submit, drain) }()

	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		if cfg.Progress < 0 {
			return
		}
		t := time.NewTicker(cfg.Progress)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				cnt := w.Counts()
				done := "?"
				if st, err := completed(cfg); err == nil {
					done = strconv.Itoa(st)
				}
				logf("progress: acknowledged %d, completed %s, in flight %d, errors %d", cnt.Acked, done, cnt.InFlight, cnt.Errors)
			}
		}
	}()

	schedCtx, stopSched := context.WithTimeout(ctx, cfg.Duration)
	sched := &Schedule{Nemeses: cfg.Nemeses, Rand: rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15)), Quiet: cfg.Quiet, Hold: cfg.Hold, Log: logf}
	faults := sched.Run(schedCtx)
	stopSched()
	logf("faults over (%d injected); stopping new submissions", len(faults))
	stopSubmit()
	// Submissions in flight keep retrying their keys for a while.
	select {
	case <-workDone:
	case <-time.After(45 * time.Second):
		logf("some submissions still retrying after 45s; giving up on them (their outcome stays unknown)")
		stopDrain()
		<-workDone
	}
	close(stopProgress)
	<-progressDone

	ck := &Checker{Target: cfg.Target, History: h, Faults: faults, RunID: runID, HTTPClient: cfg.HTTPClient, Log: logf, Settle: cfg.Settle}
	ck.Run(context.Background(), rep)
	rep.OK = len(rep.Checks) > 0
	for _, c := range rep.Checks {
		rep.OK = rep.OK && c.OK
	}
	return rep, h
}

// completed counts finished tasks, from any master's local state.
func completed(cfg Config) (int, error) {
	var urls []string
	for _, u := range cfg.Target.Masters() {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	var opts []transport.ClientOption
	if cfg.HTTPClient != nil {
		opts = append(opts, transport.WithHTTPClient(cfg.HTTPClient))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := transport.NewClient(urls, opts...).Cluster(ctx, transport.ReadOptions{Stale: true})
	if err != nil {
		return 0, err
	}
	return st.Tasks.Succeeded + st.Tasks.Failed + st.Tasks.Canceled, nil
}

// WriteText writes the report for people.
func (r *Report) WriteText(w io.Writer) {
	verdict := "PASS: every invariant held"
	if !r.OK {
		verdict = "FAIL: an invariant was violated"
	}
	fmt.Fprintf(w, "\n== chaos report (seed %d, %s, %d clients, run %s)\n\n", r.Seed, r.Duration, r.Clients, r.RunID)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, c.Name, c.Detail)
	}
	tw.Flush()
	f := r.Figures
	fmt.Fprintf(w, "\nsubmissions %d (acknowledged %d, never acknowledged %d; %d requests, %d failed or timed out)\n",
		f.Submissions, f.Acknowledged, f.NeverAcknowledged, f.Requests, f.FailedRequests)
	fmt.Fprintf(w, "tasks %d: succeeded %d, failed %d, lost %d; stale results refused %d; reads checked %d\n",
		f.Tasks, f.Succeeded, f.Failed, f.Lost, f.StaleResults, f.Reads)
	fmt.Fprintf(w, "executions %d, beyond one per task %d (with no fault around them: %d)\n",
		f.Executions, f.DuplicateExecutions, f.UnexplainedDuplicates)
	fmt.Fprintf(w, "longest unavailability %s\n\n", f.MaxUnavailability)
	if len(r.Faults) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FAULT\tAT\tLASTED\tLONGEST SUBMIT GAP\tDUPLICATES\tWHAT")
		for _, ev := range r.Faults {
			desc := ev.Desc
			if ev.Error != "" {
				desc += " (inject failed: " + ev.Error + ")"
			}
			if ev.HealErr != "" {
				desc += " (heal failed: " + ev.HealErr + ")"
			}
			fmt.Fprintf(tw, "%s\t+%s\t%s\t%s\t%d\t%s\n", ev.Fault, ev.Start.Sub(r.Started).Round(100*time.Millisecond),
				ev.Healed.Sub(ev.Start).Round(100*time.Millisecond), ev.GapText, ev.Duplicates, desc)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, verdict)
}

// WriteJSON writes the report as JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
