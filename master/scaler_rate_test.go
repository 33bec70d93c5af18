package master

import (
	"math"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/membership"
)

func TestScaleUpCount_AddsOnlyWorkersThatWouldFindWork(t *testing.T) {
	auto := api.ScalePolicy{Mode: api.ScaleAuto, Min: 1, Max: 8, BacklogPerWorker: 10, Cooldown: "30s"}
	minTwo := auto
	minTwo.Min = 2
	fixed := api.ScalePolicy{Mode: api.ScaleFixed, Count: 5, Min: 5, Max: 5, BacklogPerWorker: 10}
	s := 2500 * time.Millisecond
	for _, tt := range []struct {
		name    string
		policy  api.ScalePolicy
		backlog int
		pending int
		active  int
		rate    float64
		start   time.Duration
		want    int
	}{
		// The burst: 250 quick tasks that one worker finishes in
		// about 2 s, before a container started now could take any.
		{"burst drained before a start", auto, 250, 248, 1, 125, s, 0},
		{"burst drained exactly at the start", auto, 250, 248, 1, 100, s, 0},
		{"burst outlasts a start: sized for what is left", auto, 250, 248, 1, 90, s, 2},
		{"long tasks, slow completions: as the policy", auto, 60, 56, 1, 0.2, s, 5},
		{"no completions observed: as the policy", auto, 60, 56, 1, 0, s, 5},
		{"no completions observed: clamped at max", auto, 500, 496, 1, 0, s, 7},
		{"slower start: the same burst is drained first", auto, 250, 248, 1, 100, 4 * time.Second, 0},
		{"quicker start: workers for what is left then", auto, 250, 248, 1, 100, 2 * time.Second, 4},
		{"near-instant start: as the policy", auto, 250, 248, 1, 100, 100 * time.Millisecond, 7},
		{"nothing waits at the start: nothing added", auto, 30, 10, 2, 5, s, 0},
		{"only running tasks, a moving queue: nothing added", auto, 40, 0, 1, 1, s, 0},
		{"below min: up to min even for a drained burst", minTwo, 250, 248, 0, 1000, s, 2},
		{"below min, one active: the second for min", minTwo, 250, 248, 1, 1000, s, 1},
		{"policy wants no more: nothing", auto, 5, 3, 1, 0, s, 0},
		{"policy wants fewer: nothing (scale-down is not decided here)", auto, 5, 3, 4, 0, s, 0},
		{"fixed mode is an order, whatever the rate", fixed, 250, 248, 1, 1000, s, 4},
		{"fixed mode, no backlog", fixed, 0, 0, 2, 0, s, 3},
		{"infinite rate (a backlog just appeared on running slots): hold", auto, 100, 92, 1, math.Inf(1), s, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := upCount(upInput{Policy: tt.policy, Backlog: tt.backlog, Pending: tt.pending, Active: tt.active, Rate: tt.rate, Start: tt.start})
			if got != tt.want {
				t.Fatalf("upCount = %d, want %d (the policy alone wants %d more)", got, tt.want, max(tt.policy.Desired(tt.backlog)-tt.active, 0))
			}
		})
	}
}

func TestScaleStallWait_RecheckWhenAStalledQueueWouldJustifyAWorker(t *testing.T) {
	auto := api.ScalePolicy{Mode: api.ScaleAuto, Min: 1, Max: 4, BacklogPerWorker: 2, Cooldown: "30s"}
	in := upInput{Policy: auto, Backlog: 12, Pending: 10, Active: 1, Start: 2 * time.Second}
	// 2 running, 2 s start, min(10 pending, 12-1*2) = 10: the bound 2/stall
	// lets a worker through once 2/stall*2s < 10, after 0.4 s of stall.
	for _, tt := range []struct {
		name    string
		running int
		stall   time.Duration
		want    time.Duration
	}{
		{"fresh backlog", 2, 0, 400*time.Millisecond + time.Millisecond},
		{"part of the way", 2, 300 * time.Millisecond, 100*time.Millisecond + time.Millisecond},
		{"already stalled long enough", 2, time.Second, 0},
		{"nothing running: nothing to wait for", 0, 0, 0},
		{"many slots: no longer than a quarter of a start", 64, 100 * time.Millisecond, 400*time.Millisecond + time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := stallWait(in, tt.running, tt.stall); got != tt.want {
				t.Fatalf("stallWait = %v, want %v", got, tt.want)
			}
		})
	}
	// After that wait the rate the meter reports lets upCount add one.
	in.Rate = 2 / (400*time.Millisecond + time.Millisecond).Seconds()
	if got := upCount(in); got < 1 {
		t.Fatalf("after the stall wait upCount = %d, want at least 1", got)
	}
}

func TestScaleDrainMeter_RateOverBusyTime(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

	t.Run("no sample: unknown, bounded only by what runs", func(t *testing.T) {
		var m drainMeter
		if r := m.rate(0, time.Minute); r != 0 {
			t.Fatalf("rate with nothing running = %v, want 0", r)
		}
		if r := m.rate(4, time.Minute); !math.IsInf(r, 1) {
			t.Fatalf("rate with 4 running and no stall measured = %v, want +Inf", r)
		}
	})
	t.Run("steady completions", func(t *testing.T) {
		var m drainMeter
		m.observe(at(0), 0, 100)
		for i := 1; i <= 10; i++ {
			m.observe(at(100*i), 10*i, 100-10*i+10)
		}
		if r := m.rate(8, time.Minute); math.Abs(r-100) > 1e-9 {
			t.Fatalf("rate = %v, want 100/s", r)
		}
	})
	t.Run("idle time is not counted", func(t *testing.T) {
		var m drainMeter
		m.observe(at(0), 0, 50)
		m.observe(at(500), 50, 0)      // 50 done in 0.5 s of busy time
		m.observe(at(60_000), 50, 0)   // a minute idle
		m.observe(at(60_001), 50, 200) // a new burst
		if r := m.rate(8, time.Minute); math.Abs(r-100) > 1e-9 {
			t.Fatalf("rate = %v, want 100/s from the last busy period", r)
		}
	})
	t.Run("the first wave of a burst counts as done", func(t *testing.T) {
		var m drainMeter
		m.observe(at(0), 0, 100)
		m.observe(at(60), 2, 98) // 2 of the 8 in flight are through after 60 ms
		if r := m.rate(8, time.Minute); math.Abs(r-8/0.06) > 1e-6 {
			t.Fatalf("rate = %v, want 8 per 60 ms", r)
		}
	})
	t.Run("a stall caps the rate", func(t *testing.T) {
		var m drainMeter
		m.observe(at(0), 0, 100)
		m.observe(at(100), 100, 50) // 1000/s
		m.observe(at(2100), 100, 50)
		// 2 s without a completion, 4 running: at most 2/s now.
		if r := m.rate(4, time.Minute); math.Abs(r-2) > 1e-9 {
			t.Fatalf("rate = %v, want 2/s", r)
		}
	})
	t.Run("a queue stalled for a quarter of a start is not moving", func(t *testing.T) {
		var m drainMeter
		m.observe(at(0), 0, 100)
		m.observe(at(100), 100, 50)
		m.observe(at(2100), 100, 50)
		if r := m.rate(4, 8*time.Second); r != 0 {
			t.Fatalf("rate after a 2 s stall with an 8 s start = %v, want 0", r)
		}
		if r := m.rate(4, 9*time.Second); r != 2 {
			t.Fatalf("rate after a 2 s stall with a 9 s start = %v, want the 2/s bound", r)
		}
	})
	t.Run("GC forgetting tasks is not a negative rate", func(t *testing.T) {
		var m drainMeter
		m.observe(at(0), 100, 10)
		m.observe(at(1000), 110, 10) // 10/s
		m.observe(at(2000), 20, 10)  // GC forgot 100; this interval is left out
		if r := m.rate(5, time.Minute); math.Abs(r-10) > 1e-9 {
			t.Fatalf("rate = %v, want 10/s", r)
		}
	})
	t.Run("window slides over busy time", func(t *testing.T) {
		var m drainMeter
		m.observe(at(0), 0, 1000)
		done := 0
		for i := 1; i <= 10; i++ { // 10 s at 100/s
			done += 100
			m.observe(at(1000*i), done, 1000)
		}
		for i := 11; i <= 20; i++ { // then 10 s at 10/s
			done += 10
			m.observe(at(1000*i), done, 1000)
		}
		if r := m.rate(5, time.Minute); math.Abs(r-10) > 1e-9 {
			t.Fatalf("rate = %v, want 10/s once the window holds only the slow period", r)
		}
	})
}

func TestScaleStartTimes_MedianOfObservedJoins(t *testing.T) {
	t0 := time.Unix(1000, 0)
	st := newStartTimes()
	if d, ok := st.estimate(); ok || d != startDefault {
		t.Fatalf("estimate before any start = %v, %v; want the default", d, ok)
	}
	alive := func(names ...string) map[string]workerView {
		out := map[string]workerView{}
		for _, n := range names {
			out[n] = workerView{ID: n, State: membership.StateAlive}
		}
		return out
	}
	st.created("a", t0)
	st.created("b", t0)
	st.created("c", t0)
	st.created("gone", t0)
	st.seen(map[string]workerView{"a": {ID: "a", State: membership.StateSuspect}}, t0.Add(time.Second), nil)
	if _, ok := st.estimate(); ok {
		t.Fatal("a suspect worker counted as started")
	}
	st.seen(alive("a"), t0.Add(3*time.Second), func(n string) bool { return n != "gone" })
	st.seen(alive("b"), t0.Add(2*time.Second), nil)
	st.seen(alive("c"), t0.Add(10*time.Second), nil)
	if d, ok := st.estimate(); !ok || d != 3*time.Second {
		t.Fatalf("estimate = %v, %v; want the median 3s", d, ok)
	}
	if st.waiting() {
		t.Fatalf("still timing %v", st.pending)
	}
}
