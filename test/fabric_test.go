package test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gantryhq/gantry/transport"
	"github.com/hashicorp/memberlist"
)

// fabEcho serves on ln: every line received is sent to got and echoed back.
func fabEcho(t *testing.T, ln net.Listener, got chan<- string) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					select {
					case got <- strings.TrimSpace(line):
					default:
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// fabListen returns a loopback listener registered in f as node id.
func fabListen(t *testing.T, f *Fabric, id string, got chan<- string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.Register(id, ln.Addr().String())
	fabEcho(t, ln, got)
	return ln
}

// fabRoundTrip sends a line on c and reads the echo.
func fabRoundTrip(c net.Conn, line string) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return err
	}
	back, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(back) != line {
		return errors.New("echo mismatch: " + back)
	}
	return nil
}

func fabDial(t *testing.T, f *Fabric, self string, to net.Listener) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return f.DialContext(self)(ctx, "tcp", to.Addr().String())
}

func TestFabric_ConnectionsCutOneWayAndHeal(t *testing.T) {
	f := NewFabric()
	gotA, gotB := make(chan string, 16), make(chan string, 16)
	lnA := fabListen(t, f, "a", gotA)
	lnB := fabListen(t, f, "b", gotB)

	c, err := fabDial(t, f, "a", lnB)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := fabRoundTrip(c, "hello"); err != nil {
		t.Fatalf("before any fault: %v", err)
	}

	// A cut breaks the established connection and refuses new ones.
	f.Cut("a", "b")
	if err := fabRoundTrip(c, "after-cut"); err == nil {
		t.Fatal("an established connection survived a cut")
	}
	for _, d := range []struct {
		from string
		to   net.Listener
	}{{"a", lnB}, {"b", lnA}} {
		if c, err := fabDial(t, f, d.from, d.to); err == nil {
			c.Close()
			t.Fatalf("dial from %s succeeded through a cut", d.from)
		} else if !errors.Is(err, errCut) {
			t.Fatalf("dial from %s: %v, want a cut", d.from, err)
		}
	}
	// A node's connections to itself are never faulted.
	if c, err := f.DialContext("a")(context.Background(), "tcp", lnA.Addr().String()); err != nil {
		t.Fatalf("a dial to itself was faulted: %v", err)
	} else {
		c.Close()
	}

	// One way a->b: a cannot reach b; b reaches a, but a's answers are lost.
	f.HealAll()
	f.CutOneWay("a", "b")
	if !f.Blocked("a", "b") || f.Blocked("b", "a") {
		t.Fatal("CutOneWay blocked the wrong direction")
	}
	if c, err := fabDial(t, f, "a", lnB); err == nil {
		c.Close()
		t.Fatal("a dialed b through a one-way cut a->b")
	}
	cb, err := fabDial(t, f, "b", lnA)
	if err != nil {
		t.Fatalf("b could not dial a under a cut a->b: %v", err)
	}
	defer cb.Close()
	if err := fabRoundTrip(cb, "request"); !errors.Is(err, errCut) {
		t.Fatalf("b got a's answer through a cut a->b: %v", err)
	}
	select {
	case line := <-gotA:
		if line != "request" {
			t.Fatalf("a received %q", line)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("b's request did not reach a under a cut a->b only")
	}

	// Heal: both directions work again.
	f.HealAll()
	for _, d := range []struct {
		from string
		to   net.Listener
	}{{"a", lnB}, {"b", lnA}} {
		c, err := fabDial(t, f, d.from, d.to)
		if err != nil {
			t.Fatalf("after heal, dial from %s: %v", d.from, err)
		}
		if err := fabRoundTrip(c, "healed"); err != nil {
			t.Fatalf("after heal, from %s: %v", d.from, err)
		}
		c.Close()
	}

	// Delay applies to both directions of a round trip.
	f.Delay("a", "b", 100*time.Millisecond)
	c2, err := fabDial(t, f, "a", lnB)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	start := time.Now()
	if err := fabRoundTrip(c2, "slow"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("a delayed round trip took %s, want at least 200ms", took)
	}

	// Isolation cuts a node from every other one.
	f.HealAll()
	f.Register("c")
	f.Isolate("b")
	if !f.Blocked("a", "b") || !f.Blocked("b", "c") || f.Blocked("a", "c") {
		t.Fatal("Isolate cut the wrong links")
	}
}

func TestFabric_HTTPClientCutsKeepAlivesAndHeals(t *testing.T) {
	f := NewFabric()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	f.Register("b", srv.Listener.Addr().String())
	hc := f.HTTPClient("a")
	get := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return err
	}
	if err := get(); err != nil {
		t.Fatalf("before any fault: %v", err)
	}
	// The kept-alive connection is closed by the cut; a new one is refused.
	f.Cut("a", "b")
	if err := get(); err == nil {
		t.Fatal("an HTTP request crossed a cut")
	}
	// One way b->a: a's request goes out, its answer is lost.
	f.HealAll()
	f.CutOneWay("b", "a")
	if err := get(); !errors.Is(err, errCut) {
		t.Fatalf("an HTTP answer crossed a cut b->a: %v", err)
	}
	f.HealAll()
	if err := get(); err != nil {
		t.Fatalf("after heal: %v", err)
	}
}

// fabTransport returns a memberlist transport on a loopback port, wrapped by
// the fabric as node id.
func fabTransport(t *testing.T, f *Fabric, id string) (memberlist.NodeAwareTransport, string) {
	t.Helper()
	port := FreePort(t)
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, BindPort: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nt.Shutdown() })
	a := addr(port)
	f.Register(id, a)
	return f.Gossip(id)(nt), a
}

// fabPacket sends a packet and reports whether it arrived within wait.
func fabPacket(t *testing.T, from memberlist.NodeAwareTransport, to memberlist.NodeAwareTransport, toAddr string, wait time.Duration) bool {
	t.Helper()
	for {
		select {
		case <-to.PacketCh(): // drain older packets
			continue
		default:
		}
		break
	}
	if _, err := from.WriteToAddress([]byte("ping"), memberlist.Address{Addr: toAddr}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-to.PacketCh():
		return string(p.Buf) == "ping"
	case <-time.After(wait):
		return false
	}
}

func TestFabric_GossipPacketsCutOneWayAndHeal(t *testing.T) {
	f := NewFabric()
	ta, aa := fabTransport(t, f, "a")
	tb, ab := fabTransport(t, f, "b")
	if !fabPacket(t, ta, tb, ab, 2*time.Second) || !fabPacket(t, tb, ta, aa, 2*time.Second) {
		t.Fatal("packets lost without a fault")
	}
	f.CutOneWay("a", "b")
	if fabPacket(t, ta, tb, ab, 300*time.Millisecond) {
		t.Fatal("a packet crossed a cut a->b")
	}
	if !fabPacket(t, tb, ta, aa, 2*time.Second) {
		t.Fatal("a packet b->a was lost under a cut a->b only")
	}
	if _, err := ta.DialAddressTimeout(memberlist.Address{Addr: ab}, time.Second); err == nil {
		t.Fatal("a gossip stream a->b was dialed through a cut")
	}
	f.HealAll()
	if !fabPacket(t, ta, tb, ab, 2*time.Second) {
		t.Fatal("packets a->b still lost after heal")
	}
	f.Delay("a", "b", 200*time.Millisecond)
	start := time.Now()
	if !fabPacket(t, ta, tb, ab, 2*time.Second) || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("a delayed packet arrived after %s", time.Since(start))
	}
	f.HealAll()
	f.Drop("a", "b", 1)
	if fabPacket(t, ta, tb, ab, 300*time.Millisecond) {
		t.Fatal("a packet crossed a 100% drop")
	}
}

// fabLeaderAmong waits for an established leader among nodes and returns it.
func fabLeaderAmong(c *Cluster, timeout time.Duration, nodes ...*MasterNode) *MasterNode {
	c.t.Helper()
	var leader *MasterNode
	c.Eventually(timeout, "a leader among the connected masters", func() bool {
		for _, n := range nodes {
			if li, ok := n.M.Leader(); ok && li.Self {
				leader = n
				return true
			}
		}
		return false
	})
	return leader
}

func fabOthers(c *Cluster, n *MasterNode) []*MasterNode {
	var out []*MasterNode
	for _, m := range c.Masters {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// fabHealed checks that after a heal the cluster has one leader, takes a
// submission and converges.
func fabHealed(t *testing.T, c *Cluster) {
	t.Helper()
	l := c.Leader()
	task := c.Submit(c.Client(), Exec("true"))
	c.Eventually(30*time.Second, "one leader", func() bool {
		n := 0
		for _, m := range c.Masters {
			if li, ok := m.M.Leader(); ok && li.Self {
				n++
			}
		}
		return n == 1
	})
	d := c.WaitConverged()
	for _, m := range c.Masters {
		if _, ok := m.M.FSM().Get(task.ID); !ok {
			t.Fatalf("master %s lacks task %s after the heal (digest %s, leader was %s)", m.ID, task.ID, d.Digest, l.ID)
		}
	}
}

func TestFabric_IsolatedLeaderIsReplaced(t *testing.T) {
	f := NewFabric()
	c := NewCluster(t, Options{Masters: 3, Fabric: f})
	old := c.Leader()
	f.Isolate(old.ID)
	others := fabOthers(c, old)
	l := fabLeaderAmong(c, 20*time.Second, others...)
	t.Logf("isolated %s; %s leads", old.ID, l.ID)

	// The majority side commits; the isolated master cannot.
	task := c.Submit(c.Client(l), Exec("true"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, _, err := c.Client(old).Submit(ctx, Exec("true"))
	cancel()
	if err == nil {
		t.Fatal("the isolated master acknowledged a submission")
	}
	c.Eventually(10*time.Second, "the isolated master to step down", func() bool {
		li, ok := old.M.Leader()
		return !ok || !li.Self
	})
	if _, ok := old.M.FSM().Get(task.ID); ok {
		t.Fatal("the isolated master applied an entry committed after the cut")
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err = c.Client(old).Task(rctx, task.ID, transport.ReadOptions{})
	rcancel()
	if err == nil {
		t.Fatal("the isolated master served a linearizable read")
	}

	f.HealAll()
	fabHealed(t, c)
}

func TestFabric_OneWayCutFromLeader(t *testing.T) {
	f := NewFabric()
	c := NewCluster(t, Options{Masters: 3, Fabric: f})
	old := c.Leader()
	others := fabOthers(c, old)
	for _, o := range others {
		f.CutOneWay(old.ID, o.ID)
	}
	// The followers stop hearing the leader and elect one of them; the old
	// leader still hears them (their higher term) and steps down.
	l := fabLeaderAmong(c, 20*time.Second, others...)
	t.Logf("cut %s -> others; %s leads", old.ID, l.ID)
	c.Eventually(10*time.Second, "the old leader to step down", func() bool {
		li, ok := old.M.Leader()
		return !ok || !li.Self
	})
	c.Submit(c.Client(l), Exec("true"))
	f.HealAll()
	fabHealed(t, c)
}
