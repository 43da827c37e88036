-- Transaction lifecycle events (proxy/events): every state a ledger row reaches that a user cares
-- about becomes one event row, written by a trigger in the same transaction as the change, so
-- that no code path of the ledger (requests, recovery, fills, the receipt poller, a caller's own
-- eth_sendRawTransaction) can change a transaction without its event, and an event never
-- exists for a change that rolled back.
--
--   ledger state reached      event
--   signed                    queued   (bytes stored; about to be sent, or handed to the caller)
--   sent                      sent     (also again after a reorganisation took a block back)
--   mined                     mined    (with the receipt's status, 1 or 0)
--   released, with a hash     failed   (a node refused it for sure: it will never be mined)
--   replaced                  filled   (its nonce went to a 0-value self-transfer instead)
--
-- A reservation released before it was signed has no hash and no event: its caller got the
-- error in the answer. Each committed event is announced (NOTIFY qsigner_events, payload the
-- event id) for the WebSocket streams of every replica.
CREATE TABLE ledger_events (
    id               bigserial PRIMARY KEY,
    organisation_id  bigint,
    transaction_id   bigint NOT NULL,
    event            text NOT NULL CHECK (event IN ('queued', 'sent', 'mined', 'failed', 'filled')),
    chain_id         bigint NOT NULL,
    account          bytea NOT NULL,
    nonce            bigint NOT NULL,
    kind             text NOT NULL,
    tx_hash          bytea,
    user_id          text,
    request_id       text,
    receipt_status   smallint,
    block_number     bigint,
    reason           text,
    private          boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Webhooks of an organisation: the lifecycle events POSTed to `url`, signed with HMAC-SHA256
-- under `secret` (the server must hold it to sign; the CLI shows it once). Deliveries to one
-- webhook go out one at a time in event order, by the replica holding its lease (owner, until,
-- and a fencing token that grows with each new holder: a late writer holding an old token
-- changes nothing). After a failed delivery the webhook waits until `paused_until`.
CREATE TABLE webhooks (
    id               text PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations(id),
    url              text NOT NULL,
    events           text[] NOT NULL CHECK (events <@ ARRAY['queued', 'sent', 'mined', 'failed',
                                                            'filled']::text[]
                                            AND cardinality(events) > 0),
    secret           text NOT NULL,
    failures         integer NOT NULL DEFAULT 0,  -- consecutive failed deliveries
    paused_until     timestamptz,
    lease_owner      text,
    lease_until      timestamptz,
    lease_token      bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    removed_at       timestamptz
);
CREATE INDEX webhooks_by_organisation ON webhooks (organisation_id) WHERE removed_at IS NULL;

-- One row per event and webhook that wants it, made by the same trigger (so a webhook added
-- now gets the events from now on). `pending` until the receiver answered 2xx (`delivered`),
-- or until it was given up after QSIGNER_WEBHOOK_GIVE_UP (`expired`), or its webhook removed.
CREATE TABLE webhook_deliveries (
    id            bigserial PRIMARY KEY,
    webhook_id    text NOT NULL REFERENCES webhooks(id),
    event_id      bigint NOT NULL REFERENCES ledger_events(id) ON DELETE CASCADE,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'delivered', 'expired', 'removed')),
    attempts      integer NOT NULL DEFAULT 0,
    last_status   integer,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, id)
    WHERE state = 'pending';
-- Events are deleted with their deliveries, and only once none is pending.
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);

CREATE FUNCTION ledger_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_event text;
    v_org bigint;
    v_id bigint;
BEGIN
    v_event := CASE NEW.state
        WHEN 'signed' THEN 'queued'
        WHEN 'sent' THEN 'sent'
        WHEN 'mined' THEN 'mined'
        WHEN 'released' THEN CASE WHEN NEW.tx_hash IS NULL THEN NULL ELSE 'failed' END
        WHEN 'replaced' THEN 'filled'
    END;
    IF v_event IS NULL THEN
        RETURN NULL;
    END IF;
    -- The account's organisation (a fill has no requester; an account never changes owner).
    SELECT a.organisation_id INTO v_org FROM accounts a WHERE a.address = NEW.account;
    v_org := coalesce(v_org, NEW.org_id);
    INSERT INTO ledger_events (organisation_id, transaction_id, event, chain_id, account, nonce,
                               kind, tx_hash, user_id, request_id, receipt_status, block_number,
                               reason, private)
        VALUES (v_org, NEW.id, v_event, NEW.chain_id, NEW.account, NEW.nonce, NEW.kind,
                NEW.tx_hash, NEW.user_id, NEW.request_id, NEW.receipt_status, NEW.block_number,
                NEW.reason, NEW.private_args IS NOT NULL)
        RETURNING id INTO v_id;
    INSERT INTO webhook_deliveries (webhook_id, event_id)
        SELECT w.id, v_id FROM webhooks w
         WHERE w.organisation_id = v_org AND w.removed_at IS NULL AND v_event = ANY (w.events);
    IF FOUND THEN
        PERFORM pg_notify('qsigner_webhooks', '');
    END IF;
    PERFORM pg_notify('qsigner_events', v_id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_event_on_change
    AFTER UPDATE OF state ON ledger_transactions
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION ledger_event();
CREATE TRIGGER ledger_event_on_insert
    AFTER INSERT ON ledger_transactions
    FOR EACH ROW WHEN (NEW.state <> 'reserved')
    EXECUTE FUNCTION ledger_event();
