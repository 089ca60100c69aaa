package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-dev/tether/internal/bootstraptoken"
	"github.com/tether-dev/tether/internal/pki"
)

func newTokenCmd() *cobra.Command {
	var kubeconfig string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage bootstrap tokens that let new nodes join (TLS bootstrapping)",
	}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "admin kubeconfig (default: $KUBECONFIG, else <state dir>/admin.kubeconfig)")
	load := func() (*kubernetes.Clientset, string, []byte, error) {
		path := kubeconfig
		if path == "" {
			path = os.Getenv("KUBECONFIG")
		}
		if path == "" {
			path = filepath.Join(defaultStateDir(), "admin.kubeconfig")
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, "", nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, "", nil, err
		}
		ca := cfg.CAData
		if len(ca) == 0 && cfg.CAFile != "" {
			if ca, err = os.ReadFile(cfg.CAFile); err != nil {
				return nil, "", nil, err
			}
		}
		return c, cfg.Host, ca, nil
	}

	var o bootstraptoken.Options
	create := &cobra.Command{
		Use:   "create [id.secret]",
		Short: "Create a token and print the command a node runs to join",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, host, ca, err := load()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				o.Token = args[0]
			}
			tok, err := bootstraptoken.Create(cmd.Context(), c, o)
			if err != nil {
				return err
			}
			cert, err := pki.ParseCertPEM(ca)
			if err != nil {
				return fmt.Errorf("CA in kubeconfig: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tether agent --server %s --token %s --ca-cert-hash %s --node-name <name> --data-dir <dir>\n", host, tok, pki.CAHash(cert))
			return nil
		},
	}
	create.Flags().DurationVar(&o.TTL, "ttl", 24*time.Hour, "token lifetime (0 = never expires; insecure)")
	create.Flags().StringVar(&o.Description, "description", "", "human-readable description")
	create.Flags().StringSliceVar(&o.Groups, "groups", nil, "extra groups (system:bootstrappers:…)")
	create.Flags().StringSliceVar(&o.Usages, "usages", nil, "usages: authentication, signing (default both)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List bootstrap tokens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, _, err := load()
			if err != nil {
				return err
			}
			toks, err := bootstraptoken.List(cmd.Context(), c, true)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TOKEN\tTTL\tEXPIRES\tUSAGES\tDESCRIPTION\tEXTRA GROUPS")
			for _, t := range toks {
				ttl, exp := "<forever>", "<never>"
				if t.Expires != nil {
					ttl, exp = time.Until(*t.Expires).Round(time.Second).String(), t.Expires.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%v\n", t.Token, ttl, exp, t.Usages, t.Description, t.Groups)
			}
			return w.Flush()
		},
	}
	del := &cobra.Command{
		Use:   "delete <id|id.secret>...",
		Short: "Delete bootstrap tokens",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, _, err := load()
			if err != nil {
				return err
			}
			for _, a := range args {
				if err := bootstraptoken.Delete(cmd.Context(), c, a); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "bootstrap token %q deleted\n", a)
			}
			return nil
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}
