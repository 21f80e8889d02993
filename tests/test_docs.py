"""The command reference matches the commands: every flag of every console command is documented, and where
``documentation/usage.md`` gives a default in a table, it is the parser's default."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "documentation"
#: Console command module -> the documentation page that lists its flags.
COMMANDS = {
    "demo": "usage.md", "make_demo_dataset": "usage.md", "verify_dataset": "usage.md",
    "plan_and_preprocess": "usage.md", "train": "usage.md", "predict": "inference.md", "export_model": "inference.md",
    "install_model": "inference.md", "evaluate": "evaluation.md", "plot_overlay": "evaluation.md",
    "convert_hcc_tace_seg": "hcc_tace_seg.md", "convert_msd": "hcc_tace_seg.md", "review": "inference.md",
    "ablate": "evaluation.md", "serve": "serve.md",
}
COMMON = {"-h", "--help", "-v", "--verbose", "-q", "--quiet"}


def parser_of(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    mod = importlib.import_module(f"smoothseg.cli.{module}")
    captured = []
    monkeypatch.setattr(mod, "run", lambda parser, body, argv=None: captured.append(parser) or 0)
    mod.main([])
    return captured[0]


def documented_flags(action: argparse.Action) -> list[str]:
    return [s for s in action.option_strings if s not in COMMON]


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_flag_is_documented(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DOCS / COMMANDS[module]).read_text()
    parser = parser_of(module, monkeypatch)
    missing = []
    for action in parser._actions:
        flags = documented_flags(action)
        if not flags or action.help == argparse.SUPPRESS:
            continue
        if not any(re.search(rf"`{re.escape(flag)}[ `\]|=]", text) for flag in flags):
            missing.append("/".join(flags))
    assert not missing, f"smoothseg_{module}: flags missing from documentation/{COMMANDS[module]}: {missing}"


def _table_defaults(section: str) -> dict[str, str]:
    """``flag -> default cell`` from the section's ``| flag | default | meaning |`` table rows."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) >= 3 and cells[0].startswith("`-"):
            for flag in re.findall(r"`(-{1,2}[\w-]+)", cells[0]):
                rows[flag] = cells[1]
    return rows


def _shown(default) -> str:
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


@pytest.mark.parametrize("module", sorted(m for m, page in COMMANDS.items() if page == "usage.md"))
def test_documented_defaults_are_the_parsers(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DOCS / "usage.md").read_text()
    start = next(m.start() for m in re.finditer(r"^## .*$", text, flags=re.MULTILINE)
                 if f"`smoothseg_{module}`" in m.group(0))
    section = text[start:text.find("\n## ", start + 1)]
    table = _table_defaults(section)
    wrong = []
    for action in parser_of(module, monkeypatch)._actions:
        cell = next((table[f] for f in action.option_strings if f in table), None)
        if cell is None or action.default in (None, False, argparse.SUPPRESS):
            continue
        if _shown(action.default) not in cell.replace("`", ""):
            wrong.append(f"{'/'.join(action.option_strings)}: documented {cell!r}, parser {action.default!r}")
    assert not wrong, f"smoothseg_{module}: " + "; ".join(wrong)


def test_help_lines_name_each_default_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in COMMANDS:
        parser = parser_of(module, monkeypatch)
        for action in parser._actions:
            if action.help in (None, argparse.SUPPRESS):
                continue
            shown = parser._get_formatter()._get_help_string(action)
            assert "(default: None)" not in shown and shown.count("(default:") <= 1, (module, shown)
