-- The checkpoint queue takes the shard table's lease bookkeeping (store/src/lease.rs): a row
-- id that leases name, failures (which use up max_attempts) apart from expired leases (a
-- killed evaluator, which count a third as much), and attempts as a plain claim counter.
ALTER TABLE checkpoint_queue
    ADD COLUMN id       BIGINT  GENERATED ALWAYS AS IDENTITY UNIQUE,
    ADD COLUMN failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    ADD COLUMN expiries INTEGER NOT NULL DEFAULT 0 CHECK (expiries >= 0);

-- Rows queued before: their attempts were all counted as failures.
UPDATE checkpoint_queue SET failures = CASE
    WHEN status = 'running' THEN attempts - 1
    WHEN status = 'succeeded' THEN 0
    ELSE attempts END;
