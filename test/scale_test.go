package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/transport"
)

// fakeRuntime is one container engine shared by every master of a test
// cluster. Its "containers" are real in-process workers whose worker ID is
// the container name, so scaling is exercised end to end: created workers
// join through gossip and take attempts, removed ones drain and leave.
type fakeRuntime struct {
	c     *Cluster
	slots int
	// boot is how long a created container takes before its worker starts
	// (a container's start time: 0 starts it within Create). Set before
	// the cluster starts.
	boot time.Duration

	stop     chan struct{} // closed by killAll: no more booting
	stopOnce sync.Once
	booting  sync.WaitGroup // boot goroutines

	mu          sync.Mutex
	containers  map[string]*fakeContainer
	creates     map[string]int // name -> successful creations (a doubled container shows as 2)
	failNext    map[string]int // method -> how many calls fail
	afterCreate func(name string)
	calls       []string
	hidden      map[string]bool // names List does not show (created after the list was taken)
}

type fakeContainer struct {
	name    string
	node    *WorkerNode // nil for a container that runs no worker (an orphan planted by a test)
	running bool
}

// attach gives every master this runtime (it must be set before the
// masters start: use it from Options.Master).
func (rt *fakeRuntime) attach(cfg *master.Config) {
	cfg.Runtime = rt
	cfg.ScaleInterval = 200 * time.Millisecond
	cfg.OrphanGrace = time.Second
	cfg.WorkerStopTimeout = 5 * time.Second
}

var errInjected = errors.New("injected engine failure")

func (rt *fakeRuntime) fail(method string) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.calls = append(rt.calls, method)
	if rt.failNext[method] > 0 {
		rt.failNext[method]--
		return errInjected
	}
	return nil
}

func (rt *fakeRuntime) Describe(ctx context.Context) (string, error) {
	if err := rt.fail("describe"); err != nil {
		return "", err
	}
	return "fake engine", nil
}

func (rt *fakeRuntime) List(ctx context.Context) ([]master.Container, error) {
	if err := rt.fail("list"); err != nil {
		return nil, err
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []master.Container
	for _, fc := range rt.containers {
		if rt.hidden[fc.name] {
			continue
		}
		st := "exited"
		if fc.running {
			st = "running"
		}
		out = append(out, master.Container{Name: fc.name, ID: "id-" + fc.name, State: st})
	}
	return out, nil
}

func (rt *fakeRuntime) Create(ctx context.Context, name string) error {
	if err := rt.fail("create"); err != nil {
		return err
	}
	rt.mu.Lock()
	if _, ok := rt.containers[name]; ok {
		rt.mu.Unlock()
		return master.ErrContainerExists
	}
	fc := &fakeContainer{name: name}
	rt.containers[name] = fc
	rt.creates[name]++
	hook := rt.afterCreate
	if rt.boot > 0 {
		fc.running = true // the container runs; its worker is still booting
		rt.booting.Add(1)
		go rt.bootWorker(fc)
	}
	rt.mu.Unlock()
	if rt.boot == 0 {
		if err := rt.startWorker(fc); err != nil {
			return err
		}
	}
	if hook != nil {
		hook(name)
	}
	return nil
}

func (rt *fakeRuntime) startWorker(fc *fakeContainer) error {
	n := rt.c.NewWorkerNode(fc.name, rt.slots)
	if err := rt.c.TryStartWorker(n); err != nil {
		return err
	}
	rt.mu.Lock()
	fc.node, fc.running = n, true
	rt.mu.Unlock()
	return nil
}

// bootWorker starts fc's worker after the boot time, unless the container
// was removed or the test ended meanwhile. The wait simulates a
// container's start; it does not wait for a condition.
func (rt *fakeRuntime) bootWorker(fc *fakeContainer) {
	defer rt.booting.Done()
	select {
	case <-time.After(rt.boot):
	case <-rt.stop:
		return
	}
	rt.mu.Lock()
	gone := rt.containers[fc.name] != fc
	rt.mu.Unlock()
	if gone {
		return
	}
	if err := rt.startWorker(fc); err != nil {
		rt.c.t.Logf("boot %s: %v", fc.name, err)
		return
	}
	rt.mu.Lock()
	gone = rt.containers[fc.name] != fc
	rt.mu.Unlock()
	if gone { // removed while booting
		rt.c.StopWorker(fc.node)
	}
}

func (rt *fakeRuntime) Start(ctx context.Context, name string) error {
	if err := rt.fail("start"); err != nil {
		return err
	}
	rt.mu.Lock()
	fc, ok := rt.containers[name]
	running := ok && fc.running
	rt.mu.Unlock()
	if !ok {
		return fmt.Errorf("no such container %s", name)
	}
	if running {
		return nil
	}
	return rt.startWorker(fc)
}

func (rt *fakeRuntime) Remove(ctx context.Context, name string, stop time.Duration) error {
	if err := rt.fail("remove"); err != nil {
		return err
	}
	rt.mu.Lock()
	fc, ok := rt.containers[name]
	delete(rt.containers, name)
	rt.mu.Unlock()
	if ok && fc.node != nil && fc.node.Up() {
		rt.c.StopWorker(fc.node) // SIGTERM: the worker drains and leaves
	}
	return nil
}

// plant adds a container with this cluster's labels that no record knows.
func (rt *fakeRuntime) plant(name string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.containers[name] = &fakeContainer{name: name, running: true}
}

func (rt *fakeRuntime) names() []string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []string
	for n := range rt.containers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (rt *fakeRuntime) running() int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	n := 0
	for _, fc := range rt.containers {
		if fc.running {
			n++
		}
	}
	return n
}

func (rt *fakeRuntime) doubled() []string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []string
	for n, k := range rt.creates {
		if k > 1 {
			out = append(out, n)
		}
	}
	return out
}

func (rt *fakeRuntime) killAll() {
	rt.stopOnce.Do(func() { close(rt.stop) })
	rt.booting.Wait()
	rt.mu.Lock()
	var nodes []*WorkerNode
	for _, fc := range rt.containers {
		if fc.node != nil {
			nodes = append(nodes, fc.node)
		}
	}
	rt.mu.Unlock()
	for _, n := range nodes {
		rt.c.KillWorker(n)
	}
}

func scaleStatus(c *Cluster) api.ScaleStatus {
	c.t.Helper()
	return ReadEventually(c, "GET /v1/scale", func(ctx context.Context) (api.ScaleStatus, error) {
		return c.Client().Scale(ctx, transport.ReadOptions{})
	})
}

func setScale(t *testing.T, c *Cluster, p api.ScalePolicy) {
	t.Helper()
	ReadEventually(c, "PUT /v1/scale", func(ctx context.Context) (api.ScaleStatus, error) {
		return c.Client().SetScale(ctx, p)
	})
}

// startScaleCluster builds the cluster with the runtime wired in before the
// masters start.
func startScaleCluster(t *testing.T, slots int) (*Cluster, *fakeRuntime) {
	t.Helper()
	return startScaleClusterWith(t, newFakeRuntime(slots))
}

func newFakeRuntime(slots int) *fakeRuntime {
	return &fakeRuntime{slots: slots, containers: map[string]*fakeContainer{}, creates: map[string]int{}, failNext: map[string]int{}, stop: make(chan struct{})}
}

// startScaleClusterWith is startScaleCluster with a runtime the test set up.
func startScaleClusterWith(t *testing.T, rt *fakeRuntime) (*Cluster, *fakeRuntime) {
	t.Helper()
	c := NewCluster(t, Options{Workers: 0, Master: rt.attach, NoWait: true})
	rt.c = c
	t.Cleanup(rt.killAll)
	c.Leader()
	return c, rt
}

func TestScale_UpToMaxThenDownToMinRemovingOnlyIdleWorkers(t *testing.T) {
	c, rt := startScaleCluster(t, 2)
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleAuto, Min: 1, Max: 3, BacklogPerWorker: 2, Cooldown: "500ms"})
	c.Eventually(30*time.Second, "min 1 worker container", func() bool { return rt.running() == 1 })

	// A backlog of 12 long-ish tasks wants ceil(12/2)=6 > max: exactly 3.
	cl := c.Client()
	var ids []string
	for i := 0; i < 12; i++ {
		ids = append(ids, c.Submit(cl, Exec(fmt.Sprintf("sleep 0.3; echo %d", i))).ID)
	}
	c.Eventually(30*time.Second, "max 3 worker containers", func() bool { return rt.running() == 3 })
	sawMax := 0
	for i, id := range ids {
		task := c.WaitTerminal(cl, id, 60*time.Second)
		checkSucceededOnce(t, task, fmt.Sprintf("%d\n", i))
		for _, a := range task.Attempts {
			if a.Outcome == api.OutcomeLost || a.Outcome == api.OutcomeReleased {
				t.Errorf("task %s lost an attempt to scaling: %+v", id, task.Attempts)
			}
		}
		if rt.running() > sawMax {
			sawMax = rt.running()
		}
	}
	if sawMax > 3 {
		t.Fatalf("%d containers ran, over max 3", sawMax)
	}
	// Drained: back to min, by draining then removing.
	c.Eventually(60*time.Second, "scale back to min 1", func() bool {
		st := scaleStatus(c)
		return rt.running() == 1 && len(st.Workers) == 1 && st.Workers[0].State == api.ManagedRunning
	})
	if d := rt.doubled(); len(d) > 0 {
		t.Fatalf("containers created twice: %v", d)
	}
	st := scaleStatus(c)
	if st.Desired != 1 || st.Actual != 1 || st.Runtime != "fake engine" || len(st.Orphans) != 0 {
		t.Fatalf("status %+v", st)
	}
}

func TestScale_DrainWaitsForRunningAttempts(t *testing.T) {
	c, rt := startScaleCluster(t, 1)
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 1})
	c.Eventually(30*time.Second, "one worker container", func() bool { return rt.running() == 1 })
	gate := t.TempDir() + "/go"
	cl := c.Client()
	id := c.Submit(cl, Exec("while [ ! -e "+gate+" ]; do sleep 0.05; done; echo done")).ID
	c.Eventually(30*time.Second, "the task running", func() bool {
		task, err := cl.Task(context.Background(), id, transport.ReadOptions{})
		return err == nil && task.State == api.StateRunning
	})
	busy := rt.names()[0]
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 0})
	c.Eventually(30*time.Second, "the busy worker draining", func() bool {
		st := scaleStatus(c)
		return len(st.Workers) == 1 && st.Workers[0].State == api.ManagedDraining
	})
	// A new task is not given to the draining worker.
	other := c.Submit(cl, Exec("echo other")).ID
	for i := 0; i < 10; i++ {
		st := scaleStatus(c)
		if len(st.Workers) != 1 || st.Workers[0].Name != busy || st.Workers[0].State != api.ManagedDraining || rt.running() != 1 {
			t.Fatalf("the busy worker went away mid-task: %+v, containers %v", st.Workers, rt.names())
		}
		task, _ := cl.Task(context.Background(), other, transport.ReadOptions{})
		if task.State != api.StatePending {
			t.Fatalf("a draining worker got a new attempt: %+v", task)
		}
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	checkSucceededOnce(t, c.WaitTerminal(cl, id, 30*time.Second), "done\n")
	c.Eventually(30*time.Second, "the drained worker removed", func() bool {
		return rt.running() == 0 && len(scaleStatus(c).Workers) == 0
	})
	// The other task runs once workers are wanted again.
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 1})
	checkSucceededOnce(t, c.WaitTerminal(cl, other, 60*time.Second), "other\n")
}

func TestScale_NewLeaderAdoptsAHalfDoneCreation(t *testing.T) {
	c, rt := startScaleCluster(t, 2)
	leader := c.Leader()
	var once sync.Once
	killed := make(chan struct{})
	rt.mu.Lock()
	rt.afterCreate = func(name string) {
		// The container exists but "created" was never committed.
		once.Do(func() {
			go func() { c.KillMaster(leader); close(killed) }()
		})
	}
	rt.mu.Unlock()
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 2})
	select {
	case <-killed:
	case <-time.After(60 * time.Second):
		t.Fatal("no container was created")
	}
	rt.mu.Lock()
	rt.afterCreate = nil
	rt.mu.Unlock()
	if c.Leader() == leader {
		t.Fatal("the killed leader still leads")
	}
	c.Eventually(60*time.Second, "two running managed workers", func() bool {
		st := scaleStatus(c)
		if len(st.Workers) != 2 {
			return false
		}
		for _, w := range st.Workers {
			if w.State != api.ManagedRunning || w.Container != "running" {
				return false
			}
		}
		return rt.running() == 2
	})
	if d := rt.doubled(); len(d) > 0 {
		t.Fatalf("containers created twice: %v", d)
	}
	if n := len(rt.names()); n != 2 {
		t.Fatalf("%d containers, want 2: %v", n, rt.names())
	}
	// They take work.
	cl := c.Client()
	checkSucceededOnce(t, c.WaitTerminal(cl, c.Submit(cl, Exec("echo adopted")).ID, 60*time.Second), "adopted\n")
}

func TestScale_NameConflictMeansAdopt(t *testing.T) {
	c, rt := startScaleCluster(t, 2)
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 0})
	c.Eventually(30*time.Second, "no managed worker", func() bool { return len(scaleStatus(c).Workers) == 0 && rt.running() == 0 })
	// Names come from a replicated sequence: the next one follows those the
	// default policy may already have used.
	rt.mu.Lock()
	next := fmt.Sprintf("gantry-managed-%d", len(rt.creates)+1)
	rt.mu.Unlock()
	// The container of the next name already exists (an earlier leader's
	// create raced its list): Create reports a conflict and the scaler must
	// adopt it rather than fail or make another.
	n := c.NewWorkerNode(next, 2)
	if err := c.TryStartWorker(n); err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	rt.containers[next] = &fakeContainer{name: next, node: n, running: true}
	rt.hidden = map[string]bool{next: true}
	rt.mu.Unlock()
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 1})
	c.Eventually(30*time.Second, "the existing container adopted", func() bool {
		st := scaleStatus(c)
		return len(st.Workers) == 1 && st.Workers[0].Name == next && st.Workers[0].State == api.ManagedRunning
	})
	rt.mu.Lock()
	rt.hidden = nil
	creates := rt.creates[next]
	rt.mu.Unlock()
	if creates != 0 || len(rt.names()) != 1 {
		t.Fatalf("creates %d, containers %v: want the one that existed, adopted", creates, rt.names())
	}
	cl := c.Client()
	checkSucceededOnce(t, c.WaitTerminal(cl, c.Submit(cl, Exec("echo adopted")).ID, 60*time.Second), "adopted\n")
}

func TestScale_ReapsOrphansAndSurvivesEngineErrors(t *testing.T) {
	c, rt := startScaleCluster(t, 2)
	rt.plant("gantry-managed-999")
	rt.mu.Lock()
	rt.failNext["list"] = 3
	rt.failNext["create"] = 2
	rt.mu.Unlock()
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 1})
	c.Eventually(60*time.Second, "the error reported in /v1/scale", func() bool {
		return strings.Contains(scaleStatus(c).LastError, errInjected.Error())
	})
	c.Eventually(60*time.Second, "the orphan reaped and one worker running", func() bool {
		names := rt.names()
		return len(names) == 1 && names[0] != "gantry-managed-999" && rt.running() == 1
	})
	cl := c.Client()
	checkSucceededOnce(t, c.WaitTerminal(cl, c.Submit(cl, Exec("echo after errors")).ID, 60*time.Second), "after errors\n")
}

func TestScale_PolicyValidationAndStaleRead(t *testing.T) {
	c, _ := startScaleCluster(t, 1)
	cl := c.Client()
	_, err := cl.SetScale(context.Background(), api.ScalePolicy{Mode: api.ScaleAuto, Min: 4, Max: 2})
	var e *api.Error
	if !errors.As(err, &e) || e.Status != 400 || e.Field != "max" {
		t.Fatalf("bad policy: %v", err)
	}
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleFixed, Count: 0})
	// Every master answers from its replica with ?stale=true.
	for _, n := range c.Masters {
		c.Eventually(20*time.Second, "the policy replicated to "+n.ID, func() bool {
			st, err := c.Client(n).Scale(context.Background(), transport.ReadOptions{Stale: true})
			return err == nil && st.Policy.Mode == api.ScaleFixed && st.Policy.Count == 0
		})
	}
}

// created returns how many containers were ever created.
func (rt *fakeRuntime) created() int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	n := 0
	for _, k := range rt.creates {
		n += k
	}
	return n
}

// TestScale_AddsContainersOnlyForABacklogThatOutlastsAStart: containers
// take 3 s to start here. A burst of quick tasks that the one running
// worker finishes sooner than that gets no container (the policy alone
// wants 4); a backlog of tasks that do not finish does, up to max.
func TestScale_AddsContainersOnlyForABacklogThatOutlastsAStart(t *testing.T) {
	rt := newFakeRuntime(8)
	rt.boot = 3 * time.Second
	c, _ := startScaleClusterWith(t, rt)
	setScale(t, c, api.ScalePolicy{Mode: api.ScaleAuto, Min: 1, Max: 4, BacklogPerWorker: 10, Cooldown: "1h"})
	// The min worker's start is the one the leader times.
	c.Eventually(60*time.Second, "the min worker's start observed", func() bool {
		su := scaleStatus(c).ScaleUp
		return rt.running() == 1 && su != nil && su.StartObserved
	})
	t.Logf("before the burst: %+v", *scaleStatus(c).ScaleUp)

	cl := c.Client()
	submitBatch := func(prefix string, n int, spec api.TaskSpec) []string {
		t.Helper()
		specs := make([]api.TaskSpec, n)
		for i := range specs {
			specs[i] = spec
			specs[i].IdempotencyKey = fmt.Sprintf("%s-%d", prefix, i)
		}
		tasks := ReadEventually(c, "a batch of "+prefix, func(ctx context.Context) ([]api.Task, error) {
			return cl.SubmitBatch(ctx, specs)
		})
		ids := make([]string, len(tasks))
		for i, task := range tasks {
			ids[i] = task.ID
		}
		return ids
	}
	leaderCounts := func() api.TaskCounts { return c.Leader().M.FSM().Counts() }

	// 1. 100 quick tasks: ceil(100/10) = 10, clamped to max 4, is what the
	// policy wants; the 8 slots of the one worker drain them first.
	submitBatch("burst", 100, api.TaskSpec{Args: []string{"true"}})
	c.Eventually(60*time.Second, "the burst done", func() bool {
		n := leaderCounts()
		return n.Pending == 0 && n.Running == 0 && n.Succeeded == 100
	})
	// A round after the burst has seen it gone (one still under way may
	// have read the counts before).
	c.Eventually(30*time.Second, "a scale-up check after the burst", func() bool {
		su := scaleStatus(c).ScaleUp
		return su != nil && su.PolicyDesired == 1
	})
	if n := rt.created(); n != 1 {
		t.Fatalf("%d containers created for a burst the running worker drained before a start, want only the min one: %v", n, rt.names())
	}
	t.Logf("after the burst: %+v", *scaleStatus(c).ScaleUp)

	// 2. 40 tasks that run until the gate opens: the queue stops moving and
	// the scaler scales up to max.
	gate := t.TempDir() + "/go"
	ids := submitBatch("long", 40, Exec("while [ ! -e "+gate+" ]; do sleep 0.05; done"))
	c.Eventually(60*time.Second, "max 4 containers for the long backlog", func() bool { return rt.created() == 4 })
	t.Logf("long backlog: %+v", *scaleStatus(c).ScaleUp)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if task := c.WaitTerminal(cl, id, 60*time.Second); task.State != api.StateSucceeded {
			t.Fatalf("task %s: %+v", id, task)
		}
	}
	if d := rt.doubled(); len(d) > 0 {
		t.Fatalf("containers created twice: %v", d)
	}
}
