package transport

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gantryhq/gantry/api"
)

// silentLeader is a leader that takes requests and never answers, like a
// paused process whose kernel still accepts connections. Requests are held
// until the test ends.
func silentLeader(t *testing.T) (url string, arrived func() int) {
	t.Helper()
	release := make(chan struct{})
	srv, hits := counter(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	// Registered after counter's srv.Close, so it runs first: the held
	// handlers return and Close does not wait for them.
	t.Cleanup(func() { close(release) })
	return srv.URL, hits
}

// A follower whose leader takes requests and goes silent gives up on it as
// soon as raft names another leader, and sends what means the same thing
// twice (keyed submissions, reads, keyed batches, results) to the new
// leader: the client sees one success, not a timeout. A write without a key
// is answered at once that its outcome is unknown.
func TestServer_ForwardLeavesASilentLeaderWhenItIsReplaced(t *testing.T) {
	for _, tt := range []struct {
		name         string
		method, path string
		body         string
		header       map[string]string
		want         int
		wantCode     string
	}{
		{"keyed submit", "POST", "/v1/tasks", `{"args":["true"]}`, map[string]string{HeaderIdempotencyKey: "k-1"}, http.StatusCreated, ""},
		{"read", "GET", "/v1/tasks/0000000000000001", "", nil, http.StatusOK, ""},
		{"long poll", "GET", "/v1/tasks/0000000000000001?wait=2m", "", nil, http.StatusOK, ""},
		{"keyed batch", "POST", "/v1/tasks/batch", `{"tasks":[{"args":["true"],"idempotency_key":"b-1"},{"args":["true"],"idempotency_key":"b-2"}]}`, nil, http.StatusCreated, ""},
		{"results", "POST", "/v1/results", `{"results":[{"task_id":"0000000000000001","attempt":1,"worker":"w1","outcome":"succeeded"}]}`, nil, http.StatusOK, ""},
		{"submit without a key", "POST", "/v1/tasks", `{"args":["true"]}`, nil, http.StatusServiceUnavailable, api.CodeUnavailable},
		{"batch without keys", "POST", "/v1/tasks/batch", `{"tasks":[{"args":["true"]}]}`, nil, http.StatusServiceUnavailable, api.CodeUnavailable},
		{"cancel", "POST", "/v1/tasks/0000000000000001/cancel", "", nil, http.StatusServiceUnavailable, api.CodeUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			silent, arrived := silentLeader(t)
			next := newNode(t, "m2", ServerOptions{})
			next.f.lead()
			// Timeouts far beyond the test's patience: only the leader
			// change can end the wait.
			f := newNode(t, "m3", ServerOptions{LeaderWait: 5 * time.Minute, ForwardTimeout: 5 * time.Minute})
			f.f.follow("m1", silent)

			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			done := make(chan response, 1)
			go func() { done <- doRaw(t, tt.method, f.URL()+tt.path, body, tt.header) }()
			waitFor(t, "the request to reach the silent leader", func() bool { return arrived() >= 1 })
			f.f.follow("m2", next.URL()) // raft elects m2
			var r response
			select {
			case r = <-done:
			case <-time.After(time.Minute):
				t.Fatal("the follower kept waiting for the replaced leader")
			}
			if r.Status != tt.want || tt.wantCode != "" && r.Err.Code != tt.wantCode {
				t.Fatalf("got %d %s, want %d %s", r.Status, r.Body, tt.want, tt.wantCode)
			}
			if tt.wantCode != "" {
				if !strings.Contains(r.Err.Message, "outcome is unknown") {
					t.Errorf("the answer should say the outcome is unknown: %q", r.Err.Message)
				}
				if n := len(next.requests()); n != 0 {
					t.Errorf("a write that may have been done was sent again to the new leader (%d requests)", n)
				}
				return
			}
			if n := len(next.requests()); n != 1 {
				t.Errorf("the new leader got %d requests, want 1", n)
			}
			if got := r.Header.Get(HeaderServedBy); got != "m2" {
				t.Errorf("served by %q, want m2", got)
			}
			if arrived() != 1 {
				t.Errorf("the silent leader got %d requests, want 1", arrived())
			}
		})
	}
}

// A leader that drops the connection of a keyed submission and is then
// replaced: the submission goes to the new leader once raft names it.
func TestServer_ForwardResendsAfterALostConnectionOnceTheLeaderChanges(t *testing.T) {
	drop, hits := counter(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
	next := newNode(t, "m2", ServerOptions{})
	next.f.lead()
	f := newNode(t, "m3", ServerOptions{LeaderWait: 5 * time.Minute})
	f.f.follow("m1", drop.URL)
	done := make(chan response, 1)
	go func() {
		done <- doRaw(t, "POST", f.URL()+"/v1/tasks", []byte(`{"args":["true"]}`), map[string]string{HeaderIdempotencyKey: "k"})
	}()
	waitFor(t, "the request to reach the dropping leader", func() bool { return hits() >= 1 })
	f.f.follow("m2", next.URL())
	r := <-done
	if r.Status != http.StatusCreated {
		t.Fatalf("got %d %s, want 201 from the new leader", r.Status, r.Body)
	}
	var task api.Task
	if err := json.Unmarshal(r.Body, &task); err != nil || task.IdempotencyKey != "k" {
		t.Errorf("answer %s (%v)", r.Body, err)
	}
	if hits() != 1 {
		t.Errorf("the old leader got %d requests, want 1", hits())
	}
}

// Under concurrent load, every keyed submission held by a silent leader
// goes to its successor exactly once: the successor sees each key once.
func TestServer_ForwardMovesConcurrentSubmissionsToTheNextLeader(t *testing.T) {
	silent, arrived := silentLeader(t)
	next := newNode(t, "m2", ServerOptions{})
	next.f.lead()
	f := newNode(t, "m3", ServerOptions{LeaderWait: 5 * time.Minute, ForwardTimeout: 5 * time.Minute})
	f.f.follow("m1", silent)
	const n = 40
	var wg sync.WaitGroup
	results := make(chan response, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results <- doRaw(t, "POST", f.URL()+"/v1/tasks", []byte(`{"args":["true"]}`), map[string]string{HeaderIdempotencyKey: "c-" + string(rune('a'+i%26)) + string(rune('a'+i/26))})
		}(i)
	}
	waitFor(t, "submissions to reach the silent leader", func() bool { return arrived() >= 1 })
	f.f.follow("m2", next.URL())
	wg.Wait()
	close(results)
	for r := range results {
		if r.Status != http.StatusCreated {
			t.Errorf("got %d %s", r.Status, r.Body)
		}
	}
	next.f.mu.Lock()
	keys := len(next.f.keys)
	next.f.mu.Unlock()
	if keys != n {
		t.Errorf("the new leader holds %d keys, want %d", keys, n)
	}
}

// waitFor polls cond until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A client with an attempt timeout leaves a master that takes the request
// and never answers (paused) for the next one, with the same key; a request
// that may not be sent twice is not.
func TestClient_AttemptTimeoutMovesToTheNextMaster(t *testing.T) {
	silent, arrived := silentLeader(t)
	good := newNode(t, "m2", ServerOptions{})
	good.f.lead()
	cl := NewClient([]string{silent, good.URL()}, WithAttemptTimeout(200*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	task, created, err := cl.Submit(ctx, api.TaskSpec{Args: []string{"true"}, IdempotencyKey: "k"})
	if err != nil || !created || task.IdempotencyKey != "k" {
		t.Fatalf("keyed submit: %+v created %v err %v", task, created, err)
	}
	if arrived() != 1 || len(good.requests()) != 1 {
		t.Errorf("silent master got %d requests, the next %d; want 1 each", arrived(), len(good.requests()))
	}
	// Next time the client starts with the master that answered.
	if _, err := cl.Task(ctx, task.ID, ReadOptions{}); err != nil || arrived() != 1 {
		t.Errorf("read: %v; the silent master got %d requests", err, arrived())
	}
	cl = NewClient([]string{silent, good.URL()}, WithAttemptTimeout(200*time.Millisecond))
	if _, _, err := cl.Submit(ctx, api.TaskSpec{Args: []string{"true"}}); err == nil || !strings.Contains(err.Error(), "may have been processed") {
		t.Errorf("a submission without a key went on to another master: %v", err)
	}
	if n := len(good.requests()); n != 2 {
		t.Errorf("the answering master got %d requests, want 2", n)
	}
}
