"""The policy's models: guardrail rules, where they apply, and the platform bundle's settings.

An example of each is in :mod:`guardrails.policy`'s docstring.

Pure models (pydantic and our leaf models); what makes a rule wrong is in
:mod:`guardrails.policy_rules`, a request's additions in :mod:`guardrails.additions`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from workflows.models import ChangeContext, Dispatch, Duration, Mode, OptOutRule, Strict
from workflows.rollout_models import ResponseRule, SignalSpec

__all__ = [
    "ADDITION_FIELDS",
    "RULE_ID",
    "AppliesTo",
    "GuardrailRule",
    "IdentityPolicy",
    "NonEmpty",
    "OidcIssuer",
    "OptOutSetting",
    "PlatformBundle",
    "PolicyFile",
    "ResponseRule",
]


def _opt_out_kind(value: Any) -> str | None:
    if value == "forbidden":
        return "forbidden"
    if isinstance(value, dict | OptOutRule):
        return "rule"
    return None


OptOutSetting = Annotated[
    Annotated[Literal["forbidden"], Tag("forbidden")] | Annotated[OptOutRule, Tag("rule")],
    Discriminator(
        _opt_out_kind,
        custom_error_type="opt_out",
        custom_error_message=(
            "must be 'forbidden' or a rule such as {approvers: [sre-leads], max_duration: 4h}"
        ),
    ),
]
"""``forbidden`` or an :class:`OptOutRule`; a tagged union so errors name one shape, not both."""

NonEmpty = Annotated[str, Field(min_length=1)]
RULE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A rule id: 1-64 letters, digits, '.', '_' or '-' (it names activities and approvals)."""


class AppliesTo(Strict):
    """Which changes a guardrail rule applies to; every selector given must match.

    An omitted selector matches everything. ``environments`` matches when the change's environment
    or any target's own environment is listed (a change that touches one prod target is judged as
    a prod change). ``labels`` matches when any single target carries all of the given labels.
    """

    environments: list[NonEmpty] | None = Field(default=None, min_length=1)
    kinds: list[NonEmpty] | None = Field(default=None, min_length=1)
    teams: list[NonEmpty] | None = Field(default=None, min_length=1)
    labels: dict[str, str] | None = Field(default=None, min_length=1)

    def matches(self, change: ChangeContext) -> bool:
        """Whether the change is in scope of this selector."""
        if self.environments is not None:
            envs = {change.environment} | {t.environment for t in change.targets if t.environment}
            if envs.isdisjoint(self.environments):
                return False
        if self.kinds is not None and change.kind not in self.kinds:
            return False
        if self.teams is not None and change.team not in self.teams:
            return False
        if self.labels is not None:
            wanted = self.labels.items()
            if not any(wanted <= t.labels.items() for t in change.targets):
                return False
        return True


class GuardrailRule(Strict):
    """One guardrail in a policy: which plug-in, where it applies, and its terms.

    ``owner`` and ``timeout`` default to the guardrail's own defaults. ``opt_out`` is
    ``"forbidden"``, a rule naming who may approve a failure, or omitted: then the guardrail's
    ``default_opt_out`` applies. A check that is approvable by default but has no rule is approvable
    by nobody until the policy names approvers (its spec carries ``opt_out_rule=None``).
    """

    id: str | None = Field(
        default=None,
        pattern=RULE_ID,
        description="the rule id, unique in the effective policy (default: the plug-in name)",
    )
    use: NonEmpty = Field(description="the guardrail's registered name, e.g. change-window")
    applies_to: AppliesTo = Field(default_factory=AppliesTo)
    owner: NonEmpty | None = None
    timeout: Duration | None = None
    mode: Mode = Mode.ENFORCE
    params: dict[str, Any] = Field(default_factory=dict)
    opt_out: OptOutSetting | None = None
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="why the platform relaxes a floor guardrail (shadow or an opt_out rule)",
    )
    dispatch: Dispatch = Field(
        default="activity",
        exclude_if=lambda v: v == "activity",  # bundles that do not set it keep their hashes
        description="'local' runs the check as a local activity in the gate's worker (platform only)",
    )

    @property
    def rule_id(self) -> str:
        """The rule's id: ``id`` when given, else the plug-in name."""
        return self.id or self.use

    @field_validator("timeout")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v is not None and v.total_seconds() <= 0:
            raise ValueError("timeout must be positive, e.g. '10s'")
        return v


class PolicyFile(Strict):
    """A whole policy: guardrail rules in evaluation order, and the bake's response rules."""

    guardrails: list[GuardrailRule] = Field(default_factory=list)
    responses: list[ResponseRule] = Field(default_factory=list)
    signals: list[SignalSpec] = Field(
        default_factory=list, description="health signals observed while each wave bakes"
    )
    pager: str = Field(default="log", min_length=1, description="the pager pause_and_page uses")
    page_on_reject: bool = Field(
        default=False, description="page the team when a change is rejected at its deadline"
    )

    @model_validator(mode="after")
    def _responses_unambiguous(self) -> PolicyFile:
        seen: dict[tuple[str, str], int] = {}
        clashes = []
        for i, r in enumerate(self.responses):
            j = seen.setdefault((r.signal, r.state), i)
            if j != i:
                clashes.append(
                    f"responses[{i}]: signal {r.signal!r} in state {r.state!r} "
                    f"is already answered by responses[{j}]"
                )
        if clashes:
            raise ValueError("; ".join(clashes))
        return self


class OidcIssuer(Strict):
    """An identity provider whose ID tokens may sign: its ``iss`` and its JWKS (file or URL)."""

    issuer: str = Field(min_length=1, max_length=500)
    jwks: str = Field(min_length=1, max_length=2000, description="a JWKS file path or URL")


class IdentityPolicy(Strict):
    """Where a signature is required, and which OIDC issuers are trusted (docs/approvals.md)."""

    approvals: Literal["optional", "required"] = "optional"
    operator_actions: Literal["optional", "required"] = "optional"
    requests: Literal["optional", "required"] = "optional"
    oidc: list[OidcIssuer] = Field(
        default_factory=list,
        exclude_if=lambda v: not v,  # bundles without issuers keep their hashes
        description="trusted ID-token issuers",
    )


class PlatformBundle(PolicyFile):
    """The platform's policy bundle: a policy plus the settings only the platform may make."""

    unmatched: Literal["reject", "allow"] = Field(
        default="reject",
        description="what happens to a change no platform rule governs; `allow` must be explicit",
    )
    identity: IdentityPolicy = Field(default_factory=IdentityPolicy)


ADDITION_FIELDS = ("guardrails", "signals", "responses")
"""What a request's ``policy`` may hold: additions only."""
