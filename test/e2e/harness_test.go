//go:build e2e

// Package e2e runs gantry end to end: the real image (GANTRY_IMAGE, default
// gantry:dev, built by `make image`) and the real compose file, brought up
// through scripts/compose.sh, one compose project per test cluster.
//
// Every file here carries the build constraint `e2e`, so `go test ./...`
// never builds them. Run them with `make e2e` (builds the image first), or:
//
//	make image
//	GANTRY_IMAGE=gantry:dev go test -tags e2e -count=1 -timeout 30m -v ./test/e2e/...
//
// The benchmarks (bench_test.go) run with `make bench-docker`.
//
// Each cluster is a compose project named e2e-<time>-<random> on free host
// ports. Its teardown always runs (t.Cleanup, and a signal handler for
// Ctrl-C): scripts/compose.sh down with VOLUMES=1, then a safety net that
// removes every container, network and volume labelled
// io.gantry.cluster=<project> (or named after it), reporting as a test error
// anything `down` left behind. Projects of earlier runs that crashed (older
// than staleAfter) are swept at start.
//
// Without a Docker engine (`docker info` fails) the tests skip, saying so;
// without the image they fail, telling to run `make image`.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
)

// Labels of gantry's containers, networks and volumes.
const (
	labelCluster = "io.gantry.cluster"
	labelRole    = "io.gantry.role"
	labelManaged = "io.gantry.managed"
)

// projectPrefix starts every compose project these tests create.
const projectPrefix = "e2e-"

// staleAfter: a project of this package older than this (longer than any
// test timeout) is a leftover of a crashed run and is removed at start.
const staleAfter = 2 * time.Hour

// Options shape a test cluster.
type Options struct {
	Workers int // compose workers (GANTRY_WORKERS); default 2, -1 means none
	Slots   int // slots of every worker, compose's and the leader's (GANTRY_WORKER_SLOTS); default 4
}

// Cluster is one compose project: three masters, compose workers, and the
// workers the leader starts.
type Cluster struct {
	Project string
	Ports   []int    // host ports of master-1..3
	URLs    []string // http://127.0.0.1:<port>, index i is master-(i+1)
	Client  *transport.Client
	Options Options

	root  string
	image string

	teardownOnce sync.Once
}

var (
	repoRootOnce sync.Once
	repoRoot     string
	repoRootErr  error
)

// root returns the repository root (where go.mod, the Makefile and
// scripts/compose.sh are).
func root(t testing.TB) string {
	t.Helper()
	repoRootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			repoRootErr = err
			return
		}
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "scripts", "compose.sh")); err == nil {
				repoRoot = d
				return
			}
			if filepath.Dir(d) == d {
				repoRootErr = fmt.Errorf("no scripts/compose.sh above %s", dir)
				return
			}
		}
	})
	if repoRootErr != nil {
		t.Fatalf("repository root: %v", repoRootErr)
	}
	return repoRoot
}

// imageName is the image under test.
func imageName() string {
	if v := os.Getenv("GANTRY_IMAGE"); v != "" {
		return v
	}
	return "gantry:dev"
}

// run runs a command with a timeout and returns its combined output.
func run(timeout time.Duration, dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %s: %w", name, strings.Join(args, " "), timeout, err)
	} else if err != nil {
		err = fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), err
}

// docker runs the docker CLI.
func docker(args ...string) (string, error) {
	return run(2*time.Minute, "", nil, "docker", args...)
}

// dockerOut runs the docker CLI and returns only its standard output.
func dockerOut(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

var (
	dockerOnce sync.Once
	dockerErr  error
)

// requireDocker skips when no Docker engine answers (the only skip of this
// package), and fails when the image is missing.
func requireDocker(t testing.TB) {
	t.Helper()
	dockerOnce.Do(func() {
		if _, err := run(30*time.Second, "", nil, "docker", "info"); err != nil {
			dockerErr = err
		}
	})
	if dockerErr != nil {
		t.Skipf("no Docker engine: `docker info` failed (%v); the e2e tests need one. THE E2E TESTS DID NOT RUN.", dockerErr)
	}
	img := imageName()
	if _, err := docker("image", "inspect", img); err != nil {
		t.Fatalf("image %s not found: build it with `make image` (or run `make e2e`, which builds it and runs these tests); nothing is pulled", img)
	}
}

// Host ports are picked below Linux's ephemeral range so that no outgoing
// connection takes one between the check and docker binding it; a port is
// never handed out twice in one process.
var (
	portMu   sync.Mutex
	portUsed = map[int]bool{}
)

func freePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for i := 0; i < 2000; i++ {
		p := 20000 + rand.IntN(12000)
		if portUsed[p] {
			continue
		}
		// Docker publishes on every interface: check the wildcard address.
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		ln.Close()
		ln4, err := net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		ln4.Close()
		portUsed[p] = true
		return p
	}
	t.Fatal("no free host port")
	return 0
}

// Active clusters, torn down by the signal handler on Ctrl-C / SIGTERM.
var (
	activeMu sync.Mutex
	active   = map[string]*Cluster{}
)

func TestMain(m *testing.M) {
	flag.Parse()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "e2e: %v: removing the test clusters before exiting\n", s)
		teardownActive()
		os.Exit(1)
	}()
	// `go test -timeout` ends the process with a panic that runs no
	// cleanup: remove the clusters a minute before that happens.
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d > 2*time.Minute {
			time.AfterFunc(d-time.Minute, func() {
				fmt.Fprintf(os.Stderr, "e2e: the test binary times out in a minute (-timeout %s): removing the test clusters now\n", d)
				teardownActive()
			})
		}
	}
	sweepStale()
	os.Exit(m.Run())
}

// teardownActive removes every cluster still up, reporting to stderr.
func teardownActive() {
	activeMu.Lock()
	cs := make([]*Cluster, 0, len(active))
	for _, c := range active {
		cs = append(cs, c)
	}
	activeMu.Unlock()
	for _, c := range cs {
		c.teardown(func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
	}
}

// projectName returns a new project name: e2e-<unix time base 36>-<random>.
func projectName() string {
	return fmt.Sprintf("%s%s-%04x", projectPrefix, strconv.FormatInt(time.Now().Unix(), 36), rand.IntN(1<<16))
}

// projectTime parses the creation time out of a project name of this package.
func projectTime(p string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(p, projectPrefix)
	if !ok {
		return time.Time{}, false
	}
	ts, _, ok := strings.Cut(rest, "-")
	if !ok {
		return time.Time{}, false
	}
	sec, err := strconv.ParseInt(ts, 36, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}

// sweepStale removes what crashed runs of this package left behind (projects
// older than staleAfter; a concurrent run's projects are younger).
func sweepStale() {
	if _, err := run(30*time.Second, "", nil, "docker", "info"); err != nil {
		return
	}
	projects := map[string]bool{}
	for _, kind := range []string{"container", "network", "volume"} {
		args := []string{kind, "ls", "--filter", "label=" + labelCluster, "--format", `{{.Label "` + labelCluster + `"}}`}
		if kind == "container" {
			args = []string{"ps", "-a", "--filter", "label=" + labelCluster, "--format", `{{.Label "` + labelCluster + `"}}`}
		}
		out, err := dockerOut(args...)
		if err != nil {
			continue
		}
		for _, p := range strings.Fields(out) {
			projects[p] = true
		}
	}
	for p := range projects {
		if at, ok := projectTime(p); ok && time.Since(at) > staleAfter {
			fmt.Fprintf(os.Stderr, "e2e: removing project %s left by an earlier run (started %s)\n", p, at.Format(time.RFC3339))
			removeByLabel(p)
		}
	}
}

// removeByLabel force-removes every container, network and volume of
// project p (by label, and by name for networks and volumes) and returns
// what it found.
func removeByLabel(p string) []string {
	var found []string
	ids, _ := dockerOut("ps", "-aq", "--filter", "label="+labelCluster+"="+p)
	names, _ := dockerOut("ps", "-a", "--filter", "name=^"+p+"-", "--format", "{{.ID}}")
	cs := uniq(append(strings.Fields(ids), strings.Fields(names)...))
	if len(cs) > 0 {
		// A paused container cannot be stopped; unpause first (errors ignored).
		docker(append([]string{"unpause"}, cs...)...)
		docker(append([]string{"rm", "-f", "-v"}, cs...)...)
		for _, c := range cs {
			found = append(found, "container "+c)
		}
	}
	nl, _ := dockerOut("network", "ls", "-q", "--filter", "label="+labelCluster+"="+p)
	nn, _ := dockerOut("network", "ls", "--filter", "name=^"+p+"-", "--format", "{{.ID}}")
	for _, n := range uniq(append(strings.Fields(nl), strings.Fields(nn)...)) {
		docker("network", "rm", n)
		found = append(found, "network "+n)
	}
	vl, _ := dockerOut("volume", "ls", "-q", "--filter", "label="+labelCluster+"="+p)
	vn, _ := dockerOut("volume", "ls", "-q", "--filter", "name=^"+p+"-")
	for _, v := range uniq(append(strings.Fields(vl), strings.Fields(vn)...)) {
		docker("volume", "rm", "-f", v)
		found = append(found, "volume "+v)
	}
	return found
}

// leftovers lists every container, network and volume of project p, by
// label and by name.
func leftovers(p string) []string {
	var out []string
	add := func(kind string, s string) {
		for _, f := range strings.Fields(s) {
			out = append(out, kind+" "+f)
		}
	}
	s1, _ := dockerOut("ps", "-a", "--filter", "label="+labelCluster+"="+p, "--format", "{{.Names}}")
	s2, _ := dockerOut("ps", "-a", "--filter", "name=^"+p+"-", "--format", "{{.Names}}")
	add("container", strings.Join(uniq(append(strings.Fields(s1), strings.Fields(s2)...)), " "))
	n1, _ := dockerOut("network", "ls", "--filter", "label="+labelCluster+"="+p, "--format", "{{.Name}}")
	n2, _ := dockerOut("network", "ls", "--filter", "name=^"+p+"-", "--format", "{{.Name}}")
	add("network", strings.Join(uniq(append(strings.Fields(n1), strings.Fields(n2)...)), " "))
	v1, _ := dockerOut("volume", "ls", "-q", "--filter", "label="+labelCluster+"="+p)
	v2, _ := dockerOut("volume", "ls", "-q", "--filter", "name=^"+p+"-")
	add("volume", strings.Join(uniq(append(strings.Fields(v1), strings.Fields(v2)...)), " "))
	return out
}

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// NewCluster brings up a compose project and waits for a leader. Its
// teardown is registered before anything is created, so it always runs.
func NewCluster(t testing.TB, o Options) *Cluster {
	t.Helper()
	requireDocker(t)
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.Workers < 0 {
		o.Workers = 0
	}
	if o.Slots == 0 {
		o.Slots = 4
	}
	c := &Cluster{Project: projectName(), Options: o, root: root(t), image: imageName()}
	for i := 0; i < 3; i++ {
		p := freePort(t)
		c.Ports = append(c.Ports, p)
		c.URLs = append(c.URLs, fmt.Sprintf("http://127.0.0.1:%d", p))
	}
	c.Client = transport.NewClient(c.URLs)

	activeMu.Lock()
	active[c.Project] = c
	activeMu.Unlock()
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpDiagnostics(t)
		}
		c.teardown(t.Errorf)
		activeMu.Lock()
		delete(active, c.Project)
		activeMu.Unlock()
	})

	t.Logf("cluster %s: masters on %s (image %s, %d compose workers × %d slots)", c.Project, strings.Join(c.URLs, ", "), c.image, o.Workers, o.Slots)
	start := time.Now()
	out, err := c.compose(4*time.Minute, map[string]string{"WAIT": "180"}, "up")
	if err != nil {
		t.Fatalf("scripts/compose.sh up for %s: %v\n%s", c.Project, err, out)
	}
	leader := c.WaitLeader(t, 90*time.Second, -1)
	t.Logf("cluster %s up in %s, leader %s", c.Project, time.Since(start).Round(100*time.Millisecond), leader)
	return c
}

// env returns the environment of scripts/compose.sh for this project.
func (c *Cluster) env(extra map[string]string) []string {
	vars := map[string]string{
		"GANTRY_PROJECT":      c.Project,
		"GANTRY_IMAGE":        c.image,
		"GANTRY_WORKERS":      strconv.Itoa(c.Options.Workers),
		"GANTRY_WORKER_SLOTS": strconv.Itoa(c.Options.Slots),
		"MASTERS":             "3",
		"VOLUMES":             "0",
	}
	for i, p := range c.Ports {
		vars[fmt.Sprintf("GANTRY_PORT_%d", i+1)] = strconv.Itoa(p)
	}
	for k, v := range extra {
		vars[k] = v
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, set := vars[k]; set {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// compose runs scripts/compose.sh CMD for this project.
func (c *Cluster) compose(timeout time.Duration, extra map[string]string, args ...string) (string, error) {
	return run(timeout, c.root, c.env(extra), filepath.Join(c.root, "scripts", "compose.sh"), args...)
}

// MakeDown runs `make down VOLUMES=1` for this project from the repository
// root, as a user would.
func (c *Cluster) MakeDown() (string, error) {
	return run(4*time.Minute, c.root, c.env(map[string]string{"VOLUMES": "1"}), "make", "--no-print-directory", "down",
		"GANTRY_PROJECT="+c.Project, "VOLUMES=1", "IMAGE="+c.image)
}

// teardown removes the project: compose.sh down with VOLUMES=1, then the
// safety net by label and name. Anything the safety net had to remove is
// reported through errorf: `down` must leave nothing behind.
func (c *Cluster) teardown(errorf func(format string, args ...any)) {
	c.teardownOnce.Do(func() {
		// A paused master cannot be stopped cleanly: unpause everything first.
		if ids, _ := dockerOut("ps", "-q", "--filter", "label="+labelCluster+"="+c.Project, "--filter", "status=paused"); strings.TrimSpace(ids) != "" {
			docker(append([]string{"unpause"}, strings.Fields(ids)...)...)
		}
		out, err := c.compose(5*time.Minute, map[string]string{"VOLUMES": "1"}, "down")
		if err != nil {
			errorf("teardown of %s: scripts/compose.sh down failed: %v\n%s", c.Project, err, out)
		}
		if left := removeByLabel(c.Project); len(left) > 0 {
			errorf("teardown of %s: scripts/compose.sh down VOLUMES=1 left behind %s (removed now by the safety net)", c.Project, strings.Join(left, ", "))
		}
		if left := leftovers(c.Project); len(left) > 0 {
			errorf("teardown of %s: could not remove %s", c.Project, strings.Join(left, ", "))
		}
	})
}

// dumpDiagnostics logs the project's containers, scaling state and the
// masters' last log lines.
func (c *Cluster) dumpDiagnostics(t testing.TB) {
	out, _ := docker("ps", "-a", "--filter", "label="+labelCluster+"="+c.Project, "--format", "table {{.Names}}\t{{.State}}\t{{.Status}}\t{{.Label \"io.gantry.managed\"}}")
	t.Logf("diagnostics for %s: containers:\n%s", c.Project, out)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if st, err := c.Client.Scale(ctx, transport.ReadOptions{}); err == nil {
		b, _ := json.MarshalIndent(st, "", "  ")
		t.Logf("GET /v1/scale:\n%s", b)
	}
	cancel()
	for i := 1; i <= 3; i++ {
		name := c.MasterContainer(i)
		logs, _ := docker("logs", "--tail", "80", name)
		t.Logf("last log lines of %s:\n%s", name, logs)
	}
}

// MasterContainer returns the container name of master-i (1-based).
func (c *Cluster) MasterContainer(i int) string { return fmt.Sprintf("%s-master-%d", c.Project, i) }

// MasterIndex returns the 1-based index of Raft ID "mN".
func MasterIndex(id string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "m"))
	if err != nil || !strings.HasPrefix(id, "m") {
		return 0
	}
	return n
}

// ContainerOf returns the container name of the master with Raft ID id.
func (c *Cluster) ContainerOf(id string) string { return c.MasterContainer(MasterIndex(id)) }

// URLOf returns the host URL of the master with Raft ID id.
func (c *Cluster) URLOf(id string) string { return c.URLs[MasterIndex(id)-1] }

// ClientFor returns a client that talks to the given masters only (Raft
// IDs), in that order.
func (c *Cluster) ClientFor(ids ...string) *transport.Client {
	var urls []string
	for _, id := range ids {
		urls = append(urls, c.URLOf(id))
	}
	return transport.NewClient(urls)
}

// Self asks master id about itself, with a short timeout.
func (c *Cluster) Self(id string, timeout time.Duration) (api.NodeStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Client.SelfAt(ctx, c.URLOf(id))
}

// selves asks every master (except skip, a 1-based index, or -1) about
// itself, concurrently.
func (c *Cluster) selves(skip int) map[string]api.NodeStatus {
	var mu sync.Mutex
	out := map[string]api.NodeStatus{}
	var wg sync.WaitGroup
	for i := 1; i <= 3; i++ {
		if i == skip {
			continue
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, err := c.Self(fmt.Sprintf("m%d", i), 2*time.Second)
			if err == nil {
				mu.Lock()
				out[fmt.Sprintf("m%d", i)] = st
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	return out
}

// CurrentLeader returns the leader a majority agrees on right now, or "".
// skip (1-based, or -1) is a master not to ask (paused: it would not answer).
func (c *Cluster) CurrentLeader(skip int) string {
	st := c.selves(skip)
	for id, s := range st {
		if s.Role != "leader" {
			continue
		}
		votes := 1
		for oid, o := range st {
			if oid != id && o.Leader == id && o.Term == s.Term {
				votes++
			}
		}
		if votes >= 2 {
			return id
		}
	}
	return ""
}

// WaitLeader waits until a leader is elected that a majority agrees on and
// that is not master skip (1-based, or -1), and returns its Raft ID.
func (c *Cluster) WaitLeader(t testing.TB, timeout time.Duration, skip int) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if id := c.CurrentLeader(skip); id != "" {
			return id
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader within %s (masters: %+v)", timeout, c.selves(skip))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// LeaderContainer returns the leader's Raft ID as GET /v1/cluster names it
// (through any master) and the name of its container,
// "<project>-master-N" for leader "mN".
func (c *Cluster) LeaderContainer(t testing.TB, timeout time.Duration) (id, container string) {
	t.Helper()
	poll(t, timeout, "GET /v1/cluster to name a leader", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cs, err := c.Client.Cluster(ctx, transport.ReadOptions{})
		if err != nil {
			return false, err.Error()
		}
		id = cs.Leader
		return MasterIndex(id) >= 1 && MasterIndex(id) <= len(c.URLs), "leader " + id
	})
	return id, c.ContainerOf(id)
}

// Kill sends SIGKILL to a container and waits until it is stopped.
func Kill(t testing.TB, name string) {
	t.Helper()
	if out, err := docker("kill", "-s", "KILL", name); err != nil {
		t.Fatalf("docker kill %s: %v\n%s", name, err, out)
	}
	poll(t, 60*time.Second, name+" to stop", func() (bool, string) {
		s, err := dockerOut("inspect", "-f", "{{.State.Status}}", name)
		return err == nil && strings.TrimSpace(s) != "running", "state " + strings.TrimSpace(s)
	})
}

// Start starts a stopped container.
func Start(t testing.TB, name string) {
	t.Helper()
	if out, err := docker("start", name); err != nil {
		t.Fatalf("docker start %s: %v\n%s", name, err, out)
	}
}

// Pause freezes a container.
func Pause(t testing.TB, name string) {
	t.Helper()
	if out, err := docker("pause", name); err != nil {
		t.Fatalf("docker pause %s: %v\n%s", name, err, out)
	}
}

// Unpause thaws a container.
func Unpause(t testing.TB, name string) {
	t.Helper()
	if out, err := docker("unpause", name); err != nil {
		t.Fatalf("docker unpause %s: %v\n%s", name, err, out)
	}
}

// Logs returns a container's log lines (stdout and stderr) written at or
// after since.
func Logs(t testing.TB, name string, since time.Time) string {
	t.Helper()
	out, err := docker("logs", "--since", since.UTC().Format(time.RFC3339Nano), name)
	if err != nil {
		t.Fatalf("docker logs %s: %v", name, err)
	}
	return out
}

// Container is one container as `docker ps` shows it.
type Container struct {
	Name    string
	ID      string
	State   string // running, exited, created, paused, ...
	Created time.Time
	Labels  map[string]string
}

// Containers lists the project's containers (any state) with every given
// label filter ("key=value") on top of io.gantry.cluster=<project>.
func (c *Cluster) Containers(labels ...string) ([]Container, error) {
	args := []string{"ps", "-a", "--no-trunc", "--filter", "label=" + labelCluster + "=" + c.Project}
	for _, l := range labels {
		args = append(args, "--filter", "label="+l)
	}
	args = append(args, "--format", "{{json .}}")
	out, err := dockerOut(args...)
	if err != nil {
		return nil, err
	}
	var list []Container
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var raw struct {
			Names, ID, State, CreatedAt, Labels string
		}
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			return nil, fmt.Errorf("docker ps line %q: %w", line, err)
		}
		ct := Container{Name: raw.Names, ID: raw.ID, State: raw.State, Labels: map[string]string{}}
		ct.Created, _ = time.Parse("2006-01-02 15:04:05 -0700 MST", raw.CreatedAt)
		for _, kv := range strings.Split(raw.Labels, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				ct.Labels[k] = v
			}
		}
		list = append(list, ct)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list, nil
}

// Managed lists the leader-managed worker containers (any state).
func (c *Cluster) Managed() ([]Container, error) {
	return c.Containers(labelRole+"=worker", labelManaged+"=true")
}

// MustManaged is Managed failing the test on error.
func (c *Cluster) MustManaged(t testing.TB) []Container {
	t.Helper()
	l, err := c.Managed()
	if err != nil {
		t.Fatalf("list managed containers: %v", err)
	}
	return l
}

// ManagedPrefix is the name prefix of the leader's worker containers.
func (c *Cluster) ManagedPrefix() string { return c.Project + "-managed-" }

// poll calls cond until it is true, pausing between calls, or fails the
// test after timeout with cond's last description.
func poll(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, desc := cond()
		if ok {
			return
		}
		last = desc
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Exec returns a task spec that runs a shell script.
func Exec(script string) api.TaskSpec {
	return api.TaskSpec{Args: []string{"sh", "-c", script}, Timeout: "2m"}
}

// SubmitKeyed submits spec (which has an idempotency key) to the masters of
// clients in turn, starting at start, each try bounded by per. An error is
// an unknown outcome: the same key goes to the next master, until deadline
// or ctx ends.
func SubmitKeyed(ctx context.Context, clients []*transport.Client, start int, spec api.TaskSpec, per time.Duration, deadline time.Time) (api.Task, int, error) {
	var lastErr error
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			return api.Task{}, i, ctx.Err()
		}
		if i > 0 && time.Now().After(deadline) {
			return api.Task{}, i, fmt.Errorf("key %s not acknowledged by %s: %w", spec.IdempotencyKey, deadline.Format(time.TimeOnly), lastErr)
		}
		cl := clients[(start+i)%len(clients)]
		rctx, cancel := context.WithTimeout(ctx, per)
		task, _, err := cl.Submit(rctx, spec)
		cancel()
		if err == nil {
			return task, i, nil
		}
		lastErr = err
		var ae *api.Error
		if (i+1)%len(clients) == 0 || (errors.As(err, &ae) && ae.Status == 400) {
			time.Sleep(50 * time.Millisecond) // a round of masters failed: pause before the next
		}
	}
}

// WaitTerminal long-polls task id until it is terminal, through any master.
func (c *Cluster) WaitTerminal(t testing.TB, id string, timeout time.Duration) api.Task {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last api.Task
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
		task, err := c.Client.Task(ctx, id, transport.ReadOptions{Wait: 20 * time.Second})
		cancel()
		if err == nil {
			last = task
			if task.State.Terminal() {
				return task
			}
		} else {
			lastErr = err
			time.Sleep(250 * time.Millisecond)
		}
	}
	t.Fatalf("task %s not terminal within %s (last seen %s, last error %v)", id, timeout, last.State, lastErr)
	return last
}

// AllTasks lists every task of the cluster (linearizable, paged).
func (c *Cluster) AllTasks(t testing.TB) []api.Task {
	t.Helper()
	var out []api.Task
	after := ""
	for {
		var page api.TaskList
		var err error
		for try := 0; try < 20; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			page, err = c.Client.List(ctx, api.ListFilter{After: after, Limit: api.MaxListLimit}, transport.ReadOptions{})
			cancel()
			if err == nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("list tasks: %v", err)
		}
		out = append(out, page.Tasks...)
		if page.Next == "" {
			return out
		}
		after = page.Next
	}
}

// checkSucceededOnce asserts the invariants of a completed task: succeeded
// with the expected output, exactly one succeeded attempt (the current
// one), nothing still running.
func checkSucceededOnce(t testing.TB, task api.Task, wantOutput string) bool {
	t.Helper()
	if task.State != api.StateSucceeded {
		t.Errorf("task %s (%s): state %s, want succeeded (result %+v, attempts %+v)", task.ID, task.IdempotencyKey, task.State, task.Result, task.Attempts)
		return false
	}
	ok := true
	if task.Result == nil || task.Result.Output != wantOutput {
		out := "<no result>"
		if task.Result != nil {
			out = task.Result.Output
		}
		t.Errorf("task %s (%s): output %q, want %q", task.ID, task.IdempotencyKey, out, wantOutput)
		ok = false
	}
	n := 0
	for _, a := range task.Attempts {
		if a.Outcome == api.OutcomeSucceeded {
			n++
			if a.Attempt != task.Attempt {
				t.Errorf("task %s: succeeded attempt %d is not the current attempt %d", task.ID, a.Attempt, task.Attempt)
				ok = false
			}
		}
		if a.Outcome == api.OutcomeRunning {
			t.Errorf("task %s: attempt %d still running in a terminal task", task.ID, a.Attempt)
			ok = false
		}
	}
	if n != 1 {
		t.Errorf("task %s (%s): %d succeeded attempts, want exactly 1: %+v", task.ID, task.IdempotencyKey, n, task.Attempts)
		ok = false
	}
	return ok
}

// metric reads one unlabelled metric from a master's /metrics.
func (c *Cluster) metric(id, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", c.URLOf(id)+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found on %s", name, id)
}

// Scale reads GET /v1/scale from the leader (linearizable), with a timeout.
func (c *Cluster) Scale(timeout time.Duration) (api.ScaleStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Client.Scale(ctx, transport.ReadOptions{})
}

// SetScale commits a scaling policy, retrying through any master.
func (c *Cluster) SetScale(t testing.TB, p api.ScalePolicy) {
	t.Helper()
	var err error
	for try := 0; try < 30; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.Client.SetScale(ctx, p)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("PUT /v1/scale %+v: %v", p, err)
}

// settled describes whether scaling is at rest with want managed workers:
// every record is running with a running container, the containers (by
// label) are exactly the records, names are unique, and nothing is orphaned.
func (c *Cluster) settled(want int) (bool, string) {
	st, err := c.Scale(10 * time.Second)
	if err != nil {
		return false, "GET /v1/scale: " + err.Error()
	}
	cs, err := c.Managed()
	if err != nil {
		return false, "docker ps: " + err.Error()
	}
	return settledState(st, cs, c.ManagedPrefix(), want)
}

func settledState(st api.ScaleStatus, cs []Container, prefix string, want int) (bool, string) {
	records := map[string]string{}
	var problems []string
	for _, w := range st.Workers {
		if _, dup := records[w.Name]; dup {
			problems = append(problems, "duplicate record "+w.Name)
		}
		records[w.Name] = w.State
		if w.State != api.ManagedRunning || w.Container != "running" {
			problems = append(problems, fmt.Sprintf("%s record %s container %s", w.Name, w.State, w.Container))
		}
	}
	names := map[string]bool{}
	for _, ct := range cs {
		if names[ct.Name] {
			problems = append(problems, "duplicate container "+ct.Name)
		}
		names[ct.Name] = true
		if _, ok := records[ct.Name]; !ok {
			problems = append(problems, "container "+ct.Name+" has no record")
		}
		if ct.State != "running" {
			problems = append(problems, "container "+ct.Name+" is "+ct.State)
		}
		if !strings.HasPrefix(ct.Name, prefix) {
			problems = append(problems, "container "+ct.Name+" is not named "+prefix+"N")
		}
	}
	for name := range records {
		if !names[name] {
			problems = append(problems, "record "+name+" has no container")
		}
	}
	if len(st.Orphans) > 0 {
		problems = append(problems, "orphans "+strings.Join(st.Orphans, ","))
	}
	if len(cs) != want || len(st.Workers) != want {
		problems = append(problems, fmt.Sprintf("%d containers and %d records, want %d", len(cs), len(st.Workers), want))
	}
	desc := fmt.Sprintf("records %v, containers %v, desired %d, last error %q", records, containerNames(cs), st.Desired, st.LastError)
	if len(problems) > 0 {
		return false, strings.Join(problems, "; ") + " — " + desc
	}
	return true, desc
}

func containerNames(cs []Container) []string {
	var out []string
	for _, ct := range cs {
		out = append(out, ct.Name+"("+ct.State+")")
	}
	return out
}

// WaitSettled waits until scaling is at rest with want managed workers.
func (c *Cluster) WaitSettled(t testing.TB, want int, timeout time.Duration) {
	t.Helper()
	poll(t, timeout, fmt.Sprintf("scaling to settle at %d managed workers", want), func() (bool, string) {
		return c.settled(want)
	})
}

// WaitCaughtUp waits until master id answers as a follower of the current
// leader with an applied index at least the leader's (read just before).
func (c *Cluster) WaitCaughtUp(t testing.TB, id string, timeout time.Duration) {
	t.Helper()
	poll(t, timeout, id+" to rejoin and catch up", func() (bool, string) {
		leader := c.CurrentLeader(-1)
		if leader == "" || leader == id {
			return false, "leader " + leader
		}
		ls, err := c.Self(leader, 3*time.Second)
		if err != nil {
			return false, "leader self: " + err.Error()
		}
		s, err := c.Self(id, 3*time.Second)
		if err != nil {
			return false, id + " self: " + err.Error()
		}
		desc := fmt.Sprintf("%s role %s leader %s applied %d; leader %s applied %d", id, s.Role, s.Leader, s.AppliedIndex, leader, ls.AppliedIndex)
		return s.Role == "follower" && s.Leader == leader && s.AppliedIndex >= ls.AppliedIndex, desc
	})
}
