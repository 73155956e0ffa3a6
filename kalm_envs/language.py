"""Natural-language instructions for structured goals, and a parser that maps them back.

Every instruction comes from a template of its level. Placeholders in a template:

- ``{a}`` and ``{center}``: colour of the first ball of a clause, ``{b}``: colour of the second;
- ``{<vocabulary>}``, a key of :data:`DIRECTION_PHRASES`: a phrase for the clause's direction,
  picked from that vocabulary's synonyms;
- in hard pair and triple templates, ``{c0}``, ``{c1}``, ``{c2}``: one clause each, written with
  the template's fragment from :data:`CLAUSE_FRAGMENTS`.

A placeholder without an index belongs to clause 0; a placeholder used twice in one template
takes the same value both times. Directions follow :mod:`kalm_envs.goals`: 0 behind / backward
(+y, away from the viewer), 1 left (-x), 2 in front / forward (-y, toward the viewer), 3 right
(+x). Each template is compiled into a regular expression whose named groups hold its
placeholders, so :func:`parse_instruction` is the exact inverse of :func:`render_instruction`.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kalm_envs.goals import LEVEL_FAMILIES, LEVELS, N_DIRECTIONS, Goal, GoalKind
from kalm_envs.physics import COLORS
from kalm_envs.validation import InvalidTypeError

INSTRUCTION_CHARSET: str = string.ascii_letters + string.digits + " .,;:!?'-()"
MAX_INSTRUCTION_LENGTH: int = 256

_REL = (
    ("behind",),
    ("to the left of", "left of"),
    ("in front of",),
    ("to the right of", "right of"),
)

#: Direction vocabularies: for each direction index 0..3, the synonymous phrases of that index.
DIRECTION_PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {
    # "ball A <rel> ball B"
    "rel": _REL,
    # "ball B is <rel_inv> ball A": the relation seen from the reference ball
    "rel_inv": tuple(_REL[(d + 2) % N_DIRECTIONS] for d in range(N_DIRECTIONS)),
    "rel_alt": (
        ("at the back of", "on the far side of"),
        ("on the left-hand side of", "on the left side of"),
        ("at the front of", "on the near side of"),
        ("on the right-hand side of", "on the right side of"),
    ),
    # "on the <side> side of ball B"
    "side": (("far", "back"), ("left",), ("near", "front"), ("right",)),
    # "ball B's <poss>"
    "poss": (
        ("far side", "back"),
        ("left side", "left"),
        ("near side", "front"),
        ("right side", "right"),
    ),
    # "move ball A <mv>"
    "mv": (
        ("backward", "backwards", "back"),
        ("left", "to the left"),
        ("forward", "forwards"),
        ("right", "to the right"),
    ),
    "mv_view": (
        ("away from the camera", "away from the viewer"),
        ("to the left", "leftward"),
        ("toward the camera", "toward the viewer", "towards the camera"),
        ("to the right", "rightward"),
    ),
    # "toward the <edge> edge of the table"
    "edge": (("far", "back"), ("left",), ("near", "front"), ("right",)),
}

TRAIN_TEMPLATES: tuple[str, ...] = (
    "Put the {a} ball {rel} the {b} ball.",
    "Move the {a} ball {rel} the {b} ball.",
    "Push the {a} ball {rel} the {b} ball.",
    "Place the {a} ball {rel} the {b} ball.",
    "Get the {a} ball {rel} the {b} ball.",
    "Bring the {a} ball {rel} the {b} ball.",
    "Slide the {a} ball {rel} the {b} ball.",
    "Roll the {a} ball {rel} the {b} ball.",
    "Position the {a} ball {rel} the {b} ball.",
    "Move the {a} sphere {rel} the {b} sphere.",
    "Put the {a} sphere {rel} the {b} sphere.",
    "Push the {a} sphere {rel} the {b} sphere.",
    "Move the {a} one {rel} the {b} one.",
    "The {a} ball should be {rel} the {b} ball.",
    "The {a} ball must end up {rel} the {b} ball.",
    "Keep pushing the {a} ball until it is {rel} the {b} ball.",
    "Push the {a} ball until it sits {rel} the {b} ball.",
    "{a} ball {rel} the {b} ball.",
    "{a} ball {rel} {b} ball.",
    "Put {a} {rel} {b}.",
    "Your goal: the {a} ball {rel} the {b} ball.",
    "Task: move the {a} ball {rel} the {b} ball.",
)

REPHRASE_TEMPLATES: tuple[str, ...] = (
    "Could you nudge the {a} ball so that it ends up {rel} the {b} ball?",
    "Would you kindly arrange things so the {a} ball lies {rel_alt} the {b} ball?",
    "I want the {a} ball {rel_alt} the {b} ball.",
    "I'd like to see the {a} ball {rel} the {b} ball.",
    "Make it so that the {a} ball is {rel_alt} the {b} ball.",
    "Make it so the {a} ball rests {rel} the {b} ball.",
    "Make sure the {b} ball has the {a} ball {rel} it.",
    "Is it possible to get the {a} ball onto the {side} side of the {b} ball?",
    "Shove the {a} ball until it rests on the {side} side of the {b} ball.",
    "Drive the {a} ball over to the {b} ball's {poss}.",
    "Relocate the {a} ball to a spot {rel} the {b} ball.",
    "Nudge the {a} ball so that it sits {rel_alt} the {b} ball.",
    "Tap the {a} ball along until the {b} ball is {rel_inv} it.",
    "The {a} ball belongs {rel_alt} the {b} ball; please move it there.",
    "What I need: the {a} ball sitting {rel} the {b} ball.",
    "Please get the {a} ball over to the {side} side of the {b} ball.",
    "Can the {a} ball be moved so that it lies {rel} the {b} ball?",
    "Try to have the {a} ball end up {rel_alt} the {b} ball.",
    "Your job: leave the {a} ball resting {rel_alt} the {b} ball.",
    "Steer the {a} ball to the {b} ball's {poss}.",
    "Guide the {a} ball until it is {rel_alt} the {b} ball.",
    "Relative to the {b} ball, put the {a} ball on the {side} side.",
    "Seen from the camera, the {a} ball should be {rel} the {b} ball.",
    "Arrange the {a} and {b} balls so that the {a} one is {rel_alt} the {b} one.",
    "Take the {a} ball and leave it {rel_alt} the {b} ball.",
    "Shift the {a} ball over so it's {rel_alt} the {b} ball.",
    "Could you shift the {a} ball to the {side} side of the {b} ball?",
    "How about moving the {a} ball so it ends up {rel_alt} the {b} ball?",
    "Would it be possible to have the {a} ball {rel} the {b} ball?",
    "Let's have the {a} ball {rel_alt} the {b} ball.",
    "Go ahead and nudge the {a} ball {rel} the {b} ball.",
    "We need the {a} ball {rel_alt} the {b} ball.",
    "Ensure that the {a} ball winds up {rel} the {b} ball.",
    "Get things set up with the {a} ball {rel_alt} the {b} ball.",
    "Reposition the {a} ball: it goes {rel} the {b} ball.",
    "Tidy up by putting the {a} ball on the {side} side of the {b} ball.",
    "The {b} ball needs the {a} ball {rel_alt} it.",
    "Work the {a} ball over to the {b} ball's {poss}.",
    "Keep nudging the {a} ball until the {b} ball is {rel_inv} it.",
    "Find a way to get the {a} ball {rel} the {b} ball.",
    "Aim to finish with the {a} ball {rel} the {b} ball.",
    "Goal state - the {a} ball lies {rel_alt} the {b} ball.",
    "I want you to move the {a} ball until the {b} ball is {rel_inv} it.",
    "Could the {a} ball end up {rel_alt} the {b} ball, please?",
)

EASY_TEMPLATES: tuple[str, ...] = (
    "Move the {a} ball {mv}.",
    "Push the {a} ball {mv}.",
    "Nudge the {a} ball {mv} a little.",
    "Shift the {a} ball {mv}.",
    "Slide the {a} ball {mv}.",
    "Roll the {a} ball {mv}.",
    "Move the {a} ball a bit {mv}.",
    "Push the {a} sphere {mv}.",
    "Give the {a} ball a push {mv}.",
    "Can you move the {a} ball {mv}?",
    "Please push the {a} ball {mv_view}.",
    "The {a} ball should move {mv}.",
    "Get the {a} ball to travel {mv_view}.",
    "Move the {a} ball toward the {edge} edge of the table.",
    "Push the {a} ball toward the {edge} side of the table.",
    "I want the {a} ball moved {mv}.",
    "Displace the {a} ball {mv_view}.",
    "Send the {a} ball {mv}.",
    "Make the {a} ball go {mv}.",
    "Bump the {a} ball {mv_view}.",
    "Knock the {a} ball {mv} a bit.",
    "Move the {a} ball {mv} from where it started.",
)

#: Ways to write one relation clause inside a hard pair or triple template.
CLAUSE_FRAGMENTS: dict[str, str] = {
    "is": "the {a} ball is {rel} the {b} ball",
    "np": "the {a} ball {rel} the {b} ball",
    "put": "put the {a} ball {rel} the {b} ball",
    "bare": "{a} {rel} {b}",
    "alt": "the {a} ball sits {rel_alt} the {b} ball",
    "side": "the {a} ball is on the {side} side of the {b} ball",
    "one": "the {a} one {rel} the {b} one",
}

#: Hard pair templates as (template, key of :data:`CLAUSE_FRAGMENTS`).
HARD_PAIR_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Arrange the balls so that {c0} and {c1}.", "is"),
    ("Make sure {c0} and also {c1}.", "is"),
    ("{c0}, and {c1}.", "put"),
    ("Two things: {c0}; {c1}.", "put"),
    ("Goal: {c0} and {c1}.", "bare"),
    ("I want {c0} and {c1} at the same time.", "np"),
    ("Both of these must hold: {c0}; {c1}.", "is"),
    ("Push the balls around until {c0} and {c1}.", "alt"),
    ("Set up the table with {c0} and {c1}.", "np"),
    ("Could you make it so that {c0} while {c1}?", "side"),
    ("First {c0}, then {c1}, keeping both true.", "put"),
    ("End with {c0} as well as {c1}.", "one"),
)

#: Hard triple templates as (template, key of :data:`CLAUSE_FRAGMENTS`).
HARD_TRIPLE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Arrange the balls so that {c0}, {c1} and {c2}.", "is"),
    ("Make sure {c0}, {c1}, and {c2}.", "is"),
    ("{c0}, {c1}, and {c2}.", "put"),
    ("Three things: {c0}; {c1}; {c2}.", "put"),
    ("Goal: {c0}, {c1}, {c2}.", "bare"),
    ("I want {c0}, {c1} and {c2}, all at once.", "np"),
    ("All of these must hold: {c0}; {c1}; {c2}.", "is"),
    ("Push the balls around until {c0}, {c1} and {c2}.", "alt"),
    ("Set up the table with {c0}, {c1} and {c2}.", "np"),
    ("Could you make it so that {c0}, {c1} and {c2}?", "side"),
    ("First {c0}, then {c1}, and finally {c2}, keeping all three true.", "put"),
    ("End with {c0}, {c1} and {c2}.", "one"),
)

LINE_UP_TEMPLATES: tuple[str, ...] = (
    "Line up the balls from left to right: red, blue, green, purple, cyan.",
    "Put the balls in a row, left to right, in the order red, blue, green, purple, cyan.",
    "Arrange red, blue, green, purple and cyan in a line from left to right.",
    "Form a row of all five balls from left to right: red first, cyan last, with blue, green "
    "and purple in between, in that order.",
    "Make a left-to-right row: red, then blue, then green, then purple, then cyan.",
    "Could you set the balls out in a line, red on the far left and then blue, green, purple "
    "and cyan?",
    "Order the balls left to right as red, blue, green, purple, cyan.",
    "I want a row of balls reading red, blue, green, purple, cyan from left to right.",
    "Lay the balls out side by side from left to right: red, blue, green, purple, cyan.",
    "Sort the balls into a left-to-right line: red, blue, green, purple, cyan.",
    "Put red leftmost, then blue, green and purple, and cyan rightmost, all in one row.",
    "Line the five balls up in colour order (red, blue, green, purple, cyan) going left to right.",
)

GATHER_TEMPLATES: tuple[str, ...] = (
    "Gather the other balls around the {center} ball.",
    "Cluster the other four balls around the {center} ball.",
    "Bring every other ball close to the {center} ball.",
    "Group all the remaining balls near the {center} ball.",
    "Collect the other balls around the {center} one.",
    "Make the {center} ball the middle of a tight cluster of all the balls.",
    "Pull the rest of the balls in around the {center} ball.",
    "Could you huddle the other balls around the {center} ball?",
    "I want all four other balls near the {center} ball.",
    "Surround the {center} ball with the other four balls.",
    "Crowd the remaining balls around the {center} ball.",
    "Put every ball except the {center} one next to the {center} ball.",
)

#: Ball placeholders and their position in a clause ``(a, b, direction)``.
_BALL_SLOTS: dict[str, int] = {"a": 0, "center": 0, "b": 1}
_PLACEHOLDER = re.compile(r"\{([a-z_]+?)(\d?)\}")
_PHRASE_DIRECTION: dict[str, dict[str, int]] = {
    vocabulary: {phrase: d for d, phrases in enumerate(table) for phrase in phrases}
    for vocabulary, table in DIRECTION_PHRASES.items()
}


@dataclass(frozen=True)
class _Template:
    """One compiled template: its text, its distinct placeholders and its parsing regex."""

    kind: GoalKind
    text: str
    slots: tuple[tuple[str, int], ...]  # (placeholder name, clause index), first use order
    regex: re.Pattern[str]


def _normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace and no final ``.``, ``!`` or ``?``."""
    return re.sub(r"[\s.!?]+$", "", " ".join(text.split()).lower())


def _alternation(name: str) -> str:
    """Regex alternation of every value that placeholder ``name`` can take."""
    if name in _BALL_SLOTS:
        values: Sequence[str] = COLORS
    elif name in DIRECTION_PHRASES:
        values = sorted(_PHRASE_DIRECTION[name], key=len, reverse=True)
    else:
        raise ValueError(f"unknown template placeholder {{{name}}}")
    return "|".join(re.escape(value) for value in values)


def _compile(kind: GoalKind, text: str) -> _Template:
    """Compile ``text`` into a :class:`_Template` whose regex matches normalized renderings."""
    normalized = _normalize(text)
    pattern: list[str] = []
    slots: list[tuple[str, int]] = []
    end = 0
    for match in _PLACEHOLDER.finditer(normalized):
        pattern.append(re.escape(normalized[end : match.start()]))
        name, index = match[1], int(match[2] or 0)
        group = f"{name}{index}"
        if (name, index) in slots:
            pattern.append(f"(?P={group})")
        else:
            slots.append((name, index))
            pattern.append(f"(?P<{group}>{_alternation(name)})")
        end = match.end()
    pattern.append(re.escape(normalized[end:]))
    return _Template(kind, text, tuple(slots), re.compile("".join(pattern)))


def _expand_clauses(text: str, fragment: str) -> str:
    """Replace ``{c<i>}`` in a hard template by the fragment with its placeholders indexed i."""

    def clause(match: re.Match[str]) -> str:
        index = match[1]
        return re.sub(r"\{([a-z_]+)\}", lambda m: f"{{{m[1]}{index}}}", CLAUSE_FRAGMENTS[fragment])

    return re.sub(r"\{c(\d)\}", clause, text)


#: Compiled templates, keyed like :func:`template_counts`.
_TEMPLATES: dict[str, tuple[_Template, ...]] = {
    "train": tuple(_compile(GoalKind.RELATIONS, t) for t in TRAIN_TEMPLATES),
    "rephrase": tuple(_compile(GoalKind.RELATIONS, t) for t in REPHRASE_TEMPLATES),
    "easy": tuple(_compile(GoalKind.MOVE, t) for t in EASY_TEMPLATES),
    "hard/pair": tuple(
        _compile(GoalKind.RELATIONS, _expand_clauses(t, f)) for t, f in HARD_PAIR_TEMPLATES
    ),
    "hard/triple": tuple(
        _compile(GoalKind.RELATIONS, _expand_clauses(t, f)) for t, f in HARD_TRIPLE_TEMPLATES
    ),
    "hard/line_up": tuple(_compile(GoalKind.LINE_UP, t) for t in LINE_UP_TEMPLATES),
    "hard/gather": tuple(_compile(GoalKind.GATHER, t) for t in GATHER_TEMPLATES),
}


def _templates_for(goal: Goal, level: str) -> tuple[_Template, ...]:
    """The templates that word ``goal`` at ``level``; ``ValueError`` if there are none."""
    if not isinstance(goal, Goal):
        raise InvalidTypeError(f"goal {goal!r} ({type(goal).__name__}) must be a Goal (Goal.from_array decodes an array)")
    if not isinstance(level, str) or level not in LEVEL_FAMILIES:
        raise ValueError(f"instruction level {level!r} is not one of {LEVELS}")
    if goal.family not in LEVEL_FAMILIES[level]:
        raise ValueError(
            f"level {level!r} words only {'/'.join(LEVEL_FAMILIES[level])} goals, "
            f"not a {goal.family} goal ({goal})"
        )
    return _TEMPLATES[level if level != "hard" else f"hard/{goal.family}"]


def _slot_options(template: _Template, goal: Goal) -> list[tuple[str, ...]]:
    """For each distinct placeholder of ``template``, the strings that word ``goal``."""
    options = []
    for name, index in template.slots:
        clause = goal.clauses[index]
        if name in _BALL_SLOTS:
            options.append((COLORS[clause[_BALL_SLOTS[name]]],))
        else:
            options.append(DIRECTION_PHRASES[name][clause[2]])
    return options


def _fill(template: _Template, values: Sequence[str]) -> str:
    """Substitute ``values`` (one per distinct placeholder) and capitalize the first letter."""
    lookup = dict(zip(template.slots, values, strict=True))
    text = _PLACEHOLDER.sub(lambda m: lookup[(m[1], int(m[2] or 0))], template.text)
    return text[0].upper() + text[1:]


def render_instruction(goal: Goal, level: str, rng: np.random.Generator) -> str:
    """Word ``goal`` with a template of ``level`` (train, rephrase, easy or hard).

    The template and every phrase choice are drawn uniformly with ``rng`` only. ``ValueError``
    for an unknown level or a goal that the level does not take (train and rephrase: one
    relation; easy: move; hard: pair, triple, line-up or gather).
    """
    templates = _templates_for(goal, level)
    if not isinstance(rng, np.random.Generator):
        raise InvalidTypeError(f"rng {rng!r} must be a numpy Generator (np.random.default_rng(seed))")
    template = templates[rng.integers(len(templates))]
    options = _slot_options(template, goal)
    return _fill(template, [choices[rng.integers(len(choices))] for choices in options])


def instruction_variants(goal: Goal, level: str) -> list[str]:
    """Every distinct text that :func:`render_instruction` can return for ``goal`` and ``level``."""
    texts = (
        _fill(template, values)
        for template in _templates_for(goal, level)
        for values in itertools.product(*_slot_options(template, goal))
    )
    return list(dict.fromkeys(texts))


def _decode(template: _Template, match: re.Match[str]) -> Goal:
    """The goal whose rendering with ``template`` gave ``match``; ``ValueError`` if invalid."""
    clauses: dict[int, list[int]] = {}
    for name, index in template.slots:
        clause = clauses.setdefault(index, [-1, -1, -1])
        value = match[f"{name}{index}"]
        if name in _BALL_SLOTS:
            clause[_BALL_SLOTS[name]] = COLORS.index(value)
        else:
            clause[2] = _PHRASE_DIRECTION[name][value]
    return Goal(template.kind, tuple(tuple(clauses[i]) for i in sorted(clauses)))


def parse_instruction(text: str) -> Goal | None:
    """The goal that ``text`` words, for any text that :func:`render_instruction` produces.

    Ignores case, runs of whitespace and final punctuation. Returns ``None`` when ``text``
    matches no template, names an invalid goal (a ball related to itself), or would decode to
    more than one goal (which no rendered text does). ``InvalidTypeError`` (a ``TypeError``) when
    ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"text {text!r} ({type(text).__name__}) must be a str")
    normalized = _normalize(text)
    goals = set()
    for templates in _TEMPLATES.values():
        for template in templates:
            match = template.regex.fullmatch(normalized)
            if match is None:
                continue
            try:
                goals.add(_decode(template, match))
            except ValueError:
                continue
    return goals.pop() if len(goals) == 1 else None


def template_counts() -> dict[str, int]:
    """Number of templates per level, and per family for hard (keys ``hard/<family>``)."""
    return {key: len(templates) for key, templates in _TEMPLATES.items()}


def validate_instruction(text: str) -> str:
    """Return ``text`` if it is a str with a non-space character, only uses
    :data:`INSTRUCTION_CHARSET` and fits the length limit.

    ``ValueError`` names the characters outside the charset, or gives the length;
    ``InvalidTypeError`` (also a ``TypeError``) when ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"instruction {text!r} ({type(text).__name__}) must be a str")
    if not text.strip():
        raise ValueError(f"instruction {text!r} is empty: it needs at least one word")
    bad = sorted(set(text) - set(INSTRUCTION_CHARSET))
    if bad:
        raise ValueError(
            f"instruction {text!r} has characters outside INSTRUCTION_CHARSET: "
            f"{', '.join(repr(c) for c in bad)}"
        )
    if len(text) > MAX_INSTRUCTION_LENGTH:
        raise ValueError(
            f"instruction is {len(text)} characters long, more than {MAX_INSTRUCTION_LENGTH}"
        )
    return text
