package hub

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/controllers"
	"github.com/tether-dev/tether/internal/leader"
	"github.com/tether-dev/tether/internal/pki"
)

// LeaderElectionConfig tunes the controllers' leader election (see
// leader.Config for the zero values: 8s / 6s / 2s).
type LeaderElectionConfig struct {
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// sharedKeysConfigMap records the CA and service-account key every replica
// must share; a replica with other keys refuses to start.
const sharedKeysConfigMap = "tether-shared-keys"

// Identity is this replica's identity in Leases: host name and advertised
// address (unique per replica).
func (h *Hub) identity(port int) string {
	hn, _ := os.Hostname()
	return hn + "_" + net.JoinHostPort(h.cfg.AdvertiseAddress.String(), strconv.Itoa(port))
}

// checkSharedKeys compares this replica's cluster CA and service-account
// public key with the ones recorded by the first replica in
// kube-system/tether-shared-keys (recording them if absent). Replicas that
// do not share them would issue node certificates and service-account
// tokens the other replicas reject.
func checkSharedKeys(ctx context.Context, client kubernetes.Interface, cluster *pki.Cluster) error {
	saDER, err := x509.MarshalPKIXPublicKey(cluster.ServiceAccountKey.Public())
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	sum := sha256.Sum256(saDER)
	want := map[string]string{"ca": pki.CAHash(cluster.CA.Cert), "service-account": "sha256:" + hex.EncodeToString(sum[:])}
	cms := client.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	cur, err := cms.Get(ctx, sharedKeysConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: sharedKeysConfigMap, Namespace: metav1.NamespaceSystem}, Data: want}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return checkSharedKeys(ctx, client, cluster) // another replica won the race
		}
		return err
	}
	if err != nil {
		return err
	}
	for k, v := range want {
		if cur.Data[k] != v {
			return &keyMismatchError{what: k, have: v, cluster: cur.Data[k]}
		}
	}
	return nil
}

// keyMismatchError is fatal: the replica must not serve.
type keyMismatchError struct{ what, have, cluster string }

func (e *keyMismatchError) Error() string {
	return fmt.Sprintf("this replica's %s key (%s) differs from the one the other replicas use (%s, in kube-system/%s): "+
		"copy the pki directory (ca.crt, ca.key, sa.key) of an existing replica into --data-dir/pki, or pass the same --ca-cert-file/--ca-key-file/--service-account-key-file",
		e.what, e.have, e.cluster, sharedKeysConfigMap)
}

// replicated holds what runs on every replica (the `kubernetes` Service
// bootstrap, the replica's own API server Lease) and what runs only on the
// elected leader.
type replicated struct {
	leases  *controllers.APIServerLeases
	elector *leader.Elector
}

// newReplicated wires the lease-based `kubernetes` Endpoints and the leader
// election of the controllers.
func (h *Hub) newReplicated(client, kcm kubernetes.Interface, port int, log *slog.Logger) (*replicated, *controllers.Bootstrap, error) {
	var r replicated
	var boot *controllers.Bootstrap
	var err error
	r.leases, err = controllers.NewAPIServerLeases(controllers.APIServerLeasesConfig{
		Client: client, Self: controllers.EndpointAddr{IP: h.cfg.AdvertiseAddress, Port: int32(port)},
		Identity: h.identity(port), Logger: log,
		OnChange: func(ctx context.Context) {
			if err := boot.Reconcile(ctx); err != nil && ctx.Err() == nil {
				log.Debug("kubernetes endpoints", "err", err)
			}
		},
	})
	if err != nil {
		return nil, nil, err
	}
	boot, err = controllers.NewBootstrap(controllers.BootstrapConfig{Client: client, ServiceIP: ServiceIP(h.cfg.ServiceClusterIPRange), Logger: log, Endpoints: r.leases.Endpoints})
	if err != nil {
		return nil, nil, err
	}
	le := h.cfg.LeaderElection
	r.elector, err = leader.New(leader.Config{Client: kcm, Identity: h.identity(port), Logger: log,
		LeaseDuration: le.LeaseDuration, RenewDeadline: le.RenewDeadline, RetryPeriod: le.RetryPeriod})
	if err != nil {
		return nil, nil, err
	}
	return &r, boot, nil
}

// run runs the per-replica parts and the elected controllers until ctx ends.
func (r *replicated) run(ctx context.Context, boot *controllers.Bootstrap, elected []leader.Controller, log *slog.Logger) {
	for _, c := range elected {
		r.elector.Add(c)
	}
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{boot.Run, r.leases.Run, r.elector.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				log.Error("controller stopped", "err", err)
			}
		}()
	}
	wg.Wait()
}

// warnInsecureEtcd warns about plain-HTTP or unauthenticated external etcd
// that is not on loopback: anyone on the path reads every Secret.
func warnInsecureEtcd(cfg Config) {
	for _, s := range cfg.EtcdServers {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		ip := net.ParseIP(u.Hostname())
		local := u.Hostname() == "localhost" || (ip != nil && ip.IsLoopback())
		switch {
		case u.Scheme == "http" && !local:
			cfg.Logger.Warn("INSECURE: etcd server over plain HTTP off loopback; use https:// with --etcd-cafile/--etcd-certfile/--etcd-keyfile", "server", s)
		case u.Scheme == "https" && cfg.EtcdCertFile == "" && !local:
			cfg.Logger.Warn("etcd server without a client certificate: etcd should require client certificates (--client-cert-auth)", "server", s)
		}
	}
}

// releaseLease runs before the API server stops serving: the replica
// deletes its Lease and rewrites the `kubernetes` Endpoints without itself,
// so clients stop being sent to it at once.
func (h *Hub) releaseLease() error {
	if r := h.repl.Load(); r != nil {
		r.leases.Release()
	}
	return nil
}
