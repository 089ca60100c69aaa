package hub

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/sshtunnel"
)

// SSHConfig configures the SSH tunneler used with --egress=ssh.
type SSHConfig struct {
	// User on the nodes; zero value "tether".
	User string
	// KeyFile is the hub's private key; zero value DataDir/pki/ssh_hub_ed25519
	// (generated, 0600, when missing).
	KeyFile string
	// Port of the nodes' SSH servers; zero value 22 (the Node annotation
	// tether.io/ssh-port overrides it per node).
	Port int
	// KnownHostsFile lists node host keys (optional; the Node annotation
	// tether.io/ssh-host-key is used otherwise).
	KnownHostsFile string
	// InsecureSkipHostKeyCheck disables host key verification (warns).
	InsecureSkipHostKeyCheck bool
}

// newSSHTunneler builds the tunneler; its node list comes from the loopback
// client once the controllers started.
func (h *Hub) newSSHTunneler() (*sshtunnel.Tunneler, string, error) {
	c := h.cfg.SSH
	if c.KeyFile == "" {
		c.KeyFile = filepath.Join(h.cfg.DataDir, "pki", "ssh_hub_ed25519")
	}
	signer, err := sshtunnel.LoadOrCreateKey(c.KeyFile)
	if err != nil {
		return nil, "", fmt.Errorf("hub: %w", err)
	}
	t, err := sshtunnel.New(sshtunnel.Config{
		User: c.User, Signer: signer, Port: c.Port, KnownHostsFile: c.KnownHostsFile,
		InsecureSkipHostKeyCheck: c.InsecureSkipHostKeyCheck,
		Nodes: func(ctx context.Context) ([]corev1.Node, error) {
			client := h.loopback.Load()
			if client == nil {
				return nil, errors.New("hub is starting")
			}
			l, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, err
			}
			return l.Items, nil
		},
		Logger: h.cfg.Logger.With("component", "ssh-tunneler"),
	})
	if err != nil {
		return nil, "", fmt.Errorf("hub: %w", err)
	}
	return t, sshtunnel.AuthorizedKey(signer.PublicKey()), nil
}

// publishSSHKey writes the hub's public key to kube-system/tether-ssh and
// lets group system:nodes read it.
func publishSSHKey(ctx context.Context, c kubernetes.Interface, key string) error {
	ns := metav1.NamespaceSystem
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: sshtunnel.ConfigMapName, Namespace: ns},
		Data: map[string]string{sshtunnel.ConfigMapKey: key}}
	cur, err := c.CoreV1().ConfigMaps(ns).Get(ctx, cm.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return err
		}
	case err != nil:
		return err
	case cur.Data[sshtunnel.ConfigMapKey] != key:
		cur.Data = cm.Data
		if _, err := c.CoreV1().ConfigMaps(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "tether:ssh-hub-key-reader", Namespace: ns},
		Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{sshtunnel.ConfigMapName}}}}
	if _, err := c.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tether:ssh-hub-key-reader", Namespace: ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"}}}
	if _, err := c.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}
