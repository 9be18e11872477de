-- A metric may carry its confidence interval: half-samples of the generated samples for FID and
-- KID, of the images for rFID, PSNR and SSIM (95%; the evaluation's sampling_config says how it
-- was drawn, docs/metrics.md).
ALTER TABLE metrics
    ADD COLUMN ci_low  DOUBLE PRECISION,
    ADD COLUMN ci_high DOUBLE PRECISION,
    ADD CONSTRAINT metrics_interval CHECK ((ci_low IS NULL) = (ci_high IS NULL) AND ci_low <= ci_high);

-- Protocols: what makes two evaluations comparable. A number on the leaderboard means something
-- only with the feature extractor that made its features (by sha256), how images reached it
-- (resize, crop), the reference set it was compared with, the sample count and the metric code
-- and settings (KID's subsets, the intervals). Evaluations under different protocols are never
-- ranked against each other.

-- Reference sets are recorded whenever one is used or made; a set is its content (sha256 of
-- the npz, or of a folder's files in read order), wherever it lies.
ALTER TABLE reference_sets
    ALTER COLUMN num_images DROP NOT NULL,
    ADD COLUMN made JSONB NOT NULL DEFAULT '{}',
    ADD CONSTRAINT reference_sets_sha256_key UNIQUE (sha256);

CREATE TABLE protocols (
    id                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- sha256 of `definition`, the canonical JSON of everything below.
    sha256                   TEXT        NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- A short label for tables: the extractor and reference by sha256 prefix, the sample count.
    name                     TEXT        NOT NULL,
    kind                     TEXT        NOT NULL CHECK (kind IN ('generator', 'tokenizer')),
    feature_extractor_sha256 TEXT,
    reference_set_id         BIGINT      REFERENCES reference_sets (id),
    num_samples              INTEGER     CHECK (num_samples > 0),
    definition               JSONB       NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE evaluations ADD COLUMN protocol_id BIGINT REFERENCES protocols (id);
CREATE INDEX evaluations_by_protocol ON evaluations (protocol_id);

-- KID, the intervals and the protocol join the leaderboard's columns. New columns go last: the
-- view keeps its existing ones, and leaderboard_rows (filled with SELECT * FROM leaderboard)
-- must list them in the same order.
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
    p.name              AS protocol
FROM evaluations e
JOIN checkpoints c ON c.id = e.checkpoint_id
JOIN models m      ON m.id = c.model_id
LEFT JOIN protocols p ON p.id = e.protocol_id
LEFT JOIN metrics x ON x.evaluation_id = e.id
WHERE e.status = 'succeeded'
GROUP BY e.id, m.id, c.id, p.id;

ALTER TABLE leaderboard_rows
    ADD COLUMN kid       DOUBLE PRECISION,
    ADD COLUMN kid_std   DOUBLE PRECISION,
    ADD COLUMN fid_low   DOUBLE PRECISION,
    ADD COLUMN fid_high  DOUBLE PRECISION,
    ADD COLUMN kid_low   DOUBLE PRECISION,
    ADD COLUMN kid_high  DOUBLE PRECISION,
    ADD COLUMN rfid_low  DOUBLE PRECISION,
    ADD COLUMN rfid_high DOUBLE PRECISION,
    ADD COLUMN psnr_low  DOUBLE PRECISION,
    ADD COLUMN psnr_high DOUBLE PRECISION,
    ADD COLUMN ssim_low  DOUBLE PRECISION,
    ADD COLUMN ssim_high DOUBLE PRECISION,
    ADD COLUMN protocol_id BIGINT,
    ADD COLUMN protocol    TEXT;
CREATE INDEX leaderboard_rows_kid_asc ON leaderboard_rows (kid ASC NULLS LAST, evaluation_id ASC);
CREATE INDEX leaderboard_rows_kid_desc ON leaderboard_rows (kid DESC NULLS LAST, evaluation_id DESC);

-- Each (model, benchmark, protocol)'s best row and each (benchmark, protocol)'s leader is one
-- index probe; NULL (no protocol) is a group too, hence COALESCE.
DROP INDEX leaderboard_rows_best_fid;
DROP INDEX leaderboard_rows_best_rfid;
CREATE INDEX leaderboard_rows_best_fid
    ON leaderboard_rows (model_id, benchmark, (COALESCE(protocol_id, 0)), fid, evaluation_id);
CREATE INDEX leaderboard_rows_best_rfid
    ON leaderboard_rows (model_id, benchmark, (COALESCE(protocol_id, 0)), rfid, evaluation_id);
CREATE INDEX leaderboard_rows_leader_fid
    ON leaderboard_rows (benchmark, (COALESCE(protocol_id, 0)), fid, evaluation_id);
CREATE INDEX leaderboard_rows_leader_rfid
    ON leaderboard_rows (benchmark, (COALESCE(protocol_id, 0)), rfid, evaluation_id);
CREATE INDEX leaderboard_rows_by_protocol ON leaderboard_rows (protocol_id);
