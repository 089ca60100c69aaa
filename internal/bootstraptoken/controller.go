package bootstraptoken

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-dev/tether/internal/apiserver/authn"
)

// ClusterInfo is the kube-public ConfigMap joining nodes read.
const ClusterInfo = "cluster-info"

// ControllerConfig configures the Controller.
type ControllerConfig struct {
	Client kubernetes.Interface
	// Server is the hub URL published in cluster-info.
	Server string
	// CAPEM is the cluster CA published in cluster-info.
	CAPEM []byte
	// Interval between passes; zero value 5s.
	Interval time.Duration
	Logger   *slog.Logger
}

// Controller publishes kube-public/cluster-info (a kubeconfig with the hub
// URL and CA) signed by every signing-enabled token, and deletes expired
// token Secrets — kubeadm's bootstrap signer and token cleaner in one loop.
type Controller struct{ cfg ControllerConfig }

// NewController validates cfg.
func NewController(cfg ControllerConfig) (*Controller, error) {
	if cfg.Client == nil || cfg.Server == "" || len(cfg.CAPEM) == 0 {
		return nil, fmt.Errorf("bootstrap token controller: client, server and CA are required")
	}
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Controller{cfg: cfg}, nil
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := c.Reconcile(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("bootstrap tokens", "err", err)
		}
	}, c.cfg.Interval)
	return nil
}

// Kubeconfig is the cluster-info payload.
func (c *Controller) Kubeconfig() (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[""] = &clientcmdapi.Cluster{Server: c.cfg.Server, CertificateAuthorityData: c.cfg.CAPEM}
	b, err := clientcmd.Write(*kc)
	return string(b), err
}

// Reconcile makes one pass.
func (c *Controller) Reconcile(ctx context.Context) error {
	secrets, err := c.cfg.Client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(authn.BootstrapTokenSecretType)})
	if err != nil {
		return err
	}
	content, err := c.Kubeconfig()
	if err != nil {
		return err
	}
	want := map[string]string{"kubeconfig": content}
	for _, s := range secrets.Items {
		if authn.BootstrapTokenExpired(&s, time.Now()) {
			err := c.cfg.Client.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, s.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				return err
			}
			c.cfg.Logger.Info("deleted expired bootstrap token", "id", string(s.Data["token-id"]))
			continue
		}
		id, secret := string(s.Data["token-id"]), string(s.Data["token-secret"])
		if string(s.Data["usage-bootstrap-signing"]) != "true" || s.Name != authn.BootstrapTokenSecretPrefix+id {
			continue
		}
		if _, _, ok := authn.ParseBootstrapToken(id + "." + secret); ok {
			want["jws-kubeconfig-"+id] = DetachedJWS(content, id, secret)
		}
	}
	cms := c.cfg.Client.CoreV1().ConfigMaps(metav1.NamespacePublic)
	cur, err := cms.Get(ctx, ClusterInfo, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ClusterInfo}, Data: want}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	if err != nil {
		return err
	}
	if equalData(cur.Data, want) {
		return nil
	}
	cur = cur.DeepCopy()
	for k := range cur.Data {
		if strings.HasPrefix(k, "jws-kubeconfig-") {
			delete(cur.Data, k)
		}
	}
	if cur.Data == nil {
		cur.Data = map[string]string{}
	}
	for k, v := range want {
		cur.Data[k] = v
	}
	_, err = cms.Update(ctx, cur, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func equalData(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}
