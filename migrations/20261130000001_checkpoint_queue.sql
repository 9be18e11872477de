-- Checkpoints waiting for (or done with) an evaluation under a benchmark protocol. Evaluators on
-- any machine claim rows with FOR UPDATE SKIP LOCKED and a lease, as shard workers do, so every
-- checkpoint is evaluated once per protocol however many evaluators run.
CREATE TABLE checkpoint_queue (
    checkpoint_id    BIGINT      NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
    -- sha256 of the protocol JSON: benchmark, reference, feature network, tokenizer, sampling.
    protocol_sha256  TEXT        NOT NULL CHECK (protocol_sha256 ~ '^[0-9a-f]{64}$'),
    protocol         JSONB       NOT NULL,
    status           TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    worker           TEXT,
    attempts         INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INTEGER     NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    lease_expires_at TIMESTAMPTZ,
    evaluation_ids   BIGINT[]    NOT NULL DEFAULT '{}',
    error            TEXT,
    queued_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    PRIMARY KEY (checkpoint_id, protocol_sha256)
);
CREATE INDEX checkpoint_queue_claimable ON checkpoint_queue (protocol_sha256, status);
