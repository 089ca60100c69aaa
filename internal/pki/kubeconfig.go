package pki

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig describes a kubeconfig with one cluster, one user, one context.
type Kubeconfig struct {
	Server      string
	CAPEM       []byte // required: the hub is always verified
	ClusterName string // default "tether"
	UserName    string // default "admin"
	ContextName string // default "tether"
	// Exactly one of client certificate auth (CertPEM and KeyPEM) or Token.
	CertPEM, KeyPEM []byte
	Token           string
}

// WriteKubeconfig writes kc to path with all data embedded, mode 0600,
// atomically. Missing parent directories are created with mode 0700.
func WriteKubeconfig(path string, kc Kubeconfig) error {
	if kc.Server == "" || len(kc.CAPEM) == 0 {
		return errors.New("pki: kubeconfig needs a server and a CA")
	}
	hasCert := len(kc.CertPEM) > 0 || len(kc.KeyPEM) > 0
	if hasCert == (kc.Token != "") || (hasCert && (len(kc.CertPEM) == 0 || len(kc.KeyPEM) == 0)) {
		return errors.New("pki: kubeconfig needs either a client certificate and key or a token")
	}
	cluster, user, context := orDefault(kc.ClusterName, "tether"), orDefault(kc.UserName, "admin"), orDefault(kc.ContextName, "tether")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[cluster] = &clientcmdapi.Cluster{Server: kc.Server, CertificateAuthorityData: kc.CAPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: kc.CertPEM, ClientKeyData: kc.KeyPEM, Token: kc.Token}
	cfg.Contexts[context] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user}
	cfg.CurrentContext = context
	if err := clientcmd.Validate(*cfg); err != nil {
		return fmt.Errorf("pki: kubeconfig: %w", err)
	}
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("pki: kubeconfig: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), pkiDirMode); err != nil {
		return fileError(path, err)
	}
	return writeFileAtomic(path, data, keyFileMode)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
