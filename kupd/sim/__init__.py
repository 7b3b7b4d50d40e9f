"""The simulation, kept apart from the product: a real local control plane (`devcluster`), the
simulated host (`simulated`) and kubelet (`simkubelet`), and simulated nodes each run by a real
`kupd daemon` (`simcluster`). Serves `kupd demo`, the cluster tests and the benchmarks.

Nothing here knows where the repository is: callers hand in the control-plane binary and the
CRD folder.
"""
