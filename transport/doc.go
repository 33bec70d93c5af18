// Package transport is everything HTTP in gantry: the master's API server
// (routing, strict request decoding, limits, forwarding to the leader), the
// typed Go client the CLI and workers use, the worker's small API for the
// leader, and the mapping between api errors and HTTP statuses in both
// directions.
//
// It never imports fsm, master or worker: it defines the Master and Agent
// interfaces it serves, and those packages implement them.
package transport
