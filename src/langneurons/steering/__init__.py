"""Steering generation with the neurons a store selects (`langneurons steer`): `steer.steer` runs
the experiment, `neurons` builds the operations (the formulas), `hooks` applies them inside the
model, `generate` decodes and scores fluency, `langid` judges the output language, `report` writes
the outputs."""
