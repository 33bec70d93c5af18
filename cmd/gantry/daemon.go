package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/membership"
	"github.com/gantryhq/gantry/transport"
	"github.com/gantryhq/gantry/worker"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// logFlags are shared by the daemons.
type logFlags struct {
	level string
	json  bool
}

func (l *logFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&l.level, "log-level", "info", "log level: trace, debug, info, warn, error")
	cmd.Flags().BoolVar(&l.json, "log-json", false, "log as JSON lines")
}

func (l *logFlags) logger(name string) (hclog.Logger, error) {
	lvl := hclog.LevelFromString(l.level)
	if lvl == hclog.NoLevel {
		return nil, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", l.level)
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: lvl, JSONFormat: l.json, Output: os.Stderr, TimeFormat: "2006-01-02T15:04:05.000Z0700"}), nil
}

// gossipFlags are shared by the daemons.
type gossipFlags struct {
	bind, advertise  string
	join             []string
	cluster          string
	key              string
	probeInterval    time.Duration
	probeTimeout     time.Duration
	suspicionMult    int
	suspicionMaxMult int
}

func (g *gossipFlags) add(cmd *cobra.Command, defBind string) {
	f := cmd.Flags()
	f.StringVar(&g.bind, "gossip", defBind, "gossip listen address host:port (TCP and UDP)")
	f.StringVar(&g.advertise, "advertise-gossip", "", "gossip address others reach this node at, ip:port (default: --gossip; a name is resolved)")
	f.StringSliceVar(&g.join, "join", nil, "gossip addresses to join, comma-separated host:port (host names allowed)")
	f.StringVar(&g.cluster, "cluster", "gantry", "cluster name; nodes with different names never gossip together")
	f.StringVar(&g.key, "gossip-key", "", "base64 key of 16, 24 or 32 bytes that encrypts gossip (same on every node)")
	f.DurationVar(&g.probeInterval, "gossip-probe-interval", master.Defaults.GossipProbeInterval, "gossip failure-detection probe interval")
	f.DurationVar(&g.probeTimeout, "gossip-probe-timeout", master.Defaults.GossipProbeTimeout, "gossip probe timeout")
	f.IntVar(&g.suspicionMult, "gossip-suspicion-mult", master.Defaults.GossipSuspicionMult, "gossip suspicion multiplier (higher: slower, fewer false deaths)")
	f.IntVar(&g.suspicionMaxMult, "gossip-suspicion-max-mult", master.Defaults.GossipSuspicionMaxMult, "longest unconfirmed suspicion, as a multiple of the shortest (memberlist's default is 6)")
}

func (g *gossipFlags) keyBytes() ([]byte, error) {
	if g.key == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(g.key)
	if err != nil {
		return nil, fmt.Errorf("--gossip-key: not base64: %v", err)
	}
	if n := len(b); n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("--gossip-key: %d bytes; want 16, 24 or 32", n)
	}
	return b, nil
}

// advertiseURL turns a listen address into a URL others can use.
func advertiseURL(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("address %q: %v", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if host, err = membership.ResolveAdvertiseIP(""); err != nil {
			return "", err
		}
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// signalContext returns a context canceled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func newMasterCmd() *cobra.Command {
	var (
		cfg               master.Config
		httpAddr, advHTTP string
		peers             string
		lf                logFlags
		gf                gossipFlags
		leaderWait        time.Duration
		pprofAddr         string
		snapshotThreshold uint64
		trailingLogs      uint64
		sf                scaleFlags
	)
	cmd := &cobra.Command{
		Use:   "master",
		Short: "Run a master: a Raft replica of the task queue that dispatches work while it leads",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := lf.logger("master")
			if err != nil {
				return err
			}
			if cfg.Peers, err = master.ParsePeers(peers); err != nil {
				return fmt.Errorf("--peers: %w", err)
			}
			if cfg.GossipKey, err = gf.keyBytes(); err != nil {
				return err
			}
			if advHTTP == "" {
				if advHTTP, err = advertiseURL(httpAddr); err != nil {
					return fmt.Errorf("--http: %w", err)
				}
			}
			cfg.HTTPAdvertise = transport.NormalizeURL(advHTTP)
			cfg.GossipBind, cfg.GossipAdvertise, cfg.Join, cfg.Cluster = gf.bind, gf.advertise, gf.join, gf.cluster
			cfg.GossipProbeInterval, cfg.GossipProbeTimeout, cfg.GossipSuspicionMult = gf.probeInterval, gf.probeTimeout, gf.suspicionMult
			cfg.GossipSuspicionMaxMult = gf.suspicionMaxMult
			cfg.SnapshotThreshold, cfg.TrailingLogs = snapshotThreshold, trailingLogs
			cfg.Version = version
			cfg.Logger = log
			if cfg.RaftAdvertise == "" {
				cfg.RaftAdvertise = defaultRaftAdvertise(cfg.RaftBind, cfg.Peers, cfg.ID)
			}
			if err := sf.apply(&cfg, gf, lf, log); err != nil {
				return err
			}
			if pprofAddr != "" {
				if err := servePprof(pprofAddr, log); err != nil {
					return fmt.Errorf("--pprof: %w", err)
				}
			}
			return runMaster(cfg, httpAddr, leaderWait, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ID, "id", "", "this master's Raft ID: stable across restarts, unique in the cluster (required)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log, stable store and snapshots (required)")
	f.StringVar(&httpAddr, "http", "127.0.0.1:8080", "HTTP API listen address")
	f.StringVar(&advHTTP, "advertise-http", "", "HTTP URL others reach this master at (default: from --http)")
	f.StringVar(&cfg.RaftBind, "raft", "127.0.0.1:7000", "Raft listen address")
	f.StringVar(&cfg.RaftAdvertise, "advertise-raft", "", "Raft address others dial, host:port; host names allowed (default: this master's entry in --peers, else --raft)")
	f.StringVar(&peers, "peers", "", "initial voter set, id=host:port,...; identical on every initial master")
	gf.add(cmd, "127.0.0.1:7946")
	lf.add(cmd)
	f.DurationVar(&cfg.HeartbeatTimeout, "raft-heartbeat-timeout", master.Defaults.HeartbeatTimeout, "Raft heartbeat timeout")
	f.DurationVar(&cfg.ElectionTimeout, "raft-election-timeout", master.Defaults.ElectionTimeout, "Raft election timeout")
	f.DurationVar(&cfg.LeaderLeaseTimeout, "raft-lease-timeout", master.Defaults.LeaderLeaseTimeout, "Raft leader lease timeout")
	f.DurationVar(&cfg.SnapshotInterval, "snapshot-interval", master.Defaults.SnapshotInterval, "how often to check whether to take a Raft snapshot")
	f.Uint64Var(&snapshotThreshold, "snapshot-threshold", master.Defaults.SnapshotThreshold, "log entries since the last snapshot that trigger a new one")
	f.Uint64Var(&trailingLogs, "trailing-logs", master.Defaults.TrailingLogs, "log entries kept after a snapshot (followers further behind get the snapshot)")
	f.DurationVar(&cfg.WorkerGrace, "worker-grace", master.Defaults.WorkerGrace, "a new leader requeues nothing for this long")
	f.DurationVar(&cfg.WorkerTimeout, "worker-timeout", master.Defaults.WorkerTimeout, "a worker that does not answer for this long loses its attempts")
	f.DurationVar(&cfg.WorkerCheckInterval, "worker-check-interval", master.Defaults.WorkerCheckInterval, "how often the leader asks each worker what it runs")
	f.DurationVar(&cfg.RetryBackoff, "retry-backoff", master.Defaults.RetryBackoff, "base of the exponential delay before a failed attempt is retried")
	f.Var(exitCodes{&cfg.NoRetryExitCodes}, "no-retry-exit-codes", "exit codes that fail a task at once, without retries, when its spec names none (comma-separated; \"none\" retries every failure; default 126,127)")
	f.DurationVar(&cfg.Retention, "retention", master.Defaults.Retention, "terminal tasks (and their idempotency keys) are forgotten after this long")
	f.DurationVar(&leaderWait, "leader-wait", 5*time.Second, "how long a request waits for a leader before it gets 503")
	f.StringVar(&pprofAddr, "pprof", "", "serve Go's profiling endpoints (/debug/pprof/) on this address, e.g. 127.0.0.1:6060 (off when empty; keep it private)")
	sf.add(cmd)
	f.DurationVar(&cfg.ScaleInterval, "scale-interval", master.Defaults.ScaleInterval, "the leader reconciles worker containers at least this often")
	f.DurationVar(&cfg.OrphanGrace, "orphan-grace", master.Defaults.OrphanGrace, "a container of this cluster that no record accounts for is removed after this long")
	f.DurationVar(&cfg.WorkerStopTimeout, "worker-stop-timeout", master.Defaults.WorkerStopTimeout, "SIGTERM to SIGKILL when the leader removes a worker container")
	return cmd
}

// exitCodes is a flag holding a list of exit codes; "none" is the empty
// list (retry every failure).
type exitCodes struct{ codes *[]int }

func (e exitCodes) String() string {
	if e.codes == nil || *e.codes == nil {
		return "" // the default: said in each flag's usage
	}
	if len(*e.codes) == 0 {
		return "none"
	}
	parts := make([]string, len(*e.codes))
	for i, c := range *e.codes {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}

func (e exitCodes) Set(v string) error {
	out := []int{}
	if v = strings.TrimSpace(v); v != "none" && v != "" {
		for _, p := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || n < 1 || n > 255 {
				return fmt.Errorf("%q is not an exit code from 1 to 255", p)
			}
			out = append(out, n)
		}
	}
	*e.codes = out
	return nil
}

func (exitCodes) Type() string { return "codes" }

// defaultRaftAdvertise picks this master's address from the peer list (it is
// what the others dial), else the bind address.
func defaultRaftAdvertise(bind string, peers []master.Peer, id string) string {
	for _, p := range peers {
		if p.ID == id {
			return p.Addr
		}
	}
	return bind
}

func runMaster(cfg master.Config, httpAddr string, leaderWait time.Duration, log hclog.Logger) error {
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	m, err := master.New(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	if err := m.Start(); err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           transport.NewServer(m, transport.ServerOptions{LeaderWait: leaderWait, Logger: log, Registry: m.Registry(), ForwardTimeout: m.ForwardTimeout()}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("serving HTTP", "addr", ln.Addr().String(), "advertise", cfg.HTTPAdvertise)

	ctx, stop := signalContext()
	defer stop()
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-serveErr:
		log.Error("http server failed", "error", err)
	}
	// Transfer leadership first (requests in flight are answered meanwhile),
	// then stop serving.
	merr := m.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return merr
}

func newWorkerCmd() *cobra.Command {
	var (
		cfg      worker.Config
		advHTTP  string
		execPath string
		lf       logFlags
		gf       gossipFlags
	)
	host, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker: it joins the cluster through gossip and runs the attempts the leader pushes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := lf.logger("worker")
			if err != nil {
				return err
			}
			if cfg.GossipKey, err = gf.keyBytes(); err != nil {
				return err
			}
			if len(gf.join) == 0 {
				return errors.New("--join is required: a worker finds the masters through gossip")
			}
			if advHTTP == "" {
				if advHTTP, err = advertiseURL(cfg.HTTPBind); err != nil {
					return fmt.Errorf("--http: %w", err)
				}
			}
			cfg.HTTPAdvertise = advHTTP
			cfg.GossipBind, cfg.GossipAdvertise, cfg.Join, cfg.Cluster = gf.bind, gf.advertise, gf.join, gf.cluster
			cfg.GossipProbeInterval, cfg.GossipProbeTimeout, cfg.GossipSuspicionMult = gf.probeInterval, gf.probeTimeout, gf.suspicionMult
			cfg.GossipSuspicionMaxMult = gf.suspicionMaxMult
			cfg.Exec.Path = execPath
			cfg.Version = version
			cfg.Logger = log
			w, err := worker.New(cfg)
			if err != nil {
				return err
			}
			if err := w.Start(); err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			<-ctx.Done()
			log.Info("shutting down: draining")
			sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout+15*time.Second)
			defer cancel()
			return w.Shutdown(sctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ID, "id", host, "this worker's ID: stable across restarts, unique in the cluster")
	f.StringVar(&cfg.HTTPBind, "http", "127.0.0.1:8090", "worker API listen address (the leader pushes attempts here)")
	f.StringVar(&advHTTP, "advertise-http", "", "URL the leader reaches this worker at (default: from --http)")
	f.IntVar(&cfg.Slots, "slots", runtime.NumCPU(), "attempts this worker runs at once")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long running attempts may finish before they are handed back")
	f.DurationVar(&cfg.Exec.KillGrace, "kill-grace", 5*time.Second, "between SIGTERM and SIGKILL of a task's process group on timeout or cancel")
	f.StringVar(&execPath, "exec-path", "", "PATH given to exec tasks (default: the worker's own PATH)")
	gf.add(cmd, "127.0.0.1:7950")
	lf.add(cmd)
	return cmd
}

// splitList splits a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// servePprof serves net/http/pprof's endpoints on their own listener, so
// they are never reachable through the API address.
func servePprof(addr string, log hclog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		if err := srv.Serve(ln); err != nil {
			log.Warn("pprof server stopped", "error", err)
		}
	}()
	log.Info("serving pprof", "addr", ln.Addr().String())
	return nil
}
