package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tether-dev/tether/internal/hub"
)

func newUpCmd() *cobra.Command {
	var f hubFlags
	var nodes int
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a whole local cluster (hub + nodes) with embedded etcd; Ctrl-C stops it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodes < 0 {
				return errors.New("--nodes must be >= 0")
			}
			if nodes > 0 {
				return errors.New("--nodes > 0 needs the node agent, which this build does not have yet; use --nodes 0")
			}
			cfg, err := f.config()
			if err != nil {
				return err
			}
			return runUp(cmd.Context(), cmd.OutOrStdout(), cfg, f.verbose)
		},
	}
	f.add(cmd.Flags(), defaultStateDir())
	cmd.Flags().IntVar(&nodes, "nodes", 0, "number of node agents to start")
	// A local cluster listens on loopback unless told otherwise.
	_ = cmd.Flags().Set("bind-address", "127.0.0.1")
	cmd.Flags().Lookup("bind-address").Changed = false
	cmd.Flags().Lookup("bind-address").DefValue = "127.0.0.1"
	return withConfig(cmd)
}

func runUp(ctx context.Context, out io.Writer, cfg hub.Config, verbose bool) error {
	start := time.Now()
	if cfg.AdvertiseAddress == nil && cfg.BindAddress.IsLoopback() {
		cfg.AdvertiseAddress = cfg.BindAddress
	}
	logFile, err := openLog(cfg.DataDir)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cfg.Logger = newLoggerTo(logFile, verbose)
	fmt.Fprintf(out, "• data dir %s (log: %s)\n", cfg.DataDir, logFile.Name())
	h, err := hub.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	fmt.Fprintln(out, "• starting hub (PKI, embedded etcd, API server)…")
	go func() { done <- h.Run(ctx) }()
	select {
	case <-h.Ready():
	case err := <-done:
		if err == nil {
			err = errors.New("hub stopped before it was ready")
		}
		return err
	}
	fmt.Fprintf(out, "• hub ready at %s in %s\n", h.Server(), time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(out, "\nCluster is up. In another shell:\n\n  export KUBECONFIG=%s\n  kubectl get ns\n\nCtrl-C stops the cluster; `tether up --data-dir %s` resumes it.\n", h.AdminKubeconfig(), cfg.DataDir)
	if err := os.WriteFile(filepath.Join(cfg.DataDir, "up.ready"), []byte(h.Server()+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(cfg.DataDir, "up.ready"))
	err = <-done
	fmt.Fprintln(out, "• cluster stopped")
	return err
}

func openLog(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(dir, "tether.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
}
