"""Pydantic models of the policy config: the one document every part of packgate shares.

A `PolicyPack.spec` *is* this document, and `packgate gateway run --policy-config FILE` loads the
same shape. Models are strict (unknown keys are errors), frozen (a loaded config is a value the
sidecar can swap atomically) and every field carries a description, because the CRD schema and
`kubectl explain` text are generated from them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

PolicyKind = Literal[
    "prompt-injection", "pii-detector", "content-filter", "audit-logger", "cost-attribution"
]
POLICY_KINDS: tuple[str, ...] = get_args(PolicyKind)

PiiEntity = Literal["EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IBAN", "IP_ADDRESS"]
PII_ENTITIES: tuple[str, ...] = get_args(PiiEntity)

ContentCategory = Literal["violence", "self-harm", "hate", "sexual", "weapons", "illegal-drugs"]
CONTENT_CATEGORIES: tuple[str, ...] = get_args(ContentCategory)

ProviderName = Literal["openai"]
PROVIDERS: tuple[str, ...] = get_args(ProviderName)

DEFAULT_BASE_URLS: dict[str, str] = {"openai": "https://api.openai.com/v1"}

# SemVer 2.0.0, from semver.org.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENTITY_LABEL = r"^[A-Z][A-Z0-9_]*$"
TAG_KEY = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# A key of a Secret or ConfigMap, as Kubernetes allows it.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
# What `provider` may say before normalisation; the CRD carries it as a pattern because the
# apiserver sees the user's spelling, not the normalised one.
PROVIDER_FORM = r"^(" + "|".join(PROVIDERS) + r")(:chat)?(:[^:]+)?$"
# http(s)://host[:port][/path], no query or fragment. The CRD uses the same expression, so the
# apiserver and `packgate policy lint` accept the same URLs.
HTTP_URL = r"^https?://([^\s/?#:@\[\]]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[^\s?#]*)?$"
MAX_TARGETS = 16
MAX_MODEL_LENGTH = 256
MAX_TAGS = 64


def _cel(
    rule: str, message: str | None = None, *, message_expression: str | None = None
) -> JsonDict:
    """A CEL rule for the CRD schema, kept beside the Python check it mirrors."""
    entry: JsonDict = {"rule": rule}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    return {"x-kubernetes-validations": [entry]}


def _cel_match(pattern: str, problem: str) -> JsonDict:
    """A pattern as a CEL rule instead of `pattern`: the apiserver's error then quotes the value
    and says what is wrong, where a failed `pattern` prints the regular expression."""
    return _cel(f"self.matches(r'{pattern}')", message_expression=f"'\"' + self + '\" {problem}'")


def _provider_parts(value: str) -> tuple[str, str | None] | None:
    """(provider, model) of a well-formed provider string, or None when it is malformed."""
    parts = value.split(":")
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 2 and parts[1]:
        return parts[0], parts[1]
    if len(parts) == 3 and parts[1] == "chat" and parts[2]:
        return parts[0], parts[2]
    return None


def _compiled(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return pattern


def _http_url_value(value: str) -> str:
    """An http(s)://host[:port][/path] URL without query or fragment, trailing slash dropped."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'"{value}" is not an http(s) URL')
    if parts.query or parts.fragment:
        raise ValueError(f'"{value}" must not have a query or fragment')
    if not re.match(HTTP_URL, value):
        raise ValueError(f'"{value}" is not a valid http(s) URL (http(s)://host[:port][/path])')
    return value.rstrip("/")


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors and loaded values never change."""

    # strict: a quoted "yes" is not a boolean and "0.8" is not a number. The apiserver rejects
    # them by type, so lint must too, or a file that lints clean fails at kubectl apply.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


# --- pack and providers ---------------------------------------------------------------------


class Pack(Strict):
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] = Field(
        description="Name of the policy pack (a DNS label); shown in audit records and metrics."
    )
    version: str = Field(
        max_length=128,
        description="Version of the pack, SemVer 2.0.0 (for example 1.0.0).",
        json_schema_extra=_cel_match(
            _SEMVER.pattern, "is not SemVer; expected MAJOR.MINOR.PATCH such as 1.0.0"
        ),
    )
    enabled: bool = Field(
        default=True,
        description=(
            "When false the gateway refuses all traffic with 503 pack_disabled instead of "
            "forwarding it ungoverned."
        ),
    )
    description: str | None = Field(default=None, description="Free text for people.")

    @field_validator("version", mode="before")
    @classmethod
    def _semver(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError(f"must be a SemVer string such as 1.0.0 (quote it), got {value!r}")
        if not _SEMVER.match(value):
            raise ValueError(f'"{value}" is not SemVer; expected MAJOR.MINOR.PATCH such as 1.0.0')
        return value


class SecretRef(Strict):
    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] = Field(
        description="Name of a Secret in the PolicyPack's namespace."
    )
    key: Annotated[str, Field(pattern=CONFIG_KEY, max_length=253)] = Field(
        description="Key inside the Secret whose value is the provider API key."
    )


class SecretKeyRef(Strict):
    """Where the provider key comes from: exactly one of an env var or a Kubernetes Secret."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            "has(self.env) != has(self.secret)", "set exactly one of env or secret"
        )
    )

    env: Annotated[str, Field(pattern=ENV_NAME)] | None = Field(
        default=None, description="Environment variable of the sidecar holding the API key."
    )
    secret: SecretRef | None = Field(
        default=None,
        description="Kubernetes Secret holding the API key; injected as env on the sidecar only.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretKeyRef:
        if (self.env is None) == (self.secret is None):
            raise ValueError("set exactly one of env or secret")
        return self


class Target(Strict):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            "!has(self.model) || !self.provider.contains(':') "
            "|| self.provider.endsWith(':' + self.model)",
            "provider names a different model than model; set one of them",
        )
    )

    id: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] = Field(
        description="Unique id of the target; used in metrics, audit records and logs."
    )
    provider: Annotated[
        ProviderName,
        WithJsonSchema(
            {
                "type": "string",
                "maxLength": len("openai:chat:") + MAX_MODEL_LENGTH,
                **_cel_match(
                    PROVIDER_FORM, "is not one of openai, openai:MODEL, openai:chat:MODEL"
                ),
            }
        ),
    ] = Field(
        description=(
            "Provider API. Accepts `openai`, `openai:MODEL` or `openai:chat:MODEL`; the model "
            "part is moved into `model`."
        )
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODEL_LENGTH,
        description=(
            "Model sent upstream, replacing the client's choice; when unset the client's model "
            "is forwarded."
        ),
    )
    base_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Base URL of the provider API (http or https); defaults to the provider's.",
        json_schema_extra=_cel_match(
            HTTP_URL, "is not an http(s) URL (http(s)://host[:port][/path], no query or fragment)"
        ),
    )
    secret_key_ref: SecretKeyRef | None = Field(
        default=None,
        description="Where the provider API key comes from; unset sends no Authorization header.",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_provider(cls, data: object) -> object:
        if not isinstance(data, dict) or not isinstance(data.get("provider"), str):
            return data
        parts = _provider_parts(data["provider"])
        if parts is None or parts[1] is None:
            # Malformed strings are left for the field validator, so the error names `provider`.
            return data
        name, model = parts
        if data.get("model") not in (None, model):
            raise ValueError(
                f'provider names model "{model}" but model is "{data["model"]}"; set one of them'
            )
        return {**data, "provider": name, "model": model}

    @field_validator("provider", mode="before")
    @classmethod
    def _provider_form(cls, value: object) -> object:
        if isinstance(value, str) and ":" in value:
            parts = value.split(":")
            if len(parts) == 3 and parts[1] != "chat":
                raise ValueError(
                    f'"{value}": the API part must be "chat" '
                    "(expected openai, openai:MODEL or openai:chat:MODEL)"
                )
            raise ValueError(f'"{value}" is not one of openai, openai:MODEL, openai:chat:MODEL')
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url_value(value)

    @property
    def effective_base_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS[self.provider]


class Providers(Strict):
    targets: list[Target] = Field(
        min_length=1,
        # Bounded so the CRD's uniqueness rule stays within the apiserver's CEL cost budget.
        max_length=MAX_TARGETS,
        description="Provider targets tried in order: the first is primary, the rest fallbacks.",
        # A static message: naming the id costs more than the apiserver allows a message.
        json_schema_extra=_cel(
            "self.all(t, self.exists_one(u, u.id == t.id))", "target ids must be unique"
        ),
    )

    @field_validator("targets")
    @classmethod
    def _unique_ids(cls, targets: list[Target]) -> list[Target]:
        first: dict[str, int] = {}
        for index, target in enumerate(targets):
            if target.id in first:
                raise ValueError(
                    f'target id "{target.id}" is used by targets[{first[target.id]}] and '
                    f"targets[{index}]; ids must be unique"
                )
            first[target.id] = index
        return targets


class Policies(Strict):
    chain: list[PolicyKind] = Field(
        default_factory=list,
        description="Policies to run, in order, on every request and response.",
        # No max_length here: a longer chain must repeat a kind, and the repeat is the clearer
        # message. The CRD needs the bound for the cost of its uniqueness rule.
        json_schema_extra={
            "maxItems": len(POLICY_KINDS),
            **_cel(
                "self.all(k, self.exists_one(j, j == k))",
                message_expression=(
                    "'policy kind \"' + self.filter(k, !self.exists_one(j, j == k))[0]"
                    " + '\" is listed more than once'"
                ),
            ),
        },
    )

    @field_validator("chain")
    @classmethod
    def _no_repeats(cls, chain: list[PolicyKind]) -> list[PolicyKind]:
        repeated = list(dict.fromkeys(kind for kind in chain if chain.count(kind) > 1))
        if len(repeated) == 1:
            raise ValueError(f'policy kind "{repeated[0]}" is listed more than once')
        if repeated:
            names = ", ".join(f'"{kind}"' for kind in repeated)
            raise ValueError(f"policy kinds {names} are listed more than once")
        return chain


# --- policy blocks --------------------------------------------------------------------------


class PolicyBlock(Strict):
    """Settings every policy has: how it fails and how long it may take."""

    fail_open: bool = Field(
        default=False,
        description=(
            "When the policy raises or overruns timeout_ms: false blocks the request (fail "
            "closed), true lets it pass and counts the fail-open in metrics."
        ),
    )
    timeout_ms: int = Field(
        default=200, ge=1, le=60000, description="Time budget of the policy per request, in ms."
    )


class ScoreBand(Strict):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            "(has(self.low) ? self.low : 0.3) < (has(self.high) ? self.high : 0.8)",
            "low must be below high",
        )
    )

    low: float = Field(
        default=0.3, ge=0.0, le=1.0, description="Lowest local score sent for a second opinion."
    )
    high: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description=(
            "Local scores at or above this are decided locally (against the policy's threshold); "
            "usually equal to the threshold."
        ),
    )

    @model_validator(mode="after")
    def _ordered(self) -> ScoreBand:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class InjectionBackend(Strict):
    """A second opinion: an in-cluster classifier asked about texts the local model is unsure of."""

    url: str = Field(
        max_length=2048,
        description=(
            "Endpoint the texts are POSTed to (http or https), e.g. "
            "http://prompt-guard.ml.svc:8080/v2/models/prompt-guard/infer for kserve-v2."
        ),
        json_schema_extra=_cel_match(
            HTTP_URL, "is not an http(s) URL (http(s)://host[:port][/path], no query or fragment)"
        ),
    )
    protocol: Literal["json", "kserve-v2"] = Field(
        default="json",
        description=(
            'json: {"texts": [...]} in, {"scores": [...]} out (one score in [0, 1] per text); '
            "kserve-v2: the KServe/Open Inference Protocol v2 infer request with one BYTES input."
        ),
    )
    band: ScoreBand = Field(
        default_factory=ScoreBand,
        description="Texts whose local score falls in [low, high) are sent to the classifier.",
    )
    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Classifier score at or above which the policy acts on a text in the band.",
    )
    timeout_ms: int = Field(
        default=100,
        ge=1,
        le=60000,
        description=(
            "Time budget of one classifier call, in ms; below the policy's timeout_ms. A slow or "
            "failed call follows the policy's fail_open: true keeps the local verdict, false "
            "blocks."
        ),
    )
    max_concurrency: int = Field(
        default=8, ge=1, le=1024, description="Classifier calls in flight at once per sidecar."
    )
    cache_size: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description="Scores kept per sidecar, keyed by a hash of the text (0 disables the cache).",
    )
    cache_ttl_s: int = Field(
        default=600, ge=1, le=86400, description="How long a cached score is reused, in seconds."
    )
    input_name: str = Field(
        default="text",
        min_length=1,
        max_length=256,
        description="kserve-v2: name of the BYTES input tensor.",
    )
    output_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="kserve-v2: name of the output tensor to read; unset reads the first output.",
    )
    label_index: int = Field(
        default=1,
        ge=0,
        le=1023,
        description=(
            "kserve-v2: column of the injection class when the output has shape [n, classes]; "
            "an output of shape [n] is read as the score itself."
        ),
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _http_url_value(value)


class PromptInjection(PolicyBlock):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            "!has(self.backend) || (has(self.backend.timeout_ms) ? self.backend.timeout_ms : 100)"
            " < (has(self.timeout_ms) ? self.timeout_ms : 200)",
            "backend.timeout_ms must be below the policy's timeout_ms",
        )
    )

    threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Score in [0, 1] at or above which it acts."
    )
    action: Literal["block", "log"] = Field(
        default="block", description="block rejects the request with 403; log only records it."
    )
    backend: InjectionBackend | None = Field(
        default=None,
        description=(
            "Optional second opinion: texts whose local score falls in backend.band are scored "
            "by an in-cluster classifier over HTTP instead. Those texts leave the pod for that "
            "service."
        ),
    )

    @model_validator(mode="after")
    def _backend_within_budget(self) -> PromptInjection:
        if self.backend is not None and self.backend.timeout_ms >= self.timeout_ms:
            raise ValueError(
                f"backend.timeout_ms ({self.backend.timeout_ms}) must be below the policy's "
                f"timeout_ms ({self.timeout_ms}), which bounds the whole policy"
            )
        return self


class DetectPattern(Strict):
    label: Annotated[str, Field(pattern=ENTITY_LABEL)] = Field(
        description="Entity name reported and used in markers, e.g. EMPLOYEE_ID -> <EMPLOYEE_ID>."
    )
    regex: str = Field(min_length=1, description="Python regular expression to detect.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _compiled(value)


class PiiDetector(PolicyBlock):
    action: Literal["redact", "mask", "hash", "block"] = Field(
        default="redact",
        description=(
            "redact replaces each entity with a typed marker such as <EMAIL>; mask replaces its "
            "characters with *; hash replaces it with a SHA-256 digest; block rejects with 403."
        ),
    )
    entities: list[PiiEntity] = Field(
        default_factory=lambda: list(get_args(PiiEntity)),
        description="Built-in entities to detect.",
    )
    detect_patterns: list[DetectPattern] = Field(
        default_factory=list, description="Custom entities detected by regular expression."
    )
    scan_responses: bool = Field(
        default=True, description="Also apply the action to responses, streamed ones included."
    )


class ContentFilter(PolicyBlock):
    action: Literal["block", "log"] = Field(
        default="block", description="block rejects with 403; log only records the match."
    )
    categories: list[ContentCategory] = Field(
        default_factory=lambda: list(get_args(ContentCategory)),
        description="Built-in term lists to apply.",
    )
    terms: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Extra terms, matched case-insensitively on word edges."
    )
    patterns: list[Annotated[str, Field(min_length=1), AfterValidator(_compiled)]] = Field(
        default_factory=list, description="Extra Python regular expressions."
    )
    scan_responses: bool = Field(default=True, description="Also filter responses.")


class AuditLogger(PolicyBlock):
    immutable: bool = Field(
        default=True,
        description="Write an append-only hash chain with a keyed MAC per record.",
    )
    retention_days: int = Field(
        default=365, ge=1, le=36500, description="Whole segments older than this are pruned."
    )
    log_all_access: bool = Field(
        default=True,
        description="One record per request; when false, only requests a policy acted on.",
    )
    stdout: bool = Field(default=True, description="Also write each record to stdout.")


class Price(Strict):
    input_per_1m: float = Field(ge=0, description="Price of one million input tokens.")
    output_per_1m: float = Field(ge=0, description="Price of one million output tokens.")


class CostAttribution(PolicyBlock):
    tags: dict[Annotated[str, Field(pattern=TAG_KEY, max_length=63)], str] = Field(
        default_factory=dict,
        max_length=MAX_TAGS,
        description="Tags attached to every request's cost.",
        json_schema_extra=_cel(
            f"self.all(k, k.size() <= 63 && k.matches(r'{TAG_KEY}'))",
            message_expression=(
                f"'tag key \"' + self.filter(k, !(k.size() <= 63 && k.matches(r'{TAG_KEY}')))[0]"
                " + '\" must be letters, digits, -, _ or . (at most 63)'"
            ),
        ),
    )
    pod_labels: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Pod labels copied into the tags (label key = tag)."
    )
    header_tags: list[Annotated[str, Field(pattern=TAG_KEY)]] = Field(
        default_factory=list,
        description="Tags a client may set with an x-packgate-tag-<name> request header.",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Price per model, overriding the built-in table (USD per 1M tokens).",
    )


class PolicyBlocks(Strict):
    prompt_injection: PromptInjection | None = Field(
        default=None,
        alias="prompt-injection",
        description=(
            "Scores each request's prompt for injection attempts (instructions that try to "
            "override the system prompt or policies) and blocks or logs it at the threshold."
        ),
    )
    pii_detector: PiiDetector | None = Field(
        default=None,
        alias="pii-detector",
        description=(
            "Finds personal data (emails, phone numbers, SSNs, card numbers, ...) in requests "
            "and responses and redacts, masks, hashes or blocks it."
        ),
    )
    content_filter: ContentFilter | None = Field(
        default=None,
        alias="content-filter",
        description=(
            "Matches requests and responses against term lists by category and against "
            "custom terms and patterns; blocks or logs a match."
        ),
    )
    audit_logger: AuditLogger | None = Field(
        default=None,
        alias="audit-logger",
        description=(
            "Writes a tamper-evident audit record of each request and of what the policies "
            "did; secrets never appear in it."
        ),
    )
    cost_attribution: CostAttribution | None = Field(
        default=None,
        alias="cost-attribution",
        description=(
            "Counts the tokens and cost of each request and attributes them to tags (team, "
            "project, pod labels)."
        ),
    )


BLOCK_TYPES: dict[str, type[PolicyBlock]] = {
    "prompt-injection": PromptInjection,
    "pii-detector": PiiDetector,
    "content-filter": ContentFilter,
    "audit-logger": AuditLogger,
    "cost-attribution": CostAttribution,
}


class PolicyConfig(Strict):
    pack: Pack = Field(description="Identity of the policy pack.")
    providers: Providers = Field(description="Upstream provider targets.")
    policies: Policies = Field(default_factory=Policies, description="Which policies run.")
    policy: PolicyBlocks = Field(
        default_factory=PolicyBlocks,
        description=(
            "Settings of each policy kind, by kind. A kind in policies.chain without a block "
            "here runs with its defaults; a block whose kind is not in the chain does not run."
        ),
    )

    def block(self, kind: str) -> PolicyBlock:
        """The settings of `kind`, or its documented defaults when the config has no block."""
        configured = getattr(self.policy, kind.replace("-", "_"))
        return configured if configured is not None else BLOCK_TYPES[kind]()
