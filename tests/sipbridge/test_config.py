"""Config loading: every kind of bad input names the key path and the file line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sipbridge.agents.base import AgentError
from sipbridge.agents.script import FlowError, load_flow
from sipbridge.config import (
    SECRET_MASK,
    ConfigError,
    default_config_text,
    dump_masked_yaml,
    load_config,
    masked_dict,
    schema_markdown,
)
from sipbridge.dialer.campaign import load_campaign

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def issues_of(
    path: Path | None, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, env=env or {})
    return [str(issue) for issue in info.value.issues]


def test_embedded_default_is_config_default_yaml() -> None:
    assert (ROOT / "config" / "default.yaml").read_text(encoding="utf-8") == default_config_text()
    loaded = load_config(None, env={})
    assert loaded.source == "<embedded default>"
    assert loaded.config.engine.kind == "espeak"
    assert loaded.config.http.bearer_token is None


@pytest.mark.parametrize("name", ["default.yaml", "production.example.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    env = {"SIPBRIDGE_HTTP_TOKEN": "t0k3n", "SIP_TRUNK_PASSWORD": "pw", "LLM_API_KEY": "k"}
    loaded = load_config(ROOT / "config" / name, env=env)
    assert loaded.config.sip.max_calls >= 1


# Table of (yaml text, expected "source: key: message" fragment). Line numbers are 1-based file lines.
BAD_CONFIGS = [
    ("sip:\n  port: 5060\n  colour: blue\n", "cfg.yaml:3: sip.colour: unknown key"),
    ("sip:\n  port: fivethousand\n", "cfg.yaml:2: sip.port: Input should be a valid integer"),
    ("sip:\n  port: 70000\n", "cfg.yaml:2: sip.port: Input should be less than or equal to 65535"),
    ("http:\n  bind: 127.0.0.1\n  port: -1\n", "cfg.yaml:3: http.port:"),
    ("sip:\n  codecs: [PCMU, OPUS]\n", "cfg.yaml:2: sip.codecs[1]: Input should be 'PCMU', 'PCMA' or 'G722'"),
    (
        "sip:\n  allowed_sources:\n    - 10.0.0.0/8\n    - not-a-net\n",
        "cfg.yaml:2: sip.allowed_sources: 'not-a-net'",
    ),
    ("engine:\n  kind: piper\n", "cfg.yaml:2: engine.kind: Input should be 'dia2' or 'espeak'"),
    ("engine:\n  dia2:\n    dtype: float16\n", "cfg.yaml:3: engine.dia2.dtype:"),
    ("vad:\n  min_turn_ms: 5000\n  max_turn_ms: 4000\n", "cfg.yaml:1: vad: max_turn_ms must be greater"),
    ("vad:\n  stop_hangover_ms: 300\n  pause_ms: 300\n", "cfg.yaml:1: vad: pause_ms must be below"),
    ("vad:\n  preroll_ms: 2000\n", "cfg.yaml:2: vad.preroll_ms: Input should be less than or equal to 1000"),
    ("sip:\n  trunk:\n    username: bridge\n", "cfg.yaml:2: sip.trunk: username and password go together"),
    (
        "media:\n  rtp_port_min: 5000\n  rtp_port_max: 4000\n",
        "cfg.yaml:1: media: rtp_port_max must be greater",
    ),
    (
        "sip:\n  trunk:\n    register: true\n    username: u\n",
        "cfg.yaml:2: sip.trunk: register is on but registrar",
    ),
    (
        "sip:\n  trunk:\n    registrar: carrier.example\n",
        "cfg.yaml:3: sip.trunk.registrar: must be a SIP URI",
    ),
    ("http:\n  bind: 0.0.0.0\n", "cfg.yaml:1: http: bearer_token must be set when binding the non-loopback"),
    ("agent:\n  kind: webhook\n", "cfg.yaml:1: agent: kind is webhook but webhook.url is not set"),
    ("vad: [1, 2]\n", "cfg.yaml:1: vad: Input should be a valid dictionary"),
    ("nosuchsection: 1\n", "cfg.yaml:1: nosuchsection: unknown key"),
    ("sip:\n  port: 5060\n  port: 5061\n", "cfg.yaml:3: sip.port: key given twice"),
    ("sip:\n  port: [\n", "cfg.yaml:3: not valid YAML"),
    ("- just\n- a list\n", "cfg.yaml:1: the top level must be a mapping"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_names_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    problems = issues_of(write(tmp_path, text))
    assert any(expected in problem for problem in problems), problems
    # The file path is part of the location so an operator knows which file to open.
    assert all(str(tmp_path) in problem for problem in problems), problems


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    problems = issues_of(write(tmp_path, "sip:\n  port: x\nhttp:\n  port: y\n  extra: 1\n"))
    assert len(problems) == 3, problems


def test_env_substitution_and_missing_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        sip:
          trunk:
            register: true
            registrar: sip:carrier.example
            username: ${TRUNK_USER}
            password: ${TRUNK_PASS}
        http:
          port: ${HTTP_PORT:-9090}
        """,
    )
    loaded = load_config(path, env={"TRUNK_USER": "alice", "TRUNK_PASS": "s3cret"})
    trunk = loaded.config.sip.trunk
    assert trunk.username == "alice"
    assert trunk.password is not None and trunk.password.get_secret_value() == "s3cret"
    # ${VAR:-default} applies when unset; the substituted string is then validated as an int.
    assert loaded.config.http.port == 9090

    problems = issues_of(path, env={"TRUNK_USER": "alice"})
    assert problems == [f"{path}:6: sip.trunk.password: environment variable TRUNK_PASS is not set"]


def test_secrets_are_masked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        sip:
          trunk: {register: true, registrar: "sip:c.example", username: u, password: "${P}"}
        http: {bearer_token: tok-123}
        agent: {llm: {api_key: key-456}}
        """,
    )
    config = load_config(path, env={"P": "pw-789"}).config
    text = dump_masked_yaml(config)
    for secret in ("pw-789", "tok-123", "key-456"):
        assert secret not in text
        assert secret not in repr(config)
    masked = masked_dict(config)
    assert masked["sip"]["trunk"]["password"] == SECRET_MASK
    assert masked["sip"]["trunk"]["register"] is True
    assert masked["http"]["bearer_token"] == SECRET_MASK


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n")
    loaded = load_config(path, ["http.port=9000", "sip.codecs=[PCMA, PCMU]", "vad.backend=webrtc"], env={})
    assert loaded.config.http.port == 9000
    assert loaded.config.sip.codecs == ["PCMA", "PCMU"]
    assert loaded.config.vad.backend == "webrtc"

    assert issues_of(path, ("http.port=abc",)) == [
        "--set: http.port: Input should be a valid integer, unable to parse string as an integer (got 'abc')"
    ]
    assert issues_of(path, ("http.nope=1",)) == ["--set: http.nope: unknown key"]
    assert issues_of(path, ("http.port.deeper=1",)) == [
        "--set: http.port: is not a section, cannot set a key inside it"
    ]
    assert "not of the form dotted.key=value" in issues_of(path, ("http.port",))[0]


def test_unreadable_file(tmp_path: Path) -> None:
    problems = issues_of(tmp_path / "missing.yaml")
    assert "cannot read config file" in problems[0] and "missing.yaml" in problems[0]
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    assert "not UTF-8" in issues_of(tmp_path / "bin.yaml")[0]


def test_workers_follow_the_pjsua2_cap() -> None:
    for max_calls, workers in [(1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (100, 25)]:
        config = load_config(None, [f"sip.max_calls={max_calls}"], env={}).config
        assert config.sip.workers == workers


def test_schema_reference_is_current() -> None:
    """config/SCHEMA.md is generated; this fails when a key changes and the doc was not regenerated."""
    text = schema_markdown()
    assert (ROOT / "config" / "SCHEMA.md").read_text(encoding="utf-8") == text
    for key in (
        "`sip.trunk.register`",
        "`engine.dia2.cfg_scale`",
        "`vad.stop_hangover_ms`",
        "`http.bearer_token`",
    ):
        assert key in text


def test_vad_section_maps_onto_the_segmenter_settings() -> None:
    """Same names and same defaults on both sides: the YAML keys are what audio/vad documents."""
    from dataclasses import fields, replace

    from audio.vad import VadSettings

    config = load_config(None, ["vad.backend=webrtc", "vad.stop_hangover_ms=700"], env={}).config
    settings = config.vad.segmenter_settings()
    assert settings.backend == "webrtc" and settings.stop_hangover_ms == 700
    defaults = load_config(None, env={}).config.vad.segmenter_settings()
    # Two differences on purpose: the bridge asks for pause events (early ASR), audio/vad sends none unasked;
    # the bridge gates Silero (its workers' largest per-call cost), audio/vad runs it plain unless asked.
    assert defaults == replace(VadSettings(), pause_ms=150, gate=True)
    assert {f.name for f in fields(VadSettings)} <= set(type(config.vad).model_fields)


# ------------------------------------------------------------------ hostile and sloppy input (issue 12)


def test_numbers_and_booleans_do_not_stand_in_for_each_other(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        sip:
          max_calls: yes
        http:
          port: on
        storage:
          record_calls: 1
        logging:
          json_format: "maybe"
        """,
    )
    assert issues_of(path) == [
        f"{path}:2: sip.max_calls: must be a number, not the boolean true (YAML reads unquoted yes/no/on/off"
        " as booleans) (got True)",
        f"{path}:4: http.port: must be a number, not the boolean true (YAML reads unquoted yes/no/on/off as"
        " booleans) (got True)",
        f"{path}:6: storage.record_calls: must be true or false (got 1)",
        f"{path}:8: logging.json_format: must be true or false (got 'maybe')",
    ]
    # `${ENV}` values are strings: digits still make a number and true/false/yes/no a boolean.
    env_path = write(tmp_path, "sip:\n  max_calls: ${CALLS}\nstorage:\n  record_calls: ${REC}\n")
    config = load_config(env_path, env={"CALLS": "8", "REC": "false"}).config
    assert config.sip.max_calls == 8 and config.storage.record_calls is False
    assert "must be true or false" in issues_of(env_path, env={"CALLS": "8", "REC": "1"})[0]


def test_campaigns_and_flows_are_as_strict(tmp_path: Path) -> None:
    (tmp_path / "contacts.csv").write_text("number\n+14155550100\n", encoding="utf-8")
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(
        'name: x\ncaller_id: "+14155550100"\nagent: {kind: llm}\ncontacts: contacts.csv\n'
        "limits: {concurrency: yes}\namd: {enabled: 0}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_campaign(campaign, env={})
    assert [issue.path for issue in info.value.issues] == ["limits.concurrency", "amd.enabled"]
    flow = tmp_path / "flow.yaml"
    # In flows yes/no are words callers say, so `interruptible: no` is the word "no": still a boolean.
    flow.write_text("turns:\n  - say: Hello\n    interruptible: no\n")
    assert load_flow(flow).turns[0].interruptible is False  # type: ignore[union-attr]
    flow.write_text("turns:\n  - say: Hello\n    interruptible: 0\n")
    with pytest.raises(FlowError) as flow_error:
        load_flow(flow)
    assert "turns[0].interruptible: must be true or false" in str(flow_error.value)


def test_every_bad_override_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n")
    problems = issues_of(
        path, ("broken", "sip.port=[", "sip.max_calls=yes", "http.port=abc", "http.nope=1", "vad.x.y=1")
    )
    assert problems == [
        "--set: override 'broken' is not of the form dotted.key=value",
        "--set: sip.port: value is not valid YAML: while parsing a flow node\nexpected the node content, but"
        " found '<stream end>'\n  in \"<unicode string>\", line 1, column 2:\n    [\n     ^",
        "--set: sip.max_calls: must be a number, not the boolean true (YAML reads unquoted yes/no/on/off as"
        " booleans) (got True)",
        "--set: vad.x: unknown key",
        "--set: http.port: Input should be a valid integer, unable to parse string as an integer (got 'abc')",
        "--set: http.nope: unknown key",
    ]


def _alias_bomb(levels: int) -> str:
    """`levels` lists of nine aliases of the list before: 9**levels leaves from a few hundred bytes."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bombs_cycles_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    # Nine levels (432 bytes, 490 million nodes expanded) took 67 s and 4.5 GB before this was bounded; six
    # levels (670 000 nodes) are enough to cross the bound and quick to refuse either way.
    bomb = _alias_bomb(6)
    assert issues_of(write(tmp_path, bomb)) == [
        f"{tmp_path / 'cfg.yaml'}: YAML refused: aliases (*name) expand 22 written nodes to 672610; at most"
        " 100000 more than written are allowed"
    ]
    (tmp_path / "flow.yaml").write_text(bomb)
    with pytest.raises(AgentError, match=r"aliases \(\*name\) expand 22 written nodes"):
        load_flow(tmp_path / "flow.yaml")
    (tmp_path / "campaign.yaml").write_text(bomb)
    with pytest.raises(ConfigError, match=r"YAML refused: aliases"):
        load_campaign(tmp_path / "campaign.yaml", env={})
    cycle = issues_of(write(tmp_path, "sip: &s\n  trunk: *s\n"))
    assert cycle == [
        f"{tmp_path / 'cfg.yaml'}: YAML refused: an alias refers to a node that contains it (a cycle)"
    ]
    deep = issues_of(write(tmp_path, "sip:\n  codecs: " + "[" * 20_000 + "]" * 20_000 + "\n"))
    assert deep == [f"{tmp_path / 'cfg.yaml'}: YAML refused: nested too deeply"]
    assert "a: value is not valid YAML: an alias refers" in issues_of(None, ("a=&a [*a]",))[0]
    # Aliases within reason are still YAML: one anchor used twice.
    shared = write(tmp_path, "sip:\n  allowed_sources: &nets [10.0.0.0/8]\nmedia: {}\nx: *nets\n")
    assert issues_of(shared) == [f"{shared}:4: x: unknown key"]


def test_echo_canceller_is_named_when_unknown_or_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(None, env={}).config.vad.echo_canceller == "webrtc"
    assert load_config(None, ["vad.echo_canceller=none"], env={}).config.vad.echo_canceller == "none"
    (issue,) = issues_of(None, ("vad.echo_canceller=speex",))
    assert "vad.echo_canceller" in issue
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "pywebrtc_audio" else real(name)
    )
    (issue,) = issues_of(None, ())
    assert "vad.echo_canceller" in issue and "pywebrtc-audio" in issue, issue
