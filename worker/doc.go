// Package worker is the gantry worker agent: it joins the gossip pool (where
// it finds the masters), serves the small HTTP API the leader pushes attempts
// to, runs each attempt (exec tasks run a process; see RunExec), and reports
// every result to any master until one accepts or refuses it for good.
//
// A worker holds no durable state. If it dies, the leader requeues its
// attempts; results of attempts that are no longer current are refused by the
// masters (fencing by attempt number), so a late result never overwrites a
// newer one. Shutdown drains: no new attempts, running ones finish or are
// handed back, results are delivered, then the worker leaves the pool.
//
// The worker never imports raft: everything it knows of the cluster comes
// from gossip and HTTP.
package worker
