"""`traintape ui`: a live local dashboard over a store (`pip install traintape[ui]`).

`server` is the Starlette app (routes, static files, the token check), `api` answers the runs
table and a run's page, `series` the charts' data, downsampled in DuckDB by `downsample`. The
page itself (static/) draws with the plotly.min.js of the plotly package, served from here.
Nothing of this is imported by `import traintape`.
"""
