// Command incluster is run as a pod by the e2e pod-network test: with
// rest.InClusterConfig() (KUBERNETES_SERVICE_HOST/PORT and the mounted
// service-account token and CA, unmodified client-go) it lists the pods of
// its namespace and tries to read the secrets of another one.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func main() {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		fmt.Println("IN-CLUSTER-CONFIG-ERROR", err)
		os.Exit(1)
	}
	fmt.Println("HOST", cfg.Host)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Println("CLIENT-ERROR", err)
		os.Exit(1)
	}
	ns, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if err != nil {
		fmt.Println("NAMESPACE-ERROR", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := cs.CoreV1().Pods(string(ns)).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Println("LIST-PODS-ERROR", err)
		os.Exit(1)
	}
	fmt.Println("LIST-PODS-OK", len(pods.Items))
	_, err = cs.CoreV1().Secrets(os.Args[1]).List(ctx, metav1.ListOptions{})
	switch {
	case apierrors.IsForbidden(err):
		fmt.Println("SECRETS-FORBIDDEN")
	default:
		fmt.Println("SECRETS-UNEXPECTED", err)
		os.Exit(1)
	}
}
