"""Pure helpers over Kubernetes objects as the API gives them (plain JSON dicts)."""

from __future__ import annotations

from typing import Any


def ready(obj: dict[str, Any]) -> bool:
    """Whether a Node's or Pod's status has condition Ready=True."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
