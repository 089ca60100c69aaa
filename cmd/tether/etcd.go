package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/tether-dev/tether/internal/storage"
)

// newEtcdCmd runs one member of an etcd cluster that `tether up
// --etcd-members` (or a test) laid out with its certificates in a
// directory; it is what those start as child processes, so a member can
// be killed and restarted on its own.
func newEtcdCmd() *cobra.Command {
	var dir string
	var member int
	var verbose bool
	cmd := &cobra.Command{
		Use:   "etcd --cluster-dir DIR --member N",
		Short: "Run one member of a tether-made etcd cluster (mutual TLS) until SIGTERM/SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || member < 1 {
				return errors.New("--cluster-dir and --member (1-based) are required")
			}
			c, err := storage.OpenCluster(dir, newLogger(verbose))
			if err != nil {
				return err
			}
			return c.RunMember(cmd.Context(), member-1)
		},
	}
	cmd.Flags().StringVar(&dir, "cluster-dir", "", "etcd cluster directory (cluster.json, pki/, one data dir per member), e.g. <tether up --data-dir>/etcd")
	cmd.Flags().IntVar(&member, "member", 0, "which member to run, 1-based")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	return withConfig(cmd)
}
