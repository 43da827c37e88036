-- The nonce ledger: every transaction the proxy signs for a managed account, by nonce. The rules
-- that keep nonces unique live here, so that every replica obeys them (proxy/ledger/nonces.py
-- draws the state machine).

-- One row per account and chain: the next nonce never handed out, and the recovery lease.
CREATE TABLE ledger_accounts (
    chain_id     bigint NOT NULL,
    account      bytea NOT NULL CHECK (length(account) = 20),
    next_nonce   bigint NOT NULL CHECK (next_nonce >= 0),
    -- The chain's mined count as last seen (p_floor: a hint, the node is the truth); p_start, the
    -- node's pending count, moves next_nonce forward past transactions sent outside the proxy.
    mined_count  bigint NOT NULL DEFAULT 0,
    -- Recovery runs on one replica at a time per account: the holder, until when, and a
    -- fencing token that grows with every new holder (a late writer holding an old token
    -- changes nothing).
    lease_owner  text,
    lease_until  timestamptz,
    lease_token  bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, account)
);

CREATE TABLE ledger_transactions (
    id              bigserial PRIMARY KEY,
    chain_id        bigint NOT NULL,
    account         bytea NOT NULL CHECK (length(account) = 20),
    nonce           bigint NOT NULL CHECK (nonce >= 0),
    state           text NOT NULL,
    -- send: eth_sendTransaction; sign: eth_signTransaction (bytes handed to the caller);
    -- fill: a 0-value self-transfer the proxy sent to close a hole.
    kind            text NOT NULL CHECK (kind IN ('send', 'sign', 'fill')),
    tx_hash         bytea CHECK (tx_hash IS NULL OR length(tx_hash) = 32),
    raw             bytea,
    org_id          bigint,
    user_id         text,
    request_id      text,
    node            text,
    idem_user       text,
    idem_key        text,
    idem_digest     bytea,
    receipt_status  smallint CHECK (receipt_status IN (0, 1)),
    block_number    bigint,
    reason          text,
    send_attempts   integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    signed_at       timestamptz,
    sent_at         timestamptz,
    mined_at        timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_state CHECK (state IN
        ('reserved', 'signed', 'sent', 'mined', 'released', 'replaced')),
    -- Bytes exist from `signed` on; a reservation has none (a released nonce may have them).
    CONSTRAINT ledger_bytes CHECK (state IN ('reserved', 'released')
                                   OR (raw IS NOT NULL AND tx_hash IS NOT NULL)),
    CONSTRAINT ledger_reserved_bare CHECK (state <> 'reserved' OR (raw IS NULL AND tx_hash IS NULL)),
    CONSTRAINT ledger_mined CHECK (state <> 'mined' OR block_number IS NOT NULL),
    CONSTRAINT ledger_idempotency CHECK ((idem_key IS NULL) = (idem_user IS NULL))
);

-- At most one live transaction per nonce: a released or replaced row gives its nonce up.
CREATE UNIQUE INDEX ledger_nonce_once ON ledger_transactions (chain_id, account, nonce)
    WHERE state NOT IN ('released', 'replaced');
CREATE UNIQUE INDEX ledger_hash_once ON ledger_transactions (tx_hash)
    WHERE tx_hash IS NOT NULL AND state <> 'released';
-- One transaction per caller and Idempotency-Key (cleared when it expires or its request failed).
CREATE UNIQUE INDEX ledger_idempotency_once ON ledger_transactions (idem_user, idem_key)
    WHERE idem_key IS NOT NULL;
CREATE INDEX ledger_open ON ledger_transactions (chain_id, account, nonce)
    WHERE state IN ('reserved', 'signed', 'sent');
CREATE INDEX ledger_by_time ON ledger_transactions (created_at);

-- Nonces given back below next_nonce that no live transaction holds: the next allocation takes
-- the lowest first, so that the account is never stuck behind a hole.
CREATE TABLE ledger_holes (
    chain_id  bigint NOT NULL,
    account   bytea NOT NULL,
    nonce     bigint NOT NULL,
    PRIMARY KEY (chain_id, account, nonce)
);

-- The account's row, created at its first use and locked until the calling statement's
-- transaction ends (every allocation takes this lock first: they run one at a time per account).
-- The chain's counts move it forward, never back.
CREATE FUNCTION ledger_lock_account(p_chain bigint, p_account bytea, p_floor bigint,
                                    p_start bigint)
RETURNS TABLE (next_nonce bigint, mined_count bigint)
LANGUAGE sql AS $$
    INSERT INTO ledger_accounts AS a (chain_id, account, next_nonce, mined_count)
        VALUES (p_chain, p_account, greatest(p_floor, p_start), p_floor)
        ON CONFLICT (chain_id, account) DO UPDATE
            SET next_nonce = greatest(a.next_nonce, excluded.next_nonce),
                mined_count = greatest(a.mined_count, excluded.mined_count),
                updated_at = now()
        RETURNING a.next_nonce, a.mined_count;
$$;

-- Allocation in one statement: the account row is locked for the length of this call only (never
-- across a node or HSM call). Takes holes at or above the chain's mined count first, then fresh
-- nonces, at most `p_room` in flight beyond the mined count; inserts one `reserved` row per
-- slot. A slot whose Idempotency-Key is already held answers that row instead (existing = true).
CREATE FUNCTION ledger_reserve(
    p_chain bigint, p_account bytea, p_floor bigint, p_start bigint, p_room bigint,
    p_users text[], p_orgs bigint[], p_requests text[], p_kinds text[],
    p_idem_keys text[], p_idem_digests bytea[], p_idem_ttl double precision
) RETURNS TABLE (slot integer, row_id bigint, nonce bigint, state text, tx_hash bytea,
                 idem_digest bytea, existing boolean, reused boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_next bigint;
    v_floor bigint;
    v_slot integer;
    v_nonce bigint;
    v_found record;
    v_count integer := coalesce(array_length(p_users, 1), 0);
BEGIN
    SELECT l.next_nonce, l.mined_count INTO v_next, v_floor
        FROM ledger_lock_account(p_chain, p_account, p_floor, p_start) AS l;
    -- Holes below what the chain has mined were used by someone else: forget them.
    DELETE FROM ledger_holes h
        WHERE h.chain_id = p_chain AND h.account = p_account AND h.nonce < v_floor;
    FOR v_slot IN 1 .. v_count LOOP
        IF p_idem_keys[v_slot] IS NOT NULL THEN
            UPDATE ledger_transactions t SET idem_key = NULL, idem_user = NULL
                WHERE t.idem_user = p_users[v_slot] AND t.idem_key = p_idem_keys[v_slot]
                  AND t.created_at < now() - make_interval(secs => p_idem_ttl);
            SELECT t.id, t.nonce, t.state, t.tx_hash, t.idem_digest INTO v_found
                FROM ledger_transactions t
                WHERE t.idem_user = p_users[v_slot] AND t.idem_key = p_idem_keys[v_slot];
            IF FOUND THEN
                slot := v_slot; row_id := v_found.id; nonce := v_found.nonce;
                state := v_found.state; tx_hash := v_found.tx_hash;
                idem_digest := v_found.idem_digest; existing := true; reused := false;
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;
        DELETE FROM ledger_holes h
            WHERE (h.chain_id, h.account, h.nonce) = (
                SELECT g.chain_id, g.account, g.nonce FROM ledger_holes g
                WHERE g.chain_id = p_chain AND g.account = p_account
                ORDER BY g.nonce LIMIT 1)
            RETURNING h.nonce INTO v_nonce;
        reused := v_nonce IS NOT NULL;
        IF v_nonce IS NULL THEN
            IF v_next - v_floor >= p_room THEN
                CONTINUE;  -- no room: this slot is not returned, its caller waits
            END IF;
            v_nonce := v_next;
            v_next := v_next + 1;
        END IF;
        INSERT INTO ledger_transactions AS t (chain_id, account, nonce, state, kind, org_id,
                user_id, request_id, idem_user, idem_key, idem_digest)
            VALUES (p_chain, p_account, v_nonce, 'reserved', p_kinds[v_slot], p_orgs[v_slot],
                    p_users[v_slot], p_requests[v_slot],
                    CASE WHEN p_idem_keys[v_slot] IS NULL THEN NULL ELSE p_users[v_slot] END,
                    p_idem_keys[v_slot], p_idem_digests[v_slot])
            RETURNING t.id INTO row_id;
        slot := v_slot; nonce := v_nonce; state := 'reserved'; tx_hash := NULL;
        idem_digest := p_idem_digests[v_slot]; existing := false;
        RETURN NEXT;
        v_nonce := NULL;
    END LOOP;
    UPDATE ledger_accounts a SET next_nonce = v_next
        WHERE a.chain_id = p_chain AND a.account = p_account AND a.next_nonce < v_next;
END;
$$;

-- A nonce the caller chose (QSIGNER_CALLER_NONCES=respect): taken if it is the next nonce, a
-- hole, or ahead of the ledger up to p_ahead_ok (the node's pending count: the chain already
-- got there outside the proxy). Answers 'taken' with the new row, 'used' (a live transaction
-- holds it) or 'ahead' (it would leave a gap), with the ledger's next nonce.
CREATE FUNCTION ledger_claim(
    p_chain bigint, p_account bytea, p_floor bigint, p_start bigint, p_nonce bigint,
    p_ahead_ok bigint,
    p_user text, p_org bigint, p_request text, p_kind text, p_idem_key text, p_idem_digest bytea
) RETURNS TABLE (outcome text, row_id bigint, next_nonce bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_next bigint;
    v_floor bigint;
BEGIN
    SELECT l.next_nonce, l.mined_count INTO v_next, v_floor
        FROM ledger_lock_account(p_chain, p_account, p_floor, p_start) AS l;
    IF EXISTS (SELECT 1 FROM ledger_transactions t
               WHERE t.chain_id = p_chain AND t.account = p_account AND t.nonce = p_nonce
                 AND t.state NOT IN ('released', 'replaced')) THEN
        outcome := 'used'; row_id := NULL; next_nonce := v_next;
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_nonce > v_next AND p_nonce > p_ahead_ok THEN
        outcome := 'ahead'; row_id := NULL; next_nonce := v_next;
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_nonce >= v_next THEN
        -- Nonces skipped over were used outside the proxy (p_ahead_ok vouches for them).
        v_next := p_nonce + 1;
        UPDATE ledger_accounts a SET next_nonce = v_next
            WHERE a.chain_id = p_chain AND a.account = p_account;
    ELSE
        DELETE FROM ledger_holes h
            WHERE h.chain_id = p_chain AND h.account = p_account AND h.nonce = p_nonce;
    END IF;
    INSERT INTO ledger_transactions AS t (chain_id, account, nonce, state, kind, org_id,
            user_id, request_id, idem_user, idem_key, idem_digest)
        VALUES (p_chain, p_account, p_nonce, 'reserved', p_kind, p_org, p_user, p_request,
                CASE WHEN p_idem_key IS NULL THEN NULL ELSE p_user END, p_idem_key,
                p_idem_digest)
        RETURNING t.id INTO row_id;
    outcome := 'taken'; next_nonce := v_next;
    RETURN NEXT;
END;
$$;

-- Leases of background work that one replica at a time does for the whole chain (following
-- blocks for receipts); `cursor` is where the work stands, so that a new holder goes on.
CREATE TABLE ledger_leases (
    name        text PRIMARY KEY,
    owner       text,
    until       timestamptz,
    token       bigint NOT NULL DEFAULT 0,
    cursor      bigint
);
