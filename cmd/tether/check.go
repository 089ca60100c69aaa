package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-dev/tether/internal/check"
)

// newCheckCmd is `tether check`: audit a live cluster's communication paths.
func newCheckCmd() *cobra.Command {
	var (
		kubeconfig, output, outFile string
		timeout                     time.Duration
		verbose                     bool
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Audit a live cluster's node ↔ control-plane paths against the seed's security advice",
		Long: `Probes every communication path of the cluster live with an admin's
credentials and reports per path: state, evidence, risk and the exact fix.

Exit code: 0 all verified and no high-risk finding; 1 a high-risk finding;
2 no high-risk finding but some checks could not be verified.`,
		Example: `  tether check --kubeconfig admin.kubeconfig
  tether check -o json | jq '.findings[] | select(.state=="fail")'
  tether check -o html --out check.html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "table", "json", "html":
			default:
				return fmt.Errorf("-o %q: want table, json or html", output)
			}
			path := kubeconfig
			if path == "" {
				path = os.Getenv("KUBECONFIG")
			}
			if path == "" {
				path = filepath.Join(defaultStateDir(), "admin.kubeconfig")
			}
			rc, err := clientcmd.BuildConfigFromFlags("", path)
			if err != nil {
				return fmt.Errorf("kubeconfig %s: %w", path, err)
			}
			c, err := check.New(check.Config{REST: rc, Timeout: timeout, Logger: newLogger(verbose)})
			if err != nil {
				return err
			}
			report, err := c.Run(cmd.Context())
			if err != nil {
				return err
			}
			var w io.Writer = cmd.OutOrStdout()
			if outFile != "" {
				f, err := os.Create(outFile)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			var werr error
			switch output {
			case "json":
				werr = report.WriteJSON(w)
			case "html":
				werr = report.WriteHTML(w)
			default:
				werr = report.WriteTable(w)
			}
			if c, ok := w.(io.Closer); ok && outFile != "" {
				if err := c.Close(); werr == nil {
					werr = err
				}
			}
			if werr != nil {
				return werr
			}
			if outFile != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: %s\n", outFile, report.Summarize())
			}
			// The exit code gates CI: 1 high risk, 2 unverified checks.
			if code := report.ExitCode(); code != 0 {
				os.Exit(code)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&kubeconfig, "kubeconfig", "", "admin kubeconfig (default: $KUBECONFIG, else <state dir>/admin.kubeconfig)")
	fs.StringVarP(&output, "output", "o", "table", "table, json or html")
	fs.StringVar(&outFile, "out", "", "write the report to this file instead of stdout")
	fs.DurationVar(&timeout, "timeout", 10*time.Second, "bound on each probe")
	fs.BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	return withConfig(cmd)
}
