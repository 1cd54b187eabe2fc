"""Text front-end of Piper-style VITS voices: text -> espeak-ng IPA phonemes -> phoneme ids. No torch.

Phonemes come from **libespeak-ng through ctypes** (Debian ``libespeak-ng1``, installed with ``espeak-ng``),
the library Piper's ``piper-phonemize`` calls, read the same way: one clause per
``espeak_TextToPhonemes`` call, IPA output (phoneme mode 0x02), text in UTF-8. Piper uses a patched
espeak-ng that also returns each clause's terminator; the stock library does not, so the terminator is
read from the source text the call consumed (the library advances the text pointer past the clause, its
punctuation, following spaces/quotes/brackets and one look-ahead character). The mapping is espeak-ng's
own (``readclause.c``): ``, . ? ! : ;`` and their full-width forms; dashes, ellipsis (``…`` or ``...``)
count as ``;``. As in piper-phonemize: ``.``, ``?`` and ``!`` are appended and end the sentence; ``,``,
``:`` and ``;`` are appended followed by a space; language-switch flags like ``(fr)`` are removed; the
phoneme string is NFD-decomposed into codepoints. Numbers, abbreviations, emoji (their names) and
other scripts (letter names) are read the way espeak-ng's voice reads them.

Phoneme ids follow Piper's training convention (piper-phonemize ``phonemes_to_ids``): ``^``, ``_``,
then every phoneme followed by ``_``, then ``$``. (Piper's old Python runtime omitted the ``_`` after
``^``; the voices were trained with it.) Symbols missing from the voice's map are dropped and counted.

Deviations from Piper, for robustness: sentences without any phoneme (punctuation only, or an empty
trailing clause) are skipped; a sentence longer than :data:`MAX_SENTENCE_SYMBOLS` is split at a clause
end (or a space) so memory stays bounded; text is fed to espeak-ng one paragraph (blank-line
separated) at a time; NUL and other control characters are replaced by spaces.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import re
import threading
import unicodedata
from typing import Counter, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from edgeflow.core.errors import ConfigError, DependencyError

BOS, EOS, PAD = "^", "$", "_"

#: Longest sentence (in phoneme codepoints) synthesised in one graph run; longer ones are split.
MAX_SENTENCE_SYMBOLS = 1000

#: espeak-ng clause punctuation -> the symbol Piper appends (full-width and CJK forms included).
TERMINATORS = {",": ",", ".": ".", "?": "?", "!": "!", ":": ":", ";": ";",
               "\u2013": ";", "\u2014": ";", "\u2026": ";", "\u037e": "?", "\u0387": ";",
               "\u060c": ",", "\u061b": ";", "\u061f": "?", "\u06d4": ".", "\u0964": ".",
               "\u3001": ",", "\u3002": ".", "\uff01": "!", "\uff0c": ",", "\uff0e": ".",
               "\uff1a": ":", "\uff1b": ";", "\uff1f": "?"}
SENTENCE_END = {".", "?", "!"}
#: Characters that may follow a clause's punctuation inside the consumed text.
_CLOSERS = set("\"')]}\u201d\u2019\u00bb>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")

_ESPEAK_DONT_EXIT = 0x8000
_ENOUTPUT_MODE_SYNCHRONOUS = 0x0001
_PHONEMES_IPA = 0x02
_CHARS_AUTO = 0

_lock = threading.Lock()          # libespeak-ng keeps global state: one caller at a time
_lib = None
_voice: Optional[str] = None


def _load_library():
    """Load and initialise libespeak-ng once (caller holds the lock)."""
    global _lib
    if _lib is not None:
        return _lib
    names = [n for n in (ctypes.util.find_library("espeak-ng"), "libespeak-ng.so.1", "libespeak-ng.so") if n]
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise DependencyError("the text front-end needs libespeak-ng (Debian: apt-get install espeak-ng)")
    lib.espeak_ng_InitializePath.argtypes = [ctypes.c_char_p]
    lib.espeak_ng_Initialize.argtypes = [ctypes.c_void_p]
    lib.espeak_ng_Initialize.restype = ctypes.c_int
    lib.espeak_ng_InitializeOutput.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    lib.espeak_ng_InitializeOutput.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_ng_InitializePath(None)
    context = ctypes.c_void_p()
    status = lib.espeak_ng_Initialize(ctypes.byref(context))
    if status == 0:
        status = lib.espeak_ng_InitializeOutput(_ENOUTPUT_MODE_SYNCHRONOUS, 0, None)
    if status != 0:
        raise DependencyError(f"libespeak-ng failed to initialise (status 0x{status & 0xffffffff:x}; "
                              "is espeak-ng-data installed?)")
    _lib = lib
    return lib


def _set_voice(lib, voice: str) -> None:
    global _voice
    if voice != _voice:
        if not voice or lib.espeak_SetVoiceByName(voice.encode("utf-8")) != 0:
            raise ConfigError(f"espeak-ng has no voice {voice!r} (see espeak-ng --voices)")
        _voice = voice


def clause_terminator(consumed: str, at_end: bool) -> str:
    """The clause punctuation Piper appends, read from the text one ``espeak_TextToPhonemes`` call consumed.

    Args:
        consumed: the source text the call advanced over (ends with one look-ahead character unless
            ``at_end``).
        at_end: the call reached the end of the text (no look-ahead character).

    Returns:
        One of ``, . ? ! : ;`` or "" (no punctuation: end of text, paragraph, or a long clause split).
    """
    tail = consumed.rstrip()
    if not at_end and tail == consumed and tail:
        tail = tail[:-1].rstrip()           # the look-ahead character of the next clause
    elif not at_end and tail:
        pass                                # look-ahead was whitespace
    while tail and tail[-1] in _CLOSERS:
        tail = tail[:-1].rstrip()
    if not tail or tail[-1] not in TERMINATORS:
        return ""
    if tail.endswith(".."):
        return ";"                          # "..." is espeak-ng's ellipsis
    return TERMINATORS[tail[-1]]


def _clauses(lib, text: str) -> Iterator[Tuple[str, str]]:
    """(IPA phonemes, terminator) per espeak-ng clause of ``text`` (caller holds the lock)."""
    data = text.encode("utf-8")
    buf = ctypes.create_string_buffer(data)
    base = ctypes.addressof(buf)
    ptr = ctypes.c_void_p(base)
    prev = 0
    for _ in range(len(data) + 2):
        if not ptr.value:
            return
        out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_AUTO, _PHONEMES_IPA)
        at_end = not ptr.value
        off = len(data) if at_end else min(max(ptr.value - base, prev), len(data))
        consumed = data[prev:off].decode("utf-8", errors="ignore")
        prev = off
        yield (out or b"").decode("utf-8", errors="replace"), clause_terminator(consumed, at_end)
    raise RuntimeError("libespeak-ng did not advance through the text")


def _strip_language_flags(phonemes: str) -> str:
    """Remove espeak-ng's ``(lang)`` switch markers, as piper-phonemize does by default."""
    return re.sub(r"\([^()]*\)", "", phonemes)


def _espeak_sentences(paragraph: str, voice: str) -> List[List[str]]:
    with _lock:
        lib = _load_library()
        _set_voice(lib, voice)
        clauses = list(_clauses(lib, paragraph))      # run to the end: the library keeps clause state
    sentences: List[List[str]] = []
    current: List[str] = []
    for ipa, term in clauses:
        phonemes = list(unicodedata.normalize("NFD", _strip_language_flags(ipa)))
        if current and len(current) + len(phonemes) > MAX_SENTENCE_SYMBOLS:
            sentences.append(current)
            current = []
        current.extend(phonemes)
        if term:
            current.append(term)
            if term not in SENTENCE_END:
                current.append(" ")
        if term in SENTENCE_END:
            sentences.append(current)
            current = []
    sentences.append(current)
    return [piece for s in sentences for piece in _split_long(s) if _speakable(piece)]


def _split_long(phonemes: List[str]) -> List[List[str]]:
    """Split a sentence longer than MAX_SENTENCE_SYMBOLS at spaces (a single over-long clause)."""
    out = []
    while len(phonemes) > MAX_SENTENCE_SYMBOLS:
        cut = max((i for i in range(MAX_SENTENCE_SYMBOLS) if phonemes[i] == " "), default=MAX_SENTENCE_SYMBOLS - 1)
        out.append(phonemes[:cut + 1])
        phonemes = phonemes[cut + 1:]
    return out + [phonemes]


def _speakable(phonemes: Sequence[str]) -> bool:
    return any(p not in TERMINATORS and not p.isspace() for p in phonemes)


def clean_text(text: str) -> str:
    """The text espeak-ng gets: a str with control characters (NUL included) replaced by spaces."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _CONTROL.sub(" ", text)


def phonemize_iter(text: str, voice: str = "en-us") -> Iterator[List[str]]:
    """Sentences of ``text`` as lists of phoneme codepoints, one paragraph at a time (lazy).

    Args:
        text: any Unicode text.
        voice: espeak-ng voice name (the voice json's ``espeak.voice``).

    Yields:
        One list of NFD codepoints per sentence (punctuation and word spaces included).

    Raises:
        DependencyError: libespeak-ng missing. ConfigError: unknown espeak-ng voice.
    """
    for paragraph in _PARAGRAPH.split(clean_text(text)):
        if paragraph.strip():
            yield from _espeak_sentences(paragraph, voice)


def phonemize(text: str, voice: str = "en-us") -> List[List[str]]:
    """All sentences of :func:`phonemize_iter` as a list (Piper's ``phonemize_espeak``)."""
    return list(phonemize_iter(text, voice))


def check_id_map(id_map: object, where: str = "voice config") -> Dict[str, List[int]]:
    """Validate a Piper ``phoneme_id_map`` ({symbol: [id, ...]}) with ``^``, ``$`` and ``_``.

    Raises:
        ConfigError: not a mapping of strings to non-empty lists of non-negative ints, or a special
            symbol missing.
    """
    if not isinstance(id_map, Mapping) or not id_map:
        raise ConfigError(f"{where}: phoneme_id_map must be a non-empty object")
    out: Dict[str, List[int]] = {}
    for sym, ids in id_map.items():
        if not isinstance(sym, str) or not isinstance(ids, list) or not ids or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"{where}: phoneme_id_map entry {sym!r}: {ids!r} is not a list of ids >= 0")
        out[sym] = list(ids)
    missing = [s for s in (BOS, EOS, PAD) if s not in out]
    if missing:
        raise ConfigError(f"{where}: phoneme_id_map lacks {' '.join(missing)}")
    return out


def phonemes_to_ids(phonemes: Sequence[str], id_map: Mapping[str, Sequence[int]],
                    missing: Optional[Counter] = None) -> List[int]:
    """Piper's ids: ``^ _`` then each known phoneme followed by ``_``, then ``$``.

    Args:
        phonemes: codepoints of one sentence.
        id_map: the voice's phoneme_id_map (checked).
        missing: a Counter that receives the symbols not in the map (dropped).

    Returns:
        The id sequence (length 2 * known + 3).
    """
    pad = list(id_map[PAD])
    ids = list(id_map[BOS]) + pad
    for p in phonemes:
        got = id_map.get(p)
        if got is None:
            if missing is not None:
                missing[p] += 1
            continue
        ids.extend(got)
        ids.extend(pad)
    ids.extend(id_map[EOS])
    return ids


def describe_missing(missing: Counter) -> str:
    """One-line summary of dropped symbols, e.g. ``3 symbols not in the phoneme map dropped: 'ɚ' x2, 'x' x1``."""
    items = ", ".join(f"{s!r} x{n}" for s, n in missing.most_common(8))
    more = "" if len(missing) <= 8 else f" and {len(missing) - 8} more"
    return f"{sum(missing.values())} phoneme symbol(s) not in the voice's phoneme_id_map dropped: {items}{more}"


def new_counter() -> Counter:
    """An empty Counter for :func:`phonemes_to_ids`' ``missing``."""
    return collections.Counter()
