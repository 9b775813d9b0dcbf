"""The policy config contract shared by the sidecar and the operator.

Why a package of its own: the operator renders and validates PolicyPacks, the sidecar loads the
rendered config, and `packgate policy lint` checks files offline. All three must agree on one
model, and none of them should drag in aiohttp or kopf to get it. This package depends on pydantic
and pyyaml only.
"""

from .crd import build_crd, crd_yaml
from .lint import LintResult, lint_text
from .loading import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    canonical_dict,
    config_hash,
    dump_yaml,
    load_file,
    load_mapping,
    load_text,
)
from .models import (
    CONTENT_CATEGORIES,
    PII_ENTITIES,
    POLICY_KINDS,
    AuditLogger,
    ContentFilter,
    CostAttribution,
    InjectionBackend,
    PiiDetector,
    PolicyBlock,
    PolicyConfig,
    PromptInjection,
    ScoreBand,
    Target,
)
from .secrets import key_env_name, secret_env_name

__all__ = [
    "CONTENT_CATEGORIES",
    "PII_ENTITIES",
    "POLICY_KINDS",
    "AuditLogger",
    "ConfigError",
    "ConfigIssue",
    "ContentFilter",
    "CostAttribution",
    "InjectionBackend",
    "LintResult",
    "LoadedConfig",
    "PiiDetector",
    "PolicyBlock",
    "PolicyConfig",
    "PromptInjection",
    "ScoreBand",
    "Target",
    "build_crd",
    "canonical_dict",
    "config_hash",
    "crd_yaml",
    "dump_yaml",
    "key_env_name",
    "lint_text",
    "load_file",
    "load_mapping",
    "load_text",
    "secret_env_name",
]
