package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

func (s Stat) f(format string) string {
	if len(s.Runs) == 0 {
		return "-"
	}
	return fmt.Sprintf(format+" ["+format+"-"+format+"]", s.Median, s.Min, s.Max)
}

// WriteText prints the report as tables: median [min-max] of the runs.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "\n== gantry beside %s on %s\n== gantry raft timers: %s; every figure: median [min-max] over the runs\n\n", orNone(r.EtcdVer), r.Machine, r.Timers)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENTS\tGANTRY SUBMIT/S\tP50 MS\tP99 MS\tETCD PUT/S\tP50 MS\tP99 MS\tGANTRY/ETCD")
	for _, row := range r.Submit {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row.Clients,
			row.Gantry.PerSec.f("%.0f"), row.Gantry.P50ms.f("%.1f"), row.Gantry.P99ms.f("%.1f"),
			row.Etcd.PerSec.f("%.0f"), row.Etcd.P50ms.f("%.1f"), row.Etcd.P99ms.f("%.1f"), row.Ratio.f("%.2f"))
	}
	tw.Flush()
	if b := r.Batch; b != nil {
		fmt.Fprintf(w, "\nbatch submit (%d tasks a request, %d clients): %s tasks/s; over etcd's single puts: %s x\n",
			b.Size, b.Clients, b.TasksPerSec.f("%.0f"), b.VsEtcd.f("%.1f"))
	}
	fmt.Fprintf(w, "\nfailover, longest gap after SIGKILL of the leader (8 clients, 500 ms requests): gantry %s s, etcd %s s\n",
		r.Failover.Gantry.f("%.3f"), r.Failover.Etcd.f("%.3f"))
	fmt.Fprintf(w, "end-to-end no-op task, light load: p50 %s ms, p99 %s ms; single commit p50 %s ms; ratio %.2f\n",
		r.E2E.P50ms.f("%.1f"), r.E2E.P99ms.f("%.1f"), r.E2E.CommitP50ms.f("%.1f"), r.E2E.Ratio)
	c := r.Completion
	fmt.Fprintf(w, "completion: %s no-op tasks/s (%d workers x %d slots, %d tasks); fork/exec of true: %s/s (%d goroutines); ratio %.2f\n",
		c.PerSec.f("%.0f"), c.Workers, c.Slots, c.Tasks, c.ForkExec.f("%.0f"), c.Concurrent, c.Ratio)
	fmt.Fprintf(w, "worker loss (SIGKILL of a busy worker) to its attempts running elsewhere: %s s\n", r.WorkerLoss.f("%.3f"))
	if st := r.StateScale; st != nil {
		fmt.Fprintf(w, "state scale, %d pending tasks: %.0f B of heap per task; snapshot %.2f s (%.0f MiB), restore %.2f s; dispatch %.0f assignments/s\n",
			st.N, st.HeapBytesPerTask, st.SnapshotSeconds, float64(st.SnapshotBytes)/(1<<20), st.RestoreSeconds, st.DispatchPerSecond)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteChart writes an SVG chart of acknowledged writes per 100 ms through
// the first leader kill of each system.
func (r *Report) WriteChart(path string) error {
	if len(r.Failover.Chart) == 0 {
		return nil
	}
	const W, H, left, bottom, top = 760, 300, 60, 40, 30
	maxY, maxX := 1, 0
	for _, c := range r.Failover.Chart {
		for _, v := range c.Buckets {
			maxY = max(maxY, v*10)
		}
		maxX = max(maxX, len(c.Buckets))
	}
	plotW, plotH := float64(W-left-20), float64(H-top-bottom)
	x := func(i int) float64 { return left + plotW*float64(i)/float64(max(maxX-1, 1)) }
	y := func(v int) float64 { return top + plotH*(1-float64(v)/float64(maxY)) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14">Acknowledged writes per second (100 ms buckets) through a SIGKILL of the leader, 8 clients</text>`+"\n", left)
	fmt.Fprintf(&b, `<line x1="%d" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", left, y(0), x(maxX-1), y(0))
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%.0f" stroke="black"/>`+"\n", left, top, left, y(0))
	for _, frac := range []float64{0, 0.5, 1} {
		v := int(frac * float64(maxY))
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%d</text>`+"\n", left-5, y(v)+4, v)
	}
	for s := 0; s*10 < maxX; s++ {
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%ds</text>`+"\n", x(s*10), y(0)+16, s)
	}
	colors := []string{"#1f77b4", "#d62728", "#2ca02c"}
	for i, c := range r.Failover.Chart {
		var pts []string
		for j, v := range c.Buckets {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(j), y(v*10)))
		}
		col := colors[i%len(colors)]
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", W-140, top+16*(i+1), col, c.System)
		k := int(c.KillAt / (100 * time.Millisecond))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.0f" stroke="gray" stroke-dasharray="4 3"/>`+"\n", x(k), top, x(k), y(0))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" fill="gray">SIGKILL</text>`+"\n", x(int(r.Failover.Chart[0].KillAt/(100*time.Millisecond)))+4, top+12)
	b.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
