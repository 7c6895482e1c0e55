"""Redaction rules (traintape.emitter.redact), and that an Emitter applies them before anything
leaves the process: the spool file it writes when no collector answers holds no secret."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from traintape.emitter import Emitter
from traintape.emitter.redact import ENV, REDACTED, Redaction, scrub_urls
from traintape.emitter.values import flatten
from traintape.errors import ConfigError

SECRET = "hunter2-s3cr3t-value"

SECRET_NAMES = [
    "api_key",
    "API_KEY",
    "apiKey",
    "APIKey",
    "apikey",
    "db.password",
    "db/password",
    "wandb_token",
    "HF_TOKEN",
    "hfToken",
    "hf-token",
    "token",
    "auth_token",
    "basic_auth",
    "auth.user",
    "credentials.aws.user",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "client_secret",
    "AWS_SECRET_ACCESS_KEY",
    "passwd",
    "db_password_2",
    "private_key",
    "sentry_dsn",
    "authorization",
]

KEPT_NAMES = [
    "tokenizer",
    "tokenizer_name",
    "max_tokens",
    "num_tokens",
    "pad_token_id",
    "pad_token",
    "tokenizer.eos_token",
    "author",
    "keyboard",
    "monkey",
    "num_key_value_heads",
    "key_dim",
    "AWS_ACCESS_KEY_ID",
    "secret_key_base_url_len",
    "private_dataset",
    "lr",
    "学习率",
    "",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_match(name: str) -> None:
    """A name whose level ends with a default rule's words is secret, in any case or style."""
    assert Redaction().secret(name)


@pytest.mark.parametrize("name", KEPT_NAMES)
def test_counts_settings_and_lookalikes_do_not_match(name: str) -> None:
    """Names that only contain a rule's letters (tokenizer, author), end in another word
    (max_tokens, pad_token_id) or are kept by a default keep rule (pad_token) are not secret."""
    assert not Redaction().secret(name)


def test_config_values_are_redacted_and_keys_shapes_and_flags_kept() -> None:
    """Secret values become the marker at any depth; key names, dict and list shapes, booleans,
    None and empty strings stay; other values are unchanged except for URL passwords."""
    config = {
        "lr": 0.1,
        "api_key": SECRET,
        "db": {"password": 123456, "host": "db1", "url": f"postgres://me:{SECRET}@db1/x"},
        "auth": {"enabled": True, "user": "me", "scopes": ["a", "b"]},
        "wandb_token": None,
        "hf_token": "",
        "tokens": [{"name": "t1", "token": SECRET}],
        "max_tokens": 512,
        "tokenizer": "gpt2",
    }
    assert Redaction().mapping(config) == {
        "lr": 0.1,
        "api_key": REDACTED,
        "db": {"password": REDACTED, "host": "db1", "url": f"postgres://me:{REDACTED}@db1/x"},
        "auth": {"enabled": True, "user": REDACTED, "scopes": [REDACTED, REDACTED]},
        "wandb_token": None,
        "hf_token": "",
        "tokens": [{"name": "t1", "token": REDACTED}],
        "max_tokens": 512,
        "tokenizer": "gpt2",
    }


def test_nested_and_flattened_forms_redact_alike() -> None:
    """Redacting a nested config then flattening it equals flattening then redacting (params)."""
    config = {"db": {"password": SECRET, "port": 5432}, "opt": {"lr": 1e-3}, "auth": {"x": 1}}
    redaction = Redaction()
    assert flatten(redaction.mapping(config)) == redaction.mapping(flatten(config))


def test_argv_flags_overrides_and_urls() -> None:
    """`--name=VALUE`, `--name VALUE`, Hydra `name=VALUE` and URL passwords are redacted; other
    flags, a flag after a secret switch and the script stay."""
    argv = [
        "train.py",
        f"--hf-token={SECRET}",
        "--password",
        SECRET,
        f"db.password={SECRET}",
        f"++wandb.api_key={SECRET}",
        "--use-auth-token",
        "--lr",
        "0.1",
        "--db-url",
        f"mysql://root:{SECRET}@h:3306/db",
        "--max-tokens",
        "512",
        "tokenizer=gpt2",
        "--token",
        "-5",
        "--private",
    ]
    assert Redaction().argv(argv) == [
        "train.py",
        f"--hf-token={REDACTED}",
        "--password",
        REDACTED,
        f"db.password={REDACTED}",
        f"++wandb.api_key={REDACTED}",
        "--use-auth-token",
        "--lr",
        "0.1",
        "--db-url",
        f"mysql://root:{REDACTED}@h:3306/db",
        "--max-tokens",
        "512",
        "tokenizer=gpt2",
        "--token",
        REDACTED,
        "--private",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"postgres://user:{SECRET}@host/db", f"postgres://user:{REDACTED}@host/db"),
        (f"see redis://:{SECRET}@cache:6379 and", f"see redis://:{REDACTED}@cache:6379 and"),
        ("postgres://u:p@ss@host/db", f"postgres://u:{REDACTED}@host/db"),
        (f"jdbc:postgresql://u:{SECRET}@h/db", f"jdbc:postgresql://u:{REDACTED}@h/db"),
        ("ssh://git@github.com/org/repo", "ssh://git@github.com/org/repo"),
        ("http://host:8080/path?a=b@c", "http://host:8080/path?a=b@c"),
        ("https://user:@host/x", "https://user:@host/x"),
        ("no url here: a:b@c", "no url here: a:b@c"),
    ],
)
def test_url_passwords_are_redacted_and_other_urls_kept(text: str, expected: str) -> None:
    """Only the password part of a URL's user info is replaced; ports and user names stay."""
    assert scrub_urls(text) == expected


def test_text_under_a_secret_key_or_with_a_url_password() -> None:
    """log_text: the whole text under a secret key; elsewhere only URL passwords."""
    redaction = Redaction()
    assert redaction.text("authorization", f"Bearer {SECRET}") == REDACTED
    assert redaction.text("sample", f"got s3://k:{SECRET}@b/x") == f"got s3://k:{REDACTED}@b/x"
    assert redaction.text("sample", "a token is a word piece") == "a token is a word piece"


def test_list_adds_rules_and_bang_keeps_with_the_longest_rule_deciding() -> None:
    """A list adds rules; "!name" keeps matching names; the innermost matching level decides,
    the rule with the most words wins there, and a keep rule wins a tie."""
    redaction = Redaction.resolve(["webhook_url", "!label_key", "!auth.type"], environ={})
    assert redaction.secret("slack.webhook_url") and redaction.secret("api_key")
    assert not redaction.secret("data.label_key")
    assert not redaction.secret("auth.type") and redaction.secret("auth.user")
    only_api = Redaction.resolve(["!key", "api_key"], environ={})
    assert only_api.secret("hf_api_key") and not only_api.secret("label_key")
    inner = Redaction.resolve(["!auth"], environ={})
    assert inner.secret("auth.token") and not inner.secret("auth.user")


def test_environment_variable_adds_rules_or_turns_redaction_off() -> None:
    """$TRAINTAPE_REDACT adds comma-separated rules; "off" turns redaction off unless init's
    argument says otherwise; False turns it off whatever the variable says."""
    added = Redaction.resolve(None, environ={ENV: " webhook_url , !label_key,"})
    assert added.secret("webhook_url") and added.secret("api_key")
    assert not added.secret("label_key")
    off = Redaction.resolve(None, environ={ENV: "OFF"})
    assert not off.secret("api_key")
    assert off.mapping({"api_key": SECRET}) == {"api_key": SECRET}
    assert off.argv(["--token", SECRET]) == ["--token", SECRET]
    assert off.text("token", f"redis://:{SECRET}@h") == f"redis://:{SECRET}@h"
    assert Redaction.resolve(["dsn"], environ={ENV: "off"}).secret("api_key")
    explicit = Redaction.resolve(False, environ={ENV: "webhook_url"})
    assert not explicit.secret("webhook_url") and not explicit.secret("password")
    assert Redaction.resolve(True, environ={}).secret("password")


@pytest.mark.parametrize(
    ("redact", "environ", "error", "match"),
    [
        ("api_key", {}, TypeError, "list of names"),
        (42, {}, TypeError, "list of names"),
        (["ok", ""], {}, ConfigError, "''"),
        (["!", "x"], {}, ConfigError, "'!'"),
        ([3], {}, ConfigError, "3"),
        (None, {ENV: "off,dsn"}, ConfigError, ENV),
        (None, {ENV: "dsn,__"}, ConfigError, ENV),
    ],
)
def test_bad_settings_raise_naming_where(redact, environ, error, match) -> None:
    """A str instead of a list, an entry without letters or digits, or "off" among names raise
    an error that names the argument or the variable."""
    with pytest.raises(error, match=match):
        Redaction.resolve(redact, environ=environ)


def _spooled_run(store: Path, monkeypatch: pytest.MonkeyPatch, **options) -> tuple[Emitter, bytes]:
    """A run with a planted secret everywhere, finished with no collector: its spool's bytes."""
    monkeypatch.setattr(sys, "argv", ["train.py", f"--hf-token={SECRET}", "--password", SECRET])
    run = Emitter(
        "p",
        config={"api_key": SECRET, "db": {"password": SECRET, "url": f"pg://u:{SECRET}@h"}},
        store=store,
        **options,
    )
    run.log_params({"wandb": {"token": SECRET}, "max_tokens": 512})
    run.log_text("authorization", SECRET)
    run.summary["client_secret"] = SECRET
    report = run.finish(timeout=0.3, wait_visible=False)
    assert report.spooled and report.spool_path is not None
    return run, report.spool_path.read_bytes()


@pytest.mark.slow  # no collector, but init's environment runs `uname -p` (platform.platform)
def test_an_emitter_redacts_before_anything_leaves_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config, run.config, params, text, summary and argv reach the spool (what the collector
    would get) redacted; with redact=False the same run carries the secret (the check sees it)."""
    run, spooled = _spooled_run(tmp_path / "store", monkeypatch)
    assert SECRET.encode() not in spooled
    assert spooled.count(REDACTED.encode()) == 11  # 3 config, 3 as params, 2 argv, 3 more
    assert b"max_tokens" in spooled and b"api_key" in spooled  # names stay
    assert run.config["api_key"] == REDACTED
    _, plain = _spooled_run(tmp_path / "plain", monkeypatch, redact=False)
    assert plain.count(SECRET.encode()) == 11 and REDACTED.encode() not in plain


def test_a_bad_redact_argument_fails_init(tmp_path: Path) -> None:
    """init(redact="api_key") is refused before the run starts."""
    with pytest.raises(TypeError, match="redact"):
        Emitter("p", store=tmp_path / "store", redact="api_key")


def test_artifact_metadata_is_redacted_before_it_is_recorded(tmp_path: Path) -> None:
    """`log_artifact(metadata=...)`: a secret-looking key's value never reaches the event (or
    the store); other keys and the metadata's shape stay."""
    em = Emitter("p", store=tmp_path / "store", address=f"ipc://{tmp_path}/nobody.sock")
    try:
        meta = {"opset": 17, "hub": {"api_key": "s3cret-value"}, "url": "https://u:pw@h/x"}
        body = em.log_artifact(b"weights", name="model.bin", metadata=meta).result(30)
        assert body["metadata"] == {
            "opset": 17,
            "hub": {"api_key": REDACTED},
            "url": f"https://u:{REDACTED}@h/x",
        }
        assert meta["hub"] == {"api_key": "s3cret-value"}  # the caller's dict is left alone
    finally:
        em.finish(timeout=0.1)
