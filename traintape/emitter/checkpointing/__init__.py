"""Checkpoints on the training side: a snapshot on the caller's thread (`snapshot`), the durable
file on a background one (`writer`, through `files`), and deletions carried out once the collector
recorded them (`deletions`)."""
