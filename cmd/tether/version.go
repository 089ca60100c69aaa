package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tether-dev/tether/internal/version"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print tether's version and the Kubernetes API level it serves",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := version.Info()
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "tether %s (Kubernetes API %s, %s)\n", version.Tether, info.GitVersion, info.GoVersion)
			return err
		},
	}
}
