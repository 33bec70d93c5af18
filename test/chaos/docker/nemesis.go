package dockerchaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/test/chaos"
)

// FaultNames lists every fault Nemeses knows, in the order the docs give.
var FaultNames = []string{
	"kill-leader", "kill-master", "pause-leader", "partition-leader", "partition-leader-oneway",
	"kill-worker", "kill-worker-scaling", "lose-quorum", "rolling-restart",
}

// Nemeses returns the named faults against t.
func Nemeses(t *Target, names []string) ([]chaos.Nemesis, error) {
	var out []chaos.Nemesis
	for _, n := range names {
		var nm chaos.Nemesis
		switch n {
		case "kill-leader":
			nm = &killMasters{t: t, name: n, leader: true}
		case "kill-master":
			nm = &killMasters{t: t, name: n, random: 1}
		case "lose-quorum":
			nm = &killMasters{t: t, name: n, leader: true, random: 1}
		case "pause-leader":
			nm = &pauseLeader{t: t}
		case "partition-leader":
			nm = &partitionLeader{t: t}
		case "partition-leader-oneway":
			nm = &oneWay{t: t}
		case "kill-worker":
			nm = &killWorker{t: t, name: n}
		case "kill-worker-scaling":
			nm = &killWorker{t: t, name: n, scaling: true}
		case "rolling-restart":
			nm = &rollingRestart{t: t}
		default:
			return nil, fmt.Errorf("unknown fault %q (known: %s)", n, strings.Join(FaultNames, ","))
		}
		out = append(out, nm)
	}
	return out, nil
}

// startMaster starts a master's container and waits until it answers.
func (t *Target) startMaster(ctx context.Context, id string) error {
	if _, err := Docker(ctx, "start", t.Container(id)); err != nil {
		return err
	}
	return t.WaitAnswers(ctx, id, 90*time.Second)
}

// killMasters SIGKILLs the leader (leader) and random other masters
// (random of them), and starts them again at heal. lose-quorum is the
// leader and one more of three.
type killMasters struct {
	t       *Target
	name    string
	leader  bool
	random  int
	victims []string
}

func (k *killMasters) Name() string { return k.name }

func (k *killMasters) Inject(ctx context.Context, rng *rand.Rand) (string, error) {
	k.victims = nil
	pool := k.t.IDs()
	if k.leader {
		id, err := k.t.WaitLeader(ctx, 30*time.Second)
		if err != nil {
			return "", err
		}
		k.victims = append(k.victims, id)
		pool = without(pool, id)
	}
	rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	k.victims = append(k.victims, pool[:min(k.random, len(pool))]...)
	var names []string
	for i, id := range k.victims {
		if _, err := Docker(ctx, "kill", "--signal", "KILL", k.t.Container(id)); err != nil {
			return strings.Join(names, ", "), err
		}
		role := "master"
		if k.leader && i == 0 {
			role = "leader"
		}
		names = append(names, fmt.Sprintf("SIGKILL %s %s (%s)", role, id, k.t.Container(id)))
	}
	return strings.Join(names, ", "), nil
}

func (k *killMasters) Heal(ctx context.Context) error {
	var errs []error
	for _, id := range k.victims {
		errs = append(errs, k.t.startMaster(ctx, id))
	}
	return errors.Join(errs...)
}

// pauseLeader freezes the leader's container (docker pause: SIGSTOP to
// every process through the freezer cgroup) and thaws it at heal.
type pauseLeader struct {
	t      *Target
	victim string
}

func (p *pauseLeader) Name() string { return "pause-leader" }

func (p *pauseLeader) Inject(ctx context.Context, _ *rand.Rand) (string, error) {
	p.victim = ""
	id, err := p.t.WaitLeader(ctx, 30*time.Second)
	if err != nil {
		return "", err
	}
	p.victim = id
	_, err = Docker(ctx, "pause", p.t.Container(id))
	return fmt.Sprintf("docker pause leader %s (%s)", id, p.t.Container(id)), err
}

func (p *pauseLeader) Heal(ctx context.Context) error {
	if p.victim == "" {
		return nil
	}
	st, err := Docker(ctx, "inspect", "-f", "{{.State.Paused}}", p.t.Container(p.victim))
	if err != nil || strings.TrimSpace(st) != "true" {
		return err
	}
	_, err = Docker(ctx, "unpause", p.t.Container(p.victim))
	return err
}

// partitionLeader disconnects the leader's container from the cluster
// network (it loses every peer, worker and the published port) and
// reconnects it with its service alias at heal.
type partitionLeader struct {
	t      *Target
	victim string
}

func (p *partitionLeader) Name() string { return "partition-leader" }

func (p *partitionLeader) Inject(ctx context.Context, _ *rand.Rand) (string, error) {
	p.victim = ""
	id, err := p.t.WaitLeader(ctx, 30*time.Second)
	if err != nil {
		return "", err
	}
	p.victim = id
	_, err = Docker(ctx, "network", "disconnect", "--force", p.t.Network(), p.t.Container(id))
	return fmt.Sprintf("docker network disconnect %s %s (leader %s)", p.t.Network(), p.t.Container(id), id), err
}

func (p *partitionLeader) Heal(ctx context.Context) error {
	if p.victim == "" {
		return nil
	}
	name := p.t.Container(p.victim)
	nets, err := Docker(ctx, "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", name)
	if err != nil {
		return err
	}
	if strings.Contains(" "+nets, " "+p.t.Network()+" ") {
		return nil
	}
	_, err = Docker(ctx, "network", "connect", "--alias", p.t.Alias(p.victim), p.t.Network(), name)
	return err
}

// oneWay drops, inside the leader's network namespace, every packet coming
// from the other masters (iptables INPUT rules entered with nsenter), while
// the leader's own packets still reach them. For gossip (UDP) that is a true
// one-way cut; a TCP connection stalls both ways once its acknowledgements
// are lost, after the followers have received what was in flight. It needs
// root, nsenter and iptables on the Docker host.
type oneWay struct {
	t      *Target
	pid    string
	ips    []string
	victim string
}

func (o *oneWay) Name() string { return "partition-leader-oneway" }

func (o *oneWay) Inject(ctx context.Context, _ *rand.Rand) (string, error) {
	o.pid, o.ips, o.victim = "", nil, ""
	id, err := o.t.WaitLeader(ctx, 30*time.Second)
	if err != nil {
		return "", err
	}
	pid, err := Docker(ctx, "inspect", "-f", "{{.State.Pid}}", o.t.Container(id))
	if err != nil {
		return "", err
	}
	o.pid, o.victim = strings.TrimSpace(pid), id
	for _, other := range without(o.t.IDs(), id) {
		ip, err := Docker(ctx, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+o.t.Network()+`").IPAddress}}`, o.t.Container(other))
		if err != nil || strings.TrimSpace(ip) == "" {
			continue // that master is not on the network now
		}
		ip = strings.TrimSpace(ip)
		if out, err := run(ctx, "nsenter", "-t", o.pid, "-n", "iptables", "-I", "INPUT", "-s", ip, "-j", "DROP"); err != nil {
			return "", fmt.Errorf("nsenter iptables (needs root, nsenter and iptables on the Docker host): %v: %s", err, out)
		}
		o.ips = append(o.ips, ip)
	}
	return fmt.Sprintf("leader %s (%s) drops every packet from %v (iptables INPUT in its namespace)", id, o.t.Container(id), o.ips), nil
}

func (o *oneWay) Heal(ctx context.Context) error {
	var errs []error
	for _, ip := range o.ips {
		if out, err := run(ctx, "nsenter", "-t", o.pid, "-n", "iptables", "-D", "INPUT", "-s", ip, "-j", "DROP"); err != nil {
			// The container restarted (a new namespace without the rule) if
			// its pid changed; anything else is a failure to heal.
			now, _ := Docker(ctx, "inspect", "-f", "{{.State.Pid}}", o.t.Container(o.victim))
			if strings.TrimSpace(now) == o.pid {
				errs = append(errs, fmt.Errorf("iptables -D: %v: %s", err, out))
			}
		}
	}
	o.ips = nil
	return errors.Join(errs...)
}

// killWorker SIGKILLs a random worker container. The compose workers are
// started again at heal; the leader's managed workers are left to the
// scaler, which restarts or replaces them. With scaling, the fault first
// raises the fixed worker count by one and kills a worker while the leader
// creates the new container; heal restores the policy.
type killWorker struct {
	t       *Target
	name    string
	scaling bool

	victim  string
	managed bool
	policy  *api.ScalePolicy
}

func (k *killWorker) Name() string { return k.name }

func (k *killWorker) Inject(ctx context.Context, rng *rand.Rand) (string, error) {
	k.victim, k.managed, k.policy = "", false, nil
	desc := ""
	var before map[string]bool
	if k.scaling {
		st, err := k.t.Scale(ctx)
		if err != nil {
			return "", err
		}
		p := st.Policy
		k.policy = &p
		up := api.ScalePolicy{Mode: api.ScaleFixed, Count: max(st.Desired, 1) + 1}
		cs, err := k.t.containers(ctx, "worker")
		if err != nil {
			return "", err
		}
		before = map[string]bool{}
		for _, c := range cs {
			before[c.Name] = true
		}
		if err := k.t.SetScale(ctx, up); err != nil {
			return "", err
		}
		desc = fmt.Sprintf("scale to %d workers; ", up.Count)
	}
	var pool []container
	deadline := time.Now().Add(15 * time.Second)
	for {
		cs, err := k.t.containers(ctx, "worker")
		if err != nil {
			return desc, err
		}
		pool = pool[:0]
		var fresh []container
		for _, c := range cs {
			if c.State == "running" {
				pool = append(pool, c)
				if k.scaling && !before[c.Name] {
					fresh = append(fresh, c)
				}
			}
		}
		// While scaling, wait for the new container and kill it or another
		// worker at random.
		if !k.scaling || len(fresh) > 0 || time.Now().After(deadline) {
			if len(fresh) > 0 && rng.IntN(2) == 0 {
				pool = fresh
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(pool) == 0 {
		return desc, errors.New("no running worker container")
	}
	v := pool[rng.IntN(len(pool))]
	k.victim, k.managed = v.Name, v.Managed
	_, err := Docker(ctx, "kill", "--signal", "KILL", v.Name)
	kind := "compose"
	if v.Managed {
		kind = "leader-started"
	}
	return desc + fmt.Sprintf("SIGKILL %s worker %s", kind, v.Name), err
}

func (k *killWorker) Heal(ctx context.Context) error {
	var errs []error
	if k.victim != "" && !k.managed {
		if _, err := Docker(ctx, "start", k.victim); err != nil {
			errs = append(errs, err)
		}
	}
	if k.policy != nil {
		errs = append(errs, k.t.SetScale(ctx, *k.policy))
	}
	return errors.Join(errs...)
}

// rollingRestart stops every master in turn with SIGTERM (docker stop,
// 20s grace: a leader hands leadership over first), starts it again and
// waits for it to answer and for a leader before the next.
type rollingRestart struct{ t *Target }

func (r *rollingRestart) Name() string { return "rolling-restart" }

func (r *rollingRestart) Inject(ctx context.Context, _ *rand.Rand) (string, error) {
	ids := r.t.IDs()
	for _, id := range ids {
		if _, err := Docker(ctx, "stop", "--time", "20", r.t.Container(id)); err != nil {
			return "", err
		}
		if err := r.t.startMaster(ctx, id); err != nil {
			return "", err
		}
		if _, err := r.t.WaitLeader(ctx, 60*time.Second); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("docker stop (SIGTERM) + start, one at a time: %s", strings.Join(ids, ", ")), nil
}

func (r *rollingRestart) Heal(ctx context.Context) error {
	var errs []error
	for _, id := range r.t.IDs() {
		st, err := Docker(ctx, "inspect", "-f", "{{.State.Running}}", r.t.Container(id))
		if err == nil && strings.TrimSpace(st) != "true" {
			errs = append(errs, r.t.startMaster(ctx, id))
		}
	}
	return errors.Join(errs...)
}

// HealAll puts every container of the cluster back: unpauses, reconnects
// and starts the masters and the compose workers. The CLI calls it when the
// run is interrupted, so no fault outlives the harness.
func (t *Target) HealAll(ctx context.Context) error {
	var errs []error
	for _, id := range t.IDs() {
		name := t.Container(id)
		st, err := Docker(ctx, "inspect", "-f", "{{.State.Paused}} {{.State.Running}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f := strings.Fields(st)
		if len(f) >= 1 && f[0] == "true" {
			_, err := Docker(ctx, "unpause", name)
			errs = append(errs, err)
		}
		if !strings.Contains(" "+st+" ", " "+t.Network()+" ") {
			_, err := Docker(ctx, "network", "connect", "--alias", t.Alias(id), t.Network(), name)
			errs = append(errs, err)
		}
		if len(f) >= 2 && f[1] != "true" {
			_, err := Docker(ctx, "start", name)
			errs = append(errs, err)
		}
	}
	cs, err := t.containers(ctx, "worker")
	errs = append(errs, err)
	for _, c := range cs {
		if !c.Managed && c.State != "running" {
			_, err := Docker(ctx, "start", c.Name)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func without(ids []string, id string) []string {
	var out []string
	for _, x := range ids {
		if x != id {
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

// run runs a host command (nsenter) and returns its combined output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
