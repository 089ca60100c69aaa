package hub

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-dev/tether/internal/pki"
	"github.com/tether-dev/tether/internal/storage"
)

type replica struct {
	*Hub
	ip    string
	admin *restclient.Config
	stop  func()
}

// startReplica runs a hub on ip:port against etcd, with the shared PKI.
func startReplica(t *testing.T, dir, ip string, port int, etcd []string, shared *pki.Cluster) *replica {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{DataDir: dir, Listener: ln, BindAddress: net.ParseIP(ip), SecurePort: port, AdvertiseAddress: net.ParseIP(ip),
		EtcdServers: etcd, CACertFile: shared.CACertFile, CAKeyFile: filepath.Join(filepath.Dir(shared.CACertFile), "ca.key"),
		ServiceAccountKeyFile: shared.ServiceAccountKeyFile,
		LeaderElection:        LeaderElectionConfig{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond},
		Logger:                slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("hub %s: %v", ip, err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("hub %s did not stop", ip)
		}
	}
	t.Cleanup(stop)
	select {
	case <-h.Ready():
	case err := <-done:
		t.Fatalf("hub %s stopped: %v", ip, err)
	case <-time.After(90 * time.Second):
		t.Fatalf("hub %s not ready", ip)
	}
	admin, err := clientcmd.BuildConfigFromFlags("", h.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	return &replica{Hub: h, ip: ip, admin: admin, stop: stop}
}

func poll(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

// TestReplicasShareEtcd: two in-process replicas on one etcd: both in the
// kubernetes Endpoints, one controller leader, SA tokens valid on both;
// the leader stops and the other one takes over and is alone in the
// Endpoints.
func TestReplicasShareEtcd(t *testing.T) {
	pid := os.Getpid()
	prefix := fmt.Sprintf("127.%d.%d", 160+(pid>>8)%32, pid%256)
	dir := t.TempDir()
	member, err := storage.New(storage.Config{DataDir: filepath.Join(dir, "etcd"), ClientURL: "http://" + prefix + ".100:0", PeerURL: "http://" + prefix + ".100:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	etcdDone := make(chan error, 1)
	go func() { etcdDone <- member.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-etcdDone })
	select {
	case <-member.Ready():
	case err := <-etcdDone:
		t.Fatal(err)
	}
	shared, err := pki.EnsureCluster(pki.Options{Dir: filepath.Join(dir, "pki")})
	if err != nil {
		t.Fatal(err)
	}
	port, err := func() (int, error) {
		l, err := net.Listen("tcp", prefix+".1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}()
	if err != nil {
		t.Fatal(err)
	}
	r1 := startReplica(t, filepath.Join(dir, "r1"), prefix+".1", port, member.Endpoints(), shared)
	r2 := startReplica(t, filepath.Join(dir, "r2"), prefix+".2", port, member.Endpoints(), shared)
	replicas := []*replica{r1, r2}
	c1, c2 := kubernetes.NewForConfigOrDie(r1.admin), kubernetes.NewForConfigOrDie(r2.admin)
	bg := context.Background()
	endpoints := func(cs kubernetes.Interface, want ...string) func() error {
		return func() error {
			ep, err := cs.CoreV1().Endpoints("default").Get(bg, "kubernetes", metav1.GetOptions{})
			if err != nil {
				return err
			}
			var got []string
			for _, s := range ep.Subsets {
				for _, a := range s.Addresses {
					got = append(got, a.IP)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				return fmt.Errorf("endpoints %v, want %v", got, want)
			}
			return nil
		}
	}
	poll(t, 20*time.Second, "both replicas in the Endpoints", endpoints(c1, r1.ip, r2.ip))

	// A token from replica 1 authenticates on replica 2.
	var tok string
	poll(t, 20*time.Second, "token from replica 1", func() error {
		tr, err := c1.CoreV1().ServiceAccounts("default").CreateToken(bg, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err == nil {
			tok = tr.Status.Token
		}
		return err
	})
	tokCfg := restclient.AnonymousClientConfig(r2.admin)
	tokCfg.BearerToken = tok
	ssr, err := kubernetes.NewForConfigOrDie(tokCfg).AuthenticationV1().SelfSubjectReviews().Create(bg, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("replica 2 rejects replica 1's token: %v", err)
	}
	if ssr.Status.UserInfo.Username != "system:serviceaccount:default:default" {
		t.Fatalf("token authenticated as %q", ssr.Status.UserInfo.Username)
	}

	// Exactly one leader; stop it, the other takes over.
	holder := func(cs kubernetes.Interface) (string, error) {
		l, err := cs.CoordinationV1().Leases("kube-system").Get(bg, "tether-controller-manager", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			return "", fmt.Errorf("no holder")
		}
		return *l.Spec.HolderIdentity, nil
	}
	var lead, other *replica
	var otherClient kubernetes.Interface
	poll(t, 20*time.Second, "a leader", func() error {
		h, err := holder(c1)
		if err != nil {
			return err
		}
		for i, r := range replicas {
			if h == r.identity(port) {
				lead, other, otherClient = r, replicas[1-i], []kubernetes.Interface{c2, c1}[i]
				return nil
			}
		}
		return fmt.Errorf("holder %q is neither replica", h)
	})
	lead.stop()
	poll(t, 15*time.Second, "the other replica leads", func() error {
		h, err := holder(otherClient)
		if err != nil {
			return err
		}
		if h != other.identity(port) {
			return fmt.Errorf("holder %q", h)
		}
		return nil
	})
	// A replica that stopped cleanly removed itself from the Endpoints.
	poll(t, 10*time.Second, "only the live replica in the Endpoints", endpoints(otherClient, other.ip))
}
