package master

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/fsm"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// Peer is one member of the initial voter set.
type Peer struct {
	ID   string
	Addr string // raft address, host:port; host names allowed
}

// ParsePeers parses "m1=host:7001,m2=host:7002".
func ParsePeers(s string) ([]Peer, error) {
	var out []Peer
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("peer %q: want id=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("peer %q: %v", part, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("peer %q: id %s listed twice", part, id)
		}
		seen[id] = true
		out = append(out, Peer{ID: id, Addr: addr})
	}
	return out, nil
}

// Config configures a master. The zero value of every duration means its
// documented default (see Defaults).
type Config struct {
	ID      string // raft server ID: stable, from configuration
	DataDir string // raft log, stable store and snapshots

	RaftBind      string       // host:port to listen on for raft
	RaftListener  net.Listener // optional: an already bound raft listener (tests)
	RaftAdvertise string       // host:port others dial; names allowed; default RaftBind
	Peers         []Peer       // initial voter set; identical on every initial master

	HTTPAdvertise string // base URL of this master's HTTP API, gossiped to others

	GossipBind      string   // host:port for memberlist
	GossipAdvertise string   // ip:port (a name is resolved once); default GossipBind
	Join            []string // gossip seeds
	Cluster         string   // cluster name: the gossip label
	GossipKey       []byte   // optional gossip encryption key

	Version string
	Logger  hclog.Logger

	// Raft timers.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// Snapshots: taken every SnapshotInterval when SnapshotThreshold entries
	// were appended since the last; TrailingLogs entries are kept after one.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64

	ApplyTimeout time.Duration // how long a proposal may wait to be enqueued in raft

	// Workers.
	WorkerGrace         time.Duration // a new leader waits this long before requeuing anything
	WorkerTimeout       time.Duration // a worker that does not answer for this long is lost
	WorkerCheckInterval time.Duration // how often the leader asks each worker what it runs
	PushTimeout         time.Duration // one push of an attempt to a worker
	RetryBackoff        time.Duration // base of the exponential retry delay of failed attempts
	// NoRetryExitCodes end a task at once when its spec names none. Nil
	// means api.DefaultNoRetryExitCodes (126, 127); empty retries every
	// failure. It travels in each result entry, like RetryBackoff.
	NoRetryExitCodes []int

	// Retention of terminal tasks.
	Retention  time.Duration
	GCInterval time.Duration

	// Gossip failure detection.
	GossipProbeInterval time.Duration
	GossipProbeTimeout  time.Duration
	GossipSuspicionMult int
	// GossipSuspicionMaxMult caps an unconfirmed suspicion at this multiple
	// of the shortest one (memberlist's SuspicionMaxTimeoutMult).
	GossipSuspicionMaxMult int

	HTTPClient *http.Client // for pushes and master-to-master calls; default has keep-alives

	// Fault injection for tests: wrap the raft stream layer and the gossip
	// transport. Nil in production.
	// EntryFormat caps the Raft entry format this master announces and
	// writes (zero: fsm.Proto, everything this code applies). Tests use it
	// to stand in for a master of an older version.
	EntryFormat int

	WrapRaftStream func(raft.StreamLayer) raft.StreamLayer
	WrapGossip     func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport

	// Scaling. Runtime nil means this master never scales workers (and
	// GET /v1/scale says so).
	Runtime           Runtime
	RuntimeNote       string        // why Runtime is nil, for GET /v1/scale
	ScaleInterval     time.Duration // reconcile at least this often
	OrphanGrace       time.Duration // an unaccounted container of this cluster lives this long
	WorkerStopTimeout time.Duration // SIGTERM to SIGKILL when a worker container is removed
}

// Defaults are the documented defaults for every zero field of Config.
//
// The Raft timers and the gossip failure detector are tuned for a LAN or one
// host (make bench, docs/BENCHMARKS.md): a follower notices a dead leader
// after 200-400 ms of silence (raft randomizes the heartbeat timeout between
// one and two times its value) and pre-vote keeps a node that was cut off
// from disrupting the others when it returns; the leader steps down when it
// has not heard from a quorum for the lease. Gossip probes every 300 ms with
// a 200 ms timeout and suspicion multiplier 3 declare a dead worker in one to
// two seconds. On slower or lossy networks raise them together (for example
// 1s/1s/500ms and 1s/500ms/4, hashicorp/raft's and memberlist's own
// defaults).
var Defaults = Config{
	Cluster:             "gantry",
	HeartbeatTimeout:    200 * time.Millisecond,
	ElectionTimeout:     200 * time.Millisecond,
	LeaderLeaseTimeout:  200 * time.Millisecond,
	SnapshotInterval:    30 * time.Second,
	SnapshotThreshold:   8192,
	TrailingLogs:        10240,
	ApplyTimeout:        10 * time.Second,
	WorkerGrace:         5 * time.Second,
	WorkerTimeout:       5 * time.Second,
	WorkerCheckInterval: time.Second,
	PushTimeout:         5 * time.Second,
	RetryBackoff:        time.Second,
	Retention:           24 * time.Hour,
	GCInterval:          time.Minute,
	GossipProbeInterval: 300 * time.Millisecond,
	GossipProbeTimeout:  200 * time.Millisecond,
	GossipSuspicionMult: 3,
	// memberlist starts a suspicion at 6x its shortest time (0.9 s here)
	// and shortens it as other members confirm; in a small pool a
	// confirmation can be late, and a dead worker then took up to 5.4 s to
	// be declared. 3x caps that at 2.7 s.
	GossipSuspicionMaxMult: 3,
	ScaleInterval:          time.Second,
	OrphanGrace:            30 * time.Second,
	WorkerStopTimeout:      30 * time.Second,
}

func (c *Config) setDefaults() {
	d := Defaults
	def := func(v *time.Duration, dv time.Duration) {
		if *v == 0 {
			*v = dv
		}
	}
	if c.Cluster == "" {
		c.Cluster = d.Cluster
	}
	def(&c.HeartbeatTimeout, d.HeartbeatTimeout)
	def(&c.ElectionTimeout, d.ElectionTimeout)
	def(&c.LeaderLeaseTimeout, d.LeaderLeaseTimeout)
	def(&c.SnapshotInterval, d.SnapshotInterval)
	def(&c.ApplyTimeout, d.ApplyTimeout)
	def(&c.WorkerGrace, d.WorkerGrace)
	def(&c.WorkerTimeout, d.WorkerTimeout)
	def(&c.WorkerCheckInterval, d.WorkerCheckInterval)
	def(&c.PushTimeout, d.PushTimeout)
	def(&c.RetryBackoff, d.RetryBackoff)
	if c.NoRetryExitCodes == nil {
		c.NoRetryExitCodes = api.DefaultNoRetryExitCodes
	}
	def(&c.Retention, d.Retention)
	def(&c.GCInterval, d.GCInterval)
	def(&c.GossipProbeInterval, d.GossipProbeInterval)
	def(&c.GossipProbeTimeout, d.GossipProbeTimeout)
	def(&c.ScaleInterval, d.ScaleInterval)
	def(&c.OrphanGrace, d.OrphanGrace)
	def(&c.WorkerStopTimeout, d.WorkerStopTimeout)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.GossipSuspicionMaxMult == 0 {
		c.GossipSuspicionMaxMult = d.GossipSuspicionMaxMult
	}
	if c.GossipSuspicionMult == 0 {
		c.GossipSuspicionMult = d.GossipSuspicionMult
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		}}
	}
	if c.HTTPAdvertise != "" && !strings.Contains(c.HTTPAdvertise, "://") {
		c.HTTPAdvertise = "http://" + c.HTTPAdvertise
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.ID == "" {
		errs = append(errs, errors.New("id is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir is required"))
	}
	if c.RaftBind == "" && c.RaftListener == nil {
		errs = append(errs, errors.New("raft address is required"))
	}
	if c.HTTPAdvertise == "" {
		errs = append(errs, errors.New("http advertise address is required"))
	}
	if c.GossipBind == "" {
		errs = append(errs, errors.New("gossip address is required"))
	}
	if len(c.Peers) > 0 {
		found := false
		for _, p := range c.Peers {
			found = found || p.ID == c.ID
		}
		if !found {
			errs = append(errs, fmt.Errorf("peers must include this master's id %q", c.ID))
		}
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		errs = append(errs, errors.New("election timeout must be at least the heartbeat timeout"))
	}
	for _, code := range c.NoRetryExitCodes {
		if code < 1 || code > 255 {
			errs = append(errs, fmt.Errorf("no-retry exit code %d is not an exit code of a failure (1 to 255)", code))
		}
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		errs = append(errs, errors.New("leader lease timeout must not exceed the heartbeat timeout"))
	}
	return errors.Join(errs...)
}

// entryFormat is the entry format this master announces and writes.
func (c *Config) entryFormat() int {
	if c.EntryFormat > 0 && c.EntryFormat < fsm.Proto {
		return c.EntryFormat
	}
	return fsm.Proto
}
