// Package membership wraps hashicorp/memberlist: it joins masters and workers
// into one gossip pool, carries each node's role, logical ID, addresses and
// capacity in its metadata, remembers nodes that died or left, and tells its
// owner (without blocking memberlist) when anything changed.
//
// Gossip is a hint, not a record: the Raft log is the record. Masters use the
// pool to learn which workers exist and where the other masters serve HTTP;
// workers use it to find the masters.
package membership

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// Roles a node can have.
const (
	RoleMaster = "master"
	RoleWorker = "worker"
)

// Member states.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

// Meta is the metadata every node gossips. Its JSON encoding must stay under
// memberlist.MetaMaxSize (512 bytes); Start and UpdateMeta refuse more.
type Meta struct {
	Role     string `json:"r"`
	ID       string `json:"id"`           // logical ID (--id), stable across restarts
	HTTP     string `json:"h"`            // advertised HTTP base URL
	Raft     string `json:"ra,omitempty"` // masters: advertised raft address
	Slots    int    `json:"s,omitempty"`  // workers: attempts it runs at once
	Draining bool   `json:"d,omitempty"`  // workers: takes no new attempts
	Started  int64  `json:"t"`            // process start, unix nanoseconds: the newest node of an ID wins
	Version  string `json:"v,omitempty"`  // gantry version
	Cluster  string `json:"c,omitempty"`  // cluster name, informational (Label enforces it)
	Leaving  bool   `json:"l,omitempty"`  // the node is leaving gracefully (others report it as left)
	Proto    int    `json:"p,omitempty"`  // masters: the highest Raft entry format they apply (fsm.Proto)
}

// Member is one node as this process sees it.
type Member struct {
	Name  string // memberlist node name: unique per process start
	Addr  string // gossip address ip:port
	State string // alive, suspect, dead or left
	Since time.Time
	Meta
}

// Config configures a Membership.
type Config struct {
	Name          string   // node name; empty means "<Meta.ID>-<random>", unique per start
	BindAddr      string   // host:port to listen on for gossip (TCP and UDP)
	AdvertiseAddr string   // ip:port others reach us at; empty means BindAddr (resolved to an IP)
	Seeds         []string // host:port of nodes to join; host names allowed
	Label         string   // gossip label: pools with different labels never merge
	SecretKey     []byte   // optional 16, 24 or 32 byte key encrypting gossip
	Meta          Meta
	Logger        hclog.Logger

	ProbeInterval time.Duration // zero means 1s
	ProbeTimeout  time.Duration // zero means 500ms
	SuspicionMult int           // zero means 4
	// SuspicionMaxMult bounds how long a suspicion may last without
	// confirmations from other members, as a multiple of the shortest
	// (SuspicionMult x probe interval); zero means memberlist's 6.
	SuspicionMaxMult int
	// RejoinInterval is how often the seeds are joined again while this node
	// sees fewer members than seeds plus itself (it heals a pool split by a
	// long partition). Zero means 5s.
	RejoinInterval time.Duration
	// ForgetAfter is how long dead and left members are remembered. Zero
	// means 10 minutes.
	ForgetAfter time.Duration
	// WrapTransport, when set, wraps memberlist's network transport (fault
	// injection in tests: cut, delay or drop packets and streams).
	WrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

// Membership is this process's view of the gossip pool. Create it with New,
// start it with Start, stop it with Leave then Shutdown (graceful) or
// Shutdown alone (as a crash looks to others).
type Membership struct {
	cfg    Config
	log    hclog.Logger
	ml     *memberlist.Memberlist
	change chan struct{} // capacity 1: coalesced change notifications

	// mu guards nodes. It is never held while calling into memberlist:
	// memberlist calls the event callbacks, which take mu, under its own
	// node lock, so the opposite order would deadlock.
	mu    sync.Mutex
	nodes map[string]Member // name -> last known state, copied in the callbacks

	metaMu sync.Mutex
	meta   Meta // guarded by metaMu; what NodeMeta returns

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// New returns a Membership; it starts nothing.
func New(cfg Config) *Membership {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.RejoinInterval == 0 {
		cfg.RejoinInterval = 5 * time.Second
	}
	if cfg.ForgetAfter == 0 {
		cfg.ForgetAfter = 10 * time.Minute
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Meta.ID + "-" + randomSuffix()
	}
	if cfg.Meta.Started == 0 {
		cfg.Meta.Started = time.Now().UnixNano()
	}
	return &Membership{
		cfg:    cfg,
		log:    cfg.Logger.Named("gossip"),
		change: make(chan struct{}, 1),
		meta:   cfg.Meta,
		nodes:  make(map[string]Member),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start creates the memberlist, joins the seeds (failing to reach any is
// not an error: the rejoin loop keeps trying) and starts the rejoin loop.
func (m *Membership) Start() error {
	if _, err := encodeMeta(m.cfg.Meta); err != nil {
		return err
	}
	host, port, err := splitHostPort(m.cfg.BindAddr)
	if err != nil {
		return fmt.Errorf("gossip bind address %q: %w", m.cfg.BindAddr, err)
	}
	advHost, advPort := host, port
	if m.cfg.AdvertiseAddr != "" {
		advHost, advPort, err = splitHostPort(m.cfg.AdvertiseAddr)
		if err != nil {
			return fmt.Errorf("gossip advertise address %q: %w", m.cfg.AdvertiseAddr, err)
		}
	}
	advIP, err := ResolveAdvertiseIP(advHost)
	if err != nil {
		return fmt.Errorf("gossip advertise address: %w", err)
	}

	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.Name
	c.BindAddr = host
	c.BindPort = port
	c.AdvertiseAddr = advIP
	c.AdvertisePort = advPort
	c.Label = m.cfg.Label
	if len(m.cfg.SecretKey) > 0 {
		c.SecretKey = m.cfg.SecretKey
	}
	if m.cfg.ProbeInterval > 0 {
		c.ProbeInterval = m.cfg.ProbeInterval
	}
	if m.cfg.ProbeTimeout > 0 {
		c.ProbeTimeout = m.cfg.ProbeTimeout
	}
	if m.cfg.SuspicionMult > 0 {
		c.SuspicionMult = m.cfg.SuspicionMult
	}
	if m.cfg.SuspicionMaxMult > 0 {
		c.SuspicionMaxTimeoutMult = m.cfg.SuspicionMaxMult
	}
	c.Delegate = (*delegate)(m)
	c.Events = (*events)(m)
	c.Logger = m.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	c.LogOutput = nil
	if m.cfg.WrapTransport != nil {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: port, Logger: c.Logger})
		if err != nil {
			return fmt.Errorf("gossip: %w", err)
		}
		c.Transport = m.cfg.WrapTransport(nt)
	}
	ml, err := memberlist.Create(c)
	if err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	m.ml = ml
	if advPort == 0 {
		// An ephemeral port: advertise what was bound.
		m.log.Debug("gossip bound", "addr", ml.LocalNode().Address())
	}
	m.join()
	go m.rejoinLoop()
	return nil
}

// ResolveAdvertiseIP turns host into an IP that others can reach: an IP is
// kept; a name is resolved; an empty or unspecified address becomes the first
// non-loopback IPv4 address of this machine (or 127.0.0.1 when it has none).
func ResolveAdvertiseIP(host string) (string, error) {
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return ip.String(), nil
	}
	if host != "" && net.ParseIP(host) == nil {
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return "", fmt.Errorf("cannot resolve %q to an IP: %v", host, err)
		}
		for _, ip := range ips {
			if ip.To4() != nil {
				return ip.String(), nil
			}
		}
		return ips[0].String(), nil
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return ipn.IP.String(), nil
			}
		}
	}
	return "127.0.0.1", nil
}

func splitHostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return h, port, nil
}

// LocalAddr returns the gossip address this node advertises.
func (m *Membership) LocalAddr() string {
	if m.ml == nil {
		return ""
	}
	return m.ml.LocalNode().Address()
}

// Name returns this node's memberlist name.
func (m *Membership) Name() string { return m.cfg.Name }

func (m *Membership) join() {
	if len(m.cfg.Seeds) == 0 {
		return
	}
	n, err := m.ml.Join(m.cfg.Seeds)
	if err != nil && n == 0 {
		m.log.Debug("join failed; will retry", "seeds", m.cfg.Seeds, "error", err)
		return
	}
	m.log.Debug("joined", "contacted", n)
}

func (m *Membership) rejoinLoop() {
	defer close(m.done)
	t := time.NewTicker(m.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			if m.ml.NumMembers() < len(m.cfg.Seeds)+1 {
				m.join()
			}
			m.forget()
		}
	}
}

// forget drops dead and left members older than ForgetAfter.
func (m *Membership) forget() {
	cutoff := time.Now().Add(-m.cfg.ForgetAfter)
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, n := range m.nodes {
		if n.State != StateAlive && n.Since.Before(cutoff) {
			delete(m.nodes, name)
		}
	}
}

// Changed returns a channel that receives (coalesced) whenever a member
// joins, leaves, dies, is suspected or changes its metadata.
func (m *Membership) Changed() <-chan struct{} { return m.change }

func (m *Membership) kick() {
	select {
	case m.change <- struct{}{}:
	default:
	}
}

// Members returns every member this node knows, sorted by name: alive ones,
// and dead or left ones it still remembers (ForgetAfter). The states come
// from memberlist's join, update and leave notifications; memberlist does not
// report suspicion through its API, so no member is ever "suspect" here.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	out := make([]Member, 0, len(m.nodes))
	for _, n := range m.nodes {
		out = append(out, n)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// UpdateMeta changes this node's metadata and gossips it.
func (m *Membership) UpdateMeta(update func(*Meta)) error {
	m.metaMu.Lock()
	next := m.meta
	update(&next)
	if _, err := encodeMeta(next); err != nil {
		m.metaMu.Unlock()
		return err
	}
	m.meta = next
	m.metaMu.Unlock()
	if m.ml == nil {
		return nil
	}
	return m.ml.UpdateNode(2 * time.Second)
}

// LocalMeta returns this node's current metadata.
func (m *Membership) LocalMeta() Meta {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	return m.meta
}

// Leave tells the pool this node is leaving and waits up to timeout for the
// message to spread. The node keeps answering gossip until Shutdown.
//
// memberlist v0.7.0 does not tell others whether a node died or left (its
// Node.State is never updated), so the intent travels in the metadata first:
// others see Leaving and report the node as left rather than dead.
func (m *Membership) Leave(timeout time.Duration) error {
	if m.ml == nil {
		return nil
	}
	select {
	case <-m.stop:
		return errors.New("gossip already shut down")
	default:
	}
	if err := m.UpdateMeta(func(meta *Meta) { meta.Leaving = true }); err != nil {
		m.log.Warn("could not gossip the leave intent", "error", err)
	}
	return m.ml.Leave(timeout)
}

// Shutdown stops gossiping at once; without a Leave first, the others see
// this node die. It is idempotent.
func (m *Membership) Shutdown() error {
	var err error
	m.stopOnce.Do(func() {
		close(m.stop)
		if m.ml == nil {
			close(m.done)
			return
		}
		err = m.ml.Shutdown()
		<-m.done
	})
	return err
}

func encodeMeta(meta Meta) ([]byte, error) {
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("gossip metadata is %d bytes, over the limit of %d: shorten the IDs or addresses", len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (Meta, error) {
	var meta Meta
	if len(b) == 0 {
		return meta, errors.New("no metadata")
	}
	err := json.Unmarshal(b, &meta)
	return meta, err
}

// delegate implements memberlist.Delegate: it serves our metadata.
type delegate Membership

func (d *delegate) NodeMeta(limit int) []byte {
	m := (*Membership)(d)
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	b, err := encodeMeta(m.meta)
	if err != nil || len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// events implements memberlist.EventDelegate. Its callbacks run under
// memberlist's node lock: they copy what they need from the node (the node
// is memberlist's and changes after they return), record it and kick,
// never block.
type events Membership

// record stores a copy of n in the given state.
func (e *events) record(n *memberlist.Node, state string) {
	m := (*Membership)(e)
	meta, err := decodeMeta(n.Meta) // decodes into fresh memory: a copy
	if err != nil {
		return
	}
	if state == StateDead && meta.Leaving {
		state = StateLeft
	}
	mb := Member{Name: n.Name, Addr: n.Address(), State: state, Since: time.Now(), Meta: meta}
	m.mu.Lock()
	if old, ok := m.nodes[n.Name]; ok && old.State == state {
		mb.Since = old.Since
	}
	m.nodes[n.Name] = mb
	m.mu.Unlock()
	m.kick()
}

func (e *events) NotifyJoin(n *memberlist.Node)   { e.record(n, StateAlive) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.record(n, StateAlive) }
func (e *events) NotifyLeave(n *memberlist.Node)  { e.record(n, StateDead) }
