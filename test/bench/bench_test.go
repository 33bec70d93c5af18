package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestStat(t *testing.T) {
	s := stat([]float64{5, 1, 3})
	if s.Median != 3 || s.Min != 1 || s.Max != 5 || len(s.Runs) != 3 || s.Runs[0] != 5 {
		t.Errorf("stat(5,1,3) = %+v", s)
	}
	if s := stat([]float64{4, 2}); s.Median != 3 {
		t.Errorf("median of an even count: %v, want 3", s.Median)
	}
	if s := stat(nil); s.Median != 0 || s.f("%.0f") != "-" {
		t.Errorf("stat(nil) = %+v", s)
	}
	p50, p99 := pct([]time.Duration{3, 1, 2, 100})
	if p50 != 3 || p99 != 100 {
		t.Errorf("pct = %v %v", p50, p99)
	}
}

// fakeSys acknowledges writes, fails every write on member 0 (so clients
// move on), and records the keys space it was asked for.
type fakeSys struct {
	writes  atomic.Int64
	rounds  atomic.Int64
	perCall int
}

func (f *fakeSys) Name() string { return "fake" }
func (f *fakeSys) Members() int { return 3 }
func (f *fakeSys) NewRound()    { f.rounds.Add(1) }
func (f *fakeSys) Write(ctx context.Context, c, m, seq int) (int, error) {
	if m == 0 {
		return 0, errors.New("member 0 is down")
	}
	time.Sleep(time.Millisecond)
	f.writes.Add(1)
	return f.perCall, ctx.Err()
}
func (f *fakeSys) Leader(context.Context) (int, error) { return 1, nil }
func (f *fakeSys) Kill(int)                            {}
func (f *fakeSys) Restart(context.Context, int) error  { return nil }

func TestLoadCountsItemsRetriesAndGaps(t *testing.T) {
	f := &fakeSys{perCall: 10}
	res := Load{Clients: 6, For: 300 * time.Millisecond, Timeout: time.Second}.Run(context.Background(), f)
	if f.rounds.Load() != 1 {
		t.Errorf("NewRound called %d times, want once per load", f.rounds.Load())
	}
	// Every acknowledged write counts its 10 items; a client's last write
	// may end after the load stopped.
	w := int(f.writes.Load())
	if res.Items == 0 || res.Items%10 != 0 || res.Items > 10*w || res.Items < 10*(w-6) {
		t.Errorf("items %d for %d writes of 10", res.Items, w)
	}
	// Clients starting on member 0 fail once, then move on.
	if res.Errors != 2 {
		t.Errorf("errors %d, want 2 (the two clients that started on member 0)", res.Errors)
	}
	if res.PerSec <= 0 || res.P50 <= 0 || res.P99 < res.P50 || res.MaxGap <= 0 || res.MaxGap > 200*time.Millisecond {
		t.Errorf("figures %+v", res)
	}
	sum := 0
	for _, b := range res.Buckets {
		sum += b
	}
	if sum != res.Items {
		t.Errorf("buckets hold %d items, want %d", sum, res.Items)
	}
}

func TestReportWritesTextJSONAndChart(t *testing.T) {
	r := &Report{Machine: "test", Timers: "defaults", EtcdVer: "etcd 3.4"}
	r.Submit = []Row{{Clients: 64, Gantry: Figs{PerSec: stat([]float64{100})}, Etcd: Figs{PerSec: stat([]float64{50})}, Ratio: stat([]float64{2}), HaveRatio: true}}
	r.Failover.Chart = []Chart{{System: "gantry", Buckets: []int{5, 5, 0, 0, 5}, KillAt: 100 * time.Millisecond}, {System: "etcd", Buckets: []int{5, 0, 0, 0, 0, 5}}}
	var b strings.Builder
	r.WriteText(&b)
	if !strings.Contains(b.String(), "64") || !strings.Contains(b.String(), "2.00") {
		t.Errorf("text report lacks the row:\n%s", b.String())
	}
	dir := t.TempDir()
	if err := r.WriteJSON(filepath.Join(dir, "r.json")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteChart(filepath.Join(dir, "c.svg")); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "c.svg"))
	if err != nil || !strings.HasPrefix(string(svg), "<svg") || strings.Count(string(svg), "<polyline") != 2 {
		t.Errorf("chart: %v\n%s", err, svg)
	}
}
