"""Speech corpora: the LJSpeech-layout reader and stable split (``ljspeech``), the offline
synthetic English corpus builder (``corpus``) and its seeded sentence generator (``text``)."""
