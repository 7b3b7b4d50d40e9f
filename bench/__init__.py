"""kupd benchmarks: many simulated nodes in one process against the real local control plane.

Entry point: `python -m bench.run --nodes 10 100 1000` (see docs/development/performance.md).
"""
