// Package test holds gantry's multi-node tests: an in-process cluster harness
// (real raft, memberlist and HTTP on loopback ports, several masters and
// workers in one process) and the tests that kill, restart and cut off its
// nodes, plus a process-level test of the `make dev` topology. Nothing
// imports this package.
//
// With Options.Fabric, the nodes of a cluster talk to each other (raft,
// gossip, HTTP) through a fault-injecting fabric (fabric.go) that can cut,
// cut one way, isolate, delay and drop; TestChaosInProcess runs the chaos
// harness (test/chaos) over it. The fabric enforces its rules in wrappers of
// the nodes' dials and gossip sends, not in the kernel: the test's own
// clients are never faulted, data already buffered when a cut starts may
// still arrive, and one connection's writes are delayed in order. See
// Fabric for the details.
package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/transport"
	"github.com/gantryhq/gantry/worker"
	"github.com/hashicorp/go-hclog"
)

// Options shape a test cluster.
type Options struct {
	Masters int // default 3
	Workers int // default 2
	Slots   int // per worker, default 2
	// Master tweaks every master's config after the test defaults are set.
	Master func(*master.Config)
	// Worker tweaks every worker's config.
	Worker func(*worker.Config)
	// NoWait skips waiting for a leader and the workers at start.
	NoWait bool
	// Fabric, when set, carries all traffic between the nodes (raft,
	// gossip, HTTP) so that tests can cut, delay and drop it. Every node is
	// registered with it under its ID.
	Fabric *Fabric
}

// Cluster is an in-process gantry cluster for tests.
type Cluster struct {
	t       testing.TB
	opts    Options
	dir     string
	log     hclog.Logger
	Masters []*MasterNode
	Workers []*WorkerNode
	peers   []master.Peer
	seeds   []string
}

// MasterNode is one master of a test cluster, with fixed ports so it can be
// restarted at the same addresses.
type MasterNode struct {
	c        *Cluster
	ID       string
	DataDir  string
	RaftAddr string
	HTTPAddr string // host:port
	Gossip   string
	M        *master.Master
	srv      *http.Server
	up       bool
	// frozen, while set, holds every HTTP request until it is closed: the
	// node is paused (PauseMaster).
	frozen atomic.Pointer[chan struct{}]
}

// hold blocks while the node is paused, as a stopped process's kernel
// holds the connections it accepted.
func (n *MasterNode) hold(r *http.Request) bool {
	ch := n.frozen.Load()
	if ch == nil {
		return true
	}
	select {
	case <-*ch:
		return true
	case <-r.Context().Done():
		return false
	}
}

// URL returns the master's HTTP base URL.
func (n *MasterNode) URL() string { return "http://" + n.HTTPAddr }

// Up reports whether the node is running.
func (n *MasterNode) Up() bool { return n.up }

// WorkerNode is one worker of a test cluster.
type WorkerNode struct {
	c        *Cluster
	ID       string
	HTTPAddr string
	Gossip   string
	Slots    int
	W        *worker.Worker
	up       bool
}

// Up reports whether the node is running.
func (n *WorkerNode) Up() bool { return n.up }

// Ports are picked from [portLow, portHigh): below Linux's ephemeral range
// (32768 and up), so outgoing connections never take a port between the
// moment it is picked and the moment a node binds it; a port is never handed
// out twice in one test process.
const (
	portLow  = 12000
	portHigh = 32000
)

var (
	portMu   sync.Mutex
	portUsed = map[int]bool{}
)

// FreePort returns a loopback port, free for TCP and UDP (memberlist needs
// both) when checked, and not handed out before in this process.
func FreePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for i := 0; i < 1000; i++ {
		port := portLow + rand.IntN(portHigh-portLow)
		if portUsed[port] {
			continue
		}
		ln, err := net.Listen("tcp", addr(port))
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr(port))
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		portUsed[port] = true
		return port
	}
	t.Fatal("no free port")
	return 0
}

func addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// testWriter sends log lines to t.Log until the test ends.
type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// NewCluster starts a cluster and, unless opts.NoWait, waits until a leader
// serves and sees every worker. Everything is stopped at the end of the test.
func NewCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Slots == 0 {
		opts.Slots = 2
	}
	tw := &testWriter{t: t}
	level := hclog.Warn
	if l := os.Getenv("GANTRY_TEST_LOG"); l != "" {
		level = hclog.LevelFromString(l)
	}
	var out io.Writer = tw
	c := &Cluster{t: t, opts: opts, dir: t.TempDir(), log: hclog.New(&hclog.LoggerOptions{Level: level, Output: out, TimeFormat: "15:04:05.000"})}
	t.Cleanup(func() {
		c.Close()
		tw.mu.Lock()
		tw.done = true
		tw.mu.Unlock()
	})
	for i := 1; i <= opts.Masters; i++ {
		n := &MasterNode{
			c: c, ID: fmt.Sprintf("m%d", i), DataDir: filepath.Join(c.dir, fmt.Sprintf("m%d", i)),
			RaftAddr: addr(FreePort(t)), HTTPAddr: addr(FreePort(t)), Gossip: addr(FreePort(t)),
		}
		c.Masters = append(c.Masters, n)
		if opts.Fabric != nil {
			opts.Fabric.Register(n.ID, n.RaftAddr, n.HTTPAddr, n.Gossip)
		}
		c.peers = append(c.peers, master.Peer{ID: n.ID, Addr: n.RaftAddr})
		c.seeds = append(c.seeds, n.Gossip)
	}
	for _, n := range c.Masters {
		c.StartMaster(n)
	}
	for i := 1; i <= opts.Workers; i++ {
		c.AddWorker(fmt.Sprintf("w%d", i), opts.Slots)
	}
	if !opts.NoWait {
		c.WaitWorkers(opts.Workers)
	}
	return c
}

// TestMasterConfig returns the timers the tests use: quicker than the
// product defaults, generous enough for the race detector on two cores.
func TestMasterConfig() master.Config {
	return master.Config{
		HeartbeatTimeout:    500 * time.Millisecond,
		ElectionTimeout:     500 * time.Millisecond,
		LeaderLeaseTimeout:  250 * time.Millisecond,
		WorkerGrace:         2 * time.Second,
		WorkerTimeout:       3 * time.Second,
		WorkerCheckInterval: 250 * time.Millisecond,
		PushTimeout:         3 * time.Second,
		RetryBackoff:        50 * time.Millisecond,
		GossipProbeInterval: 300 * time.Millisecond,
		GossipProbeTimeout:  250 * time.Millisecond,
		GossipSuspicionMult: 3,
	}
}

// StartMaster starts (or restarts, from its data directory) a master.
func (c *Cluster) StartMaster(n *MasterNode) {
	c.t.Helper()
	if n.up {
		c.t.Fatalf("master %s is already up", n.ID)
	}
	cfg := TestMasterConfig()
	cfg.ID = n.ID
	cfg.DataDir = n.DataDir
	cfg.RaftBind = n.RaftAddr
	cfg.Peers = c.peers
	cfg.HTTPAdvertise = n.URL()
	cfg.GossipBind = n.Gossip
	for _, s := range c.seeds {
		if s != n.Gossip {
			cfg.Join = append(cfg.Join, s)
		}
	}
	cfg.Logger = c.log.Named(n.ID)
	if f := c.opts.Fabric; f != nil {
		cfg.WrapRaftStream = f.RaftStream(n.ID)
		cfg.WrapGossip = f.Gossip(n.ID)
		cfg.HTTPClient = f.HTTPClient(n.ID)
	}
	if c.opts.Master != nil {
		c.opts.Master(&cfg)
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port may linger briefly after a kill
		if ln, err = net.Listen("tcp", n.HTTPAddr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("master %s: listen http: %v", n.ID, err)
	}
	m, err := master.New(cfg)
	if err != nil {
		ln.Close()
		c.t.Fatalf("master %s: %v", n.ID, err)
	}
	for i := 0; ; i++ {
		if err = m.Start(); err == nil || i == 50 {
			break
		}
		time.Sleep(50 * time.Millisecond) // the raft or gossip port may linger briefly after a kill
		if m, err = master.New(cfg); err != nil {
			break
		}
	}
	if err != nil {
		ln.Close()
		c.t.Fatalf("master %s: start: %v", n.ID, err)
	}
	n.M = m
	handler := transport.NewServer(m, transport.ServerOptions{LeaderWait: 3 * time.Second, Logger: cfg.Logger, Registry: m.Registry(), ForwardTimeout: m.ForwardTimeout(), Client: cfg.HTTPClient})
	n.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.hold(r) {
			handler.ServeHTTP(w, r)
		}
	}), ReadHeaderTimeout: 5 * time.Second}
	go n.srv.Serve(ln)
	n.up = true
}

// PauseMaster makes n behave as a paused process (docker pause, SIGSTOP)
// does, as far as the others can tell: nothing it sends reaches anyone (a
// one-way cut from n to every node: it needs Options.Fabric), and every
// HTTP request it is sent is accepted and held without an answer.
// ResumeMaster ends it.
func (c *Cluster) PauseMaster(n *MasterNode) {
	c.t.Helper()
	f := c.opts.Fabric
	if f == nil {
		c.t.Fatal("PauseMaster needs Options.Fabric")
	}
	ch := make(chan struct{})
	n.frozen.Store(&ch)
	for _, o := range f.Nodes() {
		if o != n.ID {
			f.CutOneWay(n.ID, o)
		}
	}
}

// ResumeMaster ends PauseMaster: held requests go on, n's traffic flows.
func (c *Cluster) ResumeMaster(n *MasterNode) {
	c.t.Helper()
	for _, o := range c.opts.Fabric.Nodes() {
		c.opts.Fabric.HealOneWay(n.ID, o)
	}
	if ch := n.frozen.Swap(nil); ch != nil {
		close(*ch)
	}
}

// KillMaster stops a master the way a crash would.
func (c *Cluster) KillMaster(n *MasterNode) {
	c.t.Helper()
	if !n.up {
		return
	}
	n.up = false
	_ = n.srv.Close()
	if err := n.M.Kill(); err != nil {
		c.t.Logf("kill %s: %v", n.ID, err)
	}
}

// StopMaster stops a master gracefully (leadership transfer, gossip leave).
func (c *Cluster) StopMaster(n *MasterNode) {
	c.t.Helper()
	if !n.up {
		return
	}
	n.up = false
	if err := n.M.Shutdown(); err != nil {
		c.t.Logf("shutdown %s: %v", n.ID, err)
	}
	_ = n.srv.Close()
}

// AddWorker starts a new worker (or, with an ID used before, a new process of
// that worker).
func (c *Cluster) AddWorker(id string, slots int) *WorkerNode {
	c.t.Helper()
	n := c.NewWorkerNode(id, slots)
	c.StartWorker(n)
	c.Workers = append(c.Workers, n)
	return n
}

// StartWorker starts (or restarts) a worker node.
func (c *Cluster) StartWorker(n *WorkerNode) {
	c.t.Helper()
	if err := c.TryStartWorker(n); err != nil {
		c.t.Fatal(err)
	}
}

// TryStartWorker is StartWorker returning its error: safe from goroutines
// other than the test's.
func (c *Cluster) TryStartWorker(n *WorkerNode) error {
	cfg := worker.Config{
		ID: n.ID, HTTPBind: n.HTTPAddr, GossipBind: n.Gossip, Join: c.seeds, Slots: n.Slots,
		DrainTimeout: 5 * time.Second, Logger: c.log.Named(n.ID),
		GossipProbeInterval: 300 * time.Millisecond, GossipProbeTimeout: 250 * time.Millisecond, GossipSuspicionMult: 3,
		Exec: worker.ExecConfig{KillGrace: 200 * time.Millisecond},
	}
	if f := c.opts.Fabric; f != nil {
		cfg.WrapGossip = f.Gossip(n.ID)
		cfg.HTTPClient = f.HTTPClient(n.ID)
	}
	if c.opts.Worker != nil {
		c.opts.Worker(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		return fmt.Errorf("worker %s: %v", n.ID, err)
	}
	if err := w.Start(); err != nil {
		return fmt.Errorf("worker %s: start: %v", n.ID, err)
	}
	n.W = w
	n.up = true
	return nil
}

// NewWorkerNode returns a worker node with fresh ports, not started.
func (c *Cluster) NewWorkerNode(id string, slots int) *WorkerNode {
	n := &WorkerNode{c: c, ID: id, HTTPAddr: addr(FreePort(c.t)), Gossip: addr(FreePort(c.t)), Slots: slots}
	if c.opts.Fabric != nil {
		c.opts.Fabric.Register(n.ID, n.HTTPAddr, n.Gossip)
	}
	return n
}

// KillWorker stops a worker the way a crash would.
func (c *Cluster) KillWorker(n *WorkerNode) {
	if !n.up {
		return
	}
	n.up = false
	n.W.Kill()
}

// StopWorker drains and stops a worker.
func (c *Cluster) StopWorker(n *WorkerNode) {
	if !n.up {
		return
	}
	n.up = false
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = n.W.Shutdown(ctx)
}

// Close stops every node.
func (c *Cluster) Close() {
	for _, w := range c.Workers {
		c.KillWorker(w)
	}
	for _, m := range c.Masters {
		c.KillMaster(m)
	}
}

// URLs returns the HTTP URLs of the given masters (all when none given).
func (c *Cluster) URLs(nodes ...*MasterNode) []string {
	if len(nodes) == 0 {
		nodes = c.Masters
	}
	var out []string
	for _, n := range nodes {
		out = append(out, n.URL())
	}
	return out
}

// Client returns a client of the given masters (all when none given).
func (c *Cluster) Client(nodes ...*MasterNode) *transport.Client {
	return transport.NewClient(c.URLs(nodes...))
}

// Eventually polls cond every 20ms until it holds or timeout passes.
func (c *Cluster) Eventually(timeout time.Duration, what string, cond func() bool) {
	c.t.Helper()
	Eventually(c.t, timeout, what, cond)
}

// Eventually polls cond every 20ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// Leader waits for an established leader among the running masters and
// returns it.
func (c *Cluster) Leader() *MasterNode {
	c.t.Helper()
	var leader *MasterNode
	c.Eventually(30*time.Second, "an established leader", func() bool {
		for _, n := range c.Masters {
			if n.up {
				if li, ok := n.M.Leader(); ok && li.Self {
					leader = n
					return true
				}
			}
		}
		return false
	})
	return leader
}

// Followers returns the running masters that are not the leader.
func (c *Cluster) Followers() []*MasterNode {
	c.t.Helper()
	l := c.Leader()
	var out []*MasterNode
	for _, n := range c.Masters {
		if n.up && n != l {
			out = append(out, n)
		}
	}
	return out
}

// WaitWorkers waits until the leader sees n alive workers.
func (c *Cluster) WaitWorkers(n int) {
	c.t.Helper()
	c.Eventually(30*time.Second, fmt.Sprintf("the leader to see %d alive workers", n), func() bool {
		l := c.Leader()
		st, err := l.M.Cluster(context.Background(), false)
		if err != nil {
			return false
		}
		alive := 0
		for _, w := range st.Workers {
			if w.State == "alive" {
				alive++
			}
		}
		return alive >= n
	})
}

// WaitTerminal waits until the task is terminal, reading through any master
// that answers, and returns it.
func (c *Cluster) WaitTerminal(cl *transport.Client, id string, timeout time.Duration) api.Task {
	c.t.Helper()
	var t api.Task
	c.Eventually(timeout, "task "+id+" to end", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := cl.Task(ctx, id, transport.ReadOptions{Wait: 2 * time.Second})
		if err != nil {
			return false
		}
		t = got
		return t.State.Terminal()
	})
	return t
}

// Submit submits a spec with retries on retryable errors (with the same
// idempotency key when it has one) and returns the task.
func (c *Cluster) Submit(cl *transport.Client, spec api.TaskSpec) api.Task {
	c.t.Helper()
	var t api.Task
	var last error
	c.Eventually(30*time.Second, "a submission to be acknowledged", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		t, _, err = cl.Submit(ctx, spec)
		last = err
		if err != nil && !api.Retryable(err) && !isNetErr(err) {
			c.t.Fatalf("submit: %v", err)
		}
		return err == nil
	})
	_ = last
	return t
}

func isNetErr(err error) bool {
	var e *api.Error
	return !errors.As(err, &e)
}

// Exec returns an exec spec for a shell script.
func Exec(script string) api.TaskSpec {
	return api.TaskSpec{Args: []string{"sh", "-c", script}}
}

// ReadEventually calls read (with a 5s context) until it returns no error,
// for up to 30s, and returns its value.
func ReadEventually[T any](c *Cluster, what string, read func(ctx context.Context) (T, error)) T {
	c.t.Helper()
	var v T
	c.Eventually(30*time.Second, what, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		v, err = read(ctx)
		return err == nil
	})
	return v
}

// ProcessGone reports whether pid no longer runs: it does not exist, or it
// is a zombie waiting to be reaped.
func ProcessGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return os.IsNotExist(err)
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// WaitConverged waits until every running master reports the same applied
// index and state digest (invariant 5: masters converge), and returns it.
func (c *Cluster) WaitConverged() api.Digest {
	c.t.Helper()
	var last []api.Digest
	deadline := time.Now().Add(60 * time.Second)
	for {
		last = last[:0]
		same := true
		for _, n := range c.Masters {
			if !n.up {
				continue
			}
			nd := n.M.Digest()
			if len(last) > 0 && (nd.AppliedIndex != last[0].AppliedIndex || nd.Digest != last[0].Digest) {
				same = false
			}
			last = append(last, nd)
		}
		if same && len(last) > 0 {
			return last[0]
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("masters did not converge: %+v", last)
		}
		time.Sleep(50 * time.Millisecond) // a pause between polls
	}
}
