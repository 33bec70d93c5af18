package master

import (
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/membership"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the master's Prometheus metrics. Counters count what this
// master did while it led; gauges describe the replicated state as this
// master has applied it.
type metrics struct {
	reg *prometheus.Registry

	submitted     prometheus.Counter
	submitEntries prometheus.Counter
	results       prometheus.Counter
	resultEntries prometheus.Counter
	assigned      prometheus.Counter
	requeued      *prometheus.CounterVec
	pushErrors    prometheus.Counter
	leaderships   prometheus.Counter
}

func newMetrics(m *Master) *metrics {
	reg := prometheus.NewRegistry()
	f := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "gantry", Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	x := &metrics{
		reg:           reg,
		submitted:     f("submitted_tasks_total", "Tasks committed by submissions while this master led (idempotent repeats excluded)."),
		submitEntries: f("submit_entries_total", "Raft entries that carried submissions (tasks per entry shows group commit)."),
		results:       f("results_total", "Results proposed while this master led."),
		resultEntries: f("result_entries_total", "Raft entries that carried results."),
		assigned:      f("assigned_attempts_total", "Attempts assigned to workers while this master led."),
		pushErrors:    f("push_errors_total", "Pushes of attempts to workers that failed or were refused."),
		leaderships:   f("leaderships_total", "Times this master established leadership."),
		requeued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gantry", Name: "requeued_attempts_total", Help: "Attempts requeued while this master led, by outcome (lost, undelivered).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(x.requeued)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	tasks := prometheus.NewDesc("gantry_tasks", "Tasks by state in this master's replica.", []string{"state"}, nil)
	stale := prometheus.NewDesc("gantry_stale_results_total", "Results refused because their attempt was not current.", nil, nil)
	leader := prometheus.NewDesc("gantry_raft_leader", "1 while this master is the established leader.", nil, nil)
	term := prometheus.NewDesc("gantry_raft_term", "Current Raft term.", nil, nil)
	applied := prometheus.NewDesc("gantry_raft_applied_index", "Last Raft index applied.", nil, nil)
	commit := prometheus.NewDesc("gantry_raft_commit_index", "Raft commit index known to this master.", nil, nil)
	contact := prometheus.NewDesc("gantry_raft_last_contact_seconds", "Seconds since this follower last heard from the leader (0 on the leader).", nil, nil)
	entries := prometheus.NewDesc("gantry_raft_entries_applied_total", "Command entries this replica applied since it started, by encoding (json, binary): the leader writes binary once every voter applies it.", []string{"encoding"}, nil)
	workers := prometheus.NewDesc("gantry_workers", "Workers by gossip state, as this master sees them.", []string{"state"}, nil)
	reg.MustRegister(prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		c := m.fsm.Counts()
		for _, s := range api.States {
			n := map[api.TaskState]int{api.StatePending: c.Pending, api.StateRunning: c.Running, api.StateSucceeded: c.Succeeded, api.StateFailed: c.Failed, api.StateCanceled: c.Canceled}[s]
			ch <- prometheus.MustNewConstMetric(tasks, prometheus.GaugeValue, float64(n), string(s))
		}
		ch <- prometheus.MustNewConstMetric(stale, prometheus.CounterValue, float64(m.fsm.StaleResults()))
		all, bin := m.fsm.AppliedEntries()
		ch <- prometheus.MustNewConstMetric(entries, prometheus.CounterValue, float64(all-bin), "json")
		ch <- prometheus.MustNewConstMetric(entries, prometheus.CounterValue, float64(bin), "binary")
		if m.raft == nil {
			return
		}
		isLeader := 0.0
		if m.leading() != nil {
			isLeader = 1
		}
		ch <- prometheus.MustNewConstMetric(leader, prometheus.GaugeValue, isLeader)
		ch <- prometheus.MustNewConstMetric(term, prometheus.GaugeValue, float64(m.raft.CurrentTerm()))
		ch <- prometheus.MustNewConstMetric(applied, prometheus.GaugeValue, float64(m.raft.AppliedIndex()))
		ch <- prometheus.MustNewConstMetric(commit, prometheus.GaugeValue, float64(m.raft.CommitIndex()))
		lc := 0.0
		if m.raft.State() != raft.Leader {
			if t := m.raft.LastContact(); !t.IsZero() {
				lc = time.Since(t).Seconds()
			}
		}
		ch <- prometheus.MustNewConstMetric(contact, prometheus.GaugeValue, lc)
		counts := map[string]int{membership.StateAlive: 0, membership.StateSuspect: 0, membership.StateDead: 0, membership.StateLeft: 0}
		for _, w := range m.workerViews() {
			counts[w.State]++
		}
		for st, n := range counts {
			ch <- prometheus.MustNewConstMetric(workers, prometheus.GaugeValue, float64(n), st)
		}
	}))
	return x
}

// Registry returns the master's Prometheus registry, for /metrics.
func (m *Master) Registry() *prometheus.Registry { return m.metrics.reg }

// AppliedEntries returns how many command entries this master's replica
// applied since it started, and how many of them were in the binary format.
func (m *Master) AppliedEntries() (all, binary uint64) { return m.fsm.AppliedEntries() }
