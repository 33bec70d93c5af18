// Package docker is the only importer of the Docker SDK in gantry. It
// implements master.Runtime: the leader starts and removes worker
// containers through the Docker Engine API with it.
//
// Workers are started from the leader's own image (by ID, so no registry is
// needed) on the leader's own network, both found by inspecting the
// container the master runs in (located through /proc/self/mountinfo);
// Config.Image and Config.Network override them. Every container carries the
// labels io.gantry.cluster, io.gantry.role=worker and io.gantry.managed=true,
// which is how List finds them and how `make down` removes them. ListCluster
// also finds the workers compose started (io.gantry.managed=false), so the
// leader can show every worker by its container name.
package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/gantryhq/gantry/master"
)

// Labels every managed worker container carries.
const (
	LabelCluster = "io.gantry.cluster"
	LabelRole    = "io.gantry.role"
	LabelManaged = "io.gantry.managed"
)

// WorkerPort is the port a managed worker serves its API on, inside its
// container; GossipPort its gossip port.
const (
	WorkerPort = 8090
	GossipPort = 7946
)

// Config configures the runtime.
type Config struct {
	Cluster string   // cluster name: the io.gantry.cluster label and the name prefix
	Image   string   // image for workers; empty: the image of the container this master runs in
	Network string   // network for workers; empty: the network of this master's container
	Join    []string // gossip seeds the workers join (the masters)
	Slots   int      // --slots of each worker; 0 lets the worker use its CPU count
	Env     []string // extra environment for the workers (GANTRY_GOSSIP_KEY=..., GANTRY_LOG_LEVEL=...)
	Volumes []string // mounts for the workers, docker's -v syntax: "name:/path" or "name:/path:ro"
}

// Runtime talks to the Docker Engine. It is safe for concurrent use.
type Runtime struct {
	cfg Config
	cli *client.Client

	mu       sync.Mutex
	image    string // resolved image ID, guarded by mu
	network  string // resolved network, guarded by mu
	resolved bool   // guarded by mu
}

var (
	_ master.Runtime       = (*Runtime)(nil)
	_ master.ClusterLister = (*Runtime)(nil)
)

// New returns a runtime using the environment's Docker settings
// (DOCKER_HOST etc., default the local socket) with API version
// negotiation. It does not contact the engine.
func New(cfg Config) (*Runtime, error) {
	if cfg.Cluster == "" {
		return nil, errors.New("docker runtime: cluster name is required")
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return &Runtime{cfg: cfg, cli: cli}, nil
}

// Close releases the client.
func (r *Runtime) Close() error { return r.cli.Close() }

var containerIDRe = regexp.MustCompile(`/containers/([0-9a-f]{64})/`)

// SelfContainerID finds the ID of the container this process runs in from
// /proc/self/mountinfo (Docker bind-mounts /etc/hostname and friends from
// /var/lib/docker/containers/<id>/), or "" outside a container.
func SelfContainerID() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := containerIDRe.FindStringSubmatch(sc.Text()); m != nil {
			return m[1]
		}
	}
	return ""
}

// resolve finds the image and network once (retried until it works).
func (r *Runtime) resolve(ctx context.Context) (image, netw string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.resolved {
		return r.image, r.network, nil
	}
	image, netw = r.cfg.Image, r.cfg.Network
	if image == "" || netw == "" {
		id := SelfContainerID()
		if id == "" {
			return "", "", errors.New("this master does not run in a container: set --worker-image and --worker-network")
		}
		insp, err := r.cli.ContainerInspect(ctx, id)
		if err != nil {
			return "", "", fmt.Errorf("inspect own container %.12s: %w", id, err)
		}
		if image == "" {
			image = insp.Image
		}
		if netw == "" && insp.NetworkSettings != nil {
			var names []string
			for n := range insp.NetworkSettings.Networks {
				names = append(names, n)
			}
			sort.Strings(names)
			if len(names) > 0 {
				netw = names[0]
			}
		}
		if netw == "" {
			return "", "", fmt.Errorf("own container %.12s has no network: set --worker-network", id)
		}
	}
	r.image, r.network, r.resolved = image, netw, true
	return image, netw, nil
}

// Describe implements master.Runtime.
func (r *Runtime) Describe(ctx context.Context) (string, error) {
	image, netw, err := r.resolve(ctx)
	if err != nil {
		return "", err
	}
	v, err := r.cli.ServerVersion(ctx)
	if err != nil {
		return "", fmt.Errorf("docker engine: %w", err)
	}
	short := strings.TrimPrefix(image, "sha256:")
	if len(short) > 12 && strings.HasPrefix(image, "sha256:") {
		short = short[:12]
	}
	return fmt.Sprintf("docker %s (API %s), image %s, network %s", v.Version, r.cli.ClientVersion(), short, netw), nil
}

// List implements master.Runtime.
func (r *Runtime) List(ctx context.Context) ([]master.Container, error) {
	return r.list(ctx, filters.NewArgs(
		filters.Arg("label", LabelCluster+"="+r.cfg.Cluster),
		filters.Arg("label", LabelManaged+"=true"),
	))
}

// ListCluster implements master.ClusterLister: every container labelled as
// a worker of this cluster, the managed ones and those compose (or anyone
// else) started.
func (r *Runtime) ListCluster(ctx context.Context) ([]master.Container, error) {
	return r.list(ctx, filters.NewArgs(
		filters.Arg("label", LabelCluster+"="+r.cfg.Cluster),
		filters.Arg("label", LabelRole+"=worker"),
	))
}

// list returns the containers, in any state, that match f.
func (r *Runtime) list(ctx context.Context, f filters.Args) ([]master.Container, error) {
	list, err := r.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]master.Container, 0, len(list))
	for _, c := range list {
		name := c.ID
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, master.Container{Name: name, ID: c.ID, State: string(c.State), Created: time.Unix(c.Created, 0)})
	}
	return out, nil
}

// Create implements master.Runtime.
func (r *Runtime) Create(ctx context.Context, name string) error {
	image, netw, err := r.resolve(ctx)
	if err != nil {
		return err
	}
	env := []string{
		"GANTRY_ID=" + name,
		"GANTRY_HTTP=0.0.0.0:" + strconv.Itoa(WorkerPort),
		"GANTRY_ADVERTISE_HTTP=http://" + name + ":" + strconv.Itoa(WorkerPort),
		"GANTRY_GOSSIP=0.0.0.0:" + strconv.Itoa(GossipPort),
		"GANTRY_JOIN=" + strings.Join(r.cfg.Join, ","),
		"GANTRY_CLUSTER=" + r.cfg.Cluster,
	}
	if r.cfg.Slots > 0 {
		env = append(env, "GANTRY_SLOTS="+strconv.Itoa(r.cfg.Slots))
	}
	env = append(env, r.cfg.Env...)
	cfg := &container.Config{
		Image:    image,
		Hostname: name,
		Cmd:      []string{"worker"},
		Env:      env,
		Labels: map[string]string{
			LabelCluster: r.cfg.Cluster,
			LabelRole:    "worker",
			LabelManaged: "true",
		},
		Healthcheck: &container.HealthConfig{
			Test:     []string{"CMD", "/gantry", "health", "--addr", "http://127.0.0.1:" + strconv.Itoa(WorkerPort)},
			Interval: 5 * time.Second, Timeout: 3 * time.Second, Retries: 3, StartPeriod: 5 * time.Second,
		},
	}
	host := &container.HostConfig{RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}, Binds: r.cfg.Volumes}
	nets := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netw: {Aliases: []string{name}}}}
	if _, err := r.cli.ContainerCreate(ctx, cfg, host, nets, nil, name); err != nil {
		if cerrdefs.IsConflict(err) {
			return r.adoptable(ctx, name)
		}
		return fmt.Errorf("create %s: %w", name, err)
	}
	if err := r.cli.ContainerStart(ctx, name, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	return nil
}

// adoptable returns master.ErrContainerExists when the container holding
// name is one of this cluster's managed workers (an earlier leader created
// it), and an error refusing it otherwise: a name taken by anything else is
// never adopted.
func (r *Runtime) adoptable(ctx context.Context, name string) error {
	insp, err := r.cli.ContainerInspect(ctx, name)
	if err != nil {
		return fmt.Errorf("create %s: the name is taken and the container cannot be inspected: %w", name, err)
	}
	if insp.Config != nil && insp.Config.Labels[LabelCluster] == r.cfg.Cluster && insp.Config.Labels[LabelManaged] == "true" {
		return master.ErrContainerExists
	}
	return fmt.Errorf("create %s: the name is taken by a container that is not a managed worker of cluster %q; not adopting it", name, r.cfg.Cluster)
}

// Start implements master.Runtime.
func (r *Runtime) Start(ctx context.Context, name string) error {
	if err := r.cli.ContainerStart(ctx, name, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	return nil
}

// Remove implements master.Runtime.
func (r *Runtime) Remove(ctx context.Context, name string, stopTimeout time.Duration) error {
	secs := int(stopTimeout.Seconds())
	if err := r.cli.ContainerStop(ctx, name, container.StopOptions{Timeout: &secs}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if err := r.cli.ContainerRemove(ctx, name, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}
