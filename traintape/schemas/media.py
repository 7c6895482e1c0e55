"""How a list of media values under one key is named in the store: `log({"samples": [Image,
...]})` records one artifact event per item, named `samples/0`, `samples/1`, ... The emitter
names them (`item_name`); readers that show a list together (the dashboard, the W&B sink's
gallery) take the names apart (`listed`)."""

from __future__ import annotations


def item_name(key: str, index: int) -> str:
    """The name of the `index`-th media value of a list logged under `key`."""
    return f"{key}/{index}"


def listed(name: str) -> tuple[str, int | None]:
    """(key, index) of a name `item_name` made; (name, None) for any other name."""
    key, slash, tail = name.rpartition("/")
    if slash and key and tail.isascii() and tail.isdigit() and tail == str(int(tail)):
        return key, int(tail)
    return name, None
