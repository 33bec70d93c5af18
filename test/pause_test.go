package test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
)

// TestFailure_PausedLeaderUnderLoad pauses the leader (its answers cut one
// way, its HTTP requests held, as `docker pause` does) for 10 s while
// clients submit through the followers, one request each with no retry of
// their own. Every request must succeed, none may take longer than 3 s plus
// the election, and no key may yield two tasks. Before the follower watched
// raft's view of the leader, each request held by the paused leader waited
// for the forwarding deadline (30 s) and failed.
func TestFailure_PausedLeaderUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a 10-second pause")
	}
	fab := NewFabric()
	c := NewCluster(t, Options{Masters: 3, Workers: 2, Slots: 4, Fabric: fab})
	old := c.Leader()
	var followers []string
	for _, n := range c.Followers() {
		followers = append(followers, n.URL())
	}

	type sample struct {
		key     string
		id      string
		started time.Time
		took    time.Duration
		err     error
	}
	var (
		mu      sync.Mutex
		samples []sample
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	const clients = 6
	for i := range clients {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// One follower per client; a request is sent once.
			cl := transport.NewClient([]string{followers[i%len(followers)]})
			for n := 0; n < 2000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				spec := Exec("true")
				spec.IdempotencyKey = fmt.Sprintf("pause-%d-%d", i, n)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				start := time.Now()
				task, _, err := cl.Submit(ctx, spec)
				cancel()
				mu.Lock()
				samples = append(samples, sample{spec.IdempotencyKey, task.ID, start, time.Since(start), err})
				mu.Unlock()
				time.Sleep(20 * time.Millisecond) // an open loop: a few dozen requests a second
			}
		}(i)
	}

	time.Sleep(time.Second) // load before the pause
	paused := time.Now()
	c.PauseMaster(old)
	// The election: until a follower is the established leader.
	var elected time.Duration
	c.Eventually(30*time.Second, "a new leader", func() bool {
		for _, n := range c.Masters {
			if n != old {
				if li, ok := n.M.Leader(); ok && li.ID != old.ID && li.Self {
					elected = time.Since(paused)
					return true
				}
			}
		}
		return false
	})
	t.Logf("a new leader after %s", elected.Round(time.Millisecond))
	time.Sleep(10*time.Second - time.Since(paused))
	c.ResumeMaster(old)
	time.Sleep(time.Second) // load after the pause
	close(stop)
	wg.Wait()

	bound := elected + 3*time.Second
	var during []time.Duration
	keys := map[string]string{}
	for _, s := range samples {
		if s.err != nil {
			t.Errorf("key %s (sent %s after the pause): %v", s.key, s.started.Sub(paused).Round(time.Millisecond), s.err)
			continue
		}
		if s.took > bound {
			t.Errorf("key %s (sent %s after the pause) took %s, more than the election (%s) plus 3 s", s.key, s.started.Sub(paused).Round(time.Millisecond), s.took.Round(time.Millisecond), elected.Round(time.Millisecond))
		}
		if s.started.After(paused.Add(-time.Second)) && s.started.Before(paused.Add(elected)) {
			during = append(during, s.took)
		}
		keys[s.key] = s.id
	}
	sort.Slice(during, func(i, j int) bool { return during[i] < during[j] })
	if len(during) > 0 {
		t.Logf("%d requests, %d sent around the pause: median %s, longest %s", len(samples), len(during), during[len(during)/2].Round(time.Millisecond), during[len(during)-1].Round(time.Millisecond))
	}

	// No key has two tasks, and every task has its key's ID.
	cl := c.Client()
	byKey := map[string]string{}
	after := ""
	for {
		var page api.TaskList
		page = ReadEventually(c, "a page of tasks", func(ctx context.Context) (api.TaskList, error) {
			return cl.List(ctx, api.ListFilter{After: after, Limit: api.MaxListLimit}, transport.ReadOptions{})
		})
		for _, task := range page.Tasks {
			if prev, ok := byKey[task.IdempotencyKey]; ok {
				t.Errorf("key %s has two tasks: %s and %s", task.IdempotencyKey, prev, task.ID)
			}
			byKey[task.IdempotencyKey] = task.ID
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	for k, id := range keys {
		if byKey[k] != id {
			t.Errorf("key %s was answered with task %s, the cluster holds %q", k, id, byKey[k])
		}
	}
	if len(byKey) != len(keys) {
		t.Errorf("%d tasks for %d acknowledged keys", len(byKey), len(keys))
	}
	c.WaitConverged()
}
