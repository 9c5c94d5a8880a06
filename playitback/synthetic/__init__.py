"""Synthetic datasets for demos and tests: the demo generator (tones pulsed at class rates) and the sound scenes
rendered from real sources (tools/make_sound_data.py). Nothing in the training data path imports them."""
