package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/gantryhq/gantry/master"
	"github.com/gantryhq/gantry/master/docker"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// scaleFlags choose and configure the container runtime a leader scales
// workers with.
type scaleFlags struct {
	mode    string
	image   string
	network string
	slots   int
	join    []string
	volumes []string
}

func (s *scaleFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.mode, "scaling", "auto", "worker containers through the Docker Engine API: auto (when this master runs in a container, or --worker-image is set, and a Docker engine is configured), docker, or off")
	f.StringVar(&s.image, "worker-image", "", "image of the worker containers the leader starts (default: the image of this master's own container)")
	f.StringVar(&s.network, "worker-network", "", "network of the worker containers (default: the network of this master's own container)")
	f.IntVar(&s.slots, "worker-slots", 4, "--slots of each worker container the leader starts")
	f.StringSliceVar(&s.join, "worker-join", nil, "gossip seeds the leader's worker containers join (default: --join plus this master's gossip address)")
	f.StringSliceVar(&s.volumes, "worker-volume", nil, "volume mounted into the leader's worker containers, docker -v syntax name:/path[:ro] (repeatable)")
}

// dockerConfigured reports whether a Docker engine is configured here: the
// DOCKER_HOST variable or the default socket.
func dockerConfigured() bool {
	if os.Getenv("DOCKER_HOST") != "" {
		return true
	}
	_, err := os.Stat("/var/run/docker.sock")
	return err == nil
}

// apply sets cfg.Runtime (or cfg.RuntimeNote saying why there is none).
func (s *scaleFlags) apply(cfg *master.Config, gf gossipFlags, lf logFlags, log hclog.Logger) error {
	switch s.mode {
	case "off":
		cfg.RuntimeNote = "scaling is off (--scaling off)"
		return nil
	case "auto":
		if !dockerConfigured() {
			cfg.RuntimeNote = "no Docker engine configured (no DOCKER_HOST and no /var/run/docker.sock); --scaling docker forces it"
			return nil
		}
		if s.image == "" && docker.SelfContainerID() == "" {
			cfg.RuntimeNote = "this master does not run in a container and --worker-image is not set"
			return nil
		}
	case "docker":
	default:
		return fmt.Errorf("--scaling %q: want auto, docker or off", s.mode)
	}
	join := s.join
	if len(join) == 0 {
		join = append([]string{}, gf.join...)
		if own := gf.advertise; own != "" && !contains(join, own) {
			join = append(join, own)
		}
	}
	if len(join) == 0 {
		return fmt.Errorf("--worker-join: the worker containers need gossip seeds (set --join or --worker-join)")
	}
	var env []string
	if gf.key != "" {
		env = append(env, "GANTRY_GOSSIP_KEY="+gf.key)
	}
	env = append(env, "GANTRY_LOG_LEVEL="+lf.level)
	if lf.json {
		env = append(env, "GANTRY_LOG_JSON=true")
	}
	rt, err := docker.New(docker.Config{Cluster: gf.cluster, Image: s.image, Network: s.network, Join: join, Slots: s.slots, Env: env, Volumes: s.volumes})
	if err != nil {
		return err
	}
	cfg.Runtime = rt
	log.Info("scaling worker containers through Docker", "cluster", gf.cluster, "image", orDefault(s.image, "own"), "network", orDefault(s.network, "own"), "join", strings.Join(join, ","))
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
