package test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// dialBlock is how long a dial into a cut blocks before it fails (bounded
// by the dial's own timeout).
const dialBlock = 250 * time.Millisecond

// errCut is returned by operations the fabric refuses.
var errCut = errors.New("fabric: connection cut")

// Fabric is a fault-injecting network for the in-process cluster (see
// Options.Fabric). The zero value is not usable; see NewFabric.
//
// Every node of a test cluster is registered with the Fabric under its ID,
// with every address it listens on (raft, HTTP, gossip). The nodes reach
// each other only through the fabric's wrappers:
//
//   - raft: Fabric.RaftStream wraps a master's raft.StreamLayer;
//   - gossip: Fabric.Gossip wraps a node's memberlist transport;
//   - HTTP between nodes (forwarding to the leader, pushes to workers,
//     worker polls, results from workers): Fabric.HTTPClient gives each node
//     an http.Client whose dials go through the fabric.
//
// A rule is directed: a->b names the traffic a sends to b. Cut (both ways),
// CutOneWay, Isolate, Delay and Drop add rules; HealAll removes them all.
//
// How the rules are enforced:
//
//   - Connections (raft, gossip streams, HTTP) are enforced at the dialing
//     end only, which is enough because every node dials through the fabric
//     and so every connection between two registered nodes has exactly one
//     wrapped end, and that end knows both node IDs (the dialed address is
//     looked up in the registry). A dial from a to b fails (after a short
//     block, like a dial into a black hole) while a->b is cut: the handshake
//     is a->b traffic. On a wrapped connection a Write (a->b data) fails and
//     closes the connection while a->b is cut, and a Read that returns data
//     (b->a data) fails and closes it while b->a is cut. When a cut is added,
//     every wrapped connection between the two nodes is closed at once, so no
//     established connection (raft's pooled ones, HTTP keep-alives) outlives
//     a cut and blocked readers wake up. Under a one-way cut a->b, b can still
//     dial a and deliver a request, but a's answer is lost: a message-level
//     model, so that a leader cut one way still hears a higher term.
//   - Gossip packets (UDP) are dropped or delayed by the sender's wrapper,
//     which knows the destination address. Delayed packets are copied and
//     sent later from a timer.
//   - Delay d on a->b: every Write from a to b and every packet waits d; a
//     Read that brings b->a data waits the b->a delay. Drop p on a->b: a
//     packet is lost and a dial fails with probability p, and a Write resets
//     the connection with probability p/10 (TCP would retransmit a lost
//     segment; a reset is a harsher, simpler stand-in).
//
// Honest limits: this is not a packet-level network. Data already in a
// socket buffer when a cut starts may still be read by the unwrapped end
// (the cut closes the wrapped end, which the other end then sees as EOF or
// a reset, as it would after a kernel timeout). Delays serialize writes on
// one connection (no bandwidth model, no reordering within a connection;
// delayed UDP packets can reorder). Traffic from or to an unregistered
// address, notably the test's own clients (the chaos workload, the
// checker), is never faulted: clients always reach every master. Loopback
// connections a node makes to itself are not faulted either. A cut does not
// affect a process's local disk or clock; crashes are the harness's
// KillMaster/KillWorker.
type Fabric struct {
	mu    sync.Mutex
	nodes map[string]bool          // registered node IDs
	addrs map[string]string        // host:port -> node ID
	cut   map[link]bool            // directed: traffic from->to is dropped
	delay map[link]time.Duration   // directed
	drop  map[link]float64         // directed: probability
	conns map[*fabricConn]struct{} // open wrapped connections
}

// link is a direction between two nodes.
type link struct{ from, to string }

// NewFabric returns a fabric with no nodes and no faults.
func NewFabric() *Fabric {
	return &Fabric{
		nodes: map[string]bool{},
		addrs: map[string]string{},
		cut:   map[link]bool{},
		delay: map[link]time.Duration{},
		drop:  map[link]float64{},
		conns: map[*fabricConn]struct{}{},
	}
}

// Register names the node listening on addrs (host:port each).
func (f *Fabric) Register(id string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[id] = true
	for _, a := range addrs {
		f.addrs[a] = id
	}
}

// Nodes returns the registered node IDs, sorted.
func (f *Fabric) Nodes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.nodes))
	for id := range f.nodes {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// NodeOf returns the node listening on addr, or "" when none is registered.
func (f *Fabric) NodeOf(addr string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addrs[addr]
}

// Cut drops all traffic between a and b, both ways.
func (f *Fabric) Cut(a, b string) {
	f.mu.Lock()
	f.cut[link{a, b}] = true
	f.cut[link{b, a}] = true
	victims := f.connsLocked(func(l link) bool { return l == link{a, b} || l == link{b, a} })
	f.mu.Unlock()
	closeAll(victims)
}

// CutOneWay drops the traffic from a to b; b's traffic still reaches a.
func (f *Fabric) CutOneWay(from, to string) {
	f.mu.Lock()
	f.cut[link{from, to}] = true
	victims := f.connsLocked(func(l link) bool { return l == link{from, to} || l == link{to, from} })
	f.mu.Unlock()
	closeAll(victims)
}

// HealOneWay removes the cut of the traffic from a to b (CutOneWay).
func (f *Fabric) HealOneWay(from, to string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.cut, link{from, to})
}

// Isolate cuts id from every other registered node, both ways.
func (f *Fabric) Isolate(id string) {
	f.mu.Lock()
	for o := range f.nodes {
		if o != id {
			f.cut[link{id, o}] = true
			f.cut[link{o, id}] = true
		}
	}
	victims := f.connsLocked(func(l link) bool { return l.from == id || l.to == id })
	f.mu.Unlock()
	closeAll(victims)
}

// Delay makes the traffic between a and b, both ways, wait d.
func (f *Fabric) Delay(a, b string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay[link{a, b}] = d
	f.delay[link{b, a}] = d
}

// Drop loses a fraction p of the traffic between a and b, both ways.
func (f *Fabric) Drop(a, b string, p float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drop[link{a, b}] = p
	f.drop[link{b, a}] = p
}

// HealAll removes every cut, delay and drop.
func (f *Fabric) HealAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.cut)
	clear(f.delay)
	clear(f.drop)
}

// Blocked reports whether traffic from a to b is cut now.
func (f *Fabric) Blocked(from, to string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cut[link{from, to}]
}

// connsLocked returns the open connections whose link (either direction)
// matches.
func (f *Fabric) connsLocked(match func(link) bool) []*fabricConn {
	var out []*fabricConn
	for c := range f.conns {
		if match(link{c.self, c.peer}) {
			out = append(out, c)
		}
	}
	return out
}

func closeAll(cs []*fabricConn) {
	for _, c := range cs {
		_ = c.Close()
	}
}

// active reports whether the fabric has a say on traffic from -> to: both
// are registered, distinct nodes.
func active(from, to string) bool { return from != "" && to != "" && from != to }

// verdict is what the fabric does to one message from -> to.
type verdict struct {
	cut   bool
	drop  bool
	delay time.Duration
}

// judge decides the fate of one message from -> to; p scales the drop
// probability.
func (f *Fabric) judge(from, to string, p float64) verdict {
	if !active(from, to) {
		return verdict{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	l := link{from, to}
	v := verdict{cut: f.cut[l], delay: f.delay[l]}
	if q := f.drop[l] * p; q > 0 && rand.Float64() < q {
		v.drop = true
	}
	return v
}

// dial checks a dial from -> to: it blocks and fails on a cut, fails on a
// drop, waits out a delay.
func (f *Fabric) dial(ctx context.Context, from, to string) error {
	v := f.judge(from, to, 1)
	switch {
	case v.cut:
		t := time.NewTimer(dialBlock)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return fmt.Errorf("dial %s -> %s: %w", from, to, errCut)
	case v.drop:
		return fmt.Errorf("dial %s -> %s: fabric: connection dropped", from, to)
	}
	return sleepCtx(ctx, v.delay)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// wrap registers an established connection from self to peer.
func (f *Fabric) wrap(c net.Conn, self, peer string) net.Conn {
	if !active(self, peer) {
		return c
	}
	fc := &fabricConn{Conn: c, f: f, self: self, peer: peer}
	f.mu.Lock()
	f.conns[fc] = struct{}{}
	f.mu.Unlock()
	return fc
}

// fabricConn is the dialing end of a connection between two nodes.
type fabricConn struct {
	net.Conn
	f          *Fabric
	self, peer string
	once       sync.Once
}

// Write sends self->peer data.
func (c *fabricConn) Write(b []byte) (int, error) {
	v := c.f.judge(c.self, c.peer, 0.1)
	if v.delay > 0 {
		time.Sleep(v.delay)
		v.cut = c.f.Blocked(c.self, c.peer)
	}
	if v.cut || v.drop {
		_ = c.Close()
		return 0, fmt.Errorf("write %s -> %s: %w", c.self, c.peer, errCut)
	}
	return c.Conn.Write(b)
}

// Read receives peer->self data.
func (c *fabricConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n == 0 {
		return n, err
	}
	v := c.f.judge(c.peer, c.self, 0)
	if v.delay > 0 {
		time.Sleep(v.delay)
		v.cut = c.f.Blocked(c.peer, c.self)
	}
	if v.cut {
		_ = c.Close()
		return 0, fmt.Errorf("read %s <- %s: %w", c.self, c.peer, errCut)
	}
	return n, err
}

// Close closes the connection and forgets it.
func (c *fabricConn) Close() error {
	var err error
	c.once.Do(func() {
		c.f.mu.Lock()
		delete(c.f.conns, c)
		c.f.mu.Unlock()
		err = c.Conn.Close()
	})
	return err
}

// RaftStream returns a wrapper for the raft stream layer of master self
// (for master.Config.WrapRaftStream).
func (f *Fabric) RaftStream(self string) func(raft.StreamLayer) raft.StreamLayer {
	return func(s raft.StreamLayer) raft.StreamLayer { return &fabricStream{StreamLayer: s, f: f, self: self} }
}

type fabricStream struct {
	raft.StreamLayer
	f    *Fabric
	self string
}

// Dial implements raft.StreamLayer. Accepted connections are not wrapped:
// their dialing end is.
func (s *fabricStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	peer := s.f.NodeOf(string(address))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := s.f.dial(ctx, s.self, peer); err != nil {
		return nil, err
	}
	c, err := s.StreamLayer.Dial(address, timeout)
	if err != nil {
		return nil, err
	}
	return s.f.wrap(c, s.self, peer), nil
}

// Gossip returns a wrapper for the memberlist transport of node self (for
// master.Config.WrapGossip and worker.Config.WrapGossip).
func (f *Fabric) Gossip(self string) func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
	return func(t memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
		return &fabricGossip{NodeAwareTransport: t, f: f, self: self}
	}
}

type fabricGossip struct {
	memberlist.NodeAwareTransport
	f    *Fabric
	self string
}

// WriteTo implements memberlist.Transport.
func (g *fabricGossip) WriteTo(b []byte, addr string) (time.Time, error) {
	return g.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport: a cut or dropped
// packet vanishes silently, as UDP would; a delayed one is sent later.
func (g *fabricGossip) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	v := g.f.judge(g.self, g.f.NodeOf(a.Addr), 1)
	switch {
	case v.cut || v.drop:
		return time.Now(), nil
	case v.delay > 0:
		buf := append([]byte(nil), b...)
		time.AfterFunc(v.delay, func() {
			if !g.f.Blocked(g.self, g.f.NodeOf(a.Addr)) {
				_, _ = g.NodeAwareTransport.WriteToAddress(buf, a)
			}
		})
		return time.Now(), nil
	}
	return g.NodeAwareTransport.WriteToAddress(b, a)
}

// DialTimeout implements memberlist.Transport.
func (g *fabricGossip) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return g.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (g *fabricGossip) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	peer := g.f.NodeOf(a.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := g.f.dial(ctx, g.self, peer); err != nil {
		return nil, err
	}
	c, err := g.NodeAwareTransport.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	return g.f.wrap(c, g.self, peer), nil
}

// DialContext returns a dial function for node self's outgoing TCP
// connections.
func (f *Fabric) DialContext(self string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		peer := f.NodeOf(addr)
		if err := f.dial(ctx, self, peer); err != nil {
			return nil, err
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return f.wrap(c, self, peer), nil
	}
}

// HTTPClient returns the HTTP client of node self: the production default
// (master.Config) with its dials going through the fabric.
func (f *Fabric) HTTPClient(self string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         f.DialContext(self),
	}}
}
