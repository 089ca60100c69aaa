package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
)

// OIDC serves the service-account issuer discovery documents
// (/.well-known/openid-configuration and /openid/v1/jwks) so that external
// systems can verify tether-issued tokens.
type OIDC struct {
	config, jwks []byte
}

// NewOIDC publishes keys for issuer; jwksURI is the public URL of the JWKS.
func NewOIDC(issuer, jwksURI string, keys []crypto.PublicKey) (*OIDC, error) {
	type jwk struct {
		Kty string `json:"kty"`
		Use string `json:"use"`
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Crv string `json:"crv,omitempty"`
		X   string `json:"x,omitempty"`
		Y   string `json:"y,omitempty"`
		N   string `json:"n,omitempty"`
		E   string `json:"e,omitempty"`
	}
	b64 := base64.RawURLEncoding.EncodeToString
	var set struct {
		Keys []jwk `json:"keys"`
	}
	algs := map[string]bool{}
	for _, k := range keys {
		kid, err := KeyID(k)
		if err != nil {
			return nil, err
		}
		switch pk := k.(type) {
		case *ecdsa.PublicKey:
			size := (pk.Curve.Params().BitSize + 7) / 8
			crv, alg := map[int]string{32: "P-256", 48: "P-384", 66: "P-521"}[size], map[int]string{32: "ES256", 48: "ES384", 66: "ES512"}[size]
			set.Keys = append(set.Keys, jwk{Kty: "EC", Use: "sig", Alg: alg, Kid: kid, Crv: crv, X: b64(pad(pk.X, size)), Y: b64(pad(pk.Y, size))})
			algs[alg] = true
		case *rsa.PublicKey:
			set.Keys = append(set.Keys, jwk{Kty: "RSA", Use: "sig", Alg: "RS256", Kid: kid, N: b64(pk.N.Bytes()), E: b64(big.NewInt(int64(pk.E)).Bytes())})
			algs["RS256"] = true
		default:
			return nil, fmt.Errorf("oidc: unsupported key %T", k)
		}
	}
	var algList []string
	for a := range algs {
		algList = append(algList, a)
	}
	config, err := json.Marshal(map[string]any{
		"issuer":                                issuer,
		"jwks_uri":                              jwksURI,
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": algList,
	})
	if err != nil {
		return nil, err
	}
	jwks, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	return &OIDC{config: config, jwks: jwks}, nil
}

func pad(n *big.Int, size int) []byte {
	b := n.Bytes()
	if len(b) >= size {
		return b
	}
	out := make([]byte, size)
	copy(out[size-len(b):], b)
	return out
}

// ConfigHandler serves /.well-known/openid-configuration.
func (o *OIDC) ConfigHandler() http.Handler { return static(o.config, "application/json") }

// JWKSHandler serves /openid/v1/jwks.
func (o *OIDC) JWKSHandler() http.Handler { return static(o.jwks, "application/jwk-set+json") }

func static(body []byte, contentType string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "public, max-age=3600")
		_, _ = w.Write(body)
	})
}
