package test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/transport"
)

func TestGC_ForgetsOldTerminalTasksOnEveryMaster(t *testing.T) {
	c := NewCluster(t, Options{Workers: 1, Master: func(cfg *master.Config) {
		cfg.Retention = time.Second
		cfg.GCInterval = 100 * time.Millisecond
	}})
	cl := c.Client()
	var ids []string
	for i := 0; i < 5; i++ {
		spec := Exec("true")
		spec.IdempotencyKey = fmt.Sprintf("gc-%d", i)
		ids = append(ids, c.Submit(cl, spec).ID)
	}
	// A task that is still pending must never be collected, however old.
	blocker := Exec("sleep 30")
	blocker.Priority = -1
	pendingSpecs := []api.TaskSpec{blocker, blocker, blocker}
	var live []string
	for _, s := range pendingSpecs {
		live = append(live, c.Submit(cl, s).ID)
	}
	for _, id := range ids {
		c.WaitTerminal(cl, id, 30*time.Second)
	}
	for _, n := range c.Masters {
		n := n
		c.Eventually(30*time.Second, "every finished task to be forgotten on "+n.ID, func() bool {
			for _, id := range ids {
				_, err := c.Client(n).Task(context.Background(), id, transport.ReadOptions{Stale: true})
				if !errors.Is(err, api.ErrNotFound) {
					return false
				}
			}
			return true
		})
	}
	for _, id := range live {
		task, err := cl.Task(context.Background(), id, transport.ReadOptions{})
		if err != nil || task.State.Terminal() {
			t.Fatalf("live task %s: %+v, %v", id, task.State, err)
		}
	}
	// The keys were forgotten with their tasks: the same key makes a new task.
	spec := Exec("true")
	spec.IdempotencyKey = "gc-0"
	task, created, err := cl.Submit(context.Background(), spec)
	if err != nil || !created || task.ID == ids[0] {
		t.Fatalf("resubmit of a forgotten key: id %s created %v err %v", task.ID, created, err)
	}
}
