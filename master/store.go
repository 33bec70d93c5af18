package master

import (
	"sync"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// guardedStore wraps the bolt store so that closing it is safe while stray
// raft RPC handlers still run. raft.Shutdown waits for raft's own goroutines
// but not for the network transport's connection handlers: a heartbeat that
// passed raft's shutdown check can still write the term after Shutdown
// returned, and raft panics when that write fails ("database not open",
// hashicorp/raft#717). Close waits for operations in flight; an operation
// that arrives after Close blocks forever instead of failing, which only a
// straggler of a stopped node can do.
type guardedStore struct {
	mu     sync.RWMutex
	closed bool // guarded by mu
	s      *raftboltdb.BoltStore
}

var (
	_ raft.LogStore    = (*guardedStore)(nil)
	_ raft.StableStore = (*guardedStore)(nil)
)

func (g *guardedStore) enter() {
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		select {} // a straggler of a stopped node: never touch the closed store
	}
}

func (g *guardedStore) leave() { g.mu.RUnlock() }

// Close waits for operations in flight, then closes the store.
func (g *guardedStore) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	return g.s.Close()
}

func (g *guardedStore) FirstIndex() (uint64, error) {
	g.enter()
	defer g.leave()
	return g.s.FirstIndex()
}

func (g *guardedStore) LastIndex() (uint64, error) {
	g.enter()
	defer g.leave()
	return g.s.LastIndex()
}

func (g *guardedStore) GetLog(index uint64, log *raft.Log) error {
	g.enter()
	defer g.leave()
	return g.s.GetLog(index, log)
}

func (g *guardedStore) StoreLog(log *raft.Log) error {
	g.enter()
	defer g.leave()
	return g.s.StoreLog(log)
}

func (g *guardedStore) StoreLogs(logs []*raft.Log) error {
	g.enter()
	defer g.leave()
	return g.s.StoreLogs(logs)
}

func (g *guardedStore) DeleteRange(min, max uint64) error {
	g.enter()
	defer g.leave()
	return g.s.DeleteRange(min, max)
}

func (g *guardedStore) Set(k, v []byte) error {
	g.enter()
	defer g.leave()
	return g.s.Set(k, v)
}

func (g *guardedStore) Get(k []byte) ([]byte, error) {
	g.enter()
	defer g.leave()
	return g.s.Get(k)
}

func (g *guardedStore) SetUint64(k []byte, v uint64) error {
	g.enter()
	defer g.leave()
	return g.s.SetUint64(k, v)
}

func (g *guardedStore) GetUint64(k []byte) (uint64, error) {
	g.enter()
	defer g.leave()
	return g.s.GetUint64(k)
}
