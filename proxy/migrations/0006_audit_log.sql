-- The tamper-evident audit log (proxy/audit/): one hash chain per organisation ("-" for events
-- of none). Each row's hash is SHA-256(prev_hash || content), content being the canonical JSON
-- text of the event; the first row of a chain follows 32 zero bytes. Appends to a chain take
-- turns under pg_advisory_xact_lock, so that every replica extends one gap-free order.
-- It takes over from security_events, which is no longer written.

CREATE TABLE audit_log (
    chain      text NOT NULL CHECK (length(chain) BETWEEN 1 AND 200),
    seq        bigint NOT NULL CHECK (seq >= 1),
    at         timestamptz NOT NULL,          -- the content's "time", for `export --since`
    content    text NOT NULL,
    prev_hash  bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash       bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_log_at ON audit_log (at);

-- The head of each chain: where the next append goes, and the chains to checkpoint. Not
-- trusted by verification (which reads audit_log itself); a row removed from a chain's tail
-- leaves the head ahead, so the next append leaves a gap that `audit verify` names.
CREATE TABLE audit_heads (
    chain  text PRIMARY KEY,
    seq    bigint NOT NULL,
    hash   bytea NOT NULL
);

-- The HSM keys that sign checkpoints (`quorum-signer audit key create`); the newest signs.
CREATE TABLE audit_keys (
    address       bytea PRIMARY KEY CHECK (length(address) = 20),
    token_label   text NOT NULL,
    token_serial  text NOT NULL,
    key_id        bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- A chain's head (chain, seq, hash) signed by an audit key: content is the canonical JSON
-- text signed (EIP-191 personal message), signature its 65 bytes r || s || v.
CREATE TABLE audit_checkpoints (
    chain      text NOT NULL,
    seq        bigint NOT NULL,
    hash       bytea NOT NULL CHECK (length(hash) = 32),
    at         timestamptz NOT NULL,
    address    bytea NOT NULL CHECK (length(address) = 20),
    content    text NOT NULL,
    signature  bytea NOT NULL CHECK (length(signature) = 65),
    PRIMARY KEY (chain, seq, address)
);

-- Append-only: UPDATE, DELETE and TRUNCATE are refused. A superuser can get around this
-- (session_replication_role = replica, or dropping the trigger): what the hash chain and the
-- signed checkpoints, kept elsewhere in an export, then reveal.
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_keys_append_only BEFORE UPDATE OR DELETE ON audit_keys
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

-- Append `contents` (with their times) to `p_chain`, in order, in the caller's transaction:
-- one statement for a whole batch. The chain's advisory lock is held until that transaction
-- ends, so the head read here is the last committed one (READ COMMITTED takes a new snapshot
-- per statement; under REPEATABLE READ the head could be stale, hence refused).
CREATE FUNCTION audit_append(p_chain text, p_at timestamptz[], p_content text[])
RETURNS TABLE (seq bigint, hash bytea) LANGUAGE plpgsql AS $$
DECLARE
    head_seq   bigint;
    head_hash  bytea;
    seqs       bigint[] := '{}';
    prevs      bytea[] := '{}';
    hashes     bytea[] := '{}';
    i          integer;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'audit_append needs a READ COMMITTED transaction';
    END IF;
    IF cardinality(p_at) IS DISTINCT FROM cardinality(p_content) THEN
        RAISE EXCEPTION 'audit_append: as many times as contents';
    END IF;
    -- 0x51534741 ('QSGA'): our class of advisory locks; a hash collision between two chains
    -- only makes them take turns.
    PERFORM pg_advisory_xact_lock(1364412225, hashtext(p_chain));
    SELECT h.seq, h.hash INTO head_seq, head_hash FROM audit_heads h WHERE h.chain = p_chain;
    IF NOT FOUND THEN
        head_seq := 0;
        head_hash := '\x0000000000000000000000000000000000000000000000000000000000000000';
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_content), 0) LOOP
        seqs := seqs || (head_seq + i);
        prevs := prevs || head_hash;
        head_hash := sha256(head_hash || convert_to(p_content[i], 'UTF8'));
        hashes := hashes || head_hash;
    END LOOP;
    IF cardinality(seqs) = 0 THEN
        RETURN;
    END IF;
    head_seq := head_seq + cardinality(seqs);
    INSERT INTO audit_log (chain, seq, at, content, prev_hash, hash)
        SELECT p_chain, u.seq, u.at, u.content, u.prev_hash, u.hash
          FROM unnest(seqs, p_at, p_content, prevs, hashes) AS u(seq, at, content, prev_hash, hash);
    INSERT INTO audit_heads AS h (chain, seq, hash) VALUES (p_chain, head_seq, head_hash)
        ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
    RETURN QUERY SELECT s, x FROM unnest(seqs, hashes) AS u(s, x);
END $$;
