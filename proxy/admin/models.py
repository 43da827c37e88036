"""The admin API's typed models (pydantic): what each route takes (path, query, body) and what it
answers. The handlers parse and answer with these, and the OpenAPI document is generated from
them (`proxy.admin.openapi`), so the two cannot drift apart."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

T = TypeVar("T")

ADDRESS = r"^0x[0-9a-fA-F]{40}$"
TX_HASH = r"^0x[0-9a-fA-F]{64}$"
# Ids as the proxy makes them: approvals `apr_<16 hex>`, API keys 16 hex, users as `user add`
# allows them.
APPROVAL_ID = r"^apr_[0-9a-f]{16}$"
API_KEY_ID = r"^[0-9a-f]{16}$"
USER_ID = r"^[A-Za-z0-9._@+:|-]{1,200}$"


def _iso_time(value: Any) -> Any:
    """Times in a query are ISO-8601 text, as the document says (pydantic alone would also take
    a number of seconds since 1970)."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", value):
        raise ValueError("an ISO-8601 time with a zone is needed, e.g. 2026-12-01T00:00:00Z")
    return value


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_time)]
CURSOR = r"^[A-Za-z0-9_-]{1,200}$"

Address = Annotated[
    str,
    Field(
        pattern=ADDRESS, description="a 0x address (any case; a mixed-case one is EIP-55 checked)"
    ),
]
TxState = Literal["reserved", "signed", "sent", "mined", "released", "replaced"]
ApprovalState = Literal["pending", "approved", "rejected", "used", "expired"]
Role = Literal["signer", "viewer", "admin"]
# 64 Ki characters: a policy file is a few KiB, and the longest JSON body of one (every
# character \u-escaped) still stays under the 1 MiB body limit, so the length is what refuses it.
PolicySource = Annotated[str, Field(min_length=1, max_length=64 * 1024,
                                    description="the policy file's YAML text")]  # fmt: skip


class Input(BaseModel):
    """What a caller sends: unknown fields are refused (a typo is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Output(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- errors and pages ----------------------------------------------------------------------


class Problem(Output):
    """One thing wrong with the input: where, and what."""

    location: str = Field(description="`query.limit`, `body.source`, `path.address`, ...")
    message: str


class ErrorDetail(Output):
    code: str = Field(description="stable, for programs: bad_input, unauthorized, forbidden, "
                      "not_found, conflict, rate_limited, unavailable, internal")  # fmt: skip
    message: str = Field(description="for people: what to fix (never a secret)")
    problems: list[Problem] = Field(default_factory=list)


class ErrorAnswer(Output):
    """Every error of the admin API has this shape."""

    error: ErrorDetail


class PageQuery(Input):
    limit: int = Field(50, ge=1, le=500, description="items per page")
    cursor: str | None = Field(None, pattern=CURSOR,
                               description="`next_cursor` of the previous page")  # fmt: skip


class Page(Output, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: "
                                    "this was the last")  # fmt: skip


# --- who is calling ---------------------------------------------------------------------


class Me(Output):
    user: str
    organisation: str
    role: Role
    credential: Literal["jwt", "api_key"]
    unlocked: bool = Field(description="whether the caller proved who they are beyond a bearer "
                           "token (an API key, or a JWT with X-Signer-Password): what approving "
                           "and rejecting need")  # fmt: skip


# --- accounts -------------------------------------------------------------------------------


class NonceLedger(Output):
    """What the nonce ledger knows of an account's nonces."""

    next_nonce: int | None = Field(description="the next nonce the ledger would give (null: the "
                                   "ledger has not seen the account yet)")  # fmt: skip
    in_flight: int = Field(description="transactions reserved, signed or sent and not mined")
    lowest_in_flight: int | None
    last_mined_nonce: int | None = Field(description="the highest nonce the ledger saw mined")
    last_mined_at: datetime | None
    chain_mined_count: int | None = Field(description="the chain's mined count, as the ledger "
                                          "last recorded it")  # fmt: skip
    holes: int = Field(description="nonces given back and not yet taken again")
    queue_depth: int = Field(description="requests of this replica waiting for a nonce")


class AccountView(Output):
    address: str
    name: str | None
    token_label: str
    users: int = Field(description="users granted this account")
    ledger: NonceLedger


class ChainCounts(Output):
    mined: int
    pending: int


class AccountDetail(AccountView):
    chain: ChainCounts | None = Field(description="the node's transaction counts now (null: no "
                                      "node answered)")  # fmt: skip


class AccountPath(Input):
    address: Address


# --- transactions ---------------------------------------------------------------------------


class TransactionQuery(PageQuery):
    account: Address | None = None
    user: str | None = Field(None, pattern=USER_ID)
    state: TxState | None = None
    since: IsoTime | None = Field(None, description="created at or after (ISO-8601 with a "
                                        "zone)")  # fmt: skip
    until: IsoTime | None = Field(None, description="created before")


class TransactionView(Output):
    hash: str | None = Field(description="null while only reserved")
    account: str
    nonce: int
    state: TxState
    kind: Literal["send", "sign", "fill"]
    user: str | None
    request_id: str | None
    node: str | None
    block_number: int | None
    receipt_status: int | None
    reason: str | None = Field(description="why it was released or replaced")
    send_attempts: int
    private: bool
    created_at: datetime
    signed_at: datetime | None
    sent_at: datetime | None
    mined_at: datetime | None


class AuditEntry(Output):
    seq: int
    at: datetime
    hash: str
    content: dict[str, Any] = Field(description="the audited event (kind, user, action, ...)")


class TransactionLife(Output):
    transaction: TransactionView = Field(description="the ledger's row holding the hash now")
    earlier: list[TransactionView] = Field(description="rows that held the same bytes and "
                                           "gave their nonce up")  # fmt: skip
    events: list[AuditEntry] = Field(description="the audit rows of its request and its hash, "
                                     "in order: decision, signing, sending, ...")  # fmt: skip


class TransactionPath(Input):
    hash: str = Field(pattern=TX_HASH)


# --- approvals ------------------------------------------------------------------------------


class ApprovalQuery(PageQuery):
    state: ApprovalState | None = Field("pending", description="pending: waiting and not "
                                        "expired; expired: past its expiry undecided")  # fmt: skip


class VoteView(Output):
    user: str
    vote: Literal["approve", "reject"]
    at: datetime


class DecodedCall(Output):
    """The held request's calldata as an approver reads it."""

    selector: str | None = Field(description="the first 4 bytes of the data, 0x-hex; null "
                                 "without data (a plain transfer of value)")  # fmt: skip
    function: str | None = Field(description="the function called, as its canonical signature "
                                 "(`transfer(address,uint256)`), when the selector is one the "
                                 "proxy knows (ERC-20 transfer, transferFrom, approve); null "
                                 "otherwise: read `selector` and `data`")  # fmt: skip
    args: dict[str, str] | None = Field(
        description="the function's arguments by name: addresses EIP-55, integers as decimal "
        "strings"
    )
    data: str = Field(description="the raw data as audited, 0x-hex")
    data_cut: bool = Field(description="the audit kept only the data's first bytes")
    problem: str | None = Field(description="why a known function's arguments do not decode")


class ApprovalView(Output):
    id: str
    state: ApprovalState
    requester: str
    method: str
    rule: str
    policy_version: int
    needed: int
    approvals: int
    votes: list[VoteView]
    summary: dict[str, Any] = Field(description="what the request would do: account, to, value")
    request: dict[str, Any] | None = Field(
        description="the held request as the audit log recorded its decision (to, value, data, gas)"
    )
    call: DecodedCall | None = Field(
        None,
        description="`request.data` decoded: the function and its arguments where known, else "
        "the selector",
    )
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    used_at: datetime | None


class ApprovalPath(Input):
    id: str = Field(pattern=APPROVAL_ID)


class VoteBody(Input):
    comment: str | None = Field(None, max_length=500, description="kept in the audit row")


class VoteResult(Output):
    approval_id: str
    state: Literal["pending", "approved", "rejected"]
    approvals: int
    needed: int


# --- audit ----------------------------------------------------------------------------------


class AuditQuery(PageQuery):
    kind: Literal["decision", "signed", "security"] | None = None
    since: IsoTime | None = None
    until: IsoTime | None = None


class Checkpoint(Output):
    seq: int
    at: datetime
    address: str


class AuditVerify(Output):
    intact: bool
    rows: int
    head_seq: int | None
    checkpoints: int = Field(description="signed checkpoints that verified")
    last_checkpoint: Checkpoint | None = Field(description="the last verified checkpoint before "
                                               "any break")  # fmt: skip
    broken_seq: int | None
    problem: str | None = Field(description="the first broken, missing or reordered row")


class ExportQuery(Input):
    since: IsoTime | None = None


# --- users and API keys ---------------------------------------------------------------------


class UserView(Output):
    id: str
    role: Role
    status: Literal["active", "disabled"]
    locked_until: datetime | None
    created_at: datetime
    accounts: list[str]
    api_keys: int = Field(description="active API keys")


class UserPath(Input):
    id: str = Field(pattern=USER_ID)


class ApiKeyQuery(PageQuery):
    user: str | None = Field(None, pattern=USER_ID)
    revoked: bool | None = Field(None, description="only revoked (true) or active (false) keys")


class ApiKeyView(Output):
    id: str
    user: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyPath(Input):
    id: str = Field(pattern=API_KEY_ID)


# --- policy ---------------------------------------------------------------------------------


class PolicyView(Output):
    version: int | None = Field(description="null: no policy installed (everything a role may "
                                "do is allowed, after the balance checks)")  # fmt: skip
    source: str | None
    installed_at: datetime | None
    installed_by: str | None


class PolicyDraft(Input):
    source: PolicySource


class DryRunBody(Input):
    source: PolicySource
    last: int = Field(1000, ge=1, le=10_000, description="recent audited requests to replay")


class PolicyCheck(Output):
    valid: bool
    error: str | None = Field(description="what to fix, naming the line and the field")


class ChangedDecision(Output):
    request_id: str | None
    old: str = Field(description="the decision made, e.g. allow or hold(big-transfers)")
    new: str = Field(description="the draft's decision")


class DryRun(Output):
    replayed: int
    changed: list[ChangedDecision]


class PolicyInstalled(Output):
    version: int


# --- nodes ----------------------------------------------------------------------------------


class NodeView(Output):
    url: str = Field(description="credentials masked")
    ok: bool
    block: int | None
    chain_id: int | None
    reason: str | None = Field(description="why it is out of rotation")
    in_flight: int


class HealthChangeView(Output):
    at: datetime
    url: str
    ok: bool
    reason: str | None


class Nodes(Output):
    chain_id: int
    nodes: list[NodeView]
    history: list[HealthChangeView] = Field(
        description="changes in and out of rotation seen by this replica since it started, "
        "oldest first"
    )


class Done(Output):
    """A write that has nothing else to say."""

    ok: Literal[True] = True
