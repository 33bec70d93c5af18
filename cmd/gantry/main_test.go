package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/spf13/cobra"
)

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{
		"data-dir":               "GANTRY_DATA_DIR",
		"addr":                   "GANTRY_ADDR",
		"raft-heartbeat-timeout": "GANTRY_RAFT_HEARTBEAT_TIMEOUT",
		"log-json":               "GANTRY_LOG_JSON",
		"id":                     "GANTRY_ID",
	} {
		if got := envName(flag); got != want {
			t.Errorf("envName(%q) = %q, want %q", flag, got, want)
		}
	}
}

// parsed returns the master command with args parsed and the environment
// applied, as the root command's PersistentPreRunE does.
func parsed(t *testing.T, args ...string) (*cobra.Command, error) {
	t.Helper()
	cmd := newMasterCmd()
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return cmd, applyEnv(cmd)
}

func flagValue(t *testing.T, cmd *cobra.Command, name string) string {
	t.Helper()
	f := cmd.Flags().Lookup(name)
	if f == nil {
		t.Fatalf("no flag --%s", name)
	}
	return f.Value.String()
}

func TestApplyEnv_SetsFlagsFromTheEnvironment(t *testing.T) {
	t.Setenv("GANTRY_DATA_DIR", "/var/lib/gantry")
	t.Setenv("GANTRY_RAFT_HEARTBEAT_TIMEOUT", "750ms")
	t.Setenv("GANTRY_JOIN", "m1:7946,m2:7946")
	t.Setenv("GANTRY_LOG_JSON", "true")
	t.Setenv("GANTRY_SNAPSHOT_THRESHOLD", "42")
	cmd, err := parsed(t)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"data-dir":               "/var/lib/gantry",
		"raft-heartbeat-timeout": "750ms",
		"join":                   "[m1:7946,m2:7946]",
		"log-json":               "true",
		"snapshot-threshold":     "42",
	} {
		if got := flagValue(t, cmd, name); got != want {
			t.Errorf("--%s = %q, want %q", name, got, want)
		}
		if !cmd.Flags().Lookup(name).Changed {
			t.Errorf("--%s set from the environment is not marked changed", name)
		}
	}
	// Flags without a variable keep their defaults.
	if got := flagValue(t, cmd, "http"); got != "127.0.0.1:8080" {
		t.Errorf("--http = %q, want the default", got)
	}
	if cmd.Flags().Lookup("http").Changed {
		t.Error("--http is marked changed without a variable")
	}
}

func TestApplyEnv_CommandLineWins(t *testing.T) {
	t.Setenv("GANTRY_DATA_DIR", "/from/env")
	t.Setenv("GANTRY_ID", "env-id")
	t.Setenv("GANTRY_JOIN", "env:1")
	cmd, err := parsed(t, "--data-dir", "/from/cli", "--join=cli:1,cli:2")
	if err != nil {
		t.Fatal(err)
	}
	if got := flagValue(t, cmd, "data-dir"); got != "/from/cli" {
		t.Errorf("--data-dir = %q, want the command line's /from/cli", got)
	}
	if got := flagValue(t, cmd, "join"); got != "[cli:1,cli:2]" {
		t.Errorf("--join = %q, want the command line's", got)
	}
	if got := flagValue(t, cmd, "id"); got != "env-id" {
		t.Errorf("--id = %q, want env-id from the environment", got)
	}
	// Even a bad variable does not matter when the flag was given.
	t.Setenv("GANTRY_RAFT_ELECTION_TIMEOUT", "never")
	if _, err := parsed(t, "--raft-election-timeout", "2s"); err != nil {
		t.Errorf("a bad variable for a flag given on the command line: %v", err)
	}
}

func TestApplyEnv_BadValueNamesTheVariable(t *testing.T) {
	t.Setenv("GANTRY_RAFT_HEARTBEAT_TIMEOUT", "soon")
	t.Setenv("GANTRY_SNAPSHOT_THRESHOLD", "-3")
	_, err := parsed(t)
	if err == nil {
		t.Fatal("no error for bad values")
	}
	for _, want := range []string{"GANTRY_RAFT_HEARTBEAT_TIMEOUT", `"soon"`, "GANTRY_SNAPSHOT_THRESHOLD", `"-3"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestRoot_EnvironmentReachesSubcommands(t *testing.T) {
	// A bad variable fails the command before it does anything.
	t.Setenv("GANTRY_REQUEST_TIMEOUT", "eventually")
	_, _, err := execute(t, "status", "--addr", "http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "GANTRY_REQUEST_TIMEOUT") {
		t.Errorf("status with a bad GANTRY_REQUEST_TIMEOUT: %v", err)
	}
	// GANTRY_ADDR replaces the default master list.
	srv := fakeAPI(t, api.Task{ID: api.FormatTaskID(5), State: api.StateSucceeded})
	t.Setenv("GANTRY_REQUEST_TIMEOUT", "20s")
	t.Setenv("GANTRY_ADDR", srv.URL)
	out, _, err := execute(t, "task", "get", api.FormatTaskID(5))
	if err != nil {
		t.Fatalf("task get: %v", err)
	}
	var task api.Task
	if err := json.Unmarshal([]byte(out), &task); err != nil || task.ID != api.FormatTaskID(5) {
		t.Errorf("task get printed %q (%v)", out, err)
	}
}

func TestDescribe(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{api.NotFoundf("task 00000000000000ff not found"), "task 00000000000000ff not found (HTTP 404)"},
		{fmt.Errorf("cancel: %w", api.Conflictf("task x is already succeeded")), "task x is already succeeded (HTTP 409)"},
		{api.BadRequest("timeout", "%q is not a duration", "abc"), `timeout: "abc" is not a duration (HTTP 400)`},
		{api.Unavailablef(api.CodeNoLeader, "no leader was elected within 5s; retry"), "no leader was elected within 5s; retry (HTTP 503)"},
		{&api.Error{Code: api.CodeBadRequest, Field: "args"}, "args: invalid"},
		{errors.New("dial tcp 127.0.0.1:8081: connect: connection refused"), "dial tcp 127.0.0.1:8081: connect: connection refused"},
	} {
		if got := describe(tt.err); got != tt.want {
			t.Errorf("describe(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestReportFinished(t *testing.T) {
	for _, tt := range []struct {
		name       string
		task       api.Task
		code       int // 0: no error
		stdout     string
		stderrHas  string
		stderrNone bool
	}{
		{
			name:       "succeeded",
			task:       api.Task{ID: "t1", State: api.StateSucceeded, Attempt: 1, Result: &api.Result{Output: "hello\n"}},
			stdout:     "hello\n",
			stderrNone: true,
		},
		{
			name:   "succeeded with truncated output",
			task:   api.Task{ID: "t1", State: api.StateSucceeded, Attempt: 1, Result: &api.Result{Output: "lots", Truncated: true}},
			stdout: "lots", stderrHas: "the middle is dropped",
		},
		{
			name:   "failed with exit code 3",
			task:   api.Task{ID: "t2", State: api.StateFailed, Attempt: 1, Result: &api.Result{ExitCode: 3, Output: "oops\n", Error: "exit status 3"}},
			code:   3,
			stdout: "oops\n", stderrHas: "task t2 failed after 1 attempt(s): exit status 3",
		},
		{
			name: "failed with exit code 255",
			task: api.Task{ID: "t2", State: api.StateFailed, Attempt: 3, Result: &api.Result{ExitCode: 255}},
			code: 255, stderrHas: "failed after 3 attempt(s)",
		},
		{
			name: "timed out: 124, as timeout(1) exits",
			task: api.Task{ID: "t3", State: api.StateFailed, Attempt: 2, Result: &api.Result{ExitCode: -1, Error: "timeout after 1s"},
				Attempts: []api.AttemptRecord{{Attempt: 1, Outcome: api.OutcomeFailed}, {Attempt: 2, Outcome: api.OutcomeTimeout}}},
			code: 124, stderrHas: "timeout after 1s",
		},
		{
			name: "failed after an earlier timeout: the last attempt's code",
			task: api.Task{ID: "t3", State: api.StateFailed, Attempt: 2, Result: &api.Result{ExitCode: 5},
				Attempts: []api.AttemptRecord{{Attempt: 1, Outcome: api.OutcomeTimeout}, {Attempt: 2, Outcome: api.OutcomeFailed}}},
			code: 5, stderrHas: "failed after 2 attempt(s)",
		},
		{
			name: "failed without a result",
			task: api.Task{ID: "t4", State: api.StateFailed, Attempt: 3},
			code: 1, stderrHas: "task t4 failed after 3 attempt(s)",
		},
		{
			name: "canceled",
			task: api.Task{ID: "t5", State: api.StateCanceled},
			code: 1, stderrHas: "task t5 was canceled",
		},
	} {
		for _, asJSON := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/json=%v", tt.name, asJSON), func(t *testing.T) {
				var out, errOut bytes.Buffer
				cmd := &cobra.Command{}
				cmd.SetOut(&out)
				cmd.SetErr(&errOut)
				err := reportFinished(cmd, tt.task, asJSON)
				checkExit(t, err, tt.code)
				if asJSON {
					var got api.Task
					if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.ID != tt.task.ID {
						t.Errorf("--json printed %q (%v)", out.String(), err)
					}
				} else if out.String() != tt.stdout {
					t.Errorf("stdout %q, want %q", out.String(), tt.stdout)
				}
				if tt.stderrNone && errOut.Len() != 0 {
					t.Errorf("stderr %q, want nothing", errOut.String())
				}
				if !asJSON && tt.stderrHas != "" && !strings.Contains(errOut.String(), tt.stderrHas) {
					t.Errorf("stderr %q, want it to contain %q", errOut.String(), tt.stderrHas)
				}
			})
		}
	}
}

func checkExit(t *testing.T, err error, code int) {
	t.Helper()
	if code == 0 {
		if err != nil {
			t.Errorf("error %v, want none", err)
		}
		return
	}
	var ee exitError
	if !errors.As(err, &ee) || ee.code != code {
		t.Errorf("error %v, want exit code %d", err, code)
	}
}

// fakeAPI serves POST /v1/tasks (answering with final's ID) and GET
// /v1/tasks/{id} (answering final, as a long poll would once it ends).
func fakeAPI(t *testing.T, final api.Task) *httptest.Server {
	t.Helper()
	var mu sync.Mutex
	var submitted []api.TaskSpec
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		var spec api.TaskSpec
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		submitted = append(submitted, spec)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(api.Task{ID: final.ID, State: api.StatePending, Args: spec.Args, MaxAttempts: spec.MaxAttempts, IdempotencyKey: spec.IdempotencyKey})
	})
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.PathValue("id") != final.ID {
			w.WriteHeader(404)
			_ = json.NewEncoder(w).Encode(api.NotFoundf("task %s not found", r.PathValue("id")))
			return
		}
		_ = json.NewEncoder(w).Encode(final)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// execute runs the root command with args and returns its output.
func execute(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- root.Execute() }()
	select {
	case err := <-done:
		return out.String(), errOut.String(), err
	case <-time.After(2 * time.Minute):
		t.Fatalf("gantry %q did not finish", args)
		return "", "", nil
	}
}

func TestSubmitWait_ExitCodes(t *testing.T) {
	for _, tt := range []struct {
		name   string
		final  api.Task
		code   int
		stdout string
	}{
		{"succeeded", api.Task{ID: api.FormatTaskID(1), State: api.StateSucceeded, Attempt: 1, Result: &api.Result{Output: "hello\n"}}, 0, "hello\n"},
		{"exit 3", api.Task{ID: api.FormatTaskID(2), State: api.StateFailed, Attempt: 1, Result: &api.Result{ExitCode: 3, Error: "exit status 3"}}, 3, ""},
		{"canceled", api.Task{ID: api.FormatTaskID(3), State: api.StateCanceled}, 1, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := fakeAPI(t, tt.final)
			out, _, err := execute(t, "submit", "--addr", srv.URL, "--wait", "--max-attempts", "1", "--", "sh", "-c", "echo hello")
			checkExit(t, err, tt.code)
			if out != tt.stdout {
				t.Errorf("stdout %q, want %q", out, tt.stdout)
			}
		})
	}
	// Without --wait the ID is printed and the exit code is 0.
	srv := fakeAPI(t, api.Task{ID: api.FormatTaskID(9), State: api.StateFailed})
	out, _, err := execute(t, "submit", "--addr", srv.URL, "--", "false")
	if err != nil || out != api.FormatTaskID(9)+"\n" {
		t.Errorf("submit without --wait: %q %v", out, err)
	}
	// A refused submission is an API error, described with its status.
	out, _, err = execute(t, "task", "get", "--addr", srv.URL, api.FormatTaskID(8))
	if !errors.Is(err, api.ErrNotFound) || !strings.Contains(describe(err), "(HTTP 404)") {
		t.Errorf("task get of an unknown task: %q %v", out, err)
	}
}

// fakeSubmitMaster answers POST /v1/tasks and /v1/tasks/batch like a leader,
// except that it refuses every failEvery-th request with 503.
type fakeSubmitMaster struct {
	mu        sync.Mutex
	n         int
	failEvery int
	keys      map[string]int  // accepted
	refused   map[string]bool // in a refused request
}

func (f *fakeSubmitMaster) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var specs []api.TaskSpec
	switch r.URL.Path {
	case "/v1/tasks":
		var s api.TaskSpec
		if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		specs = []api.TaskSpec{s}
	case "/v1/tasks/batch":
		var b api.BatchRequest
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		specs = b.Tasks
	default:
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	f.n++
	fail := f.failEvery > 0 && f.n%f.failEvery == 0
	if fail {
		for _, s := range specs {
			f.refused[s.IdempotencyKey] = true
		}
	}
	f.mu.Unlock()
	if fail {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"code":"not_leader","message":"fake"}`)
		return
	}
	tasks := make([]api.Task, len(specs))
	f.mu.Lock()
	for i, s := range specs {
		f.keys[s.IdempotencyKey]++
		tasks[i] = api.Task{ID: fmt.Sprintf("%016x", len(f.keys)), Args: s.Args, State: api.StatePending, IdempotencyKey: s.IdempotencyKey}
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	if r.URL.Path == "/v1/tasks" {
		_ = json.NewEncoder(w).Encode(tasks[0])
		return
	}
	_ = json.NewEncoder(w).Encode(api.BatchResponse{Tasks: tasks})
}

func TestBench_TableAndReport(t *testing.T) {
	for _, batch := range []int{1, 10} {
		t.Run(fmt.Sprint("batch", batch), func(t *testing.T) {
			a := &fakeSubmitMaster{failEvery: 7, keys: map[string]int{}, refused: map[string]bool{}}
			b := &fakeSubmitMaster{keys: map[string]int{}, refused: map[string]bool{}}
			sa, sb := httptest.NewServer(a), httptest.NewServer(b)
			defer sa.Close()
			defer sb.Close()
			report := t.TempDir() + "/bench-report.json"
			cmd := newBenchCmd()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetArgs([]string{"--addr", sa.URL + "," + sb.URL, "--clients", "1,3", "--repeats", "2",
				"--duration", "300ms", "--batch", fmt.Sprint(batch), "--report", report})
			if err := cmd.Execute(); err != nil {
				t.Fatalf("bench: %v\n%s", err, out.String())
			}
			for _, want := range []string{"CLIENTS", "TASKS/S", "LONGEST GAP MS", "report: " + report} {
				if !strings.Contains(out.String(), want) {
					t.Fatalf("output lacks %q:\n%s", want, out.String())
				}
			}
			data, err := os.ReadFile(report)
			if err != nil {
				t.Fatal(err)
			}
			var rep benchReport
			if err := json.Unmarshal(data, &rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Rows) != 2 || rep.Rows[0].Clients != 1 || rep.Rows[1].Clients != 3 || rep.Batch != batch {
				t.Fatalf("report rows %+v, batch %d", rep.Rows, rep.Batch)
			}
			acked, errs := 0, 0
			for _, row := range rep.Rows {
				if len(row.Runs) != 2 || row.PerSec.Median <= 0 || row.PerSec.Min > row.PerSec.Median || row.PerSec.Median > row.PerSec.Max {
					t.Fatalf("row %+v", row)
				}
				for _, r := range row.Runs {
					if r.Tasks != r.Requests*batch || r.Tasks == 0 {
						t.Fatalf("run %+v: tasks is not requests x batch", r)
					}
					acked += r.Tasks
					errs += r.Errors
				}
			}
			// Every acknowledged task was received under its own key; a
			// refused request was sent again with the same keys. Close
			// waits for requests a client gave up on at the end of a run.
			sa.Close()
			sb.Close()
			received := map[string]bool{}
			for _, f := range []*fakeSubmitMaster{a, b} {
				f.mu.Lock()
				for k := range f.keys {
					received[k] = true
				}
				f.mu.Unlock()
			}
			if errs == 0 || len(received) < acked {
				t.Fatalf("%d errors, %d keys received for %d acknowledged tasks", errs, len(received), acked)
			}
			// A refused request is retried on the other master with the
			// same keys (only one cut short by the end of a run is not).
			retried := 0
			for k := range a.refused {
				if received[k] {
					retried++
				}
			}
			if len(a.refused) == 0 || retried == 0 || len(a.refused)-retried > 4*2*batch {
				t.Fatalf("%d keys refused, %d of them accepted later: a retry must reuse its keys", len(a.refused), retried)
			}
		})
	}
}

func TestBench_RefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--clients", "0"}, {"--batch", "0"}, {"--batch", "100000"}, {"--repeats", "0"}, {"--duration", "0s"}, {"--addr", ""},
	} {
		cmd := newBenchCmd()
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		cmd.SetArgs(append(args, "--report", ""))
		if err := cmd.Execute(); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// fakeStatusMasters starts one fake master per ID, each answering GET
// /v1/internal/self with its ID and GET /v1/cluster with what status returns
// at the time. It returns their URLs.
func fakeStatusMasters(t *testing.T, status func() api.ClusterStatus, ids ...string) []string {
	t.Helper()
	var urls []string
	for _, id := range ids {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /v1/internal/self", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(api.NodeStatus{ID: id})
		})
		mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(status())
		})
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	return urls
}

// rowOf returns the line of out whose first column is first, or fails.
func rowOf(t *testing.T, out, first string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == first {
			return l
		}
	}
	t.Fatalf("no row %q in:\n%s", first, out)
	return ""
}

// lineWith returns the first line of out that contains s, or fails.
func lineWith(t *testing.T, out, s string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	t.Fatalf("no line with %q in:\n%s", s, out)
	return ""
}

func TestStatus_ReachedAddressesNamesAndDepartedWorkers(t *testing.T) {
	st := api.ClusterStatus{
		Leader: "m1", Term: 4,
		Masters: []api.MasterStatus{
			{ID: "m1", Role: "leader", Voter: true, RaftAddr: "master-1:7000", HTTPAddr: "http://master-1:8080"},
			{ID: "m2", Role: "follower", Voter: true, RaftAddr: "master-2:7000", HTTPAddr: "http://master-2:8080"},
			{ID: "m3", Role: "follower", Voter: true, RaftAddr: "master-3:7000"}, // advertised set below
			{ID: "m4", Role: "unknown", Voter: true, RaftAddr: "master-4:7000", HTTPAddr: "http://master-4:8080"},
		},
		Workers: []api.WorkerStatus{
			{ID: "3f2a9c1d7b4e", Name: "gantry_worker_1", State: api.WorkerAlive, Slots: 4, HTTPAddr: "http://172.18.0.7:8090"},
			{ID: "gantry-managed-1", Name: "gantry-managed-1", State: api.WorkerAlive, Slots: 4, HTTPAddr: "http://gantry-managed-1:8090"},
			{ID: "gantry-managed-2", Name: "gantry-managed-2", State: api.WorkerLeft, Draining: true, Slots: 4},
			{ID: "9e8d7c6b5a4f", State: api.WorkerDead, Slots: 4},
		},
	}
	// m1 and m2 advertise compose names; m3 advertises the very address the
	// CLI reaches it by; m4 is not reached (the last address is down).
	var mu sync.Mutex
	status := func() api.ClusterStatus {
		mu.Lock()
		defer mu.Unlock()
		return st
	}
	urls := fakeStatusMasters(t, status, "m1", "m2", "m3")
	mu.Lock()
	st.Masters[2].HTTPAddr = urls[2] + "/"
	mu.Unlock()
	addr := strings.Join(append(urls, "http://127.0.0.1:1"), ",")

	out, _, err := execute(t, "status", "--addr", addr, "--request-timeout", "10s")
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if l := rowOf(t, out, "m1"); !strings.Contains(l, urls[0]+" (advertised http://master-1:8080)") {
		t.Errorf("m1: %q, want the reached %s beside the advertised address", l, urls[0])
	}
	if l := rowOf(t, out, "m2"); !strings.Contains(l, urls[1]+" (advertised http://master-2:8080)") {
		t.Errorf("m2: %q, want the reached %s beside the advertised address", l, urls[1])
	}
	if l := rowOf(t, out, "m3"); !strings.Contains(l, urls[2]) || strings.Contains(l, "advertised") {
		t.Errorf("m3: %q, want only %s (advertised and reached are the same)", l, urls[2])
	}
	if l := rowOf(t, out, "m4"); !strings.Contains(l, "http://master-4:8080") || strings.Contains(l, "advertised") {
		t.Errorf("m4: %q, want only the advertised address (not reached)", l)
	}
	if l := rowOf(t, out, "gantry_worker_1"); !strings.Contains(l, " 3f2a9c1d7b4e ") {
		t.Errorf("compose worker: %q, want it named by its container", l)
	}
	lineWith(t, out, "gantry-managed-1")
	for _, gone := range []string{"gantry-managed-2", "9e8d7c6b5a4f"} {
		if strings.Contains(out, gone) {
			t.Errorf("departed worker %s listed without --all:\n%s", gone, out)
		}
	}
	lineWith(t, out, "(2 departed workers hidden; --all shows them)")

	out, _, err = execute(t, "status", "--addr", addr, "--request-timeout", "10s", "--all")
	if err != nil {
		t.Fatalf("status --all: %v", err)
	}
	if l := lineWith(t, out, "gantry-managed-2"); !strings.Contains(l, "left (draining)") {
		t.Errorf("--all: %q, want the left worker", l)
	}
	lineWith(t, out, "9e8d7c6b5a4f")
	if strings.Contains(out, "hidden") {
		t.Errorf("--all still hides workers:\n%s", out)
	}

	out, _, err = execute(t, "status", "--addr", addr, "--request-timeout", "10s", "--json")
	if err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var got struct {
		api.ClusterStatus
		Masters []struct {
			api.MasterStatus
			ReachedAddr string `json:"reached_addr"`
		} `json:"masters"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json printed %q: %v", out, err)
	}
	if len(got.Masters) != 4 || got.Masters[0].HTTPAddr != "http://master-1:8080" || got.Masters[0].ReachedAddr != urls[0] || got.Masters[3].ReachedAddr != "" {
		t.Errorf("--json masters %+v, want the API's with reached_addr added", got.Masters)
	}
	if len(got.Workers) != 4 || got.Workers[0].Name != "gantry_worker_1" {
		t.Errorf("--json workers %+v, want all four as the API sent them", got.Workers)
	}
}
