"""Shell completion and the man page, generated from the command line's own parser.

bash and zsh come from shtab and the man page from argparse-manpage; shtab
has no fish, so fish's ``complete`` lines are written here from the same
parser (a fish script is one line per option and subcommand).
"""

from __future__ import annotations

import argparse

from . import __version__

SHELLS = ("bash", "zsh", "fish")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``shell`` for ``parser``."""
    if shell == "fish":
        return fish(parser)
    import shtab

    return shtab.complete(parser, shell)


def man_page(parser: argparse.ArgumentParser) -> str:
    """``cowfs(1)`` in roff."""
    from argparse_manpage.manpage import Manpage

    data = {"project_name": "cowfs", "version": __version__, "description": parser.description,
            "url": "", "prog": parser.prog}
    return str(Manpage(parser, _data=data))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """A parser's subcommands with their help."""
    found: dict[str, tuple[argparse.ArgumentParser, str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found.update({name: (sub, helps.get(name, "")) for name, sub in action.choices.items()})
    return found


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(parser: argparse.ArgumentParser) -> str:
    """fish ``complete`` lines: subcommands where none is given yet, then each one's options."""
    prog = parser.prog
    lines = [f"# fish completion for {prog}, generated from its command line"]

    def walk(node: argparse.ArgumentParser, path: list[str]) -> None:
        seen = "; and ".join(f"__fish_seen_subcommand_from {name}" for name in path)
        subs = _subcommands(node)
        for action in node._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            line = [f"complete -c {prog}"] + ([f"-n {_quoted(seen)}"] if seen else [])
            for option in action.option_strings:
                line.append(f"-l {option[2:]}" if option.startswith("--") else f"-s {option[1:]}")
            if action.choices:
                line.append(f"-x -a {_quoted(' '.join(map(str, action.choices)))}")
            elif action.nargs != 0:
                line.append("-r -F")
            if action.help:
                line.append(f"-d {_quoted(action.help)}")
            lines.append(" ".join(line))
        if subs:
            none_yet = f"not __fish_seen_subcommand_from {' '.join(subs)}"
            condition = f"{seen}; and {none_yet}" if seen else none_yet
            for name, (sub, text) in subs.items():
                lines.append(f"complete -c {prog} -n {_quoted(condition)} -a {name} -d {_quoted(text)}")
                walk(sub, path + [name])

    walk(parser, [])
    return "\n".join(lines) + "\n"
