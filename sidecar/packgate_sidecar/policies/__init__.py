"""The shipped policies, by kind: the registry `chain.builtin_registry` loads.

Why it exists: the chain refuses a config naming a kind without an implementation (an
unimplemented policy must never mean an unenforced one), so this table is what makes a kind
usable. Each policy is a small class in its own module, written against `policy.py` only.
"""

from __future__ import annotations

from ..policy import PolicyFactory
from .audit_logger import AuditLoggerPolicy
from .content_filter import ContentFilterPolicy
from .cost_attribution import CostAttributionPolicy
from .pii_detector import PiiDetectorPolicy
from .prompt_injection import PromptInjectionPolicy

FACTORIES: dict[str, PolicyFactory] = {
    "prompt-injection": PromptInjectionPolicy,
    "pii-detector": PiiDetectorPolicy,
    "content-filter": ContentFilterPolicy,
    "audit-logger": AuditLoggerPolicy,
    "cost-attribution": CostAttributionPolicy,
}

__all__ = [
    "FACTORIES",
    "AuditLoggerPolicy",
    "ContentFilterPolicy",
    "CostAttributionPolicy",
    "PiiDetectorPolicy",
    "PromptInjectionPolicy",
]
