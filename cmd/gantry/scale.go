package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/gantryhq/gantry/api"
	"github.com/gantryhq/gantry/transport"
	"github.com/spf13/cobra"
)

func newScaleCmd() *cobra.Command {
	var (
		cf                clientFlags
		count, minN, maxN int
		backlog           int
		cooldown          string
		stale             bool
	)
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "Show or set how many worker containers the leader runs",
		Long: `Without flags, scale shows the scaling policy, the desired and actual number of
managed worker containers and each one's state. With flags it changes the
policy (replicated through Raft); flags not given keep their current values.

  --count N                   fixed: exactly N managed workers
  --min A --max B             auto: ceil((pending+running) / backlog-per-worker), clamped to [A, B]
  --backlog-per-worker K      auto: one worker per K tasks
  --cooldown D                auto: scale down only after the lower count held for D`,
		Example: `  gantry scale --min 1 --max 8
  gantry scale --count 3
  gantry scale --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := cf.client()
			ctx, cancel := context.WithTimeout(cmd.Context(), cf.timeout)
			defer cancel()
			var st api.ScaleStatus
			err := retry(ctx, func() (err error) {
				st, err = c.Scale(ctx, transport.ReadOptions{Stale: stale})
				return err
			})
			if err != nil {
				return err
			}
			f := cmd.Flags()
			changed := f.Changed("count") || f.Changed("min") || f.Changed("max") || f.Changed("backlog-per-worker") || f.Changed("cooldown")
			if changed {
				p := st.Policy
				autoFlags := f.Changed("min") || f.Changed("max")
				if f.Changed("count") && autoFlags {
					return errors.New("--count (fixed) and --min/--max (auto) exclude each other")
				}
				if f.Changed("count") {
					p.Mode, p.Count = api.ScaleFixed, count
				}
				if autoFlags {
					if p.Mode == api.ScaleFixed {
						p.Min, p.Max = p.Count, p.Count
					}
					p.Mode = api.ScaleAuto
					if f.Changed("min") {
						p.Min = minN
					}
					if f.Changed("max") {
						p.Max = maxN
					}
				}
				if f.Changed("backlog-per-worker") {
					p.BacklogPerWorker = backlog
				}
				if f.Changed("cooldown") {
					p.Cooldown = cooldown
				}
				err = retry(ctx, func() (err error) {
					st, err = c.SetScale(ctx, p)
					return err
				})
				if err != nil {
					return err
				}
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			return printScale(cmd.OutOrStdout(), st)
		},
	}
	cf.add(cmd)
	f := cmd.Flags()
	f.IntVar(&count, "count", 0, "fixed mode: exactly this many managed workers")
	f.IntVar(&minN, "min", 0, "auto mode: at least this many")
	f.IntVar(&maxN, "max", 0, "auto mode: at most this many")
	f.IntVar(&backlog, "backlog-per-worker", 0, "auto mode: one worker per this many pending+running tasks")
	f.StringVar(&cooldown, "cooldown", "", "auto mode: how long a lower count must hold before scaling down")
	f.BoolVar(&stale, "stale", false, "ask the first master that answers, without going through the leader")
	return cmd
}

func printScale(w io.Writer, st api.ScaleStatus) error {
	p := st.Policy
	if p.Mode == api.ScaleFixed {
		fmt.Fprintf(w, "policy: fixed, count %d\n", p.Count)
	} else {
		fmt.Fprintf(w, "policy: auto, min %d, max %d, one worker per %d tasks, cooldown %s\n", p.Min, p.Max, p.BacklogPerWorker, p.Cooldown)
	}
	fmt.Fprintf(w, "desired %d, running %d\nruntime: %s\n", st.Desired, st.Actual, st.Runtime)
	if st.LastError != "" {
		fmt.Fprintf(w, "last error (%s): %s\n", st.LastErrorAt.Local().Format(time.TimeOnly), st.LastError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tCONTAINER\tWORKER\tRUNNING\tSINCE")
	for _, mw := range st.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", mw.Name, mw.State, mw.Container, mw.Worker, mw.Running, mw.Since.Local().Format(time.TimeOnly))
	}
	if len(st.Workers) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Orphans) > 0 {
		fmt.Fprintf(w, "\norphans (removed after the grace period): %v\n", st.Orphans)
	}
	return nil
}
