"""The report's trajectory figure: simulator and imagined rollouts of the same task, seen from
above the table."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from kalm_envs.physics import COLORS, N_BALLS
from kalm_envs.rollout import Episode

WORKBENCH_X = (-0.5, 0.5)  # m
WORKBENCH_Y = (-0.3, 0.58)  # m


def matching_pair(simulated: Sequence[Episode], imagined: Sequence[Episode]) -> tuple[Episode, Episode] | None:
    """The first simulated episode and the imagined one reset with the same seed (the same goal,
    wording and initial state), or None when no seed is shared."""
    by_seed = {episode.seed: episode for episode in imagined}
    for episode in simulated:
        if episode.seed in by_seed:
            return episode, by_seed[episode.seed]
    return None


def trajectory_figure(pairs: Sequence[tuple[str, Episode, Episode]], path: str | Path) -> None:
    """Write a PNG with one panel per ``(title, simulated, imagined)``: every ball's ``(x, y)``
    path (m) over the workbench, solid for the simulator, dashed for the imagination; a circle
    marks the start, a cross each path's end."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    figure = Figure(figsize=(4.2 * max(len(pairs), 1), 4.4), dpi=110)
    FigureCanvasAgg(figure)
    for k, (title, simulated, imagined) in enumerate(pairs):
        axes = figure.add_subplot(1, len(pairs), k + 1)
        axes.add_patch(Rectangle((WORKBENCH_X[0], WORKBENCH_Y[0]), WORKBENCH_X[1] - WORKBENCH_X[0],
                                 WORKBENCH_Y[1] - WORKBENCH_Y[0], fill=False, color="0.6"))
        for episode, style in ((simulated, "-"), (imagined, "--")):
            states = episode.observations.reshape(-1, N_BALLS, 2)  # (T + 1, 5, 2)
            for ball, color in enumerate(COLORS):
                axes.plot(states[:, ball, 0], states[:, ball, 1], style, color=color, linewidth=1.4)
                axes.plot(*states[-1, ball], "x", color=color, markersize=6)
        start = simulated.observations[0].reshape(N_BALLS, 2)
        axes.scatter(start[:, 0], start[:, 1], c=list(COLORS), s=40, edgecolors="black", zorder=3)
        axes.set_xlim(WORKBENCH_X[0] - 0.05, WORKBENCH_X[1] + 0.05)
        axes.set_ylim(WORKBENCH_Y[0] - 0.05, WORKBENCH_Y[1] + 0.05)
        axes.set_aspect("equal")
        axes.set_xlabel("x (m)")
        axes.set_ylabel("y (m, behind)")
        axes.set_title(f"{title}: " + textwrap.fill(simulated.instruction, 40) +
                       f"\nsimulator {simulated.length} steps, imagined {imagined.length}", fontsize=8)
    legend = [Line2D([], [], color="black", linestyle="-", label="simulator"),
              Line2D([], [], color="black", linestyle="--", label="imagined")]
    figure.legend(handles=legend, loc="lower center", ncol=2, fontsize="small")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, format="png")
