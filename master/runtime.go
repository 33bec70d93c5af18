package master

import (
	"context"
	"errors"
	"time"
)

// Runtime is the container runtime the leader scales worker containers
// with. master/docker implements it with the Docker Engine API; tests use
// fakes. Every method may fail (the engine is down, out of resources):
// the scaler retries with backoff.
type Runtime interface {
	// Describe says what the runtime is and what it starts, for /v1/scale.
	Describe(ctx context.Context) (string, error)
	// List returns every worker container this cluster's leaders created
	// (found by label), in any state.
	List(ctx context.Context) ([]Container, error)
	// Create creates and starts a worker container named name whose worker
	// ID is name. A container of that name that already exists is
	// ErrContainerExists: the caller adopts it.
	Create(ctx context.Context, name string) error
	// Start starts an existing, stopped container.
	Start(ctx context.Context, name string) error
	// Remove stops the container (SIGTERM, then SIGKILL after stopTimeout)
	// and removes it. A missing container is success.
	Remove(ctx context.Context, name string, stopTimeout time.Duration) error
}

// Container is a worker container as the runtime reports it.
type Container struct {
	Name    string
	ID      string
	State   string // created, running, restarting, exited, paused, dead, ...
	Created time.Time
}

// Running reports whether the container runs (or is restarting by itself).
func (c Container) Running() bool {
	return c.State == "running" || c.State == "restarting"
}

// ErrContainerExists is returned by Runtime.Create when the name is taken.
var ErrContainerExists = errors.New("container already exists")
