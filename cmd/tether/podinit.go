package main

import (
	"github.com/spf13/cobra"

	"github.com/tether-dev/tether/internal/nodeagent/podnet"
)

// newPodInitCmd is the hidden `tether pod-init`: the node agent starts every
// container of a pod with its own network or mount namespace through it
// (see podnet.Main for the arguments; no TETHER_* variables apply).
func newPodInitCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "pod-init",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE:               func(_ *cobra.Command, args []string) error { return podnet.Main(args) },
	}
}
