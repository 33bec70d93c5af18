package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/gantryhq/gantry/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Agent is what a worker's HTTP server needs from the worker.
type Agent interface {
	// ID returns the worker's logical ID.
	ID() string
	// Accept takes attempts to run and reports which it took. An error
	// (draining, shutting down) refuses them all.
	Accept(as []api.Assignment) ([]bool, error)
	// Attempts lists what the worker holds: running attempts and finished
	// ones whose result is not yet accepted.
	Attempts() api.WorkerAttempts
	// CancelAttempt stops an attempt; false when the worker does not hold it.
	CancelAttempt(ref api.AttemptRef) bool
}

// NewWorkerHandler returns the HTTP API a worker serves to the leader:
//
//	POST /v1/attempts         push attempts ({"attempts":[...]}) -> {"accepted":[...]}
//	GET  /v1/attempts         what the worker holds
//	POST /v1/attempts/cancel  stop one attempt ({"task_id","attempt"})
//	GET  /healthz
//	GET  /metrics             Prometheus metrics, when reg is not nil
func NewWorkerHandler(a Agent, log hclog.Logger, reg *prometheus.Registry) http.Handler {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	mux := http.NewServeMux()
	if reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "id": a.ID()})
	})
	mux.HandleFunc("GET /v1/attempts", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Attempts())
	})
	mux.HandleFunc("POST /v1/attempts", func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, api.MaxBatchRequestBytes)
		if err != nil {
			writeError(w, err)
			return
		}
		var req api.AttemptsRequest
		if err := DecodeJSON(body, &req); err != nil {
			writeError(w, err)
			return
		}
		for _, as := range req.Attempts {
			if as.TaskID == "" || as.Attempt < 1 || len(as.Args) == 0 {
				writeError(w, api.BadRequest("attempts", "each attempt needs task_id, attempt >= 1 and args"))
				return
			}
		}
		ok, err := a.Accept(req.Attempts)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string][]bool{"accepted": ok})
	})
	mux.HandleFunc("POST /v1/attempts/cancel", func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, api.MaxRequestBytes)
		if err != nil {
			writeError(w, err)
			return
		}
		var ref api.AttemptRef
		if err := DecodeJSON(body, &ref); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"canceled": a.CancelAttempt(ref)})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.NotFoundf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// WorkerClient is the leader's client of workers' HTTP APIs.
type WorkerClient struct {
	hc *http.Client
}

// NewWorkerClient returns a client using hc (nil: http.DefaultClient).
func NewWorkerClient(hc *http.Client) *WorkerClient {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &WorkerClient{hc: hc}
}

func (c *WorkerClient) post(ctx context.Context, url string, body any, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.send(req, out)
}

func (c *WorkerClient) send(req *http.Request, out any) error {
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return errorFromResponse(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(out); err != nil {
		return fmt.Errorf("decode worker response: %w", err)
	}
	return nil
}

// Push sends attempts to the worker at base and returns which it accepted.
func (c *WorkerClient) Push(ctx context.Context, base string, as []api.Assignment) ([]bool, error) {
	var out struct {
		Accepted []bool `json:"accepted"`
	}
	if err := c.post(ctx, NormalizeURL(base)+"/v1/attempts", api.AttemptsRequest{Attempts: as}, &out); err != nil {
		return nil, err
	}
	if len(out.Accepted) != len(as) {
		return nil, fmt.Errorf("worker answered %d of %d attempts", len(out.Accepted), len(as))
	}
	return out.Accepted, nil
}

// Attempts asks the worker at base what it holds.
func (c *WorkerClient) Attempts(ctx context.Context, base string) (api.WorkerAttempts, error) {
	var out api.WorkerAttempts
	req, err := http.NewRequestWithContext(ctx, "GET", NormalizeURL(base)+"/v1/attempts", nil)
	if err != nil {
		return out, err
	}
	err = c.send(req, &out)
	return out, err
}

// Cancel tells the worker at base to stop an attempt.
func (c *WorkerClient) Cancel(ctx context.Context, base string, ref api.AttemptRef) error {
	return c.post(ctx, NormalizeURL(base)+"/v1/attempts/cancel", ref, nil)
}
