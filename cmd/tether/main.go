// Command tether is the single binary for every tether role: the hub
// (`tether server`), the node agent (`tether agent`), a whole local cluster
// (`tether up`) and drop-in Konnectivity server and agent. main only wires
// flags, environment and config files to the internal packages.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/tether-dev/tether/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tether:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "tether",
		Short:         "Secure node ↔ control-plane communication for Kubernetes-compatible clusters",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(subcommands()...)
	return root
}

// subcommands lists every role; each lives in its own file of this package.
func subcommands() []*cobra.Command {
	return []*cobra.Command{
		newServerCmd(),
		newUpCmd(),
		newVersionCmd(),
		newTokenCmd(),
		newAgentCmd(),
		newKonnectivityServerCmd(),
		newKonnectivityAgentCmd(),
		newCheckCmd(),
		newPodInitCmd(),
		newEtcdCmd(),
	}
}

// withConfig adds --config to cmd and makes every flag of cmd also settable by
// TETHER_<FLAG> and by the YAML config file (flag > env > file > default).
func withConfig(cmd *cobra.Command) *cobra.Command {
	var path string
	cmd.Flags().StringVar(&path, "config", "", "optional YAML file whose keys are this command's flag names")
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if err := config.Apply(c.Flags(), path, os.LookupEnv); err != nil {
			return err
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
	return cmd
}

// newLogger returns the process logger writing to stderr.
func newLogger(verbose bool) *slog.Logger { return newLoggerTo(os.Stderr, verbose) }

// newLoggerTo returns a text logger at debug level when verbose.
func newLoggerTo(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	// The k8s.io libraries log through klog; send that to the same place.
	klog.SetSlogLogger(logger)
	return logger
}
