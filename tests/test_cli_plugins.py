"""Command plugins (entry-point group ``synthdetect.commands``): synthdetect's own load first,
another package cannot take a built-in command's name, and one that fails leaves nothing."""

from __future__ import annotations

import pytest

from tests.pluginfiles import install_plugin

pytestmark = pytest.mark.unit

_COLLIDE = """
def register(sub):
    sub.add_parser("serve", help="a plugin's serve").set_defaults(func=lambda a: 7)

def register_score(sub):
    sub.add_parser("scorer", aliases=["score"]).set_defaults(func=lambda a: 7)

def register_fine(sub):
    sub.add_parser("extra-command").set_defaults(func=lambda a: 0)
"""

_HALF = """
from detector.methods import Kind, PerImageMethod, register_method

@register_method("half_command_method")
class Half(PerImageMethod):
    kind = Kind.METADATA

    def score_one(self, image):
        return self.result(0.99, decisive=True)

import optional_dependency_missing_xyz

def register(sub):
    sub.add_parser("half")
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch, method_registry):
    site = install_plugin(
        tmp_path / "site",
        "thirdparty",
        {"synthdetect.commands": {
            # named to load before `serving` in name order, as it did
            "aaa": "collide:register", "aab": "collide:register_score",
            "aac": "collide:register_fine", "half1": "half:register", "half2": "half:register",
        }},
        {"collide": _COLLIDE, "half": _HALF},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    return method_registry


def test_a_plugin_cannot_replace_a_built_in_command(plugins, capsys):
    """A third party's `serve` (loaded before `serving` by name) replaced the server and made
    serving's own plugin fail; a `score` alias would have taken `score`."""
    from detector import cli

    parser = cli.build_parser()
    err = capsys.readouterr().err.splitlines()
    assert (
        "synthdetect: command 'serve' of plugin 'aaa' refused: a built-in command has that name"
        in err
    )
    assert (
        "synthdetect: command 'score' of plugin 'aab' refused: a built-in command has that name"
        in err
    )
    assert not any("'serving'" in line for line in err)
    assert parser.parse_args(["score", "x.jpg"]).func is cli._cmd_score
    assert parser.parse_args(["serve"]).func.__module__ == "serving.cli"
    assert parser.parse_args(["extra-command"]).func(None) == 0  # a new name is welcome


def test_a_plugin_that_fails_leaves_no_method_and_says_why(plugins, capsys):
    """A plugin that failed after registering a method was reported unavailable, its method
    still ran (decisive, here), and loading its module again said 'already registered',
    hiding the real error."""
    from detector import cli

    cli.build_parser()
    err = capsys.readouterr().err.splitlines()
    real = "No module named 'optional_dependency_missing_xyz'"
    assert f"synthdetect: command 'half1' unavailable: {real}" in err
    assert f"synthdetect: command 'half2' unavailable: {real}" in err
    assert "half_command_method" not in plugins
