"""The signing methods: every one unlocks the caller's credentials, checks that the caller may
use `from`, signs inside the HSM, and (for eth_sendTransaction) sends through the node pool."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy import abi
from proxy import filling
from proxy.context import Caller, Services
from proxy.errors import (
    DatabaseUnavailable,
    Forbidden,
    InvalidParams,
    NodeError,
    NoNodeAvailable,
    PolicyRefused,
    RateLimited,
    SendOutcomeUnknown,
    Unauthorized,
)
from proxy.guard import preflight
from proxy.guard.gate import Verdict
from proxy.handlers import decisions
from proxy.ledger.nonces import (
    Idempotency,
    Origin,
    Slot,
    params_digest,
    refusal_kind,
    resend_call,
)
from proxy.rpc import RpcRequest
from signer.base import AsyncSigner, Signature, SignedTransaction, checksum
from signer.ecdsa import keccak256
from signer.errors import InvalidMessage, InvalidTransaction
from signer.messages import parse_typed_data, personal_message_digest, typed_data_digest
from signer.transactions import (
    Transaction,
    parse_address,
    parse_hex,
    parse_optional_quantity,
    sign_transaction_async,
)

log = logging.getLogger(__name__)


def _address_param(value: Any) -> bytes:
    try:
        address = parse_address("address", value)
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None
    if address is None:
        raise InvalidParams("an address to sign with is required")
    return address


async def signer_for(services: Services, caller: Caller, address: bytes) -> AsyncSigner:
    """The key behind `address`, once the caller proved they may use it."""
    principal = caller.principal
    if not principal.may_sign:
        raise Forbidden(f"role {principal.role!r} may not sign")
    account = await services.identity.account_for(principal, address)
    if caller.credentials is None:
        if not caller.password:
            raise Unauthorized("signing with a JWT needs the X-Signer-Password header")
        _, caller.credentials = await services.identity.unlock_with_password(
            principal.user_id, caller.password
        )
        # A first unlock may have waited seconds for PBKDF2: a grant revoked meanwhile holds.
        account = await services.identity.account_for(principal, address)
    credentials = caller.credentials
    if credentials.token_serial != account.token_serial:
        raise Forbidden("this caller's credentials do not open the token of that account")
    key = await services.keyring.signer(credentials, account.key_id)
    if key.address != address:
        raise Forbidden("the HSM key does not match the registered account")
    return key


async def _prepare(
    services: Services, request: filling.Request, errors: Iterable[abi.AbiSignature] = ()
) -> Transaction:
    """Read what filling and the checks before signing need from the nodes (concurrently, and
    shared between requests within a block's time: ChainFacts), and refuse what cannot succeed
    (preflight: funds, token balance, a revert), before any nonce is held. The result is the
    transaction at nonce 0 (what no node could accept is refused here); `filling.at_nonce`
    gives it the nonce once known. `errors`: custom errors to decode a revert with."""
    facts, pool = services.chain_facts, services.pool
    fields, sender = request.fields, request.sender
    to, payload = request.to, request.data
    estimate_failed: list[NodeError] = []
    # A private transaction runs in the private states of its parties, which the public state
    # the nodes answer for here does not hold: no pre-flight call or token balance is read for
    # it (the native balance still pays its gas).
    private = request.private is not None

    async def gas() -> int | None:
        if request.gas is not None:
            return request.gas
        if await _plain_transfer(services, request, to, payload):
            return filling.TX_GAS
        estimate_fields = {k: v for k, v in fields.items()
                           if k in ("to", "value", "data", "input", "accessList")}  # fmt: skip
        estimate_fields["from"] = "0x" + sender.hex()
        try:
            return int(await pool.call("eth_estimateGas", [estimate_fields]), 16)
        except NodeError as error:
            if not (preflight.is_revert(error) or preflight.lacks_funds(error)):
                raise
            estimate_failed.append(error)  # said once the balance is known: which check speaks
            return None

    async def given_gas_call() -> PolicyRefused | None:
        # With the gas given there is no estimate: the pre-flight call is made for it, unless
        # the request is a plain transfer to an address without code (nothing to run).
        if request.gas is None or (to is not None and not payload and not fields.get("accessList")
                                   and not await facts.has_code(to)):  # fmt: skip
            return None
        return await preflight.call_reverts(pool, sender, fields, request.gas, errors)

    # What is already known (fresh in ChainFacts) is taken as it is; only what must be read
    # waits, all at once, and without a task each when one read is all there is.
    bare = to is not None and not payload and not fields.get("accessList")
    code = facts.fresh_has_code(to) if bare and to is not None else None
    move = None if private else preflight.token_move(sender, to, payload)
    block = facts.fresh_block()
    reads: dict[str, Awaitable[Any]] = {"balance": facts.balance(sender)}
    if block is None:
        reads["block"] = facts.block()
    gas_value: int | None = request.gas
    if gas_value is None:
        if code is False and _above_precompiles(to):
            gas_value = filling.TX_GAS
        else:
            reads["gas"] = gas()
    if move is not None:
        reads["token"] = preflight.token_shortfall(pool, move)
    if request.gas is not None and code is not False and not private:
        reads["call"] = given_gas_call()
    if block is not None:  # the fee fields it decides, read with the rest when not fresh
        fee_market = filling.uses_fee_market(request, block[0])
        if fee_market and "maxPriorityFeePerGas" not in fields and facts.fresh_tip() is None:
            reads["tip"] = facts.tip()
        if not fee_market and "gasPrice" not in fields and facts.fresh_gas_price() is None:
            reads["price"] = facts.gas_price()
    got = await _all(reads)
    base_fee, gas_limit = got["block"] if block is None else block
    gas_value = got.get("gas", gas_value)
    balance: int = got["balance"]
    token_refusal: PolicyRefused | None = got.get("token")
    call_refusal: PolicyRefused | None = got.get("call")
    fee_market = filling.uses_fee_market(request, base_fee)
    if fee_market and base_fee is None:
        raise InvalidParams("this network does not support EIP-1559 (type 2) transactions")
    tip_value = price = None
    if fee_market and "maxPriorityFeePerGas" not in fields:
        tip_value = got["tip"] if "tip" in got else await facts.tip()
    if not fee_market and "gasPrice" not in fields:
        price = got["price"] if "price" in got else await facts.gas_price()
    elif base_fee is None and parse_optional_quantity("gasPrice", fields.get("gasPrice")):
        # GoQuorum refuses a price unless its genesis enables one; eth_gasPrice then is not 0.
        if not await facts.gas_price():
            raise InvalidParams("this network does not price gas (its blocks have no base fee "
                                "and eth_gasPrice is 0, as on GoQuorum): give gasPrice 0, or "
                                "leave it out")  # fmt: skip
    build = functools.partial(
        filling.build, request, chain_id=pool.chain_id, block_gas_limit=gas_limit,
        fee_market=fee_market, base_fee=base_fee, gas_price=price, tip=tip_value,
    )  # fmt: skip
    # Cheapest first: the native balance (for the least gas that could do, when the estimate
    # failed), the token balance, then the call.
    at_least = gas_value or filling.intrinsic_gas(payload, to is None, fields.get("accessList"))
    funded = build(nonce=0, gas=at_least)
    preflight.check_funds(sender, balance, funded)
    if token_refusal is not None:
        raise token_refusal
    if estimate_failed:
        error = estimate_failed[0]
        if private and preflight.is_revert(error):
            raise InvalidParams(
                'give "gas" for this private transaction: its gas cannot be estimated on the '
                f"public state, where the call failed ({error.message[:200]})"
            )
        if preflight.is_revert(error):
            raise preflight.reverted(error, errors)
        # The node ran out of funds during the call itself (a value sent on by the contract,
        # more gas than the intrinsic minimum at the fee market's price).
        raise preflight.refusal("insufficient_funds", preflight.FUNDS_RULE, (
            f"the node says the balance of {checksum(sender)} cannot pay for this call "
            f"({error.message[:200]})"))  # fmt: skip
    if call_refusal is not None:
        raise call_refusal
    assert gas_value is not None  # noqa: S101 (the estimate failed or gave a value)
    return funded if at_least == gas_value else build(nonce=0, gas=gas_value)


async def _all(reads: Mapping[str, Awaitable[Any]]) -> dict[str, Any]:
    """Every read's answer by name, read concurrently; one alone is awaited as it is."""
    if len(reads) == 1:
        ((name, read),) = reads.items()
        return {name: await read}
    return dict(zip(reads, await asyncio.gather(*reads.values()), strict=True))


# Precompiles have no code and cost more than 21000: Ethereum's sit at 0x01-0xff (0x01-0x11 as of
# Prague), rollups' and RIP-7212's at 0x100-0x1ff, GoQuorum's privacy precompile among the low
# ones. Below this bound an address without code is estimated anyway.
PRECOMPILES_BELOW = 0x1000


def _above_precompiles(to: bytes | None) -> bool:
    return to is not None and int.from_bytes(to, "big") >= PRECOMPILES_BELOW


async def _plain_transfer(services: Services, request: filling.Request, to: bytes | None,
                          payload: bytes) -> bool:  # fmt: skip
    """Whether the request is a value transfer to an account without code, which costs exactly
    21000 gas everywhere: then eth_estimateGas adds nothing."""
    if to is None or payload or request.fields.get("accessList") or not _above_precompiles(to):
        return False
    return not await services.chain_facts.has_code(to)


def _first_param(request: RpcRequest) -> Any:
    params = request.positional
    if not params:
        raise InvalidParams("expected a transaction object as the first parameter")
    return params[0]


def _origin(caller: Caller) -> Origin:
    principal = caller.principal
    return Origin(principal.user_id, principal.organisation_id, caller.request_id)


def _idempotency(caller: Caller, request: RpcRequest) -> Idempotency | None:
    key = caller.idempotency_key
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidParams("the Idempotency-Key header must be 1 to 255 printable characters")
    return Idempotency(key, params_digest(request.positional))


class _NonceTakenOutside(Exception):
    def __init__(self, refusal: NodeError) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass(frozen=True)
class _Privately:
    """Where a private transaction's payload goes: the organisation's Tessera, and the key it
    is sent from (None: Tessera's default key)."""

    url: str
    sender: str | None


_Decided = tuple[filling.Request, AsyncSigner, Transaction, Verdict, "_Privately | None"]


async def _tessera_for(services: Services, caller: Caller,
                       private: filling.Private) -> _Privately:  # fmt: skip
    """The organisation's Tessera (`org set-tessera`, else QSIGNER_TESSERA_URL), once
    `privateFrom` is one of the organisation's keys and every recipient is known to the
    Tessera network: refused before anything is decided or any nonce is taken."""
    principal = caller.principal
    configured = await services.identity.tessera_of(principal.organisation_id)
    if configured is None:
        url, owned = services.settings.tessera_url, tuple[str, ...]()
        if url is None:
            raise InvalidParams(
                "private transactions need a Tessera: none is set for this organisation "
                "(quorum-signer org set-tessera) nor QSIGNER_TESSERA_URL; refused, never sent as "
                "a public transaction"
            )
    else:
        url, owned = configured
    sender = private.private_from
    if sender is None:
        sender = owned[0] if owned else None
    elif sender not in owned:
        raise Forbidden(
            f"privateFrom {sender} is not a Tessera key of organisation "
            f"{principal.organisation!r} (quorum-signer org set-tessera --key)"
        )
    await services.tessera.check_recipients(url, private.private_for)
    return _Privately(url, sender)


async def _stored_privately(services: Services, probe: Transaction, privately: _Privately | None
                            ) -> Transaction:  # fmt: skip
    """For a private transaction, its payload stored in Tessera and the transaction GoQuorum
    takes (data = the payload's Tessera hash, v 37/38); a public one as it is. Comes after the
    decision (a refused payload is never stored) and before any nonce is taken."""
    if privately is None:
        return probe
    tessera_hash = await services.tessera.store_raw(privately.url, probe.data, privately.sender)
    return filling.private_at(probe, tessera_hash)


async def _decided(services: Services, caller: Caller, request: RpcRequest) -> _Decided:
    """A transaction request that may go ahead: parsed, its key unlocked, filled but for the
    nonce, past the checks on the chain and the policy (each refusal audited), and its
    decision recorded. Nothing here takes a nonce."""
    parsed = filling.parse_request(_first_param(request))
    key = await signer_for(services, caller, parsed.sender)
    privately = None
    if parsed.private is not None:
        privately = await _tessera_for(services, caller, parsed.private)
    policy = await services.gate.in_force(caller.principal.organisation_id)
    try:
        probe = await _prepare(services, parsed, services.gate.revert_errors(policy, parsed.to))
    except PolicyRefused as refusal:  # a check on the chain: audited like a policy's
        await decisions.refused_by_check(services, caller, request, parsed.sender, refusal)
        raise
    verdict = await decisions.for_transaction(services, caller, request, policy, parsed.sender,
                                              probe, parsed.private)  # fmt: skip
    return parsed, key, probe, verdict, privately


async def send_transaction(services: Services, caller: Caller, request: RpcRequest) -> Any:
    idempotency = _idempotency(caller, request)
    if idempotency is not None:
        # A repeat is answered with the first request's transaction, before anything is
        # checked or decided again (a limit the first one filled must not refuse its repeat).
        earlier = await services.ledger.keyed(caller.principal.user_id, idempotency)
        if earlier is not None:
            sent = await services.ledger.wait_for_hash(earlier)
            if sent is not None:
                return "0x" + sent.hex()
    parsed, key, probe, verdict, privately = await _decided(services, caller, request)
    try:
        probe = await _stored_privately(services, probe, privately)
        return await _send(services, caller, request, key, parsed, probe, idempotency, verdict)
    except SendOutcomeUnknown:
        raise  # it may have reached a node: it stays counted
    except BaseException:
        await _failed(services, caller, verdict)
        raise


async def _failed(services: Services, caller: Caller, verdict: Verdict) -> None:
    """A request that failed before reaching a node: its counts are given back, and its
    decision is on record before it answers (as when the decision was recorded first)."""
    await decisions.give_back(services, caller, verdict)
    with contextlib.suppress(Exception):
        await decisions.recorded(services, verdict)


async def _recorded(services: Services, caller: Caller, key: AsyncSigner, slot: Slot,
                    verdict: Verdict) -> None:  # fmt: skip
    """The decision on record, before anything signed at the slot's nonce is stored, sent or
    shown: its append overlapped the reservation. If it failed, the nonce is given back, and
    nothing signed for it is kept."""
    try:
        await decisions.recorded(services, verdict)
    except BaseException:
        if not slot.existing:
            await _give_back(services, caller, key, slot,
                             "not signed: the decision could not be recorded")  # fmt: skip
        raise


async def _send(services: Services, caller: Caller, request: RpcRequest, key: AsyncSigner,
                parsed: filling.Request, probe: Transaction,
                idempotency: Idempotency | None, verdict: Verdict) -> str:  # fmt: skip
    ledger, origin = services.ledger, _origin(caller)
    given = parsed.nonce if services.settings.caller_nonces == "respect" else None
    last: Exception = RateLimited("the account's nonces moved under this request three times; "
                                  "nothing was sent, try again")  # fmt: skip
    for _attempt in range(3):
        async with ledger.turn(parsed.sender):
            early = None
            if given is None and idempotency is None:
                early = _sign_early(services, key, probe, ledger.likely_nonce(parsed.sender))
            if given is not None:
                slot = await ledger.claim(parsed.sender, given, origin, idempotency=idempotency)
            else:
                slot = await ledger.reserve(parsed.sender, origin, idempotency=idempotency)
            # From here on, a signature made early and not used is dropped unseen (_retrieved).
            await _recorded(services, caller, key, slot, verdict)
            if not slot.existing:
                try:
                    tx = filling.at_nonce(probe, slot.nonce)
                    result = await _sign_store_send(services, caller, key, tx, slot, verdict,
                                                    early, parsed.private)  # fmt: skip
                    decisions.signed(services, caller, request.method, slot.account,
                                     bytes.fromhex(result[2:]), slot.nonce, "sent")  # fmt: skip
                    return result
                except _NonceTakenOutside as taken:
                    if given is not None:
                        raise taken.refusal from None
                    # The chain is ahead of the ledger: read it again, take the next nonce.
                    await ledger.chain_counts(parsed.sender, fresh=True)
                    last = taken.refusal
                    continue
        earlier = await ledger.wait_for_hash(slot)  # an Idempotency-Key's first request
        if earlier is not None:
            await decisions.give_back(services, caller, verdict)  # that one was counted
            return "0x" + earlier.hex()
        # That request failed and gave its key up: this one goes ahead.
    raise last


# A signature made while the reservation ran, at the nonce it was expected to give.
_Early = tuple[int, "asyncio.Future[SignedTransaction]"]


def _sign_early(services: Services, key: AsyncSigner, probe: Transaction,
                nonce: int | None) -> _Early | None:  # fmt: skip
    """Start signing at `nonce` (Ledger.likely_nonce) while the reservation runs; its bytes are
    used only if the reservation gives that very nonce (the ledger's docstring says why this
    keeps its rules)."""
    if nonce is None:
        return None
    try:
        tx = filling.at_nonce(probe, nonce)
    except InvalidParams:
        return None
    signing = asyncio.ensure_future(_sign(services, key, tx))
    signing.add_done_callback(_retrieved)
    return nonce, signing


def _retrieved(signing: asyncio.Future[SignedTransaction]) -> None:
    """A signature made early and not used is dropped unseen (never stored, sent or shown),
    whenever its HSM call ends; its failure is nobody's."""
    if not signing.cancelled():
        signing.exception()


async def _sign_store_send(services: Services, caller: Caller, key: AsyncSigner,
                           tx: Transaction, slot: Slot, verdict: Verdict,
                           early: _Early | None = None,
                           private: filling.Private | None = None) -> str:  # fmt: skip
    """Sign at the reserved nonce (or take the signature made early at it), store the bytes,
    then send them (a private transaction with eth_sendRawPrivateTransaction and its
    recipients). What failed before anything left the process, or what a node refused for
    sure, gives the nonce back (and fills the hole at once if a higher nonce is already out); a
    send whose outcome is unknown keeps the nonce: recovery sends the same bytes again."""
    ledger = services.ledger
    if private is not None:
        slot.private_args = json.dumps(private.send_args())
    signed = await _sign_and_store(services, caller, key, tx, slot, early)
    if verdict.gas_counted:
        # Before the send: a receipt seen at once must find the hash to correct the gas by.
        # The bytes are stored and will be sent whatever happens here: a failure only leaves
        # the gas counted as the gas limit (the safe side of the limit).
        try:
            await services.gate.sent(verdict.ticket, signed.hash)
        except DatabaseUnavailable:
            log.warning("gas of %s stays counted as its limit", "0x" + signed.hash.hex())
    tx_hash = "0x" + signed.hash.hex()
    method, params = resend_call(signed.raw, slot.private_args)
    try:
        result, node = await services.pool.submit(
            method, params, tx_hash, headers=caller.forward_headers, affinity=slot.account,
        )  # fmt: skip
    except SendOutcomeUnknown:
        raise  # kept as signed: only these bytes are ever sent for this nonce
    except NoNodeAvailable:  # no node got it (busy or down): nothing left the process
        await _give_back(services, caller, key, slot, "not sent: no node available")
        raise
    except NodeError as refusal:
        kind = refusal_kind(refusal)
        if kind == "taken":
            await ledger.release(slot, f"refused by the node: {refusal.message}", hole=False)
            raise _NonceTakenOutside(refusal) from None
        if kind == "definite":
            await _give_back(services, caller, key, slot, f"refused by the node: {refusal.message}")
            raise
        # Perhaps after the node took it (a gateway's 5xx, an error of its own): keep the nonce
        # for these bytes alone, and say that the outcome is unknown.
        log.warning("send of %s answered %s (%s): outcome unknown, kept for resending",
                    tx_hash, refusal.code, refusal.message)  # fmt: skip
        raise SendOutcomeUnknown(tx_hash, (
            f"the node answered {refusal.code} ({refusal.message[:200]}), which does not say "
            f"whether it took the transaction; only these bytes will be sent: {tx_hash}"
        )) from None  # fmt: skip
    ledger.sent(slot, node)
    return result


async def _sign_and_store(services: Services, caller: Caller, key: AsyncSigner,
                          tx: Transaction, slot: Slot,
                          early: _Early | None = None) -> SignedTransaction:  # fmt: skip
    """The signed bytes at the slot's nonce, committed to the ledger before anyone sees them."""
    try:
        if early is not None and early[0] == tx.nonce:
            signed = await early[1]
        else:
            signed = await _sign(services, key, tx)
    except BaseException:
        await _give_back(services, caller, key, slot, "not signed: the HSM failed")
        raise
    try:
        await services.ledger.store(slot, signed)  # ReservationLost: recovery gave it up
    except DatabaseUnavailable:
        # The store may yet commit at the server: give the nonce back first (a store arriving
        # later then finds the row released and changes nothing). If even that fails, these
        # bytes may be in the ledger, and recovery would send them: say so.
        tx_hash = "0x" + signed.hash.hex()
        try:
            await services.ledger.release(slot, "the signed bytes could not be stored")
        except DatabaseUnavailable:
            raise SendOutcomeUnknown(tx_hash, (
                "database unavailable while this transaction was being stored: it may yet be "
                f"sent once the database answers again: {tx_hash}")) from None  # fmt: skip
        raise
    return signed


async def _give_back(services: Services, caller: Caller, key: AsyncSigner, slot: Slot,
                     reason: str) -> None:  # fmt: skip
    """Release the slot's nonce; when a higher nonce is already taken, fill the hole at once."""
    ledger = services.ledger
    try:
        if await ledger.release(slot, reason):
            await ledger.fill(slot.account, _origin(caller), key, caller.forward_headers)
    except Exception:
        # The caller gets the first failure; recovery fills what is left.
        log.warning("could not give back nonce %d of %s at once; recovery will", slot.nonce,
                    checksum(slot.account), exc_info=True)  # fmt: skip


async def _sign(services: Services, key: AsyncSigner, tx: Transaction) -> SignedTransaction:
    started = time.perf_counter()
    signed = await sign_transaction_async(tx, key)
    services.metrics.hsm_sign.observe(time.perf_counter() - started)
    return signed


async def sign_transaction(services: Services, caller: Caller, request: RpcRequest) -> Any:
    """Signs without sending. Without a nonce, the ledger reserves one and keeps the bytes, so
    that no other transaction gets it; when the bytes are sent (through us or elsewhere) or
    mined, the reservation is settled, and if they never appear within
    QSIGNER_SIGNED_TX_TIMEOUT recovery fills the nonce."""
    parsed, key, probe, verdict, privately = await _decided(services, caller, request)
    try:
        probe = await _stored_privately(services, probe, privately)
        tx, signed, nonce = await _sign_only(services, caller, key, parsed, probe, verdict)
    except BaseException:
        await _failed(services, caller, verdict)
        raise
    decisions.signed(services, caller, request.method, parsed.sender, signed.hash, nonce,
                     "signed")  # fmt: skip
    return {"raw": "0x" + signed.raw.hex(), "tx": filling.to_rpc(tx, signed)}


async def _sign_only(services: Services, caller: Caller, key: AsyncSigner, parsed: filling.Request,
                     probe: Transaction, verdict: Verdict,
                     ) -> tuple[Transaction, SignedTransaction, int]:  # fmt: skip
    ledger, origin = services.ledger, _origin(caller)
    given = parsed.nonce if services.settings.caller_nonces == "respect" else None
    async with ledger.turn(parsed.sender):
        if given is not None:  # a nonce the proxy used is refused, as for eth_sendTransaction
            slot = await ledger.claim(parsed.sender, given, origin, kind="sign",
                                      unrecorded_ahead=True)  # fmt: skip
        else:
            slot = await ledger.reserve(parsed.sender, origin, kind="sign")
        if slot is None:
            # Ahead of the ledger: signed as given (a node would queue it), and not recorded;
            # sending it before the nonces below it are used is the caller's choice.
            assert given is not None  # noqa: S101 (only a given nonce is ever ahead)
            tx = filling.at_nonce(probe, given)
            await decisions.recorded(services, verdict)
            signed = await _sign(services, key, tx)
        else:
            await _recorded(services, caller, key, slot, verdict)
            tx = filling.at_nonce(probe, slot.nonce)
            signed = await _sign_and_store(services, caller, key, tx, slot)
    return tx, signed, tx.nonce


def _message_bytes(value: Any) -> bytes:
    """A message given as 0x-hex is those bytes; any other string is its UTF-8 text."""
    if not isinstance(value, str):
        raise InvalidParams("the message must be a string (0x-hex bytes or text)")
    if value[:2] in ("0x", "0X"):
        try:
            return parse_hex("message", value)
        except InvalidTransaction:
            pass
    return value.encode()


def _looks_like_address(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 42 and value[:2] in ("0x", "0X")


async def _sign_digest(services: Services, caller: Caller, request: RpcRequest,
                       key: AsyncSigner, digest: bytes,
                       typed: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    await decisions.for_message(services, caller, request, key.address, digest, typed)
    started = time.perf_counter()
    signature: Signature = await key.sign_digest_async(digest)
    services.metrics.hsm_sign.observe(time.perf_counter() - started)
    return "0x" + signature.to_bytes().hex()


async def eth_sign(services: Services, caller: Caller, request: RpcRequest) -> Any:
    params = request.positional
    if len(params) < 2:
        raise InvalidParams("expected [address, message]")
    key = await signer_for(services, caller, _address_param(params[0]))
    return await _sign_digest(
        services, caller, request, key, personal_message_digest(_message_bytes(params[1]))
    )


async def personal_sign(services: Services, caller: Caller, request: RpcRequest) -> Any:
    params = request.positional
    if len(params) < 2:
        raise InvalidParams("expected [message, address]")
    message, address = params[0], params[1]
    # MetaMask's order is [message, address]; some older tools send [address, message].
    if _looks_like_address(message) and not _looks_like_address(address):
        message, address = address, message
    key = await signer_for(services, caller, _address_param(address))
    return await _sign_digest(
        services, caller, request, key, personal_message_digest(_message_bytes(message))
    )


async def sign_typed_data_v4(services: Services, caller: Caller, request: RpcRequest) -> Any:
    params = request.positional
    if len(params) < 2:
        raise InvalidParams("expected [address, typedData]")
    try:
        data = parse_typed_data(params[1])
        chain = data["domain"].get("chainId")
        if chain is not None:
            # Wallet libraries send the domain's chainId as a number, a decimal or hex string.
            text = str(chain)
            value = chain if isinstance(chain, int) else int(text, 16 if text[:2] == "0x" else 10)
            if value != services.pool.chain_id:
                raise InvalidParams(
                    f"typed data is for chain {value}, the nodes serve {services.pool.chain_id}"
                )
        digest = typed_data_digest(data)
    except (InvalidMessage, InvalidTransaction, ValueError) as exc:
        raise InvalidParams(str(exc)) from None
    key = await signer_for(services, caller, _address_param(params[0]))
    return await _sign_digest(services, caller, request, key, digest, data)


# A caller's own signed transaction, submitted to a node: each method with whether the node
# answers with the transaction's hash (eth_distributePrivateTransaction answers with Tessera's).
SUBMISSIONS = {
    "eth_sendRawTransaction": True,
    "eth_sendRawPrivateTransaction": True,
    "eth_distributePrivateTransaction": False,
}


async def forward_raw(services: Services, caller: Caller, request: RpcRequest) -> Any:
    """A caller's own signed transaction (SUBMISSIONS), with the pool's safe-retry rules."""
    params = request.positional
    if not params or not isinstance(params[0], str):
        raise InvalidParams("expected [rawTransaction]")
    try:
        raw = parse_hex("rawTransaction", params[0])
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None
    tx_hash = keccak256(raw)
    result, _ = await services.pool.submit(
        request.method,
        list(params),
        "0x" + tx_hash.hex(),
        headers=caller.forward_headers,
        answers_hash=SUBMISSIONS[request.method],
    )
    if request.method != "eth_distributePrivateTransaction":
        # Bytes of our own eth_signTransaction arriving: their reservation is settled. Best
        # effort: the node took them already, and recovery settles by hash in any case.
        try:
            await services.ledger.reconcile(tx_hash)
        except DatabaseUnavailable:
            log.warning("could not mark %s sent in the ledger", "0x" + tx_hash.hex())
    return result
