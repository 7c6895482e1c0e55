"""Checkpoints on the training side: a snapshot on the caller's thread (`snapshot`), the durable
file on a background one (`writer`, through `files`; `handle` is what a save returns), retention
on that thread (`retention`), and deletions `traintape replay` carries out once the collector
recorded them (`deletions`). All of it reaches the run through its `EmitterPort`
(emitter/port.py)."""
