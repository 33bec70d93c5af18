package bench

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// GantrySys drives a gantry cluster: a write is one POST /v1/tasks (or one
// POST /v1/tasks/batch of Batch tasks) of a no-op task with its own
// idempotency key.
type GantrySys struct {
	G       *Gantry
	Batch   int // 0 or 1: single submissions
	Args    []string
	run     string
	round   int
	clients []*transport.Client // one per master, sharing a pooled http.Client
	hc      *http.Client
}

// NewGantrySys returns the system of g.
func NewGantrySys(g *Gantry) *GantrySys {
	hc := &http.Client{Transport: &http.Transport{
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 512, IdleConnTimeout: 90 * time.Second,
		DialContext: (&net.Dialer{Timeout: time.Second, KeepAlive: 15 * time.Second}).DialContext,
	}}
	s := &GantrySys{G: g, Args: []string{"true"}, hc: hc, run: strconv.FormatInt(time.Now().UnixNano(), 36)}
	for _, u := range g.URLs {
		s.clients = append(s.clients, transport.NewClient([]string{u}, transport.WithHTTPClient(hc)))
	}
	return s
}

// Name implements System.
func (s *GantrySys) Name() string { return "gantry" }

// NewRound starts a new key space, so that no key of an earlier load is
// submitted again (it would be answered from the idempotency index without
// a commit).
func (s *GantrySys) NewRound() {
	s.round++
	s.run = strconv.FormatInt(time.Now().UnixNano(), 36) + "r" + strconv.Itoa(s.round)
}

// Members implements System.
func (s *GantrySys) Members() int { return len(s.G.URLs) }

// Write implements System. The key is the same on a retry of seq, so a
// retried submission never makes a second task.
func (s *GantrySys) Write(ctx context.Context, c, m, seq int) (int, error) {
	key := fmt.Sprintf("%s-%d-%d", s.run, c, seq)
	if s.Batch <= 1 {
		_, _, err := s.clients[m].Submit(ctx, api.TaskSpec{Args: s.Args, IdempotencyKey: key})
		return 1, err
	}
	specs := make([]api.TaskSpec, s.Batch)
	for i := range specs {
		specs[i] = api.TaskSpec{Args: s.Args, IdempotencyKey: key + "-" + strconv.Itoa(i)}
	}
	ts, err := s.clients[m].SubmitBatch(ctx, specs)
	return len(ts), err
}

// Client returns a client of every master.
func (s *GantrySys) Client() *transport.Client {
	return transport.NewClient(s.G.URLs, transport.WithHTTPClient(s.hc))
}

// Leader implements System.
func (s *GantrySys) Leader(ctx context.Context) (int, error) {
	for i, u := range s.G.URLs {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := s.clients[i].SelfAt(rctx, u)
		cancel()
		if err == nil && st.Role == "leader" {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no gantry master leads")
}

// Kill implements System.
func (s *GantrySys) Kill(m int) { s.G.Masters[m].kill(syscall.SIGKILL) }

// Restart implements System: start the master, wait until it answers and
// has caught up with the leader.
func (s *GantrySys) Restart(ctx context.Context, m int) error {
	if !s.G.Masters[m].running() {
		if err := s.G.Masters[m].start(); err != nil {
			return err
		}
	}
	return s.Ready(ctx)
}

// Ready waits until every master answers, one leads, and all have applied
// the leader's commit index.
func (s *GantrySys) Ready(ctx context.Context) error {
	return poll(ctx, 60*time.Second, "gantry ready", func() error {
		var commit uint64
		var sts []api.NodeStatus
		for i, u := range s.G.URLs {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := s.clients[i].SelfAt(rctx, u)
			cancel()
			if err != nil {
				return err
			}
			if st.Role == "leader" {
				commit = st.CommitIndex
			}
			sts = append(sts, st)
		}
		if commit == 0 {
			return fmt.Errorf("no leader")
		}
		for _, st := range sts {
			if st.AppliedIndex+10 < commit {
				return fmt.Errorf("%s at %d of %d", st.ID, st.AppliedIndex, commit)
			}
		}
		return nil
	})
}

// EtcdSys drives an etcd cluster: a write is one Put of a value the size of
// a small task spec to its own key, through Conns gRPC connections per
// member.
type EtcdSys struct {
	E     *Etcd
	conns [][]*clientv3.Client // [member][i]
	value string
	run   string
}

// NewEtcdSys connects to e with conns connections per member.
func NewEtcdSys(e *Etcd, conns int) (*EtcdSys, error) {
	s := &EtcdSys{E: e, run: strconv.FormatInt(time.Now().UnixNano(), 36),
		value: base64.StdEncoding.EncodeToString(make([]byte, 90))}
	for _, ep := range e.Endpoints {
		var row []*clientv3.Client
		for i := 0; i < conns; i++ {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second,
				Logger: zap.NewNop(), DialKeepAliveTime: 10 * time.Second})
			if err != nil {
				s.Close()
				return nil, err
			}
			row = append(row, cli)
		}
		s.conns = append(s.conns, row)
	}
	return s, nil
}

// Close closes every connection.
func (s *EtcdSys) Close() {
	for _, row := range s.conns {
		for _, c := range row {
			c.Close()
		}
	}
}

// Name implements System.
func (s *EtcdSys) Name() string { return "etcd" }

// NewRound starts a new key space, as for gantry.
func (s *EtcdSys) NewRound() { s.run = strconv.FormatInt(time.Now().UnixNano(), 36) }

// Members implements System.
func (s *EtcdSys) Members() int { return len(s.E.Endpoints) }

// Write implements System.
func (s *EtcdSys) Write(ctx context.Context, c, m, seq int) (int, error) {
	row := s.conns[m]
	_, err := row[(c/len(s.conns))%len(row)].Put(ctx, fmt.Sprintf("/bench/%s/%d/%d", s.run, c, seq), s.value)
	return 1, err
}

// Leader implements System.
func (s *EtcdSys) Leader(ctx context.Context) (int, error) {
	for i, ep := range s.E.Endpoints {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := s.conns[i][0].Status(rctx, ep)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no etcd member leads")
}

// Kill implements System.
func (s *EtcdSys) Kill(m int) { s.E.Members[m].kill(syscall.SIGKILL) }

// Restart implements System.
func (s *EtcdSys) Restart(ctx context.Context, m int) error {
	if !s.E.Members[m].running() {
		if err := s.E.Members[m].start(); err != nil {
			return err
		}
	}
	return s.Ready(ctx)
}

// Ready waits until every member answers and one leads.
func (s *EtcdSys) Ready(ctx context.Context) error {
	return poll(ctx, 60*time.Second, "etcd ready", func() error {
		leaders := 0
		for i, ep := range s.E.Endpoints {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := s.conns[i][0].Status(rctx, ep)
			cancel()
			if err != nil {
				return err
			}
			if st.Header.MemberId == st.Leader {
				leaders++
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d leaders", leaders)
		}
		return nil
	})
}
