"""`readme` and `figures`: the README's result tables and figures from data/results/. They load
the maintainers' tooling (sponlib.reports), which nothing else imports."""

from __future__ import annotations

from ..errors import SponlibError


def add_commands(sub) -> None:
    p = sub.add_parser("readme", help="regenerate the README's result tables from data/results/")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--check", action="store_true", help="fail if the README is out of date instead of writing")
    p.set_defaults(run=cmd_readme)

    p = sub.add_parser("figures", help="export the README's figures as PNG from data/results/ (needs chromium)")
    p.add_argument("--out", default="docs/figures", help="folder for the PNGs (default docs/figures)")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="figures to export, by name (default all; an unknown name lists the known ones)",
    )
    p.set_defaults(run=cmd_figures)


def cmd_readme(args) -> None:
    from ..reports.readme import update_readme

    changed = update_readme(args.readme, check=args.check)
    if args.check and changed:
        raise SponlibError(f"{args.readme} is out of date with data/results/; run `python -m sponlib readme`")
    print(f"{args.readme}: {'updated' if changed else 'up to date'}")


def cmd_figures(args) -> None:
    from ..reports.png import export_figures

    for path in export_figures(args.out, names=args.only):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
