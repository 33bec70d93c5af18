package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gantryhq/gantry/fsm"
	"github.com/gantryhq/gantry/membership"
	"github.com/gantryhq/gantry/transport"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// Master is one gantry master: a Raft replica of the task state, a member of
// the gossip pool and, while it leads, the dispatcher, failure detector and
// garbage collector of the cluster.
//
// New constructs; Start opens the data directory and starts raft and gossip;
// Shutdown (graceful: leadership transfer, gossip leave) or Kill (as a crash)
// stops it. Both are idempotent.
type Master struct {
	cfg Config
	log hclog.Logger

	fsm     *fsm.FSM
	raft    *raft.Raft
	trans   *raft.NetworkTransport
	store   *guardedStore
	gossip  *membership.Membership
	workers *transport.WorkerClient
	peers   *transport.Client // to other masters, one address at a time

	metrics *metrics
	submits *batcher[submitItem, fsm.SubmitOutcome]
	results *batcher[resultItem, error]

	notifyCh    chan bool // raft's leadership notifications; buffered and always drained
	leaderWatch *leaderWatch

	mu     sync.Mutex
	leader *leaderState // non-nil while this node is the established leader

	// The newest entry format every voter applies, and when it was checked
	// (votersFormat).
	formatMu    sync.Mutex
	formatLevel int
	formatAt    time.Time
	formatSeen  map[string]int // voter ID -> the format it last gossiped

	// Kicks fanned out from gossip changes, one per consumer.
	gossipKick chan struct{}

	stop     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
	started  bool
}

// New returns a master for cfg; it starts nothing.
func New(cfg Config) (*Master, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Master{
		cfg:         cfg,
		log:         cfg.Logger,
		fsm:         fsm.New(),
		notifyCh:    make(chan bool, 16),
		leaderWatch: newLeaderWatch(),
		gossipKick:  make(chan struct{}, 1),
		stop:        make(chan struct{}),
	}
	m.workers = transport.NewWorkerClient(cfg.HTTPClient)
	m.peers = transport.NewClient(nil, transport.WithHTTPClient(cfg.HTTPClient))
	m.metrics = newMetrics(m)
	m.submits = newBatcher(m, maxSubmitBatch, submitInflight, m.buildSubmit, m.splitSubmit)
	m.results = newBatcher(m, maxResultBatch, resultInflight, m.buildResult, m.splitResult)
	return m, nil
}

// FSM returns the state machine (read-only use).
func (m *Master) FSM() *fsm.FSM { return m.fsm }

// ID returns the master's raft ID.
func (m *Master) ID() string { return m.cfg.ID }

// ForwardTimeout is how long a follower should wait for the leader's
// answer to a forwarded request: a leader that can commit answers within
// its apply timeout, and one that cannot loses its lease within a few
// election timeouts and says so. (A leader that is replaced is given up on
// at once: LeaderChanged.)
func (m *Master) ForwardTimeout() time.Duration {
	return m.cfg.ApplyTimeout + 5*m.cfg.ElectionTimeout
}

// Raft returns the raft instance (for tests and diagnostics).
func (m *Master) Raft() *raft.Raft { return m.raft }

// Gossip returns the gossip membership.
func (m *Master) Gossip() *membership.Membership { return m.gossip }

// Start opens the data directory, starts raft (bootstrapping the initial
// voter set when the directory is new) and joins the gossip pool.
func (m *Master) Start() error {
	if err := os.MkdirAll(filepath.Join(m.cfg.DataDir, "snapshots"), 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(m.cfg.DataDir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true},
	})
	if err != nil {
		return fmt.Errorf("open raft store in %s (is another master using it?): %w", m.cfg.DataDir, err)
	}
	store := &guardedStore{s: bolt}
	m.store = store
	logs, err := raft.NewLogCache(512, store)
	if err != nil {
		store.Close()
		return err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(m.cfg.DataDir, "snapshots"), 2, m.log.Named("snapshot"))
	if err != nil {
		store.Close()
		return fmt.Errorf("snapshot store: %w", err)
	}

	ln := m.cfg.RaftListener
	if ln == nil {
		ln, err = net.Listen("tcp", m.cfg.RaftBind)
		if err != nil {
			store.Close()
			return fmt.Errorf("raft listen: %w", err)
		}
	}
	advertise := m.cfg.RaftAdvertise
	if advertise == "" && m.cfg.RaftBind != "" {
		if _, port, _ := net.SplitHostPort(m.cfg.RaftBind); port != "0" {
			advertise = m.cfg.RaftBind
		}
	}
	stream, err := newStreamLayer(ln, advertise)
	if err != nil {
		ln.Close()
		store.Close()
		return err
	}
	var layer raft.StreamLayer = stream
	if m.cfg.WrapRaftStream != nil {
		layer = m.cfg.WrapRaftStream(stream)
	}
	m.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: 4,
		Timeout: 10 * time.Second,
		Logger:  m.log.Named("raft-net"),
	})

	// Gossip first: it is the last thing here that can fail for a reason as
	// mundane as a port in use, and once raft runs, its goroutines may use
	// the store at any moment, so it must not be torn down casually.
	m.gossip = membership.New(membership.Config{
		BindAddr:         m.cfg.GossipBind,
		AdvertiseAddr:    m.cfg.GossipAdvertise,
		Seeds:            m.cfg.Join,
		Label:            m.cfg.Cluster,
		SecretKey:        m.cfg.GossipKey,
		Logger:           m.log,
		ProbeInterval:    m.cfg.GossipProbeInterval,
		ProbeTimeout:     m.cfg.GossipProbeTimeout,
		SuspicionMult:    m.cfg.GossipSuspicionMult,
		SuspicionMaxMult: m.cfg.GossipSuspicionMaxMult,
		WrapTransport:    m.cfg.WrapGossip,
		Meta: membership.Meta{
			Role:    membership.RoleMaster,
			ID:      m.cfg.ID,
			HTTP:    m.cfg.HTTPAdvertise,
			Raft:    string(m.trans.LocalAddr()),
			Version: m.cfg.Version,
			Cluster: m.cfg.Cluster,
			Proto:   m.cfg.entryFormat(),
		},
	})
	if err := m.gossip.Start(); err != nil {
		m.trans.Close()
		store.Close()
		return err
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(m.cfg.ID)
	rc.HeartbeatTimeout = m.cfg.HeartbeatTimeout
	rc.ElectionTimeout = m.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = m.cfg.LeaderLeaseTimeout
	rc.SnapshotInterval = m.cfg.SnapshotInterval
	rc.SnapshotThreshold = m.cfg.SnapshotThreshold
	rc.TrailingLogs = m.cfg.TrailingLogs
	rc.NotifyCh = m.notifyCh
	rc.BatchApplyCh = true
	rc.Logger = m.log.Named("raft")

	existing, err := raft.HasExistingState(logs, store, snaps)
	if err != nil {
		_ = m.gossip.Shutdown()
		m.trans.Close()
		store.Close()
		return fmt.Errorf("read raft state: %w", err)
	}
	r, err := raft.NewRaft(rc, m.fsm, logs, store, snaps, m.trans)
	if err != nil {
		_ = m.gossip.Shutdown()
		m.trans.Close()
		store.Close()
		return fmt.Errorf("start raft: %w", err)
	}
	m.raft = r
	if !existing && len(m.cfg.Peers) > 0 {
		var conf raft.Configuration
		for _, p := range m.cfg.Peers {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr)})
		}
		if err := r.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			m.log.Error("bootstrap failed", "error", err)
		} else if err == nil {
			m.log.Info("bootstrapped the cluster", "voters", len(conf.Servers))
		}
	}
	m.started = true
	m.wg.Add(5)
	go m.monitorLeadership()
	go m.watchLeader(r)
	go m.fanOutGossip()
	go m.submits.run(m.stop, &m.wg)
	go m.results.run(m.stop, &m.wg)
	m.log.Info("master started", "id", m.cfg.ID, "raft", m.trans.LocalAddr(), "gossip", m.gossip.LocalAddr(), "http", m.cfg.HTTPAdvertise)
	return nil
}

// fanOutGossip forwards gossip change notifications to the leader's loops.
func (m *Master) fanOutGossip() {
	defer m.wg.Done()
	for {
		select {
		case <-m.stop:
			return
		case <-m.gossip.Changed():
			select {
			case m.gossipKick <- struct{}{}:
			default:
			}
		}
	}
}

// Shutdown stops the master gracefully: a leader first hands leadership to
// another voter, then the node leaves the gossip pool and stops raft.
func (m *Master) Shutdown() error {
	return m.close(true)
}

// Kill stops the master the way a crash would, as far as the others can
// tell: no leadership transfer and no gossip leave.
func (m *Master) Kill() error {
	return m.close(false)
}

func (m *Master) close(graceful bool) error {
	var err error
	m.stopOnce.Do(func() {
		if !m.started {
			close(m.stop)
			return
		}
		if graceful && m.raft.State() == raft.Leader {
			m.log.Info("transferring leadership before shutdown")
			if terr := m.raft.LeadershipTransfer().Error(); terr != nil {
				m.log.Warn("leadership transfer failed", "error", terr)
			}
		}
		if graceful {
			if lerr := m.gossip.Leave(2 * time.Second); lerr != nil {
				m.log.Warn("gossip leave failed", "error", lerr)
			}
		}
		close(m.stop)
		m.wg.Wait() // the leader loop has revoked leadership by now
		if serr := m.raft.Shutdown().Error(); serr != nil {
			err = serr
		}
		_ = m.gossip.Shutdown()
		_ = m.trans.Close()
		if cerr := m.store.Close(); cerr != nil && err == nil {
			err = cerr
		}
		m.log.Info("master stopped", "graceful", graceful)
	})
	return err
}
