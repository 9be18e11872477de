-- The first schema of llamagen-rs, written for the whole product: pipeline runs and their
-- stages, shards claimed by workers under leases, the filter funnel, models, training runs and
-- their checkpoints and loss curves, reference sets, evaluations with their full sampling
-- configuration, metrics, scheduler ticks, and the leaderboard view the dashboard reads.
-- Every result row carries what is needed to reproduce it: config, git revision and seed.

-- One execution of a pipeline config (manually, by the scheduler, or by `llamagen demo`).
CREATE TABLE pipeline_runs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline        TEXT        NOT NULL,
    trigger         TEXT        NOT NULL DEFAULT 'manual'
                    CHECK (trigger IN ('manual', 'schedule', 'demo', 'worker')),
    status          TEXT        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    config          JSONB       NOT NULL,
    config_sha256   TEXT        NOT NULL,
    git_revision    TEXT,
    host            TEXT,
    scheduled_for   TIMESTAMPTZ,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    error           TEXT,
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX pipeline_runs_by_pipeline ON pipeline_runs (pipeline, started_at DESC);

-- One stage (ingest, filter, ...) of a run. A re-run of a stage in the same run resumes it.
CREATE TABLE stage_runs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          BIGINT      NOT NULL REFERENCES pipeline_runs (id) ON DELETE CASCADE,
    stage           TEXT        NOT NULL
                    CHECK (stage IN ('ingest', 'filter', 'caption', 'encode', 'train', 'sample', 'evaluate')),
    status          TEXT        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    config          JSONB       NOT NULL DEFAULT '{}',
    input_path      TEXT,
    output_path     TEXT,
    counts          JSONB       NOT NULL DEFAULT '{}',
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    error           TEXT,
    UNIQUE (run_id, stage)
);

-- Units of work. Workers claim them with SELECT ... FOR UPDATE SKIP LOCKED and hold a lease;
-- a shard whose lease expired is claimable again, so a dead worker's shard is redone.
CREATE TABLE shards (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage_run_id     BIGINT      NOT NULL REFERENCES stage_runs (id) ON DELETE CASCADE,
    shard_index      INTEGER     NOT NULL CHECK (shard_index >= 0),
    status           TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    attempts         INTEGER     NOT NULL DEFAULT 0,
    max_attempts     INTEGER     NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    worker           TEXT,
    lease_expires_at TIMESTAMPTZ,
    input_rows       BIGINT,
    output_rows      BIGINT,
    failed_rows      BIGINT,
    bytes_written    BIGINT,
    counts           JSONB       NOT NULL DEFAULT '{}',
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    duration_ms      BIGINT,
    error            TEXT,
    UNIQUE (stage_run_id, shard_index),
    CHECK (status <> 'running' OR (worker IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE INDEX shards_claimable ON shards (stage_run_id, shard_index)
    WHERE status IN ('pending', 'running');

-- Rows removed by each filter rule, in order: the metadata filter before download, then the
-- post-download filters, so the funnel reads from the input rows down to what was kept.
CREATE TABLE filter_funnel (
    stage_run_id    BIGINT  NOT NULL REFERENCES stage_runs (id) ON DELETE CASCADE,
    step            INTEGER NOT NULL,
    rule            TEXT    NOT NULL,
    threshold       TEXT,
    rows_in         BIGINT  NOT NULL CHECK (rows_in >= 0),
    rows_dropped    BIGINT  NOT NULL CHECK (rows_dropped >= 0 AND rows_dropped <= rows_in),
    rows_out        BIGINT  GENERATED ALWAYS AS (rows_in - rows_dropped) STORED,
    PRIMARY KEY (stage_run_id, rule)
);

-- A model: a generator (LlamaGen GPT) or an image tokenizer (VQ).
CREATE TABLE models (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            TEXT        NOT NULL UNIQUE,
    kind            TEXT        NOT NULL CHECK (kind IN ('generator', 'tokenizer')),
    architecture    TEXT        NOT NULL,          -- e.g. 'llamagen-gpt', 'vq-16'
    size            TEXT,                          -- B, L, XL, XXL, XXXL, 1B, 3B, 7B
    task            TEXT        CHECK (task IN ('c2i', 't2i')),
    params          BIGINT      CHECK (params > 0),
    image_size      INTEGER     CHECK (image_size > 0),
    tokenizer_id    BIGINT      REFERENCES models (id),
    config          JSONB       NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One training job of a model (a resumed job keeps its row).
CREATE TABLE training_runs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id        BIGINT      NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    stage_run_id    BIGINT      REFERENCES stage_runs (id) ON DELETE SET NULL,
    status          TEXT        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    config          JSONB       NOT NULL,
    git_revision    TEXT,
    seed            BIGINT      NOT NULL,
    global_batch    INTEGER     CHECK (global_batch > 0),
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);

-- Loss curves and other per-step scalars of a training run.
CREATE TABLE training_metrics (
    training_run_id BIGINT           NOT NULL REFERENCES training_runs (id) ON DELETE CASCADE,
    step            BIGINT           NOT NULL CHECK (step >= 0),
    name            TEXT             NOT NULL,
    value           DOUBLE PRECISION NOT NULL,
    logged_at       TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (training_run_id, name, step)
);

-- Saved weights. Imported official weights have no training run.
CREATE TABLE checkpoints (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id        BIGINT      NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    training_run_id BIGINT      REFERENCES training_runs (id) ON DELETE SET NULL,
    path            TEXT        NOT NULL,
    sha256          TEXT        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    bytes           BIGINT      CHECK (bytes >= 0),
    step            BIGINT      NOT NULL DEFAULT 0 CHECK (step >= 0),
    epoch           DOUBLE PRECISION,
    tokens_seen     BIGINT,
    train_loss      DOUBLE PRECISION,
    ema             BOOLEAN     NOT NULL DEFAULT false,
    config          JSONB       NOT NULL DEFAULT '{}',
    git_revision    TEXT,
    seed            BIGINT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (model_id, step, ema),
    UNIQUE (sha256)
);

-- Real-image statistics that generated images are compared against (ADM-style npz).
CREATE TABLE reference_sets (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            TEXT        NOT NULL UNIQUE,
    path            TEXT        NOT NULL,
    sha256          TEXT        NOT NULL,
    num_images      INTEGER     NOT NULL CHECK (num_images > 0),
    image_size      INTEGER,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One benchmark of one checkpoint under one sampling configuration. `config_sha256` hashes
-- everything that changes the result, so re-running the same configuration updates this row.
CREATE TABLE evaluations (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checkpoint_id    BIGINT           NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
    benchmark        TEXT             NOT NULL,     -- e.g. 'imagenet256-c2i', 'imagenet256-recon'
    reference_set_id BIGINT           REFERENCES reference_sets (id),
    cfg_scale        DOUBLE PRECISION CHECK (cfg_scale >= 0),
    cfg_interval     INTEGER,
    top_k            INTEGER          CHECK (top_k >= 0),
    top_p            DOUBLE PRECISION CHECK (top_p > 0 AND top_p <= 1),
    temperature      DOUBLE PRECISION CHECK (temperature > 0),
    image_size       INTEGER          CHECK (image_size > 0),
    eval_image_size  INTEGER          CHECK (eval_image_size > 0),
    num_samples      INTEGER          CHECK (num_samples > 0),
    seed             BIGINT,
    precision        TEXT,                          -- fp32, bf16, fp16
    sampling_config  JSONB            NOT NULL DEFAULT '{}',
    config_sha256    TEXT             NOT NULL,
    git_revision     TEXT,
    samples_path     TEXT,
    status           TEXT             NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at       TIMESTAMPTZ      NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ,
    duration_ms      BIGINT,
    error            TEXT,
    UNIQUE (checkpoint_id, benchmark, config_sha256)
);

-- Metric values of an evaluation: fid, sfid, inception_score, precision, recall, rfid, psnr,
-- ssim, codebook_usage, ...
CREATE TABLE metrics (
    evaluation_id   BIGINT           NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    name            TEXT             NOT NULL,
    value           DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (evaluation_id, name)
);
CREATE INDEX metrics_by_name ON metrics (name, value);

-- Cron ticks the scheduler has acted on; the unique key stops two schedulers running a tick twice.
CREATE TABLE schedule_ticks (
    pipeline        TEXT        NOT NULL,
    scheduled_for   TIMESTAMPTZ NOT NULL,
    run_id          BIGINT      REFERENCES pipeline_runs (id) ON DELETE SET NULL,
    outcome         TEXT        NOT NULL CHECK (outcome IN ('started', 'skipped_busy', 'skipped_missed', 'succeeded', 'failed')),
    decided_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, scheduled_for)
);

-- One row per evaluation with the headline metrics as columns: what the leaderboard shows.
CREATE VIEW leaderboard AS
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
    max(x.value) FILTER (WHERE x.name = 'codebook_usage')  AS codebook_usage
FROM evaluations e
JOIN checkpoints c ON c.id = e.checkpoint_id
JOIN models m      ON m.id = c.model_id
LEFT JOIN metrics x ON x.evaluation_id = e.id
WHERE e.status = 'succeeded'
GROUP BY e.id, m.id, c.id;
