"""kupd: in-place, node-by-node upgrades of kubeadm Kubernetes clusters from a systemd daemon."""

__version__ = "0.1.0"
