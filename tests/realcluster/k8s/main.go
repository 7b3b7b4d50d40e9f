// Command kupd-k8s is a busybox of one upstream Kubernetes release as a kubeadm node runs it:
// kubeadm, kubelet, kubectl, the control-plane components and kube-proxy, plus etcd at the
// version kubeadm expects. The part to run is the name it is invoked by (a link named kubelet
// runs the kubelet) or its first argument. One binary links once, which keeps the cold build of
// a release short; the packages and the images of the real-cluster tier link to it by name.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	_ "time/tzdata"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	kubeadm "k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const parts = "kubeadm|kubelet|kubectl|kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|etcd"

func main() {
	name := filepath.Base(os.Args[0])
	if name == "kupd-k8s" {
		if len(os.Args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: kupd-k8s "+parts+" [flags]")
			os.Exit(2)
		}
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	args := os.Args[1:]
	switch name {
	case "kubeadm":
		kubeadmerrors.HandleError(kubeadm.Run())
	case "kubelet":
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-proxy":
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubectl":
		cmd := kubectlcmd.NewDefaultKubectlCommand()
		cmd.SetArgs(args)
		if err := cli.RunNoErrOutput(cmd); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "etcd":
		etcdmain.Main(os.Args)
	default:
		fmt.Fprintf(os.Stderr, "kupd-k8s: unknown part %q (one of %s)\n", name, parts)
		os.Exit(2)
	}
}
