"""English sentences for text-to-speech calibration, distillation and evaluation.

All 60 sentences were written for edgeflow (no quoted or copyrighted text); they vary in length,
punctuation (questions, exclamations, commas, colons), numbers, abbreviations and sound coverage.
The three parts are fixed and disjoint: ``calibration`` (INT8 activation ranges), ``distillation``
(student training text) and ``evaluation`` (held out: WER, DNSMOS, RTF, mel-cepstral distance).
"""

from __future__ import annotations

from typing import Dict, List

CALIBRATION: List[str] = [
    "The morning train left the station a few minutes early.",
    "Could you please close the window before the rain starts?",
    "We planted tomatoes, beans and a row of sunflowers behind the shed.",
    "Nobody expected the little café on the corner to become so popular.",
    "The bridge was painted bright orange last spring.",
    "Turn left at the bakery, then walk two blocks north.",
    "My grandmother keeps her buttons in an old biscuit tin.",
    "How many chairs do we need for the meeting on Thursday?",
    "The museum opens at 9 and closes at 5.",
    "A cold wind swept across the empty parking lot.",
    "She finished the puzzle just before midnight!",
    "The recipe calls for 2 cups of flour and a pinch of salt.",
    "Listen carefully: the instructions are only given once.",
    "His bicycle chain squeaked all the way up the hill.",
    "The library will be closed for repairs until next week.",
    "Why does the cat always sleep on the warmest chair?",
    "Thick fog rolled in from the harbor after sunset.",
    "Dr. Patel answered every question with great patience.",
    "The kettle whistled while we searched for clean cups.",
    "Seven geese flew low over the frozen pond.",
]

DISTILLATION: List[str] = [
    "The children built a sandcastle with three tall towers.",
    "Please remember to water the plants while I am away.",
    "Our neighbor repairs old radios in his garage.",
    "The concert was louder than anyone had expected.",
    "Is this the right road to the lighthouse?",
    "A yellow kite got stuck in the branches of the oak tree.",
    "The baker rises at four every morning to light the ovens.",
    "We counted 12 boats in the bay this afternoon.",
    "What a wonderful surprise to see you here!",
    "The painter mixed blue and white to match the evening sky.",
    "Mr. Lee keeps a small notebook in his jacket pocket.",
    "The path through the forest is muddy after a storm.",
    "She laughed, shook her head, and walked out into the sunshine.",
    "The old clock in the hallway runs ten minutes slow.",
    "Fresh bread smells best when it is still warm.",
    "Do you know who left this umbrella by the door?",
    "The hikers reached the summit just as the clouds cleared.",
    "Our team scored 3 goals in the second half.",
    "Quiet voices drifted up from the garden below.",
    "The price of apples went up again this week.",
]

EVALUATION: List[str] = [
    "The weather was cold, but the sky was perfectly clear.",
    "Please bring your passport and a pen to the front desk.",
    "The fisherman mended his nets on the quiet beach.",
    "Where did you put the keys to the blue van?",
    "We walked along the river until the sun went down.",
    "The teacher wrote the answer on the board in large letters.",
    "It took us 4 hours to drive to the mountains.",
    "A small dog chased a red ball across the green lawn.",
    "The soup needs more pepper and a little lemon.",
    "They moved into a new house near the park last year.",
    "Could you speak a little more slowly, please?",
    "The market sells fresh fish, cheese and warm bread.",
    "He forgot his umbrella and got wet on the way home.",
    "The plane landed safely despite the strong wind.",
    "My sister plays the violin in the city orchestra.",
    "There are 20 students in the morning class.",
    "The garden looks lovely after the spring rain.",
    "Nobody knew the answer to the last question!",
    "The shop on the corner closes early on Sunday.",
    "We should leave now if we want to catch the bus.",
]

PARTS: Dict[str, List[str]] = {"calibration": CALIBRATION, "distillation": DISTILLATION, "evaluation": EVALUATION}


def sentences(part: str) -> List[str]:
    """The sentences of one part ("calibration", "distillation" or "evaluation"), as a new list.

    Raises:
        KeyError: another name.
    """
    if part not in PARTS:
        raise KeyError(f"no TTS text part {part!r} (choose from {', '.join(PARTS)})")
    return list(PARTS[part])
