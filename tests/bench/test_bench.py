"""The bench harness at N=10, quickly: it must produce every figure. No timing assertions."""

from __future__ import annotations

import math
from pathlib import Path

from bench import measure
from bench.run import daemon_footprint, run_one, table


def _figures(obj: object) -> dict[str, float]:
    """Every figure of `obj`, the parts of a (p50, p99) pair each on its own."""
    out = {k: v for k, v in vars(obj).items() if isinstance(v, float)}
    out.update({f"{k}[{i}]": x for k, v in vars(obj).items() if isinstance(v, tuple)
                for i, x in enumerate(v) if isinstance(x, float)})
    return out


def test_bench_produces_every_figure(tmp_path: Path) -> None:
    plan = measure.planner_time(300, repeat=1)
    daemon = daemon_footprint(2.0, tmp_path / "daemon")
    run = run_one(10, 3, 0.1, 2.0, tmp_path / "n10", workers=4, settle=0.5)
    out = table([run], daemon, plan)
    print(out)

    assert run.phase == "Succeeded", run
    missing = [k for k, v in {**_figures(run), **_figures(daemon), **plan}.items() if math.isnan(v)]
    assert not missing, f"figures not produced: {missing}"
    assert run.handoffs > 0
    # Idle, a 10-node cluster may send no request at all in 2 s: the total is a figure, 0 included.
    assert run.idle_s > 0 and run.idle_total_per_node_min >= 0
    assert run.rollout_per_node_min and run.rollout_per_upgraded_node
    assert run.status_writes > 0 and run.status_bytes > 0
    assert "n/a" not in out
