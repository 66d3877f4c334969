"""The fault campaign (chaos), its hostile-record corpus (fuzz) and its audit."""
