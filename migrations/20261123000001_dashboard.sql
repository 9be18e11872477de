-- What the dashboard needs: an indexed copy of the leaderboard view, kept current by triggers,
-- and a read-only role to serve it through.

-- `leaderboard` joins and pivots every evaluation's metrics; sorting 100,000 of them by FID
-- that way costs ~150 ms a request. This table holds the view's rows, one per succeeded
-- evaluation, with an index per sort order, so a page is an index scan. Statement-level
-- triggers on the source tables recompute the rows they touch (evaluations are written rarely;
-- pages are read often). The view stays the definition: a row here is always
-- `SELECT * FROM leaderboard WHERE evaluation_id = ...`.
CREATE TABLE leaderboard_rows AS SELECT * FROM leaderboard WITH NO DATA;
ALTER TABLE leaderboard_rows ADD PRIMARY KEY (evaluation_id);

CREATE FUNCTION refresh_leaderboard_rows(ids BIGINT[]) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM leaderboard_rows WHERE evaluation_id = ANY (ids);
    INSERT INTO leaderboard_rows SELECT * FROM leaderboard WHERE evaluation_id = ANY (ids);
$$;

CREATE FUNCTION leaderboard_rows_from_metrics() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_leaderboard_rows(ARRAY(SELECT DISTINCT evaluation_id FROM changed));
    RETURN NULL;
END $$;
CREATE TRIGGER leaderboard_metrics_insert AFTER INSERT ON metrics
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_metrics();
CREATE TRIGGER leaderboard_metrics_update AFTER UPDATE ON metrics
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_metrics();
CREATE TRIGGER leaderboard_metrics_delete AFTER DELETE ON metrics
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_metrics();

CREATE FUNCTION leaderboard_rows_from_evaluations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_leaderboard_rows(ARRAY(SELECT id FROM changed));
    RETURN NULL;
END $$;
CREATE TRIGGER leaderboard_evaluations_insert AFTER INSERT ON evaluations
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_evaluations();
CREATE TRIGGER leaderboard_evaluations_update AFTER UPDATE ON evaluations
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_evaluations();
CREATE TRIGGER leaderboard_evaluations_delete AFTER DELETE ON evaluations
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_evaluations();

-- A renamed model or a re-numbered checkpoint changes rows too.
CREATE FUNCTION leaderboard_rows_from_checkpoints() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_leaderboard_rows(ARRAY(
        SELECT e.id FROM evaluations e JOIN changed c ON c.id = e.checkpoint_id));
    RETURN NULL;
END $$;
CREATE TRIGGER leaderboard_checkpoints_update AFTER UPDATE ON checkpoints
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_checkpoints();

CREATE FUNCTION leaderboard_rows_from_models() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_leaderboard_rows(ARRAY(
        SELECT e.id FROM evaluations e JOIN checkpoints c ON c.id = e.checkpoint_id
        JOIN changed m ON m.id = c.model_id));
    RETURN NULL;
END $$;
CREATE TRIGGER leaderboard_models_update AFTER UPDATE ON models
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION leaderboard_rows_from_models();

INSERT INTO leaderboard_rows SELECT * FROM leaderboard;

-- One index per sort order the dashboard offers (both directions, NULLs last, ties by id), plus
-- the per-model lookups of the model page and the best-row marks.
DO $$
DECLARE
    col TEXT;
BEGIN
    FOREACH col IN ARRAY ARRAY['fid', 'sfid', 'inception_score', 'precision', 'recall', 'rfid',
                               'psnr', 'ssim', 'codebook_usage', 'model', 'benchmark', 'params',
                               'step', 'epoch', 'tokens_seen', 'image_size', 'cfg_scale',
                               'finished_at'] LOOP
        EXECUTE format('CREATE INDEX leaderboard_rows_%s_asc ON leaderboard_rows (%I ASC NULLS LAST, evaluation_id ASC)', col, col);
        EXECUTE format('CREATE INDEX leaderboard_rows_%s_desc ON leaderboard_rows (%I DESC NULLS LAST, evaluation_id DESC)', col, col);
    END LOOP;
END
$$;
CREATE INDEX leaderboard_rows_best_fid ON leaderboard_rows (model_id, benchmark, fid, evaluation_id);
CREATE INDEX leaderboard_rows_best_rfid ON leaderboard_rows (model_id, benchmark, rfid, evaluation_id);

-- The role the dashboard reads through (`llamagen serve` connects, then SET ROLE to it): SELECT on
-- every table and view, and nothing else, so no request can write even if a query were wrong.
-- Roles are cluster-wide and creating one needs CREATEROLE; on a server where the migrating user
-- lacks it, the grants are skipped with a notice and `llamagen serve` asks for a read-only login
-- in LLAMAGEN_DASHBOARD_DATABASE_URL instead (it checks that the login cannot write).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'llamagen_reader') THEN
        BEGIN
            CREATE ROLE llamagen_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- another database of this cluster created it at the same moment
        END;
    END IF;
    -- Superusers may SET ROLE to any role; others need membership.
    IF NOT pg_has_role(current_user, 'llamagen_reader', 'MEMBER') THEN
        EXECUTE format('GRANT llamagen_reader TO %I', current_user);
    END IF;
    GRANT USAGE ON SCHEMA public TO llamagen_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO llamagen_reader;
    -- Tables that later migrations create are readable too.
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO llamagen_reader;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'llamagen_reader not set up (%): give the dashboard a read-only login', SQLERRM;
END
$$;
