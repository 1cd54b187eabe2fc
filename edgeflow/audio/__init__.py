"""Audio front-end: wav I/O (soundfile), resampling, log-mel spectrograms (numpy; torch in mel_torch), and the
spectral training losses (torch, :mod:`edgeflow.audio.losses`)."""
