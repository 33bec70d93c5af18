// Package master is one gantry master node: it sets up Raft (raft-boltdb log
// and stable store, file snapshots, a TCP stream layer that advertises host
// names), joins the gossip pool, and implements transport.Master for the HTTP
// API. While it is the established leader it runs the dispatcher (ready tasks
// to free worker slots: commit the assignment, then push it), the failure
// detector (requeue attempts of lost workers, stop stale ones) and the garbage
// collector of old terminal tasks. See DESIGN.md beside this file.
package master
