package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
	"github.com/spf13/cobra"
)

// defaultAddrs are the masters of `make dev` and `make up`.
const defaultAddrs = "http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083"

// clientFlags are shared by the client commands.
type clientFlags struct {
	addr    string
	timeout time.Duration
	json    bool
}

func (c *clientFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.addr, "addr", defaultAddrs, "comma-separated master URLs; the next is tried when one cannot be reached")
	cmd.Flags().DurationVar(&c.timeout, "request-timeout", 30*time.Second, "give up on the cluster after this long")
	cmd.Flags().BoolVar(&c.json, "json", false, "print JSON")
}

// attemptTimeout bounds one request to one master: a master that takes
// the connection and does not answer (a paused process) is left for the
// next one after this long, instead of the whole --request-timeout. A
// commit takes milliseconds; the bound only has to exceed a slow one.
const attemptTimeout = 3 * time.Second

func (c *clientFlags) client() *transport.Client {
	return transport.NewClient(splitList(c.addr), transport.WithAttemptTimeout(attemptTimeout))
}

// retry runs fn until it succeeds, fails with a non-retryable error, or ctx
// ends. Retryable errors (no leader, unavailable) wait and try again: the
// calls it wraps are safe to repeat.
func retry(ctx context.Context, fn func() error) error {
	backoff := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil || !api.Retryable(err) && !isTransport(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

// isTransport reports whether err is a network failure rather than an answer.
func isTransport(err error) bool {
	var e *api.Error
	return !errors.As(err, &e) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func randomKey() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "cli-" + hex.EncodeToString(b)
}

func newSubmitCmd() *cobra.Command {
	var (
		cf          clientFlags
		spec        api.TaskSpec
		env         []string
		payload     string
		payloadFile string
		wait        bool
	)
	cmd := &cobra.Command{
		Use:   "submit [flags] -- program [args...]",
		Short: "Submit an exec task; with --wait, wait for it and print its output",
		Example: `  gantry submit -- echo hello
  gantry submit --wait -- sh -c 'echo hello; exit 3'      # exits 3
  gantry submit --env NAME=world --payload '{"n":1}' -- sh -c 'cat; echo $NAME'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Args = args
			if len(env) > 0 {
				spec.Env = map[string]string{}
				for _, kv := range env {
					k, v, ok := strings.Cut(kv, "=")
					if !ok {
						return fmt.Errorf("--env %q: want NAME=value", kv)
					}
					spec.Env[k] = v
				}
			}
			if payloadFile != "" {
				b, err := os.ReadFile(payloadFile)
				if err != nil {
					return fmt.Errorf("--payload-file: %w", err)
				}
				payload = string(b)
			}
			if payload != "" {
				if !json.Valid([]byte(payload)) {
					// Plain text becomes a JSON string: the task reads it as is.
					b, _ := json.Marshal(payload)
					payload = string(b)
				}
				spec.Payload = json.RawMessage(payload)
			}
			if spec.IdempotencyKey == "" {
				// A key makes retries after a lost answer safe.
				spec.IdempotencyKey = randomKey()
			}
			c := cf.client()
			ctx, cancel := context.WithTimeout(cmd.Context(), cf.timeout)
			defer cancel()
			var t api.Task
			err := retry(ctx, func() (err error) {
				t, _, err = c.Submit(ctx, spec)
				return err
			})
			if err != nil {
				return err
			}
			if !wait {
				if cf.json {
					return printJSON(cmd.OutOrStdout(), t)
				}
				fmt.Fprintln(cmd.OutOrStdout(), t.ID)
				return nil
			}
			t, err = waitTerminal(cmd.Context(), c, t.ID)
			if err != nil {
				return err
			}
			return reportFinished(cmd, t, cf.json)
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.BoolVar(&wait, "wait", false, "wait until the task ends, print its output and exit with its exit code")
	f.StringVar(&spec.Timeout, "timeout", "", "kill an attempt after this long (default 30m)")
	f.IntVar(&spec.MaxAttempts, "max-attempts", 0, "attempts before the task fails (default 3)")
	f.IntVar(&spec.Priority, "priority", 0, "higher runs first; -1000 to 1000")
	f.Var(exitCodes{&spec.NoRetryExitCodes}, "no-retry-exit-codes", "exit codes that fail the task at once instead of being retried (comma-separated; \"none\" retries every failure; default: the cluster's, 126 and 127)")
	f.StringArrayVar(&env, "env", nil, "environment variable NAME=value for the task (repeatable)")
	f.StringVar(&payload, "payload", "", "payload given on stdin: JSON, or text (sent as a JSON string)")
	f.StringVar(&payloadFile, "payload-file", "", "read the payload from this file")
	f.StringVar(&spec.IdempotencyKey, "idempotency-key", "", "submitting the same key again returns the same task (default: a random key, so retries are safe)")
	return cmd
}

// waitTerminal long-polls a task until it is terminal.
func waitTerminal(ctx context.Context, c *transport.Client, id string) (api.Task, error) {
	for {
		var t api.Task
		err := retry(ctx, func() (err error) {
			rctx, cancel := context.WithTimeout(ctx, 40*time.Second)
			defer cancel()
			t, err = c.Task(rctx, id, transport.ReadOptions{Wait: 30 * time.Second})
			return err
		})
		if err != nil {
			return t, err
		}
		if t.State.Terminal() {
			return t, nil
		}
	}
}

// exitTimedOut is the exit code of a task whose last attempt timed out, as
// timeout(1) exits, so that scripts can tell it from the task's own codes.
const exitTimedOut = 124

// reportFinished prints a finished task's output and turns its outcome into
// the exit code: the task's exit code, 124 when its last attempt timed out,
// or 1 when it failed without one.
func reportFinished(cmd *cobra.Command, t api.Task, asJSON bool) error {
	if asJSON {
		if err := printJSON(cmd.OutOrStdout(), t); err != nil {
			return err
		}
	} else if t.Result != nil {
		fmt.Fprint(cmd.OutOrStdout(), t.Result.Output)
		if t.Result.Truncated {
			fmt.Fprintf(cmd.ErrOrStderr(), "gantry: the output was longer than %d bytes: its beginning and end are kept, the middle is dropped\n", api.MaxOutputBytes)
		}
	}
	switch t.State {
	case api.StateSucceeded:
		return nil
	case api.StateCanceled:
		fmt.Fprintf(cmd.ErrOrStderr(), "gantry: task %s was canceled\n", t.ID)
		return exitError{code: 1}
	default:
		code := 1
		msg := ""
		if t.Result != nil {
			msg = t.Result.Error
			if t.Result.ExitCode > 0 {
				code = t.Result.ExitCode
			}
		}
		if n := len(t.Attempts); n > 0 && t.Attempts[n-1].Outcome == api.OutcomeTimeout {
			code = exitTimedOut
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "gantry: task %s failed after %d attempt(s)", t.ID, t.Attempt)
		if msg != "" {
			fmt.Fprintf(cmd.ErrOrStderr(), ": %s", msg)
		}
		fmt.Fprintln(cmd.ErrOrStderr())
		return exitError{code: code}
	}
}

func newTaskCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "task", Short: "Inspect and cancel tasks"}
	cmd.AddCommand(newTaskGetCmd(), newTaskListCmd(), newTaskCancelCmd())
	return cmd
}

func newTaskGetCmd() *cobra.Command {
	var (
		cf    clientFlags
		wait  time.Duration
		stale bool
	)
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show one task (as JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := cf.client()
			ctx, cancel := context.WithTimeout(cmd.Context(), cf.timeout+wait)
			defer cancel()
			var t api.Task
			err := retry(ctx, func() (err error) {
				t, err = c.Task(ctx, args[0], transport.ReadOptions{Wait: wait, Stale: stale})
				return err
			})
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), t)
		},
	}
	cf.add(cmd)
	cmd.Flags().DurationVar(&wait, "wait", 0, "hold until the task ends or this long passes")
	cmd.Flags().BoolVar(&stale, "stale", false, "read from the first master that answers, without asking the leader")
	return cmd
}

func newTaskListCmd() *cobra.Command {
	var (
		cf     clientFlags
		filter api.ListFilter
		state  string
		all    bool
		stale  bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tasks in submission order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			filter.State = api.TaskState(state)
			c := cf.client()
			ctx, cancel := context.WithTimeout(cmd.Context(), cf.timeout)
			defer cancel()
			var tasks []api.Task
			next := ""
			for {
				var page api.TaskList
				err := retry(ctx, func() (err error) {
					page, err = c.List(ctx, filter, transport.ReadOptions{Stale: stale})
					return err
				})
				if err != nil {
					return err
				}
				tasks = append(tasks, page.Tasks...)
				next = page.Next
				if !all || page.Next == "" {
					break
				}
				filter.After = page.Next
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), api.TaskList{Tasks: tasks, Next: next})
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tATTEMPT\tWORKER\tPRIORITY\tCREATED\tARGS")
			for _, t := range tasks {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", t.ID, t.State, t.Attempt, dash(t.Worker), t.Priority,
					t.CreatedAt.Local().Format("15:04:05"), clip(strings.Join(t.Args, " "), 50))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if next != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more: --after %s (or --all)\n", next)
			}
			return nil
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only tasks in this state: pending, running, succeeded, failed, canceled")
	f.IntVar(&filter.Limit, "limit", api.DefaultListLimit, "tasks per page (at most 1000)")
	f.StringVar(&filter.After, "after", "", "start after this task ID")
	f.BoolVar(&all, "all", false, "follow every page")
	f.BoolVar(&stale, "stale", false, "read from the first master that answers, without asking the leader")
	return cmd
}

func newTaskCancelCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a pending or running task",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := cf.client()
			ctx, cancel := context.WithTimeout(cmd.Context(), cf.timeout)
			defer cancel()
			var t api.Task
			err := retry(ctx, func() (err error) {
				t, err = c.Cancel(ctx, args[0])
				return err
			})
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), t)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", t.ID, t.State)
			return nil
		},
	}
	cf.add(cmd)
	return cmd
}

func newStatusCmd() *cobra.Command {
	var (
		cf    clientFlags
		stale bool
		all   bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the leader, masters, workers and task counts",
		Long: `Show the leader, masters, workers and task counts.

Each master is shown at the --addr address it answered on, followed by the
address it advertises to the cluster when that differs (inside docker
compose the advertised one only resolves on the compose network). Workers
that run in a container known to the leader show its name. Departed workers
(left or dead; gossip forgets them after a while) are counted, and listed
with --all.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := cf.client()
			ctx, cancel := context.WithTimeout(cmd.Context(), cf.timeout)
			defer cancel()
			reached := make(chan map[string]string, 1)
			go func() { reached <- reachedAddrs(ctx, c, probeTimeout) }()
			var st api.ClusterStatus
			err := retry(ctx, func() (err error) {
				st, err = c.Cluster(ctx, transport.ReadOptions{Stale: stale})
				return err
			})
			if err != nil {
				return err
			}
			byID := <-reached
			if cf.json {
				return printJSON(cmd.OutOrStdout(), withReached(st, byID))
			}
			return printStatus(cmd.OutOrStdout(), st, byID, all)
		},
	}
	cf.add(cmd)
	cmd.Flags().BoolVar(&stale, "stale", false, "ask the first master that answers, without going through the leader")
	cmd.Flags().BoolVar(&all, "all", false, "also list departed workers (left or dead); --json always lists every worker")
	return cmd
}

// probeTimeout bounds how long status waits for each --addr address to say
// which master answers there.
const probeTimeout = 2 * time.Second

// reachedAddrs asks every address of c, at once and for at most timeout,
// which master answers there, and returns master ID -> address. When two
// addresses reach the same master the first in the list wins. Addresses
// that do not answer are left out.
func reachedAddrs(ctx context.Context, c *transport.Client, timeout time.Duration) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addrs := c.Addrs()
	ids := make([]string, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ns, err := c.SelfAt(ctx, a); err == nil {
				ids[i] = ns.ID
			}
		}()
	}
	wg.Wait()
	out := make(map[string]string)
	for i, id := range ids {
		if _, dup := out[id]; id != "" && !dup {
			out[id] = addrs[i]
		}
	}
	return out
}

// statusJSON is what `gantry status --json` prints: GET /v1/cluster as is,
// with each master's reached_addr added.
type statusJSON struct {
	api.ClusterStatus
	Masters []statusMasterJSON `json:"masters"`
}

// statusMasterJSON is api.MasterStatus plus the address the CLI reached the
// master by, when it did.
type statusMasterJSON struct {
	api.MasterStatus
	ReachedAddr string `json:"reached_addr,omitempty"`
}

func withReached(st api.ClusterStatus, reached map[string]string) statusJSON {
	out := statusJSON{ClusterStatus: st, Masters: make([]statusMasterJSON, len(st.Masters))}
	for i, m := range st.Masters {
		out.Masters[i] = statusMasterJSON{MasterStatus: m, ReachedAddr: reached[m.ID]}
	}
	return out
}

// masterAddr is how status shows a master's HTTP address: the one the CLI
// reached it by, and the advertised one beside it when that differs.
func masterAddr(advertised, reached string) string {
	switch {
	case reached == "":
		return dash(advertised)
	case advertised == "" || transport.NormalizeURL(advertised) == reached:
		return reached
	default:
		return reached + " (advertised " + advertised + ")"
	}
}

// departed reports whether a worker is gone: it left, or gossip declared it
// dead.
func departed(w api.WorkerStatus) bool {
	return w.State == api.WorkerLeft || w.State == api.WorkerDead
}

// printStatus prints st as tables. reached maps master IDs to the address
// the CLI reached them by; departed workers are listed only when all is set.
func printStatus(w io.Writer, st api.ClusterStatus, reached map[string]string, all bool) error {
	fmt.Fprintf(w, "leader: %s (term %d)\n\n", dash(st.Leader), st.Term)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MASTER\tROLE\tVOTER\tAPPLIED\tRAFT\tHTTP")
	for _, m := range st.Masters {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s\t%s\n", m.ID, m.Role, m.Voter, m.AppliedIndex, m.RaftAddr, masterAddr(m.HTTPAddr, reached[m.ID]))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NAME\tWORKER\tSTATE\tSLOTS\tRUNNING\tHTTP")
	workers := make([]api.WorkerStatus, 0, len(st.Workers))
	hidden := 0
	for _, wk := range st.Workers {
		if departed(wk) && !all {
			hidden++
			continue
		}
		workers = append(workers, wk)
	}
	label := func(wk api.WorkerStatus) string {
		if wk.Name != "" {
			return wk.Name
		}
		return wk.ID
	}
	sort.Slice(workers, func(i, j int) bool {
		if a, b := label(workers[i]), label(workers[j]); a != b {
			return a < b
		}
		return workers[i].ID < workers[j].ID
	})
	for _, wk := range workers {
		state := wk.State
		if wk.Draining {
			state += " (draining)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", dash(wk.Name), wk.ID, state, wk.Slots, wk.Running, dash(wk.HTTPAddr))
	}
	switch {
	case hidden == 1:
		fmt.Fprintln(tw, "(1 departed worker hidden; --all shows it)")
	case hidden > 1:
		fmt.Fprintf(tw, "(%d departed workers hidden; --all shows them)\n", hidden)
	case len(workers) == 0:
		fmt.Fprintln(tw, "(none)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PENDING\tRUNNING\tSUCCEEDED\tFAILED\tCANCELED")
	fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\n", st.Tasks.Pending, st.Tasks.Running, st.Tasks.Succeeded, st.Tasks.Failed, st.Tasks.Canceled)
	return tw.Flush()
}

func newHealthCmd() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Exit 0 when the gantry process at --addr serves /healthz (for container health checks)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
			defer cancel()
			c := transport.NewClient([]string{addr})
			return c.Health(ctx)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "http://127.0.0.1:8080", "URL of the process to check")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
