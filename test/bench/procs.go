// Package bench is gantry's benchmark beside etcd (`make bench`): it starts
// a 3-master gantry cluster and a 3-member etcd cluster as local processes on
// loopback, both with fsync on, drives the same replicated-write workload
// against each in the same run, kills leaders under load, measures task
// latency, completion throughput and worker loss, and writes a table and
// bench-report.json. Every figure is a median over repeated runs with its
// spread (min and max); every comparison is a ratio taken in one run.
package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one server process that can be killed and started again with
// the same arguments.
type proc struct {
	name string
	bin  string
	args []string
	log  string

	mu  sync.Mutex
	cmd *exec.Cmd
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd = cmd
	go func() { _ = cmd.Wait(); f.Close() }()
	return nil
}

// kill sends sig to the process group and waits until the process is gone.
func (p *proc) kill(sig syscall.Signal) {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// ports returns n free loopback ports.
func ports(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// Timers are the Raft timers a gantry cluster runs with (zero: the
// binary's defaults).
type Timers struct {
	Heartbeat, Election, Lease time.Duration
}

// Gantry is a local gantry cluster: masters and workers as processes.
type Gantry struct {
	bin      string
	dir      string
	Masters  []*proc
	URLs     []string // by master index
	IDs      []string // m1..mN
	Workers  []*proc
	joins    string
	nextW    int
	logLevel string
}

// StartGantry starts n masters in dir (fsync on, as shipped).
func StartGantry(bin, dir string, n int, t Timers, logLevel string) (*Gantry, error) {
	ps, err := ports(3 * n)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	g := &Gantry{bin: bin, dir: dir, logLevel: logLevel}
	var peers, joins []string
	for i := 0; i < n; i++ {
		peers = append(peers, fmt.Sprintf("m%d=127.0.0.1:%d", i+1, ps[3*i+1]))
		joins = append(joins, fmt.Sprintf("127.0.0.1:%d", ps[3*i+2]))
	}
	g.joins = strings.Join(joins, ",")
	for i := 0; i < n; i++ {
		id := "m" + strconv.Itoa(i+1)
		args := []string{"master", "--id", id, "--data-dir", filepath.Join(dir, id),
			"--http", fmt.Sprintf("127.0.0.1:%d", ps[3*i]), "--raft", fmt.Sprintf("127.0.0.1:%d", ps[3*i+1]),
			"--gossip", fmt.Sprintf("127.0.0.1:%d", ps[3*i+2]), "--peers", strings.Join(peers, ","),
			"--join", g.joins, "--scaling", "off", "--log-level", logLevel}
		if t.Heartbeat > 0 {
			args = append(args, "--raft-heartbeat-timeout", t.Heartbeat.String(), "--raft-election-timeout", t.Election.String(), "--raft-lease-timeout", t.Lease.String())
		}
		p := &proc{name: "gantry " + id, bin: bin, args: args, log: filepath.Join(dir, id+".log")}
		g.Masters = append(g.Masters, p)
		g.URLs = append(g.URLs, fmt.Sprintf("http://127.0.0.1:%d", ps[3*i]))
		g.IDs = append(g.IDs, id)
	}
	for _, p := range g.Masters {
		if err := p.start(); err != nil {
			g.Stop()
			return nil, err
		}
	}
	return g, nil
}

// AddWorker starts a worker process with slots.
func (g *Gantry) AddWorker(slots int) (*proc, error) {
	ps, err := ports(2)
	if err != nil {
		return nil, err
	}
	g.nextW++
	id := "w" + strconv.Itoa(g.nextW)
	p := &proc{name: "gantry " + id, bin: g.bin, log: filepath.Join(g.dir, id+".log"), args: []string{"worker", "--id", id,
		"--http", fmt.Sprintf("127.0.0.1:%d", ps[0]), "--gossip", fmt.Sprintf("127.0.0.1:%d", ps[1]),
		"--join", g.joins, "--slots", strconv.Itoa(slots), "--log-level", g.logLevel}}
	if err := p.start(); err != nil {
		return nil, err
	}
	g.Workers = append(g.Workers, p)
	return p, nil
}

// Stop kills every process.
func (g *Gantry) Stop() {
	for _, p := range append(append([]*proc{}, g.Workers...), g.Masters...) {
		p.kill(syscall.SIGKILL)
	}
}

// Etcd is a local etcd cluster.
type Etcd struct {
	Members   []*proc
	Endpoints []string // client URLs by member index
	Names     []string
}

// StartEtcd starts an n-member etcd cluster in dir with etcd's default
// timers (100 ms heartbeat, 1 s election) and fsync on.
func StartEtcd(bin, dir string, n int) (*Etcd, error) {
	ps, err := ports(2 * n)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	e := &Etcd{}
	var initial []string
	for i := 0; i < n; i++ {
		initial = append(initial, fmt.Sprintf("e%d=http://127.0.0.1:%d", i+1, ps[2*i+1]))
	}
	for i := 0; i < n; i++ {
		name := "e" + strconv.Itoa(i+1)
		client := fmt.Sprintf("http://127.0.0.1:%d", ps[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ps[2*i+1])
		args := []string{"--name", name, "--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "gantry-bench", "--log-level", "warn", "--logger", "zap"}
		e.Members = append(e.Members, &proc{name: "etcd " + name, bin: bin, args: args, log: filepath.Join(dir, name+".log")})
		e.Endpoints = append(e.Endpoints, client)
		e.Names = append(e.Names, name)
	}
	for _, p := range e.Members {
		if err := p.start(); err != nil {
			e.Stop()
			return nil, err
		}
	}
	return e, nil
}

// Stop kills every member.
func (e *Etcd) Stop() {
	for _, p := range e.Members {
		p.kill(syscall.SIGKILL)
	}
}

// FindEtcd returns the etcd binary: $ETCD, etcd on PATH, or Debian's
// /usr/bin/etcd.
func FindEtcd() (string, error) {
	if b := os.Getenv("ETCD"); b != "" {
		return b, nil
	}
	if b, err := exec.LookPath("etcd"); err == nil {
		return b, nil
	}
	return "", errors.New("etcd not found: install Debian's etcd-server (scripts/bench.sh does) or set ETCD")
}

// poll calls f until it returns nil or timeout passes.
func poll(ctx context.Context, timeout time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
