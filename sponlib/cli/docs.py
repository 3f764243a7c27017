"""`readme` and `figures`: the result tables of the README and docs/, and their figures, from
data/results/. They load the maintainers' tooling (sponlib.reports), which nothing else
imports."""

from __future__ import annotations

from ..errors import SponlibError


def add_commands(sub) -> None:
    p = sub.add_parser("readme", help="regenerate the result tables of the README and docs/ from data/results/")
    p.add_argument("--readme", help="one page to regenerate (default: the README and every page of docs/ with tables)")
    p.add_argument("--check", action="store_true", help="fail if a page is out of date instead of writing")
    p.set_defaults(run=cmd_readme)

    p = sub.add_parser(
        "figures", help="export the figures of the README and docs/ as PNG from data/results/ (needs chromium)"
    )
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
    from ..reports.readme import result_pages, update_readme

    for page in [args.readme] if args.readme else result_pages():
        changed = update_readme(page, check=args.check)
        if args.check and changed:
            raise SponlibError(f"{page} is out of date with data/results/; run `python -m sponlib readme`")
        print(f"{page}: {'updated' if changed else 'up to date'}")


def cmd_figures(args) -> None:
    from ..reports.png import export_figures

    for path in export_figures(args.out, names=args.only):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
