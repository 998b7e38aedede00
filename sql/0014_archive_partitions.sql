-- The archive, partitioned by the time its rows were moved there (moved_at), so that the
-- janitor retires rows past archive_retention by dropping whole partitions: no DELETE,
-- no dead tuples, no index bloat and no vacuum, whatever the throughput.
--
-- Range partitions are made just ahead of time by archive_prepare() and dropped by
-- archive_retire() once their upper bound is older than the retention: rows live at least
-- archive_retention and at most one partition's width more. archive_default takes any
-- row no range partition covers (one written by hand with a time of its choosing, or
-- moved while the partitions could not be made); archive_purge() deletes its rows past
-- the retention, row by row as before.
--
-- The archive as it was, if it holds rows, becomes the range partition archive_legacy
-- from MINVALUE to just after its newest row, checked once here: it is dropped whole once
-- that row is past the retention, and making new partitions never scans it (PostgreSQL
-- scans the DEFAULT partition each time, which is why that one starts empty).
--
-- A job id is unique in each partition; across partitions, the janitor's move checks that
-- the archive does not hold the id yet (the primary key's leading column serves it).

ALTER TABLE archive RENAME TO archive_legacy;
ALTER TABLE archive_legacy DROP CONSTRAINT archive_pkey;  -- the parent's (id, moved_at) follows
ALTER INDEX archive_moved_at RENAME TO archive_legacy_moved_at;
CREATE TABLE archive (LIKE archive_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (moved_at);
ALTER TABLE archive ADD PRIMARY KEY (id, moved_at);
CREATE INDEX archive_moved_at ON archive (moved_at);
CREATE TABLE archive_default PARTITION OF archive DEFAULT;

-- The archive's range partitions with their bounds (NULL for MINVALUE / MAXVALUE), read
-- from the catalog: the one record of which times are covered.
CREATE FUNCTION archive_partitions()
RETURNS TABLE (partition regclass, lower_bound timestamptz, upper_bound timestamptz)
LANGUAGE sql STABLE
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY'
AS $$
    SELECT c.oid::regclass,
           (regexp_match(b.expr, '^FOR VALUES FROM \(''([^'']+)''\)'))[1]::timestamptz,
           (regexp_match(b.expr, ' TO \(''([^'']+)''\)$'))[1]::timestamptz
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) AS b
    WHERE i.inhparent = to_regclass(quote_ident(current_setting('simplequeue.schema')) || '.archive')
      AND b.expr <> 'DEFAULT'
$$;

-- The archive's DEFAULT partition (NULL once dropped by hand).
CREATE FUNCTION archive_fallback()
RETURNS regclass
LANGUAGE sql STABLE
AS $$
    SELECT c.oid::regclass
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = to_regclass(quote_ident(current_setting('simplequeue.schema')) || '.archive')
      AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
$$;

-- Makes sure range partitions cover the archive from now to a minute ahead (every move
-- of the janitor comes after this in its sweep); returns how many it made. Partitions
-- follow each other: a new one starts where the last ends (or now, after a gap) and ends
-- on the next multiple of the width since the epoch, so janitors with different widths
-- never overlap, and a new width (a new retention) applies from the next partition. A
-- range must hold none of the DEFAULT partition's rows: one written there by hand with a
-- time ahead makes the new partition start just after it. Waits at most lock_timeout for
-- the archive (making a partition locks it briefly): a long query on the archive makes
-- this sweep skip the step instead of queueing every writer behind it.
CREATE FUNCTION archive_prepare(width_seconds double precision)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET lock_timeout = '2s'
AS $$
DECLARE
    s text := current_setting('simplequeue.schema');
    width interval;
    horizon timestamptz := now() + interval '1 minute';
    fallback regclass;
    tail timestamptz;
    start timestamptz;
    finish timestamptz;
    taken timestamptz;
    made integer := 0;
BEGIN
    IF width_seconds IS NULL OR NOT width_seconds BETWEEN 60 AND 31622400 THEN
        RAISE EXCEPTION 'archive partition width must be 60 to 31622400 seconds, not %',
            width_seconds USING ERRCODE = 'invalid_parameter_value';
    END IF;
    width := make_interval(secs => width_seconds);
    PERFORM pg_advisory_xact_lock(hashtext('simplequeue.archive_partitions.' || s));
    EXECUTE format('SELECT %I.archive_fallback()', s) INTO fallback;
    LOOP
        EXECUTE format('SELECT max(upper_bound) FROM %I.archive_partitions()', s) INTO tail;
        EXIT WHEN tail >= horizon;
        start := greatest(tail, now());
        LOOP
            finish := to_timestamp(
                (floor(extract(epoch FROM start) / width_seconds) + 1) * width_seconds);
            taken := NULL;
            IF fallback IS NOT NULL THEN
                EXECUTE format('SELECT max(moved_at) FROM %s WHERE moved_at >= $1 '
                               'AND moved_at < $2', fallback)
                    INTO taken USING start, finish;
            END IF;
            EXIT WHEN taken IS NULL;
            start := taken + interval '1 microsecond';
        END LOOP;
        EXECUTE format(
            'CREATE TABLE %I.%I PARTITION OF %I.archive FOR VALUES FROM (%L) TO (%L)',
            s, 'archive_' || to_char(start, 'YYYYMMDD"_"HH24MISS_US'), s, start, finish);
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;

-- Drops the range partitions whose every row is older than the retention; returns how
-- many, and the rows they held. Waits at most lock_timeout, as archive_prepare().
CREATE FUNCTION archive_retire(retention_seconds double precision,
                               OUT dropped integer, OUT rows_dropped bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET lock_timeout = '2s'
AS $$
DECLARE
    s text := current_setting('simplequeue.schema');
    old record;
    held bigint;
BEGIN
    dropped := 0;
    rows_dropped := 0;
    -- PostgreSQL orders NaN above Infinity: one test refuses both
    IF retention_seconds IS NULL OR NOT retention_seconds > 0
       OR retention_seconds >= 'Infinity' THEN
        RAISE EXCEPTION 'archive retention must be a finite number of seconds above 0, not %',
            retention_seconds USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('simplequeue.archive_partitions.' || s));
    FOR old IN EXECUTE format(
        'SELECT partition FROM %I.archive_partitions() WHERE upper_bound <= $1 '
        'ORDER BY upper_bound', s) USING now() - make_interval(secs => retention_seconds)
    LOOP
        EXECUTE format('SELECT count(*) FROM %s', old.partition) INTO held;
        EXECUTE format('DROP TABLE %s', old.partition);
        dropped := dropped + 1;
        rows_dropped := rows_dropped + held;
    END LOOP;
END
$$;

-- Deletes up to `batch` rows of the DEFAULT partition older than the retention; returns
-- how many. One purge at a time per schema: the others skip their turn.
CREATE FUNCTION archive_purge(retention_seconds double precision, batch integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    s text := current_setting('simplequeue.schema');
    fallback regclass;
    purged bigint;
BEGIN
    IF retention_seconds IS NULL OR NOT retention_seconds > 0
       OR retention_seconds >= 'Infinity' OR batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'archive purge needs a finite retention above 0 seconds and a batch '
            'of at least 1, not % and %', retention_seconds, batch
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('SELECT %I.archive_fallback()', s) INTO fallback;
    IF fallback IS NULL
       OR NOT pg_try_advisory_xact_lock(hashtext('simplequeue.purge.' || s)) THEN
        RETURN 0;
    END IF;
    EXECUTE format(
        'DELETE FROM %1$s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %1$s '
        'WHERE moved_at < now() - make_interval(secs => $1) LIMIT $2))', fallback)
        USING retention_seconds, batch;
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;

-- The functions run as their owner (who may make and drop partitions) and only on this
-- schema's archive, named by their own setting simplequeue.schema. Their search path holds
-- no schema a role may create in (pg_catalog, then pg_temp last, as PostgreSQL advises for
-- SECURITY DEFINER): a function or operator planted in the queue's schema to overload a
-- built-in is never called as the owner. Only the roles granted them (the worker role) may
-- call the three that change the archive.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['archive_partitions()', 'archive_fallback()',
                             'archive_prepare(double precision)',
                             'archive_retire(double precision)',
                             'archive_purge(double precision, integer)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
        EXECUTE format('ALTER FUNCTION %s SET simplequeue.schema = %L', f, current_schema());
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION archive_prepare(double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION archive_retire(double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION archive_purge(double precision, integer) FROM PUBLIC;

-- Whoever was granted the archive before keeps it: the new table gets the old one's
-- privileges, and a role that could delete from it may now retire it through the three
-- functions (what `simplequeue roles` grants again, without DELETE, when run next).
DO $$
DECLARE
    held record;
    grantee text;
BEGIN
    FOR held IN
        SELECT a.grantee, a.privilege_type, a.is_grantable
        FROM pg_class AS c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
        WHERE c.oid = 'archive_legacy'::regclass AND a.grantee <> c.relowner
    LOOP
        grantee := CASE WHEN held.grantee = 0 THEN 'PUBLIC'
                        ELSE quote_ident(pg_get_userbyid(held.grantee)) END;
        EXECUTE format('GRANT %s ON archive TO %s%s', held.privilege_type, grantee,
                       CASE WHEN held.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        IF held.privilege_type = 'DELETE' THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION archive_prepare(double precision), '
                           'archive_retire(double precision), '
                           'archive_purge(double precision, integer) TO %s', grantee);
        END IF;
    END LOOP;
END
$$;

DO $$
DECLARE
    newest timestamptz;
BEGIN
    SELECT max(moved_at) INTO newest FROM archive_legacy;
    IF newest IS NULL THEN
        DROP TABLE archive_legacy;
    ELSE
        EXECUTE format('ALTER TABLE archive ATTACH PARTITION archive_legacy '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', newest + interval '1 microsecond');
    END IF;
END
$$;
