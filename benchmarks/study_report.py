"""The settings study's report (study.md): per regime, the α × LR heatmap, the settings table, where
the search stands and its finalists, through the fragments of templates/study.md."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .protocol import Protocol
from .report import SPLIT_NAMES, fill, fragments, headline, image
from .tables import finalists_table, seed_list, settings_table


def study_regime(p: Protocol, s: dict, heatmap_png: Path, folder: Path, parts: dict[str, str]) -> str:
    return fill(parts["regime"], **headline(p, s), title=p.regime.title[:1].upper() + p.regime.title[1:],
                heatmap=image(heatmap_png, folder, "α × LR") if s["grids"] else "", settings=settings_table(s, s["settings"]),
                search=search_state(s, parts), finalists=finalists_table(s, s["finalists"]),
                selection=SPLIT_NAMES[s["selection_split"]], select_seeds=seed_list(p.select_seeds))


def search_state(s: dict, parts: dict[str, str]) -> str:
    """The best setting, or which settings a study cut short has not chosen an LR for yet."""
    if s["best"]:
        return fill(parts["search-done"], best=s["best"])
    pending = [label for label in s["settings"] if label not in s["rows"]]
    return fill(parts["search-open"], pending=", ".join(pending), have="has" if len(pending) == 1 else "have")


def write_study(regimes: list[tuple[Protocol, dict]], results_dir: Path, markdown: Path) -> Path:
    """study.md from the summaries of each regime, with a heatmap per regime."""
    main, parts = fragments("study.md")
    sections = []
    for p, s in regimes:
        png = plots.heatmap(s, s["heatmap"], p.regime.title, results_dir / f"study-{p.name}_heatmap.png")
        sections.append(study_regime(p, s, png, markdown.parent, parts))
    first = regimes[0][0]
    markdown.write_text(fill(main, rivals=", ".join(first.rivals), last_seed=first.final_seeds - 1, regimes="\n\n".join(sections)))
    return markdown
