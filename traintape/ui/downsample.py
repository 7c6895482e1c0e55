"""Server-side downsampling for the dashboard's charts, in DuckDB SQL: M4 per bucket.

A panel W pixels wide gets at most 2·W points per series. When a series has more points than
that, its x range is cut into B = W // 2 equal buckets and each bucket keeps its first, last,
lowest and highest point (M4: Jugel et al., VLDB 2014), so a line drawn through them covers the
same pixels as the full series: a spike of one step among ten million survives, which sampling
every n-th point (TensorBoard's reservoir, MLflow's) loses. A band (the min and max across ranks)
keeps the lowest low and the highest high of each bucket. Everything is computed where the data
is, in DuckDB, so only the kept points ever reach Python.
"""

from __future__ import annotations

__all__ = ["MAX_WIDTH", "MIN_WIDTH", "buckets", "m4_sql", "nonfinite_sql"]

MIN_WIDTH = 2
MAX_WIDTH = 20_000
"""Panel widths accepted, in pixels (a 2 px panel gets one bucket of at most 4 points)."""


def buckets(width: int) -> int:
    """Buckets for a panel `width` pixels wide: each yields at most 4 points, so 2·width in all."""
    return max(1, width // 2)


def _bucket_expr(count: int, x: str = "x") -> str:
    """The bucket (0 .. count-1) of `x` between its series' x0 and x1 (columns of `r`)."""
    return (
        f"CASE WHEN r.x1 = r.x0 THEN 0 ELSE least({count - 1}, "
        f"floor(({x} - r.x0) / (r.x1 - r.x0) * {count}))::BIGINT END"
    )


def m4_sql(source: str, width: int) -> str:
    """A query over `source` (columns g: the series, never NULL; x, y, lo, hi: all finite but
    lo/hi, which may be NULL) giving the points to draw: g, x, y, lo, hi, ordered by g and x.
    `source` is read twice (its extent, then its buckets): materialize it if it is costly.

    A series with at most 2·width points comes back whole; a longer one as the M4 points of
    `buckets(width)` buckets, each with the bucket's lowest lo and highest hi as its band.
    """
    count = buckets(width)
    return f"""
    WITH s AS (SELECT g, x, y, lo, hi FROM {source}),
    r AS (SELECT g, min(x) AS x0, max(x) AS x1, count(*) AS n FROM s GROUP BY g),
    k AS (SELECT s.*, r.n, {_bucket_expr(count, "s.x")} AS bucket
          FROM s JOIN r USING (g)),
    whole AS (SELECT g, x, y, lo, hi FROM k WHERE n <= {2 * width}),
    agg AS (SELECT g, bucket,
                   min(x) AS fx, arg_min(y, x) AS fy, max(x) AS lx, arg_max(y, x) AS ly,
                   arg_min(x, y) AS nx, min(y) AS ny, arg_max(x, y) AS mx, max(y) AS my,
                   min(lo) AS blo, max(hi) AS bhi
            FROM k WHERE n > {2 * width} GROUP BY g, bucket),
    m4 AS (SELECT DISTINCT g, unnest([fx, lx, nx, mx]) AS x, unnest([fy, ly, ny, my]) AS y,
                  blo AS lo, bhi AS hi
           FROM agg)
    SELECT g, x, y, lo, hi FROM whole
    UNION ALL
    SELECT g, x, y, lo, hi FROM m4
    ORDER BY g NULLS FIRST, x, y"""


def nonfinite_sql(source: str, width: int) -> str:
    """A query over `source` (columns g: never NULL, x, value: NaN or ±Inf only) giving where they are: g, x,
    kind ('nan', 'inf', '-inf'), n (how many of that kind the bucket holds), ordered by g and x.

    Never dropped, never unbounded: each bucket of the panel (`width` of them) keeps the first x
    of each kind per series, and says how many it stands for.
    """
    return f"""
    WITH s AS MATERIALIZED (
        SELECT g, x, CASE WHEN isnan(value) THEN 'nan' WHEN value > 0 THEN 'inf' ELSE '-inf' END
                     AS kind
        FROM {source}),
    r AS (SELECT g, min(x) AS x0, max(x) AS x1 FROM s GROUP BY g),
    k AS (SELECT s.*, {_bucket_expr(max(1, width))} AS bucket FROM s JOIN r USING (g))
    SELECT g, min(x) AS x, kind, count(*) AS n FROM k GROUP BY g, bucket, kind
    ORDER BY g NULLS FIRST, x, kind"""
