"""Audio front-end: wav I/O (soundfile), resampling, log-mel spectrograms (numpy; torch in mel_torch)."""
