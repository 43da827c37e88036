"""Recovery and tracking: background work on the nonce ledger that keeps every account moving.

Each account's recovery runs on one replica at a time: that replica holds the account's lease
(a row with an expiry and a fencing token; no session advisory locks, which break behind
PgBouncer). Every write it makes first locks the account row and checks that its token is still
the current one, so a replica that lost the lease while paused changes nothing. Every second,
for each account it holds, with M the chain's *mined* count (the pending count is only a hint):

1. Fast-forward: the chain is ahead of the ledger (someone sent from the account outside the
   proxy, or the database was restored from a backup): next nonce := M, logged.
2. Below M: a transaction of ours still open is looked up by hash: mined (with its receipt), or
   its nonce went to another transaction (released, no hole). A reservation below M is released.
3. Dead reservations: a `reserved` row older than QSIGNER_RESEND_SECONDS belongs to a replica
   that died (or hung) between reserving and storing; nothing left that replica, so the nonce
   is given back as a hole. (If that replica wakes, its store finds the row released and it
   sends nothing.)
4. Resend: a stored transaction not mined after QSIGNER_RESEND_SECONDS, or whose account's node
   changed (failover), is sent again: the same bytes, in nonce order, never a new nonce.
5. eth_signTransaction bytes not seen on any node or chain within QSIGNER_SIGNED_TX_TIMEOUT:
   `replaced`, and their nonce becomes a hole.
6. Gaps: a nonce between M and the next nonce with neither a live transaction nor a hole (a
   database restored from an older backup) becomes a hole.
7. Holes below a live transaction are filled with a 0-value self-transfer, signed with the
   account's key if a caller's credentials opened it in this process (recovery holds no PIN);
   otherwise the account's next request takes the hole.
8. Rewind: the ledger is ahead of the chain with nothing live above M (every nonce above M
   given back): next nonce := M, holes above it dropped.
9. Node reset: transactions the ledger saw mined at or above M whose receipts the node no
   longer has (a dev chain reverted, a node resynced) go back to `sent` and are sent again, the
   same bytes in nonce order (rule 4), so the account's later transactions are not stuck.

Tracking (receipts): one replica at a time (a lease row in `ledger_leases`, with the block it
has reached) reads each new block's receipts and marks the ledger's transactions in it mined,
with their status and block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import asyncpg

from proxy.errors import NodeError, NoNodeAvailable, ProxyError, SendOutcomeUnknown
from proxy.keyring import Keyring
from proxy.ledger.nonces import Ledger, Origin, refusal_kind, resend_call
from signer.base import checksum

log = logging.getLogger(__name__)

_TRACKER = b"receipt tracker"  # the affinity of the tracker's reads: all from one node
RECOVERY = Origin("recovery", None, "")


class _LeaseLost(Exception):
    """Another replica holds the account's lease now: stop writing for it."""


class Recovery:
    def __init__(self, ledger: Ledger, keyring: Keyring, *, resend_after: float,
                 signed_tx_timeout: float, interval: float = 1.0,
                 lease_seconds: float = 5.0) -> None:  # fmt: skip
        self.ledger = ledger
        self.keyring = keyring
        self.resend_after = resend_after
        self.signed_tx_timeout = signed_tx_timeout
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self._next_expiry = 0.0  # when expired Idempotency-Keys are next given up
        self._block_receipts = True  # until a node says it has no eth_getBlockReceipts

    @property
    def db(self) -> Any:
        return self.ledger.db

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-recovery")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(5):
                await task
        # Hand the leases over at once rather than at their expiry.
        with contextlib.suppress(Exception):
            await self.db.execute(
                "UPDATE ledger_accounts SET lease_owner = NULL WHERE lease_owner = $1",
                self.replica)  # fmt: skip
            await self.db.execute(
                "UPDATE ledger_leases SET owner = NULL WHERE owner = $1", self.replica
            )

    async def _run(self) -> None:
        while True:
            await self._part("recovery", self.tick())
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        """One round of every part; a part that fails is logged and stops no other part."""
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + 60
            await self._part("expiring Idempotency-Keys", self.ledger.expire_keys())
        await self._part("tracking receipts", self._track())
        for row in await self._lease_accounts():
            await self._part(f"recovery of {checksum(row['account'])}",
                             self._recover(row["account"], row["lease_token"]))  # fmt: skip
        await self._part("filling holes", self._fill_known_holes())

    async def _part(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:
            _still_cancelled()
            if isinstance(exc, _LeaseLost):
                return
            if isinstance(exc, ProxyError):  # the database or the nodes: try next time
                log.warning("ledger %s: %s", what, exc)
            else:
                log.exception("ledger %s failed", what)

    # -- leases ------------------------------------------------------------------------

    async def _lease_accounts(self) -> list[Any]:
        """Take or keep the lease of every account with work to watch whose lease is free,
        expired or ours."""
        rows: list[Any] = await self.db.fetch(
            """UPDATE ledger_accounts a
                  SET lease_owner = $2, lease_until = now() + make_interval(secs => $3),
                      lease_token = CASE WHEN a.lease_owner = $2 THEN a.lease_token
                                         ELSE a.lease_token + 1 END
                WHERE a.chain_id = $1
                  AND (a.lease_owner IS NULL OR a.lease_owner = $2 OR a.lease_until < now())
                  AND (a.next_nonce > a.mined_count
                       OR EXISTS (SELECT 1 FROM ledger_transactions t
                                   WHERE t.chain_id = a.chain_id AND t.account = a.account
                                     AND t.state IN ('reserved', 'signed', 'sent'))
                       OR EXISTS (SELECT 1 FROM ledger_holes h
                                   WHERE h.chain_id = a.chain_id AND h.account = a.account))
            RETURNING a.account, a.lease_token""",
            self.ledger.chain_id, self.replica, float(self.lease_seconds),
        )  # fmt: skip
        return rows

    @contextlib.asynccontextmanager
    async def _fenced(self, account: bytes, token: int) -> AsyncIterator[Any]:
        """A short transaction on the account, only while our lease token is the current one
        (the account row stays locked until it commits: reservations wait that long)."""
        async with self.db.acquire() as conn, conn.transaction():
            holder = await conn.fetchrow(
                """SELECT next_nonce FROM ledger_accounts
                    WHERE chain_id = $1 AND account = $2 AND lease_owner = $3
                      AND lease_token = $4 FOR UPDATE""",
                self.ledger.chain_id, account, self.replica, token,
            )  # fmt: skip
            if holder is None:
                raise _LeaseLost
            yield conn

    # -- one account -------------------------------------------------------------------

    async def _recover(self, account: bytes, token: int) -> None:
        ledger, chain_id = self.ledger, self.ledger.chain_id
        mined, _ = await ledger.chain_counts(account, fresh=True)
        mined = await self._undo_reset(account, token, mined)  # rule 9
        ledger.saw_mined(account, mined)
        async with self._fenced(account, token) as conn:
            next_nonce = await conn.fetchval(
                """UPDATE ledger_accounts SET mined_count = greatest(mined_count, $3),
                          next_nonce = greatest(next_nonce, $3), updated_at = now()
                    WHERE chain_id = $1 AND account = $2
                RETURNING (SELECT next_nonce FROM ledger_accounts
                            WHERE chain_id = $1 AND account = $2)""",
                chain_id, account, mined,
            )  # fmt: skip
            if mined > next_nonce:  # rule 1
                log.warning("the chain is ahead of the ledger for %s (mined %d, ledger's next "
                            "%d): sent outside the proxy, or a restored database; fast-forwarded",
                            checksum(account), mined, next_nonce)  # fmt: skip
            await conn.execute(
                "DELETE FROM ledger_holes WHERE chain_id = $1 AND account = $2 AND nonce < $3",
                chain_id, account, mined,
            )  # fmt: skip
            open_rows = await conn.fetch(
                """SELECT id, nonce, state, kind, tx_hash, raw, node, created_at, private_args,
                          coalesce(sent_at, signed_at, created_at) < now() - make_interval(
                              secs => $3) AS stale,
                          signed_at < now() - make_interval(secs => $4) AS sign_expired
                     FROM ledger_transactions
                    WHERE chain_id = $1 AND account = $2 AND state IN ('reserved', 'signed', 'sent')
                    ORDER BY nonce""",
                chain_id, account, float(self.resend_after), float(self.signed_tx_timeout),
            )  # fmt: skip
        below = [row for row in open_rows if row["nonce"] < mined]
        above = [row for row in open_rows if row["nonce"] >= mined]
        await self._settle_below(account, token, below)  # rule 2
        await self._release_dead(account, token, above)  # rule 3
        await self._resend(account, token, above)  # rule 4
        await self._expire_signed(account, token, above)  # rule 5
        await self._close_gaps(account, token, mined)  # rules 6, 7, 8
        ledger.metrics.unmined.labels(checksum(account)).set(
            sum(row["state"] == "sent" for row in above)
        )

    async def _undo_reset(self, account: bytes, token: int, mined: int) -> int:
        """Rule 9: transactions the ledger saw mined at or above the node's mined count, whose
        receipts the node no longer has, were lost by a node reset (a dev chain reverted, a
        node resynced from scratch): they go back to `sent`, due at once, so that rule 4 sends
        the very same bytes again in nonce order. A node merely behind still has the receipts:
        nothing changes. Answers the mined count to go on with."""
        chain_id = self.ledger.chain_id
        lost = await self.db.fetch(
            """SELECT id, nonce, tx_hash FROM ledger_transactions
                WHERE chain_id = $1 AND account = $2 AND state = 'mined' AND nonce >= $3
                ORDER BY nonce DESC""",
            chain_id, account, mined,
        )  # fmt: skip
        if not lost:
            return mined
        receipt = await self.ledger.pool.call(
            "eth_getTransactionReceipt", ["0x" + lost[0]["tx_hash"].hex()], affinity=account
        )
        if receipt:
            return mined  # behind, not reset: the tracker's view is ahead of this node's
        log.warning("the node lost %d mined transactions of %s (a reset?): sending them again",
                    len(lost), checksum(account))  # fmt: skip
        async with self._fenced(account, token) as conn:
            await conn.execute(
                """UPDATE ledger_transactions
                      SET state = 'sent', block_number = NULL, receipt_status = NULL,
                          mined_at = NULL, sent_at = now() - make_interval(secs => $2),
                          updated_at = now()
                    WHERE id = ANY($1::bigint[]) AND state = 'mined'""",
                [row["id"] for row in lost], float(self.resend_after) + 1,
            )  # fmt: skip
            await conn.execute(
                "UPDATE ledger_accounts SET mined_count = $3 WHERE chain_id = $1 AND account = $2",
                chain_id, account, mined)  # fmt: skip
        self.ledger.reset_counts(account, mined)
        return mined

    async def _settle_below(self, account: bytes, token: int, rows: list[Any]) -> None:
        for row in rows:
            if row["state"] == "reserved":
                await self._set_state(account, token, row["id"], "reserved", "released",
                                      "the chain used this nonce")  # fmt: skip
                continue
            receipt = await self.ledger.pool.call(
                "eth_getTransactionReceipt", ["0x" + row["tx_hash"].hex()]
            )
            if isinstance(receipt, dict) and receipt.get("blockNumber"):
                await self._mark_mined([(row["tx_hash"], int(receipt["blockNumber"], 16),
                                         _status(receipt), _gas_used(receipt))])  # fmt: skip
            else:
                log.warning(
                    "nonce %d of %s was used by another transaction; %s dropped",
                    row["nonce"],
                    checksum(account),
                    "0x" + row["tx_hash"].hex(),
                )
                await self._set_state(
                    account,
                    token,
                    row["id"],
                    row["state"],
                    "released",
                    "the chain used this nonce for another transaction",
                )

    async def _release_dead(self, account: bytes, token: int, rows: list[Any]) -> None:
        for row in rows:
            if row["state"] == "reserved" and row["stale"]:
                log.warning("nonce %d of %s was reserved and never stored (a replica died?): "
                            "given back", row["nonce"], checksum(account))  # fmt: skip
                await self._set_state(account, token, row["id"], "reserved", "released",
                                      "reserved and never stored", hole=True)  # fmt: skip

    async def _resend(self, account: bytes, token: int, rows: list[Any]) -> None:
        node = self.ledger.pool.node_for(account)
        moved = node is not None and any(
            row["state"] == "sent" and row["node"] not in (None, node) for row in rows
        )
        ours = [row for row in rows if row["state"] == "sent"
                or (row["state"] == "signed" and row["kind"] != "sign")]  # fmt: skip
        if not moved and not any(row["stale"] for row in ours):
            return
        for row in ours:  # in nonce order
            if not moved and not row["stale"]:
                continue
            tx_hash = "0x" + row["tx_hash"].hex()
            method, params = resend_call(row["raw"], row["private_args"])
            try:
                _, sent_to = await self.ledger.pool.submit(method, params, tx_hash,
                                                           affinity=account)  # fmt: skip
            except (SendOutcomeUnknown, NoNodeAvailable):
                return  # next time
            except NodeError as refusal:
                log.warning("resending %s: %s", tx_hash, refusal.message)
                if refusal_kind(refusal) == "definite":  # dropped, and now refused for sure
                    await self._set_state(
                        account,
                        token,
                        row["id"],
                        row["state"],
                        "released",
                        f"refused when resent: {refusal.message}",
                        hole=True,
                    )
                # "taken" (mined meanwhile, or another transaction has the nonce): rule 2
                # settles it from the receipt once the count passes it.
                continue
            self.ledger.metrics.resent.inc()
            async with self._fenced(account, token) as conn:
                await conn.execute(
                    """UPDATE ledger_transactions
                          SET state = 'sent', node = $2, sent_at = now(), updated_at = now(),
                              send_attempts = send_attempts + 1
                        WHERE id = $1 AND state IN ('signed', 'sent')""",
                    row["id"], sent_to,
                )  # fmt: skip

    async def _expire_signed(self, account: bytes, token: int, rows: list[Any]) -> None:
        for row in rows:
            if not (row["state"] == "signed" and row["kind"] == "sign" and row["sign_expired"]):
                continue
            tx_hash = "0x" + row["tx_hash"].hex()
            known = await self.ledger.pool.call("eth_getTransactionByHash", [tx_hash])
            if known:
                async with self._fenced(account, token) as conn:
                    await conn.execute(
                        "UPDATE ledger_transactions SET state = 'sent', sent_at = now(), "
                        "updated_at = now() WHERE id = $1 AND state = 'signed'",
                        row["id"],
                    )
                continue
            log.warning("%s (eth_signTransaction, nonce %d of %s) never appeared within "
                        "QSIGNER_SIGNED_TX_TIMEOUT: its nonce will be filled", tx_hash,
                        row["nonce"], checksum(account))  # fmt: skip
            await self._set_state(account, token, row["id"], "signed", "replaced",
                                  "signed and never sent within QSIGNER_SIGNED_TX_TIMEOUT",
                                  hole=True)  # fmt: skip

    async def _close_gaps(self, account: bytes, token: int, mined: int) -> None:
        chain_id = self.ledger.chain_id
        async with self._fenced(account, token) as conn:
            # Rule 6: nonces in [mined, next) held by nothing and not a hole become holes.
            await conn.execute(
                """INSERT INTO ledger_holes (chain_id, account, nonce)
                   SELECT $1, $2, n FROM ledger_accounts a,
                          generate_series($3::bigint, a.next_nonce - 1) AS n
                    WHERE a.chain_id = $1 AND a.account = $2 AND a.next_nonce - $3 <= 10000
                      AND NOT EXISTS (SELECT 1 FROM ledger_transactions t
                                       WHERE t.chain_id = $1 AND t.account = $2 AND t.nonce = n
                                         AND t.state IN ('reserved', 'signed', 'sent', 'mined'))
                   ON CONFLICT DO NOTHING""",
                chain_id, account, mined,
            )  # fmt: skip
            live_above = await conn.fetchval(
                """SELECT max(nonce) FROM ledger_transactions
                    WHERE chain_id = $1 AND account = $2 AND nonce >= $3
                      AND state IN ('reserved', 'signed', 'sent')""",
                chain_id, account, mined,
            )  # fmt: skip
            if live_above is None:  # rule 8: nothing live above the chain: rewind
                # Never below a transaction the ledger saw mined (a lagging node's count).
                rewound = await conn.fetchval(
                    """UPDATE ledger_accounts a
                          SET next_nonce = greatest($3, (
                                  SELECT max(t.nonce) + 1 FROM ledger_transactions t
                                   WHERE t.chain_id = $1 AND t.account = $2
                                     AND t.state = 'mined')),
                              updated_at = now()
                        WHERE a.chain_id = $1 AND a.account = $2 AND a.next_nonce > greatest($3, (
                                  SELECT max(t.nonce) + 1 FROM ledger_transactions t
                                   WHERE t.chain_id = $1 AND t.account = $2
                                     AND t.state = 'mined'))
                    RETURNING next_nonce""",
                    chain_id, account, mined,
                )  # fmt: skip
                await conn.execute(
                    "DELETE FROM ledger_holes WHERE chain_id = $1 AND account = $2",
                    chain_id, account)  # fmt: skip
                if rewound is not None:
                    log.warning(
                        "the ledger was ahead of the chain for %s with nothing in "
                        "flight: next nonce rewound to %d",
                        checksum(account),
                        mined,
                    )
                return
            holes = await conn.fetchval(
                "SELECT count(*) FROM ledger_holes WHERE chain_id = $1 AND account = $2 "
                "AND nonce < $3", chain_id, account, live_above)  # fmt: skip
        if holes:
            await self._fill(account, holes)  # rule 7

    async def _fill(self, account: bytes, holes: int) -> None:
        key = self.keyring.known(account)
        if key is None:
            log.warning("%s has %d nonce hole(s) below transactions in flight; a replica where "
                        "a caller opened its key fills them, or the account's next request "
                        "takes them", checksum(account), holes)  # fmt: skip
            return
        for _ in range(holes):
            if await self.ledger.fill(account, RECOVERY, key) is None:
                return

    async def _fill_known_holes(self) -> None:
        """Holes below a transaction in flight, of accounts whose key a caller opened in this
        replica, whichever replica holds their lease (filling takes a hole atomically, so any
        replica may)."""
        rows = await self.db.fetch(
            """SELECT h.account, count(*) AS holes FROM ledger_holes h
                WHERE h.chain_id = $1 AND EXISTS (
                      SELECT 1 FROM ledger_transactions t
                       WHERE t.chain_id = h.chain_id AND t.account = h.account
                         AND t.nonce > h.nonce AND t.state IN ('signed', 'sent'))
                GROUP BY h.account""",
            self.ledger.chain_id,
        )  # fmt: skip
        for row in rows:
            if self.keyring.known(row["account"]) is not None:
                await self._fill(row["account"], row["holes"])

    async def _set_state(self, account: bytes, token: int, row_id: int, seen: str, state: str,
                         reason: str, *, hole: bool = False) -> None:  # fmt: skip
        """Move a row on from the state this round `seen` it in, only if it is still there: a
        reservation stored and sent meanwhile, or bytes sent meanwhile, are left alone."""
        async with self._fenced(account, token) as conn:
            changed = await conn.fetchrow(
                """UPDATE ledger_transactions
                      SET state = $2, reason = $3, idem_key = NULL, idem_user = NULL,
                          updated_at = now()
                    WHERE id = $1 AND state = $4
                RETURNING chain_id, account, nonce""",
                row_id, state, reason, seen,
            )  # fmt: skip
            if changed is not None and hole:
                await conn.execute(
                    "INSERT INTO ledger_holes (chain_id, account, nonce) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING",
                    changed["chain_id"], changed["account"], changed["nonce"])  # fmt: skip
        if changed is not None:
            self.ledger.metrics.nonces.labels("released").inc()

    # -- tracking receipts -------------------------------------------------------------

    async def _track(self) -> None:
        name = f"tracker:{self.ledger.chain_id}"
        lease = await self.db.fetchrow(
            """INSERT INTO ledger_leases AS l (name, owner, until, token)
                    VALUES ($1, $2, now() + make_interval(secs => $3), 1)
               ON CONFLICT (name) DO UPDATE
                   SET owner = $2, until = excluded.until,
                       token = CASE WHEN l.owner = $2 THEN l.token ELSE l.token + 1 END
                 WHERE l.owner = $2 OR l.owner IS NULL OR l.until < now()
               RETURNING l.token, l.cursor""",
            name, self.replica, float(self.lease_seconds),
        )  # fmt: skip
        if lease is None:
            return
        pool = self.ledger.pool
        head = int(await pool.call("eth_blockNumber", affinity=_TRACKER), 16)
        cursor = lease["cursor"] if lease["cursor"] is not None else head - 1
        for number in range(cursor + 1, min(head, cursor + 20) + 1):
            mined = await self._receipts_of(number)
            if mined is None:
                return  # the node has not got that block after all: next time
            if mined:
                await self._mark_mined(mined)
            done = await self.db.fetchval(
                "UPDATE ledger_leases SET cursor = $3 WHERE name = $1 AND token = $2 "
                "RETURNING cursor", name, lease["token"], number)  # fmt: skip
            if done is None:
                return  # another replica took the tracking over

    async def _receipts_of(self, number: int) -> list[tuple[bytes, int, int, int]] | None:
        """(hash, block, status, gas used) of the transactions mined in block `number` (None
        while the node does not have the block): one call where the node has
        eth_getBlockReceipts, else one receipt per transaction of ours in it. Every read goes to
        one node (affinity)."""
        pool = self.ledger.pool
        if self._block_receipts:
            try:
                receipts = await pool.call("eth_getBlockReceipts", [hex(number)],
                                           affinity=_TRACKER)  # fmt: skip
            except NodeError as error:
                if error.code != -32601 and "not" not in error.message.lower():
                    raise
                self._block_receipts = False  # GoQuorum (geth 1.10 base) has none
            else:
                if receipts is None:
                    return None
                return [(bytes.fromhex(r["transactionHash"][2:]), number, _status(r), _gas_used(r))
                        for r in receipts]  # fmt: skip
        block = await pool.call("eth_getBlockByNumber", [hex(number), False], affinity=_TRACKER)
        if block is None:
            return None
        hashes = [bytes.fromhex(h[2:]) for h in block.get("transactions", [])]
        if not hashes:
            return []
        ours = await self.db.fetch(
            "SELECT tx_hash FROM ledger_transactions WHERE tx_hash = ANY($1::bytea[]) "
            "AND state IN ('signed', 'sent')", hashes)  # fmt: skip
        found = await asyncio.gather(*(
            pool.call("eth_getTransactionReceipt", ["0x" + row["tx_hash"].hex()],
                      affinity=_TRACKER)
            for row in ours))  # fmt: skip
        return [(row["tx_hash"], number, _status(receipt), _gas_used(receipt))
                for row, receipt in zip(ours, found, strict=True)
                if isinstance(receipt, dict)]  # fmt: skip

    async def _mark_mined(self, mined: list[tuple[bytes, int, int, int]]) -> None:
        try:
            rows = await self._mined_rows(mined)
        except asyncpg.DeadlockDetectedError:  # with a store's sent marks, in another order
            rows = await self._mined_rows(mined)
        top: dict[bytes, int] = {}
        for row in rows:
            self.ledger.metrics.request_to_mined.observe(float(row["age"]))
            top[row["account"]] = max(top.get(row["account"], 0), row["nonce"] + 1)
        for account, count in top.items():
            self.ledger.saw_mined(account, count)

    async def _mined_rows(self, mined: list[tuple[bytes, int, int, int]]) -> list[Any]:
        # A gas limit counted a transaction's gas limit when it let it through; once mined, the
        # gas it used is what counts (the policy's counters, in the same statement).
        rows: list[Any] = await self.db.fetch(
            """WITH m AS (
                 UPDATE ledger_transactions t
                    SET state = 'mined', block_number = u.block, receipt_status = u.status,
                        mined_at = now(), updated_at = now()
                   FROM unnest($1::bytea[], $2::bigint[], $3::smallint[], $4::bigint[])
                        AS u(hash, block, status, gas)
                  WHERE t.tx_hash = u.hash AND t.state IN ('signed', 'sent')
              RETURNING t.account, t.nonce, t.tx_hash, u.gas,
                        extract(epoch FROM now() - t.created_at) AS age),
               g AS (
                 UPDATE policy_usage p SET amount = m.gas
                   FROM m WHERE p.tx_hash = m.tx_hash AND p.kind = 'gas' AND m.gas >= 0)
               SELECT account, nonce, age FROM m""",
            [m[0] for m in mined], [m[1] for m in mined], [m[2] for m in mined],
            [m[3] for m in mined],
        )  # fmt: skip
        return rows


def _still_cancelled() -> None:
    """A cancellation that arrived inside a database call can come out as another error (asyncpg
    interrupted mid-rollback): a loop that logs errors and goes on must not swallow it, or the
    task it runs in never ends and shutdown waits for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _gas_used(receipt: Any) -> int:
    """The receipt's gasUsed, or -1 where a node left it out (the count then stays as it was)."""
    value = receipt.get("gasUsed") if isinstance(receipt, dict) else None
    return int(value, 16) if isinstance(value, str) else -1


def _status(receipt: Any) -> int:
    status = receipt.get("status") if isinstance(receipt, dict) else None
    return 1 if status in (None, "0x1") else 0
