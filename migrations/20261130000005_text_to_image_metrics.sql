-- The text-to-image protocol's metrics join the leaderboard: CLIP-FID (clean-fid's CLIP
-- ViT-B/32 features) and the CLIP score, each with its confidence interval. New columns go
-- last, as leaderboard_rows (filled with SELECT * FROM leaderboard) lists them in that order.
CREATE OR REPLACE VIEW leaderboard AS
SELECT
    e.id                AS evaluation_id,
    e.benchmark,
    m.id                AS model_id,
    m.name              AS model,
    m.kind,
    m.size,
    m.task,
    m.params,
    c.id                AS checkpoint_id,
    c.step,
    c.epoch,
    c.tokens_seen,
    e.image_size,
    e.cfg_scale,
    e.top_k,
    e.top_p,
    e.temperature,
    e.num_samples,
    e.seed,
    e.git_revision,
    e.finished_at,
    max(x.value) FILTER (WHERE x.name = 'fid')             AS fid,
    max(x.value) FILTER (WHERE x.name = 'sfid')            AS sfid,
    max(x.value) FILTER (WHERE x.name = 'inception_score') AS inception_score,
    max(x.value) FILTER (WHERE x.name = 'precision')       AS precision,
    max(x.value) FILTER (WHERE x.name = 'recall')          AS recall,
    max(x.value) FILTER (WHERE x.name = 'rfid')            AS rfid,
    max(x.value) FILTER (WHERE x.name = 'psnr')            AS psnr,
    max(x.value) FILTER (WHERE x.name = 'ssim')            AS ssim,
    max(x.value) FILTER (WHERE x.name = 'codebook_usage')  AS codebook_usage,
    max(x.value) FILTER (WHERE x.name = 'kid')             AS kid,
    max(x.value) FILTER (WHERE x.name = 'kid_std')         AS kid_std,
    max(x.ci_low)  FILTER (WHERE x.name = 'fid')           AS fid_low,
    max(x.ci_high) FILTER (WHERE x.name = 'fid')           AS fid_high,
    max(x.ci_low)  FILTER (WHERE x.name = 'kid')           AS kid_low,
    max(x.ci_high) FILTER (WHERE x.name = 'kid')           AS kid_high,
    max(x.ci_low)  FILTER (WHERE x.name = 'rfid')          AS rfid_low,
    max(x.ci_high) FILTER (WHERE x.name = 'rfid')          AS rfid_high,
    max(x.ci_low)  FILTER (WHERE x.name = 'psnr')          AS psnr_low,
    max(x.ci_high) FILTER (WHERE x.name = 'psnr')          AS psnr_high,
    max(x.ci_low)  FILTER (WHERE x.name = 'ssim')          AS ssim_low,
    max(x.ci_high) FILTER (WHERE x.name = 'ssim')          AS ssim_high,
    e.protocol_id,
    p.name              AS protocol,
    max(x.value) FILTER (WHERE x.name = 'clip_fid')        AS clip_fid,
    max(x.value) FILTER (WHERE x.name = 'clip_score')      AS clip_score,
    max(x.ci_low)  FILTER (WHERE x.name = 'clip_fid')      AS clip_fid_low,
    max(x.ci_high) FILTER (WHERE x.name = 'clip_fid')      AS clip_fid_high,
    max(x.ci_low)  FILTER (WHERE x.name = 'clip_score')    AS clip_score_low,
    max(x.ci_high) FILTER (WHERE x.name = 'clip_score')    AS clip_score_high
FROM evaluations e
JOIN checkpoints c ON c.id = e.checkpoint_id
JOIN models m      ON m.id = c.model_id
LEFT JOIN protocols p ON p.id = e.protocol_id
LEFT JOIN metrics x ON x.evaluation_id = e.id
WHERE e.status = 'succeeded'
GROUP BY e.id, m.id, c.id, p.id;

ALTER TABLE leaderboard_rows
    ADD COLUMN clip_fid        DOUBLE PRECISION,
    ADD COLUMN clip_score      DOUBLE PRECISION,
    ADD COLUMN clip_fid_low    DOUBLE PRECISION,
    ADD COLUMN clip_fid_high   DOUBLE PRECISION,
    ADD COLUMN clip_score_low  DOUBLE PRECISION,
    ADD COLUMN clip_score_high DOUBLE PRECISION;

-- Rows recorded before this migration may hold the new metrics: copy them over.
UPDATE leaderboard_rows r
SET clip_fid = l.clip_fid, clip_score = l.clip_score,
    clip_fid_low = l.clip_fid_low, clip_fid_high = l.clip_fid_high,
    clip_score_low = l.clip_score_low, clip_score_high = l.clip_score_high
FROM leaderboard l
WHERE l.evaluation_id = r.evaluation_id AND (l.clip_fid IS NOT NULL OR l.clip_score IS NOT NULL);

CREATE INDEX leaderboard_rows_clip_fid_asc
    ON leaderboard_rows (clip_fid ASC NULLS LAST, evaluation_id ASC);
CREATE INDEX leaderboard_rows_clip_fid_desc
    ON leaderboard_rows (clip_fid DESC NULLS LAST, evaluation_id DESC);
CREATE INDEX leaderboard_rows_clip_score_asc
    ON leaderboard_rows (clip_score ASC NULLS LAST, evaluation_id ASC);
CREATE INDEX leaderboard_rows_clip_score_desc
    ON leaderboard_rows (clip_score DESC NULLS LAST, evaluation_id DESC);
