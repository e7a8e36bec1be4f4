"""Refine a case from strokes: `adapt.refine_case` adapts a copy of a round's model to them and
predicts the case; `strokes` checks and counts them; `settings` holds the defaults per device."""
