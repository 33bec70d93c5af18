package bench

import (
	"context"
	"math"
	"sort"
	"sync"
	"time"
)

// System is what the load runs against: gantry or etcd, the same shape.
type System interface {
	Name() string
	// Write makes one durable replicated write (a task submission, an etcd
	// put) from client c through member m, bounded by ctx, and returns how
	// many items it committed (a batch commits many).
	Write(ctx context.Context, c, m, seq int) (int, error)
	// Members is the number of members a client can talk to.
	Members() int
	// Leader returns the index of the member that leads now.
	Leader(ctx context.Context) (int, error)
	// Kill SIGKILLs member m; Restart starts it again and waits until it
	// serves and the cluster has a leader.
	Kill(m int)
	Restart(ctx context.Context, m int) error
}

// LoadResult is one load run.
type LoadResult struct {
	Clients  int           `json:"clients"`
	Duration time.Duration `json:"duration_ns"`
	Items    int           `json:"items"`
	PerSec   float64       `json:"per_sec"`
	P50      time.Duration `json:"p50_ns"`
	P99      time.Duration `json:"p99_ns"`
	Errors   int           `json:"errors"`
	// MaxGap is the longest time between two successful writes (from the
	// start), and Buckets the items committed per 100 ms (for charts).
	MaxGap  time.Duration `json:"max_gap_ns"`
	Buckets []int         `json:"-"`
}

// Load drives Clients concurrent writers against a system for For. Each
// client starts on member c mod n; a failed write is retried on the next
// member, each attempt bounded by Timeout.
type Load struct {
	Clients int
	For     time.Duration
	Timeout time.Duration
}

// Run runs the load.
func (l Load) Run(ctx context.Context, sys System) LoadResult {
	type sample struct {
		end time.Time
		lat time.Duration
		n   int
	}
	var (
		mu      sync.Mutex
		samples []sample
		errs    int
		wg      sync.WaitGroup
	)
	if r, ok := sys.(interface{ NewRound() }); ok {
		r.NewRound() // fresh keys: a repeated run must not hit the idempotency cache
	}
	rctx, cancel := context.WithTimeout(ctx, l.For)
	defer cancel()
	start := time.Now()
	n := sys.Members()
	for c := 0; c < l.Clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			m := c % n
			local := make([]sample, 0, 1024)
			lerrs := 0
			for seq := 0; rctx.Err() == nil; seq++ {
				t0 := time.Now()
				for rctx.Err() == nil {
					wctx, wcancel := context.WithTimeout(rctx, l.Timeout)
					k, err := sys.Write(wctx, c, m, seq)
					wcancel()
					if err == nil {
						now := time.Now()
						local = append(local, sample{now, now.Sub(t0), k})
						break
					}
					if rctx.Err() != nil {
						break
					}
					lerrs++
					m = (m + 1) % n
				}
			}
			mu.Lock()
			samples = append(samples, local...)
			errs += lerrs
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	res := LoadResult{Clients: l.Clients, Duration: elapsed, Errors: errs}
	if len(samples) == 0 {
		res.MaxGap = elapsed
		return res
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i].end.Before(samples[j].end) })
	lats := make([]time.Duration, len(samples))
	prev := start
	res.Buckets = make([]int, int(elapsed/(100*time.Millisecond))+1)
	for i, s := range samples {
		lats[i] = s.lat
		res.Items += s.n
		res.MaxGap = max(res.MaxGap, s.end.Sub(prev))
		prev = s.end
		res.Buckets[int(s.end.Sub(start)/(100*time.Millisecond))] += s.n
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	res.P50 = lats[len(lats)/2]
	res.P99 = lats[int(math.Ceil(0.99*float64(len(lats))))-1]
	res.PerSec = float64(res.Items) / elapsed.Seconds()
	return res
}

// Stat is a figure over repeated runs: the median and the spread.
type Stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"`
}

func stat(v []float64) Stat {
	if len(v) == 0 {
		return Stat{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[len(s)-1], Runs: v}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
