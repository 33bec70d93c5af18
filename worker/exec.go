package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/gantryhq/gantry/api"
)

// ExecConfig configures RunExec.
type ExecConfig struct {
	Path      string        // PATH given to the task's process (and used to resolve args[0] when it has no slash); empty means the worker's own $PATH
	KillGrace time.Duration // between SIGTERM and SIGKILL of the process group on timeout or cancel; 0 means SIGKILL at once
	MaxOutput int           // bytes of combined output kept, marker included (output that does not fit keeps its first quarter and its end; see capWriter); 0 means api.MaxOutputBytes
	WorkerID  string        // given to the process as GANTRY_WORKER when not empty
}

// ExecResult is how one attempt ended.
type ExecResult struct {
	Outcome               api.Outcome // OutcomeSucceeded, OutcomeFailed, OutcomeTimeout or OutcomeCanceled
	ExitCode              int         // the process's exit code; -1 when killed by a signal or never started
	Output                string      // combined stdout+stderr as valid UTF-8, at most MaxOutput bytes: whole, or its head and tail around a "[gantry: N bytes of output dropped]" line
	Truncated             bool        // output did not fit in MaxOutput: bytes were dropped
	Error                 string      // why it failed when that is not just a non-zero exit: "timeout after 1s", "exec: \"nope\": executable file not found in $PATH", "killed by signal: terminated", "canceled"
	StartedAt, FinishedAt time.Time
}

// Exit codes reported when the program could not be started, as a shell
// reports them.
const (
	exitNotFound    = 127
	exitNotRunnable = 126
)

// outputDrainDelay bounds how long RunExec waits, once the process has
// exited and its process group has been killed, for the output and input
// pipes to close. Only a descendant that left the process group (setsid)
// can keep them open that long; its later output is lost.
const outputDrainDelay = time.Second

// RunExec runs one attempt of an exec task and blocks until it ends.
// Canceling ctx stops the attempt (outcome canceled).
func RunExec(ctx context.Context, a api.Assignment, cfg ExecConfig) ExecResult {
	res := ExecResult{ExitCode: -1, StartedAt: time.Now()}
	limit := cfg.MaxOutput
	if limit <= 0 {
		limit = api.MaxOutputBytes // what the API accepts; the marker fits within it
	}
	out := newCapWriter(limit)
	finish := func() ExecResult {
		res.Output, res.Truncated = out.result()
		res.Error = clip(res.Error, api.MaxErrorLen)
		res.FinishedAt = time.Now()
		return res
	}
	fail := func(code int, err error) ExecResult {
		res.Outcome, res.ExitCode, res.Error = api.OutcomeFailed, code, err.Error()
		return finish()
	}

	if ctx.Err() != nil {
		res.Outcome, res.Error = api.OutcomeCanceled, "canceled"
		return finish()
	}
	if len(a.Args) == 0 || a.Args[0] == "" {
		return fail(exitNotFound, errors.New("exec: no program to run (args is empty)"))
	}

	env, path := execEnv(a, cfg)
	prog, err := lookPath(a.Args[0], path)
	if err != nil {
		return fail(startFailureCode(err), err)
	}
	cmd := &exec.Cmd{
		Path:        prog,
		Args:        a.Args,
		Env:         env,
		Stdout:      out,
		Stderr:      out, // the same writer: one pipe, so the two streams stay in order
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		WaitDelay:   outputDrainDelay,
	}
	if in := stdinFor(a.Payload); in != nil {
		cmd.Stdin = bytes.NewReader(in)
	}
	timeout := execTimeout(a.Timeout)
	if err := cmd.Start(); err != nil {
		return fail(startFailureCode(err), err)
	}
	pid := cmd.Process.Pid

	// Wait for the process to exit without reaping it, so that its pid (the
	// process group's ID) cannot be reused while we still signal the group.
	// Should waitid fail, reap it with Wait instead (the group kill after
	// the exit is then best effort, and Wait itself bounds the pipe wait).
	exited := make(chan struct{})
	var waitErr error
	waited := false
	go func() {
		defer close(exited)
		if waitExited(pid) != nil {
			waitErr, waited = cmd.Wait(), true
		}
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var stopped api.Outcome // set when we stopped the process
	select {
	case <-exited:
	case <-timer.C:
		stopped, res.Error = api.OutcomeTimeout, "timeout after "+timeout.String()
	case <-ctx.Done():
		stopped, res.Error = api.OutcomeCanceled, "canceled"
	}
	if stopped != "" {
		if cfg.KillGrace > 0 {
			signalGroup(pid, syscall.SIGTERM)
			grace := time.NewTimer(cfg.KillGrace)
			select {
			case <-exited:
			case <-grace.C:
			}
			grace.Stop()
		}
		signalGroup(pid, syscall.SIGKILL)
		<-exited
	}
	// The main process is gone; nothing else of its group may outlive the
	// attempt (or keep the output pipe open).
	signalGroup(pid, syscall.SIGKILL)
	if !waited {
		waitErr = cmd.Wait()
	}

	if stopped != "" {
		res.Outcome = stopped
		return finish()
	}
	var ws syscall.WaitStatus
	ok := false
	if cmd.ProcessState != nil {
		ws, ok = cmd.ProcessState.Sys().(syscall.WaitStatus)
	}
	switch {
	case !ok:
		if waitErr == nil {
			waitErr = errors.New("exec: no exit status")
		}
		return fail(-1, waitErr)
	case ws.Signaled():
		return fail(-1, fmt.Errorf("killed by signal: %s", ws.Signal()))
	case ws.ExitStatus() != 0:
		res.Outcome, res.ExitCode = api.OutcomeFailed, ws.ExitStatus()
	default:
		res.Outcome, res.ExitCode = api.OutcomeSucceeded, 0
	}
	return finish()
}

// execTimeout parses an assignment's timeout; an empty, invalid or
// non-positive one means api.DefaultTimeout.
func execTimeout(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return api.DefaultTimeout
	}
	return d
}

// execEnv builds the process environment: the task's env, PATH unless the
// task sets it, GANTRY_TASK_ID, GANTRY_ATTEMPT and GANTRY_WORKER, sorted by name. It also
// returns the PATH in effect ("" when there is none).
func execEnv(a api.Assignment, cfg ExecConfig) ([]string, string) {
	vars := make(map[string]string, len(a.Env)+3)
	path := cfg.Path
	if path == "" {
		path = os.Getenv("PATH")
	}
	if path != "" {
		vars["PATH"] = path
	}
	for k, v := range a.Env {
		vars[k] = v
	}
	vars["GANTRY_TASK_ID"] = a.TaskID
	vars["GANTRY_ATTEMPT"] = strconv.Itoa(a.Attempt)
	if cfg.WorkerID != "" {
		vars["GANTRY_WORKER"] = cfg.WorkerID
	}
	env := make([]string, 0, len(vars))
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env, vars["PATH"]
}

// lookPath resolves a program name without a slash against path, like a
// shell (and exec.LookPath, which only knows the worker's own $PATH). Empty
// and relative entries of path are skipped: they would resolve against the
// worker's working directory. A file that exists but is not executable
// gives a permission error (exit 126) if no later entry has an executable
// one.
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	denied := false
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, file)
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() {
			continue
		}
		if fi.Mode()&0o111 != 0 {
			return p, nil
		}
		denied = true
	}
	if denied {
		return "", &exec.Error{Name: file, Err: fs.ErrPermission}
	}
	return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
}

// startFailureCode is the exit code reported for a program that could not
// be started: 127 when it does not exist, 126 when it cannot be executed,
// -1 for anything else (out of resources and the like).
func startFailureCode(err error) int {
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ENOTDIR):
		return exitNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EISDIR):
		return exitNotRunnable
	}
	return -1
}

// stdinFor returns what the process reads on stdin: the text of a JSON
// string payload, the bytes of any other JSON value, nil for no payload (or
// a null one).
func stdinFor(payload json.RawMessage) []byte {
	p := bytes.TrimSpace(payload)
	if len(p) == 0 || bytes.Equal(p, []byte("null")) {
		return nil
	}
	if p[0] == '"' {
		var s string
		if err := json.Unmarshal(p, &s); err == nil {
			return []byte(s)
		}
	}
	return payload
}

// signalGroup sends sig to the process group led by pid and to pid itself
// (in case it moved to another group). Errors (nothing left) are ignored.
func signalGroup(pid int, sig syscall.Signal) {
	_ = syscall.Kill(-pid, sig)
	_ = syscall.Kill(pid, sig)
}

// waitExited blocks until the child pid has exited, leaving it a zombie for
// exec.Cmd.Wait to reap: waitid(P_PID, pid, WEXITED|WNOWAIT).
func waitExited(pid int) error {
	const pPID = 1     // P_PID
	var info [128]byte // siginfo_t
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info)), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		switch errno {
		case 0:
			return nil
		case syscall.EINTR:
		default:
			return errno
		}
	}
}

// The output of a task is kept whole when it fits in the limit. Otherwise
// the result is its first part (the head), one marker line saying how many
// bytes were dropped, and its last part (the tail): the end of a failing
// build's output is where its errors are.

// markerFormat is the line put between the head and the tail of output that
// did not fit; %d is the exact number of bytes dropped (written minus kept).
const markerFormat = "\n... [gantry: %d bytes of output dropped] ...\n"

// minSplitOutput is the smallest limit that keeps a head and a tail. Below
// it the marker would take most of the room, so only the head is kept, with
// no marker.
const minSplitOutput = 256

// tailLineSearch bounds how far into the tail a '\n' is looked for, to start
// the tail on a line of its own (and never more than a quarter of it).
const tailLineSearch = 512

// capWriter captures a process's combined output in memory bounded by max,
// whatever the process writes: the first headMax bytes, and the last
// ringMax bytes after those in a ring. It counts the bytes it discards, and
// never blocks the process on a full pipe. result assembles what it kept.
type capWriter struct {
	max     int // bytes of the result, marker included
	headMax int // max/4; all of max when max < minSplitOutput (no tail)
	ringMax int // max - headMax: output that fits is kept whole

	mu    sync.Mutex // guards the fields below: Write runs on exec's copying goroutine
	head  []byte     // the first bytes written; capacity headMax, allocated on first use
	ring  []byte     // the last bytes written after the head; capacity ringMax, allocated on first use
	start int        // index in ring of its oldest byte (0 until ring is full)
	total int64      // bytes written
}

var _ io.Writer = (*capWriter)(nil)

// newCapWriter returns a capWriter whose result is at most limit (> 0)
// bytes.
func newCapWriter(limit int) *capWriter {
	w := &capWriter{max: limit, headMax: limit / 4}
	if limit < minSplitOutput {
		w.headMax = limit
	}
	w.ringMax = limit - w.headMax
	return w
}

// Write keeps what belongs to the head or the tail of p and discards the
// rest. It always consumes all of p.
func (w *capWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	w.total += int64(n)
	if room := w.headMax - len(w.head); room > 0 {
		if w.head == nil {
			w.head = make([]byte, 0, w.headMax)
		}
		k := min(room, len(p))
		w.head = append(w.head, p[:k]...)
		p = p[k:]
	}
	if len(p) == 0 || w.ringMax == 0 {
		return n, nil
	}
	if w.ring == nil {
		w.ring = make([]byte, 0, w.ringMax)
	}
	if len(p) >= w.ringMax { // p alone fills the ring
		w.ring = append(w.ring[:0], p[len(p)-w.ringMax:]...)
		w.start = 0
		return n, nil
	}
	if room := w.ringMax - len(w.ring); room > 0 {
		k := min(room, len(p))
		w.ring = append(w.ring, p[:k]...)
		p = p[k:]
	}
	for len(p) > 0 { // the ring is full: overwrite its oldest bytes
		k := copy(w.ring[w.start:], p)
		p = p[k:]
		w.start = (w.start + k) % w.ringMax
	}
	return n, nil
}

// result returns the output as valid UTF-8 of at most max bytes (invalid
// bytes replaced by U+FFFD, as strings.ToValidUTF8 does), and whether
// bytes were dropped. Output that fits is returned whole. Otherwise it is
// the head, cut to a rune boundary, the marker line with the exact count of
// bytes dropped, and the tail, started on a line when a '\n' is in its
// first bytes, else on a rune; bytes skipped to do so count as dropped.
// Below minSplitOutput only the head is kept, without marker.
func (w *capWriter) result() (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	tail := make([]byte, 0, len(w.ring))
	tail = append(append(tail, w.ring[w.start:]...), w.ring[:w.start]...)
	gap := w.total - int64(len(w.head)) - int64(len(tail)) // bytes kept in neither
	if gap == 0 {
		whole := append(w.head[:len(w.head):len(w.head)], tail...)
		// Replacing invalid bytes can make the text longer than the limit.
		if s := strings.ToValidUTF8(string(whole), "\uFFFD"); len(s) <= w.max {
			return s, false
		}
	}
	head := w.head
	if gap > 0 || w.ringMax > 0 {
		head = trimPartialRune(head)
	}
	if w.ringMax == 0 {
		s, _ := validPrefix(head, w.max)
		return s, true
	}
	headOut, headKept := validPrefix(head, w.headMax)

	// The dropped count has no more digits than the total.
	room := w.max - w.headMax - len(fmt.Sprintf(markerFormat, w.total))
	t := tail[max(0, len(tail)-room):]
	var atLine bool // t starts the output or follows a '\n'
	switch {
	case len(t) < len(tail):
		atLine = tail[len(tail)-len(t)-1] == '\n'
	case gap == 0:
		atLine = len(w.head) == 0 || w.head[len(w.head)-1] == '\n'
	}
	t = t[tailStart(t, atLine, min(tailLineSearch, room/4)):]
	tailOut, tailKept := validSuffix(t, room)

	dropped := w.total - int64(headKept) - int64(tailKept)
	return headOut + fmt.Sprintf(markerFormat, dropped) + tailOut, true
}

// tailStart returns how many leading bytes of the tail t to skip: none when
// it already starts a line (atLine); else up to and including the first '\n'
// among its first search bytes; else the continuation bytes of a rune cut in
// two.
func tailStart(t []byte, atLine bool, search int) int {
	if atLine {
		return 0
	}
	if i := bytes.IndexByte(t[:min(len(t), search)], '\n'); i >= 0 {
		return i + 1
	}
	i := 0
	for i < len(t) && i < utf8.UTFMax-1 && !utf8.RuneStart(t[i]) {
		i++
	}
	return i
}

// nextPiece returns where the piece of b that starts at i ends, and its
// length once made valid: a piece is one valid rune (kept as is) or a run of
// invalid bytes (replaced by one U+FFFD).
func nextPiece(b []byte, i int) (end, size int) {
	if r, n := utf8.DecodeRune(b[i:]); r != utf8.RuneError || n > 1 {
		return i + n, n
	}
	for i < len(b) {
		if r, n := utf8.DecodeRune(b[i:]); r != utf8.RuneError || n > 1 {
			break
		}
		i++
	}
	return i, len(string(utf8.RuneError))
}

// validPrefix returns the longest prefix of b, made valid UTF-8, that fits
// in n bytes, and how many bytes of b it holds.
func validPrefix(b []byte, n int) (string, int) {
	i, size := 0, 0
	for i < len(b) {
		end, sz := nextPiece(b, i)
		if size+sz > n {
			break
		}
		i, size = end, size+sz
	}
	return strings.ToValidUTF8(string(b[:i]), "\uFFFD"), i
}

// validSuffix returns the longest suffix of b, made valid UTF-8, that fits
// in n bytes, and how many bytes of b it holds.
func validSuffix(b []byte, n int) (string, int) {
	size := 0
	for i := 0; i < len(b); {
		end, sz := nextPiece(b, i)
		i, size = end, size+sz
	}
	start := 0
	for size > n {
		end, sz := nextPiece(b, start)
		start, size = end, size-sz
	}
	return strings.ToValidUTF8(string(b[start:]), "\uFFFD"), len(b) - start
}

// trimPartialRune drops an incomplete multi-byte sequence at the end of b,
// left there by cutting b at a byte limit.
func trimPartialRune(b []byte) []byte {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return b[:i]
			}
			return b
		}
	}
	return b
}

// clip cuts valid UTF-8 s to at most n bytes without splitting a rune.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
