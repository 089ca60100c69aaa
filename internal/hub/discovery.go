package hub

import (
	"context"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DiscoveryConfigMap (in kube-system, so only admins read it) publishes the
// hub settings that no API call reveals, for `tether check`: how the hub
// reaches the cluster and whether it verifies kubelets. Keys below.
const DiscoveryConfigMap = "tether-hub"

// Keys of DiscoveryConfigMap; boolean values are "true" or "false".
const (
	DiscoveryEgress             = "egress"                      // direct | ssh | konnectivity
	DiscoveryKubeletTLSVerify   = "kubeletTLSVerify"            // hub verifies kubelet serving certs
	DiscoveryKubeletCA          = "kubeletCertificateAuthority" // cluster-ca | custom
	DiscoveryAnonymousAuth      = "anonymousAuth"               // informational; tether check probes it live
	DiscoverySSHHostKeyCheck    = "sshHostKeyCheck"             // with egress=ssh
	DiscoverySSHKnownHostsFile  = "sshKnownHostsFile"           // with egress=ssh: "true" when a file pins keys
	DiscoveryKonnectivityServer = "konnectivityServer"          // agent address of the in-process server
)

// discovery is the data the hub publishes in DiscoveryConfigMap.
func (h *Hub) discovery(konnAddr string) map[string]string {
	ca := "cluster-ca"
	if h.cfg.KubeletCertificateAuthority != "" {
		ca = "custom"
	}
	d := map[string]string{
		DiscoveryEgress:           h.egress.Mode("cluster"),
		DiscoveryKubeletTLSVerify: strconv.FormatBool(!h.cfg.InsecureKubeletTLS),
		DiscoveryKubeletCA:        ca,
		DiscoveryAnonymousAuth:    strconv.FormatBool(h.cfg.AnonymousAuth),
	}
	if d[DiscoveryEgress] == "" {
		d[DiscoveryEgress] = "direct"
	}
	if d[DiscoveryEgress] == "ssh" {
		d[DiscoverySSHHostKeyCheck] = strconv.FormatBool(!h.cfg.SSH.InsecureSkipHostKeyCheck)
		d[DiscoverySSHKnownHostsFile] = strconv.FormatBool(h.cfg.SSH.KnownHostsFile != "")
	}
	if konnAddr != "" {
		d[DiscoveryKonnectivityServer] = konnAddr
	}
	return d
}

// publishDiscovery creates or updates kube-system/tether-hub.
func publishDiscovery(ctx context.Context, c kubernetes.Interface, data map[string]string) error {
	ns := metav1.NamespaceSystem
	cur, err := c.CoreV1().ConfigMaps(ns).Get(ctx, DiscoveryConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: DiscoveryConfigMap, Namespace: ns}, Data: data}
		_, err = c.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		return err
	case err != nil:
		return err
	}
	cur.Data = data
	_, err = c.CoreV1().ConfigMaps(ns).Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// konnAddr is the advertised agent address, or "" without an in-process server.
func konnAddr(k *konnectivity) string {
	if k == nil {
		return ""
	}
	return k.addr
}
