"""Reading a store: `traintape.connect()` returns DuckDB with every view ready.

Views read the Parquet folders directly (globs are expanded at each query, so new files show up),
in an in-memory DuckDB: a reader never takes a lock the collector waits on, and never waits on it.

Views
    runs             one row per run: project, name, status (of its latest attempt: running,
                     completed, failed, killed, crashed; see RUN_STATES in schemas/events.py),
                     times, attempts, ranks, world_size, host, tags, config, environment, git_commit
    metrics          one row per logged value: run_id, rank, step, ts, key, value, attempt, source, seq
    metrics_by_step  per (run_id, step, key) across ranks: mean, min, max, count
    params           latest value per (run_id, key): value (JSON text), value_num (when numeric)
    events           every event but metric values: kind, body (JSON text)
    checkpoints      one row per checkpoint event: action (saved, deleted, failed), path, bytes,
                     sha256, metrics, blocked_s, write_s, is_best (the run's best live file now),
                     live (saved, not deleted since), best_when_saved, error, monitor, mode, reason
    artifacts        one row per logged artifact: run_id, rank, step, name, kind, path (of its
                     object in the store), bytes, sha256, metadata, ts
    media            the artifacts that are images or tables logged with `log()`: run_id, rank,
                     step, name, kind, path, bytes, sha256, width, height, channels, rows,
                     columns, caption, ts
    system           system samples: host, device, key, value, run_id, rank
    attempts         one row per (run_id, rank, attempt): source, started
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb

from traintape.errors import StoreNotFoundError
from traintape.globs import literal, sql_string
from traintape.layout import StoreLayout
from traintape.paths import remote_store, resolve_store


def table_files(store: Path, table: str, run_ids: Sequence[str] | None = None) -> str:
    """`read_parquet(...)` of a table's files: every run folder's, or only those of `run_ids`
    (then rows of other runs whose ids share a folder name may come too: filter by run_id).
    Every collector's folders are read (`<run folder>@<ID>` where several share the store)."""
    # Every file of a table is written from one Arrow schema (schemas/tables.py), so DuckDB binds
    # from the first file. union_by_name would read the footer of every file at each bind of each
    # view (seconds per query at 1,000 runs); a change of a table's schema must migrate old files.
    # The store's own path is escaped: its `[`, `*`, `?` must never match a sibling store.
    layout = StoreLayout(store)
    if run_ids is None:
        files = literal(layout.table(table)) + "/*/*.parquet"  # every run folder's
        return f"read_parquet({sql_string(files)})"
    empty = layout.empty_table_file(table)
    globs = [(empty.parent, empty.name)]  # never an empty list
    folders = {f for r in run_ids for f in layout.run_folders_of(table, r)}
    globs += [(f, "*.parquet") for f in sorted(folders)]
    # A folder can exist without a file (a collector died between mkdir and its first write).
    listed = ", ".join(
        sql_string(f"{literal(folder)}/{name}")
        for folder, name in globs
        if any(folder.glob("*.parquet"))
    )
    return f"read_parquet([{listed}])"


def view_sql(
    store: Path, run_ids: Sequence[str] | None = None, sources: Mapping[str, str] | None = None
) -> list[str]:
    """The views of a store; with `run_ids`, over those runs' folders only (system samples are
    the host's, all of them). `sources`: each table's FROM clause instead of its folders (an
    s3:// store's objects, traintape.read.remote)."""
    names = ("metrics", "params", "events", "system")
    if sources is None:
        sources = {t: table_files(store, t, None if t == "system" else run_ids) for t in names}
    m, p, e, s = (sources[t] for t in names)
    return [
        f"CREATE OR REPLACE VIEW events AS SELECT run_id, rank, step, ts::TIMESTAMPTZ AS ts, kind, body, source, seq FROM {e}",
        """CREATE OR REPLACE VIEW attempts AS
           SELECT run_id, rank, source, ts AS started,
                  dense_rank() OVER (PARTITION BY run_id, rank ORDER BY ts) AS attempt
           FROM events WHERE kind = 'run_start'""",
        f"""CREATE OR REPLACE VIEW metrics AS
            SELECT m.run_id, m.rank, m.step, m.ts::TIMESTAMPTZ AS ts, m.key, m.value, a.attempt, m.source, m.seq
            FROM {m} m LEFT JOIN attempts a USING (run_id, rank, source)""",
        # From the files, not the metrics view: no attempts join on every row.
        f"""CREATE OR REPLACE VIEW metrics_by_step AS
           SELECT run_id, step, key, avg(value) AS mean, min(value) AS min, max(value) AS max,
                  count(*) AS count
           FROM {m} GROUP BY run_id, step, key""",
        # `ts` is in microseconds (schemas/tables.py): `seq` orders a source's updates within one.
        f"""CREATE OR REPLACE VIEW params AS
            SELECT run_id, key, arg_max(value, (ts, seq)) AS value,
                   arg_max(value_num, (ts, seq)) AS value_num, max(ts)::TIMESTAMPTZ AS ts
            FROM {p} GROUP BY run_id, key""",
        # System samples are the collector's, per host; each is joined to the runs that were
        # active on that host at that moment (a sample with no run active has run_id NULL). A
        # process's GPU memory (device pid<N>) is joined to the rank whose run_start has that pid
        # on that host, within that run's lifetime (pids are reused).
        f"""CREATE OR REPLACE VIEW system AS
            WITH starts AS (
                SELECT run_id, rank, json_extract_string(body, '$.environment.host') AS host,
                       'pid' || json_extract_string(body, '$.environment.pid') AS pid_device,
                       ts AS started
                FROM events WHERE kind = 'run_start'),
            ends AS (SELECT run_id, max(ts) AS ended FROM events WHERE kind = 'run_end' GROUP BY ALL),
            active AS (
                SELECT s.run_id, s.host, min(s.started) AS started, any_value(e.ended) AS ended
                FROM starts s LEFT JOIN ends e USING (run_id) GROUP BY ALL),
            ranks AS (
                SELECT s.run_id, s.rank, s.host, s.pid_device, s.started, e.ended
                FROM starts s LEFT JOIN ends e USING (run_id)),
            samples AS (
                SELECT ts::TIMESTAMPTZ AS ts, host, device, key, value,
                       starts_with(device, 'pid') AS per_process
                FROM {s})
            SELECT s.ts, s.host, s.device, s.key, s.value, a.run_id, NULL::INTEGER AS rank
            FROM samples s LEFT JOIN active a
              ON NOT s.per_process AND a.host = s.host AND s.ts >= a.started
             AND (a.ended IS NULL OR s.ts <= a.ended)
            WHERE NOT s.per_process
            UNION ALL
            SELECT s.ts, s.host, s.device, s.key, s.value, r.run_id, r.rank
            FROM samples s LEFT JOIN ranks r
              ON s.per_process AND r.host = s.host AND r.pid_device = s.device
             AND s.ts >= r.started AND (r.ended IS NULL OR s.ts <= r.ended)
            WHERE s.per_process""",
        # `live`: the newest saved-or-deleted event of its path is this save. `is_best`: the one
        # live checkpoint of its run with the best monitored value (the monitor and mode of the
        # run's newest live save that names one; ties: the earlier save), the one
        # `traintape checkpoints` and `load_checkpoint("best")` pick (checkpoint/load.py).
        """CREATE OR REPLACE VIEW checkpoints AS
           WITH c AS (
               SELECT e.run_id, e.rank, e.step, e.ts,
                      json_extract_string(e.body, '$.path') AS path,
                      json_extract_string(e.body, '$.action') AS action,
                      TRY_CAST(json_extract(e.body, '$.bytes') AS BIGINT) AS bytes,
                      json_extract_string(e.body, '$.sha256') AS sha256,
                      json_extract(e.body, '$.metrics') AS metrics,
                      TRY_CAST(json_extract(e.body, '$.blocked_s') AS DOUBLE) AS blocked_s,
                      TRY_CAST(json_extract(e.body, '$.write_s') AS DOUBLE) AS write_s,
                      TRY_CAST(json_extract(e.body, '$.is_best') AS BOOLEAN) AS best_when_saved,
                      json_extract_string(e.body, '$.error') AS error,
                      json_extract_string(e.body, '$.monitor') AS monitor,
                      json_extract_string(e.body, '$.mode') AS mode,
                      json_extract_string(e.body, '$.reason') AS reason,
                      a.attempt, e.source, e.seq
               FROM events e LEFT JOIN attempts a USING (run_id, rank, source)
               WHERE e.kind = 'checkpoint'),
           l AS (
               SELECT *, coalesce(action = 'saved' AND path IS NOT NULL AND row_number() OVER (
                          PARTITION BY run_id, path, action IN ('saved', 'deleted')
                          ORDER BY ts DESC, seq DESC) = 1, false) AS live
               FROM c),
           judged AS (
               SELECT run_id,
                      arg_max(monitor, ts) FILTER (WHERE monitor IS NOT NULL) AS by_monitor,
                      arg_max(coalesce(mode, 'min'), ts) FILTER (WHERE monitor IS NOT NULL)
                          AS by_mode
               FROM l WHERE live GROUP BY run_id),
           v AS (
               SELECT l.*, j.by_mode,
                      CASE WHEN l.live THEN TRY_CAST(json_extract_string(
                          l.metrics, '$."' || replace(j.by_monitor, '"', '\\"') || '"') AS DOUBLE)
                      END AS judged_value
               FROM l LEFT JOIN judged j USING (run_id)),
           w AS (
               SELECT *, judged_value IS NOT NULL AND NOT isnan(judged_value) AS candidate
               FROM v)
           SELECT run_id, rank, step, ts, path, action, bytes, sha256, metrics, blocked_s,
                  write_s, candidate AND row_number() OVER (
                      PARTITION BY run_id, candidate
                      ORDER BY CASE WHEN by_mode = 'max' THEN -judged_value
                                    ELSE judged_value END, ts, seq) = 1 AS is_best,
                  live, best_when_saved, error, monitor, mode, reason, attempt, source, seq
           FROM w""",
        # Artifacts (traintape.emitter.artifacts): `path` is the object's, relative to the store.
        """CREATE OR REPLACE VIEW artifacts AS
           SELECT run_id, rank, step, json_extract_string(body, '$.name') AS name,
                  json_extract_string(body, '$.kind') AS kind,
                  json_extract_string(body, '$.path') AS path,
                  TRY_CAST(json_extract(body, '$.bytes') AS BIGINT) AS bytes,
                  json_extract_string(body, '$.sha256') AS sha256,
                  json_extract(body, '$.metadata') AS metadata, ts, source, seq
           FROM events WHERE kind = 'artifact'""",
        # Media of log() (traintape.emitter.media): artifacts whose kind and metadata say so.
        """CREATE OR REPLACE VIEW media AS
           SELECT run_id, rank, step, name, kind, path, bytes, sha256,
                  TRY_CAST(json_extract(metadata, '$.width') AS BIGINT) AS width,
                  TRY_CAST(json_extract(metadata, '$.height') AS BIGINT) AS height,
                  TRY_CAST(json_extract(metadata, '$.channels') AS BIGINT) AS channels,
                  TRY_CAST(json_extract(metadata, '$.rows') AS BIGINT) AS "rows",
                  TRY_CAST(json_extract(metadata, '$.columns') AS VARCHAR[]) AS "columns",
                  json_extract_string(metadata, '$.caption') AS caption, ts, source, seq
           FROM artifacts
           WHERE kind IN ('image', 'table') AND json_extract_string(metadata, '$.media') = kind""",
        # The events files are read once (ev): each of their scans opens every run's folder.
        """CREATE OR REPLACE VIEW runs AS
           WITH ev AS MATERIALIZED (
               SELECT run_id, rank, source, ts, kind, body FROM events
               WHERE kind IN ('run_start', 'run_end', 'run_status')),
           att AS MATERIALIZED (  -- the attempts view, over ev
               SELECT run_id, rank, source,
                      dense_rank() OVER (PARTITION BY run_id, rank ORDER BY ts) AS attempt
               FROM ev WHERE kind = 'run_start'),
           starts AS (
               SELECT e.run_id, e.rank, e.source, e.ts, e.body, a.attempt
               FROM ev e JOIN att a USING (run_id, rank, source)
               WHERE e.kind = 'run_start'),
           latest AS (
               SELECT run_id, max(attempt) AS attempt FROM starts GROUP BY run_id),
           ends AS (
               SELECT e.run_id, e.rank, a.attempt, e.ts,
                      json_extract_string(e.body, '$.status') AS status
               FROM ev e JOIN att a USING (run_id, rank, source)
               WHERE e.kind = 'run_end'),
           -- The collector's latest word on each process that sent no run_end (liveness.py).
           lives AS (
               SELECT run_id, rank, json_extract_string(body, '$.source') AS target,
                      arg_max(json_extract_string(body, '$.status'), ts) AS status, max(ts) AS ts
               FROM ev WHERE kind = 'run_status' GROUP BY ALL),
           ranked AS (  -- each rank of the latest attempt: its end, crashed, or NULL (running)
               SELECT s.run_id,
                      coalesce(x.status, CASE WHEN v.status = 'crashed' THEN 'crashed' END)
                          AS status,
                      coalesce(x.ts, v.ts) AS ts
               FROM starts s JOIN latest l USING (run_id, attempt)
               LEFT JOIN ends x ON x.run_id = s.run_id AND x.rank = s.rank AND x.attempt = s.attempt
               LEFT JOIN lives v
                 ON v.run_id = s.run_id AND v.rank = s.rank AND v.target = s.source),
           state AS (  -- see RUN_STATES in traintape/schemas/events.py
               SELECT run_id,
                      CASE WHEN bool_or(status = 'failed') THEN 'failed'
                           WHEN bool_or(status = 'crashed') AND count(status) = count(*)
                               THEN 'crashed'
                           WHEN bool_or(status = 'killed') THEN 'killed'
                           WHEN count(status) < count(*) THEN 'running'
                           ELSE 'completed' END AS status,
                      count(*) AS ranks,
                      CASE WHEN count(status) = count(*) THEN max(ts) END AS ended
               FROM ranked GROUP BY run_id),
           head AS (
               SELECT run_id, body FROM starts
               QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY attempt DESC, rank) = 1),
           firsts AS (
               SELECT run_id, min(ts) AS started, max(attempt) AS attempts FROM starts GROUP BY run_id)
           SELECT h.run_id,
                  json_extract_string(h.body, '$.project') AS project,
                  json_extract_string(h.body, '$.name') AS name,
                  st.status,
                  f.started,
                  st.ended,
                  epoch(coalesce(st.ended, now())) - epoch(f.started) AS duration_s,
                  f.attempts,
                  st.ranks,
                  TRY_CAST(json_extract(h.body, '$.world_size') AS INTEGER) AS world_size,
                  json_extract_string(h.body, '$.environment.host') AS host,
                  TRY_CAST(json_extract(h.body, '$.tags') AS VARCHAR[]) AS tags,
                  json_extract(h.body, '$.config') AS config,
                  json_extract(h.body, '$.environment') AS environment,
                  json_extract_string(h.body, '$.environment.git_commit') AS git_commit
           FROM head h JOIN state st USING (run_id) JOIN firsts f USING (run_id)""",
    ]


def connect(
    store: str | os.PathLike[str] | None = None, *, runs: Sequence[str] | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over the store's tables, with the views of this module's docstring.

    `store` defaults to $TRAINTAPE_STORE, else ./traintape-store. `runs`: views over those runs'
    folders only (a question about a few runs then opens their files, not every run's; a view
    may still hold rows of another run whose id shares a folder name: filter by run_id).
    `store` may be `s3://bucket/prefix`, where collectors publish (`serve --tables`): the tables
    there as of this call (traintape.read.remote).
    """
    remote = remote_store(store)
    if remote is not None:  # s3://bucket/prefix: the tables the collectors publish there
        from traintape.read.remote import connect_remote

        return connect_remote(remote, runs)
    path = resolve_store(store)
    if not StoreLayout(path).tables.is_dir():
        msg = (
            f"no traintape store at {path}: start `traintape serve --store {path}`, "
            "or pass the store's folder (store=... / --store / $TRAINTAPE_STORE)"
        )
        raise StoreNotFoundError(msg)
    con = duckdb.connect(":memory:")
    # Files are immutable once in place (new data, merges: new names), so their footers can be
    # cached: views over the same glob then read each footer once per connection.
    con.execute("SET parquet_metadata_cache = true")
    # For traintape.read.history, which reads one run's folder directly instead of every run's.
    con.execute("SET VARIABLE traintape_store = " + "'" + str(path).replace("'", "''") + "'")
    for sql in view_sql(path, runs):
        con.execute(sql)
    return con
