"""Bounded YAML: a playbook or config too large or nested too deep is one located error, never a crash.

Before the bounds, a 50 KB playbook nested 25,000 levels (`[[[[...`, `- - - -`, `{a: {a: ...`)
killed `lifecycle check` with SIGSEGV inside libyaml's C composer, so these run the real command
in a subprocess: a crash there is a negative exit code, not a failed assertion in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.errors import AuthorError
from infra.yamlsource import MAX_BYTES, MAX_DEPTH, depth_bound, load_yaml, parse_yaml_text, surely_shallow

LIFECYCLE = str(Path(sys.executable).with_name("lifecycle"))
DEEP = 25_000


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LIFECYCLE, "check", *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ})


def assert_refused(result: subprocess.CompletedProcess, located: str, code: str = "L159") -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}: {out[-2000:]}"
    assert "Traceback" not in out, out[-2000:]
    assert f"{located} error[{code}]" in out, out[-2000:]
    assert "\n  hint: " in out


DEEP_PLAYBOOKS = {
    "flow_sequences": ("name: flow_sequences\nsegments: " + "[" * DEEP + "]" * DEEP + "\n", "flow_sequences.yaml:2:74:"),
    "flow_mappings": ("name: flow_mappings\nsegments: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n",
                      "flow_mappings.yaml:2:263:"),
    "unclosed": ("name: unclosed\nsegments: " + "[" * DEEP + "\n", "unclosed.yaml:2:74:"),
    "compact_sequences": ("name: compact_sequences\nsegments:\n" + "- " * DEEP + "x\n", "compact_sequences.yaml:3:127:"),
    "top_level_sequences": ("- " * DEEP + "x\n", "top_level_sequences.yaml:1:129:"),
    "complex_keys": ("? " * DEEP + "x\n", "complex_keys.yaml:1:129:"),
    "block_mappings": ("name: block_mappings\nsegments:\n" + "".join(" " * i + "a:\n" for i in range(1, 300)),
                       "block_mappings.yaml:66:65:"),
}


@pytest.mark.parametrize("case", sorted(DEEP_PLAYBOOKS))
def test_check_refuses_a_deeply_nested_playbook_with_a_located_error(tmp_path, case):
    text, located = DEEP_PLAYBOOKS[case]
    (tmp_path / f"{case}.yaml").write_text(text)
    result = check(f"{case}.yaml", cwd=tmp_path)
    assert_refused(result, located)
    assert f"nests more than {MAX_DEPTH} levels deep" in result.stderr


def test_check_refuses_a_deeply_nested_config_file(tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("channels:\n  sms: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n")
    result = check("--config", str(config), "churn_winback", cwd=tmp_path)
    assert_refused(result, f"{config}:2:256:")
    assert "the config file nests more than" in result.stderr


def test_check_refuses_a_file_over_the_size_limit_unread(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# a comment line\n" * (MAX_BYTES // 17 + 10))
    result = check("big.yaml", cwd=tmp_path)
    assert_refused(result, "big.yaml:1:1:", code="L106")
    assert "larger than 1 MiB" in result.stderr
    config = tmp_path / "lifecycle.yaml"
    config.write_text("channels: {}\n" + "#" * (MAX_BYTES + 1) + "\n")
    assert_refused(check("--config", str(config), "churn_winback", cwd=tmp_path), f"{config}:1:1:", code="L106")


def test_the_limit_itself_is_allowed_and_one_more_level_is_not(tmp_path):
    at_limit = tmp_path / "ok.yaml"
    at_limit.write_text("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    doc = load_yaml(at_limit)
    node, depth = doc.data["a"], 2
    while node:
        node, depth = node[0], depth + 1
    assert depth == MAX_DEPTH
    over = tmp_path / "over.yaml"
    over.write_text("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n")
    with pytest.raises(AuthorError) as err:
        load_yaml(over)
    assert err.value.code == "L159" and err.value.problems[0].startswith(f"{over}:1:{3 + MAX_DEPTH}: error[L159]")


def test_aliases_nested_into_each_other_are_bounded_too(tmp_path):
    lines = ["x0: &x0 [1]"] + [f"x{i}: &x{i} [*x{i - 1}]" for i in range(1, 100)]
    with pytest.raises(AuthorError) as err:
        parse_yaml_text("\n".join(lines) + "\n", tmp_path / "aliases.yaml")
    first = err.value.problems[0].splitlines()[0]
    assert first == (f"{tmp_path / 'aliases.yaml'}:{MAX_DEPTH}:1: error[L159] the file nests more than "
                     f"{MAX_DEPTH} levels deep once its aliases are expanded")


def test_a_very_long_line_is_shown_as_a_window_around_the_caret(tmp_path):
    with pytest.raises(AuthorError) as err:
        parse_yaml_text("a: " + "[" * 100_000 + "\n", tmp_path / "long.yaml")
    source, caret = err.value.problems[0].splitlines()[1:3]
    assert len(source) < 200 and source.endswith("...")
    assert caret.index("^") < len(source) and source[caret.index("^")] == "["


def test_windows_line_endings_keep_positions(tmp_path):
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"name: crlf\r\nsegments:\r\n  - name: a\r\n    when: x\r\n")
    doc = load_yaml(path)
    assert doc.data == {"name": "crlf", "segments": [{"name": "a", "when": "x"}]}
    assert doc.locate(("segments", 0, "when")).line == 4


def _real_depth(text: str) -> int:
    depth = deepest = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            deepest = max(deepest, depth)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return deepest


_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet="ab -:[]{}#'\"?", max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="ab", min_size=1, max_size=3),
                                                                inner, max_size=3),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(_values, st.sampled_from([None, True, False]), st.integers(1, 4))
def test_the_cheap_bound_is_never_below_the_real_depth(value, flow_style, indent):
    """The pre-scan may overestimate (then the exact scan decides), never underestimate: an
    underestimate would let a deep file through to the C composer."""
    text = yaml.safe_dump(value, default_flow_style=flow_style, indent=max(indent, 2), width=40)
    assert depth_bound(text) >= _real_depth(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=" \t-?:[]{}ab#\n", max_size=200))
def test_the_quick_screen_implies_the_bound(text):
    """`surely_shallow` (two counts and one regex search) never lets through what `depth_bound` would not."""
    if surely_shallow(text):
        assert depth_bound(text) <= MAX_DEPTH


def test_shipped_playbooks_are_settled_by_the_cheap_bound():
    """Normal files never pay for the exact scan (check_bench measures the rest)."""
    from infra.settings import REPO_ROOT, SHIPPED_PLAYBOOKS

    for path in [*SHIPPED_PLAYBOOKS.glob("*.yaml"), REPO_ROOT / "lifecycle.yaml"]:
        assert surely_shallow(path.read_text()), path
