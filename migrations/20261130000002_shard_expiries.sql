-- A shard's failed attempts and its expired leases are counted apart. `attempts` counts claims
-- (with the worker it is a lease's identity); `failures` counts attempts that ended in an error
-- and is what `max_attempts` bounds; `expiries` counts leases that ran out, when a worker was
-- killed, preempted or cut off from the database. A killed worker says nothing about the shard,
-- so it does not use up the shard's attempts; a shard whose lease keeps running out (one that
-- kills every worker that takes it) is still given up, after 3 x max_attempts expiries.
ALTER TABLE shards
    ADD COLUMN failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    ADD COLUMN expiries INTEGER NOT NULL DEFAULT 0 CHECK (expiries >= 0);
UPDATE shards SET failures = attempts WHERE status = 'failed';
