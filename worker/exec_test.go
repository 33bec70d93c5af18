package worker

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gantryhq/gantry/api"
)

// assignment returns an attempt of a task that runs args with a generous
// timeout.
func assignment(args ...string) api.Assignment {
	return api.Assignment{TaskID: "0000000000000001", Attempt: 1, Type: api.TypeExec, Args: args, Timeout: "20s"}
}

func shell(script string) []string { return []string{"sh", "-c", script} }

// writeFile creates an executable (or not) file in dir.
func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask
		t.Fatal(err)
	}
	return p
}

func checkTimes(t *testing.T, res ExecResult) {
	t.Helper()
	if res.StartedAt.IsZero() || res.FinishedAt.Before(res.StartedAt) {
		t.Errorf("StartedAt %v, FinishedAt %v: want both set and in order", res.StartedAt, res.FinishedAt)
	}
}

func TestRunExecOutcomes(t *testing.T) {
	dir := t.TempDir()
	noexec := writeFile(t, dir, "gantry-noexec", "#!/bin/sh\necho never\n", 0o644)
	writeFile(t, dir, "gantry-test-prog", "#!/bin/sh\necho from script \"$@\"\n", 0o755)
	pathWithDir := dir + string(os.PathListSeparator) + os.Getenv("PATH")

	tests := []struct {
		name        string
		args        []string
		cfg         ExecConfig
		wantOutcome api.Outcome
		wantCode    int
		wantOutput  string
		wantErr     string // exact, unless wantErrPart is set
		wantErrPart string // substring
	}{
		{
			name: "success with output", args: shell("echo hello; echo world"),
			wantOutcome: api.OutcomeSucceeded, wantCode: 0, wantOutput: "hello\nworld\n",
		},
		{
			name: "args passed without a shell", args: []string{"echo", "a  b", "$HOME", "*"},
			wantOutcome: api.OutcomeSucceeded, wantCode: 0, wantOutput: "a  b $HOME *\n",
		},
		{
			name: "non-zero exit", args: shell("echo bad; exit 3"),
			wantOutcome: api.OutcomeFailed, wantCode: 3, wantOutput: "bad\n",
		},
		{
			name: "stderr interleaved with stdout", args: shell("echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 1"),
			wantOutcome: api.OutcomeFailed, wantCode: 1, wantOutput: "out1\nerr1\nout2\nerr2\n",
		},
		{
			name: "program not found", args: []string{"gantry-no-such-program"},
			wantOutcome: api.OutcomeFailed, wantCode: 127,
			wantErr: `exec: "gantry-no-such-program": executable file not found in $PATH`,
		},
		{
			name: "absolute path not found", args: []string{filepath.Join(dir, "missing")},
			wantOutcome: api.OutcomeFailed, wantCode: 127, wantErrPart: "no such file or directory",
		},
		{
			name: "empty args", args: nil,
			wantOutcome: api.OutcomeFailed, wantCode: 127, wantErrPart: "no program",
		},
		{
			name: "file not executable", args: []string{noexec},
			wantOutcome: api.OutcomeFailed, wantCode: 126, wantErrPart: "permission denied",
		},
		{
			name: "file in PATH not executable", args: []string{"gantry-noexec"}, cfg: ExecConfig{Path: pathWithDir},
			wantOutcome: api.OutcomeFailed, wantCode: 126, wantErr: `exec: "gantry-noexec": permission denied`,
		},
		{
			name: "directory as program", args: []string{dir},
			wantOutcome: api.OutcomeFailed, wantCode: 126, wantErrPart: "permission denied",
		},
		{
			name: "program resolved with cfg.Path", args: []string{"gantry-test-prog", "x"}, cfg: ExecConfig{Path: pathWithDir},
			wantOutcome: api.OutcomeSucceeded, wantCode: 0, wantOutput: "from script x\n",
		},
		{
			name: "program not in cfg.Path", args: []string{"gantry-test-prog"}, cfg: ExecConfig{Path: "/nonexistent"},
			wantOutcome: api.OutcomeFailed, wantCode: 127,
			wantErr: `exec: "gantry-test-prog": executable file not found in $PATH`,
		},
		{
			name: "killed by its own SIGKILL", args: shell("echo before; kill -9 $$"),
			wantOutcome: api.OutcomeFailed, wantCode: -1, wantOutput: "before\n", wantErr: "killed by signal: killed",
		},
		{
			name: "killed by its own SIGTERM", args: shell("kill -TERM $$"),
			wantOutcome: api.OutcomeFailed, wantCode: -1, wantErr: "killed by signal: terminated",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := RunExec(context.Background(), assignment(tt.args...), tt.cfg)
			if res.Outcome != tt.wantOutcome || res.ExitCode != tt.wantCode {
				t.Errorf("outcome %q exit %d, want %q exit %d (error %q, output %q)",
					res.Outcome, res.ExitCode, tt.wantOutcome, tt.wantCode, res.Error, res.Output)
			}
			if res.Output != tt.wantOutput {
				t.Errorf("output %q, want %q", res.Output, tt.wantOutput)
			}
			if res.Truncated {
				t.Error("Truncated set")
			}
			if tt.wantErrPart != "" {
				if !strings.Contains(res.Error, tt.wantErrPart) {
					t.Errorf("error %q, want it to contain %q", res.Error, tt.wantErrPart)
				}
			} else if res.Error != tt.wantErr {
				t.Errorf("error %q, want %q", res.Error, tt.wantErr)
			}
			checkTimes(t, res)
		})
	}
}

func TestRunExecEnv(t *testing.T) {
	if _, err := exec.LookPath("env"); err != nil {
		t.Skip("no env program")
	}
	leak := "GANTRY_TEST_LEAK_" + strconv.Itoa(os.Getpid())
	t.Setenv(leak, "leaked")
	workerPath := os.Getenv("PATH") + string(os.PathListSeparator) + "/gantry-test-marker"
	t.Setenv("PATH", workerPath)

	tests := []struct {
		name    string
		env     map[string]string
		attempt int
		cfg     ExecConfig
		want    map[string]string
	}{
		{
			name: "worker PATH when cfg.Path is empty", attempt: 1,
			want: map[string]string{"PATH": workerPath, "GANTRY_TASK_ID": "0000000000000001", "GANTRY_ATTEMPT": "1"},
		},
		{
			name: "cfg.Path", attempt: 2, cfg: ExecConfig{Path: "/usr/bin:/bin"},
			want: map[string]string{"PATH": "/usr/bin:/bin", "GANTRY_TASK_ID": "0000000000000001", "GANTRY_ATTEMPT": "2"},
		},
		{
			name: "task env added", attempt: 7, cfg: ExecConfig{Path: "/usr/bin:/bin"},
			env: map[string]string{"FOO": "bar", "EMPTY": "", "SPACES": "a b  c"},
			want: map[string]string{
				"PATH": "/usr/bin:/bin", "GANTRY_TASK_ID": "0000000000000001", "GANTRY_ATTEMPT": "7",
				"FOO": "bar", "EMPTY": "", "SPACES": "a b  c",
			},
		},
		{
			name: "task PATH wins", attempt: 1, cfg: ExecConfig{Path: "/nonexistent"},
			env:  map[string]string{"PATH": "/gantry-task-path:/usr/bin:/bin"},
			want: map[string]string{"PATH": "/gantry-task-path:/usr/bin:/bin", "GANTRY_TASK_ID": "0000000000000001", "GANTRY_ATTEMPT": "1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := assignment("env")
			a.Attempt, a.Env = tt.attempt, tt.env
			res := RunExec(context.Background(), a, tt.cfg)
			if res.Outcome != api.OutcomeSucceeded {
				t.Fatalf("outcome %q, error %q, output %q", res.Outcome, res.Error, res.Output)
			}
			got := map[string]string{}
			for _, line := range strings.Split(strings.TrimSuffix(res.Output, "\n"), "\n") {
				k, v, _ := strings.Cut(line, "=")
				got[k] = v
			}
			if _, ok := got[leak]; ok {
				t.Errorf("worker variable %s leaked into the task", leak)
			}
			if len(got) != len(tt.want) {
				t.Errorf("env has %d variables, want %d:\n%s", len(got), len(tt.want), res.Output)
			}
			for k, v := range tt.want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s=%q (set %v), want %q", k, g, ok, v)
				}
			}
		})
	}

	t.Run("sh sees the variables", func(t *testing.T) {
		a := assignment("sh", "-c", `echo "$GANTRY_TASK_ID/$GANTRY_ATTEMPT/$X/${`+leak+`:-unset}"`)
		a.Attempt, a.Env = 4, map[string]string{"X": "y"}
		res := RunExec(context.Background(), a, ExecConfig{})
		if want := "0000000000000001/4/y/unset\n"; res.Output != want {
			t.Errorf("output %q, want %q (error %q)", res.Output, want, res.Error)
		}
	})
}

func TestRunExecPayload(t *testing.T) {
	big, _ := json.Marshal(strings.Repeat("p", 300<<10))
	tests := []struct {
		name    string
		args    []string
		payload string
		want    string
	}{
		{name: "string is unquoted", args: []string{"cat"}, payload: `"hello\nworld \"q\" \u00e9"`, want: "hello\nworld \"q\" é"},
		{name: "object as JSON", args: []string{"cat"}, payload: `{"a":1,"b":[true,null]}`, want: `{"a":1,"b":[true,null]}`},
		{name: "number as JSON", args: []string{"cat"}, payload: `42`, want: "42"},
		{name: "empty string", args: []string{"cat"}, payload: `""`, want: ""},
		{name: "no payload", args: []string{"cat"}, payload: "", want: ""},
		{name: "null payload", args: []string{"cat"}, payload: "null", want: ""},
		{name: "large payload read", args: shell("wc -c"), payload: string(big), want: strconv.Itoa(300<<10) + "\n"},
		{name: "large payload never read", args: []string{"true"}, payload: string(big), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := assignment(tt.args...)
			if tt.payload != "" {
				a.Payload = json.RawMessage(tt.payload)
			}
			res := RunExec(context.Background(), a, ExecConfig{})
			if res.Outcome != api.OutcomeSucceeded {
				t.Fatalf("outcome %q, error %q", res.Outcome, res.Error)
			}
			if strings.TrimLeft(res.Output, " ") != tt.want { // wc may pad
				t.Errorf("stdin was %q, want %q", res.Output, tt.want)
			}
		})
	}
}

func TestRunExecOutputLimit(t *testing.T) {
	tests := []struct {
		name          string
		script        string
		max           int
		want          string // checked when wantLen is 0
		wantLen       int
		wantTruncated bool
	}{
		{name: "default limit", script: `head -c 200000 /dev/zero | tr '\0' a`, wantLen: api.MaxOutputBytes, wantTruncated: true},
		{name: "large output does not block", script: `yes | head -c 5000000; echo end`, max: 10, want: "y\ny\ny\ny\ny\n", wantTruncated: true},
		{name: "exactly the limit", script: `printf abcde`, max: 5, want: "abcde"},
		{name: "one byte over", script: `printf abcdef`, max: 5, want: "abcde", wantTruncated: true},
		{name: "cut inside a 2-byte rune", script: `printf 'aa\303\251'`, max: 3, want: "aa", wantTruncated: true},
		{name: "cut after a 2-byte rune", script: `printf 'a\303\251b'`, max: 3, want: "aé", wantTruncated: true},
		{name: "cut after 1 byte of a 3-byte rune", script: `printf 'a\342\202\254\342\202\254'`, max: 5, want: "a€", wantTruncated: true},
		{name: "cut after 2 bytes of a 3-byte rune", script: `printf 'a\342\202\254\342\202\254'`, max: 6, want: "a€", wantTruncated: true},
		{name: "cut after a 4-byte rune", script: `printf '\360\237\230\200\360\237\230\200'`, max: 7, want: "😀", wantTruncated: true},
		{name: "invalid UTF-8 replaced", script: `printf '\377\376ok\200'`, max: 100, want: "\uFFFDok\uFFFD"},
		{name: "replacement keeps the limit", script: `printf '\377a\377a\377a\377a'`, max: 8, want: "\uFFFDa\uFFFDa", wantTruncated: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := RunExec(context.Background(), assignment(shell(tt.script)...), ExecConfig{MaxOutput: tt.max})
			if res.Outcome != api.OutcomeSucceeded {
				t.Fatalf("outcome %q, error %q", res.Outcome, res.Error)
			}
			if res.Truncated != tt.wantTruncated {
				t.Errorf("Truncated %v, want %v", res.Truncated, tt.wantTruncated)
			}
			if !utf8.ValidString(res.Output) {
				t.Errorf("output %q is not valid UTF-8", res.Output)
			}
			limit := tt.max
			if limit == 0 {
				limit = api.MaxOutputBytes
			}
			if len(res.Output) > limit {
				t.Errorf("output is %d bytes, over the limit of %d", len(res.Output), limit)
			}
			if tt.wantLen != 0 {
				if len(res.Output) != tt.wantLen || strings.Trim(res.Output, "a") != "" {
					t.Errorf("output is %d bytes (%.20q...), want %d bytes of a", len(res.Output), res.Output, tt.wantLen)
				}
			} else if res.Output != tt.want {
				t.Errorf("output %q, want %q", res.Output, tt.want)
			}
		})
	}
}

// gone reports whether pid no longer runs (it does not exist or is a zombie
// nobody reaped).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) S ...; comm may contain spaces and parentheses.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// waitGone fails the test unless pid is gone within a few seconds.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Errorf("process %d still running", pid)
			return
		}
		<-tick.C
	}
}

// firstPid parses the pid the script printed on its first line.
func firstPid(t *testing.T, output string) int {
	t.Helper()
	line, _, _ := strings.Cut(output, "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 1 {
		t.Fatalf("no pid on the first line of output %q", output)
	}
	return pid
}

func TestRunExecStop(t *testing.T) {
	// The TERM trap proves SIGTERM came first; the background sleep ignores
	// TERM so only SIGKILL ends it.
	const termTrap = `trap "" TERM; sleep 30 & trap "echo got TERM" TERM; echo $!; while :; do wait; done`
	tests := []struct {
		name        string
		script      string
		timeout     string
		grace       time.Duration
		cancel      bool // cancel ctx once the script signals readiness
		wantOutcome api.Outcome
		wantErr     string
		wantOut     string // substring of the output
		notOut      string // must not be in the output
		minElapsed  time.Duration
		maxElapsed  time.Duration
	}{
		{
			name: "timeout kills the group", script: `sleep 30 & echo $!; wait`, timeout: "300ms",
			wantOutcome: api.OutcomeTimeout, wantErr: "timeout after 300ms",
			minElapsed: 300 * time.Millisecond, maxElapsed: 5 * time.Second,
		},
		{
			name: "timeout with grace, TERM obeyed", script: `sleep 30 & echo $!; wait`, timeout: "200ms", grace: 20 * time.Second,
			wantOutcome: api.OutcomeTimeout, wantErr: "timeout after 200ms",
			minElapsed: 200 * time.Millisecond, maxElapsed: 5 * time.Second,
		},
		{
			name: "TERM ignored, KILL after grace", script: termTrap, timeout: "200ms", grace: 400 * time.Millisecond,
			wantOutcome: api.OutcomeTimeout, wantErr: "timeout after 200ms", wantOut: "got TERM",
			minElapsed: 600 * time.Millisecond, maxElapsed: 5 * time.Second,
		},
		{
			name: "no grace, KILL at once", script: termTrap, timeout: "200ms",
			wantOutcome: api.OutcomeTimeout, wantErr: "timeout after 200ms", notOut: "got TERM",
			minElapsed: 200 * time.Millisecond, maxElapsed: 5 * time.Second,
		},
		{
			name: "cancel kills the group", script: `sleep 30 & echo $!; echo ready > "$FIFO"; wait`, cancel: true,
			wantOutcome: api.OutcomeCanceled, wantErr: "canceled", maxElapsed: 5 * time.Second,
		},
		{
			name: "cancel with grace, TERM ignored", script: `trap "" TERM; sleep 30 & echo $!; echo ready > "$FIFO"; wait`,
			cancel: true, grace: 300 * time.Millisecond,
			wantOutcome: api.OutcomeCanceled, wantErr: "canceled", minElapsed: 300 * time.Millisecond, maxElapsed: 5 * time.Second,
		},
		{
			name: "grandchild holding stdout after exit", script: `sleep 30 & echo $!; echo done`,
			wantOutcome: api.OutcomeSucceeded, wantOut: "done\n", maxElapsed: 5 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := assignment(shell(tt.script)...)
			if tt.timeout != "" {
				a.Timeout = tt.timeout
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				fifo := filepath.Join(t.TempDir(), "ready")
				if err := syscall.Mkfifo(fifo, 0o600); err != nil {
					t.Fatal(err)
				}
				a.Env = map[string]string{"FIFO": fifo}
				go func() {
					f, err := os.Open(fifo) // blocks until the script opens it
					if err == nil {
						var b [16]byte
						_, _ = f.Read(b[:])
						f.Close()
					}
					cancel()
				}()
				// Unblock the reader if the script never got that far.
				defer func() {
					if f, err := os.OpenFile(fifo, os.O_RDWR, 0); err == nil {
						f.Close()
					}
				}()
			}
			start := time.Now()
			res := RunExec(ctx, a, ExecConfig{KillGrace: tt.grace})
			elapsed := time.Since(start)

			if res.Outcome != tt.wantOutcome || res.Error != tt.wantErr {
				t.Errorf("outcome %q error %q, want %q %q (output %q)", res.Outcome, res.Error, tt.wantOutcome, tt.wantErr, res.Output)
			}
			wantCode := -1
			if tt.wantOutcome == api.OutcomeSucceeded {
				wantCode = 0
			}
			if res.ExitCode != wantCode {
				t.Errorf("exit code %d, want %d", res.ExitCode, wantCode)
			}
			if !strings.Contains(res.Output, tt.wantOut) || (tt.notOut != "" && strings.Contains(res.Output, tt.notOut)) {
				t.Errorf("output %q: want %q in it and not %q", res.Output, tt.wantOut, tt.notOut)
			}
			if elapsed < tt.minElapsed || elapsed > tt.maxElapsed {
				t.Errorf("took %v, want between %v and %v", elapsed, tt.minElapsed, tt.maxElapsed)
			}
			checkTimes(t, res)
			pid := firstPid(t, res.Output)
			waitGone(t, pid)
		})
	}
}

func TestRunExecEscapedGrandchild(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid program")
	}
	tests := []struct {
		name   string
		script string
	}{
		// setsid leaves the process group, so the group kill misses it and
		// it keeps a pipe open: RunExec must not wait for it. The script
		// waits until the escaped process runs in its new session. (An
		// asynchronous list's stdin is /dev/null, hence fd 3.)
		{name: "new session holds stdout", script: `setsid sh -c 'echo $$ > "$F"; exec sleep 30' & read pid < "$F"; echo $pid; echo done`},
		{name: "new session holds stdin", script: `exec 3<&0; setsid sh -c 'echo $$ > "$F"; exec sleep 30' <&3 >/dev/null 2>&1 & read pid < "$F"; echo $pid; echo done`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := assignment(shell(tt.script)...)
			a.Payload = json.RawMessage(`"` + strings.Repeat("x", 200<<10) + `"`) // more than a pipe holds
			fifo := filepath.Join(t.TempDir(), "pid")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			a.Env = map[string]string{"F": fifo}
			start := time.Now()
			res := RunExec(context.Background(), a, ExecConfig{})
			elapsed := time.Since(start)
			pid := firstPid(t, res.Output)
			t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
			if res.Outcome != api.OutcomeSucceeded || !strings.HasSuffix(res.Output, "done\n") {
				t.Errorf("outcome %q error %q output %q", res.Outcome, res.Error, res.Output)
			}
			if elapsed < outputDrainDelay || elapsed > outputDrainDelay+3*time.Second {
				t.Errorf("took %v, want about %v", elapsed, outputDrainDelay)
			}
			if gone(pid) {
				t.Errorf("escaped process %d is gone: the test did not exercise a held pipe", pid)
			}
		})
	}
}

func TestRunExecCanceledBeforeStart(t *testing.T) {
	tests := []struct {
		name string
		args func(marker string) []string
	}{
		{name: "shell", args: func(m string) []string { return shell("touch " + m) }},
		{name: "missing program", args: func(string) []string { return []string{"gantry-no-such-program"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "ran")
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			res := RunExec(ctx, assignment(tt.args(marker)...), ExecConfig{})
			if res.Outcome != api.OutcomeCanceled || res.Error != "canceled" || res.ExitCode != -1 {
				t.Errorf("outcome %q error %q exit %d, want canceled", res.Outcome, res.Error, res.ExitCode)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Error("the process ran")
			}
			checkTimes(t, res)
		})
	}
}

func TestExecTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", api.DefaultTimeout},
		{"bogus", api.DefaultTimeout},
		{"0s", api.DefaultTimeout},
		{"-5s", api.DefaultTimeout},
		{"1s", time.Second},
		{"1h30m", 90 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := execTimeout(tt.in); got != tt.want {
				t.Errorf("execTimeout(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
