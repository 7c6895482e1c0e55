"""The read side: DuckDB views over a store (`store`), questions about runs (`history`), and
metric curves as images (`plot`). Loaded by readers only: a training process never imports it."""
