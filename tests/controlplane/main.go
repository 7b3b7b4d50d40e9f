// Command kupd-testcp is a busybox of the real Kubernetes control-plane parts that
// kupd's tests run against: an embedded etcd, the upstream kube-apiserver, the
// upstream kube-controller-manager (the tests run only the disruption controller,
// so PodDisruptionBudgets gate evictions) and kubectl. One binary links once,
// which keeps the cold build short; each part still runs as its own process, so
// a test can stop the API server while etcd keeps its data.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	_ "time/tzdata"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "kupd-testcp" {
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, "usage: kupd-testcp etcd|kube-apiserver|kube-controller-manager|kubectl [flags]")
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	switch name {
	case "etcd":
		os.Exit(runEtcd(args))
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubectl":
		cmd := kubectlcmd.NewDefaultKubectlCommand()
		cmd.SetArgs(args)
		if err := cli.RunNoErrOutput(cmd); err != nil {
			kubectlutil.CheckErr(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "kupd-testcp: unknown part %q\n", name)
		os.Exit(2)
	}
}

// runEtcd starts a single-member etcd: etcd <data-dir> <client-url> <peer-url> [<ca> <cert> <key>].
// With the three files, clients must present a certificate signed by the CA, as on a kubeadm node.
func runEtcd(args []string) int {
	if len(args) != 3 && len(args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: kupd-testcp etcd DATA_DIR CLIENT_URL PEER_URL [CA CERT KEY]")
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Dir = args[0]
	cfg.Name = "testcp"
	client, err := parseURLs(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	peer, err := parseURLs(args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = client, client
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = peer, peer
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if len(args) == 6 {
		cfg.ClientTLSInfo = transport.TLSInfo{
			TrustedCAFile:  args[3],
			CertFile:       args[4],
			KeyFile:        args[5],
			ClientCertAuth: true,
		}
	}
	cfg.LogLevel = "warn"
	// The API server watches with progress notifications; keep the interval short so
	// consistent reads from its cache do not wait.
	cfg.WatchProgressNotifyInterval = 5 * time.Second
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("etcd ready")
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60s")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case <-ctx.Done():
		return 0
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
}
