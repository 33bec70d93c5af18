//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
)

// TestE2E_Cluster runs the availability scenarios on one compose cluster
// (three masters, two compose workers, the leader's own workers), one after
// the other: each leaves the cluster whole (every master up) for the next.
func TestE2E_Cluster(t *testing.T) {
	c := NewCluster(t, Options{Workers: 2, Slots: 4})
	t.Run("SubmitToEveryMaster", func(t *testing.T) { testSubmitToEveryMaster(t, c) })
	t.Run("KillLeaderMidLoad", func(t *testing.T) { testKillLeaderMidLoad(t, c) })
	t.Run("PauseLeader", func(t *testing.T) { testPauseLeader(t, c) })
	t.Run("PauseLeaderUnderLoad", func(t *testing.T) { testPauseLeaderUnderLoad(t, c) })
}

// testPauseLeaderUnderLoad: docker pause the leader for 10 s while clients
// submit through the followers, each request sent once with the CLI's
// default 30 s timeout. A follower holding a request for the paused leader
// must send it to the new leader when raft elects one: every request
// succeeds, none takes longer than 3 s plus the election, no key has two
// tasks (issue 10, point 1: each such request used to fail after 30 s).
func testPauseLeaderUnderLoad(t *testing.T, c *Cluster) {
	leader := c.WaitLeader(t, 60*time.Second, -1)
	idx := MasterIndex(leader)
	name := c.ContainerOf(leader)
	var followers []*transport.Client
	for i := 1; i <= 3; i++ {
		if i != idx {
			followers = append(followers, c.ClientFor(fmt.Sprintf("m%d", i)))
		}
	}
	type sample struct {
		key, id string
		started time.Time
		took    time.Duration
		err     error
	}
	var (
		mu      sync.Mutex
		samples []sample
		wg      sync.WaitGroup
		stop    atomic.Bool
	)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cl := followers[w%len(followers)]
			for i := 0; i < 5000 && !stop.Load(); i++ {
				key := fmt.Sprintf("pauseload-c%d-%d", w, i)
				spec := Exec("echo " + key)
				spec.IdempotencyKey = key
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				start := time.Now()
				task, _, err := cl.Submit(ctx, spec)
				cancel()
				mu.Lock()
				samples = append(samples, sample{key, task.ID, start, time.Since(start), err})
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		}(w)
	}
	finished := false
	finish := func() {
		if !finished {
			finished = true
			stop.Store(true)
			wg.Wait()
		}
	}
	defer finish()
	time.Sleep(2 * time.Second)
	pausedAt := time.Now()
	t.Logf("pausing the leader %s (%s) under load", leader, name)
	Pause(t, name)
	unpaused := false
	defer func() {
		if !unpaused {
			docker("unpause", name)
		}
	}()
	newLeader := c.WaitLeader(t, 60*time.Second, idx)
	elected := time.Since(pausedAt)
	t.Logf("new leader %s seen %s after the pause", newLeader, elected.Round(10*time.Millisecond))
	time.Sleep(10*time.Second - time.Since(pausedAt))
	Unpause(t, name)
	unpaused = true
	time.Sleep(2 * time.Second)
	finish()

	bound := elected + 3*time.Second
	acked := map[string]string{}
	var longest time.Duration
	for _, s := range samples {
		if s.err != nil {
			t.Errorf("key %s, sent %s after the pause, failed after %s: %v", s.key, s.started.Sub(pausedAt).Round(time.Millisecond), s.took.Round(time.Millisecond), s.err)
			continue
		}
		if s.took > bound {
			t.Errorf("key %s, sent %s after the pause, took %s: more than the election (%s) plus 3 s", s.key, s.started.Sub(pausedAt).Round(time.Millisecond), s.took.Round(time.Millisecond), elected.Round(time.Millisecond))
		}
		longest = max(longest, s.took)
		acked[s.key] = s.id
	}
	t.Logf("%d requests through the followers, longest %s", len(samples), longest.Round(time.Millisecond))
	perKey := map[string][]string{}
	for _, task := range c.AllTasks(t) {
		if strings.HasPrefix(task.IdempotencyKey, "pauseload-") {
			perKey[task.IdempotencyKey] = append(perKey[task.IdempotencyKey], task.ID)
		}
	}
	for key, id := range acked {
		if ids := perKey[key]; len(ids) != 1 || ids[0] != id {
			t.Errorf("key %s was acknowledged as %s; the cluster holds %v", key, id, ids)
		}
	}
	if len(perKey) != len(acked) {
		t.Errorf("%d keys hold tasks, %d were acknowledged", len(perKey), len(acked))
	}
	c.WaitCaughtUp(t, leader, 120*time.Second)
}

// testSubmitToEveryMaster submits through each published port alone
// (followers forward to the leader) and checks every task's output.
func testSubmitToEveryMaster(t *testing.T, c *Cluster) {
	type sub struct{ id, want string }
	var subs []sub
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("m%d", i)
		cl := c.ClientFor(id) // this master only
		for j := 0; j < 4; j++ {
			want := fmt.Sprintf("via %s #%d from %s\n", id, j, c.Project)
			spec := api.TaskSpec{Args: []string{"sh", "-c", `printf '%s\n' "$MSG"`}, Env: map[string]string{"MSG": strings.TrimSuffix(want, "\n")}}
			spec.IdempotencyKey = fmt.Sprintf("every-%s-%d", id, j)
			task, _, err := SubmitKeyed(context.Background(), []*transport.Client{cl}, 0, spec, 10*time.Second, time.Now().Add(60*time.Second))
			if err != nil {
				t.Fatalf("submit through %s (%s) alone: %v", id, c.URLOf(id), err)
			}
			subs = append(subs, sub{task.ID, want})
		}
	}
	for _, s := range subs {
		checkSucceededOnce(t, c.WaitTerminal(t, s.id, 120*time.Second), s.want)
	}
	// Every master answers reads too, linearizable (forwarded) and stale.
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("m%d", i)
		for _, stale := range []bool{false, true} {
			cl := c.ClientFor(id)
			poll(t, 30*time.Second, fmt.Sprintf("a read (stale=%v) through %s", stale, id), func() (bool, string) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				task, err := cl.Task(ctx, subs[0].id, transport.ReadOptions{Stale: stale})
				if err != nil {
					return false, err.Error()
				}
				return task.State == api.StateSucceeded, string(task.State)
			})
		}
	}
}

// loadGen runs clients that submit keyed tasks ("<prefix>-c<w>-<i>", output
// the key) until stopped, retrying an unknown outcome with the same key on
// the next master.
type loadGen struct {
	c      *Cluster
	prefix string
	per    time.Duration // timeout of one request

	stop atomic.Bool
	wg   sync.WaitGroup

	mu      sync.Mutex
	acked   map[string]string // key -> task id
	ackedAt []time.Time
	tried   map[string]bool // every key sent at least once
	failed  []string        // keys never acknowledged, with the last error
	retries int             // requests that failed and were retried
}

func startLoad(c *Cluster, prefix string, clients int, per time.Duration) *loadGen {
	g := &loadGen{c: c, prefix: prefix, per: per, acked: map[string]string{}, tried: map[string]bool{}}
	var masters []*transport.Client
	for i := 1; i <= 3; i++ {
		masters = append(masters, c.ClientFor(fmt.Sprintf("m%d", i)))
	}
	for w := 0; w < clients; w++ {
		g.wg.Add(1)
		go func(w int) {
			defer g.wg.Done()
			next := w % len(masters)
			for i := 0; !g.stop.Load(); i++ {
				key := fmt.Sprintf("%s-c%d-%d", prefix, w, i)
				spec := Exec("echo " + key)
				spec.IdempotencyKey = key
				g.mu.Lock()
				g.tried[key] = true
				g.mu.Unlock()
				task, tries, err := SubmitKeyed(context.Background(), masters, next, spec, per, time.Now().Add(90*time.Second))
				next = (next + tries) % len(masters) // stay on the master that answered
				g.mu.Lock()
				g.retries += tries
				if err != nil {
					g.failed = append(g.failed, key+": "+err.Error())
				} else {
					g.acked[key] = task.ID
					g.ackedAt = append(g.ackedAt, time.Now())
				}
				g.mu.Unlock()
				time.Sleep(10 * time.Millisecond)
			}
		}(w)
	}
	return g
}

// acks returns the number of acknowledged submissions, and how many of them
// came after since.
func (g *loadGen) acks(since time.Time) (all, after int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, at := range g.ackedAt {
		if at.After(since) {
			after++
		}
	}
	return len(g.ackedAt), after
}

// finish stops the clients and waits for their last keys.
func (g *loadGen) finish() {
	g.stop.Store(true)
	g.wg.Wait()
}

// check verifies every acknowledged task succeeded exactly once with its
// key as output, and that no key has more than one task.
func (g *loadGen) check(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	acked := make(map[string]string, len(g.acked))
	for k, v := range g.acked {
		acked[k] = v
	}
	tried := len(g.tried)
	failed := append([]string(nil), g.failed...)
	retries := g.retries
	g.mu.Unlock()
	t.Logf("load %s: %d keys sent, %d acknowledged, %d requests retried on another master, %d never acknowledged", g.prefix, tried, len(acked), retries, len(failed))
	for _, f := range failed {
		t.Logf("  not acknowledged (allowed, checked for duplicates only): %s", f)
	}
	byID := map[string]string{}
	for key, id := range acked {
		if other, dup := byID[id]; dup {
			t.Errorf("keys %s and %s were acknowledged with the same task %s", key, other, id)
		}
		byID[id] = key
	}
	for key, id := range acked {
		task := g.c.WaitTerminal(t, id, 180*time.Second)
		checkSucceededOnce(t, task, key+"\n")
		if task.IdempotencyKey != key {
			t.Errorf("task %s has key %q, want %q", id, task.IdempotencyKey, key)
		}
	}
	// No acknowledged task lost, no key with two tasks.
	perKey := map[string][]string{}
	for _, task := range g.c.AllTasks(t) {
		if strings.HasPrefix(task.IdempotencyKey, g.prefix+"-") {
			perKey[task.IdempotencyKey] = append(perKey[task.IdempotencyKey], task.ID)
		}
	}
	for key, ids := range perKey {
		if len(ids) != 1 {
			t.Errorf("key %s has %d tasks: %v", key, len(ids), ids)
		}
	}
	for key, id := range acked {
		if ids := perKey[key]; len(ids) != 1 || ids[0] != id {
			t.Errorf("acknowledged key %s (task %s) is listed as %v: lost", key, id, ids)
		}
	}
}

// testKillLeaderMidLoad kills the leader's container with SIGKILL while
// clients submit, then restarts it.
func testKillLeaderMidLoad(t *testing.T, c *Cluster) {
	c.WaitLeader(t, 60*time.Second, -1)
	leader, name := c.LeaderContainer(t, 60*time.Second)
	g := startLoad(c, "kill", 6, 3*time.Second)
	stopped := false
	defer func() {
		if !stopped {
			g.finish()
		}
	}()
	poll(t, 90*time.Second, "30 acknowledged submissions before the kill", func() (bool, string) {
		n, _ := g.acks(time.Time{})
		return n >= 30, fmt.Sprintf("%d acknowledged", n)
	})
	killedAt := time.Now()
	t.Logf("SIGKILL to the leader %s (%s)", leader, name)
	Kill(t, name)
	restarted := false
	defer func() {
		if !restarted {
			docker("start", name)
		}
	}()

	newLeader := c.WaitLeader(t, 90*time.Second, MasterIndex(leader))
	if newLeader == leader {
		t.Fatalf("the killed master %s still leads", leader)
	}
	t.Logf("new leader %s seen %s after the kill", newLeader, time.Since(killedAt).Round(10*time.Millisecond))
	poll(t, 120*time.Second, "30 acknowledged submissions after the kill", func() (bool, string) {
		_, n := g.acks(killedAt)
		return n >= 30, fmt.Sprintf("%d acknowledged after the kill", n)
	})
	g.finish()
	stopped = true
	g.check(t)

	// The killed master comes back, rejoins as a follower and catches up.
	Start(t, name)
	restarted = true
	c.WaitCaughtUp(t, leader, 120*time.Second)
	spec := Exec("echo after-restart")
	spec.IdempotencyKey = "kill-after-restart"
	task, _, err := SubmitKeyed(context.Background(), []*transport.Client{c.Client}, 0, spec, 10*time.Second, time.Now().Add(60*time.Second))
	if err != nil {
		t.Fatalf("submit after the restart: %v", err)
	}
	checkSucceededOnce(t, c.WaitTerminal(t, task.ID, 120*time.Second), "after-restart\n")
	// A stale read on the restarted master serves the recent task from its
	// own replica.
	cl := c.ClientFor(leader)
	poll(t, 60*time.Second, "a stale read of the recent task on the restarted "+leader, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := cl.Task(ctx, task.ID, transport.ReadOptions{Stale: true})
		if err != nil {
			return false, err.Error()
		}
		if got.State != api.StateSucceeded {
			return false, string(got.State)
		}
		return got.Result != nil && got.Result.Output == "after-restart\n", fmt.Sprintf("%+v", got.Result)
	})
}

// actionLines are what a master logs when it acts on Docker or on the
// queue as a leader.
var actionLines = regexp.MustCompile(`created worker container|removed worker container|started worker container|removed orphan container|scaling up|scaling down|draining workers are wanted again|requeued lost attempts|attempts not delivered|leadership established`)

// testPauseLeader freezes the leader (docker pause): the others elect a new
// leader and keep serving; once thawed, the old leader steps down without
// touching Docker or dispatching anything.
func testPauseLeader(t *testing.T, c *Cluster) {
	// A fixed count keeps the managed pool still, so any change is news.
	c.SetScale(t, api.ScalePolicy{Mode: api.ScaleFixed, Count: 1})
	c.WaitSettled(t, 1, 180*time.Second)
	leader := c.WaitLeader(t, 60*time.Second, -1)
	idx := MasterIndex(leader)
	name := c.ContainerOf(leader)
	var others []string
	for i := 1; i <= 3; i++ {
		if i != idx {
			others = append(others, fmt.Sprintf("m%d", i))
		}
	}
	othersCl := c.ClientFor(others...)
	var otherClients []*transport.Client
	for _, id := range others {
		otherClients = append(otherClients, c.ClientFor(id))
	}

	// Tasks the leader dispatched and that still run when it freezes; none
	// is pending, so the leader has nothing left to dispatch.
	type sub struct{ id, want string }
	var subs []sub
	for i := 0; i < 6; i++ {
		key := fmt.Sprintf("pause-before-%d", i)
		spec := Exec("sleep 4; echo " + key)
		spec.IdempotencyKey = key
		task, _, err := SubmitKeyed(context.Background(), []*transport.Client{c.Client}, 0, spec, 10*time.Second, time.Now().Add(60*time.Second))
		if err != nil {
			t.Fatalf("submit %s: %v", key, err)
		}
		subs = append(subs, sub{task.ID, key + "\n"})
	}
	poll(t, 60*time.Second, "the tasks to run", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cs, err := c.Client.Cluster(ctx, transport.ReadOptions{})
		if err != nil {
			return false, err.Error()
		}
		return cs.Tasks.Pending == 0 && cs.Tasks.Running >= 1, fmt.Sprintf("%+v", cs.Tasks)
	})
	assigned0, err := c.metric(leader, "gantry_assigned_attempts_total")
	if err != nil {
		t.Fatalf("metrics of %s: %v", leader, err)
	}
	before := c.MustManaged(t)

	t.Logf("pausing the leader %s (%s)", leader, name)
	Pause(t, name)
	unpaused := false
	defer func() {
		if !unpaused {
			docker("unpause", name)
		}
	}()
	newLeader := c.WaitLeader(t, 90*time.Second, idx)
	t.Logf("new leader %s while %s is paused", newLeader, leader)

	// Submissions keep working through the other masters.
	for i := 0; i < 6; i++ {
		key := fmt.Sprintf("pause-during-%d", i)
		spec := Exec("echo " + key)
		spec.IdempotencyKey = key
		task, _, err := SubmitKeyed(context.Background(), otherClients, i, spec, 10*time.Second, time.Now().Add(90*time.Second))
		if err != nil {
			t.Fatalf("submit %s while the old leader is paused: %v", key, err)
		}
		subs = append(subs, sub{task.ID, key + "\n"})
	}
	for _, s := range subs[6:] {
		task := c.waitTerminalVia(t, othersCl, s.id, 120*time.Second)
		checkSucceededOnce(t, task, s.want)
	}
	// Tasks the new leader dispatched that still run when the old one
	// thaws: its stale replica does not know them as current.
	var during []sub
	for i := 0; i < 6; i++ {
		key := fmt.Sprintf("pause-running-%d", i)
		spec := Exec("sleep 8; echo " + key)
		spec.IdempotencyKey = key
		task, _, err := SubmitKeyed(context.Background(), otherClients, i, spec, 10*time.Second, time.Now().Add(90*time.Second))
		if err != nil {
			t.Fatalf("submit %s while the old leader is paused: %v", key, err)
		}
		during = append(during, sub{task.ID, key + "\n"})
	}
	poll(t, 60*time.Second, "the tasks submitted during the pause to run", func() (bool, string) {
		for _, s := range during {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			task, err := othersCl.Task(ctx, s.id, transport.ReadOptions{})
			cancel()
			if err != nil {
				return false, err.Error()
			}
			if task.State != api.StateRunning {
				return false, task.ID + " is " + string(task.State)
			}
		}
		return true, ""
	})

	unpausedAt := time.Now()
	Unpause(t, name)
	unpaused = true
	poll(t, 60*time.Second, "the old leader "+leader+" to step down", func() (bool, string) {
		s, err := c.Self(leader, 3*time.Second)
		if err != nil {
			return false, err.Error()
		}
		return s.Role == "follower" && s.Leader != "" && s.Leader != leader, fmt.Sprintf("role %s leader %s term %d", s.Role, s.Leader, s.Term)
	})
	for _, s := range subs {
		checkSucceededOnce(t, c.WaitTerminal(t, s.id, 120*time.Second), s.want)
	}
	// The tasks running across the unpause were dispatched once, by the new
	// leader, and never stopped or handed back.
	for _, s := range during {
		task := c.WaitTerminal(t, s.id, 120*time.Second)
		if checkSucceededOnce(t, task, s.want) && len(task.Attempts) != 1 {
			t.Errorf("task %s (%s), running when the old leader was unpaused, has %d attempts, want 1: %+v", task.ID, task.IdempotencyKey, len(task.Attempts), task.Attempts)
		}
	}
	// Let the old leader run its loops a while as a follower, then look.
	c.WaitCaughtUp(t, leader, 60*time.Second)
	time.Sleep(3 * time.Second)

	assigned1, err := c.metric(leader, "gantry_assigned_attempts_total")
	if err != nil {
		t.Fatalf("metrics of %s: %v", leader, err)
	}
	t.Logf("old leader %s: gantry_assigned_attempts_total %v before the pause, %v after it stepped down", leader, assigned0, assigned1)
	if assigned1 != assigned0 {
		t.Errorf("the old leader %s assigned %v attempts after it was paused (gantry_assigned_attempts_total %v -> %v)", leader, assigned1-assigned0, assigned0, assigned1)
	}
	after := c.MustManaged(t)
	if fmt.Sprint(containerIDs(before)) != fmt.Sprint(containerIDs(after)) {
		t.Errorf("managed containers changed across the pause: before %v, after %v", containerIDs(before), containerIDs(after))
	}
	logs := Logs(t, name, unpausedAt)
	var acted []string
	for _, line := range strings.Split(logs, "\n") {
		if actionLines.MatchString(line) {
			acted = append(acted, line)
		}
	}
	t.Logf("old leader %s: %d log lines since the unpause, %d of them leader actions:\n%s", leader, strings.Count(logs, "\n"), len(acted), logs)
	if len(acted) > 0 {
		t.Errorf("the old leader %s acted after it was unpaused:\n%s", leader, strings.Join(acted, "\n"))
	}
	// No worker was told to stop an attempt (only a leader may do that, and
	// the new one had no reason to).
	workers, err := c.Containers(labelRole + "=worker")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range workers {
		for _, line := range strings.Split(Logs(t, w.Name, unpausedAt), "\n") {
			if strings.Contains(line, "stopping attempt on the leader's request") {
				t.Errorf("worker %s was told to stop an attempt after the old leader %s was unpaused: %s", w.Name, leader, line)
			}
		}
	}
	if !strings.Contains(logs, "lost leadership") && !strings.Contains(logs, "leadership revoked") {
		t.Logf("note: the old leader's logs after the unpause do not mention losing leadership:\n%s", logs)
	}
}

// containerIDs maps name -> ID@created of containers.
func containerIDs(cs []Container) map[string]string {
	out := map[string]string{}
	for _, ct := range cs {
		out[ct.Name] = ct.ID[:12] + "@" + ct.Created.Format(time.TimeOnly) + "/" + ct.State
	}
	return out
}

// waitTerminalVia long-polls task id through the given client.
func (c *Cluster) waitTerminalVia(t testing.TB, cl *transport.Client, id string, timeout time.Duration) api.Task {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last api.Task
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
		task, err := cl.Task(ctx, id, transport.ReadOptions{Wait: 20 * time.Second})
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
