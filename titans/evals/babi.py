"""bAbI-style reasoning stories: tasks qa1-qa5 of Weston et al. (2015), as used by BABILong.

A :class:`Story` is a short, self-contained list of facts in story order, one question and a
one-word answer, made so that a long-context benchmark can scatter the facts through unrelated
prose and ask the question at the end. Stories are generated, not read from the bAbI files: each
is a pure function of the state of the ``random.Random`` passed in, and only uses rng methods
whose results are stable across Python versions.

The tasks (people Mary, John, Daniel, Sandra, plus Fred, Bill, Jeff, Julie in qa5; rooms
bathroom, hallway, garden, office, bedroom, kitchen; objects football, apple, milk):

- qa1, single supporting fact: people move between rooms ("Mary went to the bathroom.").
  "Where is Mary?" -> her last room. Supporting: that last movement.
- qa2, two supporting facts: people also pick up and drop objects ("John got the milk.",
  "John left the milk."). A held object moves with its holder; a dropped one stays where it was
  dropped. "Where is the milk?" -> its room at the end. The object was picked up at least once, so
  the answer takes two facts. Supporting: if it is held at the end, its last pick-up and the
  holder's last movement; if it lies dropped, the drop and the dropper's last movement before it.
- qa3, three supporting facts: the same world. "Where was the milk before the kitchen?", where the
  kitchen is the object's room at the end -> the room it was in just before it was carried into
  the kitchen. Asked only when the object's room history (consecutive repeats merged) has at least
  two rooms and its last room appears in it once, so "before the kitchen" is unambiguous.
  Supporting: the movement that carried it into its last room, the carrier's pick-up of it before
  that, and the carrier's last movement before the pick-up or, if the carrier moved while holding
  it before the last movement, that last earlier movement.
- qa4, two-argument relations: exactly two facts placing three rooms on a grid ("The kitchen is
  north of the garden.", "The office is west of the kitchen."), never two rooms on one cell.
  "What is north of the garden?" or "What is the garden south of?" -> kitchen. Supporting: the
  fact asked about.
- qa5, three-argument relations: the qa2 world plus gives ("Mary gave the football to John."),
  only of an object the giver holds, to someone in the same room. Questions: "Who gave the
  football to John?", "Who did Mary give the football to?" and "What did Mary give to John?" are
  asked only about a give whose two named arguments occur together in no other give, so the
  answer is unique; "Who received the football?" means the receiver of the last give of the
  football. Supporting: that give.

Every story of qa1-qa3 and qa5 is simulated fact by fact. People start nowhere known and objects
start unseen; a person can pick up, drop or give only once their room is known, so each answer
follows from the facts alone. "went back to" is used only for a room the person has been in.
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

BABI_TASKS: tuple[str, ...] = ("qa1", "qa2", "qa3", "qa4", "qa5")

_PEOPLE = ("Mary", "John", "Daniel", "Sandra")
_QA5_PEOPLE = (*_PEOPLE, "Fred", "Bill", "Jeff", "Julie")
_ROOMS = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
_OBJECTS = ("football", "apple", "milk")
_MOVE_VERBS = ("went to", "moved to", "journeyed to", "travelled to")
_RETURN_VERB = "went back to"
_PICK_VERBS = ("picked up", "got", "grabbed", "took")
_DROP_VERBS = ("dropped", "discarded", "put down", "left")
_GIVE_VERBS = ("gave", "handed", "passed")
_STEPS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

# An action is ("move", person, room), ("pick", person, object), ("drop", person, object) or
# ("give", giver, object, receiver); facts are actions rendered as sentences.
_Action = tuple[str, ...]


@dataclass(frozen=True)
class Story:
    """One bAbI story.

    task: one of :data:`BABI_TASKS`.
    facts: sentences in story order, each capitalised and ending with ".".
    question: one question about the facts, ending with "?".
    answer: one word, exactly as it appears in the facts.
    supporting: ascending indices into ``facts`` of the facts the answer follows from.
    """

    task: str
    facts: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]


class _World:
    """Where people and objects are, as far as the facts so far say (None: not said yet)."""

    def __init__(self, people: tuple[str, ...]) -> None:
        self.people = people
        self.location: dict[str, str | None] = dict.fromkeys(people)
        self.visited: dict[str, frozenset[str]] = dict.fromkeys(people, frozenset())
        self.holder: dict[str, str | None] = dict.fromkeys(_OBJECTS)
        self.place: dict[str, str | None] = dict.fromkeys(_OBJECTS)
        # Rooms each object has been in, consecutive repeats merged, and the index of the fact
        # that carried it into its current room.
        self.history: dict[str, tuple[str, ...]] = dict.fromkeys(_OBJECTS, ())
        self.arrival: dict[str, int] = {}
        self.num_facts = 0
        self.num_gives = 0

    def copy(self) -> _World:
        """An independent copy (the values are immutable, so shallow dict copies suffice)."""
        other = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, dict):
                setattr(other, name, dict(value))
        return other

    def actions(self, kinds: tuple[str, ...]) -> dict[str, list[_Action]]:
        """The physically possible actions of each kind in ``kinds``."""
        located = [person for person in self.people if self.location[person] is not None]
        options: dict[str, list[_Action]] = {}
        if "move" in kinds:
            options["move"] = [
                ("move", person, room)
                for person in self.people
                for room in _ROOMS
                if room != self.location[person]
            ]
        if "pick" in kinds:
            # An unseen object may be wherever the person is; a seen one only where it lies.
            options["pick"] = [
                ("pick", person, obj)
                for person in located
                for obj in _OBJECTS
                if self.holder[obj] is None and self.place[obj] in (None, self.location[person])
            ]
        held = [(obj, holder) for obj, holder in self.holder.items() if holder is not None]
        if "drop" in kinds:
            options["drop"] = [("drop", holder, obj) for obj, holder in held]
        if "give" in kinds:
            options["give"] = [
                ("give", holder, obj, receiver)
                for obj, holder in held
                for receiver in located
                if receiver != holder and self.location[receiver] == self.location[holder]
            ]
        return options

    def apply(self, action: _Action) -> None:
        """Update the world by one action (which must be possible)."""
        kind, person, target = action[:3]
        if kind == "move":
            self.location[person] = target
            self.visited[person] |= {target}
            for obj, holder in self.holder.items():
                if holder == person:
                    self._put(obj, target)
        elif kind == "pick":
            self.holder[target] = person
            self._put(target, self.location[person])
        elif kind == "drop":
            self.holder[target] = None
        else:
            self.holder[target] = action[3]
            self.num_gives += 1
        self.num_facts += 1

    def _put(self, obj: str, room: str | None) -> None:
        self.place[obj] = room
        if room is not None and self.history[obj][-1:] != (room,):
            self.history[obj] += (room,)
            self.arrival[obj] = self.num_facts

    def render(self, action: _Action, rng: random.Random) -> str:
        """The sentence stating ``action``, taken in this (not yet updated) world."""
        kind, person, target = action[:3]
        if kind == "move":
            verbs = _MOVE_VERBS
            if target in self.visited[person]:
                verbs = (*verbs, _RETURN_VERB)
            return f"{person} {rng.choice(verbs)} the {target}."
        if kind == "give":
            return f"{person} {rng.choice(_GIVE_VERBS)} the {target} to {action[3]}."
        verbs = _PICK_VERBS if kind == "pick" else _DROP_VERBS
        return f"{person} {rng.choice(verbs)} the {target}."


# Needs: how many more facts a world takes to become askable for the task (0: it is askable,
# inf: it never will be). Each is an upper bound that some possible action lowers by one while it
# is positive, which the generator relies on to reach an askable world within a fact budget.


def _needs_someone_moved(world: _World) -> float:
    """qa1: somebody has moved."""
    return 0 if any(room is not None for room in world.location.values()) else 1


def _needs_pick_up(world: _World) -> float:
    """qa2: some object has been picked up (a located person picks up an unseen object)."""
    if any(world.history.values()):
        return 0
    return 1 if any(room is not None for room in world.location.values()) else 2


def _needs_history_for(world: _World, obj: str) -> float:
    """qa3 for ``obj``: it has been in two rooms or more and only once in its current room."""
    history = world.history[obj]
    if len(history) >= 2 and history[-1] not in history[:-1]:
        return 0
    if len(set(history)) == len(_ROOMS):
        return math.inf  # every room is in its history already; no carrying can help
    if world.holder[obj] is not None:
        return 1  # the holder walks to a room it has not been in
    occupied = {room for room in world.location.values() if room is not None}
    # Picked up where it lies (or, unseen, by anyone located), then carried to a new room;
    # one more fact if somebody first has to walk there.
    if world.place[obj] is None:
        return 2 if occupied else 3
    return 2 if world.place[obj] in occupied else 3


def _needs_history(world: _World) -> float:
    """qa3: some object has a history to ask about."""
    return min(_needs_history_for(world, obj) for obj in _OBJECTS)


def _needs_give(world: _World) -> float:
    """qa5: something has been given."""
    if world.num_gives:
        return 0
    occupancy = Counter(room for room in world.location.values() if room is not None)
    holders = [holder for holder in world.holder.values() if holder is not None]
    if any(occupancy[world.location[holder]] >= 2 for holder in holders):
        return 1
    if holders:
        return 2  # somebody walks to a holder first
    # Nothing is held: pick something up where one stands (and walk a receiver there if alone),
    # else first walk to where an object lies (or, with nobody located yet, anywhere).
    need: float = 4
    for room in world.location.values():
        if room is not None and any(world.place[obj] in (None, room) for obj in _OBJECTS):
            need = min(need, 2 if occupancy[room] >= 2 else 3)
    return need


def _last(log: list[_Action], kind: str, person: str | None, obj: str | None,
          before: int | None = None) -> int:
    """Index of the last action of ``kind`` in ``log[:before]`` by ``person`` (None: anyone)
    involving ``obj`` (None: any target)."""
    stop = len(log) if before is None else before
    for index in range(stop - 1, -1, -1):
        action = log[index]
        if (action[0] == kind and person in (None, action[1])
                and obj in (None, action[2])):
            return index
    raise AssertionError(f"no {kind} by {person} of {obj} before fact {stop}")


# Question makers: (final world, actions, rng) -> (question, answer, supporting).
_Asked = tuple[str, str, tuple[int, ...]]


def _ask_qa1(world: _World, log: list[_Action], rng: random.Random) -> _Asked:
    person = rng.choice([p for p in world.people if world.location[p] is not None])
    room = world.location[person]
    assert room is not None
    return f"Where is {person}?", room, (_last(log, "move", person, None),)


def _ask_qa2(world: _World, log: list[_Action], rng: random.Random) -> _Asked:
    obj = rng.choice([o for o in _OBJECTS if world.history[o]])
    room = world.place[obj]
    assert room is not None
    holder = world.holder[obj]
    if holder is not None:
        supporting = (_last(log, "pick", holder, obj), _last(log, "move", holder, None))
    else:
        drop = _last(log, "drop", None, obj)
        supporting = (drop, _last(log, "move", log[drop][1], None, before=drop))
    return f"Where is the {obj}?", room, tuple(sorted(supporting))


def _ask_qa3(world: _World, log: list[_Action], rng: random.Random) -> _Asked:
    obj = rng.choice([o for o in _OBJECTS if _needs_history_for(world, o) == 0])
    history = world.history[obj]
    arrival = world.arrival[obj]
    carrier = log[arrival][1]
    pick = _last(log, "pick", carrier, obj, before=arrival)
    previous = _last(log, "move", carrier, None, before=arrival)
    if previous < pick:
        # It did not move between the pick-up and the arrival: the room before is where the
        # carrier stood when picking it up.
        previous = _last(log, "move", carrier, None, before=pick)
    question = f"Where was the {obj} before the {history[-1]}?"
    return question, history[-2], tuple(sorted((previous, pick, arrival)))


_QA5_QUESTIONS = ("giver", "receiver", "object", "received")


def _ask_qa5(world: _World, log: list[_Action], rng: random.Random) -> _Asked:
    gives = [(index, action[1:]) for index, action in enumerate(log) if action[0] == "give"]
    # A give can be asked about by two of its (giver, object, receiver) when no other give
    # shares them; the positions of the two named in each question kind:
    named = {"giver": (1, 2), "receiver": (0, 1), "object": (0, 2)}
    candidates: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for kind, (i, j) in named.items():
        counts = Counter((give[i], give[j]) for _, give in gives)
        candidates[kind] = [(k, give) for k, give in gives if counts[give[i], give[j]] == 1]
    last_give = {give[1]: (i, give) for i, give in gives}
    candidates["received"] = list(last_give.values())
    kind = rng.choice([k for k in _QA5_QUESTIONS if candidates[k]])
    index, (giver, obj, receiver) = rng.choice(candidates[kind])
    if kind == "giver":
        return f"Who gave the {obj} to {receiver}?", giver, (index,)
    if kind == "receiver":
        return f"Who did {giver} give the {obj} to?", receiver, (index,)
    if kind == "object":
        return f"What did {giver} give to {receiver}?", obj, (index,)
    return f"Who received the {obj}?", receiver, (index,)


@dataclass(frozen=True)
class _Simulated:
    """How a simulated task generates: its cast, action weights, goal and question."""

    people: tuple[str, ...]
    weights: dict[str, float]
    need: Callable[[_World], float]
    ask: Callable[[_World, list[_Action], random.Random], _Asked]
    default_facts: tuple[int, int]  # inclusive range of num_facts when None is given


_SIMULATED = {
    "qa1": _Simulated(_PEOPLE, {"move": 1.0}, _needs_someone_moved, _ask_qa1, (2, 6)),
    "qa2": _Simulated(_PEOPLE, {"move": 0.5, "pick": 0.3, "drop": 0.2}, _needs_pick_up,
                      _ask_qa2, (4, 10)),
    "qa3": _Simulated(_PEOPLE, {"move": 0.5, "pick": 0.3, "drop": 0.2}, _needs_history,
                      _ask_qa3, (6, 12)),
    "qa5": _Simulated(_QA5_PEOPLE, {"move": 0.4, "pick": 0.2, "drop": 0.1, "give": 0.3},
                      _needs_give, _ask_qa5, (4, 10)),
}


def _weighted_action(options: dict[str, list[_Action]], weights: dict[str, float],
                     rng: random.Random) -> _Action:
    """A kind drawn by weight among the kinds with options, then one of its actions."""
    kinds = [kind for kind in weights if options[kind]]
    x = rng.random() * sum(weights[kind] for kind in kinds)
    for kind in kinds[:-1]:
        if x < weights[kind]:
            return rng.choice(options[kind])
        x -= weights[kind]
    return rng.choice(options[kinds[-1]])


def _simulate(spec: _Simulated, num_facts: int, fewest: int, rng: random.Random,
              ) -> tuple[_World, list[_Action], list[str]]:
    """Draw ``num_facts`` random possible actions that leave the world askable at the end.

    The world must first be askable by a random deadline, not just by the last fact: left to
    the end, the facts that make it askable (and so the supporting facts) would mostly be the
    last ones, a position a model could learn instead of reading the story.
    """
    world = _World(spec.people)
    kinds = tuple(spec.weights)
    deadline = rng.randrange(fewest, num_facts + 1)
    log: list[_Action] = []
    facts: list[str] = []
    for step in range(num_facts):
        # Facts still to come after this one, in which the world must (again) become askable.
        left = (deadline if step < deadline else num_facts) - step - 1
        options = world.actions(kinds)
        action = _weighted_action(options, spec.weights, rng)
        after = world.copy()
        after.apply(action)
        if spec.need(after) > left:
            # The drawn action would leave too few facts to reach an askable world: choose
            # among those that do not (one exists, as the need functions promise).
            feasible = []
            for candidate in (a for group in options.values() for a in group):
                after = world.copy()
                after.apply(candidate)
                if spec.need(after) <= left:
                    feasible.append((candidate, after))
            action, after = rng.choice(feasible)
        facts.append(world.render(action, rng))
        log.append(action)
        world = after
    return world, log, facts


def _generate_qa4(rng: random.Random) -> Story:
    """Two relations among three rooms laid out on a grid, and a question about one of them."""
    first, second, third = rng.sample(_ROOMS, 3)
    cells = {second: (0, 0)}
    direction = rng.choice(tuple(_STEPS))
    cells[first] = _neighbour(cells[second], direction)
    relations = [(first, direction, second)]  # (a, d, b): the a is d of the b
    anchor = rng.choice((first, second))
    # A free neighbouring cell, so that no two rooms share a place.
    direction = rng.choice([d for d in _STEPS if _neighbour(cells[anchor], d) not in
                            cells.values()])
    relations.append((third, direction, anchor))
    relations = [_inverse(r) if rng.random() < 0.5 else r for r in relations]
    rng.shuffle(relations)
    facts = tuple(f"The {a} is {d} of the {b}." for a, d, b in relations)
    index = rng.randrange(2)
    answer, direction, other = relations[index]
    if rng.random() < 0.5:
        answer, direction, other = _inverse(relations[index])
    if rng.random() < 0.5:
        question = f"What is {direction} of the {other}?"
    else:
        question = f"What is the {other} {_OPPOSITE[direction]} of?"
    return Story("qa4", facts, question, answer, (index,))


def _neighbour(cell: tuple[int, int], direction: str) -> tuple[int, int]:
    dx, dy = _STEPS[direction]
    return cell[0] + dx, cell[1] + dy


def _inverse(relation: tuple[str, str, str]) -> tuple[str, str, str]:
    """The same relation stated the other way round: a is d of b <=> b is opposite(d) of a."""
    a, direction, b = relation
    return b, _OPPOSITE[direction], a


def generate_story(task: str, rng: random.Random, num_facts: int | None = None) -> Story:
    """A random story of ``task`` (one of :data:`BABI_TASKS`), a pure function of ``rng``'s state.

    num_facts: the number of facts, supporting and distracting together; None draws a default
        from rng (qa1: 2-6, qa2: 4-10, qa3: 6-12, qa5: 4-10; qa4 always has 2). The smallest
        allowed are qa1: 1, qa2: 2, qa3: 3, qa4: 2 (its only size), qa5: 4.

    Raises ValueError for an unknown task or a num_facts the task cannot have.
    """
    if task not in BABI_TASKS:
        raise ValueError(f"unknown bAbI task {task!r}; valid tasks are {', '.join(BABI_TASKS)}")
    if task == "qa4":
        if num_facts not in (None, 2):
            raise ValueError(f"qa4 stories have exactly 2 facts, got num_facts={num_facts}")
        return _generate_qa4(rng)
    spec = _SIMULATED[task]
    fewest = int(spec.need(_World(spec.people)))
    if num_facts is None:
        low, high = spec.default_facts
        num_facts = rng.randrange(low, high + 1)
    elif num_facts < fewest:
        raise ValueError(f"{task} stories need num_facts >= {fewest}, got {num_facts}")
    world, log, facts = _simulate(spec, num_facts, fewest, rng)
    question, answer, supporting = spec.ask(world, log, rng)
    return Story(task, tuple(facts), question, answer, supporting)
