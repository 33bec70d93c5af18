// Command gantry is the single gantry binary: the master and worker daemons
// and the client commands (submit, task, status, health, version).
//
// Every flag can also be set through the environment as GANTRY_<FLAG>, with
// the flag name in upper snake case: --data-dir is GANTRY_DATA_DIR. A flag
// given on the command line wins over the environment.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/gantryhq/gantry/api"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a process exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "gantry:", describe(err))
		os.Exit(1)
	}
}

// describe renders an error for people, with the field for bad input.
func describe(err error) string {
	var e *api.Error
	if errors.As(err, &e) && e.Status != 0 {
		return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
	}
	return err.Error()
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "gantry",
		Short:         "gantry runs work on Docker workers from a highly available master cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return applyEnv(cmd)
		},
	}
	root.AddCommand(newMasterCmd(), newWorkerCmd(), newSubmitCmd(), newTaskCmd(), newStatusCmd(), newHealthCmd(), newScaleCmd(), newBenchCmd(), newVersionCmd())
	return root
}

// envName returns the environment variable for a flag: GANTRY_DATA_DIR for
// data-dir.
func envName(flag string) string {
	return "GANTRY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if that is set.
func applyEnv(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %v", envName(f.Name), v, err))
			return
		}
		f.Changed = true
	})
	return errors.Join(errs...)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "gantry", version)
		},
	}
}
