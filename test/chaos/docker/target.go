// Package dockerchaos adapts the docker compose cluster (docker-compose.yml
// plus docker-compose.chaos.yml, started by scripts/chaos.sh) for the chaos
// harness in test/chaos: a Target that reaches the masters through their
// published ports, submits tasks that append to a ledger on a volume shared
// by every worker container, reads that ledger back and audits the managed
// worker containers; and the nemeses that kill, pause, partition and restart
// the containers through the docker CLI.
//
// The docker CLI (not the Engine API) is used on purpose: every fault is a
// command an operator could type, and the schedule prints it.
package dockerchaos

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/test/chaos"
	"github.com/gantryhq/gantry/transport"
)

// Labels the compose files and the leader put on containers.
const (
	LabelCluster = "io.gantry.cluster"
	LabelRole    = "io.gantry.role"
	LabelManaged = "io.gantry.managed"
)

// LedgerPath is where the ledger volume is mounted in every worker
// container, and LedgerFile the file tasks append to.
const (
	LedgerPath = "/ledger"
	LedgerFile = LedgerPath + "/executions"
)

// Target is a compose cluster of project Project with masters m1..mN whose
// HTTP APIs are published on the host at Ports.
type Target struct {
	Project string
	Image   string // the gantry image, used to read the ledger volume
	Ports   []int  // host port of master-1, master-2, ...
	// TaskSleep is how long each task runs after recording its execution,
	// so that faults catch attempts while they run (default 100ms).
	TaskSleep time.Duration
	HTTP      *http.Client
}

// New returns the target of project with the masters published at ports.
func New(project, image string, ports []int) *Target {
	return &Target{Project: project, Image: image, Ports: ports, TaskSleep: 100 * time.Millisecond,
		HTTP: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}}}
}

// Network is the compose network of the cluster.
func (t *Target) Network() string { return t.Project + "-net" }

// LedgerVolume is the volume every worker mounts at LedgerPath.
func (t *Target) LedgerVolume() string { return t.Project + "-ledger" }

// IDs returns the master IDs, m1..mN.
func (t *Target) IDs() []string {
	ids := make([]string, len(t.Ports))
	for i := range t.Ports {
		ids[i] = "m" + strconv.Itoa(i+1)
	}
	return ids
}

func index(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "m"))
	return n
}

// Container is the container name of master id.
func (t *Target) Container(id string) string {
	return fmt.Sprintf("%s-master-%d", t.Project, index(id))
}

// Alias is the network alias (compose service name) of master id.
func (t *Target) Alias(id string) string { return fmt.Sprintf("master-%d", index(id)) }

// Masters implements chaos.Target.
func (t *Target) Masters() map[string]string {
	out := make(map[string]string, len(t.Ports))
	for i, p := range t.Ports {
		out["m"+strconv.Itoa(i+1)] = "http://127.0.0.1:" + strconv.Itoa(p)
	}
	return out
}

// TaskSpec implements chaos.Target: a shell task that appends its
// execution to the ledger, then runs for TaskSleep.
func (t *Target) TaskSpec(key string) api.TaskSpec {
	script := `echo "$GANTRY_TASK_ID $GANTRY_ATTEMPT $GANTRY_WORKER" >> ` + LedgerFile
	if t.TaskSleep > 0 {
		script += "; sleep " + strconv.FormatFloat(t.TaskSleep.Seconds(), 'f', 3, 64)
	}
	return api.TaskSpec{Args: []string{"sh", "-c", script}, Timeout: "30s", MaxAttempts: 10}
}

// Ledger implements chaos.Target: it reads the ledger volume through a
// throwaway container of the gantry image, so it works even while no worker
// runs.
func (t *Target) Ledger(ctx context.Context) ([]chaos.Execution, error) {
	out, err := Docker(ctx, "run", "--rm", "--label", LabelCluster+"="+t.Project, "--network", "none",
		"-v", t.LedgerVolume()+":"+LedgerPath+":ro", "--entrypoint", "/bin/sh", t.Image,
		"-c", "cat "+LedgerFile+" 2>/dev/null || true")
	if err != nil {
		return nil, err
	}
	return ParseLedger(out)
}

// ParseLedger parses ledger lines "<task id> <attempt> <worker>".
func ParseLedger(s string) ([]chaos.Execution, error) {
	var out []chaos.Execution
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("ledger line %d: %q: want \"task attempt worker\"", n, sc.Text())
		}
		a, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("ledger line %d: attempt %q: %v", n, f[1], err)
		}
		out = append(out, chaos.Execution{TaskID: f[0], Attempt: a, Worker: f[2]})
	}
	return out, sc.Err()
}

// client returns a client of every master (failing over between them).
func (t *Target) client() *transport.Client {
	var urls []string
	for _, u := range t.Masters() {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	return transport.NewClient(urls, transport.WithHTTPClient(t.HTTP))
}

// Leader returns the master that leads in the highest term any master
// reports, asking each master about itself.
func (t *Target) Leader(ctx context.Context) (string, error) {
	cl := t.client()
	var best api.NodeStatus
	var errs []string
	for id, u := range t.Masters() {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cl.SelfAt(rctx, u)
		cancel()
		if err != nil {
			errs = append(errs, id+": "+err.Error())
			continue
		}
		if st.Role == "leader" && st.Term >= best.Term {
			best = st
		}
	}
	if best.ID == "" {
		return "", fmt.Errorf("no master reports itself leader (%s)", strings.Join(errs, "; "))
	}
	return best.ID, nil
}

// WaitLeader polls Leader until one answers or timeout passes.
func (t *Target) WaitLeader(ctx context.Context, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		id, err := t.Leader(ctx)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return id, err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// WaitAnswers polls master id until it answers GET /v1/self (up to
// timeout).
func (t *Target) WaitAnswers(ctx context.Context, id string, timeout time.Duration) error {
	cl := t.client()
	deadline := time.Now().Add(timeout)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cl.SelfAt(rctx, t.Masters()[id])
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("master %s does not answer after %s: %v", id, timeout, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// Scale returns the leader's GET /v1/scale.
func (t *Target) Scale(ctx context.Context) (api.ScaleStatus, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return t.client().Scale(rctx, transport.ReadOptions{})
}

// SetScale sets the scaling policy.
func (t *Target) SetScale(ctx context.Context, p api.ScalePolicy) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := t.client().SetScale(rctx, p)
	return err
}

// container is one container as docker ps lists it.
type container struct {
	Name, State string
	Managed     bool
}

// containers lists the cluster's containers with role (all for "").
func (t *Target) containers(ctx context.Context, role string) ([]container, error) {
	args := []string{"ps", "-a", "--filter", "label=" + LabelCluster + "=" + t.Project,
		"--format", `{{.Names}} {{.State}} {{.Label "` + LabelManaged + `"}}`}
	if role != "" {
		args = append(args, "--filter", "label="+LabelRole+"="+role)
	}
	out, err := Docker(ctx, args...)
	if err != nil {
		return nil, err
	}
	var cs []container
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		cs = append(cs, container{Name: f[0], State: f[1], Managed: len(f) > 2 && f[2] == "true"})
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	return cs, nil
}

// Audit implements chaos.Auditor: the managed worker containers that exist
// against the leader's records. A record that is being created or removed
// may lack its container for a moment, so only running and draining
// records count as missing; the checker polls until the two agree.
func (t *Target) Audit(ctx context.Context) (chaos.AuditResult, error) {
	var res chaos.AuditResult
	cs, err := t.containers(ctx, "worker")
	if err != nil {
		return res, err
	}
	st, err := t.Scale(ctx)
	if err != nil {
		return res, err
	}
	have := map[string]int{}
	for _, c := range cs {
		if c.Managed {
			res.Containers = append(res.Containers, c.Name)
			have[c.Name]++
		}
	}
	recorded := map[string]int{}
	for _, w := range st.Workers {
		res.Records = append(res.Records, w.Name+"="+w.State)
		recorded[w.Name]++
		if (w.State == api.ManagedRunning || w.State == api.ManagedDraining) && have[w.Name] == 0 {
			res.Missing = append(res.Missing, w.Name)
		}
		if recorded[w.Name] == 2 {
			res.Doubled = append(res.Doubled, w.Name)
		}
	}
	for name, n := range have {
		if recorded[name] == 0 {
			res.Orphans = append(res.Orphans, name)
		}
		if n > 1 {
			res.Doubled = append(res.Doubled, name)
		}
	}
	sort.Strings(res.Orphans)
	sort.Strings(res.Doubled)
	return res, nil
}

// Docker runs the docker CLI and returns its standard output; the error
// carries its standard error.
func Docker(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
