-- Which scheduler decided a tick (host:pid:start). A scheduler whose decision was committed but
-- whose connection broke before the answer came back (a database restart) asks again, finds
-- its own decision, and goes on with the tick instead of leaving it 'started' for ever.
ALTER TABLE schedule_ticks ADD COLUMN decided_by TEXT;
