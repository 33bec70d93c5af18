package test

// A process-level test of the `make dev` topology: the real static binary,
// started by scripts/dev.sh as 3 master and 2 worker processes on loopback,
// driven through the CLI and raw HTTP, and a leader killed with SIGKILL.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

// procDeadline bounds every wait of this test: generous, for five daemons
// and the race-detected test binary sharing two cores.
const procDeadline = 90 * time.Second

// procModuleRoot returns the directory of go.mod.
func procModuleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside a Go module")
	}
	return filepath.Dir(gomod)
}

// procEnv is the environment of every process the test starts: its own,
// without GANTRY_* variables (the binary reads them as flags), plus extra.
func procEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GANTRY_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// procDevPorts are the ports scripts/dev.sh uses without offset; the gossip
// ones need UDP too.
var (
	procTCPPorts = []int{8081, 8082, 8083, 7001, 7002, 7003, 9001, 9002}
	procUDPPorts = []int{7946, 7947, 7948, 7951, 7952}
)

// procFreeOffset picks a GANTRY_DEV_OFFSET whose ports are all free now.
func procFreeOffset(t *testing.T) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		off := 10000 + rand.IntN(30000)
		if procPortsFree(off) {
			return off
		}
	}
	t.Fatal("no free port offset found")
	return 0
}

func procPortsFree(off int) bool {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for _, p := range append(append([]int{}, procTCPPorts...), procUDPPorts...) {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+off))
		if err != nil {
			return false
		}
		closers = append(closers, ln.Close)
	}
	for _, p := range procUDPPorts {
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p+off))
		if err != nil {
			return false
		}
		closers = append(closers, pc.Close)
	}
	return true
}

// procResult is how one command ended.
type procResult struct {
	stdout, stderr string
	code           int
}

func (r procResult) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// procRun runs a command to its end (or kills it after timeout).
func procRun(t *testing.T, timeout time.Duration, dir string, env []string, name string, args ...string) procResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.WaitDelay = 10 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := procResult{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		t.Fatalf("%s %q did not finish within %s\n%s", name, args, timeout, res)
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("%s %q: %v", name, args, err)
	}
	return res
}

// procDev is the running dev topology.
type procDev struct {
	t    *testing.T
	root string
	bin  string
	dir  string
	off  int
	env  []string
	// started holds the pids dev.sh up recorded, kept for the cleanup even
	// when dev.sh down has removed its pids file.
	started []int
}

// url returns the HTTP URL of master i (1-based).
func (d *procDev) url(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", 8080+i+d.off) }

// addrs is the value of --addr for every master.
func (d *procDev) addrs() string { return d.url(1) + "," + d.url(2) + "," + d.url(3) }

// gantry runs the binary with args.
func (d *procDev) gantry(t *testing.T, args ...string) procResult {
	t.Helper()
	return procRun(t, 3*time.Minute, d.dir, d.env, d.bin, args...)
}

// pids returns the process IDs dev.sh recorded: m1, m2, m3, w1, w2.
func (d *procDev) pids() []int {
	b, err := os.ReadFile(filepath.Join(d.dir, "pids"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// ours reports whether pid is still one of our gantry processes (and not a
// zombie, nor a reused PID).
func (d *procDev) ours(pid int) bool {
	if ProcessGone(pid) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.HasPrefix(cmdline, []byte(d.bin+"\x00"))
}

// status reads the cluster status through the given masters, retrying
// until one answers.
func (d *procDev) status(t *testing.T, addrs string) api.ClusterStatus {
	t.Helper()
	var st api.ClusterStatus
	var last procResult
	Eventually(t, procDeadline, "gantry status --json to answer", func() bool {
		last = d.gantry(t, "status", "--addr", addrs, "--request-timeout", "10s", "--json")
		if last.code != 0 {
			return false
		}
		st = api.ClusterStatus{}
		return json.Unmarshal([]byte(last.stdout), &st) == nil && st.Leader != ""
	})
	return st
}

// logs returns the tail of every daemon's log, for failure messages.
func (d *procDev) logs() string {
	var b strings.Builder
	for _, n := range []string{"m1", "m2", "m3", "w1", "w2"} {
		data, _ := os.ReadFile(filepath.Join(d.dir, "logs", n+".log"))
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "==== %s.log (tail)\n%s\n", n, strings.Join(lines, "\n"))
	}
	return b.String()
}

// down stops the topology with dev.sh down, then kills whatever survived.
func (d *procDev) down() {
	t := d.t
	pids := d.pids()
	for _, pid := range d.started {
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	res := procRun(t, 3*time.Minute, d.root, d.env, "bash", filepath.Join(d.root, "scripts", "dev.sh"), "down")
	if res.code != 0 {
		t.Errorf("dev.sh down: %s", res)
	}
	// dev.sh down stops waiting as soon as any one process is gone (kill -0
	// of a list fails if one PID fails): wait for each, then kill the rest.
	deadline := time.Now().Add(60 * time.Second)
	for _, pid := range pids {
		for d.ours(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if d.ours(pid) {
			t.Logf("pid %d survived dev.sh down; killing it", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, pid := range pids {
		Eventually(t, 30*time.Second, fmt.Sprintf("pid %d to exit", pid), func() bool { return !d.ours(pid) })
	}
}

// procStartDev builds the binary and starts the dev topology with dev.sh up
// in a fresh directory on free ports; dev.sh down runs at the end of the test.
func procStartDev(t *testing.T) *procDev {
	t.Helper()
	root := procModuleRoot(t)
	bin := filepath.Join(t.TempDir(), "gantry")
	if res := procRun(t, 10*time.Minute, root, procEnv("CGO_ENABLED=0"), "go", "build", "-o", bin, "./cmd/gantry"); res.code != 0 {
		t.Fatalf("go build: %s", res)
	}

	// The data directory is removed after dev.sh down (cleanups run last
	// registered first).
	dir := t.TempDir()
	d := &procDev{t: t, root: root, bin: bin, dir: dir, off: procFreeOffset(t)}
	d.env = procEnv("GANTRY_BIN="+bin, "GANTRY_DEV_DIR="+dir, "GANTRY_DEV_OFFSET="+strconv.Itoa(d.off))
	t.Logf("dev topology at port offset %d in %s", d.off, dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(d.logs())
		}
		d.down()
	})

	up := procRun(t, 3*time.Minute, root, d.env, "bash", filepath.Join(root, "scripts", "dev.sh"), "up")
	if up.code != 0 {
		t.Fatalf("dev.sh up: %s", up)
	}
	if d.started = d.pids(); len(d.started) != 5 {
		t.Fatalf("dev.sh recorded %d pids, want 5", len(d.started))
	}
	if !strings.Contains(up.stdout, "masters: "+d.addrs()) {
		t.Errorf("dev.sh up does not print the master URLs %s:\n%s", d.addrs(), up.stdout)
	}
	return d
}

func TestProcess_DevCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs five processes")
	}
	d := procStartDev(t)

	t.Run("submit --wait prints the output", func(t *testing.T) {
		res := d.gantry(t, "submit", "--addr", d.addrs(), "--request-timeout", "60s", "--wait", "--", "sh", "-c", "echo hello")
		if res.code != 0 || res.stdout != "hello\n" {
			t.Errorf("want hello and exit 0, got %s", res)
		}
	})

	t.Run("submit --wait exits with the task's code", func(t *testing.T) {
		res := d.gantry(t, "submit", "--addr", d.addrs(), "--request-timeout", "60s", "--wait", "--max-attempts", "1", "--", "sh", "-c", "exit 3")
		if res.code != 3 {
			t.Errorf("want exit 3, got %s", res)
		}
		if !strings.Contains(res.stderr, "failed after 1 attempt(s)") {
			t.Errorf("stderr does not say the task failed: %s", res)
		}
	})

	var hiID string
	t.Run("raw POST to the third master", func(t *testing.T) {
		body := []byte(`{"args":["echo","hi"]}`)
		var status int
		var out []byte
		// 503 means the request was not served; anything else is the answer.
		Eventually(t, procDeadline, "POST /v1/tasks to m3 to be answered", func() bool {
			var err error
			status, _, out, err = badDo(t, "POST", d.url(3)+"/v1/tasks", body, nil)
			return err == nil && status != http.StatusServiceUnavailable
		})
		if status != http.StatusCreated {
			t.Fatalf("POST /v1/tasks to m3: %d %s, want 201", status, out)
		}
		var task api.Task
		if err := json.Unmarshal(out, &task); err != nil || task.ID == "" {
			t.Fatalf("201 with body %s (%v)", out, err)
		}
		hiID = task.ID
		res := d.gantry(t, "task", "get", "--addr", d.url(3), "--wait", "60s", hiID)
		var got api.Task
		if res.code != 0 || json.Unmarshal([]byte(res.stdout), &got) != nil {
			t.Fatalf("task get: %s", res)
		}
		if got.State != api.StateSucceeded || got.Result == nil || got.Result.Output != "hi\n" {
			t.Errorf("task %s: state %s result %+v, want succeeded with hi", hiID, got.State, got.Result)
		}
	})

	st := d.status(t, d.addrs())
	leaderIdx := 0
	var followerURL string
	for _, m := range st.Masters {
		i, err := strconv.Atoi(strings.TrimPrefix(m.ID, "m"))
		if err != nil || i < 1 || i > 3 {
			t.Fatalf("unexpected master ID %q in %+v", m.ID, st)
		}
		if m.ID == st.Leader {
			leaderIdx = i
		} else if followerURL == "" {
			followerURL = d.url(i)
		}
	}
	if leaderIdx == 0 || followerURL == "" {
		t.Fatalf("no leader or no follower in %+v", st)
	}

	t.Run("status through a follower", func(t *testing.T) {
		res := d.gantry(t, "status", "--addr", followerURL, "--request-timeout", "60s")
		if res.code != 0 {
			t.Fatalf("status: %s", res)
		}
		if !regexp.MustCompile(`(?m)^leader: m[123] \(term \d+\)$`).MatchString(res.stdout) {
			t.Errorf("no leader line:\n%s", res.stdout)
		}
		masters := regexp.MustCompile(`(?m)^m[123]\s+(leader|follower|candidate|unknown)\s+true\s`).FindAllString(res.stdout, -1)
		if len(masters) != 3 {
			t.Errorf("%d master rows, want 3:\n%s", len(masters), res.stdout)
		}
		if !regexp.MustCompile(`(?m)^m[123]\s+leader\s`).MatchString(res.stdout) {
			t.Errorf("no master has the leader role:\n%s", res.stdout)
		}
		workers := regexp.MustCompile(`(?m)^\S+\s+w[12]\s+alive\s+4\s`).FindAllString(res.stdout, -1)
		if len(workers) != 2 {
			t.Errorf("%d alive worker rows, want 2:\n%s", len(workers), res.stdout)
		}
	})

	t.Run("task list --json", func(t *testing.T) {
		res := d.gantry(t, "task", "list", "--addr", d.addrs(), "--json")
		var list api.TaskList
		if res.code != 0 || json.Unmarshal([]byte(res.stdout), &list) != nil {
			t.Fatalf("task list --json: %s", res)
		}
		if len(list.Tasks) < 3 {
			t.Errorf("%d tasks listed, want at least the 3 submitted", len(list.Tasks))
		}
		found := hiID == ""
		for _, task := range list.Tasks {
			found = found || task.ID == hiID
		}
		if !found {
			t.Errorf("task %s is not listed", hiID)
		}
	})

	t.Run("task cancel", func(t *testing.T) {
		res := d.gantry(t, "submit", "--addr", d.addrs(), "--request-timeout", "60s", "--", "sleep", "120")
		id := strings.TrimSpace(res.stdout)
		if res.code != 0 || id == "" {
			t.Fatalf("submit: %s", res)
		}
		res = d.gantry(t, "task", "cancel", "--addr", d.addrs(), id)
		if res.code != 0 || strings.TrimSpace(res.stdout) != id+" canceled" {
			t.Errorf("cancel of a live task: want %q and exit 0, got %s", id+" canceled", res)
		}
		res = d.gantry(t, "task", "cancel", "--addr", d.addrs(), id)
		if res.code != 1 || !strings.Contains(res.stderr, "(HTTP 409)") {
			t.Errorf("second cancel: want exit 1 with a 409, got %s", res)
		}
		if hiID != "" {
			res = d.gantry(t, "task", "cancel", "--addr", d.addrs(), hiID)
			if res.code != 1 || !strings.Contains(res.stderr, "already succeeded") || !strings.Contains(res.stderr, "(HTTP 409)") {
				t.Errorf("cancel of a finished task: want exit 1 with a 409, got %s", res)
			}
		}
		res = d.gantry(t, "task", "cancel", "--addr", d.addrs(), api.FormatTaskID(1<<40))
		if res.code != 1 || !strings.Contains(res.stderr, "(HTTP 404)") {
			t.Errorf("cancel of an unknown task: want exit 1 with a 404, got %s", res)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("SIGKILL the leader", func(t *testing.T) {
		pids := d.pids()
		old := fmt.Sprintf("m%d", leaderIdx)
		pid := pids[leaderIdx-1]
		if !d.ours(pid) {
			t.Fatalf("pid %d of the leader %s is not running", pid, old)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", pid, err)
		}
		Eventually(t, procDeadline, "the old leader's process to exit", func() bool { return !d.ours(pid) })
		var survivors []string
		for i := 1; i <= 3; i++ {
			if i != leaderIdx {
				survivors = append(survivors, d.url(i))
			}
		}
		Eventually(t, procDeadline, "a new leader", func() bool {
			st := d.status(t, strings.Join(survivors, ","))
			return st.Leader != old
		})
		// All three addresses, the dead one included: the client moves on.
		res := d.gantry(t, "submit", "--addr", d.addrs(), "--request-timeout", "90s", "--wait", "--", "sh", "-c", "echo after failover")
		if res.code != 0 || res.stdout != "after failover\n" {
			t.Errorf("submission after the leader was killed: %s", res)
		}
	})
}

// TestProcess_DevDownWaitsForEveryProcess: dev.sh down must not return (and
// forget the pids) while some of its processes still run. It waits with
// `xargs kill -0 <pids`, which fails as soon as any one PID is gone, so once
// a single process has died (a crash, or a chaos kill) it returns at once
// and leaves the others shutting down on their ports.
func TestProcess_DevDownWaitsForEveryProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs five processes")
	}
	d := procStartDev(t)
	pids := d.pids()
	w2 := pids[4]
	if err := syscall.Kill(w2, syscall.SIGKILL); err != nil {
		t.Fatalf("kill w2 (%d): %v", w2, err)
	}
	// Wait until w2 is reaped, not just a zombie (kill -0 succeeds on a
	// zombie, which hides the bug).
	reaped := func() bool { return errors.Is(syscall.Kill(w2, 0), syscall.ESRCH) }
	for deadline := time.Now().Add(procDeadline); !reaped() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if !reaped() {
		t.Skip("the killed process is never reaped here (no init that reaps orphans)")
	}
	res := procRun(t, 3*time.Minute, d.root, d.env, "bash", filepath.Join(d.root, "scripts", "dev.sh"), "down")
	if res.code != 0 {
		t.Fatalf("dev.sh down: %s", res)
	}
	for i, pid := range pids {
		if d.ours(pid) {
			t.Errorf("%s (pid %d) still runs after dev.sh down returned", []string{"m1", "m2", "m3", "w1", "w2"}[i], pid)
		}
	}
}
