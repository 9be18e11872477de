-- One pipeline run per scheduled tick. The scheduler records a tick's run and retries through
-- database outages; when the INSERT committed but its answer was lost, the retry now finds the
-- row it made (ON CONFLICT on this index) instead of leaving an orphan run marked running.
-- Earlier orphans are closed first, keeping the tick's first run.
UPDATE pipeline_runs p
SET status = 'cancelled', finished_at = coalesce(p.finished_at, now()),
    error = coalesce(p.error, 'a second record of the same scheduled tick'),
    scheduled_for = NULL
WHERE p.trigger = 'schedule' AND p.scheduled_for IS NOT NULL
  AND EXISTS (SELECT 1 FROM pipeline_runs q
              WHERE q.trigger = 'schedule' AND q.pipeline = p.pipeline
                AND q.scheduled_for = p.scheduled_for AND q.id < p.id);

CREATE UNIQUE INDEX pipeline_runs_one_per_tick ON pipeline_runs (pipeline, scheduled_for)
    WHERE trigger = 'schedule' AND scheduled_for IS NOT NULL;
