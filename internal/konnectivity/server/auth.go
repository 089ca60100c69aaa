package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// CertAuthenticator accepts agents by their verified client certificate.
type CertAuthenticator struct {
	// Allow, if set, must accept the certificate's common name.
	Allow func(cn string) error
}

// AuthenticateAgent implements AgentAuthenticator.
func (c CertAuthenticator) AuthenticateAgent(ctx context.Context, _ metadata.MD) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return "", errors.New("no verified client certificate")
	}
	cn := ti.State.VerifiedChains[0][0].Subject.CommonName
	if c.Allow != nil {
		if err := c.Allow(cn); err != nil {
			return "", fmt.Errorf("client certificate %q: %w", cn, err)
		}
	}
	return cn, nil
}

// TokenReviewAuthenticator checks the agent's bearer token with a
// TokenReview, as upstream does with --agent-namespace,
// --agent-service-account and --authentication-audience.
type TokenReviewAuthenticator struct {
	Client         kubernetes.Interface
	Namespace      string
	ServiceAccount string
	Audience       string
}

// AuthenticateAgent implements AgentAuthenticator.
func (a TokenReviewAuthenticator) AuthenticateAgent(ctx context.Context, md metadata.MD) (string, error) {
	v, err := wire.One(md, wire.MDAuthorization)
	if err != nil {
		return "", err
	}
	token, ok := strings.CutPrefix(v, wire.BearerPrefix)
	if !ok || token == "" || len(token) > 16<<10 {
		return "", errors.New("authorization is not a bearer token")
	}
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}
	if a.Audience != "" {
		tr.Spec.Audiences = []string{a.Audience}
	}
	res, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token review: %w", err)
	}
	if !res.Status.Authenticated {
		return "", fmt.Errorf("token not authenticated: %s", res.Status.Error)
	}
	if a.Audience != "" && !slices.Contains(res.Status.Audiences, a.Audience) {
		return "", fmt.Errorf("token audience %v does not include %q", res.Status.Audiences, a.Audience)
	}
	want := "system:serviceaccount:" + a.Namespace + ":" + a.ServiceAccount
	if res.Status.User.Username != want {
		return "", fmt.Errorf("token user %q is not %q", res.Status.User.Username, want)
	}
	return res.Status.User.Username, nil
}

// NodeEntitlement returns an Entitled check for node identities: an agent
// authenticated as "system:node:<name>" (or a certificate CN <name> when
// bareCN is set) must use agentID <name>, may announce only host=<name>, and
// only IP identifiers that nodeAddrs reports for that node. Other identities
// are refused unless allowOther is set.
func NodeEntitlement(nodeAddrs func(name string) ([]netip.Addr, error), allowOther bool) func(identity, agentID string, ids wire.Identifiers) error {
	return func(identity, agentID string, ids wire.Identifiers) error {
		name, ok := strings.CutPrefix(identity, "system:node:")
		if !ok {
			if allowOther {
				return nil
			}
			return fmt.Errorf("identity %q is not a node", identity)
		}
		if agentID != name {
			return fmt.Errorf("node %q may not use agentID %q", name, agentID)
		}
		for _, h := range ids.Hosts {
			if h != strings.ToLower(name) {
				return fmt.Errorf("node %q may not claim host %q", name, h)
			}
		}
		if len(ids.CIDRs) > 0 || ids.DefaultRoute {
			return fmt.Errorf("node %q may not claim CIDRs or the default route", name)
		}
		if len(ids.IPv4)+len(ids.IPv6) == 0 {
			return nil
		}
		if nodeAddrs == nil {
			return fmt.Errorf("node %q may not claim addresses (no address source configured)", name)
		}
		own, err := nodeAddrs(name)
		if err != nil {
			return fmt.Errorf("look up node %q: %w", name, err)
		}
		for _, a := range append(append([]netip.Addr{}, ids.IPv4...), ids.IPv6...) {
			if !slices.Contains(own, a) {
				return fmt.Errorf("node %q may not claim address %s", name, a)
			}
		}
		return nil
	}
}
