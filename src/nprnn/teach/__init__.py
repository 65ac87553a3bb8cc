"""Seeing what the layers compute: ``nprnn explain`` (:mod:`.explain`), diagrams and state
heat maps (:mod:`.diagram`), the demo (:mod:`.demo`) and the character-level language
model of the tutorial (:mod:`.charlm`)."""
