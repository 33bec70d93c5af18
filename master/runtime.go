package master

import (
	"context"
	"errors"
	"strings"
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

// ClusterLister is implemented by runtimes that can also list the worker
// containers of this cluster they did not create, such as the ones docker
// compose starts (found by the cluster label). It is separate from Runtime
// so that a runtime without it still scales: the leader then leaves the
// names of such workers empty in GET /v1/cluster.
type ClusterLister interface {
	// ListCluster returns every worker container of this cluster, managed
	// or not, in any state.
	ListCluster(ctx context.Context) ([]Container, error)
}

// minIDPrefix is the shortest container ID prefix a worker ID may be to be
// matched to a container: Docker's short ID, the default host name of a
// container, which workers take as their ID when none is configured.
const minIDPrefix = 12

// workerNames maps worker IDs to the names of the containers they run in. A
// worker is matched to a container whose name is its ID (a managed worker)
// or whose ID is its ID or starts with it (a worker that took its
// container's host name as ID), when the ID has at least minIDPrefix
// characters. An ID that matches no container, or more than one by prefix,
// is left out: a name is only shown when it is certain.
func workerNames(ids []string, cs []Container) map[string]string {
	out := make(map[string]string)
	for _, id := range ids {
		if id == "" {
			continue
		}
		name, matches := "", 0
		for _, c := range cs {
			if c.Name == id || c.ID == id {
				name, matches = c.Name, 1
				break
			}
			if len(id) >= minIDPrefix && strings.HasPrefix(c.ID, id) {
				name = c.Name
				matches++
			}
		}
		if matches == 1 && name != "" {
			out[id] = name
		}
	}
	return out
}
