// Package fsm is gantry's replicated state machine: the Raft log entry types
// and their encoding, the deterministic Apply that turns them into task state,
// and snapshots of that state.
//
// Apply uses no clock, no randomness and no I/O: every timestamp and choice is
// in the entry, made by the leader before it proposed it. A business refusal
// (unknown task, stale attempt, already terminal) is a returned value; a
// command that cannot be decoded panics, because replicas that disagree about
// the log are worse than a stopped node. See DESIGN.md beside this file.
package fsm
