"""Redaction: values of secret-looking names never leave the training process.

What is redacted, before an event is queued (so the spool, the journal, the tables, `traintape
show` and every sink only ever hold the marker `***redacted***`):

- the config (`init(config=...)`, stored nested in `run_start` and flattened as params), every
  `log_params` body, the run's `summary` and `log_text`: the value of each key whose name matches
  a rule. Dicts and lists under such a key keep their shape; each value in them is replaced. Key
  names stay, so a reader sees that a key was set. The `metadata` of `log_artifact` likewise,
  and an image's caption as `log_text`'s text (a file's own bytes and a table's cells are the
  caller's to keep clean).
- `argv` (in the run's environment): `--hf-token=VALUE`, `--password VALUE` (the next item,
  unless it is another flag; after a secret-named switch that takes no value, the positional
  argument that follows is hidden too: a command line does not say which flags take values) and
  `name=VALUE` overrides (Hydra's `db.password=VALUE`, `+api_key=VALUE`). One-letter flags
  (`-p VALUE`) name nothing to match and are kept.
- any string in those places holding a URL with a password: `postgres://user:pw@host/db` becomes
  `postgres://user:***redacted***@host/db` (a user name alone, as in `ssh://git@host`, stays).

Kept as they are: metric names and values (numbers, and `log` stays a bare append), booleans,
None and empty strings (they say whether something is set, never what it is), the run's name and
tags, checkpoint events. The environment's other fields are traintape's own (host, pids,
versions, git state); the only environment variable it records is CUDA_VISIBLE_DEVICES. The
environment's `config_sha1` hashes the redacted config: runs that differ only in a secret group
together, and the hash cannot be used to test guesses of a secret.

How a name matches. A name is cut into levels at "." and "/" (nested dicts flatten to dotted
names, so `{"db": {"password": ...}}` and `"db.password"` are alike), each level into lower-case
words at every other non-alphanumeric character and at camelCase boundaries, trailing numbers
dropped: `HF_TOKEN`, `hfToken` and `--hf-token` are [hf, token], `api_key_2` is [api, key]. A
rule (cut the same way: `api_key` is [api, key]) matches where the name's words up to the end of
a level end with the rule's words. So `token` matches `hf_token`, `wandbToken`, `auth.token`, but
not `tokenizer`, `max_tokens` or `pad_token_id` (a count or an id: its last word is another);
`auth` matches `basic_auth` and every key of an `auth` block (`auth.user`), not `author`; `key`
matches `api_key` and `db.key`, not `keyboard` or `num_key_value_heads`. Secrets are named with
their noun last; counts and settings that mention tokens or keys are not.

Rules are DEFAULT_RULES, then the entries of `init(redact=[...])` and of $TRAINTAPE_REDACT
(comma-separated), added to them. An entry starting with "!" keeps the names it matches
(`!label_key`). The innermost level of a name that some rule matches decides; there, the rule
with the most words wins, and a keep rule wins a tie (so `!key` undoes the default `key`, and
with `["!key", "api_key"]` the only names ending in key that stay hidden end in api_key). The
default keep rules are tokenizers' special tokens (`pad_token: "<pad>"`). `init(redact=False)`
or TRAINTAPE_REDACT=off turns redaction off; an `init` argument wins over the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from traintape.errors import ConfigError

REDACTED = "***redacted***"
"""What a secret value is stored as."""

ENV = "TRAINTAPE_REDACT"

DEFAULT_RULES: tuple[str, ...] = (
    # The nouns of issue 13, then spellings people glue or pluralise for the same things.
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "auth",
    "private",
    "apikey",
    "secrets",
    "passwords",
    "credentials",
    "passphrase",
    "authorization",
    "dsn",
    # Special tokens of a tokenizer are strings like "<pad>", not secrets.
    "!pad_token",
    "!eos_token",
    "!bos_token",
    "!unk_token",
    "!mask_token",
    "!sep_token",
    "!cls_token",
)

_OFF = frozenset(("off", "false", "0", "no", "none"))
_LEVEL = re.compile(r"[./]")
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)(?P<password>[^\s/?#]*)@"
)
_ASSIGN = re.compile(r"(?P<lead>[-+~]*)(?P<name>[A-Za-z_][\w.\-/]*)=(?P<value>.*)", re.DOTALL)
_FLAG = re.compile(r"--?(?P<name>[A-Za-z_][\w.\-/]*)")
_NUMBER = re.compile(r"-[0-9.]+")
_CACHE_NAMES = 4096


def words(text: str) -> list[str]:
    """Lower-case words of one level of a name; trailing numbers dropped (`apiKey2` -> api, key)."""
    found = [w.lower() for w in _WORD.findall(text)]
    while found and found[-1].isdigit():
        found.pop()
    return found


def scrub_urls(text: str) -> str:
    """`text` with the password of every URL in it redacted (`scheme://user:PASSWORD@host`)."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(_url_sub, text)


def _url_sub(match: re.Match[str]) -> str:
    if not match["password"]:
        return match[0]
    return f"{match['head']}{REDACTED}@"


def _hide(value: Any) -> Any:
    """`value` with every part that could hold a secret replaced; shape, bools and None kept."""
    if value is None or isinstance(value, bool) or value == "":
        return value
    if isinstance(value, Mapping):
        return {k: _hide(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hide(v) for v in value]
    return REDACTED


class Redaction:
    """The rules of one run; `Redaction.resolve(init's redact=, os.environ)` makes it."""

    def __init__(self, rules: Iterable[str] = DEFAULT_RULES, enabled: bool = True) -> None:
        self.rules = tuple(rules)
        self.enabled = enabled
        # Rules by their last word: a level is checked against the few that can match it.
        self._by_last: dict[str, list[tuple[tuple[str, ...], bool]]] = {}
        for rule in self.rules:
            keep = rule.startswith("!")
            ws = tuple(words(rule[1:] if keep else rule))
            self._by_last.setdefault(ws[-1], []).append((ws, keep))
        self._seen: dict[str, bool] = {}

    @classmethod
    def resolve(cls, redact: Any = None, environ: Mapping[str, str] | None = None) -> Redaction:
        """The rules for `init(redact=...)`: None or True: the defaults plus $TRAINTAPE_REDACT
        ("off" turns redaction off); a list of names: the defaults, the list and the variable's
        names; False: off."""
        if redact is False:
            return cls((), enabled=False)
        setting = (os.environ if environ is None else environ).get(ENV, "")
        from_env = _parse_env(setting)
        if redact is None or redact is True:
            if from_env is None:
                return cls((), enabled=False)
            return cls((*DEFAULT_RULES, *from_env))
        return cls((*DEFAULT_RULES, *_check_rules(redact), *(from_env or ())))

    def secret(self, name: str) -> bool:
        """Whether the value of `name` is redacted (see the module's docstring for the rule)."""
        if not self.enabled:
            return False
        known = self._seen.get(name)
        if known is None:
            known = self._decide(name)
            if len(self._seen) < _CACHE_NAMES:
                self._seen[name] = known
        return known

    def _decide(self, name: str) -> bool:
        levels = [words(level) for level in _LEVEL.split(name)]
        flat: list[str] = []
        ends: list[int] = []
        for level in levels:
            flat.extend(level)
            if level:
                ends.append(len(flat))
        for end in reversed(ends):  # the innermost level a rule matches decides
            best: tuple[int, bool] | None = None  # (words, keep): more words, then keep, win
            for rule, keep in self._by_last.get(flat[end - 1], ()):
                fits = len(rule) <= end and tuple(flat[end - len(rule) : end]) == rule
                if fits and (best is None or (len(rule), keep) > best):
                    best = (len(rule), keep)
            if best is not None:
                return not best[1]
        return False

    def mapping(self, body: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """A copy of a config, params or summary dict (plain values) with secrets redacted."""
        if not self.enabled:
            return dict(body)
        out: dict[str, Any] = {}
        for key, value in body.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                out[key] = self.mapping(value, f"{name}.")
            elif self.secret(name):
                out[key] = _hide(value)
            else:
                out[key] = self._scrub(value, name)
        return out

    def _scrub(self, value: Any, name: str) -> Any:
        """A value under a name that is not secret: URLs' passwords, and dicts in lists by key."""
        if isinstance(value, str):
            return scrub_urls(value)
        if isinstance(value, Mapping):
            return self.mapping(value, f"{name}.")
        if isinstance(value, (list, tuple)):
            return [self._scrub(v, name) for v in value]
        return value

    def value(self, value: Any, name: str = "") -> Any:
        """Any plain value (the summary, which a script may set to anything) under `name`."""
        if isinstance(value, Mapping):
            return self.mapping(value, f"{name}." if name else "")
        if self.secret(name):
            return _hide(value)
        return self._scrub(value, name) if self.enabled else value

    def environment(self, env: Mapping[str, Any]) -> dict[str, Any]:
        """The run's environment with its command line redacted; traintape's own fields (host,
        pids, versions, git state) are kept as they are: liveness and grouping read them."""
        out = dict(env)
        if "argv" in out:
            out["argv"] = self.argv(out["argv"])
        return out

    def text(self, key: str, text: str) -> str:
        """A `log_text` value: redacted under a secret key, else with URLs' passwords redacted."""
        if not self.enabled:
            return text
        if self.secret(key):
            return _hide(text)  # type: ignore[no-any-return]
        return scrub_urls(text)

    def argv(self, argv: Iterable[Any]) -> list[str]:
        """A command line with the values of secret flags and overrides redacted."""
        items = [str(item) for item in argv]
        if not self.enabled:
            return items
        out: list[str] = []
        hide_next = False
        for item in items:
            if hide_next and (not item.startswith("-") or _NUMBER.fullmatch(item)):
                out.append(_hide(item))
                hide_next = False
                continue
            hide_next = False
            assign = _ASSIGN.fullmatch(item)
            if assign is not None and self.secret(assign["name"]):
                out.append(f"{assign['lead']}{assign['name']}={_hide(assign['value'])}")
                continue
            flag = _FLAG.fullmatch(item)
            hide_next = flag is not None and self.secret(flag["name"])
            out.append(scrub_urls(item))
        return out

    def __repr__(self) -> str:
        if not self.enabled:
            return "Redaction(off)"
        return f"Redaction({', '.join(self.rules)})"


def _parse_env(setting: str) -> list[str] | None:
    """The names of $TRAINTAPE_REDACT; None when it turns redaction off."""
    entries = [e.strip() for e in setting.split(",") if e.strip()]
    if len(entries) == 1 and entries[0].lower() in _OFF:
        return None
    if any(e.lower() in _OFF for e in entries):
        msg = f"${ENV}={setting!r}: 'off' turns redaction off and takes no other names"
        raise ConfigError(msg)
    return _check_rules(entries, f"${ENV}")


def _check_rules(rules: Any, where: str = "init(redact=...)") -> list[str]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
        msg = (
            f"{where} takes a list of names to redact (e.g. ['dsn', '!label_key']), None for the "
            f"defaults or False for none, not {type(rules).__name__}"
        )
        raise TypeError(msg)
    out = []
    for rule in rules:
        if not isinstance(rule, str) or not words(rule.strip().removeprefix("!")):
            msg = f"{where}: {rule!r} is not a name with letters or digits to match"
            raise ConfigError(msg)
        out.append(rule.strip())
    return out
