//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

// The scaling policy of these tests: one worker per 2 pending+running tasks,
// between 1 and 4, scaling down after 3 s of a lower count.
var testPolicy = api.ScalePolicy{Mode: api.ScaleAuto, Min: 1, Max: 4, BacklogPerWorker: 2, Cooldown: "3s"}

// TestE2E_Scaling runs the scaling scenarios on one cluster without compose
// workers, so every task runs on a container the leader started; the last
// subtest is `make down`.
func TestE2E_Scaling(t *testing.T) {
	c := NewCluster(t, Options{Workers: -1, Slots: 2})
	t.Run("UpToMaxThenDownToMin", func(t *testing.T) { testScaleUpDown(t, c) })
	t.Run("KillLeaderMidScaleUp", func(t *testing.T) { testKillLeaderMidScaleUp(t, c) })
	t.Run("ReapsUnrecordedContainer", func(t *testing.T) { testReapsOrphan(t, c) })
	t.Run("MakeDownLeavesNothing", func(t *testing.T) { testMakeDown(t, c) })
}

// testReapsOrphan starts, behind the leader's back, a container labelled as
// one of the cluster's managed workers: no record accounts for it, so the
// leader reports it as an orphan and removes it after --orphan-grace (30s),
// leaving the recorded workers alone.
func testReapsOrphan(t *testing.T, c *Cluster) {
	c.SetScale(t, testPolicy)
	c.WaitSettled(t, testPolicy.Min, 180*time.Second)
	kept := containerIDs(c.MustManaged(t))
	stray := c.Project + "-managed-stray"
	out, err := docker("run", "-d", "--name", stray,
		"--label", labelCluster+"="+c.Project, "--label", labelRole+"=worker", "--label", labelManaged+"=true",
		"--entrypoint", "/bin/sh", c.image, "-c", "trap 'exit 0' TERM; while :; do sleep 1; done")
	if err != nil {
		t.Fatalf("docker run %s: %v\n%s", stray, err, out)
	}
	poll(t, 60*time.Second, "GET /v1/scale to report "+stray+" as an orphan", func() (bool, string) {
		st, err := c.Scale(10 * time.Second)
		if err != nil {
			return false, err.Error()
		}
		for _, o := range st.Orphans {
			if o == stray {
				return true, ""
			}
		}
		return false, fmt.Sprintf("orphans %v", st.Orphans)
	})
	c.WaitSettled(t, testPolicy.Min, 180*time.Second)
	if got := containerIDs(c.MustManaged(t)); fmt.Sprint(got) != fmt.Sprint(kept) {
		t.Errorf("recorded workers changed while the orphan was reaped: before %v, after %v", kept, got)
	}
}

// monitor watches the managed containers (by label) until stopped and
// reports every poll that saw more than max of them.
type monitor struct {
	c    *Cluster
	max  int
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	peak    int
	over    []string
	seen    map[string]string // name -> first ID seen
	recreat []string          // names seen with two IDs
	polls   int
}

func watchManaged(c *Cluster, max int) *monitor {
	m := &monitor{c: c, max: max, stop: make(chan struct{}), done: make(chan struct{}), seen: map[string]string{}}
	go func() {
		defer close(m.done)
		for {
			cs, err := c.Managed()
			if err == nil {
				m.mu.Lock()
				m.polls++
				if len(cs) > m.peak {
					m.peak = len(cs)
				}
				if len(cs) > m.max {
					m.over = append(m.over, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), containerNames(cs)))
				}
				for _, ct := range cs {
					if id, ok := m.seen[ct.Name]; !ok {
						m.seen[ct.Name] = ct.ID
					} else if id != ct.ID {
						m.recreat = append(m.recreat, ct.Name)
						m.seen[ct.Name] = ct.ID
					}
				}
				m.mu.Unlock()
			}
			select {
			case <-m.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return m
}

// finish stops the monitor and reports what it saw.
func (m *monitor) finish(t *testing.T) {
	t.Helper()
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for n := range m.seen {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("monitor: %d polls, at most %d managed containers at once (max %d), containers seen: %v", m.polls, m.peak, m.max, names)
	for _, o := range m.over {
		t.Errorf("more than max=%d managed containers at %s", m.max, o)
	}
	for _, n := range m.recreat {
		t.Errorf("managed container %s was recreated under the same name", n)
	}
}

// Seen returns the names the monitor saw.
func (m *monitor) Seen() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]bool{}
	for n := range m.seen {
		out[n] = true
	}
	return out
}

// submitBacklog submits n sleep tasks in one batch and returns them.
func submitBacklog(t testing.TB, c *Cluster, prefix string, n int, sleep string) []api.Task {
	t.Helper()
	var specs []api.TaskSpec
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("%s-%d", prefix, i)
		s := Exec("sleep " + sleep + "; echo " + key)
		s.IdempotencyKey = key
		specs = append(specs, s)
	}
	var tasks []api.Task
	var err error
	for try := 0; try < 30; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		tasks, err = c.Client.SubmitBatch(ctx, specs)
		cancel()
		if err == nil {
			return tasks
		}
		time.Sleep(time.Second) // keyed: resubmitting yields the same tasks
	}
	t.Fatalf("submit a backlog of %d: %v", n, err)
	return nil
}

// checkNoLostOrReleased asserts a task's attempts were never lost with
// their worker nor handed back (scale-down must remove only idle workers).
func checkNoLostOrReleased(t testing.TB, task api.Task) {
	t.Helper()
	for _, a := range task.Attempts {
		if a.Outcome == api.OutcomeLost || a.Outcome == api.OutcomeReleased {
			t.Errorf("task %s (%s): attempt %d on %s was %s: %+v", task.ID, task.IdempotencyKey, a.Attempt, a.Worker, a.Outcome, task.Attempts)
		}
	}
}

func testScaleUpDown(t *testing.T, c *Cluster) {
	c.SetScale(t, testPolicy)
	c.WaitSettled(t, testPolicy.Min, 120*time.Second)
	before := map[string]bool{}
	for _, ct := range c.MustManaged(t) {
		before[ct.Name] = true
	}
	mon := watchManaged(c, testPolicy.Max)
	defer mon.finish(t)

	// 24 tasks of 3 s: desired = ceil(24/2) = 12, clamped to max 4.
	tasks := submitBacklog(t, c, "scale", 24, "3")
	poll(t, 180*time.Second, fmt.Sprintf("%d running managed workers", testPolicy.Max), func() (bool, string) {
		cs, err := c.Managed()
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, ct := range cs {
			if ct.State == "running" {
				n++
			}
		}
		return n == testPolicy.Max, fmt.Sprint(containerNames(cs))
	})

	workers := map[string]int{}
	for _, task := range tasks {
		got := c.WaitTerminal(t, task.ID, 240*time.Second)
		checkSucceededOnce(t, got, task.IdempotencyKey+"\n")
		checkNoLostOrReleased(t, got)
		workers[got.Worker]++
		if !strings.HasPrefix(got.Worker, c.ManagedPrefix()) {
			t.Errorf("task %s ran on %q, not on a managed worker %sN", got.ID, got.Worker, c.ManagedPrefix())
		}
	}
	newOnes := 0
	for w := range workers {
		if !before[w] {
			newOnes++
		}
	}
	t.Logf("tasks per worker: %v", workers)
	if newOnes == 0 {
		t.Errorf("no task ran on a worker container started for the backlog (workers %v, before %v)", workers, before)
	}

	// The queue is empty: back to min, removing only idle workers.
	c.WaitSettled(t, testPolicy.Min, 180*time.Second)
	for _, task := range tasks {
		got := c.WaitTerminal(t, task.ID, 30*time.Second)
		checkSucceededOnce(t, got, task.IdempotencyKey+"\n")
		checkNoLostOrReleased(t, got)
	}
	seen := mon.Seen()
	if len(seen) < testPolicy.Max {
		t.Errorf("saw %d managed containers in all, want at least max=%d", len(seen), testPolicy.Max)
	}
}

func testKillLeaderMidScaleUp(t *testing.T, c *Cluster) {
	c.SetScale(t, testPolicy)
	c.WaitSettled(t, testPolicy.Min, 180*time.Second)
	c.WaitLeader(t, 60*time.Second, -1)
	leader, name := c.LeaderContainer(t, 60*time.Second)
	before := map[string]bool{}
	for _, ct := range c.MustManaged(t) {
		before[ct.Name] = true
	}
	mon := watchManaged(c, testPolicy.Max)
	defer mon.finish(t)

	tasks := submitBacklog(t, c, "kill-scale", 24, "4")
	// Kill the leader as soon as the first new container appears.
	var first string
	deadline := time.Now().Add(120 * time.Second)
	for first == "" {
		cs, err := c.Managed()
		if err == nil {
			for _, ct := range cs {
				if !before[ct.Name] {
					first = ct.Name
				}
			}
		}
		if first == "" {
			if time.Now().After(deadline) {
				t.Fatalf("no new managed container within 120s (have %v)", containerNames(cs))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("new container %s appeared: SIGKILL to the leader %s (%s)", first, leader, name)
	Kill(t, name)
	restarted := false
	defer func() {
		if !restarted {
			docker("start", name)
		}
	}()
	newLeader := c.WaitLeader(t, 90*time.Second, MasterIndex(leader))
	t.Logf("new leader %s", newLeader)

	for _, task := range tasks {
		got := c.WaitTerminal(t, task.ID, 300*time.Second)
		checkSucceededOnce(t, got, task.IdempotencyKey+"\n")
	}
	// Every container the backlog caused is accounted for: no doubles, no
	// orphans, back to min once the queue is empty.
	c.WaitSettled(t, testPolicy.Min, 240*time.Second)
	st, err := c.Scale(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("settled: %+v", st.Workers)

	Start(t, name)
	restarted = true
	c.WaitCaughtUp(t, leader, 120*time.Second)
	// The new leader's logs tell what it adopted or reaped.
	logs := Logs(t, c.ContainerOf(newLeader), time.Now().Add(-10*time.Minute))
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "adopting") || strings.Contains(line, "orphan") || strings.Contains(line, "created worker container") {
			t.Logf("new leader: %s", line)
		}
	}
}

// testMakeDown runs `make down VOLUMES=1` on the cluster while the leader
// runs managed workers and checks nothing of the project is left.
func testMakeDown(t *testing.T, c *Cluster) {
	c.SetScale(t, api.ScalePolicy{Mode: api.ScaleFixed, Count: 2})
	c.WaitSettled(t, 2, 180*time.Second)
	all, err := c.Containers()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before make down: %v", containerNames(all))
	out, err := c.MakeDown()
	if err != nil {
		t.Fatalf("make down VOLUMES=1: %v\n%s", err, out)
	}
	t.Logf("make down VOLUMES=1:\n%s", out)
	if left := leftovers(c.Project); len(left) > 0 {
		t.Errorf("make down VOLUMES=1 left behind: %v", left)
	}
}
