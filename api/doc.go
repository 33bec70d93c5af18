// Package api is gantry's shared vocabulary: the task, worker and cluster
// types that travel over HTTP and through the Raft log, the limits that bound
// every client input, input validation, and the sentinel errors that map to
// HTTP status codes.
//
// It imports only the standard library so that every other package (and any
// external Go client) can depend on it without pulling in raft, memberlist or
// the Docker SDK.
package api
