-- A checkpoint's rows of its guidance sweep (the charts against the guidance scale) are an
-- index probe rather than a pass over every evaluation.
CREATE INDEX leaderboard_rows_checkpoint ON leaderboard_rows (checkpoint_id);
