package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// marker is the line capWriter puts where it dropped n bytes.
func marker(n int) string { return fmt.Sprintf(markerFormat, n) }

// wantCapture is what capWriter must make of full (valid UTF-8) under the
// limit, computed simply on the whole string: the head is its first
// limit/4 bytes cut to a rune, the tail its last bytes that leave room for
// the marker, moved on to the next line start (a '\n' among its first
// bytes) or else to a rune start.
func wantCapture(full string, limit int) (string, bool) {
	if len(full) <= limit {
		return full, false
	}
	if limit < minSplitOutput {
		return clip(full, limit), true
	}
	head := clip(full, limit/4)
	room := limit - limit/4 - len(marker(len(full)))
	start := len(full) - room
	if full[start-1] != '\n' {
		if i := strings.IndexByte(full[start:start+min(tailLineSearch, room/4)], '\n'); i >= 0 {
			start += i + 1
		} else {
			for !utf8.RuneStart(full[start]) {
				start++
			}
		}
	}
	tail := full[start:]
	return head + marker(len(full)-len(head)-len(tail)) + tail, true
}

var markerRE = regexp.MustCompile(`\n\.\.\. \[gantry: (\d+) bytes of output dropped\] \.\.\.\n`)

// checkCapture checks what capWriter made of full (valid UTF-8) under the
// limit against wantCapture, and the properties that make it right:
// at most limit bytes of valid UTF-8, the whole output when it fits, else one
// marker between a prefix and a suffix of full with the exact count of the
// bytes between them.
func checkCapture(t *testing.T, full string, limit int, got string, truncated bool) {
	t.Helper()
	if len(got) > limit {
		t.Errorf("output is %d bytes, over the limit of %d", len(got), limit)
	}
	if !utf8.ValidString(got) {
		t.Errorf("output is not valid UTF-8")
	}
	if want := len(full) > limit; truncated != want {
		t.Errorf("Truncated %v, want %v (%d bytes written, limit %d)", truncated, want, len(full), limit)
	}
	if want, _ := wantCapture(full, limit); got != want {
		t.Errorf("output differs from the reference (%d bytes written, limit %d):\n got %.300q\nwant %.300q", len(full), limit, got, want)
	}
	if !truncated || limit < minSplitOutput {
		return
	}
	m := markerRE.FindAllStringSubmatchIndex(got, -1)
	if len(m) != 1 {
		t.Fatalf("%d marker lines in the output, want 1: %.300q", len(m), got)
	}
	head, tail := got[:m[0][0]], got[m[0][1]:]
	dropped, _ := strconv.Atoi(got[m[0][2]:m[0][3]])
	if !strings.HasPrefix(full, head) || len(head) < limit/4-utf8.UTFMax || len(head) > limit/4 {
		t.Errorf("head (%d bytes) is not the first %d bytes of the output cut to a rune", len(head), limit/4)
	}
	if !strings.HasSuffix(full, tail) || len(tail) < (limit-limit/4)/2 {
		t.Errorf("tail (%d bytes) is not a long enough end of the output", len(tail))
	}
	if want := len(full) - len(head) - len(tail); dropped != want {
		t.Errorf("marker says %d bytes dropped, want %d", dropped, want)
	}
}

func TestRunExecOutputLimit(t *testing.T) {
	// huge is about 10 MiB of numbered lines with multi-byte runes, which
	// the awk script writes in pieces of odd sizes (it flushes every 7 lines).
	var huge strings.Builder
	const pad = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	hugeLines := 0
	for ; huge.Len() < 10<<20; hugeLines++ {
		fmt.Fprintf(&huge, "%d é€😀 %s\n", hugeLines, pad[:hugeLines%61])
	}
	hugeScript := fmt.Sprintf(`awk -v n=%d -v s=%s 'BEGIN { for (i = 0; i < n; i++) { printf "%%d é€😀 %%s\n", i, substr(s, 1, i %% 61); if (i %% 7 == 0) fflush() } }'`, hugeLines, pad)

	var lines strings.Builder
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&lines, "line %d\n", i)
	}
	a := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name      string
		script    string // run by sh; empty means cat given full on stdin
		max       int
		full      string // what the process writes (valid UTF-8; checked with checkCapture)
		want      string // when not empty: the exact output (full is then not needed)
		truncated bool   // checked with want
		lineTail  bool   // the tail must start a line
	}{
		{name: "under the limit", max: 256, full: "hello\nworld é€😀\n"},
		{name: "exactly the limit", script: `head -c 255 /dev/zero | tr '\0' a; echo`, max: 256, full: a(255) + "\n"},
		{name: "exactly the default limit", script: `head -c 65536 /dev/zero | tr '\0' a`, full: a(65536)},
		// 257 bytes: head 64, room for the marker 47 (3 digits), tail 145.
		{name: "one byte over", max: 256, full: a(257), want: a(64) + marker(48) + a(145), truncated: true},
		// 65537 bytes: head 16384, room for the marker 49, tail 49103.
		{name: "one byte over the default limit", script: `head -c 65537 /dev/zero | tr '\0' a`, full: a(65537),
			want: a(16384) + marker(50) + a(49103), truncated: true},
		{name: "tail starts on a line", script: `i=0; while [ $i -lt 40 ]; do echo "line $i"; i=$((i+1)); done`, max: 256,
			full: lines.String(), lineTail: true},
		{name: "huge output keeps the first bytes and the last lines", script: hugeScript, full: huge.String(), lineTail: true},
		// Head cut inside é (bytes 63-64), tail start inside a € (3rd byte, skipped).
		{name: "2- and 3-byte runes at the cuts", max: 256, full: a(63) + "é" + strings.Repeat("€", 100),
			want: a(63) + marker(158) + strings.Repeat("€", 48), truncated: true},
		// Head cut after 3 bytes of a 😀, tail start at the 4th byte of one.
		{name: "4-byte runes at the cuts", max: 256, full: "x" + strings.Repeat("😀", 100),
			want: "x" + strings.Repeat("😀", 15) + marker(196) + strings.Repeat("😀", 36), truncated: true},
		// Tail start at the 2nd byte of a 😀: its 3 continuation bytes are
		// skipped, not shown as U+FFFD.
		{name: "tail cut after 1 byte of a 4-byte rune", max: 256, full: strings.Repeat("😀", 100) + "ab",
			want: strings.Repeat("😀", 16) + marker(196) + strings.Repeat("😀", 35) + "ab", truncated: true},
		// Each \377 becomes a 3-byte U+FFFD: head 16 pairs (32 bytes
		// written, 64 kept), tail "a" and 36 pairs (73 written, 145 kept).
		{name: "invalid UTF-8 over the limit", script: `i=0; while [ $i -lt 150 ]; do printf '\377a'; i=$((i+1)); done`, max: 256,
			want: strings.Repeat("\uFFFDa", 16) + marker(195) + "a" + strings.Repeat("\uFFFDa", 36), truncated: true},
		{name: "invalid UTF-8 replaced", script: `printf '\377\376ok\200'`, max: 256, want: "\uFFFDok\uFFFD"},

		// Below minSplitOutput only the head is kept, without a marker.
		{name: "small limit: large output does not block", script: `yes | head -c 5000000; echo end`, max: 10, want: "y\ny\ny\ny\ny\n", truncated: true},
		{name: "small limit: exactly the limit", script: `printf abcde`, max: 5, want: "abcde"},
		{name: "small limit: one byte over", script: `printf abcdef`, max: 5, want: "abcde", truncated: true},
		{name: "small limit: cut inside a 2-byte rune", script: `printf 'aa\303\251'`, max: 3, want: "aa", truncated: true},
		{name: "small limit: cut after a 2-byte rune", script: `printf 'a\303\251b'`, max: 3, want: "aé", truncated: true},
		{name: "small limit: cut after 1 byte of a 3-byte rune", script: `printf 'a\342\202\254\342\202\254'`, max: 5, want: "a€", truncated: true},
		{name: "small limit: cut after 2 bytes of a 3-byte rune", script: `printf 'a\342\202\254\342\202\254'`, max: 6, want: "a€", truncated: true},
		{name: "small limit: cut after a 4-byte rune", script: `printf '\360\237\230\200\360\237\230\200'`, max: 7, want: "😀", truncated: true},
		{name: "small limit: replacement keeps the limit", script: `printf '\377a\377a\377a\377a'`, max: 8, want: "\uFFFDa\uFFFDa", truncated: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var at api.Assignment
			if tt.script != "" {
				at = assignment(shell(tt.script)...)
			} else {
				at = assignment("cat")
				p, err := json.Marshal(tt.full)
				if err != nil {
					t.Fatal(err)
				}
				at.Payload = p
			}
			res := RunExec(context.Background(), at, ExecConfig{MaxOutput: tt.max})
			if res.Outcome != api.OutcomeSucceeded {
				t.Fatalf("outcome %q, error %q", res.Outcome, res.Error)
			}
			limit := tt.max
			if limit == 0 {
				limit = api.MaxOutputBytes
			}
			if tt.want != "" {
				if res.Output != tt.want || res.Truncated != tt.truncated {
					t.Errorf("output %.300q (Truncated %v), want %.300q (Truncated %v)", res.Output, res.Truncated, tt.want, tt.truncated)
				}
				if len(res.Output) > limit {
					t.Errorf("output is %d bytes, over the limit of %d", len(res.Output), limit)
				}
			}
			if tt.full != "" {
				checkCapture(t, tt.full, limit, res.Output, res.Truncated)
			}
			if tt.lineTail {
				m := markerRE.FindStringIndex(res.Output)
				if m == nil {
					t.Fatal("no marker in the output")
				}
				tail := res.Output[m[1]:]
				if i := len(tt.full) - len(tail); !strings.HasSuffix(tt.full, tail) || tt.full[i-1] != '\n' {
					t.Errorf("tail %.40q... does not start a line of the output", tail)
				}
				lastLines := tt.full[strings.LastIndex(tt.full[:len(tt.full)-len(tail)/2], "\n")+1:]
				if !strings.HasSuffix(res.Output, lastLines) {
					t.Errorf("output does not end with the last lines written, %.40q...", lastLines)
				}
			}
		})
	}
}

// randomOutput returns valid UTF-8 of n bytes (n >= 0) made of ASCII and
// multi-byte runes, in lines of random lengths unless noLines.
func randomOutput(rng *rand.Rand, n int, noLines bool) string {
	pieces := []string{"a", "b", " ", "é", "€", "😀", strings.Repeat("z", 700)}
	if !noLines {
		pieces = append(pieces, "\n", "ok\n", "error: x\n")
	}
	var b strings.Builder
	for b.Len() < n-utf8.UTFMax {
		p := pieces[rng.IntN(len(pieces))]
		if b.Len()+len(p) > n {
			p = "c"
		}
		b.WriteString(p)
	}
	for b.Len() < n {
		b.WriteByte('d')
	}
	return b.String()
}

func TestCapWriter_MatchesReference(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0))
		limit := []int{1, 7, minSplitOutput - 1, minSplitOutput, 257, 1000, 4096, 65536}[rng.IntN(8)]
		var n int
		switch rng.IntN(4) {
		case 0:
			n = limit - 1 + rng.IntN(3) // at the limit, one under or over
		case 1:
			n = rng.IntN(limit + 1)
		default:
			n = limit + rng.IntN(4*limit+2000)
		}
		full := randomOutput(rng, n, rng.IntN(4) == 0)
		t.Run(fmt.Sprintf("seed %d limit %d len %d", seed, limit, n), func(t *testing.T) {
			w := newCapWriter(limit)
			for rest := full; rest != ""; {
				k := min(len(rest), 1+rng.IntN([]int{3, 100, 2 * limit}[rng.IntN(3)]))
				if k, err := w.Write([]byte(rest[:k])); err != nil || k == 0 {
					t.Fatalf("Write = %d, %v", k, err)
				}
				rest = rest[k:]
			}
			got, truncated := w.result()
			checkCapture(t, full, limit, got, truncated)
		})
	}
}

func TestCapWriter_MemoryBounded(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		chunk int
	}{
		{name: "default limit, small writes", max: api.MaxOutputBytes, chunk: 1001},
		{name: "default limit, writes larger than the ring", max: api.MaxOutputBytes, chunk: 100_003},
		{name: "small limit", max: minSplitOutput, chunk: 37},
		{name: "head only", max: 10, chunk: 4097},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newCapWriter(tt.max)
			chunk := []byte(strings.Repeat("x", tt.chunk-1) + "\n")
			var total int
			for total < 10<<20 {
				if n, _ := w.Write(chunk); n != len(chunk) {
					t.Fatalf("Write = %d, want %d", n, len(chunk))
				}
				total += len(chunk)
			}
			if held := cap(w.head) + cap(w.ring); held > tt.max {
				t.Errorf("holds %d bytes after %d written, over the limit of %d", held, total, tt.max)
			}
			got, truncated := w.result()
			if !truncated || len(got) > tt.max {
				t.Errorf("result is %d bytes (Truncated %v), want at most %d and truncated", len(got), truncated, tt.max)
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
