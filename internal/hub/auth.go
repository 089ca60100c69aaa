package hub

import (
	"crypto"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authzunion "k8s.io/apiserver/pkg/authorization/union"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/client-go/informers"

	"github.com/tether-dev/tether/internal/apiserver"
	"github.com/tether-dev/tether/internal/apiserver/authn"
	"github.com/tether-dev/tether/internal/apiserver/authz"
	"github.com/tether-dev/tether/internal/apiserver/proxy"
	"github.com/tether-dev/tether/internal/pki"
)

// Issuer is the "iss" of service-account tokens, as kubeadm configures it.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// buildAuth returns the apiserver.Config.Build hook: token authenticators,
// TokenRequest, OIDC discovery, and (once present) the authorizers.
func (h *Hub) buildAuth(cluster *pki.Cluster, jwksURI string) func(apiserver.BuildContext) (apiserver.Extensions, error) {
	return func(b apiserver.BuildContext) (apiserver.Extensions, error) {
		var ext apiserver.Extensions
		objects := authn.NewInformerObjects(b.Informers, b.Client)
		issuer, err := authn.NewIssuer(Issuer, cluster.ServiceAccountKey, nil)
		if err != nil {
			return ext, fmt.Errorf("service-account issuer: %w", err)
		}
		keys := []crypto.PublicKey{cluster.ServiceAccountKey.Public()}
		sa, err := authn.NewSATokenAuthenticator([]string{Issuer}, keys, b.APIAudiences, objects, nil)
		if err != nil {
			return ext, err
		}
		ext.TokenAuthenticators = []authenticator.Token{sa, authn.NewBootstrapTokenAuthenticator(objects, nil)}
		core := map[string]rest.Storage{"serviceaccounts/token": &authn.TokenRequestREST{Issuer: issuer, Objects: objects, Audiences: b.APIAudiences}}
		ext.Storage = map[schema.GroupVersion]map[string]rest.Storage{corev1.SchemeGroupVersion: core}
		subs, err := proxy.Subresources(h.kubeletConfig(cluster), b.Stores["pods"], b.Stores["nodes"], b.Stores["services"], b.Stores["endpoints"])
		if err != nil {
			return ext, err
		}
		for path, st := range subs {
			core[path] = st
		}
		oidc, err := authn.NewOIDC(Issuer, jwksURI, keys)
		if err != nil {
			return ext, err
		}
		rbac := authz.NewRBAC(b.Informers)
		node := authz.NewNode(b.Informers)
		ext.Authorizers = []authzunion.NamedAuthorizer{
			{AuthorizerName: "Node", Authorizer: node},
			{AuthorizerName: "RBAC", Authorizer: rbac},
		}
		// The escalation check asks the same chain the server uses.
		chain, err := authzunion.New(append([]authzunion.NamedAuthorizer{{AuthorizerName: "system:masters",
			Authorizer: authorizerfactory.NewPrivilegedGroups(user.SystemPrivilegedGroup)}}, ext.Authorizers...)...)
		if err != nil {
			return ext, err
		}
		restriction := authz.NewNodeRestriction()
		if wants, ok := restriction.(interface {
			SetExternalKubeInformerFactory(informers.SharedInformerFactory)
		}); ok {
			wants.SetExternalKubeInformerFactory(b.Informers)
		}
		if v, ok := restriction.(admission.InitializationValidator); ok {
			if err := v.ValidateInitialization(); err != nil {
				return ext, err
			}
		}
		ext.Admission = []admission.Interface{authz.NewEscalationCheck(rbac, chain), restriction}
		ext.RulesResolver = rbac
		ext.Handlers = map[string]http.Handler{
			"/.well-known/openid-configuration": oidc.ConfigHandler(),
			"/openid/v1/jwks":                   oidc.JWKSHandler(),
		}
		return ext, nil
	}
}

// kubeletConfig is how the hub reaches kubelets: through the egress dialer,
// as tether-apiserver-kubelet-client, verifying kubelet certificates against
// the cluster CA unless told otherwise.
func (h *Hub) kubeletConfig(cluster *pki.Cluster) proxy.KubeletConfig {
	ca := h.cfg.KubeletCertificateAuthority
	if ca == "" {
		ca = cluster.CACertFile
	}
	return proxy.KubeletConfig{
		Dialer:                h.egress.Cluster(),
		ClientCertFile:        cluster.KubeletClientCertFile,
		ClientKeyFile:         cluster.KubeletClientKeyFile,
		CAFile:                ca,
		InsecureSkipTLSVerify: h.cfg.InsecureKubeletTLS,
		PreferredAddressTypes: h.cfg.KubeletPreferredAddressTypes,
		AllowLoopbackNodes:    h.cfg.AdvertiseAddress.IsLoopback(),
		Logger:                h.cfg.Logger,
	}
}
