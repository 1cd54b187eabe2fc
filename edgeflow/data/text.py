"""Deterministic English sentence generator for the synthetic training corpus.

All text here is generated: a small template grammar over word lists written for
edgeflow, plus a list of Harvard-style sentences also written for edgeflow (not the IEEE
Harvard list). Only plain lower-case words and simple punctuation are produced, so the
transcript is already "normalised" (no digits, abbreviations or symbols) and every word is
pronounced the same way by all voices.

The stream is a pure function of the seed: the ``i``-th sentence for a seed never changes
(Python's :class:`random.Random` with an integer seed is stable across versions).
"""

from __future__ import annotations

import random
from typing import Iterator

NAMES = """Anna Ben Clara David Emma Frank Grace Henry Iris Jack Kate Leo Maria Nathan Olive Peter
Rose Sam Tina Victor Wendy Adam Bella Carl Diana Eric Fiona George Helen Ivan Julia Kevin Laura
Martin Nora Oscar Paula Ralph Sarah Thomas""".split()

NOUNS = """apple basket blanket bottle bridge bucket cabin candle canoe carpet castle chair clock
coat cottage cup desk door drawer engine fence field flag forest garden gate glove hammer harbor
hat helmet hill island jacket kettle key kitchen ladder lamp lantern letter library meadow mirror
mountain needle notebook orchard oven painting parcel pencil piano pillow plate pocket pond
radio railway ribbon river road rope saddle sandwich scarf shelf ship shovel signal sofa spoon
staircase station stone street suitcase table teapot tent ticket tower tractor trumpet tunnel
umbrella valley village violin wagon wall wallet window wire workshop basement balloon barrel
beach bicycle blossom cellar chimney compass corner curtain feather garage guitar lighthouse
market microphone necklace office pebble puzzle rocket sailboat sweater telescope thermos
tulip vase whistle""".split()

ADJECTIVES = """old new small large quiet noisy bright dark warm cold heavy light narrow wide
broken shiny dusty clean muddy wooden golden silver green yellow purple crimson pale tiny huge
gentle rough smooth strange familiar careful curious famous hidden empty crowded ancient modern
simple clever lonely friendly patient sleepy busy sturdy fragile shabby rusty striped spotted
velvet woolen frozen sunny windy rainy bitter sweet fresh stale distant nearby secret""".split()

# (base form, past tense) of transitive verbs.
VERBS_T = [tuple(p.split("/")) for p in """carry/carried paint/painted fix/fixed open/opened
close/closed find/found lose/lost move/moved clean/cleaned check/checked build/built sell/sold
buy/bought borrow/borrowed return/returned push/pushed pull/pulled lift/lifted drop/dropped
wrap/wrapped follow/followed watch/watched draw/drew hide/hid polish/polished measure/measured
repair/repaired describe/described deliver/delivered protect/protected replace/replaced
visit/visited count/counted mend/mended sketch/sketched bring/brought send/sent keep/kept
leave/left hold/held""".split()]

# (base form, past tense) of intransitive verbs.
VERBS_I = [tuple(p.split("/")) for p in """wait/waited laugh/laughed sleep/slept rest/rested
sing/sang whisper/whispered travel/traveled listen/listened wander/wandered arrive/arrived
smile/smiled work/worked dance/danced hurry/hurried linger/lingered shiver/shivered
pause/paused stumble/stumbled""".split()]

ADVERBS = """quietly slowly quickly carefully happily gently suddenly patiently proudly calmly
eagerly softly boldly nervously politely""".split()

PREPOSITIONS = """near behind under beside across inside along over around past beyond
toward""".split()

TIMES = ["early this morning", "late last night", "after the long storm", "before dinner",
         "on a cold winter evening", "at the end of the summer", "during the holiday",
         "just after sunrise", "in the middle of the afternoon", "the day before yesterday",
         "every other weekend", "once the rain had stopped", "while the kettle was boiling",
         "before the market opened", "on the first warm day of spring", "at noon"]

CONJUNCTIONS = ["and", "but", "so", "because", "while", "although", "until", "before", "after"]

PEOPLE = """baker farmer teacher sailor doctor neighbor child driver painter pilot student
gardener nurse captain singer visitor stranger porter""".split()

DETERMINERS = ["the", "the", "the", "a", "this", "that", "my", "our", "his", "her", "every"]

#: Harvard-style sentences written for edgeflow (phonetically varied, short, plain words).
HARVARD_STYLE = """A small boat drifted past the quiet harbor wall.
The cook stirred the thick soup with a wooden spoon.
Bright flags hung from every window on the street.
She found a silver key beneath the garden gate.
The old clock in the hall struck nine times.
Fresh bread cooled on the rack beside the oven.
A sharp wind blew the dry leaves across the yard.
The children built a fort of pillows and chairs.
He tied the rope twice around the heavy crate.
Thick fog rolled in from the gray and silent sea.
The letter arrived three days after the wedding.
A pale moon rose above the sleeping village.
The mechanic wiped the grease from his hands.
Her voice echoed through the empty concert hall.
The farmer led the brown horse into the barn.
We watched the sparks rise from the campfire.
A jar of honey sat on the kitchen shelf.
The train slowed as it reached the bridge.
Rain tapped softly against the attic window.
The painter mixed blue and yellow to make green.
A curious fox crept along the edge of the field.
The soldier polished his boots every morning.
Warm light spilled out of the open doorway.
The puppy chased its tail around the rug.
Two ships passed each other in the narrow channel.
The judge asked the witness to speak clearly.
A thin layer of frost covered the car roof.
The baker sold the last loaf before noon.
Smoke curled slowly from the cottage chimney.
The map showed a path through the dense woods.
Our neighbor grows tomatoes along the fence.
The glass vase shattered on the marble floor.
A flock of geese flew south over the lake.
The teacher wrote the answer on the board.
Loud thunder shook the windows of the house.
The hikers rested on a flat rock by the stream.
A strong coffee helps me think in the morning.
The nurse checked the chart and nodded.
Bees hummed among the purple flowers.
The drummer kept a steady beat all night.
Cold water trickled down the mossy stones.
The tailor measured the sleeve with great care.
A red kite danced high above the beach.
The library closes early on public holidays.
He whistled a cheerful tune on the way home.
The fisherman mended his nets on the dock.
A gust of wind slammed the shed door shut.
The queen waved to the crowd from the balcony.
Salt and pepper stood beside the butter dish.
The clever crow dropped nuts onto the road.
Please hand me the scissors and the tape.
The engine coughed twice and then fell silent.
Mud splashed onto the hem of her long coat.
The astronomer pointed the telescope at the sky.
We shared a pot of tea in the quiet cafe.
The bell rang and the students hurried out.
A tiny spider spun a web across the path.
The wagon creaked under its load of hay.
Dust drifted through a beam of golden light.
The referee blew the whistle to end the game.""".splitlines()


def _article(word: str) -> str:
    """'a' or 'an' before ``word`` (the word lists avoid the irregular cases)."""
    return "an" if word[0] in "aeio" or word.startswith("umbrella") else "a"


def _noun_phrase(rng: random.Random, adjectives: int, nouns: list[str] = NOUNS) -> str:
    """[determiner] [adjective]* noun, e.g. 'the old wooden bridge'."""
    words = rng.sample(ADJECTIVES, adjectives) + [rng.choice(nouns)]
    det = rng.choice(DETERMINERS)
    if det == "a":
        det = _article(words[0])
    return " ".join([det] + words)


def _subject(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return rng.choice(NAMES)
    if r < 0.6:
        return rng.choice(["she", "he", "we", "they", "I"])
    return _noun_phrase(rng, rng.choice([0, 1, 1]), PEOPLE)


def _prep_phrase(rng: random.Random) -> str:
    return f"{rng.choice(PREPOSITIONS)} {_noun_phrase(rng, rng.choice([0, 1, 1, 2]))}"


def _clause(rng: random.Random, extra: int) -> str:
    """A statement clause; ``extra`` (0..3) is how many optional modifiers to try to add."""
    subj = _subject(rng)
    if rng.random() < 0.75:
        verb = rng.choice(VERBS_T)[1]
        parts = [subj, verb, _noun_phrase(rng, rng.choice([0, 1, 1, 2]))]
    else:
        parts = [subj, rng.choice(VERBS_I)[1]]
        if rng.random() < 0.5:
            parts.append(rng.choice(ADVERBS))
    for _ in range(extra):
        r = rng.random()
        if r < 0.55:
            parts.append(_prep_phrase(rng))
        elif r < 0.8:
            parts.append(rng.choice(TIMES))
        else:
            parts.insert(1, rng.choice(ADVERBS))
    return " ".join(parts)


def _question(rng: random.Random, extra: int) -> str:
    base = rng.choice(VERBS_T)[0]
    wh = rng.choice(["Did", "Why did", "When did", "Where did", "How did"])
    parts = [wh, rng.choice(NAMES), base, _noun_phrase(rng, rng.choice([0, 1, 2]))]
    parts += [_prep_phrase(rng) for _ in range(extra)]
    return " ".join(parts)


def _imperative(rng: random.Random, extra: int) -> str:
    parts = [rng.choice(["Please", "Now", "Quickly", "Carefully"]), rng.choice(VERBS_T)[0],
             _noun_phrase(rng, rng.choice([1, 2]))]
    parts += [_prep_phrase(rng) for _ in range(extra)]
    return " ".join(parts)


def _candidate(rng: random.Random) -> str:
    """One sentence of random shape and length (about 4 to 28 words), punctuated."""
    r = rng.random()
    extra = rng.choice([0, 1, 1, 2, 2, 3])
    if r < 0.5:
        s, end = _clause(rng, extra), "."
    elif r < 0.72:
        a, b = _clause(rng, rng.choice([0, 1])), _clause(rng, rng.choice([0, 1, 2]))
        s, end = f"{a}, {rng.choice(CONJUNCTIONS)} {b}", "."
    elif r < 0.82:
        s, end = f"{rng.choice(NAMES)} said that {_clause(rng, extra)}", "."
    elif r < 0.92:
        s, end = _question(rng, min(extra, 2)), "?"
    else:
        s, end = _imperative(rng, min(extra, 2)), rng.choice([".", "!"])
    s = s[0].upper() + s[1:] + end
    return s.replace(" i ", " I ")


def sentence_stream(seed: int = 0, min_words: int = 5, max_words: int = 22) -> Iterator[str]:
    """Yield an endless, deterministic stream of distinct English sentences.

    Word counts are drawn uniformly from ``[min_words, max_words]`` (about 1.5-8 s of speech
    at a typical synthetic speaking rate of ~3 words/s). About one sentence in eight comes
    from :data:`HARVARD_STYLE` (each used once, in a seeded order) until that list runs out.

    Args:
        seed: integer seed; the same seed always gives the same sequence.
        min_words: shortest sentence, in words.
        max_words: longest sentence, in words.

    Yields:
        Sentences as plain strings without '|' or digits.
    """
    rng = random.Random(int(seed))
    harvard = list(HARVARD_STYLE)
    rng.shuffle(harvard)
    seen: set[str] = set()
    while True:
        if harvard and rng.random() < 0.125:
            s = harvard.pop()
        else:
            target = rng.randint(min_words, max_words)
            best = None
            for _ in range(40):
                cand = _candidate(rng)
                if best is None or (abs(len(cand.split()) - target)
                                    < abs(len(best.split()) - target)):
                    best = cand
                if abs(len(best.split()) - target) <= 1:
                    break
            s = best
        if s not in seen:
            seen.add(s)
            yield s


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """The first ``n`` sentences of :func:`sentence_stream` for ``seed``."""
    stream = sentence_stream(seed)
    return [next(stream) for _ in range(n)]
